"""Float8Training: eligible Linear layers trained with torchao's float8 matmuls (tensorwise or rowwise).

torchao's ``Float8Linear`` keeps the fp32 (master) weight and, in each forward and backward, casts
the input, weight and output gradient to fp8 with a dynamic scale (the amax of the tensor or of each
row) before a scaled fp8 GEMM: about 2x bf16 tensor-core throughput on H100-class GPUs, paid for in
casts, which is why small layers are slower in fp8 than in bf16 and are skipped. Float8 GEMMs need
both dimensions to be multiples of 16.

Where the hardware cannot run it (no CUDA GPU of compute capability >= 8.9) the technique is an
explained no-op, or a preflight error with ``on_unsupported="error"``. ``emulate=True`` (tests, CPU)
converts anyway with torchao's emulation: the same casts, the matmul in fp32.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from pydantic import Field
from torch import nn

from lightning_eff import Technique, TechniqueConfig, hookimpl
from lightning_eff.config_types import Patterns
from lightning_eff.errors import MissingDependencyError
from lightning_eff.surgery import name_matches
from lightning_eff.technique import DDP_TESTED

from .memory import parameter_bytes

MIN_CAPABILITY = (8, 9)  # Ada / Hopper: the first GPUs with fp8 tensor cores


# --- pure decisions -------------------------------------------------------------------------------


def float8_skip_reason(in_features: int, out_features: int, min_features: int) -> str | None:
    """Why a Linear of this shape is not converted (``None``: it is eligible)."""
    if in_features % 16 or out_features % 16:
        return f"{in_features}x{out_features}: dimensions must be multiples of 16 for fp8 GEMMs"
    if min(in_features, out_features) < min_features:
        return f"{in_features}x{out_features}: smaller than min_features={min_features}, where fp8 casts cost more than the GEMM saves"
    return None


def plan_conversion(
    root: nn.Module, min_features: int, include: Sequence[str], exclude: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """``(converted, skipped)``: names of the Linear layers to convert, and the others with the reason."""
    converted, skipped = [], {}
    for name, module in root.named_modules():
        if not isinstance(module, nn.Linear) or not name:
            continue
        if include and not name_matches(name, list(include)):
            continue
        if exclude and name_matches(name, list(exclude)):
            skipped[name] = "excluded by exclude_names"
            continue
        reason = float8_skip_reason(module.in_features, module.out_features, min_features)
        if reason is None:
            converted.append(name)
        else:
            skipped[name] = reason
    return converted, skipped


def hardware_problem(device: torch.device | None = None) -> str | None:
    """Why this machine cannot run float8 GEMMs (``None`` when it can)."""
    if not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no float8 dtypes (need torch >= 2.1)"
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return "no CUDA GPU: float8 GEMMs need compute capability >= 8.9 (Ada, Hopper)"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return f"GPU compute capability {capability[0]}.{capability[1]} < 8.9 has no fp8 tensor cores"
    return None


def torchao_missing() -> str | None:
    if importlib.util.find_spec("torchao") is None:
        return str(MissingDependencyError("torchao", "float8_training", extra="precision"))
    return None


def convert(root: nn.Module, names: Sequence[str], recipe: str, emulate: bool) -> int:
    """Swap the named Linear layers for torchao ``Float8Linear`` in place; return how many."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(recipe)
    if emulate:
        config = dataclasses.replace(config, emulate=True)
    wanted = set(names)
    convert_to_float8_training(root, config=config, module_filter_fn=lambda module, fqn: fqn in wanted)
    return sum(1 for _, m in root.named_modules() if type(m).__name__ == "Float8Linear")


# --- the technique --------------------------------------------------------------------------------


class Float8TrainingConfig(TechniqueConfig):
    recipe: Literal["tensorwise", "rowwise"] = Field(
        "tensorwise", description="torchao float8 recipe: one scale per tensor, or per row (more accurate, slower)"
    )
    min_features: int = Field(
        1024, ge=16, description="skip Linear layers whose smaller dimension is below this (fp8 does not pay off)"
    )
    include_names: Patterns = Field((), description="glob patterns of Linear names to convert (empty: all)")
    exclude_names: Patterns = Field(
        ("*lm_head",), description="glob patterns of Linear names never converted (the output head by default)"
    )
    on_unsupported: Literal["skip", "error"] = Field(
        "skip", description="without fp8 hardware: 'skip' (an explained no-op) or 'error' (refused at preflight)"
    )
    emulate: bool = Field(False, description="testing: convert on any device with torchao's fp32 emulation")


