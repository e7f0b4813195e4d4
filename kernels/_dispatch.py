"""Which implementation of an op runs: a plugin's, the Triton kernel, or the PyTorch reference.

Decided per call, from the inputs and the environment:

1. ``LIGHTNING_EFF_KERNELS=torch`` -> the reference; ``=triton`` -> the Triton kernel (an error if
   Triton cannot run on the inputs' device). Either value also skips plugin implementations, so
   the override is the way to compare a plugin against the built-ins.
2. A plugin implementation registered through ``leff_register_kernels`` for the op: the highest
   priority one whose ``fn.supports(*args, **kwargs)`` accepts the inputs (an ``fn`` without a
   ``supports`` attribute accepts everything). The registry is read on the first call, never at
   import, so importing ``lightning_eff.kernels`` loads no plugins.
3. CUDA tensor and Triton importable -> the Triton kernel.
4. CPU tensor, ``TRITON_INTERPRET=1`` now *and* when this module was imported -> the same Triton
   kernel run by Triton's interpreter (how the test suite checks kernels on machines without a GPU).
   ``triton.jit`` decides at decoration time whether a kernel is interpreted, which is why the
   variable must be set before ``lightning_eff.kernels`` is imported (``tests/conftest.py`` does).
5. Otherwise -> the plain-PyTorch reference, which is also the production CPU path.

Triton is optional (no wheels for macOS/Windows): ``triton`` and ``tl`` are ``None`` without it, and
every op still works through its reference.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

try:  # Optional dependency: kernels are defined only when it imports.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is missing
    triton = None
    tl = None

BACKEND_ENV = "LIGHTNING_EFF_KERNELS"
INTERPRET_ENV = "TRITON_INTERPRET"

# Whether the kernels defined after this import are interpreter functions (see rule 4 above).
INTERPRETED = triton is not None and os.environ.get(INTERPRET_ENV) == "1"


def forced_backend() -> str | None:
    """``"torch"`` or ``"triton"`` when ``LIGHTNING_EFF_KERNELS`` forces one, else ``None``."""
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("torch", "triton"):
        raise ValueError(f"{BACKEND_ENV}={value!r} is not understood: set it to 'torch', 'triton' or leave it unset")
    return value


def triton_runs_on(tensor: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on ``tensor``'s device in this process."""
    if triton is None:
        return False
    if tensor.is_cuda:
        return True
    return tensor.device.type == "cpu" and INTERPRETED and os.environ.get(INTERPRET_ENV) == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    """True when the built-in Triton kernel (rather than the reference) should run on ``tensor``."""
    forced = forced_backend()
    if forced == "torch":
        return False
    runs = triton_runs_on(tensor)
    if forced == "triton" and not runs:
        if triton is None:
            fix = "install triton"
        elif tensor.device.type == "cpu":
            fix = f"set {INTERPRET_ENV}=1 before importing lightning_eff.kernels (CPU tensors need the interpreter)"
        else:
            fix = f"move the inputs to CUDA (Triton has no {tensor.device.type} backend here)"
        raise RuntimeError(f"{BACKEND_ENV}=triton but Triton cannot run on a {tensor.device.type} tensor: {fix}, "
                           f"or unset {BACKEND_ENV}")
    return runs


def plugin_implementation(op: str, *args: Any, **kwargs: Any) -> Callable[..., Any] | None:
    """The highest-priority registered implementation of ``op`` that supports these inputs, or None."""
    if forced_backend() is not None:
        return None
    for impl in sorted(_registered(op), key=lambda impl: -impl.priority):
        supports = getattr(impl.fn, "supports", None)
        if supports is None or supports(*args, **kwargs):
            return impl.fn
    return None


def _registered(op: str) -> list[Any]:
    from lightning_eff import registry  # lazy: importing kernels must not load plugins

    if registry._REGISTRY is None:
        if torch.compiler.is_compiling():
            # torch.compile cannot trace entry-point loading; a registry loaded before compiling
            # (any eager kernel call or get_registry()) is honoured, none is loaded while tracing.
            return []
        registry.get_registry()
    return registry._REGISTRY.kernels.get(op, [])


def builtin_triton_takes(op: str, *args: Any, **kwargs: Any) -> bool:
    """Whether the built-in op would run its Triton kernel on these inputs: the op's own check
    (dtype, row width, number of experts) and the environment (:func:`use_triton`). Ops whose
    kernels take every input Triton can run on fall through to :func:`use_triton`."""
    from importlib import import_module

    # import_module: the package re-exports functions under some module names (fp8_cast)
    cross_entropy, fp8_cast, grouped_gemm, moe_routing, norms = (
        import_module(f"lightning_eff.kernels.{name}")
        for name in ("cross_entropy", "fp8_cast", "grouped_gemm", "moe_routing", "norms")
    )
    first = args[0]
    if op in ("rms_norm", "layer_norm"):
        return norms._triton_for(first)
    if op in ("cross_entropy_logsumexp", "per_sample_cross_entropy", "fused_linear_cross_entropy"):
        # fused_linear_cross_entropy runs the cross-entropy kernel on logits of the hidden's dtype
        return cross_entropy._triton_for(first)
    if op == "fp8_cast":
        return first.dtype in fp8_cast.TRITON_DTYPES and use_triton(first)
    if op == "moe_grouped_swiglu":
        return grouped_gemm._triton_for(first)
    if op == "moe_topk_routing":
        return first.dtype != torch.float64 and moe_routing._triton_for(first, first.shape[-1])
    if op == "moe_routing_metadata":
        num_experts = args[1] if len(args) > 1 else kwargs["num_experts"]
        return moe_routing._triton_for(first, int(num_experts))
    return use_triton(first)


def implementation_name(op: str, *args: Any, **kwargs: Any) -> str:
    """What a call of ``op`` with these inputs would run: ``"plugin:<name>"``, ``"triton"``,
    ``"triton-interpreter"`` or ``"torch"`` (the first positional argument is the deciding tensor;
    inputs the Triton kernel does not take, e.g. float64 or rows too wide, name ``"torch"``)."""
    fn = plugin_implementation(op, *args, **kwargs)
    if fn is not None:
        name = next(impl.name for impl in _registered(op) if impl.fn is fn)
        return f"plugin:{name}"
    if builtin_triton_takes(op, *args, **kwargs):
        return "triton" if args[0].is_cuda else "triton-interpreter"
    return "torch"


def autotune(configs: list[Any], key: list[str], **kwargs: Any) -> Callable[[Any], Any]:
    """``triton.autotune`` over ``configs`` on a GPU; only the first config under the interpreter or
    without CUDA, because choosing between configs means timing them on a GPU. Put the config that
    suits small test cases first."""
    if INTERPRETED or not torch.cuda.is_available():
        configs = configs[:1]
    return triton.autotune(configs=configs, key=key, **kwargs)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
