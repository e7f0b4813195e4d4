"""Fused linear + per-sample cross-entropy: equals the unfused computation in float64, for scoring
(no grad) and training (grads for hidden states, weight, bias), whatever the chunking."""

import importlib

import pytest
import torch

from lightning_eff.kernels import fused_linear_cross_entropy, per_sample_cross_entropy
from lightning_eff.kernels import testing as kt

# The package attribute of this name is the function; the module comes from sys.modules.
flce = importlib.import_module("lightning_eff.kernels.fused_linear_cross_entropy")

unfused = flce.fused_linear_cross_entropy_reference


def sample(tokens, hidden_size, vocab, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, hidden_size, generator=g).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=g) / hidden_size**0.5).to(dtype)
    b = torch.randn(vocab, generator=g).to(dtype) if bias else None
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    targets[::5] = -100
    return hidden, weight, b, targets


def check_against_float64(hidden, weight, bias, targets, chunk_size, dtype=None):
    params = [t.detach().requires_grad_(True) if t is not None else None for t in (hidden, weight, bias)]
    grad_loss = torch.randn(targets.shape)
    loss = fused_linear_cross_entropy(params[0], params[1], targets, params[2], chunk_size=chunk_size)
    loss.backward(grad_loss)
    dtype = dtype or hidden.dtype
    kt.assert_matches_reference(loss, kt.float64_reference(unfused, hidden, weight, targets, bias), dtype=dtype)
    wrt = [0, 1] + ([3] if bias is not None else [])
    expected = kt.float64_gradients(unfused, [hidden, weight, targets, bias], [grad_loss], wrt=wrt)
    for param, want, name in zip([p for p in params if p is not None], expected, ["hidden", "weight", "bias"]):
        kt.assert_matches_reference(param.grad, want, dtype=dtype, name=f"grad_{name}")
        assert param.grad.dtype == param.dtype


@pytest.mark.parametrize("tokens", [1, 7, 8, 9, 23])
def test_matches_the_unfused_computation_across_chunk_edges(backend, tokens):
    check_against_float64(*sample(tokens, 16, 37), chunk_size=8)


@pytest.mark.parametrize("bias", [False, True])
def test_without_and_with_bias(backend, bias):
    check_against_float64(*sample(12, 8, 300, bias=bias), chunk_size=5)


def test_half_precision_inputs(backend):
    # fp16 GEMM operands (CPU supports them); the loss is judged at the logits' precision.
    check_against_float64(*sample(10, 16, 64, dtype=torch.float16), chunk_size=4)


def test_scoring_without_grad_equals_per_sample_cross_entropy_of_the_logits(backend):
    hidden, weight, bias, targets = sample(20, 12, 90)
    with torch.no_grad():
        fused = fused_linear_cross_entropy(hidden, weight, targets, bias, chunk_size=6)
        plain = per_sample_cross_entropy(hidden @ weight.T + bias, targets)
    assert fused.shape == (20,) and fused.dtype == torch.float32 and not fused.requires_grad
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    assert (fused[::5] == 0).all()


def test_the_result_does_not_depend_on_the_chunk_size(backend):
    hidden, weight, bias, targets = sample(16, 8, 40)
    one = fused_linear_cross_entropy(hidden, weight, targets, bias, chunk_size=1)
    whole = fused_linear_cross_entropy(hidden, weight, targets, bias, chunk_size=16)
    torch.testing.assert_close(one, whole, rtol=1e-6, atol=1e-6)


def test_only_the_requested_gradients_are_computed(backend):
    hidden, weight, bias, targets = sample(6, 8, 20)
    weight.requires_grad_(True)
    fused_linear_cross_entropy(hidden, weight, targets, bias).sum().backward()
    assert weight.grad is not None and hidden.grad is None and bias.grad is None


def test_leading_dimensions_and_inputs_unchanged(backend):
    hidden, weight, bias, targets = sample(6, 8, 20)
    before = [hidden.clone(), weight.clone(), bias.clone()]
    loss = fused_linear_cross_entropy(hidden.view(2, 3, 8), weight, targets.view(2, 3), bias)
    assert loss.shape == (2, 3)
    assert all(torch.equal(a, b) for a, b in zip(before, [hidden, weight, bias]))


def test_autocast_casts_like_the_linear_layer_it_replaces():
    hidden, weight, bias, targets = sample(8, 16, 32)
    weight.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused_linear_cross_entropy(hidden, weight, targets, bias)
    loss.sum().backward()
    assert weight.grad.dtype == torch.float32
    kt.assert_matches_reference(loss, kt.float64_reference(unfused, hidden, weight, targets, bias), dtype=torch.bfloat16)


def test_mismatched_shapes_and_dtypes_are_explained():
    hidden, weight, _, targets = sample(4, 8, 20)
    with pytest.raises(ValueError, match=r"expected weight \[vocab, hidden_size\]"):
        fused_linear_cross_entropy(hidden, weight.T, targets)
    with pytest.raises(TypeError, match="must share a dtype"):
        fused_linear_cross_entropy(hidden.half(), weight, targets)


def test_default_chunk_is_liger_s_where_that_is_wide_enough_and_small_enough():
    # LLM shapes: a chunk of logits as large as the hidden states, as Liger Kernel chunks.
    assert flce.default_chunk_size(8192, 4096, 32768) == flce.vocab_ratio_chunk_size(8192, 4096, 32768) == 1024
    assert flce.default_chunk_size(8192, 4096, 131072) == 256


def test_default_chunk_is_raised_to_a_wide_gemm_but_capped_by_the_memory_budget():
    # Liger's rule gives 64 tokens here (thin GEMMs, 1.3-2x slower on CPU): raised to MIN_CHUNK.
    assert flce.vocab_ratio_chunk_size(4096, 256, 32000) == 64
    assert flce.default_chunk_size(4096, 256, 32000) == flce.MIN_CHUNK == 256
    # ...but a chunk never holds more than 1/MAX_CHUNK_FRACTION of the logits.
    assert flce.vocab_ratio_chunk_size(1024, 256, 32000) == 16
    assert flce.default_chunk_size(1024, 256, 32000) == 1024 // flce.MAX_CHUNK_FRACTION == 128
    assert flce.default_chunk_size(3, 8, 32768) == 1
    assert flce.default_chunk_size(0, 8, 32768) == 1


@pytest.mark.parametrize("tokens", [1, 7, 100, 1000, 3000, 65536])
@pytest.mark.parametrize("hidden_size, vocab", [(64, 50257), (4096, 32000), (8192, 1000)])
def test_default_chunk_is_a_power_of_two_within_the_memory_budget(tokens, hidden_size, vocab):
    chunk = flce.default_chunk_size(tokens, hidden_size, vocab)
    assert chunk & (chunk - 1) == 0
    assert chunk <= max(1, tokens / flce.MAX_CHUNK_FRACTION)
    # never thinner than MIN_CHUNK unless the budget says so (its power of two is > half of it)
    assert chunk >= min(flce.MIN_CHUNK, tokens / flce.MAX_CHUNK_FRACTION / 2)
