"""N:M mask + fused SR-STE decay, and the masked update: Triton (interpreter on CPU) vs the reference.

Masks are compared exactly; the decayed gradient too (same fp32 operations in both, and a cast to
the gradient's dtype that fp32/fp16 round identically under the interpreter; bf16 within 1 ulp).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_eff.kernels import nm_sparsity as K
from lightning_eff.kernels import testing as kt

pytestmark = pytest.mark.skipif(K.triton is None, reason="Triton is not installed")

SHAPES = [(1, 4), (3, 8), (7, 12), (13, 36), (65, 64), (2, 1028)]  # ragged row counts, groups around block edges
PATTERNS = [(2, 4), (1, 4), (1, 2), (2, 8), (4, 8), (3, 5)]


def sample(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w[..., ::3] = w[..., ::3].round()  # many exact ties (and zeros) exercise the tie-break
    return w.to(dtype)


@pytest.mark.parametrize("n, m", PATTERNS)
@pytest.mark.parametrize("shape", SHAPES)
def test_mask_equals_reference_exactly(shape, n, m):
    cols = shape[1] - shape[1] % m or m
    weight = kt.nan_guarded(sample((shape[0], cols), torch.float32))
    mask = K.nm_mask_triton(weight, n, m)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    kt.assert_exactly_equal(mask, K.nm_mask_reference(weight, n, m), name="nm_mask")
    assert (mask.reshape(-1, m).sum(1) == n).all()


def test_ties_go_to_the_lower_index():
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, -2.0, 2.0, 0.5]])
    expected = [[True, True, False, False, False, True, True, False]]
    assert K.nm_mask_triton(weight, 2, 4).tolist() == expected == K.nm_mask_reference(weight, 2, 4).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n, m", [(2, 4), (1, 8), (3, 5)])
def test_fused_decay_equals_reference_and_leaves_inputs_alone(dtype, n, m):
    weight = kt.nan_guarded(sample((37, 10 * m), dtype, seed=1))
    grad = kt.nan_guarded(sample((37, 10 * m), dtype, seed=2))
    weight_before, grad_before = weight.clone(), grad.clone()
    mask, out = K.nm_mask_decay_triton(weight, grad, n, m, 0.125)
    ref_mask, ref_out = K.nm_mask_decay_reference(weight, grad, n, m, 0.125)
    kt.assert_exactly_equal(mask, ref_mask, name="nm_mask_decay mask")
    assert out.dtype == dtype
    if dtype == torch.bfloat16:  # the interpreter rounds fp32 -> bf16 differently from torch
        torch.testing.assert_close(out, ref_out, atol=0, rtol=2**-7)
    else:
        kt.assert_exactly_equal(out, ref_out, name="nm_mask_decay grad")
    assert torch.equal(weight, weight_before) and torch.equal(grad, grad_before)
    assert torch.equal(out[mask], grad[mask])  # kept positions: the plain gradient


def test_fused_decay_matches_autograd_of_the_sr_ste_reference():
    # float64 autograd; the kernel computes in fp32, so compare at fp32 precision
    weight = sample((6, 16), torch.float64, seed=3).requires_grad_()
    upstream = sample((6, 16), torch.float64, seed=4)
    keep = K.nm_mask_reference(weight, 2, 4)
    # SR-STE as a loss: a straight-through forward value plus decay/2 * ||(1 - mask) * W||^2
    ste = weight * keep + (weight - weight.detach()) * ~keep
    ((ste * upstream).sum() + 0.05 * ((~keep) * weight**2).sum()).backward()
    _, fused = K.nm_mask_decay_triton(weight.detach(), upstream, 2, 4, 0.1)
    torch.testing.assert_close(fused, weight.grad, rtol=2e-7, atol=1e-7)
    assert not torch.equal(fused, upstream)  # the decay did something


def test_dispatch_uses_the_kernel_under_the_interpreter_and_the_reference_when_forced(monkeypatch):
    weight = sample((4, 8), torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("LIGHTNING_EFF_KERNELS", raising=False)
    assert K.use_triton(weight)
    monkeypatch.setenv("LIGHTNING_EFF_KERNELS", "torch")
    assert not K.use_triton(weight)
    assert torch.equal(K.nm_mask(weight), K.nm_mask_reference(weight, 2, 4))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="0 < N < M"):
        K.nm_mask(torch.zeros(2, 8), 4, 4)
    with pytest.raises(ValueError, match="multiple of M=4"):
        K.nm_mask(torch.zeros(2, 6), 2, 4)


@pytest.mark.parametrize("numel", [*kt.ragged_sizes(1024), 3001])
@pytest.mark.parametrize("with_grad", [False, True])
def test_masked_update_equals_reference_in_place(numel, with_grad):
    g = torch.Generator().manual_seed(numel)
    mask = torch.rand(numel, generator=g) > 0.4
    values = kt.nan_guarded(torch.randn(numel, generator=g))
    grad = kt.nan_guarded(torch.randn(numel, generator=g)) if with_grad else None
    ref_values, ref_grad = values.clone(), grad.clone() if with_grad else None
    returned = K.masked_update_triton_(values, mask, grad)
    K.masked_update_reference_(ref_values, mask, ref_grad)
    assert returned is values and torch.equal(values, ref_values)
    assert torch.equal(torch.signbit(values), torch.signbit(ref_values))  # -0.0 where a negative weight was masked
    if with_grad:
        assert torch.equal(grad, ref_grad)
    kt.assert_guards_intact(values, name="masked_update_ values")
    if with_grad:
        kt.assert_guards_intact(grad, name="masked_update_ grad")


def test_masked_update_of_a_strided_view_falls_back_to_the_reference():
    values = torch.randn(8, 6)
    view = values.t()
    mask = torch.rand(6, 8) > 0.5
    expected = view * mask
    K.masked_update_triton_(view, mask)
    assert torch.equal(view, expected) and torch.equal(values.t(), expected)


@pytest.mark.parametrize("n, m", PATTERNS)
def test_reference_keeps_the_first_n_of_a_stable_descending_sort(n, m, monkeypatch):
    weight = sample((9, 6 * m), torch.float32, seed=5)
    weight[0, :m] = -0.0  # signed zeros tie with zeros
    order = torch.argsort(weight.reshape(-1, m).abs(), dim=1, descending=True, stable=True)
    expected = torch.zeros(order.shape, dtype=torch.bool).scatter_(1, order[:, :n], True).view(weight.shape)
    assert torch.equal(K.nm_mask_reference(weight, n, m), expected)
    # and the top-k path larger groups take gives the same mask
    monkeypatch.setattr(K, "RANK_BY_COMPARISON_MAX_M", 0)
    assert torch.equal(K.nm_mask_reference(weight, n, m), expected)


def test_torch_compile_sees_each_op_as_one_custom_op():
    weight, grad = torch.randn(8, 16), torch.randn(8, 16)

    def step(w, g):
        keep, decayed = K.nm_mask_decay(w, g, 2, 4, 0.1)
        return K.nm_mask(w) & keep, decayed

    explanation = torch._dynamo.explain(step)(weight, grad)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    code = explanation.graphs[0].code
    assert "lightning_eff.nm_mask_decay.default" in code and "lightning_eff.nm_mask.default" in code
    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(weight, grad)
    assert all(torch.equal(a, b) for a, b in zip(compiled, step(weight, grad)))


def test_masked_update_under_torch_compile_edits_in_place():
    def remask(w, mask):
        K.masked_update_(w, mask)
        return w * 2

    weight, mask = torch.randn(4, 8), torch.rand(4, 8) > 0.5
    expected = weight * mask * 2
    torch._dynamo.reset()
    out = torch.compile(remask, backend="aot_eager", fullgraph=True)(weight, mask)
    assert torch.equal(out, expected) and torch.equal(weight, expected / 2)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(2, 8),
    data=st.data(),
)
def test_rank_and_top_k_paths_agree_on_any_values(m, data):
    # NaN, inf, signed zeros and heavy ties included: both paths order by the same integer keys
    n = data.draw(st.integers(1, m - 1))
    values = data.draw(st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, float("inf"), float("-inf"), float("nan")])
                                | st.floats(-1e3, 1e3, width=32), min_size=m, max_size=8 * m))
    weight = torch.tensor(values[: len(values) - len(values) % m], dtype=torch.float32).reshape(-1, m)
    by_rank = K.nm_mask_reference(weight, n, m)
    saved = K.RANK_BY_COMPARISON_MAX_M
    K.RANK_BY_COMPARISON_MAX_M = 0
    try:
        by_top_k = K.nm_mask_reference(weight, n, m)
    finally:
        K.RANK_BY_COMPARISON_MAX_M = saved
    assert torch.equal(by_rank, by_top_k)
    assert (by_rank.sum(1) == n).all()
