"""RMSNorm and LayerNorm over the last dimension, forward and backward, with float32 statistics.

- ``rms_norm(x, weight=None, eps=1e-6)``: ``x / sqrt(mean(x**2) + eps) * weight``
  (Zhang & Sennrich 2019; Llama, Mistral).
- ``layer_norm(x, weight=None, bias=None, eps=1e-5)``: ``(x - mean) / sqrt(var + eps) * weight + bias``
  (biased variance, as ``torch.nn.functional.layer_norm``).

Every input is upcast to float32 and the whole formula, the weight included, runs in float32; the
result is rounded once to ``x``'s dtype (the "fp32 upcast formula" low-precision training relies on:
bf16 statistics lose the small-variance rows). ``weight`` and ``bias`` may be held in another dtype
than ``x`` (fp32 parameters, bf16 activations); their gradients come back in their own dtype.

RMSNorm is LayerNorm without centring and bias, so both share one forward and one backward Triton
kernel (``CENTER`` switches the mean). The forward saves per-row ``rstd`` (and ``mean``); the backward
recomputes ``x_hat`` from them, and reduces the weight and bias gradients per program into float32
partial sums that one ``sum`` finishes (no atomics, so the result is deterministic).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_eff.kernels._dispatch import (
    INTERPRETED,
    next_power_of_2,
    plugin_implementation,
    tl,
    triton,
    use_triton,
)

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_TRITON_COLS = 65536  # one row per block; wider rows go to the reference


def _fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


# --- reference (CPU production path) ---------------------------------------------------------------


def norm_forward_reference(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, center: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, rstd)`` for ``[N, H]`` inputs; ``mean`` is zeros when ``center`` is False."""
    dtype = _fp32(x.dtype)
    xf = x.to(dtype)
    mean = xf.mean(-1) if center else torch.zeros(x.shape[0], dtype=dtype, device=x.device)
    centred = xf - mean[:, None] if center else xf
    rstd = torch.rsqrt(centred.square().mean(-1) + eps)
    y = centred * rstd[:, None]
    if weight is not None:
        y = y * weight.to(dtype)
    if bias is not None:
        y = y + bias.to(dtype)
    return y.to(x.dtype), mean, rstd


