"""Which samples of a batch to train on: pure functions, no Trainer.

Every function returns the positions of the kept samples in ascending order (the batch keeps its
original order, so anything positional in it, like a sequence of documents, stays aligned).
"""

from __future__ import annotations

import torch
from torch import Tensor


def kept_count(n: int, keep: float) -> int:
    """``int(keep * n)`` as in Composer's ``select_using_loss``, but never an empty batch."""
    return max(1, min(n, int(keep * n)))


def loss_rank_probabilities(n: int, keep: float) -> Tensor:
    """Selection probability of the i-th smallest of ``n`` losses (Selective Backprop, Jiang et al. 2019).

    ``P_i ~ q_i ** (1/keep - 1)`` with ``q_i = (i + 0.5) / n`` the loss-rank percentile: the larger
    the loss, the likelier the sample; at ``keep = 1`` every sample is equally likely.
    """
    percentiles = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    weights = percentiles ** (1.0 / keep - 1.0)
    return weights / weights.sum()


def select_by_loss(losses: Tensor, keep: float, generator: torch.Generator) -> Tensor:
    """Draw ``kept_count(N, keep)`` samples without replacement with probability rising with loss rank."""
    n = losses.shape[0]
    by_rank = torch.argsort(losses.detach().float().cpu(), stable=True)
    draws = torch.multinomial(
        loss_rank_probabilities(n, keep), kept_count(n, keep), replacement=False, generator=generator
    )
    return by_rank[draws].sort().values


def random_subset(n: int, keep: float, generator: torch.Generator) -> Tensor:
    """A uniformly random ``kept_count(n, keep)`` of ``n`` samples (RS2's fresh random subset)."""
    return torch.randperm(n, generator=generator)[: kept_count(n, keep)].sort().values


def at_least_threshold(losses: Tensor, threshold: float, min_keep: int) -> Tensor:
    """Samples whose loss is ``>= threshold``; the ``min_keep`` largest losses when fewer pass.

    Below-threshold samples are already learned: their backward pass would barely move the weights.
    """
    losses = losses.detach().float().cpu()
    keep = torch.nonzero(losses >= threshold).flatten()
    if keep.numel() >= min_keep:
        return keep
    return torch.topk(losses, min(min_keep, losses.numel())).indices.sort().values


def top_fraction(scores: Tensor, keep: float) -> Tensor:
    """The ``kept_count(N, keep)`` samples of largest score, in batch order (ties: the earlier sample)."""
    scores = scores.detach().float().cpu()
    order = torch.argsort(-scores, stable=True)
    return order[: kept_count(scores.numel(), keep)].sort().values


def reducible_loss(losses: Tensor, reference_losses: Tensor) -> Tensor:
    """RHO-LOSS's score: ``training loss - irreducible (reference) loss``, on the CPU in float32."""
    return losses.detach().float().cpu() - reference_losses.detach().float().cpu()


def top_reducible(losses: Tensor, reference_losses: Tensor, keep: float) -> Tensor:
    """RHO-LOSS (Mindermann et al. 2022): the ``kept_count(N, keep)`` samples of largest reducible loss
    ``training loss - irreducible (reference) loss``: learnable, worth learning, not yet learned."""
    return top_fraction(reducible_loss(losses, reference_losses), keep)
