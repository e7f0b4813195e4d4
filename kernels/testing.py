"""One correctness check for every kernel: compare against a float64 reference, and inputs that
make out-of-bounds reads and writes visible.

Floating-point results::

    from lightning_eff.kernels import testing as kt

    x = kt.nan_guarded(torch.randn(7, 129, dtype=torch.float16))     # NaN bands around the input
    expected = kt.float64_reference(rms_norm_reference, x, w, 1e-6)  # same inputs, exact upcast
    kt.assert_matches_reference(my_kernel(x, w, 1e-6), expected, name="rms_norm")

The error of a result ``a`` against a reference ``e`` is measured over the finite positions as
``max|a - e| / max|e|`` and ``rms(a - e) / rms(e)`` (normalised, so entries near zero do not blow
up a relative error), against per-dtype tolerances set by the precision the result is held in
(:data:`TOLERANCES`). NaN, +inf and -inf must sit in exactly the same positions.

Integer and bool results (N:M masks, MoE routing) are compared exactly with
:func:`assert_exactly_equal`. Gradients: :func:`float64_gradients` runs autograd through the
reference in float64.

Out-of-bounds access: the Triton interpreter returns garbage for a read past a tensor instead of
faulting. :func:`nan_guarded` and :func:`non_contiguous` surround and interleave the values with
NaN, so a stray read turns a result NaN (a NaN-position mismatch); :func:`poisoned` makes an output
buffer whose unwritten elements stay NaN, and :func:`assert_guards_intact` checks that nothing was
written outside a tensor's elements. :func:`ragged_sizes` gives the sizes that hit block edges.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted normalised max and RMS relative errors."""

    max_rel: float
    rms_rel: float


# Set by the result's dtype: one ulp of it (the Triton interpreter's fp32 -> bf16 cast rounds
# differently from torch's, so a CPU test sees up to an ulp where a GPU sees half) plus the error of
# fp32 arithmetic in a kernel. A wrong kernel misses these by orders of magnitude.
TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(1e-12, 1e-13),
    torch.float32: Tolerance(2e-5, 2e-6),
    torch.float16: Tolerance(2e-3, 1e-3),
    torch.bfloat16: Tolerance(1.6e-2, 8e-3),
    torch.float8_e4m3fn: Tolerance(1.3e-1, 3e-2),
    torch.float8_e5m2: Tolerance(2.5e-1, 6e-2),
}


@dataclass(frozen=True)
class Comparison:
    """The error of ``actual`` against ``expected`` (see the module docstring for the definitions)."""

    max_rel: float
    rms_rel: float
    nonfinite_mismatches: int  # positions where NaN / +inf / -inf differ
    worst_index: tuple[int, ...] | None
    worst_actual: float | None
    worst_expected: float | None

    def within(self, tolerance: Tolerance) -> bool:
        return (
            self.nonfinite_mismatches == 0
            and self.max_rel <= tolerance.max_rel
            and self.rms_rel <= tolerance.rms_rel
        )


