"""Linear layer + per-sample cross-entropy without the ``[tokens x vocab]`` logits.

``fused_linear_cross_entropy(hidden, weight, targets, bias=None, ignore_index=-100)`` equals
``per_sample_cross_entropy(hidden @ weight.T + bias, targets, ignore_index)`` (shape
``targets.shape``, float32), but the logits only ever exist for ``chunk_size`` tokens at a time: an
LM head at vocab 32k-256k otherwise spends more memory on its logits (and their gradient) than on
the rest of the model's activations.

Forward: per token chunk, ``logits = hidden_chunk @ weight.T (+ bias)`` -> cross-entropy kernel ->
keep only ``loss`` and ``lse`` (``O(tokens)``). Backward: recompute each chunk's logits, turn them
into ``d loss / d logits`` in place (the buffer is ours, never the caller's), then
``grad_hidden = dlogits @ weight`` and accumulate ``grad_weight += dlogits.T @ hidden`` in float32.

Recomputing costs one more GEMM than Liger Kernel's fused linear cross-entropy (which computes the
gradients during the forward), and buys an arbitrary per-sample upstream gradient: the losses can be
reweighted per sample (InfoBatch, importance sampling) or only scored under ``torch.no_grad()``,
where the forward is all that runs. The reference path (CPU) runs the same chunk loop with the
reference cross-entropy, so the memory saving holds there too (``benchmarks/kernel_memory.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_eff.kernels._dispatch import next_power_of_2, plugin_implementation
from lightning_eff.kernels.cross_entropy import (
    cross_entropy_backward,
    cross_entropy_forward,
    cross_entropy_forward_reference,
)

# A chunk's logits stay at most this fraction of the unfused [tokens x vocab] logits: the memory
# claim (fused peak <= 1/4 of unfused) then holds whatever the other rules ask for.
MAX_CHUNK_FRACTION = 8
# Thinner chunks make thin GEMMs: on CPU 16-64 token chunks ran 1.3-5x slower than unfused
# (benchmarks/fused_ce_chunking.py), 128-1024 within noise of it.
MIN_CHUNK = 256


def vocab_ratio_chunk_size(n_tokens: int, hidden_size: int, vocab_size: int) -> int:
    """Liger Kernel's rule: a chunk of logits about as large as the hidden states, a power of two."""
    ratio = max(1, math.ceil(vocab_size / max(hidden_size, 1)))
    return next_power_of_2(math.ceil(n_tokens / ratio))


