"""FreezeOut (Brock, Lim, Ritchie, Weston, "FreezeOut: Accelerate Training by Progressively Freezing
Layers", 2017).

Block ``i`` of ``L`` stops training at ``t_i = T * scale(t0 + (1 - t0) * i / (L - 1))`` (the last
block, the head, never stops) and its learning rate is cosine-annealed from its initial value to 0 at
``t_i``; with ``scale_lr`` the initial value is divided by ``t_i / T`` so that early-stopping blocks
get a comparable total learning rate [paper defaults: t0=0.8, cubic, scale_lr].

The per-block learning rate multiplies the user's schedule without touching the param groups (the
user's groups and LR schedulers stay as they are): the optimizer makes its ordinary update and the
update of each annealed parameter is then scaled, ``w = w_before + f_i(t) * (w_after - w_before)``.
For SGD (with momentum and weight decay), Adam and AdamW the update is proportional to the learning
rate, so this is exactly the update with learning rate ``f_i(t) * lr``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from .base import PREFIX_SCHEDULES, FreezingConfig, FreezingTechnique
from .freezer import BlockFreezer
from .schedules import freezeout_lr_factor, freezeout_stop_fractions, stopped_prefix


class FreezeOutConfig(FreezingConfig):
    t0: float = Field(
        0.8, gt=0.0, le=1.0, description="fraction of the run (before scaling) at which the first block stops"
    )
    scale: Literal["linear", "squared", "cubic"] = Field(
        "cubic", description="how stop times are scaled: t_i = scale(...)"
    )
    scale_lr: bool = Field(True, description="divide each block's initial learning-rate factor by t_i / T")


class FreezeOut(FreezingTechnique):
    """FreezeOut: each block's learning rate anneals to 0 at its own stop time, then the block freezes."""

    name = "freeze_out"
    conflicts = tuple(n for n in PREFIX_SCHEDULES if n != "freeze_out")
    Config = FreezeOutConfig

    def __init__(
        self,
        t0: float = 0.8,
        scale: Literal["linear", "squared", "cubic"] = "cubic",
        scale_lr: bool = True,
        blocks: Sequence[str] = (),
        cache_activations: bool = False,
        static_data: bool = False,
        cache_max_bytes: int = 2**30,
        cache_on: Literal["cpu", "device"] = "cpu",
    ) -> None:
        super().__init__(
            t0=t0,
            scale=scale,
            scale_lr=scale_lr,
            blocks=blocks,
            cache_activations=cache_activations,
            static_data=static_data,
            cache_max_bytes=cache_max_bytes,
            cache_on=cache_on,
        )
        self.stop_steps: list[int] = []
        self._before: list[tuple[torch.nn.Parameter, torch.Tensor, float]] = []
        self._snapshot_step = -1

    def _stop_steps(self, blocks: int, total: float) -> list[int]:
        c = self.config
        return [int(f * total + 0.5) for f in freezeout_stop_fractions(blocks, c.t0, c.scale)]

    def prepare(self, trainer, pl_module) -> None:
        self.stop_steps = self._stop_steps(len(self.freezer), self.total_steps)

    def prefix_at(self, step: int) -> int:
        return stopped_prefix(step, self.stop_steps)

    def lr_factors(self, step: int) -> list[float]:
        """Each block's learning-rate multiplier for the update made at ``step``."""
        total = int(self.total_steps)
        return [freezeout_lr_factor(step, stop, total, self.config.scale_lr) for stop in self.stop_steps]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step == self._snapshot_step:  # several optimizers: one snapshot per step
            return
        self._snapshot_step = step
        factors = self.lr_factors(step)
        # A parameter shared by blocks trains at the largest factor of its holders (until all stop).
        per_param: dict[int, tuple[torch.nn.Parameter, float]] = {}
        for i, params in enumerate(self.freezer.block_params):
            for p in params:
                if p.requires_grad:
                    f = max(factors[i], per_param.get(id(p), (p, -math.inf))[1])
                    per_param[id(p)] = (p, f)
        self._before = [(p, p.detach().clone(), f) for p, f in per_param.values() if f != 1.0]

    def after_optimizer_step(self, trainer, pl_module, step: int) -> None:
        with torch.no_grad():
            for p, before, factor in self._before:
                p.sub_(before).mul_(factor).add_(before)  # w_before + f * (w_after - w_before)
        self._before = []
        super().after_optimizer_step(trainer, pl_module, step)

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        if self.stop_steps and self._snapshot_step >= 0:
            prefix = self.freezer.prefix_length()
            if prefix < len(self.stop_steps):
                out["lr_factor_first_active"] = self.lr_factors(self._snapshot_step)[prefix]
        return out

    def schedule_problems(self, trainer, freezer: BlockFreezer) -> list[str]:
        c, total = self.config, float(trainer.estimated_stepping_batches)
        if not math.isfinite(total):
            return [
                "stop times are fractions of the run, which has no known length: set max_steps or max_epochs"
            ]
        stops = self._stop_steps(len(freezer), total)
        problems = []
        if stops[0] < 1:
            problems.append(
                f"t0={c.t0} with scale={c.scale!r} stops the first block at step {stops[0]} of {int(total)}: raise t0"
            )
        if self.everything_frozen(freezer, len(freezer) - 1):
            problems.append(
                "the last block holds no parameter of its own, so every parameter would freeze: name the blocks with `blocks`"
            )
        return problems