def compare(actual: Tensor, expected: Tensor) -> Comparison:
    """Normalised max and RMS relative errors of ``actual`` against ``expected``, in float64."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} differs from the reference's {tuple(expected.shape)}")
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    mismatches = int(
        ((a.isnan() != e.isnan()) | (a.isposinf() != e.isposinf()) | (a.isneginf() != e.isneginf())).sum()
    )
    finite = e.isfinite() & a.isfinite()
    if not finite.any():
        return Comparison(0.0, 0.0, mismatches, None, None, None)
    diff = torch.where(finite, (a - e).abs(), 0.0)
    e_finite = torch.where(finite, e, 0.0)
    scale = float(e_finite.abs().max())
    rms_scale = float(e_finite.square().sum().div(finite.sum()).sqrt())
    tiny = torch.finfo(torch.float64).tiny
    worst = int(diff.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape)) if a.dim() else ()
    return Comparison(
        max_rel=float(diff.max()) / max(scale, tiny),
        rms_rel=float(diff.square().sum().div(finite.sum()).sqrt()) / max(rms_scale, tiny),
        nonfinite_mismatches=mismatches,
        worst_index=index,
        worst_actual=float(a.reshape(-1)[worst]),
        worst_expected=float(e.reshape(-1)[worst]),
    )


def assert_matches_reference(
    actual: Tensor,
    expected: Tensor,
    *,
    dtype: torch.dtype | None = None,
    tolerance: Tolerance | None = None,
    name: str = "result",
) -> Comparison:
    """Raise ``AssertionError`` unless ``actual`` is within the tolerance of ``dtype`` (default: the
    dtype ``actual`` is held in) of the float64 reference ``expected``. Integer and bool results are
    compared exactly. Returns the measured :class:`Comparison` (useful for reporting)."""
    if not (actual.dtype.is_floating_point or actual.dtype.is_complex):
        assert_exactly_equal(actual, expected, name=name)
        return Comparison(0.0, 0.0, 0, None, None, None)
    dtype = dtype or actual.dtype
    if tolerance is None:
        if dtype not in TOLERANCES:
            raise KeyError(f"no tolerance for {dtype}: pass tolerance=Tolerance(max_rel, rms_rel)")
        tolerance = TOLERANCES[dtype]
    result = compare(actual, expected)
    if not result.within(tolerance):
        raise AssertionError(
            f"{name} ({dtype}) differs from the float64 reference: "
            f"max relative error {result.max_rel:.3g} (tolerance {tolerance.max_rel:.3g}), "
            f"RMS relative error {result.rms_rel:.3g} (tolerance {tolerance.rms_rel:.3g}), "
            f"{result.nonfinite_mismatches} NaN/inf position mismatches; worst at {result.worst_index}: "
            f"{result.worst_actual!r} vs {result.worst_expected!r}"
        )
    return result


def assert_exactly_equal(actual: Tensor, expected: Tensor, *, name: str = "result") -> None:
    """Exact comparison for integer, bool (and bit-exact float) results: shape, dtype and values."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        raise AssertionError(
            f"{name}: got {actual.dtype}{list(actual.shape)}, the reference is {expected.dtype}{list(expected.shape)}"
        )
    a, e = actual.detach().cpu(), expected.detach().cpu()
    differ = (a != e) & ~(a.isnan() & e.isnan()) if a.dtype.is_floating_point else a != e
    if differ.any():
        where = differ.nonzero()[:5].tolist()
        shown = ", ".join(f"{tuple(i)}: {a[tuple(i)].item()!r} vs {e[tuple(i)].item()!r}" for i in where)
        raise AssertionError(f"{name}: {int(differ.sum())} of {a.numel()} elements differ (first: {shown})")


# --- references in float64 ------------------------------------------------------------------------


def _to_float64(value: Any) -> Any:
    if isinstance(value, Tensor) and value.dtype.is_floating_point:
        return value.detach().to(torch.float64)
    return value


