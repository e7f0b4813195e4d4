"""Grouped expert MLP with gather/scatter and SwiGLU, forward and backward, for MoE layers.

``moe_grouped_swiglu(x, w_gate, w_up, w_down, weights, offsets, permutation)`` computes, for top-k
routing of ``T`` tokens over ``E`` SwiGLU experts (Llama/Mistral/Qwen2 MLPs: ``down(silu(gate x) * up x)``)::

    out[t] = sum_j weights[t, j] * W_down[e] @ (silu(W_gate[e] @ x[t]) * (W_up[e] @ x[t])),  e = experts[t, j]

from the routing metadata of :mod:`lightning_eff.kernels.moe_routing` (``offsets [E + 1]`` and the
expert-grouped slot ``permutation [T * k]``; slots past ``offsets[E]`` are dropped and contribute 0).
``x [T, H]``; ``w_gate``, ``w_up`` ``[E, F, H]``; ``w_down [E, H, F]`` (the ``nn.Linear`` weights stacked);
``weights [T, k]`` the routing weights. Differentiable in ``x``, the three expert weights and ``weights``.

The computation runs in expert-grouped slot order: the tokens of permuted slot ``s`` are gathered
(``x[permutation[s] // k]``), each expert multiplies its contiguous block of rows, and results are
scattered back to slot order (``permutation[s]``, every slot written once) and summed over the k slots
of each token in float32. No atomics: the forward and backward are deterministic. The forward saves
the gate and up pre-activations (``[T * k, F]`` each) for the backward.

Triton: one grouped GEMM over row tiles (each program takes a ``BLOCK_M`` tile of one expert's rows,
found from per-expert tile offsets computed on the device, so there is no host synchronisation), with
optional row gather, row scatter, row scale, a fused SwiGLU epilogue (gate and up accumulated together)
and a two-product mode for the input gradient; and a grouped weight-gradient GEMM (one program per
expert and output tile, reducing over that expert's rows). The reference (the CPU production path)
gathers once and runs three ``torch.mm`` per expert on contiguous row blocks; it reads the offsets on
the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_eff.kernels._dispatch import (
    INTERPRETED,
    autotune,
    next_power_of_2,
    plugin_implementation,
    tl,
    triton,
    use_triton,
)

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


# --- loop-over-experts reference (tests, bench) ----------------------------------------------------


def moe_swiglu_loop_reference(
    x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, weights: Tensor, experts: Tensor, keep: Tensor | None = None
) -> Tensor:
    """The definition, one expert at a time from the ``[T, k]`` expert indices (differentiable)."""
    out = torch.zeros(x.shape, dtype=torch.promote_types(x.dtype, weights.dtype), device=x.device)
    chosen = experts if keep is None else torch.where(keep, experts, -1)
    for e in range(w_gate.shape[0]):
        token, slot = torch.where(chosen == e)
        xe = x[token]
        y = (F.silu(xe @ w_gate[e].t()) * (xe @ w_up[e].t())) @ w_down[e].t()
        out = out.index_add(0, token, y * weights[token, slot].unsqueeze(-1))
    return out.to(x.dtype)


# --- grouped reference (CPU production path) -------------------------------------------------------


def _bounds(offsets: Tensor) -> list[int]:
    return offsets.tolist()  # host read: the reference only (on CPU it costs nothing)


def _sum_slots(slots: Tensor, tokens: int, top_k: int, dtype: torch.dtype) -> Tensor:
    return slots.view(tokens, top_k, -1).sum(1).to(dtype)


def grouped_swiglu_forward_reference(
    x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, weights: Tensor, offsets: Tensor, permutation: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(out [T, H], gate [T*k, F], up [T*k, F])``; gate/up rows in permuted order (rows past the
    kept slots are zero)."""
    n_tokens, top_k = weights.shape
    n_slots, n_ff = permutation.numel(), w_gate.shape[1]
    bounds = _bounds(offsets)
    kept = permutation[: bounds[-1]]
    xs = x.index_select(0, kept // top_k)
    gate = x.new_empty(n_slots, n_ff)
    up = x.new_empty(n_slots, n_ff)
    gate[bounds[-1]:] = 0  # dropped slots
    up[bounds[-1]:] = 0
    y = x.new_empty(bounds[-1], w_down.shape[1])
    # One expert's block at a time, elementwise work included: the block stays in cache on a CPU.
    for e, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        torch.mm(xs[a:b], w_gate[e].t(), out=gate[a:b])
        torch.mm(xs[a:b], w_up[e].t(), out=up[a:b])
        torch.mm(F.silu(gate[a:b]) * up[a:b], w_down[e].t(), out=y[a:b])
    acc = _acc_dtype(x.dtype)
    slots = torch.zeros(n_slots, y.shape[1], dtype=acc, device=x.device)
    slots[kept] = y.to(acc) * weights.reshape(-1)[kept].to(acc).unsqueeze(-1)
    return _sum_slots(slots, n_tokens, top_k, x.dtype), gate, up


def _swiglu_grads(dh_unweighted: Tensor, gate: Tensor, up: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From ``grad_out @ W_down`` per slot: ``(h, d weight, d gate, d up)`` in float32 (few passes over
    the ``[slots, F]`` tensors: on CPU they cost as much as the GEMMs)."""
    g, u, dhu = gate.float(), up.float(), dh_unweighted.float()
    silu = F.silu(g)
    h = silu * u
    d_weight = torch.linalg.vecdot(dhu, h)
    dh = dhu * w.float().unsqueeze(-1)
    return h, d_weight, torch.ops.aten.silu_backward(dh * u, g), dh * silu


def grouped_swiglu_backward_reference(
    grad_out: Tensor, x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, weights: Tensor, offsets: Tensor,
    permutation: Tensor, gate: Tensor, up: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(grad_x, grad_w_gate, grad_w_up, grad_w_down, grad_weights)``."""
    n_tokens, top_k = weights.shape
    bounds = _bounds(offsets)
    n = bounds[-1]
    kept = permutation[:n]
    tokens = kept // top_k
    xs = x.index_select(0, tokens)
    go = grad_out.index_select(0, tokens)
    w = weights.reshape(-1)[kept]
    grad_wg, grad_wu, grad_wd = torch.empty_like(w_gate), torch.empty_like(w_up), torch.empty_like(w_down)
    dxs = x.new_empty(n, x.shape[1])
    d_weight = torch.empty(n, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype, device=x.device)
    # One expert's block at a time, elementwise work included: the block stays in cache on a CPU.
    for e, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        h, d_weight[a:b], dg, du = _swiglu_grads(go[a:b] @ w_down[e], gate[a:b], up[a:b], w[a:b])
        h, dg, du = h.to(x.dtype), dg.to(x.dtype), du.to(x.dtype)
        dy = (go[a:b].float() * w[a:b].float().unsqueeze(-1)).to(x.dtype)
        torch.mm(dy.t(), h, out=grad_wd[e])
        torch.mm(dg.t(), xs[a:b], out=grad_wg[e])
        torch.mm(du.t(), xs[a:b], out=grad_wu[e])
        torch.addmm(torch.mm(dg, w_gate[e]), du, w_up[e], out=dxs[a:b])
    acc = _acc_dtype(x.dtype)
    slots = torch.zeros(permutation.numel(), x.shape[1], dtype=acc, device=x.device)
    slots[kept] = dxs.to(acc)
    grad_weights = torch.zeros(permutation.numel(), dtype=weights.dtype, device=x.device)
    grad_weights[kept] = d_weight.to(weights.dtype)
    return _sum_slots(slots, n_tokens, top_k, x.dtype), grad_wg, grad_wu, grad_wd, grad_weights.view(weights.shape)


# --- Triton kernels ------------------------------------------------------------------------------

BLOCK_M = 16 if INTERPRETED else 64  # rows per tile of the row GEMM (fixed: the tile offsets depend on it)


def _row_configs():
    if triton is None:
        return []
    return [
        triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_N": 256, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    ]


def _weight_configs():
    if triton is None:
        return []
    return [
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_S": 16}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_S": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_S": 32}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_S": 64}, num_warps=4, num_stages=3),
    ]


if triton is not None:

    @autotune(_row_configs(), key=["N", "K", "SWIGLU", "DUAL"])
    @triton.jit
    def _grouped_rows_kernel(
        a_ptr, a2_ptr, stride_am, stride_ak, a_index_ptr,
        b_ptr, b2_ptr, stride_be, stride_bk, stride_bn,
        c_ptr, stride_cm, c_index_ptr, gate_ptr, up_ptr,
        scale_ptr, scale_index_ptr, offsets_ptr, tile_offsets_ptr, n_experts, N, K,
        A_GATHER: tl.constexpr, C_SCATTER: tl.constexpr, HAS_SCALE: tl.constexpr, SWIGLU: tl.constexpr,
        DUAL: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, E_BLOCK: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """C[rows of expert e] = A[rows] @ B[e] (+ A2[rows] @ B2[e] when DUAL); with SWIGLU,
        C = silu(A @ B) * (A @ B2) and both products stored to gate/up."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        experts = tl.arange(0, E_BLOCK)
        tile_ends = tl.load(tile_offsets_ptr + 1 + experts, mask=experts < n_experts, other=2**30)
        e = tl.sum((tile_ends <= pid_m).to(tl.int32), axis=0)  # the expert whose tiles hold pid_m
        valid = e < n_experts
        e = tl.minimum(e, n_experts - 1)
        row_start = tl.load(offsets_ptr + e) + (pid_m - tl.load(tile_offsets_ptr + e)) * BLOCK_M
        row_end = tl.where(valid, tl.load(offsets_ptr + e + 1), 0)  # a program past the last tile does nothing
        rows = row_start + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        if A_GATHER:
            a_rows = tl.load(a_index_ptr + rows, mask=row_ok, other=0)
        else:
            a_rows = rows
        cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        b_base = b_ptr + e.to(tl.int64) * stride_be
        b2_base = b2_ptr + e.to(tl.int64) * stride_be
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            a_off = a_rows[:, None] * stride_am + ks[None, :] * stride_ak
            a_mask = row_ok[:, None] & k_ok[None, :]
            b_off = ks[:, None] * stride_bk + cols[None, :] * stride_bn
            b_mask = k_ok[:, None] & col_ok[None, :]
            a = tl.load(a_ptr + a_off, mask=a_mask, other=0.0)
            b = tl.load(b_base + b_off, mask=b_mask, other=0.0)
            if UPCAST:  # the interpreter's low-precision dot is wrong: multiply in fp32 there
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            if SWIGLU or DUAL:
                b2 = tl.load(b2_base + b_off, mask=b_mask, other=0.0)
                if UPCAST:
                    b2 = b2.to(tl.float32)
                if DUAL:
                    a2 = tl.load(a2_ptr + a_off, mask=a_mask, other=0.0)
                    if UPCAST:
                        a2 = a2.to(tl.float32)
                    acc2 = tl.dot(a2, b2, acc2, input_precision=PRECISION)
                else:
                    acc2 = tl.dot(a, b2, acc2, input_precision=PRECISION)
        out_mask = row_ok[:, None] & col_ok[None, :]
        if SWIGLU:
            saved = rows[:, None] * N + cols[None, :]
            tl.store(gate_ptr + saved, acc.to(gate_ptr.dtype.element_ty), mask=out_mask)
            tl.store(up_ptr + saved, acc2.to(up_ptr.dtype.element_ty), mask=out_mask)
            acc = acc * tl.sigmoid(acc) * acc2
        elif DUAL:
            acc = acc + acc2
        if HAS_SCALE:
            scale_at = tl.load(scale_index_ptr + rows, mask=row_ok, other=0)
            acc = acc * tl.load(scale_ptr + scale_at, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        if C_SCATTER:
            c_rows = tl.load(c_index_ptr + rows, mask=row_ok, other=0)
        else:
            c_rows = rows
        tl.store(c_ptr + c_rows[:, None] * stride_cm + cols[None, :], acc.to(c_ptr.dtype.element_ty), mask=out_mask)

    @autotune(_weight_configs(), key=["M", "N"])
    @triton.jit
    def _grouped_weight_grad_kernel(
        a_ptr, stride_as, stride_am, a_index_ptr, scale_ptr, scale_index_ptr,
        b_ptr, stride_bs, stride_bn, b_index_ptr,
        c_ptr, stride_ce, stride_cm, stride_cn, offsets_ptr, M, N,
        A_GATHER: tl.constexpr, B_GATHER: tl.constexpr, HAS_SCALE: tl.constexpr, UPCAST: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    ):
        """C[e] = sum over expert e's rows s of (scale[s] * A[s])^T B[s]: [M, N] per expert."""
        e = tl.program_id(0).to(tl.int64)
        ms = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        ns = tl.program_id(2).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = ms < M
        n_ok = ns < N
        start = tl.load(offsets_ptr + e)
        end = tl.load(offsets_ptr + e + 1)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for s0 in range(start, end, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            s_ok = s < end
            if A_GATHER:
                a_rows = tl.load(a_index_ptr + s, mask=s_ok, other=0)
            else:
                a_rows = s
            if B_GATHER:
                b_rows = tl.load(b_index_ptr + s, mask=s_ok, other=0)
            else:
                b_rows = s
            a = tl.load(a_ptr + a_rows[:, None] * stride_as + ms[None, :] * stride_am, mask=s_ok[:, None] & m_ok[None, :], other=0.0)
            b = tl.load(b_ptr + b_rows[:, None] * stride_bs + ns[None, :] * stride_bn, mask=s_ok[:, None] & n_ok[None, :], other=0.0)
            if HAS_SCALE:
                scale_at = tl.load(scale_index_ptr + s, mask=s_ok, other=0)
                scaled = a.to(tl.float32) * tl.load(scale_ptr + scale_at, mask=s_ok, other=0.0).to(tl.float32)[:, None]
                if UPCAST:
                    a = scaled
                else:
                    a = scaled.to(b.dtype)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(tl.trans(a), b, acc, input_precision=PRECISION)
        tl.store(c_ptr + e * stride_ce + ms[:, None] * stride_cm + ns[None, :] * stride_cn, acc.to(c_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # fp32 stays fp32 (no tf32 rounding) on a GPU


def _tile_offsets(offsets: Tensor) -> Tensor:
    """Exclusive cumulative sum of each expert's row tiles, on the device."""
    counts = offsets[1:] - offsets[:-1]
    tiles = torch.zeros_like(offsets)
    tiles[1:] = torch.cumsum((counts + BLOCK_M - 1) // BLOCK_M, dim=0)
    return tiles


def _rows_gemm(a, b, c, offsets, tile_offsets, n_out, k_dim, stride_bk, stride_bn, *, a_index=None, c_index=None,
               scale=None, scale_index=None, a2=None, b2=None, gate=None, up=None):
    n_experts = b.shape[0]
    grid = lambda meta: (triton.cdiv(a_index.numel() if a_index is not None else a.shape[0], BLOCK_M) + n_experts,
                         triton.cdiv(n_out, meta["BLOCK_N"]))
    swiglu = gate is not None
    _grouped_rows_kernel[grid](
        a, a2 if a2 is not None else a, a.stride(0), a.stride(1), a_index if a_index is not None else offsets,
        b, b2 if b2 is not None else b, b.stride(0), stride_bk, stride_bn,
        c, c.stride(0), c_index if c_index is not None else offsets,
        gate if swiglu else c, up if swiglu else c,
        scale if scale is not None else c, scale_index if scale_index is not None else offsets,
        offsets, tile_offsets, n_experts, n_out, k_dim,
        A_GATHER=a_index is not None, C_SCATTER=c_index is not None, HAS_SCALE=scale is not None, SWIGLU=swiglu,
        DUAL=a2 is not None, UPCAST=INTERPRETED, PRECISION=_precision(a.dtype), E_BLOCK=next_power_of_2(n_experts),
        BLOCK_M=BLOCK_M,
    )


def _weight_gemm(a, b, c, offsets, *, a_index=None, b_index=None, scale=None, scale_index=None):
    n_experts, m, n = c.shape
    grid = lambda meta: (n_experts, triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))
    _grouped_weight_grad_kernel[grid](
        a, a.stride(0), a.stride(1), a_index if a_index is not None else offsets,
        scale if scale is not None else c, scale_index if scale_index is not None else offsets,
        b, b.stride(0), b.stride(1), b_index if b_index is not None else offsets,
        c, c.stride(0), c.stride(1), c.stride(2), offsets, m, n,
        A_GATHER=a_index is not None, B_GATHER=b_index is not None, HAS_SCALE=scale is not None, UPCAST=INTERPRETED,
        PRECISION=_precision(a.dtype),
    )


def grouped_swiglu_forward_triton(x, w_gate, w_up, w_down, weights, offsets, permutation):
    n_tokens, top_k = weights.shape
    n_slots, n_ff, hidden = permutation.numel(), w_gate.shape[1], x.shape[1]
    tokens = permutation // top_k
    tile_offsets = _tile_offsets(offsets)
    gate = x.new_zeros(n_slots, n_ff)
    up = x.new_zeros(n_slots, n_ff)
    h = x.new_empty(n_slots, n_ff)
    acc = _acc_dtype(x.dtype)
    slots = torch.zeros(n_slots, hidden, dtype=acc, device=x.device)
    if n_slots:
        # h = silu(x[tokens] @ Wg[e]^T) * (x[tokens] @ Wu[e]^T), in permuted order
        _rows_gemm(x, w_gate, h, offsets, tile_offsets, n_ff, hidden, w_gate.stride(2), w_gate.stride(1),
                   a_index=tokens, b2=w_up, gate=gate, up=up)
        # slots[permutation] = weight * h @ Wd[e]^T
        _rows_gemm(h, w_down, slots, offsets, tile_offsets, hidden, n_ff, w_down.stride(2), w_down.stride(1),
                   c_index=permutation, scale=weights.reshape(-1), scale_index=permutation)
    return _sum_slots(slots, n_tokens, top_k, x.dtype), gate, up


def grouped_swiglu_backward_triton(grad_out, x, w_gate, w_up, w_down, weights, offsets, permutation, gate, up):
    n_tokens, top_k = weights.shape
    n_slots, n_ff, hidden = permutation.numel(), w_gate.shape[1], x.shape[1]
    acc = _acc_dtype(x.dtype)
    grad_out = grad_out.contiguous()
    tokens = permutation // top_k
    tile_offsets = _tile_offsets(offsets)
    flat_weights = weights.reshape(-1)
    dhu = torch.zeros(n_slots, n_ff, dtype=acc, device=x.device)  # unwritten (dropped) rows stay 0
    grad_wg, grad_wu, grad_wd = torch.empty_like(w_gate), torch.empty_like(w_up), torch.empty_like(w_down)
    dx_slots = torch.zeros(n_slots, hidden, dtype=acc, device=x.device)
    grad_weights = torch.zeros(n_slots, dtype=weights.dtype, device=x.device)
    if n_slots:
        # grad_out[tokens] @ Wd[e]: the gradient of h before the routing weight
        _rows_gemm(grad_out, w_down, dhu, offsets, tile_offsets, n_ff, hidden, w_down.stride(1), w_down.stride(2),
                   a_index=tokens)
        w = flat_weights[permutation]
        h, d_weight, dg, du = _swiglu_grads(dhu, gate, up, w)
        grad_weights.scatter_(0, permutation, d_weight.to(weights.dtype))
        h, dg, du = h.to(x.dtype), dg.to(x.dtype), du.to(x.dtype)
        # dx (slot order) = dg @ Wg[e] + du @ Wu[e]
        _rows_gemm(dg, w_gate, dx_slots, offsets, tile_offsets, hidden, n_ff, w_gate.stride(1), w_gate.stride(2),
                   c_index=permutation, a2=du, b2=w_up)
        # dWd[e] = sum_s (w * grad_out[t])^T h ; dWg[e] = dg^T x[t] ; dWu[e] = du^T x[t]
        _weight_gemm(grad_out, h, grad_wd, offsets, a_index=tokens, scale=flat_weights, scale_index=permutation)
        _weight_gemm(dg, x, grad_wg, offsets, b_index=tokens)
        _weight_gemm(du, x, grad_wu, offsets, b_index=tokens)
    else:
        for t in (grad_wg, grad_wu, grad_wd):
            t.zero_()
    return (_sum_slots(dx_slots, n_tokens, top_k, x.dtype), grad_wg, grad_wu, grad_wd, grad_weights.view(weights.shape))


# --- dispatch ------------------------------------------------------------------------------------


def _triton_for(x: Tensor) -> bool:
    return x.dtype in TRITON_DTYPES and use_triton(x)


def grouped_swiglu_forward(x, w_gate, w_up, w_down, weights, offsets, permutation):
    if _triton_for(x):
        return grouped_swiglu_forward_triton(x, w_gate, w_up, w_down, weights, offsets, permutation)
    return grouped_swiglu_forward_reference(x, w_gate, w_up, w_down, weights, offsets, permutation)


def grouped_swiglu_backward(grad_out, x, w_gate, w_up, w_down, weights, offsets, permutation, gate, up):
    if _triton_for(x):
        return grouped_swiglu_backward_triton(grad_out, x, w_gate, w_up, w_down, weights, offsets, permutation, gate, up)
    return grouped_swiglu_backward_reference(grad_out, x, w_gate, w_up, w_down, weights, offsets, permutation, gate, up)


# --- custom ops ----------------------------------------------------------------------------------


@torch.library.custom_op("lightning_eff::moe_grouped_swiglu", mutates_args=())
def _grouped_op(
    x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, weights: Tensor, offsets: Tensor, permutation: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    return grouped_swiglu_forward(x, w_gate, w_up, w_down, weights, offsets, permutation)


@_grouped_op.register_fake
def _(x, w_gate, w_up, w_down, weights, offsets, permutation):
    saved = x.new_empty(permutation.shape[0], w_gate.shape[1])
    return torch.empty_like(x, memory_format=torch.contiguous_format), saved, torch.empty_like(saved)


@torch.library.custom_op("lightning_eff::moe_grouped_swiglu_backward", mutates_args=())
def _grouped_backward_op(
    grad_out: Tensor, x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, weights: Tensor, offsets: Tensor,
    permutation: Tensor, gate: Tensor, up: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return grouped_swiglu_backward(grad_out, x, w_gate, w_up, w_down, weights, offsets, permutation, gate, up)


@_grouped_backward_op.register_fake
def _(grad_out, x, w_gate, w_up, w_down, weights, offsets, permutation, gate, up):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w_gate), torch.empty_like(w_up),
            torch.empty_like(w_down), torch.empty_like(weights))


def _setup_context(ctx, inputs, output):
    x, w_gate, w_up, w_down, weights, offsets, permutation = inputs
    ctx.save_for_backward(x, w_gate, w_up, w_down, weights, offsets, permutation, output[1], output[2])
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_out, _grad_gate, _grad_up):
    x, w_gate, w_up, w_down, weights, offsets, permutation, gate, up = ctx.saved_tensors
    grads = _grouped_backward_op(grad_out, x, w_gate, w_up, w_down, weights, offsets, permutation, gate, up)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:5])), None, None)


