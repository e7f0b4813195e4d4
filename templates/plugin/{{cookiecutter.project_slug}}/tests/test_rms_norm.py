"""The native rms_norm implementation keeps the op's contract: float32 statistics, x's dtype out."""

import pytest
import torch
from lightning_eff.kernels import testing as kt

from {{ cookiecutter.package_name }}.rms_norm import rms_norm_native


def rms_norm_formula(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_gradients_match_the_float64_formula(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, 33, generator=g).to(dtype).requires_grad_(True)
    weight = torch.randn(33, generator=g).requires_grad_(True)  # fp32 weight, like mixed precision
    y = rms_norm_native(x, weight, eps=1e-6)
    assert y.dtype == dtype
    kt.assert_matches_reference(y, kt.float64_reference(rms_norm_formula, x, weight, 1e-6), name="rms_norm")

    grad_y = torch.randn(y.shape, generator=g).to(dtype)
    grad_x, grad_w = torch.autograd.grad(y, [x, weight], grad_y)
    ref_x, ref_w = kt.float64_gradients(rms_norm_formula, [x, weight, 1e-6], grad_y, wrt=[0, 1])
    kt.assert_matches_reference(grad_x, ref_x, name="grad_x")
    # The weight gradient sums over all rows in float32 from inputs rounded to `dtype`.
    kt.assert_matches_reference(grad_w, ref_w, dtype=dtype, name="grad_weight")


def test_accepts_cpu_tensors_only():
    assert rms_norm_native.supports(torch.ones(2, 4))
    assert not rms_norm_native.supports(torch.ones(2, 4, device="meta"))
