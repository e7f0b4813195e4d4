"""InfoBatch's epoch plan (Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic Data
Pruning", ICLR 2024), and the sharding of a plan over DDP ranks: pure functions, no Trainer."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def prune_plan(
    scores: Tensor, seen: Tensor, prune_ratio: float, generator: torch.Generator, shuffle: bool = True
) -> tuple[Tensor, Tensor]:
    """One epoch of InfoBatch: ``(order, weights)``.

    Samples seen before whose last loss is below the mean of the seen samples' losses are "well
    learned"; a random ``prune_ratio`` of them sit this epoch out, and the kept ones are weighted
    ``1 / (1 - prune_ratio)`` so that the expected gradient is unchanged (the paper's rescaling).
    Samples never scored are always kept. ``order`` lists the kept dataset indices (shuffled when
    ``shuffle``); ``weights`` has one entry per dataset sample.
    """
    n = scores.numel()
    weights = torch.ones(n)
    if seen.any():
        well_learned = torch.nonzero(seen & (scores < scores[seen].mean())).flatten()
    else:
        well_learned = torch.zeros(0, dtype=torch.long)
    keep_easy = int((1.0 - prune_ratio) * well_learned.numel())  # int(): as the reference implementation
    kept_easy = well_learned[torch.randperm(well_learned.numel(), generator=generator)[:keep_easy]]
    weights[kept_easy] = 1.0 / (1.0 - prune_ratio)
    pruned = torch.zeros(n, dtype=torch.bool)
    pruned[well_learned] = True
    pruned[kept_easy] = False
    order = torch.nonzero(~pruned).flatten()
    if shuffle:
        order = order[torch.randperm(order.numel(), generator=generator)]
    return order, weights


def full_plan(n: int, generator: torch.Generator, shuffle: bool = True) -> tuple[Tensor, Tensor]:
    """Every sample, unweighted (the first epoch and InfoBatch's annealing epochs at the end)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return order, torch.ones(n)


def shard(order: list[int], rank: int, world: int, drop_last: bool) -> list[int]:
    """This rank's part of ``order``, as ``torch.utils.data.DistributedSampler`` splits it: every
    rank gets the same count (padding by repetition, or dropping the tail), interleaved."""
    if world == 1:
        return list(order)
    if drop_last:
        order = order[: (len(order) // world) * world]
    else:
        total = math.ceil(len(order) / world) * world
        order = (order * math.ceil(total / max(1, len(order))))[:total] if order else []
    return order[rank::world]
