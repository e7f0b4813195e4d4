"""MoE routing metadata: top-k experts per token, per-expert counts, offsets and the permutation that
groups token slots by expert, without a host synchronisation.

- ``moe_topk_routing(logits, top_k, renormalize=True)``: softmax-then-top-k routing of ``[T, E]``
  router logits (computed in float32). Returns :class:`MoERouting`: ``weights [T, k]`` (float32,
  differentiable with respect to the logits), ``experts [T, k]`` and the metadata below.
- ``moe_routing_metadata(experts, num_experts, keep=None)``: the metadata for given ``[T, k]`` expert
  indices (e.g. after a capacity drop marked ``keep=False``).

Metadata (the contract of ``plugins/moe/routing.py:routing_metadata``; slot ``s = t * k + j``):

- ``counts [E]``: kept slots per expert; ``offsets [E + 1]``: exclusive cumulative sum (``offsets[E]``
  is the number of kept slots);
- ``permutation [T * k]``: slot ids grouped by expert, ascending slot (so token) order inside an expert,
  dropped slots after every group in slot order: a stable sort of the slots by expert;
- ``tokens [T * k]``: ``permutation // k``, the token of each permuted slot.

Top-k semantics, identical in both implementations: the k largest float32 logits (softmax is monotonic,
so these are the k most probable experts), ties to the lower expert index, ordered by decreasing logit;
``weights`` are the softmax probabilities of the chosen experts, renormalised to sum to 1 over the k
(a softmax over the k chosen logits) when ``renormalize``. Choosing on the logits rather than on rounded
probabilities makes the choice independent of how ``exp`` rounds, so the Triton kernel and the reference
agree exactly on indices and metadata (tested), and to float32 rounding on weights.

Triton: one kernel chooses the top-k (a row block per program, k rounds of max / lowest-index argmax);
the metadata takes three more kernels and no atomics, so it is deterministic: (1) a per-block histogram
of expert ids, (2) one program scanning the histograms into per-block, per-expert start positions and
the offsets, (3) per block, each slot's rank among the earlier slots of its expert in that block (a
cumulative sum of one-hot rows), which places it at ``offsets[e] + block_start[b, e] + rank``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lightning_eff.kernels._dispatch import next_power_of_2, plugin_implementation, tl, triton, use_triton

TOPK_ROWS = 16  # tokens per top-k program
SLOT_BLOCK = 128  # slots per histogram / scatter program
MAX_TRITON_EXPERTS = 256  # one-hot tiles are [SLOT_BLOCK, E + 1]; more experts go to the reference


class MoERouting(NamedTuple):
    """Top-k routing of ``T`` tokens over ``E`` experts with its metadata (see the module docstring)."""

    weights: Tensor  # [T, k] float32
    experts: Tensor  # [T, k] int64
    counts: Tensor  # [E] int64
    offsets: Tensor  # [E + 1] int64
    permutation: Tensor  # [T * k] int64
    tokens: Tensor  # [T * k] int64


# --- reference (CPU production path) ---------------------------------------------------------------


def topk_reference(logits: Tensor, top_k: int, renormalize: bool = True) -> tuple[Tensor, Tensor]:
    """``(weights [T, k] float32, experts [T, k] int64)``; a stable descending sort gives the
    lower-index-first tie-break."""
    lf = logits.float() if logits.dtype != torch.float64 else logits
    experts = torch.sort(lf, dim=-1, descending=True, stable=True).indices[:, :top_k]
    if renormalize:
        weights = torch.softmax(lf.gather(1, experts), dim=-1)
    else:
        weights = torch.softmax(lf, dim=-1).gather(1, experts)
    return weights, experts


def metadata_reference(experts: Tensor, num_experts: int, keep: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(counts, offsets, permutation, tokens)`` by bincount, cumsum and a stable sort."""
    flat = experts.reshape(-1).long()
    key = flat if keep is None else torch.where(keep.reshape(-1), flat, torch.full_like(flat, num_experts))
    counts = torch.bincount(key, minlength=num_experts + 1)[:num_experts]
    offsets = torch.zeros(num_experts + 1, dtype=torch.long, device=experts.device)
    offsets[1:] = torch.cumsum(counts, dim=0)
    permutation = torch.sort(key, stable=True).indices
    return counts, offsets, permutation, permutation // max(1, experts.shape[-1])


