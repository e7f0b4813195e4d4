"""fp8 amax + scale + cast, tensorwise or rowwise: the quantisation step of float8 training.

- ``fp8_cast(x, granularity="tensorwise", dtype=torch.float8_e4m3fn) -> (x_fp8, scale)``:
  ``scale = fp8_max / max(amax, eps)`` and ``x_fp8 = saturate(x * scale)`` rounded to ``dtype``.
  ``tensorwise``: one scale for the whole tensor (shape ``()``); ``rowwise``: one per row of the last
  dimension (shape ``[*x.shape[:-1], 1]``), what rowwise-scaled fp8 GEMMs expect for the left operand.
- ``fp8_dequantize(x_fp8, scale, dtype=torch.float32) = x_fp8 / scale``.
- ``fp8_scale(amax, dtype)``: the scale alone (pure, also used by the precision plugins).

The scale maps the largest magnitude onto the format's largest finite value (448 for e4m3fn, 57344
for e5m2), the "dynamic scaling" of torchao's float8 training and of FP8-LM: the cast then uses the
whole range of the format. ``eps`` keeps an all-zero tensor from dividing by zero (its scale is
huge, its codes are 0). Values are saturated before the cast: e4m3fn has no infinity, and an
unsaturated overflow would become NaN. NaN inputs make the amax NaN and stay NaN, as in torch.

Reference and kernels compute the scale and the product in float32 whatever the input dtype. The
tensorwise kernel reduces the amax per program into a partial array that ``max`` finishes on the
device (no atomics, no host sync), then casts with the scale read from device memory. The rowwise
kernel does both passes per row tile. Under Triton's interpreter the fp32 -> fp8 cast may round
differently from torch's (``docs/kernels.md``), so the kernels build the fp8 bit patterns themselves
(:func:`_fp8_bits`) and match torch bit for bit; tests still only ask for one fp8 ulp.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_eff.kernels._dispatch import next_power_of_2, plugin_implementation, tl, triton, use_triton

Granularity = Literal["tensorwise", "rowwise"]
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EPS = 1e-12


def fp8_max(dtype: torch.dtype) -> float:
    """Largest finite value of an fp8 format (448 for e4m3fn, 57344 for e5m2)."""
    if dtype not in FP8_DTYPES:
        raise ValueError(f"fp8 dtype must be one of {FP8_DTYPES}, got {dtype}")
    return float(torch.finfo(dtype).max)


def fp8_scale(amax: Tensor, dtype: torch.dtype = torch.float8_e4m3fn, eps: float = EPS) -> Tensor:
    """``fp8_max / max(amax, eps)`` in float32 (float64 for a float64 amax): multiply before casting."""
    compute = torch.promote_types(amax.dtype, torch.float32)
    return fp8_max(dtype) / amax.to(compute).clamp(min=eps)


# --- reference (CPU production path) ---------------------------------------------------------------


def fp8_cast_reference(x: Tensor, granularity: Granularity, dtype: torch.dtype, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """``(x_fp8, scale)`` for a ``[N, K]`` input; scale is ``()`` (tensorwise) or ``[N, 1]`` (rowwise)."""
    compute = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(compute)
    amax = xf.abs().amax() if granularity == "tensorwise" else xf.abs().amax(dim=-1, keepdim=True)
    scale = fp8_scale(amax, dtype, eps)
    limit = fp8_max(dtype)
    return (xf * scale).clamp(-limit, limit).to(dtype), scale


# --- Triton kernels -------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _isnan(x):
        return x != x  # noqa: PLR0124 - NaN is the one value unequal to itself (no libdevice isnan here)

    @triton.jit
    def _fp8_bits(y, MANTISSA: tl.constexpr, MIN_EXPONENT: tl.constexpr, BIAS: tl.constexpr):
        """The fp8 bit pattern (uint8) of ``y`` (fp32, saturated; NaN allowed), rounded half to even.

        Built with integer and power-of-two arithmetic rather than a float -> fp8 cast: the
        interpreter's cast loses the carry when rounding crosses a power of two (127.7 became 64
        rather than 128 in e4m3), flushes subnormals and turns NaN into 384. This way every backend
        writes exactly torch's bits.
        """
        sign = (y.to(tl.int32, bitcast=True) >> 31) & 1
        is_nan = _isnan(y)
        a = tl.where(is_nan, 0.0, tl.abs(y))  # NaN gets its own code below
        exponent = ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
        exponent = tl.maximum(exponent, MIN_EXPONENT)  # subnormals share the smallest quantum
        quantum = ((exponent - MANTISSA + 127) << 23).to(tl.float32, bitcast=True)
        steps = a / quantum  # exact (a power of two); below 2**(MANTISSA + 1)
        magic = 12582912.0  # 1.5 * 2**23: adding and subtracting it rounds half to even
        r = ((steps + magic) - magic) * quantum  # the rounded magnitude, on the fp8 grid
        r_bits = r.to(tl.int32, bitcast=True)
        r_exponent = ((r_bits >> 23) & 0xFF) - 127
        normal = ((r_exponent + BIAS) << MANTISSA) | ((r_bits >> (23 - MANTISSA)) & ((1 << MANTISSA) - 1))
        smallest = ((tl.zeros_like(r_bits) + (MIN_EXPONENT - MANTISSA + 127)) << 23).to(tl.float32, bitcast=True)
        subnormal = (r / smallest).to(tl.int32)  # an exact integer in [0, 2**MANTISSA]
        code = tl.where(r_exponent >= MIN_EXPONENT, normal, subnormal)
        code = tl.where(is_nan, 0x7F, code) | (sign << 7)
        return code.to(tl.uint8)

    @triton.jit
    def _amax_partial_kernel(x_ptr, x_row_stride, partial_ptr, n_rows, n_cols,
                             BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < n_rows
        acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            mask = row_ok[:, None] & (cols[None, :] < n_cols)
            # Upcast on load: bf16 arithmetic is wrong under the interpreter.
            x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            # max(a, NaN) must stay NaN, as torch.amax does: propagate through a select.
            a = tl.abs(x)
            acc = tl.where((a > acc) | _isnan(a), a, acc)
        row_max = tl.max(acc, axis=1)
        row_nan = tl.sum(_isnan(acc).to(tl.int32), axis=1) > 0
        row_max = tl.where(row_nan, float("nan"), row_max)
        total = tl.max(row_max, axis=0)
        any_nan = tl.sum(row_nan.to(tl.int32), axis=0) > 0
        tl.store(partial_ptr + pid, tl.where(any_nan, float("nan"), total))

    @triton.jit
    def _cast_tensorwise_kernel(x_ptr, x_row_stride, scale_ptr, y_ptr, n_rows, n_cols, limit,
                                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                                MANTISSA: tl.constexpr, MIN_EXPONENT: tl.constexpr, BIAS: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < n_rows
        scale = tl.load(scale_ptr)
        for start in range(0, n_cols, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            mask = row_ok[:, None] & (cols[None, :] < n_cols)
            x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            y = tl.minimum(tl.maximum(x * scale, -limit), limit)
            y = tl.where(_isnan(x), x, y)  # min/max would turn NaN into the limit
            tl.store(y_ptr + rows[:, None] * n_cols + cols[None, :], _fp8_bits(y, MANTISSA, MIN_EXPONENT, BIAS), mask=mask)

    @triton.jit
    def _cast_rowwise_kernel(x_ptr, x_row_stride, scale_ptr, y_ptr, n_rows, n_cols, limit, eps,
                             BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                             MANTISSA: tl.constexpr, MIN_EXPONENT: tl.constexpr, BIAS: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < n_rows
        acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            mask = row_ok[:, None] & (cols[None, :] < n_cols)
            a = tl.abs(tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32))
            acc = tl.where((a > acc) | _isnan(a), a, acc)
        amax = tl.max(acc, axis=1)
        row_nan = tl.sum(_isnan(acc).to(tl.int32), axis=1) > 0
        amax = tl.where(row_nan, float("nan"), amax)
        scale = limit / tl.maximum(amax, eps)
        scale = tl.where(row_nan, float("nan"), scale)
        tl.store(scale_ptr + rows, scale, mask=row_ok)
        for start in range(0, n_cols, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            mask = row_ok[:, None] & (cols[None, :] < n_cols)
            x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            y = x * scale[:, None]
            y = tl.where(_isnan(y), y, tl.minimum(tl.maximum(y, -limit), limit))
            tl.store(y_ptr + rows[:, None] * n_cols + cols[None, :], _fp8_bits(y, MANTISSA, MIN_EXPONENT, BIAS), mask=mask)


def _grid_constants(dtype: torch.dtype) -> dict[str, int]:
    """Mantissa bits, smallest normal exponent and exponent bias of an fp8 format."""
    if dtype == torch.float8_e4m3fn:
        return {"MANTISSA": 3, "MIN_EXPONENT": -6, "BIAS": 7}
    return {"MANTISSA": 2, "MIN_EXPONENT": -14, "BIAS": 15}


def _tile(n_cols: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_C): column chunks of at most 1024, row tiles of about 4096 elements."""
    block_c = min(1024, next_power_of_2(max(n_cols, 1)))
    return max(1, min(64, 4096 // block_c)), block_c


def _out(out: Tensor | None, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``out`` (tests pass NaN-poisoned buffers to catch unwritten elements) or a new tensor."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if out.shape != shape or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {tuple(shape)}")
    return out


def fp8_cast_triton(
    x: Tensor, granularity: Granularity, dtype: torch.dtype, eps: float = EPS, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    x = x if x.stride(-1) == 1 else x.contiguous()
    n_rows, n_cols = x.shape
    y = _out(out, x.shape, dtype, x.device)
    block_r, block_c = _tile(n_cols)
    grid = (max(1, triton.cdiv(n_rows, block_r)),)
    limit = fp8_max(dtype)
    bits = y.view(torch.uint8)  # the kernels write bit patterns (see _fp8_bits)
    if granularity == "rowwise":
        scale = torch.empty((n_rows, 1), dtype=torch.float32, device=x.device)
        if n_rows:
            _cast_rowwise_kernel[grid](x, x.stride(0), scale, bits, n_rows, n_cols, limit, eps,
                                       BLOCK_R=block_r, BLOCK_C=block_c, **_grid_constants(dtype))
        return y, scale
    partial = torch.zeros(grid[0], dtype=torch.float32, device=x.device)
    if n_rows:
        _amax_partial_kernel[grid](x, x.stride(0), partial, n_rows, n_cols, BLOCK_R=block_r, BLOCK_C=block_c)
    # amax() of a tensor with a NaN is NaN, as in the reference; no host sync on the GPU.
    scale = fp8_scale(partial.amax(), dtype, eps)
    if n_rows:
        _cast_tensorwise_kernel[grid](x, x.stride(0), scale, bits, n_rows, n_cols, limit,
                                      BLOCK_R=block_r, BLOCK_C=block_c, **_grid_constants(dtype))
    return y, scale


# --- custom op and dispatch -----------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name)


@torch.library.custom_op("lightning_eff::fp8_cast", mutates_args=())
def _fp8_cast_op(x: Tensor, granularity: str, dtype_name: str, eps: float) -> tuple[Tensor, Tensor]:
    dtype = _dtype_of(dtype_name)
    if x.dtype in TRITON_DTYPES and use_triton(x):
        return fp8_cast_triton(x, granularity, dtype, eps)  # type: ignore[arg-type]
    return fp8_cast_reference(x, granularity, dtype, eps)  # type: ignore[arg-type]


@_fp8_cast_op.register_fake
def _(x, granularity, dtype_name, eps):
    scale_shape = () if granularity == "tensorwise" else (x.shape[0], 1)
    scale_dtype = torch.promote_types(x.dtype, torch.float32)
    return (torch.empty(x.shape, dtype=_dtype_of(dtype_name), device=x.device),
            x.new_empty(scale_shape, dtype=scale_dtype))


def fp8_cast(
    x: Tensor, granularity: Granularity = "tensorwise", dtype: torch.dtype = torch.float8_e4m3fn, eps: float = EPS
) -> tuple[Tensor, Tensor]:
    """Scale and cast ``x`` (any leading shape) to fp8; return ``(x_fp8, scale)``.

    ``x_fp8 / scale`` approximates ``x`` (see :func:`fp8_dequantize`). ``x`` is never modified; no
    gradient flows through the cast (float8 training wraps it in its own autograd function).
    """
    plugin = plugin_implementation("fp8_cast", x, granularity, dtype, eps)
    if plugin is not None:
        return plugin(x, granularity, dtype, eps)
    if granularity not in ("tensorwise", "rowwise"):
        raise ValueError(f"granularity={granularity!r} must be 'tensorwise' or 'rowwise'")
    fp8_max(dtype)  # validates the dtype
    if x.dim() == 0:
        raise ValueError("fp8_cast needs at least one dimension")
    flat = x.detach().reshape(-1, x.shape[-1])
    y, scale = _fp8_cast_op(flat, granularity, _dtype_name(dtype), float(eps))
    y = y.view(x.shape)
    if granularity == "rowwise":
        scale = scale.view(*x.shape[:-1], 1)
    return y, scale


def fp8_dequantize(x_fp8: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``x_fp8 / scale`` in ``dtype`` (the scale broadcasts: ``()`` or one per row)."""
    return (x_fp8.to(torch.promote_types(scale.dtype, torch.float32)) / scale).to(dtype)


def fp8_quantize_dequantize(
    x: Tensor, granularity: Granularity = "tensorwise", dtype: torch.dtype = torch.float8_e4m3fn
) -> Tensor:
    """``x`` rounded through fp8 and back in its own dtype: what an fp8 GEMM sees of an operand."""
    y, scale = fp8_cast(x, granularity, dtype)
    return fp8_dequantize(y, scale, x.dtype)
