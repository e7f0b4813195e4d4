"""The MoE layer: an fp32 router in front of a list of experts (each a copy or shard of a dense MLP).

Top-k expert compute runs on the shared MoE kernels: the routing op (``moe_topk_routing``) gives the
slots grouped by expert, then SwiGLU experts (Llama/Mistral/Qwen2 MLPs with ``silu``, no biases) go
through the grouped expert op ``moe_grouped_swiglu`` (Triton on a GPU, per-expert matmuls over
contiguous row blocks on CPU) with the experts' weights stacked per call; any other expert module
is called once on its contiguous block of the grouped rows (:func:`grouped_topk_experts`).
:func:`loop_topk_experts` (a loop over experts with a mask per expert) is the reference. Every
expert takes part in autograd each step, even with no token (an empty block, or zero gradients of the
stacked weights), so DDP needs no ``find_unused_parameters``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_eff.kernels import moe_grouped_swiglu

from .routing import (
    Routing,
    apply_capacity,
    capacity_for,
    expert_choice_route,
    router_entropy,
    routing_metadata,
    topk_route,
)

RoutingMode = Literal["topk", "expert_choice"]


class RouterRecord(NamedTuple):
    """What the last training forward routed: inputs of the auxiliary losses and of the metrics."""

    logits: Tensor  # [T, E] fp32, with grad
    probs: Tensor  # [T, E] fp32, with grad
    experts: Tensor | None  # [T, k] chosen experts (top-k routing), before capacity drops
    counts: Tensor  # [E] slots processed per expert (detached)
    dropped: Tensor  # fraction of slots (top-k) or tokens (expert choice) that no expert processed
    entropy: Tensor | None = None  # mean routing entropy (detached)


def _accumulate(out: Tensor | None, tokens: int, index: Tensor, y: Tensor) -> Tensor:
    # Allocated from the first expert's output: a plain MLP block may map in_features -> out_features.
    if out is None:
        out = y.new_zeros(tokens, y.shape[-1])
    return out.index_add(0, index, y)


def loop_topk_experts(x: Tensor, experts: nn.ModuleList, routing: Routing) -> Tensor:
    """Reference expert compute: ``out[t] = sum_j weights[t, j] * experts[idx[t, j]](x[t])`` over kept slots."""
    out = None
    for e, expert in enumerate(experts):
        token, slot = torch.where((routing.experts == e) & routing.keep)
        y = expert(x.index_select(0, token))
        out = _accumulate(out, x.shape[0], token, y * routing.weights[token, slot].unsqueeze(-1).to(y.dtype))
    return out


def is_swiglu_expert(expert: nn.Module) -> bool:
    """A bias-free ``down(silu(gate(x)) * up(x))`` module: a transformers ``*MLP`` (Llama, Mistral,
    Qwen2...) with ``silu`` and no biases. Other modules with the same attribute names may compute
    something else, so they take the generic grouped path."""
    linears = [getattr(expert, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    act = getattr(expert, "act_fn", None)
    return (
        all(isinstance(lin, nn.Linear) and lin.bias is None for lin in linears)
        and (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation")
        # whose forward is known to be the SwiGLU formula: transformers' *MLP classes
        and type(expert).__module__.startswith("transformers.models.")
        and type(expert).__name__.endswith("MLP")
    )


def stacked_swiglu_weights(experts: nn.ModuleList) -> tuple[Tensor, Tensor, Tensor]:
    """``(w_gate [E, F, H], w_up [E, F, H], w_down [E, H, F])``: differentiable stacks of the experts' weights."""
    return (
        torch.stack([e.gate_proj.weight for e in experts]),
        torch.stack([e.up_proj.weight for e in experts]),
        torch.stack([e.down_proj.weight for e in experts]),
    )


def grouped_topk_experts(x: Tensor, experts: nn.ModuleList, routing: Routing) -> Tensor:
    """Any expert modules over the expert-grouped slots: one gather, one call per expert on its
    contiguous block of rows, one scatter back to slot order and a sum over each token's k slots."""
    meta = routing.metadata
    if meta is None:
        meta = routing_metadata(routing.experts, routing.keep, len(experts))
    tokens, top_k = routing.experts.shape
    bounds = meta.offsets.tolist()  # one host read per layer (the loop reference does one per expert)
    kept = meta.permutation[: bounds[-1]]
    xs = x.index_select(0, meta.tokens[: bounds[-1]])
    ys = [expert(xs[a:b]) for expert, a, b in zip(experts, bounds[:-1], bounds[1:])]
    y = torch.cat(ys) if ys else xs
    acc = torch.promote_types(y.dtype, torch.float32)
    slots = y.new_zeros(tokens * top_k, y.shape[-1], dtype=acc)
    slots = slots.index_copy(0, kept, y.to(acc) * routing.weights.reshape(-1)[kept].to(acc).unsqueeze(-1))
    return slots.view(tokens, top_k, -1).sum(1).to(y.dtype)