class Float8Training(Technique):
    """Eligible Linear layers trained with torchao float8 (tensorwise or rowwise scaling); a no-op without fp8 hardware."""

    name = "float8_training"
    phase = "surgery"
    supported_strategies = DDP_TESTED
    acts_before_sharding = True  # swaps Linear layers for torchao's Float8Linear
    strategy_refusals = {
        "fsdp2": "float8 with FSDP2 needs torchao's float8 all-gather (enable_fsdp_float8_all_gather and "
        "precompute_float8_dynamic_scale_for_fsdp after each step), which runs only on fp8 GPUs and is not tested "
        "here; on CPU the technique is a no-op: use strategy='ddp', or convert with torchao yourself in "
        "configure_model before fully_shard",
    }
    Config = Float8TrainingConfig

    def __init__(
        self,
        recipe: Literal["tensorwise", "rowwise"] = "tensorwise",
        min_features: int = 1024,
        include_names: Sequence[str] = (),
        exclude_names: Sequence[str] = ("*lm_head",),
        on_unsupported: Literal["skip", "error"] = "skip",
        emulate: bool = False,
    ) -> None:
        super().__init__(
            recipe=recipe, min_features=min_features, include_names=include_names,
            exclude_names=exclude_names, on_unsupported=on_unsupported, emulate=emulate,
        )
        self.converted: list[str] = []
        self.skipped: dict[str, str] = {}
        self.inactive_reason: str | None = None
        self._linear_total = 0
        self._param_bytes = 0

    def _plan(self, pl_module) -> tuple[list[str], dict[str, str]]:
        c = self.config
        return plan_conversion(pl_module, c.min_features, c.include_names, c.exclude_names)

    @hookimpl
    def leff_validate(self, techniques, trainer_kwargs):
        missing = torchao_missing()
        return [missing] if missing else []

    def validate(self, trainer, pl_module) -> list[str]:
        c = self.config
        problems = []
        if c.include_names:
            names = [n for n, m in pl_module.named_modules() if isinstance(m, nn.Linear)]
            for pattern in c.include_names:
                if not any(name_matches(n, pattern) for n in names):
                    problems.append(f"include_names pattern {pattern!r} matches no Linear layer; they are named like {names[:6]}")
        hardware = hardware_problem(trainer.strategy.root_device)
        if hardware and not c.emulate and c.on_unsupported == "error":
            problems.append(f"cannot train in float8 here: {hardware}; set on_unsupported='skip' to run without it, "
                            "or emulate=True to test the conversion on CPU")
        return problems

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        c = self.config
        self._linear_total = sum(1 for _, m in pl_module.named_modules() if isinstance(m, nn.Linear))
        self._param_bytes = parameter_bytes(pl_module)
        converted, self.skipped = self._plan(pl_module)
        hardware = hardware_problem(trainer.strategy.root_device)
        if torchao_missing():
            self.inactive_reason = torchao_missing()
        elif hardware and not c.emulate:
            self.inactive_reason = f"float8_training is a no-op on this machine: {hardware} (emulate=True converts anyway, for tests)"
        elif not converted:
            self.inactive_reason = f"no Linear layer is eligible (min_features={c.min_features}, dims multiple of 16)"
        if self.inactive_reason is None:
            convert(pl_module, converted, c.recipe, emulate=c.emulate)
            self.converted = converted
        if trainer.is_global_zero:
            mode = f"{c.recipe}, emulated" if c.emulate else c.recipe
            lines = [f"float8_training ({mode}): {len(self.converted)} Linear layer(s) converted, {len(self.skipped)} skipped"]
            lines += [f"  skipped {name}: {reason}" for name, reason in list(self.skipped.items())[:20]]
            if self.inactive_reason:
                lines.insert(0, self.inactive_reason)
            rank_zero_info("\n".join(lines))

    def metrics(self) -> dict[str, float]:
        return {
            "active": float(bool(self.converted)),
            "converted_layers": float(len(self.converted)),
            "skipped_layers": float(len(self.skipped)),
            "low_precision_linear_fraction": len(self.converted) / max(1, self._linear_total),
            "parameter_bytes": float(self._param_bytes),
        }

    def savings(self) -> dict[str, float]:
        return {"float8_linear_fraction": len(self.converted) / max(1, self._linear_total)}

    def state_dict(self) -> dict[str, Any]:
        # The conversion is a function of the config and the model; the weights keep Linear's keys.
        return {"converted": list(self.converted)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