_grouped_op.register_autograd(_backward, setup_context=_setup_context)


# --- public API ----------------------------------------------------------------------------------


def moe_grouped_swiglu(
    x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, weights: Tensor, offsets: Tensor, permutation: Tensor
) -> Tensor:
    """Top-k SwiGLU experts over routed tokens (see the module docstring): ``[T, H]`` in ``x``'s dtype."""
    plugin = plugin_implementation("moe_grouped_swiglu", x, w_gate, w_up, w_down, weights, offsets, permutation)
    if plugin is not None:
        return plugin(x, w_gate, w_up, w_down, weights, offsets, permutation)
    if x.dim() != 2 or w_gate.dim() != 3 or w_up.shape != w_gate.shape:
        raise ValueError(f"x must be [T, H] and w_gate, w_up [E, F, H]; got x {tuple(x.shape)}, w_gate "
                         f"{tuple(w_gate.shape)}, w_up {tuple(w_up.shape)}")
    n_experts, n_ff, hidden = w_gate.shape
    if x.shape[1] != hidden or w_down.shape != (n_experts, hidden, n_ff):
        raise ValueError(f"x {tuple(x.shape)}, w_gate {tuple(w_gate.shape)} and w_down {tuple(w_down.shape)} do not fit: "
                         f"expected x [T, {hidden}] and w_down [{n_experts}, {hidden}, {n_ff}]")
    if weights.dim() != 2 or weights.shape[0] != x.shape[0] or permutation.shape != (weights.numel(),) \
            or offsets.shape != (n_experts + 1,):
        raise ValueError(f"routing does not fit: weights {tuple(weights.shape)} must be [T={x.shape[0]}, k], "
                         f"permutation {tuple(permutation.shape)} [T*k], offsets {tuple(offsets.shape)} [E+1={n_experts + 1}]")
    if torch.is_autocast_enabled(x.device.type):
        # Custom ops are opaque to autocast: cast as it would for the Linear layers this op replaces.
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w_gate, w_up, w_down = x.to(dtype), w_gate.to(dtype), w_up.to(dtype), w_down.to(dtype)
    if not x.dtype == w_gate.dtype == w_up.dtype == w_down.dtype:
        raise TypeError(f"x ({x.dtype}) and the expert weights ({w_gate.dtype}, {w_up.dtype}, {w_down.dtype}) must share "
                        "a dtype: cast them to one, or call the op under torch.autocast")
    weights = weights.to(_acc_dtype(x.dtype))
    out, _, _ = _grouped_op(x.contiguous(), w_gate.contiguous(), w_up.contiguous(), w_down.contiguous(), weights,
                            offsets.long(), permutation.long())
    return out
