"""RandomSubset: train on a fresh uniformly random ``keep`` fraction of every batch.

The baseline every data technique must beat at the same compute (RS2, Okanovic et al. 2023: a
fresh random subset each epoch beat 30 data-pruning methods at <10% data per epoch). Drawn anew
for every batch, so across an epoch every sample has the same chance. No scoring forward pass: it
is the cheapest way to drop ``1 - keep`` of the backward passes.
"""

from __future__ import annotations

from pydantic import Field

from lightning_eff.module import batch_size_of
from lightning_eff.schedule import TimeLike, TimePoint

from .selection import random_subset
from .selector import BatchSelector, SelectorConfig


class RandomSubsetConfig(SelectorConfig):
    keep: float = Field(
        0.5, gt=0.0, lt=1.0, description="fraction of each batch trained on, chosen uniformly at random"
    )
    start: TimePoint = Field(0.0, description=SelectorConfig.model_fields["start"].description)
    end: TimePoint = Field(1.0, description=SelectorConfig.model_fields["end"].description)


class RandomSubset(BatchSelector):
    """Train on a fresh uniformly random fraction of every batch (the RS2 baseline of data techniques)."""

    name = "random_subset"
    Config = RandomSubsetConfig
    needs_scores = False

    def __init__(
        self, keep: float = 0.5, start: TimeLike = 0.0, end: TimeLike = 1.0, interrupt: int = 0, seed: int = 0
    ) -> None:
        super().__init__(keep=keep, start=start, end=end, interrupt=interrupt, seed=seed)

    def choose(self, losses, batch, module):
        return random_subset(batch_size_of(batch), self.config.keep, self.generator)
