"""The MoE layer: an fp32 router in front of a list of experts (each a copy or shard of a dense MLP).

Expert compute is a loop over experts: the reference, and the fallback of the grouped kernels.
Every expert runs even when it received no token (on an empty batch), so every parameter takes part
in autograd each step and DDP needs no ``find_unused_parameters``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .routing import (
    Routing,
    apply_capacity,
    capacity_for,
    expert_choice_route,
    expert_counts,
    router_entropy,
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


def loop_expert_choice(x: Tensor, experts: nn.ModuleList, tokens: Tensor, weights: Tensor) -> Tensor:
    """Reference expert-choice compute: expert ``e`` processes ``x[tokens[e]]``, scaled by ``weights[e]``."""
    out = None
    for e, expert in enumerate(experts):
        y = expert(x.index_select(0, tokens[e]))
        out = _accumulate(out, x.shape[0], tokens[e], y * weights[e].unsqueeze(-1).to(y.dtype))
    return out


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
        self.router = nn.Linear(hidden, len(experts), bias=False)
        self.experts = nn.ModuleList(experts)
        self.shared_expert = shared_expert
        self.last: RouterRecord | None = None

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def router_logits(self, x: Tensor) -> Tensor:
        # fp32 router (Switch Transformer's "selective precision"): bf16 logits make routing unstable.
        return F.linear(x.float(), self.router.weight.float())

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
            out = loop_topk_experts(x, self.experts, routing)
            counts = expert_counts(routing.experts, routing.keep, self.num_experts)
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
