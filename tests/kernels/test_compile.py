"""torch.compile sees each op as one custom op: no graph breaks, and the compiled forward and
backward equal eager."""

import pytest
import torch

from lightning_eff.kernels import cross_entropy_logsumexp, fused_linear_cross_entropy, layer_norm, rms_norm


def _ops():
    x = torch.randn(6, 16)
    w, b = torch.randn(16), torch.randn(16)
    t = torch.tensor([1, 2, -100, 4, 5, 6])
    head = torch.randn(24, 16)
    return {
        "rms_norm": (lambda x, w: rms_norm(x, w), (x, w)),
        "layer_norm": (lambda x, w, b: layer_norm(x, w, b), (x, w, b)),
        "cross_entropy_logsumexp": (lambda x: sum(cross_entropy_logsumexp(x, t)), (x,)),
        "fused_linear_cross_entropy": (lambda x, h: fused_linear_cross_entropy(x, h, t, chunk_size=4), (x, head)),
    }


@pytest.mark.parametrize("op", list(_ops()))
def test_one_graph_without_breaks_holding_the_custom_op(op):
    fn, args = _ops()[op]
    explanation = torch._dynamo.explain(fn)(*args)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    assert f"lightning_eff.{op}" in explanation.graphs[0].code


@pytest.mark.parametrize("op", list(_ops()))
def test_compiled_forward_and_backward_equal_eager(op):
    fn, args = _ops()[op]
    eager_args = [a.clone().requires_grad_(True) for a in args]
    compiled_args = [a.clone().requires_grad_(True) for a in args]
    expected = fn(*eager_args)
    expected.sum().backward()
    torch._dynamo.reset()
    actual = torch.compile(fn, backend="aot_eager", fullgraph=True)(*compiled_args)
    actual.sum().backward()
    torch.testing.assert_close(actual, expected)
    for a, e in zip(compiled_args, eager_args):
        torch.testing.assert_close(a.grad, e.grad)