def norm_backward_reference(
    grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, center: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(grad_x, grad_weight, grad_bias)``; the last two are None without weight / for RMSNorm."""
    dtype = _fp32(x.dtype)
    x_hat = (x.to(dtype) - mean[:, None].to(dtype)) * rstd[:, None].to(dtype)
    dy = grad_y.to(dtype)
    dy_w = dy * weight.to(dtype) if weight is not None else dy
    inner = (dy_w * x_hat).mean(-1, keepdim=True)
    if center:
        grad_x = (dy_w - dy_w.mean(-1, keepdim=True) - x_hat * inner) * rstd[:, None]
    else:
        grad_x = (dy_w - x_hat * inner) * rstd[:, None]
    grad_weight = (dy * x_hat).sum(0).to(weight.dtype) if weight is not None else None
    grad_bias = dy.sum(0) if center else None
    return grad_x.to(x.dtype), grad_weight, grad_bias


# --- Triton kernels ------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _norm_forward_kernel(
        x_ptr, x_row_stride, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, n_rows, n_cols, eps,
        CENTER: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        row_ok = rows < n_rows
        col_ok = cols < n_cols
        mask = row_ok[:, None] & col_ok[None, :]
        # Upcast on load: the formula runs in fp32 (and bf16 arithmetic is wrong in the interpreter).
        x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if CENTER:
            mean = tl.sum(x, axis=1) / n_cols
            x = tl.where(mask, x - mean[:, None], 0.0)
            tl.store(mean_ptr + rows, mean, mask=row_ok)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
        tl.store(rstd_ptr + rows, rstd, mask=row_ok)
        y = x * rstd[:, None]
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            y = y + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rows[:, None] * n_cols + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _norm_backward_kernel(
        dy_ptr, dy_row_stride, x_ptr, x_row_stride, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_partial_ptr, db_partial_ptr,
        n_rows, n_cols, rows_per_program,
        CENTER: tl.constexpr, HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        col_ok = cols < n_cols
        if HAS_WEIGHT:
            w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        dw_acc = tl.zeros([BLOCK], dtype=tl.float32)
        db_acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, rows_per_program, ROWS):
            rows = pid * rows_per_program + start + tl.arange(0, ROWS)
            row_ok = rows < n_rows
            mask = row_ok[:, None] & col_ok[None, :]
            x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + rows[:, None] * dy_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
            if CENTER:
                x = x - tl.load(mean_ptr + rows, mask=row_ok, other=0.0)[:, None]
            x_hat = tl.where(mask, x * rstd[:, None], 0.0)
            if HAS_WEIGHT:
                dy_w = dy * w[None, :]
                dw_acc += tl.sum(dy * x_hat, axis=0)
            else:
                dy_w = dy
            inner = tl.sum(dy_w * x_hat, axis=1) / n_cols
            if CENTER:
                dx = (dy_w - (tl.sum(dy_w, axis=1) / n_cols)[:, None] - x_hat * inner[:, None]) * rstd[:, None]
                db_acc += tl.sum(dy, axis=0)
            else:
                dx = (dy_w - x_hat * inner[:, None]) * rstd[:, None]
            tl.store(dx_ptr + rows[:, None] * n_cols + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_WEIGHT:
            tl.store(dw_partial_ptr + pid * n_cols + cols, dw_acc, mask=col_ok)
        if CENTER:
            tl.store(db_partial_ptr + pid * n_cols + cols, db_acc, mask=col_ok)


def _tile(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK, ROWS, num_warps): a whole row per block, several short rows per program (fewer
    programs: better occupancy for narrow rows on a GPU, far fewer steps in the interpreter)."""
    block = next_power_of_2(n_cols)
    rows = max(1, min(16, 4096 // block))
    warps = 4 if block * rows <= 2048 else 8 if block * rows <= 8192 else 16
    return block, rows, warps


def _unit_stride(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _contiguous_out(out: Tensor | None, x: Tensor) -> Tensor:
    """``out`` (tests pass NaN-poisoned buffers to catch stray writes) or a new ``x``-shaped tensor."""
    if out is None:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.shape != x.shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous tensor of shape {tuple(x.shape)}")
    return out


def norm_forward_triton(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, center: bool, out: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    x = _unit_stride(x)
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    n_rows, n_cols = x.shape
    y = _contiguous_out(out, x)
    mean = torch.zeros(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    block, rows, warps = _tile(n_cols)
    if n_rows:
        _norm_forward_kernel[(triton.cdiv(n_rows, rows),)](
            x, x.stride(0), weight if weight is not None else x, bias if bias is not None else x, y, mean, rstd,
            n_rows, n_cols, eps, CENTER=center, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            BLOCK=block, ROWS=rows, num_warps=warps,
        )
    return y, mean, rstd


def _backward_programs(n_rows: int, rows: int, device: torch.device) -> int:
    if device.type == "cuda" and not INTERPRETED:
        # Enough programs to fill the GPU, few enough that the partial sums stay small.
        return min(triton.cdiv(n_rows, rows), 2 * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(triton.cdiv(n_rows, rows), 4)


def norm_backward_triton(
    grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, center: bool,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    x, grad_y = _unit_stride(x), _unit_stride(grad_y)
    weight = weight.contiguous() if weight is not None else None
    n_rows, n_cols = x.shape
    grad_x = _contiguous_out(out, x)
    block, rows, warps = _tile(n_cols)
    programs = max(1, _backward_programs(n_rows, rows, x.device))
    rows_per_program = triton.cdiv(triton.cdiv(n_rows, programs), rows) * rows
    programs = max(1, triton.cdiv(n_rows, rows_per_program))
    dw_partial = torch.zeros((programs, n_cols), dtype=torch.float32, device=x.device)
    db_partial = torch.zeros((programs, n_cols), dtype=torch.float32, device=x.device)
    if n_rows:
        _norm_backward_kernel[(programs,)](
            grad_y, grad_y.stride(0), x, x.stride(0), weight if weight is not None else x, mean, rstd, grad_x,
            dw_partial, db_partial, n_rows, n_cols, rows_per_program,
            CENTER=center, HAS_WEIGHT=weight is not None, BLOCK=block, ROWS=rows, num_warps=warps,
        )
    grad_weight = dw_partial.sum(0).to(weight.dtype) if weight is not None else None
    grad_bias = db_partial.sum(0) if center else None
    return grad_x, grad_weight, grad_bias


# --- dispatch ------------------------------------------------------------------------------------


def _triton_for(x: Tensor) -> bool:
    return x.dtype in TRITON_DTYPES and x.shape[-1] <= MAX_TRITON_COLS and use_triton(x)


def norm_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, center: bool):
    if _triton_for(x):
        return norm_forward_triton(x, weight, bias, eps, center)
    return norm_forward_reference(x, weight, bias, eps, center)


def norm_backward(grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, center: bool):
    if _triton_for(x):
        return norm_backward_triton(grad_y, x, weight, mean, rstd, center)
    return norm_backward_reference(grad_y, x, weight, mean, rstd, center)


# --- custom ops ----------------------------------------------------------------------------------
# Custom ops return tensors only: a missing weight/bias gradient travels as an empty tensor.


def _stats_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("lightning_eff::rms_norm", mutates_args=())
def _rms_norm_op(x: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    y, _, rstd = norm_forward(x, weight, None, eps, center=False)
    return y, rstd


@_rms_norm_op.register_fake
def _(x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[:1], dtype=_stats_dtype(x))


@torch.library.custom_op("lightning_eff::layer_norm", mutates_args=())
def _layer_norm_op(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return norm_forward(x, weight, bias, eps, center=True)


@_layer_norm_op.register_fake
def _(x, weight, bias, eps):
    stats = x.new_empty(x.shape[:1], dtype=_stats_dtype(x))
    return torch.empty_like(x, memory_format=torch.contiguous_format), stats, torch.empty_like(stats)


@torch.library.custom_op("lightning_eff::norm_backward", mutates_args=())
def _norm_backward_op(
    grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, center: bool
) -> tuple[Tensor, Tensor, Tensor]:
    grad_x, grad_weight, grad_bias = norm_backward(grad_y, x, weight, mean, rstd, center)
    return (
        grad_x,
        x.new_empty(0) if grad_weight is None else grad_weight,
        x.new_empty(0) if grad_bias is None else grad_bias,  # distinct: custom-op outputs may not alias
    )


@_norm_backward_op.register_fake
def _(grad_y, x, weight, mean, rstd, center):
    grad_weight = torch.empty_like(weight) if weight is not None else x.new_empty(0)
    grad_bias = x.new_empty(x.shape[1:], dtype=_stats_dtype(x)) if center else x.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), grad_weight, grad_bias


def _rms_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_backward(ctx, grad_y, _grad_rstd):
    x, weight, rstd = ctx.saved_tensors
    grad_x, grad_weight, _ = _norm_backward_op(grad_y, x, weight, torch.zeros_like(rstd), rstd, False)
    return grad_x, (grad_weight if weight is not None else None), None


def _layer_setup(ctx, inputs, output):
    x, weight, bias, _ = inputs
    ctx.save_for_backward(x, weight, output[1], output[2])
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _layer_backward(ctx, grad_y, _grad_mean, _grad_rstd):
    x, weight, mean, rstd = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = _norm_backward_op(grad_y, x, weight, mean, rstd, True)
    return (
        grad_x,
        grad_weight if weight is not None else None,
        grad_bias.to(ctx.bias_dtype) if ctx.has_bias else None,
        None,
    )


_rms_norm_op.register_autograd(_rms_backward, setup_context=_rms_setup)
_layer_norm_op.register_autograd(_layer_backward, setup_context=_layer_setup)


# --- public API ----------------------------------------------------------------------------------


def _check_param(name: str, param: Tensor | None, x: Tensor) -> None:
    if param is not None and param.shape != x.shape[-1:]:
        raise ValueError(f"{name} of shape {tuple(param.shape)} does not match the normalised dimension {x.shape[-1]}")


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last dimension of ``x`` (any leading shape), result in ``x``'s dtype."""
    plugin = plugin_implementation("rms_norm", x, weight, eps=eps)
    if plugin is not None:
        return plugin(x, weight, eps=eps)
    _check_param("weight", weight, x)
    y, _ = _rms_norm_op(x.reshape(-1, x.shape[-1]), weight, float(eps))
    return y.view(x.shape)


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dimension of ``x`` (any leading shape), result in ``x``'s dtype."""
    plugin = plugin_implementation("layer_norm", x, weight, bias, eps=eps)
    if plugin is not None:
        return plugin(x, weight, bias, eps=eps)
    _check_param("weight", weight, x)
    _check_param("bias", bias, x)
    y, _, _ = _layer_norm_op(x.reshape(-1, x.shape[-1]), weight, bias, float(eps))
    return y.view(x.shape)
