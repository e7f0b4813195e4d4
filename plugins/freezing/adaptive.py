"""Adaptive freezing in the style of AutoFreeze (Liu, Agarwal, Venkataraman, "AutoFreeze: Automatically
Freezing Model Blocks to Accelerate Fine-tuning", 2021) and Egeria (Wang et al., 2023).

Every ``every`` optimizer steps, each active block's gradient norm averaged over the window is
compared with the previous window's; a block whose relative change is at most the ``percentile``-th
percentile of the active blocks' changes has stopped learning relative to the rest. The longest such
prefix of active blocks is frozen (a block only after every block before it: only a prefix saves
backward compute), up to ``max_fraction`` of the blocks; the last block (the head) never freezes.

Gradient norms are read in ``on_before_optimizer_step``: after DDP's all-reduce (identical on every
rank) and after AMP unscaling. The window sums are in the checkpoint, so a resume mid-window decides
exactly like the uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from lightning_eff.schedule import TimeLike, TimePoint, to_steps
from lightning_eff.sharding import global_norm

from .base import PREFIX_SCHEDULES, FreezingConfig, FreezingTechnique
from .freezer import BlockFreezer
from .schedules import frozen_block_count, relative_changes, slow_prefix


class AdaptiveFreezingConfig(FreezingConfig):
    every: TimePoint = Field(
        50, validate_default=True, description="window length between decisions: steps (int), fraction of the run..."
    )
    percentile: float = Field(
        50.0, gt=0.0, le=100.0, description="a block is converged when its change is at most this percentile"
    )
    max_fraction: float = Field(
        0.75, gt=0.0, lt=1.0, description="at most this fraction of the blocks is ever frozen"
    )
    start: TimePoint = Field(
        0, validate_default=True, description="no block is frozen before this time point (steps, fraction...)"
    )

    @field_validator("every")
    @classmethod
    def _positive_window(cls, every: TimePoint) -> TimePoint:
        if every.value == 0:
            raise ValueError("every must be positive (a window of at least 1 optimizer step)")
        return every


class AdaptiveFreezing(FreezingTechnique):
    """Freeze the longest prefix of blocks whose gradient norm stopped changing (AutoFreeze-style)."""

    name = "adaptive_freezing"
    conflicts = tuple(n for n in PREFIX_SCHEDULES if n != "adaptive_freezing")
    Config = AdaptiveFreezingConfig

    def __init__(
        self,
        every: TimeLike = 50,
        percentile: float = 50.0,
        max_fraction: float = 0.75,
        start: TimeLike = 0,
        blocks: Sequence[str] = (),
        cache_activations: bool = False,
        static_data: bool = False,
        cache_max_bytes: int = 2**30,
        cache_on: Literal["cpu", "device"] = "cpu",
    ) -> None:
        super().__init__(
            every=every,
            percentile=percentile,
            max_fraction=max_fraction,
            start=start,
            blocks=blocks,
            cache_activations=cache_activations,
            static_data=static_data,
            cache_max_bytes=cache_max_bytes,
            cache_on=cache_on,
        )
        self.every_steps = self.start_step = self.max_blocks = 0
        self.window_sums: list[float] = []
        self.window_steps = 0
        self.previous: list[float] | None = None
        self.last_changes: list[float] = []
        self._measured_step = -1

    def prepare(self, trainer, pl_module) -> None:
        c, blocks = self.config, len(self.freezer)
        self.every_steps = max(1, to_steps(c.every, self.total_steps, trainer=trainer))
        self.start_step = to_steps(c.start, self.total_steps, trainer=trainer)
        self.max_blocks = min(blocks - 1, frozen_block_count(c.max_fraction, blocks))
        self.window_sums = [0.0] * blocks

    def prefix_at(self, step: int) -> int:
        return self.freezer.prefix_length()  # decided from gradients, not from the step

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step == self._measured_step:
            return
        self._measured_step = step
        first = self.freezer.prefix_length()
        norms = []
        for params in self.freezer.block_params[first:]:
            grads = [p.grad for p in params if p.grad is not None]
            norms.append(
                torch.linalg.vector_norm(torch.stack([global_norm(g) for g in grads]))
                if grads
                else torch.zeros(())
            )
        for i, value in enumerate(torch.stack(norms).tolist(), start=first):
            self.window_sums[i] += value
        self.window_steps += 1

    def after_optimizer_step(self, trainer, pl_module, step: int) -> None:
        if step % self.every_steps or self.window_steps == 0:
            return
        current = [s / self.window_steps for s in self.window_sums]
        first = self.freezer.prefix_length()
        if self.previous is not None and step >= self.start_step and first < self.max_blocks:
            # candidates: active blocks except the head, which never freezes
            last = len(self.freezer) - 1
            self.last_changes = relative_changes(self.previous[first:last], current[first:last])
            target = min(self.max_blocks, first + slow_prefix(self.last_changes, self.config.percentile))
            self.freeze_to(target, trainer)
        self.previous = current
        self.window_sums = [0.0] * len(self.freezer)
        self.window_steps = 0

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        finite = [c for c in self.last_changes if math.isfinite(c)]
        if finite:
            out["grad_norm_change_min"] = min(finite)
            out["grad_norm_change_median"] = sorted(finite)[len(finite) // 2]
        return out

    def extra_state(self) -> dict[str, Any]:
        return {
            "window_sums": list(self.window_sums),
            "window_steps": self.window_steps,
            "previous": None if self.previous is None else list(self.previous),
            "last_changes": list(self.last_changes),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.window_sums = list(state["window_sums"])
        self.window_steps = state["window_steps"]
        self.previous = None if state["previous"] is None else list(state["previous"])
        self.last_changes = list(state["last_changes"])

    def most_frozen_prefix(self, trainer, freezer: BlockFreezer) -> int:
        blocks = len(freezer)
        return min(blocks - 1, frozen_block_count(self.config.max_fraction, blocks))

    def schedule_problems(self, trainer, freezer: BlockFreezer) -> list[str]:
        c, total = self.config, float(trainer.estimated_stepping_batches)
        blocks = len(freezer)
        problems = []
        if frozen_block_count(c.max_fraction, blocks) == 0:
            problems.append(
                f"max_fraction={c.max_fraction} allows floor({c.max_fraction} * {blocks}) = 0 of the {blocks} blocks to freeze: "
                f"raise it to at least {1 / blocks:.3g} or name finer blocks with `blocks`"
            )
        try:
            every = max(1, to_steps(c.every, total, trainer=trainer))
            start = to_steps(c.start, total, trainer=trainer)
        except ValueError as exc:
            return problems + [f"every={c.every}/start={c.start}: {exc}"]
        first_decision = max(2 * every, -(-start // every) * every)  # decisions fall on multiples of every
        if math.isfinite(total) and first_decision >= total:
            problems.append(
                f"the first freezing decision needs two windows of every={c.every} ({every} steps) after start, at step "
                f"{first_decision}, but the run ends at step {int(total)}: lower every or start"
            )
        if self.everything_frozen(freezer, min(blocks - 1, frozen_block_count(c.max_fraction, blocks))):
            problems.append(f"max_fraction={c.max_fraction} freezes every trainable parameter: lower it")
        return problems
