"""Mask math shared by the pruning techniques: pure functions of tensors, no Trainer.

Masks are ``torch.bool`` tensors of the weight's shape, ``True`` where the weight is kept.
Every selection here is deterministic (ties broken by position), so ranks that hold identical
weights compute identical masks and a resumed run recomputes the masks an uninterrupted run had.
"""

from __future__ import annotations

import torch
from torch import Tensor


def count_for(fraction: float, total: int) -> int:
    """``round(fraction * total)`` with halves rounded up (Python's ``round`` rounds halves to even)."""
    return min(total, max(0, int(fraction * total + 0.5)))


def prune_smallest(scores: Tensor, k: int) -> Tensor:
    """Keep-mask with exactly ``k`` entries pruned: the ``k`` smallest scores, ties pruned in index order.

    Uses ``kthvalue`` (linear memory) rather than a full sort, so a global threshold over a large
    model does not need an index tensor of every weight.
    """
    flat = scores.reshape(-1)
    if k <= 0:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k >= flat.numel():
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    threshold = flat.kthvalue(k).values
    below = flat < threshold
    ties = flat == threshold
    need = k - int(below.sum())
    pruned = below | (ties & (ties.cumsum(0) <= need))
    return (~pruned).view(scores.shape)


def magnitude_scores(weight: Tensor, mask: Tensor | None = None) -> Tensor:
    """|w| in fp32; positions already pruned score -1 so that pruned weights stay pruned [Zhu & Gupta]."""
    scores = weight.detach().abs().float()
    if mask is not None:
        scores = scores.masked_fill(~mask, -1.0)
    return scores


def layerwise_masks(scores: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Each layer pruned to ``sparsity`` by its own magnitude threshold."""
    return {name: prune_smallest(s, count_for(sparsity, s.numel())) for name, s in scores.items()}


def global_masks(scores: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """One threshold over all layers together: layers with small weights lose more of them."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    keep = prune_smallest(flat, count_for(sparsity, flat.numel()))
    out, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[offset : offset + size].view(scores[n].shape)
        offset += size
    return out


def sparsity_of(mask: Tensor) -> float:
    """Fraction of pruned entries."""
    return 1.0 - mask.sum().item() / max(1, mask.numel())


def changed(old: Tensor, new: Tensor) -> int:
    """Number of positions whose keep/prune decision differs."""
    return int((old != new).sum())