def float64_reference(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn`` run on the same inputs upcast to float64 (exact for every float dtype); integer
    tensors and non-tensors pass through unchanged."""
    with torch.no_grad():
        return fn(*[_to_float64(a) for a in args], **{k: _to_float64(v) for k, v in kwargs.items()})


def float64_gradients(
    fn: Callable[..., Any],
    args: Sequence[Any],
    grad_outputs: Tensor | Sequence[Tensor | None],
    wrt: Sequence[int],
) -> tuple[Tensor | None, ...]:
    """Gradients of ``fn(*args)`` with respect to ``args[i]`` for ``i`` in ``wrt``, by autograd
    through ``fn`` in float64. ``grad_outputs`` pairs with ``fn``'s outputs (``None`` for an output
    that gets no gradient); a gradient that does not reach an input comes back as ``None``."""
    inputs = [_to_float64(a) for a in args]
    for i in wrt:
        inputs[i] = inputs[i].clone().requires_grad_(True)
    with torch.enable_grad():
        outputs = fn(*inputs)
    outputs = (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)
    grads = (grad_outputs,) if isinstance(grad_outputs, Tensor) else tuple(grad_outputs)
    pairs = [(o, _to_float64(g)) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
    result = torch.autograd.grad(
        [o for o, _ in pairs], [inputs[i] for i in wrt], [g for _, g in pairs], allow_unused=True
    )
    return tuple(result)


# --- inputs and outputs that expose out-of-bounds access ------------------------------------------


def _sentinel(dtype: torch.dtype) -> float | int | bool:
    if dtype.is_floating_point:
        return float("nan")
    if dtype == torch.bool:
        return True
    return torch.iinfo(dtype).max  # integers have no NaN: an implausible value instead


def nan_guarded(values: Tensor, pad: int = 64) -> Tensor:
    """A contiguous copy of ``values`` whose storage has ``pad`` NaNs (integer max / True for
    integer and bool dtypes) on each side, so an out-of-bounds read returns NaN."""
    buffer = torch.full((values.numel() + 2 * pad,), _sentinel(values.dtype), dtype=values.dtype, device=values.device)
    view = buffer[pad : pad + values.numel()].view(values.shape)
    view.copy_(values)
    return view


def poisoned(shape: Sequence[int], dtype: torch.dtype, device: str | torch.device = "cpu", pad: int = 64) -> Tensor:
    """An output buffer filled with NaN (the sentinel), inside NaN guard bands: elements a kernel
    fails to write stay NaN, and :func:`assert_guards_intact` catches writes past its ends."""
    return nan_guarded(torch.full(tuple(shape), _sentinel(dtype), dtype=dtype, device=device), pad)


def non_contiguous(values: Tensor, layout: str = "padded_rows", pad: int = 3) -> Tensor:
    """The same values in a non-contiguous layout, with NaN in every gap:

    - ``"padded_rows"``: the last dimension stays contiguous, rows are ``pad`` elements apart
      further than needed (what slicing a wider tensor gives; exercises row-stride arguments);
    - ``"every_other"``: last-dimension stride 2;
    - ``"transposed"``: the last two dimensions stored column-major.
    """
    if values.dim() < 2 and layout != "every_other":
        raise ValueError(f"layout {layout!r} needs at least 2 dimensions, got shape {tuple(values.shape)}")
    fill = _sentinel(values.dtype)
    if layout == "padded_rows":
        wide = torch.full((*values.shape[:-1], values.shape[-1] + pad), fill, dtype=values.dtype, device=values.device)
        out = wide[..., : values.shape[-1]]
    elif layout == "every_other":
        wide = torch.full((*values.shape[:-1], 2 * values.shape[-1]), fill, dtype=values.dtype, device=values.device)
        out = wide[..., ::2]
    elif layout == "transposed":
        out = torch.full(values.transpose(-1, -2).shape, fill, dtype=values.dtype, device=values.device).transpose(-1, -2)
    else:
        raise ValueError(f"unknown layout {layout!r}: use 'padded_rows', 'every_other' or 'transposed'")
    out.copy_(values)
    if values.numel() > 1 and out.is_contiguous():
        raise AssertionError("layout produced a contiguous tensor")  # e.g. one row: pick another layout
    return out


def guard_values(tensor: Tensor) -> Tensor:
    """Every element of ``tensor``'s storage that is not one of ``tensor``'s own elements."""
    storage = tensor.untyped_storage()
    whole = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    whole.set_(storage, 0, (storage.nbytes() // tensor.element_size(),))
    index = torch.arange(whole.numel(), device=tensor.device)
    own = torch.as_strided(index, tensor.shape, tensor.stride(), tensor.storage_offset())
    outside = torch.ones(whole.numel(), dtype=torch.bool, device=tensor.device)
    outside[own.reshape(-1)] = False
    return whole[outside]


def assert_guards_intact(tensor: Tensor, *, name: str = "output") -> None:
    """Raise unless every storage element outside ``tensor`` (guard bands and layout gaps made by
    :func:`nan_guarded`, :func:`poisoned` or :func:`non_contiguous`) still holds the sentinel."""
    guards = guard_values(tensor).cpu()
    sentinel = _sentinel(tensor.dtype)
    untouched = guards.isnan() if tensor.dtype.is_floating_point else guards == sentinel
    if not untouched.all():
        raise AssertionError(f"{name}: {int((~untouched).sum())} elements written outside the tensor's bounds")


def ragged_sizes(block: int, small: Sequence[int] = (1, 3, 7, 13)) -> list[int]:
    """Sizes that catch block-edge bugs: ``small`` (1 and primes) and ``block - 1, block, block + 1``."""
    return sorted({s for s in (*small, block - 1, block, block + 1) if s >= 1})
