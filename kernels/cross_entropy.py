"""Per-sample cross-entropy and logsumexp over the last dimension, with ``ignore_index``.

- ``per_sample_cross_entropy(logits, targets, ignore_index=-100)``: the loss of every row (shape
  ``targets.shape``, float32; 0 for ignored rows), what data-filtering techniques score samples by.
  Equals ``F.cross_entropy(logits.float(), targets, reduction="none", ignore_index=...)``.
- ``cross_entropy_logsumexp(...)``: ``(loss, lse)``, both differentiable; ``lse`` is defined for
  every row, ignored ones included (the z-loss of PaLM / ST-MoE is ``lse**2``).

Statistics are computed in float32 (float64 for float64 logits) whatever the logits' dtype, and the
logits are never written to: a fused cross-entropy kernel that stored the gradient into the
caller's logits silently corrupted the gradients of every other use of those logits.

The Triton kernels stream each row once in the forward (online max + rescaled sum) and once in the
backward (``softmax * (g_loss + g_lse) - onehot * g_loss``); the reference is also the CPU
production path and works in row chunks, so a low-precision input is never upcast whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_eff.kernels._dispatch import autotune, plugin_implementation, tl, triton, use_triton

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CHUNK_ELEMENTS = 1 << 24  # the reference upcasts and exponentiates at most this many logits at once


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _row_chunks(n_rows: int, n_cols: int):
    rows = max(1, CHUNK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, rows):
        yield start, min(start + rows, n_rows)


# --- reference (CPU production path) ---------------------------------------------------------------


def cross_entropy_forward_reference(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """``(loss, lse)`` for ``[N, C]`` logits, in float32 (float64 for float64 logits)."""
    n_rows, n_cols = logits.shape
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)  # ignored rows still get their lse
    dtype = _compute_dtype(logits.dtype)
    loss = torch.empty(n_rows, dtype=dtype, device=logits.device)
    lse = torch.empty(n_rows, dtype=dtype, device=logits.device)
    for start, stop in _row_chunks(n_rows, n_cols):
        x = logits[start:stop].to(dtype)
        t = safe_targets[start:stop]
        # F.cross_entropy is torch's fastest CPU path (one fused log-softmax); lse = loss + x_t.
        ce = F.cross_entropy(x, t, reduction="none")
        lse[start:stop] = ce + x.gather(1, t[:, None]).squeeze(1)
        loss[start:stop] = torch.where(valid[start:stop], ce, 0.0)
    return loss, lse


def cross_entropy_backward_reference(
    logits: Tensor,
    targets: Tensor,
    lse: Tensor,
    grad_loss: Tensor,
    grad_lse: Tensor | None,
    ignore_index: int = -100,
    out: Tensor | None = None,
) -> Tensor:
    """``d/d logits`` of ``sum(grad_loss * loss + grad_lse * lse)``, in the logits' dtype. ``out``
    (may be ``logits`` itself when the caller owns them, as the fused linear op does) receives it."""
    n_rows, n_cols = logits.shape
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    dtype = _compute_dtype(logits.dtype)
    g_loss = torch.where(valid, grad_loss.to(dtype), 0.0)
    coef = g_loss if grad_lse is None else g_loss + grad_lse.to(dtype)
    out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device) if out is None else out
    for start, stop in _row_chunks(n_rows, n_cols):
        p = torch.exp(logits[start:stop].to(dtype) - lse[start:stop, None].to(dtype))
        p.mul_(coef[start:stop, None])
        p.scatter_add_(1, safe_targets[start:stop, None], -g_loss[start:stop, None])
        out[start:stop].copy_(p)
    return out


# --- Triton kernels ------------------------------------------------------------------------------

if triton is not None:
    # Long rows want wide blocks and many warps; the first config suits the interpreter's small tests.
    _CONFIGS = [
        triton.Config({"BLOCK": 256}, num_warps=4),
        triton.Config({"BLOCK": 1024}, num_warps=4),
        triton.Config({"BLOCK": 2048}, num_warps=8),
        triton.Config({"BLOCK": 4096}, num_warps=8),
        triton.Config({"BLOCK": 8192}, num_warps=16),
    ]

    @autotune(_CONFIGS, key=["n_cols"])
    @triton.jit
    def _cross_entropy_forward_kernel(
        logits_ptr, row_stride, targets_ptr, loss_ptr, lse_ptr, n_cols, ignore_index, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0).to(tl.int64)  # int64 before the stride product: rows x vocab overflows int32
        row_ptr = logits_ptr + row * row_stride
        cols = tl.arange(0, BLOCK)
        running_max = -float("inf")
        running_sum = 0.0
        for start in range(0, n_cols, BLOCK):
            x = tl.load(row_ptr + start + cols, mask=start + cols < n_cols, other=-float("inf")).to(tl.float32)
            new_max = tl.maximum(running_max, tl.max(x, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
            running_max = new_max
        lse = running_max + tl.log(running_sum)
        target = tl.load(targets_ptr + row).to(tl.int64)
        valid = target != ignore_index
        target_logit = tl.load(row_ptr + target, mask=valid, other=0.0).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - target_logit, 0.0))
        tl.store(lse_ptr + row, lse)

    # restore_value: the fused linear op passes its logits buffer as grad_ptr (in place), and timing
    # the configs re-runs the kernel; each run must start from the logits, not the last gradient.
    @autotune(_CONFIGS, key=["n_cols"], restore_value=["grad_ptr"])
    @triton.jit
    def _cross_entropy_backward_kernel(
        logits_ptr, row_stride, targets_ptr, lse_ptr, grad_loss_ptr, grad_lse_ptr, grad_ptr, grad_row_stride,
        n_cols, ignore_index, HAS_GRAD_LSE: tl.constexpr, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        target = tl.load(targets_ptr + row).to(tl.int64)
        g_loss = tl.where(target != ignore_index, tl.load(grad_loss_ptr + row), 0.0)
        coef = g_loss
        if HAS_GRAD_LSE:
            coef += tl.load(grad_lse_ptr + row)
        lse = tl.load(lse_ptr + row)
        cols = tl.arange(0, BLOCK)
        for start in range(0, n_cols, BLOCK):
            offsets = start + cols
            inside = offsets < n_cols
            x = tl.load(logits_ptr + row * row_stride + offsets, mask=inside, other=0.0).to(tl.float32)
            grad = tl.exp(x - lse) * coef - tl.where(offsets == target, g_loss, 0.0)
            tl.store(grad_ptr + row * grad_row_stride + offsets, grad.to(grad_ptr.dtype.element_ty), mask=inside)


def _rows_with_unit_stride(logits: Tensor) -> Tensor:
    return logits if logits.stride(-1) == 1 else logits.contiguous()  # a copy: the caller's tensor stays as is


def cross_entropy_forward_triton(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    logits = _rows_with_unit_stride(logits)
    n_rows, n_cols = logits.shape
    loss = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    lse = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    if n_rows:
        _cross_entropy_forward_kernel[(n_rows,)](
            logits, logits.stride(0), targets.contiguous(), loss, lse, n_cols, ignore_index
        )
    return loss, lse


def cross_entropy_backward_triton(
    logits: Tensor,
    targets: Tensor,
    lse: Tensor,
    grad_loss: Tensor,
    grad_lse: Tensor | None,
    ignore_index: int = -100,
    out: Tensor | None = None,
) -> Tensor:
    logits = _rows_with_unit_stride(logits)
    n_rows, n_cols = logits.shape
    out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device) if out is None else out
    if out.stride(-1) != 1:
        raise ValueError("cross_entropy_backward_triton: out must have a unit last-dimension stride")
    if n_rows:
        has_grad_lse = grad_lse is not None
        grad_loss = grad_loss.float().contiguous()  # autograd hands in expanded (stride-0) gradients
        grad_lse = grad_lse.float().contiguous() if has_grad_lse else grad_loss  # unread placeholder
        _cross_entropy_backward_kernel[(n_rows,)](
            logits, logits.stride(0), targets.contiguous(), lse.float().contiguous(), grad_loss, grad_lse,
            out, out.stride(0), n_cols, ignore_index, HAS_GRAD_LSE=has_grad_lse,
        )
    return out


# --- dispatch ------------------------------------------------------------------------------------


def _triton_for(logits: Tensor) -> bool:
    return logits.dtype in TRITON_DTYPES and use_triton(logits)


def _check_targets(logits: Tensor, targets: Tensor, ignore_index: int) -> None:
    # Only where it costs no device sync: on CUDA an out-of-range target reads as a zero logit.
    if logits.is_cuda or targets.numel() == 0:
        return
    valid = targets[targets != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= logits.shape[-1]):
        raise IndexError(
            f"targets must lie in [0, {logits.shape[-1]}) or equal ignore_index={ignore_index}; "
            f"got values in [{int(valid.min())}, {int(valid.max())}]"
        )


def cross_entropy_forward(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """``(loss, lse)`` of ``[N, C]`` logits through the Triton kernel or the reference (no autograd)."""
    if _triton_for(logits):
        _check_targets(logits, targets, ignore_index)
        return cross_entropy_forward_triton(logits, targets, ignore_index)
    return cross_entropy_forward_reference(logits, targets, ignore_index)


def cross_entropy_backward(
    logits: Tensor,
    targets: Tensor,
    lse: Tensor,
    grad_loss: Tensor,
    grad_lse: Tensor | None,
    ignore_index: int = -100,
    out: Tensor | None = None,
) -> Tensor:
    """The logits' gradient through the Triton kernel or the reference (see the reference's doc)."""
    if _triton_for(logits) and (out is None or out.stride(-1) == 1):
        return cross_entropy_backward_triton(logits, targets, lse, grad_loss, grad_lse, ignore_index, out)
    return cross_entropy_backward_reference(logits, targets, lse, grad_loss, grad_lse, ignore_index, out)


# --- custom ops: torch.compile sees one op per direction -----------------------------------------


@torch.library.custom_op("lightning_eff::cross_entropy_logsumexp", mutates_args=())
def _cross_entropy_op(logits: Tensor, targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    return cross_entropy_forward(logits, targets, ignore_index)


@_cross_entropy_op.register_fake
def _(logits, targets, ignore_index):
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.new_empty(logits.shape[:1], dtype=dtype), logits.new_empty(logits.shape[:1], dtype=dtype)


@torch.library.custom_op("lightning_eff::cross_entropy_logsumexp_backward", mutates_args=())
def _cross_entropy_backward_op(
    logits: Tensor, targets: Tensor, lse: Tensor, grad_loss: Tensor, grad_lse: Tensor, ignore_index: int
) -> Tensor:
    return cross_entropy_backward(logits, targets, lse, grad_loss, grad_lse, ignore_index)


@_cross_entropy_backward_op.register_fake
def _(logits, targets, lse, grad_loss, grad_lse, ignore_index):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, targets, ignore_index = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.ignore_index = ignore_index


def _backward(ctx, grad_loss, grad_lse):
    logits, targets, lse = ctx.saved_tensors
    grad = _cross_entropy_backward_op(logits, targets, lse, grad_loss, grad_lse, ctx.ignore_index)
    return grad, None, None


_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


# --- public API ----------------------------------------------------------------------------------


def cross_entropy_logsumexp(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Per-row ``(loss, logsumexp)`` of ``logits[..., C]`` against integer ``targets[...]``, both of
    shape ``targets.shape`` in float32; ``loss`` is 0 where ``targets == ignore_index``."""
    plugin = plugin_implementation("cross_entropy_logsumexp", logits, targets, ignore_index=ignore_index)
    if plugin is not None:
        return plugin(logits, targets, ignore_index=ignore_index)
    if logits.dim() == 0 or targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} do not match logits of shape {tuple(logits.shape)}: "
            "expected targets.shape == logits.shape[:-1] (classes on the last dimension)"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be class indices (an integer dtype), got {targets.dtype}")
    loss, lse = _cross_entropy_op(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), int(ignore_index))
    return loss.view(targets.shape), lse.view(targets.shape)


def per_sample_cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Cross-entropy of every row: ``[N, C]`` logits -> ``[N]`` float32 losses (0 for ignored rows).
    Differentiable; the logits are never modified."""
    plugin = plugin_implementation("per_sample_cross_entropy", logits, targets, ignore_index=ignore_index)
    if plugin is not None:
        return plugin(logits, targets, ignore_index=ignore_index)
    return cross_entropy_logsumexp(logits, targets, ignore_index)[0]
