"""RMSNorm and LayerNorm forward and backward: Triton kernel (interpreter) and reference against
float64 autograd of the reference formula.

Rows are tiled ``ROWS`` at a time (16 for rows up to 256 wide), so row counts 1, 13 and 17 cover
partial tiles; widths straddle the power-of-two block.
"""

import pytest
import torch
import torch.nn.functional as F

from lightning_eff.kernels import layer_norm, norms, rms_norm
from lightning_eff.kernels import testing as kt
from lightning_eff.kernels._dispatch import INTERPRETED

needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs Triton's interpreter (TRITON_INTERPRET=1)")

# Width 1-2 is left out of the gradient checks: LayerNorm's output is then (nearly) constant and
# its input gradient cancels to round-off, which no relative error can judge.
SHAPES = [(1, 3), (13, 7), (17, 64), (5, 127), (3, 129), (2, 1000)]


def sample(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3 + 1  # an offset, so LayerNorm's centring matters
    return x.to(dtype), torch.randn(shape[-1], generator=g), torch.randn(shape[-1], generator=g)


def rms_reference(x, weight):
    return norms.norm_forward_reference(x, weight, None, 1e-6, center=False)[0]


def layer_reference(x, weight, bias):
    return norms.norm_forward_reference(x, weight, bias, 1e-5, center=True)[0]


def check_rms(x, weight, grad_y):
    x = x.detach().requires_grad_(True)
    weight = weight.detach().requires_grad_(True) if weight is not None else None
    y = rms_norm(x, weight, eps=1e-6)
    y.backward(grad_y)
    kt.assert_matches_reference(y, kt.float64_reference(rms_reference, x, weight), name="y")
    wrt = [0, 1] if weight is not None else [0]
    expected = kt.float64_gradients(rms_reference, [x, weight], [grad_y], wrt=wrt)
    kt.assert_matches_reference(x.grad, expected[0], name="grad_x")
    if weight is not None:
        kt.assert_matches_reference(weight.grad, expected[1], dtype=x.dtype, name="grad_weight")
        assert weight.grad.dtype == weight.dtype
    assert y.dtype == x.grad.dtype == x.dtype


def check_layer(x, weight, bias, grad_y):
    x = x.detach().requires_grad_(True)
    weight = weight.detach().requires_grad_(True) if weight is not None else None
    bias = bias.detach().requires_grad_(True) if bias is not None else None
    y = layer_norm(x, weight, bias, eps=1e-5)
    y.backward(grad_y)
    kt.assert_matches_reference(y, kt.float64_reference(layer_reference, x, weight, bias), name="y")
    args, wrt = [x, weight, bias], [i for i, t in enumerate([x, weight, bias]) if t is not None]
    expected = dict(zip(wrt, kt.float64_gradients(layer_reference, args, [grad_y], wrt=wrt)))
    kt.assert_matches_reference(x.grad, expected[0], name="grad_x")
    for i, name in ((1, "grad_weight"), (2, "grad_bias")):
        if args[i] is not None:
            kt.assert_matches_reference(args[i].grad, expected[i], dtype=x.dtype, name=name)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rms_norm_matches_float64(backend, dtype, shape):
    x, weight, _ = sample(shape, dtype)
    check_rms(kt.nan_guarded(x), weight, torch.randn(shape).to(dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_layer_norm_matches_float64(backend, dtype, shape):
    x, weight, bias = sample(shape, dtype)
    check_layer(kt.nan_guarded(x), weight, bias, torch.randn(shape).to(dtype))


def test_without_affine_parameters(backend):
    x, _, _ = sample((6, 33), torch.float32)
    check_rms(x, None, torch.randn(6, 33))
    check_layer(x, None, None, torch.randn(6, 33))
    check_layer(x, torch.randn(33), None, torch.randn(6, 33))


def test_bf16_activations_with_fp32_parameters_keep_each_dtype(backend):
    x, weight, bias = sample((9, 48), torch.bfloat16)
    check_rms(x, weight, torch.randn(9, 48).bfloat16())
    check_layer(x, weight, bias, torch.randn(9, 48).bfloat16())


@pytest.mark.parametrize("layout", ["padded_rows", "transposed"])
def test_non_contiguous_inputs(backend, layout):
    x, weight, bias = sample((12, 40), torch.float16)
    grad_y = kt.non_contiguous(torch.randn(12, 40).half(), layout)
    check_rms(kt.non_contiguous(x, layout), weight, grad_y)
    check_layer(kt.non_contiguous(x, layout), kt.non_contiguous(weight, "every_other"), bias, grad_y)


def test_leading_dimensions_are_kept(backend):
    x, weight, bias = sample((2, 3, 16), torch.float32)
    assert rms_norm(x, weight).shape == layer_norm(x, weight, bias).shape == (2, 3, 16)


def test_equals_torch_functional_norms(backend):
    x, weight, bias = sample((10, 96), torch.float32)
    torch.testing.assert_close(rms_norm(x, weight, 1e-6), F.rms_norm(x, (96,), weight, 1e-6))
    torch.testing.assert_close(layer_norm(x, weight, bias, 1e-5), F.layer_norm(x, (96,), weight, bias, 1e-5))


def test_small_variance_rows_keep_their_precision_in_bf16(backend):
    # A bf16 row 1000 +- 0.5: centring in bf16 would leave mostly rounding noise; fp32 statistics do not.
    x = (1000 + torch.linspace(-0.5, 0.5, 64)).bfloat16()[None]
    expected = kt.float64_reference(layer_reference, x, None, None)
    kt.assert_matches_reference(layer_norm(x), expected)


def test_inputs_are_left_unchanged(backend):
    x, weight, bias = sample((7, 20), torch.bfloat16)
    x.requires_grad_(True)
    before = x.detach().clone()
    (rms_norm(x, weight).sum() + layer_norm(x, weight, bias).sum()).backward()
    assert torch.equal(x.detach(), before)


def test_parameter_shape_errors_name_the_dimension():
    with pytest.raises(ValueError, match="does not match the normalised dimension 8"):
        rms_norm(torch.zeros(2, 8), torch.zeros(4))


@needs_interpreter
@pytest.mark.parametrize("center", [False, True])
def test_kernels_write_every_element_and_nothing_else(center):
    x, weight, bias = sample((17, 65), torch.float16)
    y = kt.poisoned(x.shape, torch.float16)
    _, mean, rstd = norms.norm_forward_triton(x, weight, bias if center else None, 1e-5, center, out=y)
    kt.assert_guards_intact(y, name="y")
    grad_x = kt.poisoned(x.shape, torch.float16)
    norms.norm_backward_triton(torch.randn(17, 65).half(), x, weight, mean, rstd, center, out=grad_x)
    kt.assert_guards_intact(grad_x, name="grad_x")
    assert not y.isnan().any() and not grad_x.isnan().any()
