"""torch.compile sees each op as one custom op: no graph breaks, and the compiled forward and
backward equal eager."""

import pytest
import torch

from lightning_eff.kernels import (
    cross_entropy_logsumexp,
    fp8_cast,
    fused_linear_cross_entropy,
    layer_norm,
    moe_grouped_swiglu,
    moe_topk_routing,
    rms_norm,
)


def _routed_swiglu(x, logits, w_gate, w_up, w_down):
    """Routing then grouped experts: the MoE layer's two ops in one graph."""
    r = moe_topk_routing(logits, 2)
    return moe_grouped_swiglu(x, w_gate, w_up, w_down, r.weights, r.offsets, r.permutation)


def _ops():
    x = torch.randn(6, 16)
    w, b = torch.randn(16), torch.randn(16)
    t = torch.tensor([1, 2, -100, 4, 5, 6])
    head = torch.randn(24, 16)
    experts, ff = 4, 8
    moe_weights = [0.3 * torch.randn(experts, ff, 16), 0.3 * torch.randn(experts, ff, 16), 0.3 * torch.randn(experts, 16, ff)]
    return {
        "rms_norm": (lambda x, w: rms_norm(x, w), (x, w)),
        "layer_norm": (lambda x, w, b: layer_norm(x, w, b), (x, w, b)),
        "cross_entropy_logsumexp": (lambda x: sum(cross_entropy_logsumexp(x, t)), (x,)),
        "fused_linear_cross_entropy": (lambda x, h: fused_linear_cross_entropy(x, h, t, chunk_size=4), (x, head)),
        # weighted by rank: renormalised weights sum to 1, so a plain sum would have a zero gradient
        "moe_topk_routing": (lambda logits: moe_topk_routing(logits, 2).weights * torch.tensor([1.0, 3.0]), (torch.randn(6, experts),)),
        "moe_grouped_swiglu": (_routed_swiglu, (x, torch.randn(6, experts), *moe_weights)),
        # dequantised in the graph so the result is a float the tests can sum and differentiate through
        "fp8_cast": (lambda x: (lambda y, s: y.float() * s)(*fp8_cast(x, "rowwise")), (x,)),
    }


@pytest.mark.parametrize("op", list(_ops()))
def test_one_graph_without_breaks_holding_the_custom_op(op):
    fn, args = _ops()[op]
    explanation = torch._dynamo.explain(fn)(*args)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    assert f"lightning_eff.{op}" in explanation.graphs[0].code


# the fp8 cast feeds fp8 GEMMs (torchao owns their autograd): forward only
FORWARD_ONLY = {"fp8_cast"}


@pytest.mark.parametrize("op", list(_ops()))
def test_compiled_forward_and_backward_equal_eager(op):
    fn, args = _ops()[op]
    grad = op not in FORWARD_ONLY
    eager_args = [a.clone().requires_grad_(grad) for a in args]
    compiled_args = [a.clone().requires_grad_(grad) for a in args]
    expected = fn(*eager_args)
    torch._dynamo.reset()
    actual = torch.compile(fn, backend="aot_eager", fullgraph=True)(*compiled_args)
    torch.testing.assert_close(actual, expected)
    if not grad:
        return
    expected.sum().backward()
    actual.sum().backward()
    for a, e in zip(compiled_args, eager_args):
        torch.testing.assert_close(a.grad, e.grad)
