"""Sample and token time points resolve wherever the batch size is known: every technique with a
schedule reads it from the fit's training DataLoader (datamodule or train_dataloaders=)."""

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from lightning_eff.errors import ConfigError
from lightning_eff.plugins.data import SelectiveBackprop
from lightning_eff.plugins.freezing import AdaptiveFreezing, ProgressiveFreezing
from lightning_eff.plugins.pruning import GradualPruning
from lightning_eff.schedule import to_steps
from lightning_eff.testing import TinyClassifier, TinyDataModule, preflight_problems, quiet_trainer_kwargs

# TinyDataModule: batches of 8 samples, 8 steps per epoch


def fit(technique, steps=48, data=None, loader=None, **kwargs):
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=[technique])
    if loader is not None:
        trainer.fit(TinyClassifier(), train_dataloaders=loader)
    else:
        trainer.fit(TinyClassifier(), datamodule=data or TinyDataModule())
    return trainer


def test_freezing_resolves_samples_from_the_datamodule_loader():
    technique = ProgressiveFreezing(start="64samples", end="320samples", level=0.5)
    fit(technique)
    assert (technique.start_step, technique.end_step) == (8, 40)


def test_samples_per_step_count_gradient_accumulation():
    technique = ProgressiveFreezing(start="64samples", end="320samples", level=0.5)
    fit(technique, accumulate_grad_batches=2)
    assert (technique.start_step, technique.end_step) == (4, 20)


def test_adaptive_freezing_resolves_samples():
    technique = AdaptiveFreezing(every="32samples", start="64samples")
    fit(technique, steps=24)
    assert (technique.every_steps, technique.start_step) == (4, 8)


def test_pruning_resolves_samples():
    technique = GradualPruning(start="64samples", end="256samples", update_every="16samples")
    fit(technique)
    assert (technique.start_step, technique.end_step, technique.every) == (8, 32, 2)


def test_selectors_resolve_samples_without_a_datamodule():
    data = TinyDataModule()
    technique = SelectiveBackprop(start="64samples", end="320samples")
    fit(technique, loader=data.train_dataloader())
    assert (technique.window.start, technique.window.end) == (8, 40)


def test_a_loader_without_batch_size_is_a_problem_naming_what_to_set():
    data = TinyDataModule()
    dataset = TensorDataset(data.x, data.y)
    unbatched = DataLoader(dataset, batch_sampler=BatchSampler(SequentialSampler(dataset), 8, drop_last=True))

    class BatchSamplerData(TinyDataModule):
        def train_dataloader(self):
            return unbatched

    problems = preflight_problems([ProgressiveFreezing(start="64samples", end=0.9)], data=BatchSamplerData(), max_steps=48)
    (problem,) = problems
    assert "has no batch_size" in problem and "DataLoader(..., batch_size=N)" in problem and "in steps" in problem


class TokenDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {"input_ids": torch.zeros(10, dtype=torch.long)}


def fake_trainer(loader, accumulate=1, world=1):
    return SimpleNamespace(train_dataloader=loader, accumulate_grad_batches=accumulate, world_size=world)


def test_tokens_are_read_from_the_samples_input_ids():
    trainer = fake_trainer(DataLoader(TokenDataset(), batch_size=4), accumulate=2)
    assert to_steps("800tokens", 1000, trainer=trainer) == 10  # 4 x 2 x 10 = 80 tokens per step


def test_tokens_without_input_ids_name_what_to_give_instead():
    data = TinyDataModule()
    trainer = fake_trainer(data.train_dataloader())
    assert to_steps("80samples", 1000, trainer=trainer) == 10
    with pytest.raises(ConfigError, match="tokens per sample are unknown.*'input_ids'.*give the time in samples"):
        to_steps("800tokens", 1000, trainer=trainer)
