"""Precision names and the per-module fp32 policy (pure functions, no Trainer).

Under ``bf16-mixed`` / ``16-mixed`` Lightning runs the forward pass under ``torch.autocast``: the
parameters stay fp32, matmuls run in the low-precision dtype. Some modules lose accuracy there
and are conventionally kept in fp32: normalisation statistics (small-variance rows vanish in bf16),
MoE routers (a bf16 softmax over experts flips top-k choices; ST-MoE, Switch Transformer keep the
router in fp32) and the loss head (logits of a large vocabulary). :func:`keep_in_fp32` wraps such a
module's ``forward`` so that it runs with autocast off and its floating inputs upcast to fp32.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lightning_eff.surgery import name_matches

#: Trainer precisions this plugin can set, and the autocast dtype each runs matmuls in
LOW_PRECISIONS: dict[str, torch.dtype] = {
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
    "transformer-engine": torch.bfloat16,
    "transformer-engine-float16": torch.float16,
}
#: class-name globs of the modules kept in fp32 by default: norms and MoE routers (``*Router``
#: matches this package's ``MoERouter`` and routers of that name elsewhere)
DEFAULT_FP32_TYPES = ("*Norm", "*Norm1d", "*Norm2d", "*Norm3d", "*Router", "*TopKRouter")


def precision_problem(precision: str) -> str | None:
    """A sentence when ``precision`` is not one this technique sets (``None`` when it is)."""
    if precision in LOW_PRECISIONS:
        return None
    return (
        f"precision={precision!r} is not a mixed precision it can set; use one of {sorted(LOW_PRECISIONS)} "
        f"('32-true' is the baseline: remove the technique instead)"
    )


def type_matches(module: nn.Module, patterns: Sequence[str]) -> bool:
    """Whether any class in the module's MRO has a name matching one of the globs (``*Norm``)."""
    names = [cls.__name__ for cls in type(module).__mro__ if cls not in (nn.Module, object)]
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def fp32_policy_modules(
    root: nn.Module, name_patterns: Sequence[str], type_patterns: Sequence[str]
) -> dict[str, nn.Module]:
    """Qualified name -> module of every module the policy keeps in fp32, outermost only.

    A module matches by its qualified name (globs / ``re:``, as in :func:`lightning_eff.surgery.name_matches`)
    or by a class name glob. Descendants of a matched module are covered by it and not listed.
    """
    chosen: dict[str, nn.Module] = {}
    for name, module in root.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in chosen):
            continue
        if (name_patterns and name_matches(name, list(name_patterns))) or (type_patterns and type_matches(module, type_patterns)):
            chosen[name] = module
    return chosen


def unmatched_patterns(root: nn.Module, name_patterns: Sequence[str], type_patterns: Sequence[str]) -> list[str]:
    """The patterns (``name:<glob>`` / ``type:<glob>``) that match no module of ``root``."""
    names = [n for n, _ in root.named_modules() if n]
    missing = [f"name:{p}" for p in name_patterns if not any(name_matches(n, p) for n in names)]
    modules = [m for n, m in root.named_modules() if n]
    missing += [f"type:{p}" for p in type_patterns if not any(type_matches(m, [p]) for m in modules)]
    return missing


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_fp32(v) for k, v in value.items()}
    return value


class Fp32Forward:
    """A module's ``forward`` run with autocast off and floating inputs upcast to fp32.

    Stored as the instance attribute ``forward`` (``nn.Module.__call__`` looks it up on the
    instance); a class rather than a closure so the module still pickles.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        device = next(iter(self.module.parameters()), torch.empty(0)).device.type
        with torch.autocast(device_type=device, enabled=False):
            return type(self.module).forward(self.module, *_to_fp32(args), **_to_fp32(kwargs))


def keep_in_fp32(module: nn.Module) -> bool:
    """Make ``module`` run in fp32 under autocast (and its parameters fp32). False if it already did."""
    if isinstance(module.__dict__.get("forward"), Fp32Forward):
        return False
    module.float()
    module.forward = Fp32Forward(module)  # type: ignore[method-assign]
    return True


def release_fp32(module: nn.Module) -> None:
    """Undo :func:`keep_in_fp32` (the parameters stay fp32)."""
    if isinstance(module.__dict__.get("forward"), Fp32Forward):
        del module.forward


def is_kept_in_fp32(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("forward"), Fp32Forward)
