"""Test-only techniques for the bench harness: one that never learns, one that skips samples."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback
from pydantic import Field

from lightning_eff import Technique, TechniqueConfig, hookimpl
from lightning_eff.module import index_batch


class ZeroWeightsAtEpochEnd(Callback):
    """Zeroes every weight when an epoch ends, after the epoch's last validation (as Lightning's
    ``ModelPruning`` prunes): the model training produced is not the one last evaluated."""

    @torch.no_grad()
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        for p in pl_module.parameters():
            p.zero_()


class NoLearning(Technique):
    """Zeroes every gradient before the optimizer step: the model never leaves its initialisation."""

    name = "no_learning"
    phase = "optimizer"

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for p in pl_module.parameters():
            if p.grad is not None:
                p.grad.zero_()
        for group in optimizer.param_groups:
            group["weight_decay"] = 0.0


class KeepFirstConfig(TechniqueConfig):
    keep: float = Field(0.5, gt=0, le=1, description="fraction of each batch kept")


class KeepFirst(Technique):
    """Trains on the first ``keep`` fraction of each batch; reports samples_skipped and a saving."""

    name = "keep_first"
    phase = "data"
    selects_batches = True
    requires_module_mixin = True
    Config = KeepFirstConfig

    def __init__(self, keep: float = 0.5) -> None:
        super().__init__(keep=keep)
        self.skipped = 0

    @hookimpl
    def leff_select_batch(self, module, batch, batch_idx):
        n = batch[0].shape[0]
        kept = max(1, int(n * self.config.keep))
        self.skipped += n - kept
        return index_batch(batch, torch.arange(kept))

    def metrics(self) -> dict[str, float]:
        return {"samples_skipped": float(self.skipped)}

    def savings(self) -> dict[str, float]:
        return {"backward_samples": float(self.skipped)}


NO_LEARNING = {"description": "never learns", "techniques": [{"class_path": "bench_techniques.NoLearning"}]}
KEEP_HALF = {"description": "half of every batch", "techniques": [{"class_path": "bench_techniques.KeepFirst", "init_args": {"keep": 0.5}}]}
EMPTY = {"description": "no techniques", "techniques": []}
ZERO_AT_EPOCH_END = {
    "description": "zeroes the weights after the last validation",
    "techniques": [{"class_path": "bench_techniques.ZeroWeightsAtEpochEnd"}],
}
