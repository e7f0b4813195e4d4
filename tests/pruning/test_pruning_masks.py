"""The shared mask math and module selection, without a Trainer."""

import torch
from torch import nn

from lightning_eff.plugins.pruning.masks import (
    count_for,
    global_masks,
    layerwise_masks,
    magnitude_scores,
    prune_smallest,
)
from lightning_eff.plugins.pruning.targets import select_modules, selection_problems


def test_prune_smallest_prunes_exactly_k_and_breaks_ties_by_position():
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 5.0, 0.5])
    keep = prune_smallest(scores, 3)
    # 0.5 and the first two of the three tied 1.0s go; the last 1.0 survives
    assert keep.tolist() == [True, False, False, True, True, False]
    assert (~prune_smallest(torch.zeros(10), 7)).sum() == 7


def test_prune_smallest_extremes():
    scores = torch.randn(4, 5)
    assert prune_smallest(scores, 0).all()
    assert not prune_smallest(scores, 20).any()


def test_count_for_rounds_halves_up():
    assert count_for(0.5, 5) == 3
    assert count_for(0.8, 10) == 8
    assert count_for(0.0, 10) == 0


def test_already_pruned_weights_stay_pruned_even_when_others_are_smaller():
    w = torch.tensor([[0.0, 0.01, 2.0, 3.0]])
    old = torch.tensor([[True, True, False, True]])  # 2.0 was pruned earlier (its value is stale)
    w[0, 2] = 2.0
    keep = layerwise_masks({"a": magnitude_scores(w, old)}, 0.5)["a"]
    assert keep.tolist() == [[False, True, False, True]]


def test_layerwise_prunes_each_layer_to_the_target_and_global_does_not():
    g = torch.Generator().manual_seed(0)
    scores = {"small": torch.rand(100, generator=g) * 0.1, "large": 0.2 + torch.rand(100, generator=g)}
    per_layer = layerwise_masks(scores, 0.5)
    assert [int((~m).sum()) for m in per_layer.values()] == [50, 50]
    together = global_masks(scores, 0.5)
    assert int((~together["small"]).sum()) + int((~together["large"]).sum()) == 100
    assert int((~together["small"]).sum()) == 100  # one threshold: the small-weight layer goes first


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 8, 3)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10)
        self.head.weight = self.embed.weight  # tied: pruned once at most


def test_selection_by_type_and_pattern():
    net = Net()
    names = list(select_modules(net).modules)
    assert names == ["conv", "blocks.0", "blocks.1"]  # no embedding, norm, nor the head tied to the embedding
    assert list(select_modules(net, include=("blocks.*",), exclude=("*.1",)).modules) == ["blocks.0"]
    assert list(select_modules(net, types=("Embedding",)).modules) == ["embed"]


def test_patterns_matching_nothing_are_reported_by_name():
    selection = select_modules(Net(), include=("block.*", "conv"), exclude=("nothing",))
    problems = selection_problems(selection, ("Linear",))
    assert any("include_names pattern 'block.*' matches no Linear module" in p for p in problems)
    assert any("exclude_names pattern 'nothing'" in p for p in problems)
    assert not any("'conv' matches" in p for p in problems)
