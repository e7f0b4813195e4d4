"""LowPrecisionOptimizerStates: the module's Adam/AdamW swapped for one with bf16 or 8-bit moments.

Why a swap rather than asking users to change ``configure_optimizers``: recipes and the bench
harness apply techniques to unchanged modules. The swap happens in ``on_fit_start``, when Lightning
has built the optimizers and schedulers but not yet restored their checkpointed state, so a resumed
run loads its saved low-precision moments into the new optimizer. The replacement shares the
original's parameter-group dicts, so learning-rate schedulers (which write ``group["lr"]``) keep
working; they are also pointed at it. Wrapping torch's optimizer in place (its ``state`` swapped for
a quantising mapping) was rejected: Adam's foreach/fused kernels write into the state tensors in
place, which a quantised store cannot honour. A module may also use
:class:`~.optimizer.LowPrecisionAdamW` directly; it is then left as it is.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from lightning_eff import Technique, TechniqueConfig
from lightning_eff.config_types import Seed
from lightning_eff.errors import LightningEffError
from lightning_eff.technique import DDP_TESTED

from .blockwise import state_bytes_per_value
from .memory import optimizer_state_bytes, parameter_bytes
from .optimizer import LowPrecisionAdamW

REPLACEABLE = (torch.optim.Adam, torch.optim.AdamW)


def swap_optimizers(trainer, options: dict[str, Any]) -> int:
    """Replace every Adam/AdamW of the Trainer (and its schedulers' reference); return how many."""
    new_optimizers, swapped = [], 0
    for optimizer in trainer.optimizers:
        if isinstance(optimizer, LowPrecisionAdamW):
            new_optimizers.append(optimizer)
            continue
        if type(optimizer) not in REPLACEABLE:
            raise LightningEffError(
                f"low_precision_optimizer_states replaces torch.optim.Adam/AdamW, but configure_optimizers returned "
                f"{type(optimizer).__name__}: use AdamW (or lightning_eff.plugins.precision.LowPrecisionAdamW), "
                "or remove the technique"
            )
        new = LowPrecisionAdamW.replacing(optimizer, **options)
        for config in trainer.lr_scheduler_configs:
            if config.scheduler.optimizer is optimizer:
                config.scheduler.optimizer = new
                _mark_step_tracked(new)
        new_optimizers.append(new)
        swapped += 1
    trainer.strategy.optimizers = new_optimizers
    return swapped


def _mark_step_tracked(optimizer: torch.optim.Optimizer) -> None:
    """Let LR schedulers see that this optimizer steps. A scheduler wraps its optimizer's ``step`` when
    it is built, to warn about calls in the wrong order; one pointed at a new optimizer would warn
    "lr_scheduler.step() before optimizer.step()" although the order is right."""
    if hasattr(optimizer.step, "_wrapped_by_lr_sched"):
        return
    step = optimizer.step

    def tracked_step(*args: Any, **kwargs: Any) -> Any:
        optimizer._opt_called = True  # what torch's own wrapper records
        return step(*args, **kwargs)

    tracked_step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    optimizer.step = tracked_step  # type: ignore[method-assign]


class LowPrecisionOptimizerStatesConfig(TechniqueConfig):
    state_dtype: Literal["bf16", "int8"] = Field("int8", description="Adam moments in bf16 (2 bytes) or blockwise 8-bit (~1 byte)")
    block_size: int = Field(256, ge=16, le=65536, description="values sharing one fp32 absmax (int8 only)")
    min_numel: int = Field(4096, ge=0, description="parameters with fewer elements keep fp32 moments")
    stochastic_rounding: bool = Field(True, description="round moments stochastically (unbiased) rather than to nearest")
    seed: Seed = Field(0, description="seed of the stochastic rounding noise")


class LowPrecisionOptimizerStates(Technique):
    """Adam/AdamW moments stored in bf16 or blockwise 8-bit, with an exact state_dict round trip."""

    name = "low_precision_optimizer_states"
    phase = "optimizer"
    supported_strategies = DDP_TESTED
    strategy_refusals = {
        "fsdp2": "its optimizer quantises whole parameter tensors, but FSDP2 parameters are DTensor shards (the "
        "blockwise update would have to run on each rank's local slice, with blocks per shard): keep "
        "torch.optim.AdamW under FSDP2 (its states are sharded already, 1/world_size per rank), or use strategy='ddp'",
    }
    Config = LowPrecisionOptimizerStatesConfig

    def __init__(
        self,
        state_dtype: Literal["bf16", "int8"] = "int8",
        block_size: int = 256,
        min_numel: int = 4096,
        stochastic_rounding: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(state_dtype=state_dtype, block_size=block_size, min_numel=min_numel,
                         stochastic_rounding=stochastic_rounding, seed=seed)
        self.swapped = 0
        self._trainer = None
        self._param_bytes = 0
        self._trainable = 0
        self._quantised = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.swapped = swap_optimizers(trainer, self.config.model_dump())
        self._trainer = trainer
        self._param_bytes = parameter_bytes(pl_module)
        params = [p for o in trainer.optimizers for g in o.param_groups for p in g["params"]]
        self._trainable = sum(p.numel() for p in params)
        self._quantised = sum(p.numel() for p in params if p.numel() >= self.config.min_numel)

    def metrics(self) -> dict[str, float]:
        if self._trainer is None:
            return {}
        state = optimizer_state_bytes(self._trainer.optimizers)
        fp32 = 8.0 * self._trainable  # two fp32 moments per element (the step counters aside)
        return {
            "optimizer_state_bytes": float(state),
            "optimizer_state_bytes_fp32_adam": fp32,
            "parameter_bytes": float(self._param_bytes),
            "swapped_optimizers": float(self.swapped),
            "quantised_fraction": self._quantised / max(1, self._trainable),
        }

    def savings(self) -> dict[str, float]:
        if not self._trainable:
            return {}
        c = self.config
        per_value = state_bytes_per_value(c.state_dtype, c.block_size)
        expected = 2 * (per_value * self._quantised + 4.0 * (self._trainable - self._quantised))
        return {"optimizer_state_memory_ratio": expected / (8.0 * self._trainable)}

    def state_dict(self) -> dict[str, Any]:
        # The moments are in the optimizer's own state_dict (Lightning checkpoints it); nothing else.
        return {"swapped": self.swapped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
