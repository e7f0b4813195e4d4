"""MoE routing metadata (top-k, counts, offsets, permutation): the Triton kernels (interpreter) and the
reference against each other exactly, the reference against a plain loop, weights and their gradient
against float64."""

import pytest
import torch

from lightning_eff.kernels import moe_routing as mr
from lightning_eff.kernels import moe_routing_metadata, moe_topk_routing
from lightning_eff.kernels import testing as kt
from lightning_eff.kernels._dispatch import INTERPRETED

needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs Triton's interpreter (TRITON_INTERPRET=1)")


def logits_for(case, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens, experts = case["shape"]
    if case.get("ties"):  # few distinct values: most rows hold ties, some all-equal rows
        x = torch.randint(0, 3, (tokens, experts), generator=g).float()
        x[::5] = 1.0
    else:
        x = torch.randn(tokens, experts, generator=g)
    for e in case.get("empty", ()):
        x[:, e] = -30.0
    for e in case.get("everyone", ()):
        x[:, e] = 30.0
    return x


# (tokens, experts), k: E not a power of 2, tokens = 1, k = E, more slots than one SLOT_BLOCK (128)
CASES = {
    "one_token": dict(shape=(1, 4), k=1),
    "one_token_all_experts": dict(shape=(1, 3), k=3),
    "e5_k2_empty_and_everyone": dict(shape=(37, 5), k=2, empty=(0, 3), everyone=(4,)),
    "ties": dict(shape=(50, 6), k=3, ties=True),
    "k_equals_e": dict(shape=(9, 8), k=8),
    "several_blocks": dict(shape=(130, 7), k=3, everyone=(6,)),
}


def loop_metadata(experts, num_experts, keep=None):
    """The definition, slot by slot."""
    flat = experts.reshape(-1).tolist()
    kept = [True] * len(flat) if keep is None else keep.reshape(-1).tolist()
    groups = [[s for s, (e, k) in enumerate(zip(flat, kept)) if e == x and k] for x in range(num_experts)]
    dropped = [s for s, k in enumerate(kept) if not k]
    offsets = [0]
    for group in groups:
        offsets.append(offsets[-1] + len(group))
    permutation = [s for group in groups for s in group] + dropped
    return [len(g) for g in groups], offsets, permutation


@pytest.mark.parametrize("name", list(CASES))
def test_topk_routing_is_exact_against_the_reference(backend, name):
    case = CASES[name]
    logits = logits_for(case)
    k = case["k"]
    routed = moe_topk_routing(kt.nan_guarded(logits), k)
    weights, experts = mr.topk_reference(logits, k)
    kt.assert_exactly_equal(routed.experts, experts, name="experts")
    for got, want, what in zip(routed[2:], mr.metadata_reference(experts, logits.shape[1]), ["counts", "offsets", "permutation", "tokens"]):
        kt.assert_exactly_equal(got, want, name=what)
    kt.assert_matches_reference(routed.weights, kt.float64_reference(lambda x: mr.topk_reference(x, k)[0], logits), name="weights")
    counts, offsets, permutation = loop_metadata(experts, logits.shape[1])
    assert routed.counts.tolist() == counts and routed.offsets.tolist() == offsets and routed.permutation.tolist() == permutation
    for e in case.get("empty", ()):
        assert routed.counts[e] == 0
    for e in case.get("everyone", ()):
        assert routed.counts[e] == logits.shape[0]


def test_ties_go_to_the_lower_expert_index_in_decreasing_order(backend):
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0], [0.0, 5.0, -1.0, 5.0, 4.0]])
    routed = moe_topk_routing(logits, 3)
    assert routed.experts.tolist() == [[1, 2, 4], [0, 1, 2], [1, 3, 4]]
    torch.testing.assert_close(routed.weights[1], torch.full((3,), 1 / 3))


def test_weights_without_renormalisation_are_the_softmax_probabilities(backend):
    logits = logits_for(dict(shape=(13, 5)))
    routed = moe_topk_routing(logits, 2, renormalize=False)
    kt.assert_matches_reference(routed.weights, torch.softmax(logits.double(), -1).gather(1, routed.experts))


@pytest.mark.parametrize("renormalize", [True, False])
def test_weight_gradients_match_float64_autograd(backend, renormalize):
    logits = logits_for(dict(shape=(17, 6)), seed=1).requires_grad_(True)
    routed = moe_topk_routing(logits, 2, renormalize)
    grad = torch.randn(17, 2)
    routed.weights.backward(grad)
    expected = kt.float64_gradients(lambda x: mr.topk_reference(x, 2, renormalize)[0], [logits], [grad], wrt=[0])[0]
    kt.assert_matches_reference(logits.grad, expected, name="grad_logits")


def test_bf16_and_non_contiguous_logits(backend):
    logits = logits_for(dict(shape=(21, 5)), seed=2)
    for x in (logits.bfloat16(), kt.non_contiguous(logits, "transposed"), kt.non_contiguous(logits, "padded_rows")):
        routed = moe_topk_routing(x, 2)
        kt.assert_exactly_equal(routed.experts, mr.topk_reference(x, 2)[1], name="experts")


@pytest.mark.parametrize("shape,num_experts", [((1, 1), 3), ((40, 2), 5), ((70, 3), 9), ((0, 2), 4)])
def test_metadata_from_indices_with_dropped_slots(backend, shape, num_experts):
    g = torch.Generator().manual_seed(3)
    experts = torch.randint(0, num_experts, shape, generator=g)
    if shape[0] > 1:
        experts[:, 0] = num_experts - 1  # one expert takes every token
        experts[experts == 1] = 2  # and one is empty
    keep = torch.rand(shape, generator=g) > 0.3
    for k in (None, keep):
        got = moe_routing_metadata(kt.nan_guarded(experts), num_experts, k)
        want = mr.metadata_reference(experts, num_experts, k)
        for a, b, what in zip(got, want, ["counts", "offsets", "permutation", "tokens"]):
            kt.assert_exactly_equal(a, b, name=what)
        counts, offsets, permutation = loop_metadata(experts, num_experts, k)
        assert got[0].tolist() == counts and got[1].tolist() == offsets and got[2].tolist() == permutation
    all_dropped = moe_routing_metadata(experts, num_experts, torch.zeros(shape, dtype=torch.bool))
    assert all_dropped[0].sum() == 0 and all_dropped[2].tolist() == list(range(experts.numel()))


@needs_interpreter
def test_the_kernels_never_read_a_value_on_the_host(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("host synchronisation")

    logits = logits_for(CASES["several_blocks"])
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    monkeypatch.setattr(torch.Tensor, "__bool__", refuse)
    _, experts = mr.topk_triton(logits, 3)
    mr.metadata_triton(experts, 7, experts > 2)


def test_one_graph_holding_the_custom_op():
    fn = lambda x: moe_topk_routing(x, 2).weights.sum()
    explanation = torch._dynamo.explain(fn)(torch.randn(6, 4))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    assert "lightning_eff.moe_topk_routing" in explanation.graphs[0].code


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="top_k=5"):
        moe_topk_routing(torch.randn(3, 4), 5)
    with pytest.raises(ValueError, match="keep must be"):
        moe_routing_metadata(torch.zeros(3, 2, dtype=torch.long), 4, torch.ones(3, 1, dtype=torch.bool))
