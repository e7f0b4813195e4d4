import math

import pytest
import torch

from lightning_eff.plugins.moe.routing import (
    apply_capacity,
    capacity_for,
    capacity_keep_mask,
    expert_choice_route,
    expert_counts,
    load_balancing_loss,
    load_cv,
    router_entropy,
    router_z_loss,
    routing_metadata,
    topk_route,
)


def test_topk_route_takes_the_k_most_probable_experts_and_renormalises_their_weights():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0], [3.0, 0.0, 0.0, 2.0]])
    routing = topk_route(logits, top_k=2)
    assert routing.experts.tolist() == [[2, 1], [0, 3]]
    p = torch.softmax(logits, dim=-1)
    expected = torch.stack([p[0, [2, 1]] / p[0, [2, 1]].sum(), p[1, [0, 3]] / p[1, [0, 3]].sum()])
    torch.testing.assert_close(routing.weights, expected)
    torch.testing.assert_close(routing.weights.sum(dim=-1), torch.ones(2))
    assert routing.keep.all()


def test_topk_route_computes_in_fp32_from_bf16_logits():
    routing = topk_route(torch.randn(5, 4).bfloat16(), top_k=1)
    assert routing.probs.dtype == routing.weights.dtype == torch.float32


def test_topk_larger_than_experts_is_refused():
    with pytest.raises(ValueError, match="top_k=5"):
        topk_route(torch.randn(3, 4), top_k=5)


def test_capacity_is_the_factor_times_the_mean_load_rounded_up():
    assert capacity_for(tokens=10, top_k=2, num_experts=4, capacity_factor=1.0) == 5
    assert capacity_for(tokens=10, top_k=2, num_experts=4, capacity_factor=1.25) == math.ceil(6.25)


def test_capacity_keeps_first_choices_before_second_choices_then_token_order():
    experts = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
    keep = capacity_keep_mask(experts, num_experts=3, capacity=2)
    # expert 0: first choices of tokens 0, 1 (kept), 2 (dropped); token 3's second choice dropped
    # expert 1: token 3's first choice, then token 0's second (kept), token 2's second (dropped)
    assert keep.tolist() == [[True, True], [True, True], [False, False], [True, False]]


def test_apply_capacity_zeroes_the_weight_of_dropped_slots():
    routing = topk_route(torch.tensor([[5.0, 0.0], [5.0, 0.0], [5.0, 0.0]]), top_k=1)
    dropped = apply_capacity(routing, num_experts=2, capacity=2)
    assert dropped.keep[:, 0].tolist() == [True, True, False]
    assert dropped.weights[2, 0] == 0 and dropped.weights[0, 0] == 1
    assert expert_counts(dropped.experts, dropped.keep, 2).tolist() == [2, 0]


def test_expert_choice_gives_every_expert_its_highest_scoring_tokens():
    logits = torch.tensor([[4.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    tokens, weights, probs = expert_choice_route(logits, capacity=2)
    assert tokens.tolist() == [[0, 1], [3, 2]]
    torch.testing.assert_close(weights, probs.t().gather(1, tokens))


def test_load_balancing_loss_matches_a_hand_computed_case():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]])
    experts = torch.tensor([[0], [0], [2], [0]])
    # f = (3/4, 0, 1/4); P = (0.475, 0.25, 0.275); E * sum f P = 3 * (0.35625 + 0.06875)
    assert load_balancing_loss(probs, experts, 3).item() == pytest.approx(3 * (0.75 * 0.475 + 0.25 * 0.275))


def test_load_balancing_loss_is_one_when_routing_is_uniform():
    probs = torch.full((4, 4), 0.25)
    experts = torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]])
    assert load_balancing_loss(probs, experts, 4).item() == pytest.approx(1.0)


def test_router_z_loss_is_the_mean_squared_logsumexp():
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    expected = (math.log(2.0) ** 2 + math.log(math.e + math.e**2) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_load_cv_and_entropy_of_known_distributions():
    assert load_cv(torch.tensor([4, 4, 4, 4])).item() == 0
    assert load_cv(torch.tensor([8, 0, 0, 0])).item() == pytest.approx(math.sqrt(3))
    assert router_entropy(torch.full((3, 4), 0.25)).item() == pytest.approx(math.log(4))
    assert router_entropy(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.0)


def test_routing_metadata_groups_slots_by_expert_in_token_order():
    experts = torch.tensor([[2, 0], [0, 2], [2, 3], [0, 2]])
    keep = torch.tensor([[True, True], [True, True], [True, False], [True, True]])
    meta = routing_metadata(experts, keep, num_experts=5)
    assert meta.counts.tolist() == [3, 0, 4, 0, 0]  # expert 1 empty, expert 3's only slot dropped
    assert meta.offsets.tolist() == [0, 3, 3, 7, 7, 7]
    kept = meta.permutation[: meta.offsets[-1]]
    assert kept.tolist() == [1, 2, 6, 0, 3, 4, 7]
    assert meta.tokens[:7].tolist() == [0, 1, 3, 0, 1, 2, 3]
    assert meta.permutation[7:].tolist() == [5]  # the dropped slot, last


def test_routing_metadata_matches_a_loop_over_experts_on_random_routes():
    g = torch.Generator().manual_seed(0)
    experts = torch.randint(0, 6, (50, 2), generator=g)
    experts[:, 1] = 5  # one expert takes every token
    keep = torch.rand(50, 2, generator=g) > 0.2
    meta = routing_metadata(experts, keep, num_experts=7)
    for e in range(7):
        expected = [i for i, (x, k) in enumerate(zip(experts.reshape(-1).tolist(), keep.reshape(-1).tolist())) if x == e and k]
        assert meta.permutation[meta.offsets[e] : meta.offsets[e + 1]].tolist() == expected