# --- Triton kernels ------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _topk_kernel(
        logits_ptr, stride_t, stride_e, weights_ptr, experts_ptr, n_tokens, n_experts,
        K: tl.constexpr, K_BLOCK: tl.constexpr, RENORMALIZE: tl.constexpr, ROWS: tl.constexpr, E_BLOCK: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, E_BLOCK)
        row_ok = rows < n_tokens
        col_ok = cols < n_experts
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(logits_ptr + rows[:, None] * stride_t + cols[None, :] * stride_e, mask=mask, other=0.0).to(tl.float32)
        x = tl.where(col_ok[None, :], x, float("-inf"))
        row_max = tl.max(x, axis=1)
        denominator = tl.sum(tl.where(col_ok[None, :], tl.exp(x - row_max[:, None]), 0.0), axis=1)
        available = col_ok[None, :] & (rows[:, None] >= 0)  # [ROWS, E_BLOCK]
        slots = tl.arange(0, K_BLOCK)
        chosen = tl.zeros([ROWS, K_BLOCK], dtype=tl.int64)
        weights = tl.zeros([ROWS, K_BLOCK], dtype=tl.float32)
        top = row_max  # the first choice's logit
        for j in tl.static_range(K):
            candidates = tl.where(available, x, float("-inf"))
            best = tl.max(candidates, axis=1)
            # lowest index among the maxima (an available -inf column is still a candidate)
            index = tl.min(tl.where(available & (candidates == best[:, None]), cols[None, :], E_BLOCK), axis=1)
            available = available & (cols[None, :] != index[:, None])
            if RENORMALIZE:
                w = tl.exp(best - top)  # softmax over the chosen logits, shifted by the largest
            else:
                w = tl.exp(best - row_max) / denominator
            here = slots[None, :] == j
            chosen = tl.where(here, index.to(tl.int64)[:, None], chosen)
            weights = tl.where(here, w[:, None], weights)
        if RENORMALIZE:
            weights = weights / tl.sum(weights, axis=1)[:, None]
        out_mask = row_ok[:, None] & (slots[None, :] < K)
        tl.store(experts_ptr + rows[:, None] * K + slots[None, :], chosen, mask=out_mask)
        tl.store(weights_ptr + rows[:, None] * K + slots[None, :], weights, mask=out_mask)

    @triton.jit
    def _slot_keys(experts_ptr, keep_ptr, slots, slot_ok, n_experts, HAS_KEEP: tl.constexpr):
        key = tl.load(experts_ptr + slots, mask=slot_ok, other=0).to(tl.int32)
        if HAS_KEEP:
            kept = tl.load(keep_ptr + slots, mask=slot_ok, other=0) != 0
            key = tl.where(kept, key, n_experts)
        # out-of-range slots get a key no column matches
        return tl.where(slot_ok, key, -1)

    @triton.jit
    def _histogram_kernel(
        experts_ptr, keep_ptr, hist_ptr, n_slots, n_experts,
        HAS_KEEP: tl.constexpr, BLOCK: tl.constexpr, E_BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        slots = pid * BLOCK + tl.arange(0, BLOCK)
        key = _slot_keys(experts_ptr, keep_ptr, slots, slots < n_slots, n_experts, HAS_KEEP)
        cols = tl.arange(0, E_BLOCK)
        one_hot = (key[:, None] == cols[None, :]).to(tl.int32)
        tl.store(hist_ptr + pid * E_BLOCK + cols, tl.sum(one_hot, axis=0))

    @triton.jit
    def _scan_kernel(
        hist_ptr, starts_ptr, counts_ptr, offsets_ptr, n_blocks, n_experts,
        CHUNK: tl.constexpr, E_BLOCK: tl.constexpr,
    ):
        # One program: exclusive prefix over blocks per expert, then over experts.
        cols = tl.arange(0, E_BLOCK)
        carry = tl.zeros([E_BLOCK], dtype=tl.int32)
        for b0 in range(0, n_blocks, CHUNK):
            blocks = b0 + tl.arange(0, CHUNK)
            ok = (blocks < n_blocks)[:, None] & (cols[None, :] >= 0)
            h = tl.load(hist_ptr + blocks[:, None] * E_BLOCK + cols[None, :], mask=ok, other=0)
            inclusive = tl.cumsum(h, axis=0)
            tl.store(starts_ptr + blocks[:, None] * E_BLOCK + cols[None, :], inclusive - h + carry[None, :], mask=ok)
            carry += tl.sum(h, axis=0)
        # carry: slots per key (experts 0..E-1, then the dropped bucket E)
        tl.store(counts_ptr + cols, carry.to(tl.int64), mask=cols < n_experts)
        bucket = tl.where(cols <= n_experts, carry, 0)
        exclusive = tl.cumsum(bucket, axis=0) - bucket
        tl.store(offsets_ptr + cols, exclusive.to(tl.int64), mask=cols <= n_experts)

    @triton.jit
    def _scatter_kernel(
        experts_ptr, keep_ptr, starts_ptr, offsets_ptr, permutation_ptr, tokens_ptr, n_slots, n_experts, top_k,
        HAS_KEEP: tl.constexpr, BLOCK: tl.constexpr, E_BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        slots = pid * BLOCK + tl.arange(0, BLOCK)
        slot_ok = slots < n_slots
        key = _slot_keys(experts_ptr, keep_ptr, slots, slot_ok, n_experts, HAS_KEEP)
        cols = tl.arange(0, E_BLOCK)
        one_hot = (key[:, None] == cols[None, :]).to(tl.int32)
        before = tl.cumsum(one_hot, axis=0) - one_hot  # earlier slots of the same key in this block
        rank = tl.sum(before * one_hot, axis=1)
        starts = tl.load(starts_ptr + pid * E_BLOCK + cols)
        base = tl.load(offsets_ptr + cols, mask=cols <= n_experts, other=0).to(tl.int32) + starts
        position = tl.sum(one_hot * base[None, :], axis=1) + rank
        tl.store(permutation_ptr + position, slots, mask=slot_ok)
        tl.store(tokens_ptr + position, slots // top_k, mask=slot_ok)


def metadata_triton(experts: Tensor, num_experts: int, keep: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    device = experts.device
    top_k = max(1, experts.shape[-1])
    flat = experts.reshape(-1).contiguous()
    keep_flat = keep.reshape(-1).contiguous().to(torch.int8) if keep is not None else flat
    n_slots = flat.numel()
    e_block = next_power_of_2(num_experts + 1)
    n_blocks = max(1, triton.cdiv(n_slots, SLOT_BLOCK))
    hist = torch.empty((n_blocks, e_block), dtype=torch.int32, device=device)
    starts = torch.empty_like(hist)
    counts = torch.empty(num_experts, dtype=torch.long, device=device)
    offsets = torch.empty(num_experts + 1, dtype=torch.long, device=device)
    permutation = torch.empty(n_slots, dtype=torch.long, device=device)
    tokens = torch.empty(n_slots, dtype=torch.long, device=device)
    common = dict(HAS_KEEP=keep is not None, BLOCK=SLOT_BLOCK, E_BLOCK=e_block)
    _histogram_kernel[(n_blocks,)](flat, keep_flat, hist, n_slots, num_experts, **common)
    _scan_kernel[(1,)](hist, starts, counts, offsets, n_blocks, num_experts, CHUNK=16, E_BLOCK=e_block)
    _scatter_kernel[(n_blocks,)](flat, keep_flat, starts, offsets, permutation, tokens, n_slots, num_experts, top_k, **common)
    return counts, offsets, permutation, tokens


def topk_triton(logits: Tensor, top_k: int, renormalize: bool = True) -> tuple[Tensor, Tensor]:
    n_tokens, n_experts = logits.shape
    weights = torch.empty((n_tokens, top_k), dtype=torch.float32, device=logits.device)
    experts = torch.empty((n_tokens, top_k), dtype=torch.long, device=logits.device)
    if n_tokens:
        _topk_kernel[(triton.cdiv(n_tokens, TOPK_ROWS),)](
            logits, logits.stride(0), logits.stride(1), weights, experts, n_tokens, n_experts,
            K=top_k, K_BLOCK=next_power_of_2(top_k), RENORMALIZE=renormalize, ROWS=TOPK_ROWS, E_BLOCK=next_power_of_2(n_experts),
        )
    return weights, experts


# --- dispatch ------------------------------------------------------------------------------------


def _triton_for(t: Tensor, num_experts: int) -> bool:
    return num_experts + 1 <= MAX_TRITON_EXPERTS and t.numel() < 2**31 and use_triton(t)


def _topk_forward(logits: Tensor, top_k: int, renormalize: bool) -> tuple[Tensor, Tensor]:
    if logits.dtype != torch.float64 and _triton_for(logits, logits.shape[-1]):
        return topk_triton(logits, top_k, renormalize)
    return topk_reference(logits, top_k, renormalize)


def _metadata(experts: Tensor, num_experts: int, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if _triton_for(experts, num_experts):
        return metadata_triton(experts, num_experts, keep)
    return metadata_reference(experts, num_experts, keep)


# --- custom ops ----------------------------------------------------------------------------------


def _fake_metadata(experts: Tensor, num_experts: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n = experts.numel()
    long = dict(dtype=torch.long, device=experts.device)
    return (torch.empty(num_experts, **long), torch.empty(num_experts + 1, **long), torch.empty(n, **long),
            torch.empty(n, **long))


@torch.library.custom_op("lightning_eff::moe_routing_metadata", mutates_args=())
def _metadata_op(experts: Tensor, keep: Tensor | None, num_experts: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _metadata(experts, num_experts, keep)


@_metadata_op.register_fake
def _(experts, keep, num_experts):
    return _fake_metadata(experts, num_experts)


@torch.library.custom_op("lightning_eff::moe_topk_routing", mutates_args=())
def _topk_op(logits: Tensor, top_k: int, renormalize: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    weights, experts = _topk_forward(logits, top_k, renormalize)
    return (weights, experts, *_metadata(experts, logits.shape[-1], None))


@_topk_op.register_fake
def _(logits, top_k, renormalize):
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    weights = logits.new_empty((logits.shape[0], top_k), dtype=dtype)
    experts = logits.new_empty((logits.shape[0], top_k), dtype=torch.long)
    return (weights, experts, *_fake_metadata(experts, logits.shape[-1]))


def _topk_setup(ctx, inputs, output):
    logits, _, renormalize = inputs
    weights, experts = output[0], output[1]
    ctx.save_for_backward(logits, weights, experts)
    ctx.renormalize = renormalize
    ctx.mark_non_differentiable(*output[1:])


def _topk_backward(ctx, grad_weights, *_):
    logits, weights, experts = ctx.saved_tensors
    return topk_weights_backward(grad_weights, logits, weights, experts, ctx.renormalize), None, None


_topk_op.register_autograd(_topk_backward, setup_context=_topk_setup)


def topk_weights_backward(grad_weights: Tensor, logits: Tensor, weights: Tensor, experts: Tensor, renormalize: bool) -> Tensor:
    """Gradient of the routing weights with respect to the logits.

    Renormalised, the weights are a softmax over the chosen logits: ``w * (g - sum(w g))`` on the chosen
    columns, 0 elsewhere. Without renormalisation they are the chosen softmax probabilities ``p``:
    ``p * (G - sum(w g))`` with ``G`` the weight gradients scattered onto their columns.
    """
    g = grad_weights.to(weights.dtype)
    inner = (weights * g).sum(-1, keepdim=True)
    if renormalize:
        grad = torch.zeros(logits.shape, dtype=weights.dtype, device=logits.device)
        grad.scatter_(1, experts, weights * (g - inner))
    else:
        lf = logits.to(weights.dtype)
        probs = torch.softmax(lf, dim=-1)
        scattered = torch.zeros_like(probs).scatter_(1, experts, g)
        grad = probs * (scattered - inner)
    return grad.to(logits.dtype)


# --- public API ----------------------------------------------------------------------------------


def moe_topk_routing(logits: Tensor, top_k: int, renormalize: bool = True) -> MoERouting:
    """Softmax-then-top-k routing of ``[T, E]`` router logits, with counts, offsets and the
    expert-grouped slot permutation (see the module docstring); no host synchronisation."""
    plugin = plugin_implementation("moe_topk_routing", logits, top_k, renormalize=renormalize)
    if plugin is not None:
        return MoERouting(*plugin(logits, top_k, renormalize=renormalize))
    if logits.dim() != 2:
        raise ValueError(f"router logits must be [tokens, experts], got shape {tuple(logits.shape)}")
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k={top_k} must be in [1, num_experts={logits.shape[-1]}]")
    return MoERouting(*_topk_op(logits, int(top_k), bool(renormalize)))


def moe_routing_metadata(
    experts: Tensor, num_experts: int, keep: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(counts, offsets, permutation, tokens)`` for ``[T, k]`` expert indices; slots with
    ``keep=False`` are left out of the counts and placed after every expert's group."""
    plugin = plugin_implementation("moe_routing_metadata", experts, num_experts, keep=keep)
    if plugin is not None:
        return tuple(plugin(experts, num_experts, keep=keep))
    if experts.dim() != 2 or experts.dtype.is_floating_point or experts.dtype == torch.bool:
        raise ValueError(f"experts must be [tokens, k] integer indices, got {experts.dtype}{list(experts.shape)}")
    if keep is not None and (keep.shape != experts.shape or keep.dtype != torch.bool):
        raise ValueError(f"keep must be a bool tensor of shape {tuple(experts.shape)}")
    return _metadata_op(experts, keep, int(num_experts))