def default_chunk_size(n_tokens: int, hidden_size: int, vocab_size: int) -> int:
    """Tokens per chunk: :func:`vocab_ratio_chunk_size`, raised to :data:`MIN_CHUNK` tokens so the
    GEMMs stay wide, but never above ``n_tokens / MAX_CHUNK_FRACTION`` (rounded down to a power of
    two), which bounds the memory."""
    cap = _previous_power_of_2(max(1, n_tokens // MAX_CHUNK_FRACTION))
    return min(max(vocab_ratio_chunk_size(n_tokens, hidden_size, vocab_size), MIN_CHUNK), cap)


def _previous_power_of_2(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.addmm(bias, hidden, weight.t()) if bias is not None else hidden @ weight.t()


def fused_linear_cross_entropy_forward(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, ignore_index: int, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """``(loss, lse)`` for ``[N, H]`` hidden states, chunk by chunk (no autograd)."""
    n_tokens = hidden.shape[0]
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    loss = torch.empty(n_tokens, dtype=dtype, device=hidden.device)
    lse = torch.empty(n_tokens, dtype=dtype, device=hidden.device)
    for start in range(0, n_tokens, chunk_size):
        stop = min(start + chunk_size, n_tokens)
        logits = _chunk_logits(hidden[start:stop], weight, bias)
        loss[start:stop], lse[start:stop] = cross_entropy_forward(logits, targets[start:stop], ignore_index)
        del logits  # free before the next chunk's GEMM allocates
    return loss, lse


def fused_linear_cross_entropy_backward(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    lse: Tensor,
    grad_loss: Tensor,
    ignore_index: int,
    chunk_size: int,
    needs: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients for ``(hidden, weight, bias)`` (None where ``needs`` says not needed)."""
    need_hidden, need_weight, need_bias = needs[0], needs[1], needs[2] and bias is not None
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    # Accumulate across chunks in fp32: summing bf16 partial products loses the small ones.
    acc_dtype = torch.promote_types(weight.dtype, torch.float32)
    grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(weight.shape[0], dtype=acc_dtype, device=weight.device) if need_bias else None
    for start in range(0, hidden.shape[0], chunk_size):
        stop = min(start + chunk_size, hidden.shape[0])
        h = hidden[start:stop]
        logits = _chunk_logits(h, weight, bias)
        dlogits = cross_entropy_backward(
            logits, targets[start:stop], lse[start:stop], grad_loss[start:stop], None, ignore_index, out=logits
        )
        if need_hidden:
            torch.mm(dlogits, weight, out=grad_hidden[start:stop])
        if need_weight:
            if dlogits.dtype == acc_dtype:
                grad_weight.addmm_(dlogits.t(), h)
            else:
                grad_weight += (dlogits.t() @ h).to(acc_dtype)
        if need_bias:
            grad_bias += dlogits.sum(0, dtype=acc_dtype)
        del logits, dlogits
    return (
        grad_hidden,
        grad_weight.to(weight.dtype) if need_weight else None,
        grad_bias.to(bias.dtype) if need_bias else None,
    )


def fused_linear_cross_entropy_reference(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, ignore_index: int = -100
) -> Tensor:
    """The unfused computation (full logits), for tests and the memory comparison."""
    logits = _chunk_logits(hidden.reshape(-1, hidden.shape[-1]), weight, bias)
    return cross_entropy_forward_reference(logits, targets.reshape(-1), ignore_index)[0].view(targets.shape)


# --- custom ops ----------------------------------------------------------------------------------


@torch.library.custom_op("lightning_eff::fused_linear_cross_entropy", mutates_args=())
def _fused_op(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, ignore_index: int, chunk_size: int
) -> tuple[Tensor, Tensor]:
    return fused_linear_cross_entropy_forward(hidden, weight, bias, targets, ignore_index, chunk_size)


@_fused_op.register_fake
def _(hidden, weight, bias, targets, ignore_index, chunk_size):
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    return hidden.new_empty(hidden.shape[:1], dtype=dtype), hidden.new_empty(hidden.shape[:1], dtype=dtype)


@torch.library.custom_op("lightning_eff::fused_linear_cross_entropy_backward", mutates_args=())
def _fused_backward_op(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, lse: Tensor, grad_loss: Tensor,
    ignore_index: int, chunk_size: int, needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    grads = fused_linear_cross_entropy_backward(
        hidden, weight, bias, targets, lse, grad_loss, ignore_index, chunk_size, tuple(needs)
    )
    return tuple(g if g is not None else hidden.new_empty(0) for g in grads)


@_fused_backward_op.register_fake
def _(hidden, weight, bias, targets, lse, grad_loss, ignore_index, chunk_size, needs):
    return (
        torch.empty_like(hidden) if needs[0] else hidden.new_empty(0),
        torch.empty_like(weight) if needs[1] else hidden.new_empty(0),
        torch.empty_like(bias) if needs[2] and bias is not None else hidden.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, ignore_index, chunk_size = inputs
    ctx.save_for_backward(hidden, weight, bias, targets, output[1])
    ctx.ignore_index, ctx.chunk_size = ignore_index, chunk_size
    ctx.mark_non_differentiable(output[1])  # lse is saved for the backward, not part of the API


def _backward(ctx, grad_loss, _grad_lse):
    hidden, weight, bias, targets, lse = ctx.saved_tensors
    needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]]
    grad_hidden, grad_weight, grad_bias = _fused_backward_op(
        hidden, weight, bias, targets, lse, grad_loss, ctx.ignore_index, ctx.chunk_size, needs
    )
    return (
        grad_hidden if needs[0] else None,
        grad_weight if needs[1] else None,
        grad_bias if needs[2] else None,
        None,
        None,
        None,
    )


_fused_op.register_autograd(_backward, setup_context=_setup_context)


# --- public API ----------------------------------------------------------------------------------


def fused_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-sample cross-entropy of ``hidden[..., H] @ weight[V, H].T + bias[V]`` against
    ``targets[...]``: float32 losses of shape ``targets.shape``, 0 where ``targets == ignore_index``.
    Gradients flow to ``hidden``, ``weight`` and ``bias``; the logits are never materialised beyond
    ``chunk_size`` tokens (default: :func:`default_chunk_size`)."""
    plugin = plugin_implementation(
        "fused_linear_cross_entropy", hidden, weight, targets, bias=bias, ignore_index=ignore_index
    )
    if plugin is not None:
        return plugin(hidden, weight, targets, bias=bias, ignore_index=ignore_index)
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden of shape {tuple(hidden.shape)} and weight of shape {tuple(weight.shape)} do not fit: "
            "expected weight [vocab, hidden_size] with hidden_size == hidden.shape[-1]"
        )
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets of shape {tuple(targets.shape)} must equal hidden.shape[:-1] = {tuple(hidden.shape[:-1])}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias of shape {tuple(bias.shape)} must be [vocab] = [{weight.shape[0]}]")
    if torch.is_autocast_enabled(hidden.device.type):
        # Custom ops are opaque to autocast: cast as it would for the F.linear this op replaces.
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise TypeError(
            f"hidden ({hidden.dtype}), weight ({weight.dtype}) and bias ({getattr(bias, 'dtype', None)}) "
            "must share a dtype: cast them to one, or call the op under torch.autocast"
        )
    flat = hidden.reshape(-1, hidden.shape[-1])
    n_tokens = flat.shape[0]
    chunk = chunk_size or default_chunk_size(n_tokens, weight.shape[1], weight.shape[0])
    if chunk < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    loss, _ = _fused_op(flat, weight, bias, targets.reshape(-1), int(ignore_index), int(chunk))
    return loss.view(targets.shape)
