"""Selective Backprop (Jiang et al., "Accelerating Deep Learning by Focusing on the Biggest Losers", 2019).

Forward the whole batch without gradients, rank the samples by loss, and backpropagate only
``keep * N`` of them drawn with probability rising with the loss rank (``P_i ~ q_i**(1/keep - 1)``).
Defaults follow Composer: keep half, only between 50% and 90% of training, every other step on
the full batch. The scoring forward costs about a third of a training step, so it pays off only
when at least about a third of the samples are dropped.
"""

from __future__ import annotations

from pydantic import Field

from lightning_eff.schedule import TimeLike, TimePoint

from .selection import select_by_loss
from .selector import BatchSelector, SelectorConfig


class SelectiveBackpropConfig(SelectorConfig):
    keep: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of each batch that gets a backward pass")
    start: TimePoint = Field(0.5, description=SelectorConfig.model_fields["start"].description)
    end: TimePoint = Field(0.9, description=SelectorConfig.model_fields["end"].description)
    interrupt: int = Field(2, ge=0, description="every interrupt-th step trains on the full batch (0: never)")


class SelectiveBackprop(BatchSelector):
    """Backpropagate only the high-loss part of each batch, sampled by loss rank (Jiang et al. 2019)."""

    name = "selective_backprop"
    Config = SelectiveBackpropConfig

    def __init__(
        self, keep: float = 0.5, start: TimeLike = 0.5, end: TimeLike = 0.9, interrupt: int = 2, seed: int = 0
    ) -> None:
        super().__init__(keep=keep, start=start, end=end, interrupt=interrupt, seed=seed)

    def choose(self, losses, batch, module):
        return select_by_loss(losses, self.config.keep, self.generator)
