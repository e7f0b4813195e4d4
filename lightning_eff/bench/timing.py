"""The callback that measures one run: training wall time without validation, quality at each
evaluation, samples and tokens seen, the learning rate actually used, and each batch's wall time
(for the dispersion check; no device sync, so on CUDA a batch's time is when the host got past it).

Placed first in ``Trainer(callbacks=...)`` so its ``setup`` starts the clock before the techniques'
model surgery: a technique's set-up cost is part of its training time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback

from lightning_eff.bench.quality import CurvePoint
from lightning_eff.errors import LightningEffError
from lightning_eff.module import batch_size_of


class MetricMissingError(LightningEffError):
    """The task's validation metric was not logged."""


class RunClock(Callback):
    def __init__(
        self, metric: str, count_tokens: Callable[[Any], int] | None = None, flops: Callable[[], int] | None = None
    ) -> None:
        """``flops``: cumulative training FLOPs so far (a :class:`FlopMeter`'s total), stamped on each point."""
        self.metric, self.count_tokens, self.flops = metric, count_tokens, flops
        self.batch_seconds: list[float] = []
        self.estimated_steps: int | None = None
        self._last_batch_end: float | None = None
        self.curve: list[CurvePoint] = []
        self.samples = 0
        self.tokens = 0 if count_tokens is not None else None
        self.peak_lr = 0.0
        self.last_lr: float | None = None
        self._start: float | None = None
        self._end: float | None = None
        self._validation_seconds = 0.0
        self._paused_at: float | None = None
        self._cuda = False
        self._evaluated_weights: tuple[float, ...] | None = None

    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()  # kernels are asynchronous: time the work, not its launch
        return time.perf_counter()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._start is None:
            self._cuda = trainer.strategy.root_device.type == "cuda"
            self._start = self._now()

    @property
    def train_seconds(self) -> float:
        """Training time so far (or in total, after the run), validation excluded."""
        if self._start is None:
            return 0.0
        now = self._paused_at or self._end or self._now()
        return now - self._start - self._validation_seconds

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._end is None:  # after training (the end-of-training evaluation) the clock has stopped
            self._paused_at = self._now()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = 0.0 if trainer.sanity_checking else self.train_seconds
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            raise MetricMissingError(
                f"the validation metric '{self.metric}' was not logged (logged: {logged}); "
                f"log it in validation_step with self.log('{self.metric}', ...) or pass --metric with one of those keys"
            )
        flops = 0 if trainer.sanity_checking or self.flops is None else self.flops()
        point = CurvePoint(step=trainer.global_step, train_seconds=seconds, quality=float(value), flops=None if self.flops is None else flops)
        if self.curve and self.curve[-1].step == point.step:
            self.curve[-1] = point  # an evaluation repeated at the same step (end of epoch) replaces it
        else:
            self.curve.append(point)
        if not trainer.sanity_checking:
            self._evaluated_weights = weights_fingerprint(pl_module)
        if self._paused_at is not None:
            self._validation_seconds += self._now() - self._paused_at
            self._paused_at = None
        self._last_batch_end = time.perf_counter()  # the next batch's time excludes this validation

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # What the schedules were built for (Lightning derives it from max_steps or max_epochs).
        estimate = trainer.estimated_stepping_batches
        self.estimated_steps = int(estimate) if estimate != float("inf") else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.optimizers:
            lr = float(trainer.optimizers[0].param_groups[0]["lr"])
            self.peak_lr = max(self.peak_lr, lr)
            self.last_lr = lr

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_batch_end is not None:
            self.batch_seconds.append(now - self._last_batch_end)
        self._last_batch_end = now
        self.samples += batch_size_of(batch)
        if self.count_tokens is not None:
            self.tokens += int(self.count_tokens(batch))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end = self._now()

    def weights_changed_since_last_evaluation(self, pl_module: pl.LightningModule) -> bool:
        """Whether the model was changed after its last evaluation (Lightning's ``ModelPruning`` prunes
        at the end of the epoch, after the epoch's last validation): then the curve's last point does
        not describe the model that training produced."""
        return self._evaluated_weights is not None and self._evaluated_weights != weights_fingerprint(pl_module)

    @property
    def final_lr_fraction(self) -> float | None:
        """Learning rate of the last step over the peak: about 0 for a fully decayed schedule."""
        if self.last_lr is None or self.peak_lr <= 0:
            return None
        return self.last_lr / self.peak_lr


@torch.no_grad()
def weights_fingerprint(module: torch.nn.Module) -> tuple[float, ...]:
    """Two sums per state-dict tensor (parameters, pruning masks, buffers): cheap, and any pruning,
    merge or update of a weight changes them."""
    sums: list[float] = []
    for tensor in module.state_dict().values():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            values = tensor.detach().double()
            sums += [float(values.sum()), float(values.abs().sum())]
        elif torch.is_tensor(tensor):
            sums.append(float(tensor.detach().double().sum()))
    return tuple(sums)
