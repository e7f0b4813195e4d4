"""The tasks' scheduler follows LambdaLR exactly and survives a group added mid-run (BackboneFinetuning)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import BackboneFinetuning
from torch.optim.lr_scheduler import LambdaLR

from lightning_eff.bench.tasks.base import BenchModule, warmup_cosine_factor
from lightning_eff.bench.tasks.lr_schedule import OwnGroupsLambdaLR
from lightning_eff.testing import TinyDataModule, quiet_trainer_kwargs


def _optimizer(*modules: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": m.parameters()} for m in modules], lr=0.1)


def _factor(step: int) -> float:
    return warmup_cosine_factor(step, 20, 3)


def test_own_groups_follow_lambda_lr_exactly():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ours_opt, ref_opt = _optimizer(a), _optimizer(b)
    ours, ref = OwnGroupsLambdaLR(ours_opt, _factor), LambdaLR(ref_opt, _factor)
    for _ in range(25):
        ours_opt.step(), ref_opt.step()
        ours.step(), ref.step()
        assert ours.get_last_lr() == ref.get_last_lr()


def test_a_group_added_later_keeps_the_rate_its_owner_sets():
    a, added = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = _optimizer(a)
    ref_opt = _optimizer(torch.nn.Linear(2, 2))
    ours, ref = OwnGroupsLambdaLR(opt, _factor), LambdaLR(ref_opt, _factor)
    opt.add_param_group({"params": added.parameters(), "lr": 0.003})
    ref_opt.add_param_group({"params": torch.nn.Linear(2, 2).parameters(), "lr": 0.003})
    opt.step(), ref_opt.step()
    with pytest.raises(ValueError, match="zip"):
        ref.step()  # what the tasks' scheduler used to do
    ours.step()
    assert opt.param_groups[1]["lr"] == 0.003
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * _factor(1))


class _WithBackbone(BenchModule):
    def __init__(self) -> None:
        super().__init__(lr=0.01)
        self.backbone = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU())
        self.head = torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def per_sample_loss(self, batch) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y, reduction="none")


def test_lightnings_backbone_finetuning_unfreezes_under_the_tasks_scheduler():
    module = _WithBackbone()
    data = TinyDataModule(samples=32, batch_size=8)
    callback = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.1, verbose=False)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=3, max_steps=-1, callbacks=[callback]))
    trainer.fit(module, data)
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 3, "the backbone was added as a third group"
    assert all(p.requires_grad for p in module.backbone.parameters())
    assert groups[2]["lr"] > 0


class _ShorterAfterFirstEpoch(torch.utils.data.Sampler):
    """Every index in epoch 0, the first ``later`` afterwards (an InfoBatch-like pruned epoch)."""

    def __init__(self, size: int, later: int) -> None:
        self.size, self.later, self.epoch = size, later, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size if self.epoch == 0 else self.later

    def __iter__(self):
        return iter(range(len(self)))


class _Data(TinyDataModule):
    def __init__(self, later: int | None) -> None:
        super().__init__(samples=32, batch_size=4)
        self.later = later

    def train_dataloader(self):
        dataset = torch.utils.data.TensorDataset(self.x, self.y)
        if self.later is None:
            return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size)
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, sampler=_ShorterAfterFirstEpoch(32, self.later))


class _LRs(pl.Callback):
    def __init__(self) -> None:
        self.rates: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rates.append((trainer.current_epoch, trainer.optimizers[0].param_groups[0]["lr"]))


def _fit_epochs(later: int | None, epochs: int = 4) -> list[tuple[int, float]]:
    pl.seed_everything(0)
    module, recorder = _WithBackbone(), _LRs()
    module.warmup_fraction = 0.1
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=epochs, max_steps=-1, callbacks=[recorder]))
    trainer.fit(module, _Data(later))
    return recorder.rates


def test_full_epochs_under_an_epoch_budget_follow_the_step_schedule_exactly():
    rates = [lr for _, lr in _fit_epochs(None)]
    total, warmup = 4 * 8, 3
    assert rates == [0.01 * warmup_cosine_factor(s, total, warmup) for s in range(1, total + 1)]


@pytest.mark.parametrize("later", [12, 20, 28])
def test_shortened_epochs_anneal_to_zero_at_the_end_of_the_last_epoch(later):
    rates = _fit_epochs(later)
    batches = later // 4
    assert len(rates) == 8 + 3 * batches, "epochs after the first are shorter"
    total, warmup = 4 * 8, 3
    # Each epoch ends where a full epoch would: the last step at 0, every epoch's end at its full-epoch value.
    for epoch in range(4):
        last = max(i for i, (e, _) in enumerate(rates) if e == epoch)
        assert rates[last][1] == pytest.approx(0.01 * warmup_cosine_factor(8 * (epoch + 1), total, warmup), abs=1e-12)
    assert rates[-1][1] == 0.0
    decaying = [lr for _, lr in rates[warmup:]]
    assert all(a >= b for a, b in zip(decaying, decaying[1:])), "the cosine never goes back up"
