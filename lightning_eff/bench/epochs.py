"""Evaluations of an epochs budget at fractions of each epoch *as it turns out*, and at its end.

Lightning places evaluations by ``val_check_batch``, computed once from the loader's length at the
start of training. A sampler that shortens later epochs (InfoBatch) then never reaches the
evaluation planned for the full epoch's last batch: its epochs end unevaluated. This callback
re-derives ``val_check_batch`` from the loader's length at each epoch's first batch (after every
technique's epoch-start hook has set its plan), and sets it to 1 on the epoch's last batch (which
Lightning's prefetching knows before the batch runs), so each epoch ends with an evaluation.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch import Callback


def check_every(batches: int, evals_per_epoch: int) -> int:
    """Batches between evaluations within an epoch of ``batches`` batches."""
    return max(1, math.ceil(batches / evals_per_epoch))


class EvaluateEachEpoch(Callback):
    def __init__(self, evals_per_epoch: int) -> None:
        self.evals_per_epoch = evals_per_epoch
        self._every: int | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._every = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self._every is None:
            self._every = check_every(len(trainer.train_dataloader), self.evals_per_epoch)
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        trainer.val_check_batch = 1 if last else self._every
