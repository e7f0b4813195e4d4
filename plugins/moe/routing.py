"""Token routing for mixture-of-experts layers, as pure functions of the router logits.

- :func:`topk_route`: softmax over experts in fp32, then top-k, then renormalise the k weights to sum
  to 1 (Mixtral; "Upcycling Large Language Models into Mixture of Experts", He et al. 2024, found
  softmax-then-top-k better than top-k-then-softmax). With identical experts the output is the dense
  output exactly, which is what makes ``copy`` upcycling function-preserving. It runs the shared
  ``lightning_eff.kernels.moe_topk_routing`` op (Triton on a GPU), which also returns the routing
  metadata the grouped expert op needs; ties go to the lower expert index.
- :func:`expert_choice_route`: each expert picks its top-C tokens (Zhou et al. 2022, "Mixture-of-Experts
  with Expert Choice Routing"). It looks at the whole batch, so it leaks future tokens in a causal LM.
- :func:`capacity_keep_mask`: optional token dropping beyond ``capacity`` slots per expert (GShard /
  Switch); routing is dropless when it is not applied.
- :func:`load_balancing_loss` (Switch Transformer, Fedus et al. 2021) and :func:`router_z_loss` (ST-MoE,
  Zoph et al. 2022).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_eff.kernels import moe_routing_metadata, moe_topk_routing


class Routing(NamedTuple):
    """Which experts each token goes to, with which weights, as ``[T, k]`` slots.

    ``experts[t, j]`` is the expert of token ``t``'s ``j``-th slot and ``weights[t, j]`` its weight; a
    dropped slot has weight 0 and ``keep[t, j] = False`` (its expert index stays valid).
    """

    experts: Tensor  # [T, k] int64
    weights: Tensor  # [T, k] fp32
    keep: Tensor  # [T, k] bool
    probs: Tensor  # [T, E] fp32 softmax of the router logits
    metadata: RoutingMetadata | None = None  # kept slots grouped by expert (None: not computed)


def router_probs(logits: Tensor) -> Tensor:
    """Softmax over experts in fp32: bf16 softmax makes near-ties flip and the top-k unstable."""
    return torch.softmax(logits.float(), dim=-1)


def topk_route(logits: Tensor, top_k: int, renormalize: bool = True) -> Routing:
    """Softmax, then top-k experts per token; weights renormalised to sum to 1 over the k slots.

    The k largest logits are chosen (the k most probable experts), ties to the lower expert index,
    in decreasing order; the routing metadata comes with them, computed without a host sync.
    """
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k={top_k} must be in [1, num_experts={logits.shape[-1]}]")
    probs = router_probs(logits)
    routed = moe_topk_routing(logits.float(), top_k, renormalize)
    keep = torch.ones_like(routed.experts, dtype=torch.bool)
    metadata = RoutingMetadata(routed.counts, routed.offsets, routed.permutation, routed.tokens)
    return Routing(routed.experts, routed.weights, keep, probs, metadata)


def capacity_for(tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ``ceil(capacity_factor * tokens * top_k / num_experts)``, at least 1."""
    return max(1, math.ceil(capacity_factor * tokens * top_k / num_experts))


def capacity_keep_mask(experts: Tensor, num_experts: int, capacity: int) -> Tensor:
    """Keep at most ``capacity`` slots per expert, ``[T, k]`` bool.

    Priority as in GShard: every token's first choice before any second choice, then token order.
    No host synchronisation: positions come from a cumulative sum of one-hot assignments.
    """
    tokens, top_k = experts.shape
    # slot order: all j=0 slots (tokens in order), then all j=1 slots, ...
    flat = experts.t().reshape(-1)
    one_hot = torch.nn.functional.one_hot(flat, num_experts)
    position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1  # rank of each slot within its expert
    keep = position < capacity
    return keep.view(top_k, tokens).t()


def apply_capacity(routing: Routing, num_experts: int, capacity: int) -> Routing:
    """Drop the slots beyond ``capacity`` per expert (their weight becomes 0; no renormalisation after)."""
    keep = routing.keep & capacity_keep_mask(routing.experts, num_experts, capacity)
    return routing._replace(keep=keep, weights=routing.weights * keep, metadata=routing_metadata(routing.experts, keep, num_experts))


def expert_choice_route(logits: Tensor, capacity: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each expert takes its ``capacity`` highest-scoring tokens.

    Returns ``(tokens [E, C], weights [E, C], probs [T, E])``: expert ``e`` processes tokens
    ``tokens[e]`` and scales its outputs by ``weights[e]`` (the token's softmax probability for ``e``).
    A token may be taken by several experts or by none.
    """
    probs = router_probs(logits)
    capacity = min(capacity, probs.shape[0])
    weights, tokens = torch.topk(probs.t(), capacity, dim=-1)
    return tokens, weights, probs


def expert_counts(experts: Tensor, keep: Tensor, num_experts: int) -> Tensor:
    """Slots each expert processes (kept slots only), int64 ``[E]``."""
    return torch.bincount(experts[keep], minlength=num_experts)


def load_balancing_loss(probs: Tensor, experts: Tensor, num_experts: int) -> Tensor:
    """Switch load balancing ``E * sum_i f_i * P_i`` (without its coefficient).

    ``f_i``: fraction of the ``T * k`` routing slots assigned to expert ``i`` (before any capacity drop,
    as in Switch); ``P_i``: mean router probability of ``i``. Equals 1 under perfectly uniform routing and
    grows as routing collapses; only ``P`` carries a gradient.
    """
    counts = torch.bincount(experts.reshape(-1), minlength=num_experts).to(probs.dtype)
    fraction = counts / experts.numel()
    return num_experts * (fraction * probs.mean(dim=0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE router z-loss ``mean(logsumexp(logits)^2)``: keeps router logits small (fp32 stability)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def router_entropy(probs: Tensor) -> Tensor:
    """Mean entropy (nats) of the per-token routing distributions."""
    return -(probs * torch.log(probs.clamp_min(1e-20))).sum(dim=-1).mean()


def load_cv(counts: Tensor) -> Tensor:
    """Coefficient of variation of the expert loads (std / mean, population std); 0 when balanced."""
    counts = counts.float()
    mean = counts.mean()
    return counts.std(unbiased=False) / mean.clamp_min(1e-12)


class RoutingMetadata(NamedTuple):
    """Slots grouped by expert: what a grouped expert GEMM needs (the routing-metadata op's contract)."""

    counts: Tensor  # [E] int64 kept slots per expert
    offsets: Tensor  # [E + 1] int64 start of each expert's group in ``permutation`` (exclusive cumsum)
    permutation: Tensor  # [T * k] int64 flat slot index (t * k + j), grouped by expert (stable), dropped slots last
    tokens: Tensor  # [T * k] int64 token of each permuted slot (``permutation // k``)


def routing_metadata(experts: Tensor, keep: Tensor | None, num_experts: int) -> RoutingMetadata:
    """Counts, offsets and the expert-grouped slot permutation, without a host synchronisation.

    Dropped slots are sorted after every expert's group and cut off with a device-side bound; token
    order is kept inside each expert, so results are exact and deterministic. Runs the shared
    ``lightning_eff.kernels.moe_routing_metadata`` op (its reference: bincount, cumsum, stable sort).
    """
    # Dropped slots sit at positions >= offsets[-1]; callers slice them off only where a host size is needed.
    return RoutingMetadata(*moe_routing_metadata(experts, num_experts, keep))
