"""Models and factories shared by the LoRA tests (module level: DDP pickles them)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_eff.testing import TinyClassifier, TinyDataModule, quiet_trainer_kwargs


class PlainClassifier(nn.Module):
    """TinyClassifier's layers and parameter names, without Lightning, peft or lightning-eff."""

    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 4, depth: int = 3) -> None:
        super().__init__()
        dims = [features] + [hidden] * depth
        self.blocks = nn.Sequential(*(nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims, dims[1:])))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class KeepZeroGradsClassifier(TinyClassifier):
    """zero_grad(set_to_none=False): a frozen weight left in a param group would still be moved by
    momentum and weight decay."""

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        optimizer.zero_grad(set_to_none=False)


def lora_on_blocks(**options):
    from lightning_eff.plugins.peft import LoRA

    return LoRA(**{"r": 4, "alpha": 8.0, "targets": ["blocks.*"], "train": ["head.*"], **options})


def lora_techniques():
    return [lora_on_blocks(dropout=0.1)]


def dora_techniques():
    return [lora_on_blocks(dora=True, rslora=True)]


def fit(techniques, steps: int = 8, module=None, **kwargs):
    pl.seed_everything(0)
    module = module if module is not None else TinyClassifier()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=list(techniques))
    trainer.fit(module, datamodule=TinyDataModule())
    return trainer, module


def no_dropout_techniques():
    # Adapter dropout draws from the global RNG, which Lightning's checkpoints do not hold (nor do the
    # model's own dropout layers): a resumed run draws other masks. Resume is exact without it.
    return [lora_on_blocks()]


def small_data():
    """Two steps per epoch: resume from an epoch boundary stays short."""
    return TinyDataModule(samples=16, batch_size=8)
