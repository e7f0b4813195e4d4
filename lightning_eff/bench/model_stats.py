"""Parameter counts of a trained model as the techniques left it: total, trainable, nonzero.

Pruning often keeps the dense weight and a mask (``torch.nn.utils.prune``: ``weight_orig`` +
``weight_mask``; ``torch.nn.utils.parametrize``: ``parametrizations.weight.original``). Zeros are
counted in the *effective* weight the forward pass uses, not in the stored original.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    trainable: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.total if self.total else 0.0

    @property
    def frozen_fraction(self) -> float:
        return 1.0 - self.trainable / self.total if self.total else 0.0


def _effective_tensors(module: nn.Module):
    """(stored parameter, effective tensor) pairs of one module's own parameters."""
    if parametrize.is_parametrized(module):
        for name, plist in module.parametrizations.items():
            yield plist.original, getattr(module, name)
    for name, param in module.named_parameters(recurse=False):
        if name.endswith("_orig") and hasattr(module, name[: -len("_orig")]):
            yield param, getattr(module, name[: -len("_orig")])
        else:
            yield param, param


def count_parameters(model: nn.Module) -> ParameterCounts:
    total = trainable = nonzero = 0
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, parametrize.ParametrizationList):
                continue  # counted through the module that owns the parametrization
            for stored, effective in _effective_tensors(module):
                if id(stored) in seen:
                    continue  # tied weights count once
                seen.add(id(stored))
                total += stored.numel()
                trainable += stored.numel() if stored.requires_grad else 0
                nonzero += int(torch.count_nonzero(effective))
    return ParameterCounts(total, trainable, nonzero)
