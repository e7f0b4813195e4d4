"""What every benchmark task provides, and the optimizer both arms share.

A task is a recipe-independent description: how to build a fresh model and data module for a seed,
which validation metric is "quality" and in which direction it improves. The baseline and the recipe
build the same task with the same seed; only the techniques (and the recipe's Trainer settings) differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_eff.bench.tasks.lr_schedule import EpochPosition, OwnGroupsLambdaLR
from lightning_eff.module import EfficientModule


def warmup_cosine_factor(step: float, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to exactly 0 at ``total_steps``.

    A fully decayed schedule is what a skeptic's baseline uses ("No Train No Gain", Kaddour et al.
    2023): speed-ups measured against a baseline whose learning rate never decays vanish against one
    that does. Steps past ``total_steps`` stay at 0.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps={total_steps} must be positive")
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class BenchModule(EfficientModule, pl.LightningModule):
    """Base of the embedded tasks' modules: AdamW + warm-up + cosine to 0 over the run's steps (under
    an epoch budget, over its epochs: see :class:`EpochPosition`).

    The optimizer gets the parameters that require gradients when it is built (Lightning's advice):
    our freezing techniques freeze later (``on_fit_start``) and remove parameters from it themselves;
    Lightning's ``BaseFinetuning`` callbacks freeze in ``setup`` and add the parameters back as a new
    group when they unfreeze, which fails if the optimizer already holds them.
    """

    def __init__(self, lr: float, weight_decay: float = 0.01, warmup_fraction: float = 0.05) -> None:
        super().__init__()
        self.lr, self.weight_decay, self.warmup_fraction = lr, weight_decay, warmup_fraction

    def configure_optimizers(self) -> dict[str, Any]:
        trainable = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.dim() >= 2]
        no_decay = [p for p in trainable if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(self.warmup_fraction * total)
        position = EpochPosition.for_trainer(self.trainer, total)
        scheduler = OwnGroupsLambdaLR(optimizer, lambda s: warmup_cosine_factor(position(s), total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@dataclass
class BenchTask:
    """A benchmark task: fresh model and data per seed, and the validation metric that is quality."""

    name: str
    description: str
    make_module: Callable[[], pl.LightningModule]
    make_data: Callable[[], pl.LightningDataModule]
    #: key the module logs during validation (``trainer.callback_metrics[metric]``)
    metric: str
    higher_is_better: bool
    default_max_steps: int
    default_repeats: int = 3
    #: ``--quick``: a few steps that exercise every code path (tests, smoke runs); measures nothing
    quick_max_steps: int = 6
    #: tokens in a training batch (language models), for tokens/s; ``None``: samples only
    count_tokens: Callable[[Any], int] | None = None
    #: facts shown in the report (sizes of splits, label noise, sequence length...)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_label(self) -> str:
        return self.metric.split("/")[-1]
