"""LossThresholdSkip: no backward pass for samples whose loss is already below a threshold.

Score the batch without gradients and train only on the samples with ``loss >= threshold`` (at
least ``min_keep`` of them: the largest losses). Once most samples are learned, most backward
passes are skipped; in fine-tuning, where a pretrained model already fits most examples, this is
where the savings are largest.
"""

from __future__ import annotations

from pydantic import Field

from lightning_eff.schedule import TimeLike

from .selection import at_least_threshold
from .selector import BatchSelector, SelectorConfig


class LossThresholdSkipConfig(SelectorConfig):
    threshold: float = Field(
        0.1,
        gt=0.0,
        description="samples with a loss below this get no backward pass (loss units: nats for CE)",
    )
    min_keep: int = Field(
        1, ge=1, description="train on at least this many samples of a batch (the largest losses)"
    )


class LossThresholdSkip(BatchSelector):
    """Skip the backward pass of samples whose loss is below a threshold."""

    name = "loss_threshold_skip"
    Config = LossThresholdSkipConfig

    def __init__(
        self,
        threshold: float = 0.1,
        min_keep: int = 1,
        start: TimeLike = 0.0,
        end: TimeLike = 1.0,
        interrupt: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            threshold=threshold, min_keep=min_keep, start=start, end=end, interrupt=interrupt, seed=seed
        )

    def choose(self, losses, batch, module):
        return at_least_threshold(losses, self.config.threshold, self.config.min_keep)
