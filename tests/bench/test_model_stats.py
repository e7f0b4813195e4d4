"""Parameter counts see pruned zeros in the effective weight and frozen parameters."""

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from lightning_eff.bench.model_stats import count_parameters


def test_dense_model_has_no_sparsity_and_nothing_frozen():
    counts = count_parameters(nn.Linear(4, 3))
    assert (counts.total, counts.trainable, counts.nonzero) == (15, 15, 15)
    assert counts.sparsity == 0.0 and counts.frozen_fraction == 0.0


def test_torch_prune_zeros_are_counted_in_the_masked_weight():
    layer = nn.Linear(10, 10, bias=False)
    prune.l1_unstructured(layer, "weight", amount=0.3)
    counts = count_parameters(layer)
    assert counts.total == 100  # weight_orig, not weight_orig + the mask
    assert counts.nonzero == 70
    assert abs(counts.sparsity - 0.3) < 1e-9


class Halve(nn.Module):
    def forward(self, w):
        mask = torch.ones_like(w)
        mask[: w.shape[0] // 2] = 0
        return w * mask


def test_parametrized_weights_are_counted_once_through_their_owner():
    layer = nn.Linear(4, 4, bias=False)
    parametrize.register_parametrization(layer, "weight", Halve())
    counts = count_parameters(layer)
    assert counts.total == 16 and counts.nonzero == 8


def test_frozen_fraction_counts_parameters_without_grad():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[0].requires_grad_(False)
    assert count_parameters(model).frozen_fraction == 0.5


def test_tied_weights_count_once():
    a = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(a, a)
    assert count_parameters(model).total == 16