def routed_topk_experts(x: Tensor, experts: nn.ModuleList, routing: Routing) -> Tensor:
    """The production path: the grouped SwiGLU op when every expert is a SwiGLU MLP of one shape,
    :func:`grouped_topk_experts` otherwise."""
    if not (all(is_swiglu_expert(e) for e in experts) and _same_shapes(experts)):
        return grouped_topk_experts(x, experts, routing)
    meta = routing.metadata
    if meta is None:
        meta = routing_metadata(routing.experts, routing.keep, len(experts))
    w_gate, w_up, w_down = stacked_swiglu_weights(experts)
    return moe_grouped_swiglu(x, w_gate, w_up, w_down, routing.weights, meta.offsets, meta.permutation)


def _same_shapes(experts: nn.ModuleList) -> bool:
    first = experts[0]
    names = ("gate_proj", "up_proj", "down_proj")
    return all(getattr(e, n).weight.shape == getattr(first, n).weight.shape for e in experts for n in names)


def loop_expert_choice(x: Tensor, experts: nn.ModuleList, tokens: Tensor, weights: Tensor) -> Tensor:
    """Reference expert-choice compute: expert ``e`` processes ``x[tokens[e]]``, scaled by ``weights[e]``."""
    out = None
    for e, expert in enumerate(experts):
        y = expert(x.index_select(0, tokens[e]))
        out = _accumulate(out, x.shape[0], tokens[e], y * weights[e].unsqueeze(-1).to(y.dtype))
    return out


class MoERouter(nn.Linear):
    """``Linear(hidden, E, bias=False)`` whose logits are computed in fp32 even under autocast
    (Switch Transformer's "selective precision": bf16 logits flip top-k choices). Its own class so
    that the mixed-precision fp32 policy's ``*Router`` type glob finds it."""

    def __init__(self, hidden: int, num_experts: int) -> None:
        super().__init__(hidden, num_experts, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # Under autocast F.linear casts fp32 operands back to the autocast dtype: switch it off.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float())


class MoELayer(nn.Module):
    """Router ``Linear(hidden, E, bias=False)`` computed in fp32, ``experts``, optional ``shared_expert``.

    With a shared expert the output is ``(shared(x) + routed(x)) / 2``: both start as copies of the
    dense MLP, so the average keeps upcycling function-preserving.
    """

    def __init__(
        self,
        experts: list[nn.Module],
        hidden: int,
        top_k: int = 2,
        routing: RoutingMode = "topk",
        capacity_factor: float | None = None,
        shared_expert: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"MoELayer: top_k={top_k} must be in [1, {len(experts)}] (the number of experts)")
        self.hidden, self.top_k, self.routing, self.capacity_factor = hidden, top_k, routing, capacity_factor
        self.router = MoERouter(hidden, len(experts))
        self.experts = nn.ModuleList(experts)
        self.shared_expert = shared_expert
        self.last: RouterRecord | None = None

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def router_logits(self, x: Tensor) -> Tensor:
        return self.router(x)

    def forward(self, hidden_states: Tensor) -> Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        logits = self.router_logits(x)
        if self.routing == "expert_choice":
            capacity = capacity_for(x.shape[0], self.top_k, self.num_experts, self.capacity_factor or 1.0)
            tokens, weights, probs = expert_choice_route(logits, capacity)
            out = loop_expert_choice(x, self.experts, tokens, weights)
            counts = torch.full((self.num_experts,), tokens.shape[1], dtype=torch.long, device=x.device)
            taken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            taken[tokens.reshape(-1)] = True
            record = RouterRecord(logits, probs, None, counts, 1.0 - taken.float().mean())
        else:
            routing = topk_route(logits, self.top_k)
            if self.capacity_factor is not None:
                capacity = capacity_for(x.shape[0], self.top_k, self.num_experts, self.capacity_factor)
                routing = apply_capacity(routing, self.num_experts, capacity)
            out = routed_topk_experts(x, self.experts, routing)
            counts = routing.metadata.counts
            record = RouterRecord(logits, routing.probs, routing.experts, counts, 1.0 - routing.keep.float().mean())
        if self.shared_expert is not None:
            out = 0.5 * (out + self.shared_expert(x))
        if self.training and torch.is_grad_enabled():
            self.last = record._replace(
                counts=record.counts.detach(), dropped=record.dropped.detach(), entropy=router_entropy(record.probs.detach())
            )
        return out.view(*shape[:-1], out.shape[-1])

    def extra_repr(self) -> str:
        cf = "dropless" if self.capacity_factor is None else f"capacity_factor={self.capacity_factor}"
        return f"hidden={self.hidden}, experts={self.num_experts}, top_k={self.top_k}, routing={self.routing}, {cf}"
