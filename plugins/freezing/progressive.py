"""Progressive layer freezing (Composer's ``LayerFreezing``; FreezeOut's idea without its LR schedule).

The frozen fraction of the blocks is 0 until ``start``, then rises linearly to ``level`` at ``end``;
after optimizer step t the first ``floor(fraction(t) * L)`` blocks are frozen. Input-side blocks go
first: only a frozen prefix saves backward compute (autograd stops where nothing needs a gradient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from lightning_eff.schedule import TimeLike, TimePoint, check_window, to_steps

from .base import PREFIX_SCHEDULES, FreezingConfig, FreezingTechnique
from .freezer import BlockFreezer
from .schedules import frozen_block_count, progressive_fraction


class ProgressiveFreezingConfig(FreezingConfig):
    start: TimePoint = Field(
        0.5, validate_default=True, description="freezing starts after this time point (steps, fraction, samples...)"
    )
    end: TimePoint = Field(1.0, validate_default=True, description="time point at which `level` is reached")
    level: float = Field(1.0, gt=0.0, le=1.0, description="fraction of the blocks frozen at `end`")

    @model_validator(mode="after")
    def _ordered(self) -> ProgressiveFreezingConfig:
        check_window(self.start, self.end, what="freezing", empty_ok=False)
        return self


class ProgressiveFreezing(FreezingTechnique):
    """Freeze a growing input-side prefix of the blocks: 0 until `start`, linear to `level` at `end`."""

    name = "progressive_freezing"
    conflicts = tuple(n for n in PREFIX_SCHEDULES if n != "progressive_freezing")
    Config = ProgressiveFreezingConfig

    def __init__(
        self,
        start: TimeLike = 0.5,
        end: TimeLike = 1.0,
        level: float = 1.0,
        blocks: Sequence[str] = (),
        cache_activations: bool = False,
        static_data: bool = False,
        cache_max_bytes: int = 2**30,
        cache_on: Literal["cpu", "device"] = "cpu",
    ) -> None:
        super().__init__(
            start=start,
            end=end,
            level=level,
            blocks=blocks,
            cache_activations=cache_activations,
            static_data=static_data,
            cache_max_bytes=cache_max_bytes,
            cache_on=cache_on,
        )
        self.start_step = self.end_step = 0

    def _steps(self, total: float, trainer) -> tuple[int, int]:
        c = self.config
        return to_steps(c.start, total, trainer=trainer), to_steps(c.end, total, trainer=trainer)

    def prepare(self, trainer, pl_module) -> None:
        self.start_step, self.end_step = self._steps(self.total_steps, trainer)

    def prefix_at(self, step: int) -> int:
        c = self.config
        return frozen_block_count(
            progressive_fraction(step, self.start_step, self.end_step, c.level), len(self.freezer)
        )

    def _most(self, start: int, end: int, total_steps: float, blocks: int) -> int:
        """Blocks frozen after the last step that still trains (total - 1): the most that ever train frozen."""
        level = self.config.level
        if math.isfinite(total_steps):
            return frozen_block_count(progressive_fraction(int(total_steps) - 1, start, end, level), blocks)
        return frozen_block_count(level, blocks)

    def most_frozen_prefix(self, trainer, freezer: BlockFreezer) -> int:
        total_steps = float(trainer.estimated_stepping_batches)
        try:
            start, end = self._steps(total_steps, trainer)
        except ValueError:
            return len(freezer) - 1
        return min(len(freezer) - 1, self._most(start, end, total_steps, len(freezer)))

    def schedule_problems(self, trainer, freezer: BlockFreezer) -> list[str]:
        c, total_steps = self.config, float(trainer.estimated_stepping_batches)
        try:
            start, end = self._steps(total_steps, trainer)
        except ValueError as exc:
            return [f"start={c.start}/end={c.end}: {exc}"]
        problems = []
        if start >= total_steps:  # it used to train silently without ever freezing
            problems.append(
                f"start={c.start} (step {start}) is at or after the last step ({int(total_steps)}): nothing would "
                "freeze in this run; give an earlier start (a fraction such as 0.5 follows the run's length)"
            )
        elif start >= end:
            problems.append(
                f"start={c.start} (step {start}) is not before end={c.end} (step {end}): make start earlier than end"
            )
        blocks = len(freezer)
        if frozen_block_count(c.level, blocks) == 0:
            problems.append(
                f"level={c.level} freezes floor({c.level} * {blocks}) = 0 of the {blocks} blocks: "
                f"raise level to at least {1 / blocks:.3g} or name finer blocks with `blocks`"
            )
        most = self._most(start, end, total_steps, blocks)
        if self.everything_frozen(freezer, most):
            problems.append(
                f"level={c.level} with end={c.end} freezes every trainable parameter while training continues: "
                "lower level (e.g. 0.75) or move end to 1.0"
            )
        return problems
