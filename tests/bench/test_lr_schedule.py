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
