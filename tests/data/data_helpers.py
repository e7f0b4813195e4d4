"""Models and factories shared by the data-technique tests (module-level: DDP pickles them)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_eff import EfficientModule
from lightning_eff.testing import TinyClassifier, TinyDataModule


class RecordingClassifier(TinyClassifier):
    """Records the size of every batch ``per_sample_loss`` sees, with and without gradients."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scored: list[int] = []
        self.trained: list[int] = []

    def per_sample_loss(self, batch):
        (self.trained if torch.is_grad_enabled() else self.scored).append(int(batch[0].shape[0]))
        return super().per_sample_loss(batch)


class NoPerSampleLoss(TinyClassifier):
    """Mixes in EfficientModule but forgets per_sample_loss."""

    per_sample_loss = EfficientModule.per_sample_loss


class InfoBatchData(TinyDataModule):
    """TinyDataModule whose training loader samples through InfoBatchSampler (the opt-in)."""

    def train_dataloader(self):
        from lightning_eff.plugins.data import info_batch_dataloader

        return info_batch_dataloader(
            DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=True)
        )


class LabelReference:
    """A reference "model" for RhoLoss tests: the reference loss of a sample is 100 x its label, so
    RhoLoss keeps the samples of smallest label (picklable for DDP)."""

    def __call__(self, batch):
        return batch[1].float() * 100.0


def label_reference():
    return LabelReference()


class NoHparamsClassifier(TinyClassifier):
    """A module RhoLoss cannot rebuild: a required constructor argument that is not saved."""

    def __init__(self, marker):
        super().__init__()
        self.marker = marker
