"""fp8 amax + scale + cast, tensorwise and rowwise: Triton kernel (interpreter) and reference.

Codes are compared in fp8 ulps (adjacent fp8 values of one sign have adjacent bit patterns), within
one ulp as docs/kernels.md asks for interpreter casts; amaxes and scales against float64.
Column counts straddle the 1024-wide column chunk, row counts the row tile.
"""

import importlib

import pytest
import torch

from lightning_eff.kernels import testing as kt
from lightning_eff.kernels._dispatch import INTERPRETED, implementation_name

fp8 = importlib.import_module("lightning_eff.kernels.fp8_cast")  # the package exports the op under this name

SHAPES = [(1, 1), (3, 7), (13, 129), (5, 1024), (3, 1025), (70, 33)]
FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def ordered_codes(t: torch.Tensor) -> torch.Tensor:
    """fp8 bit patterns as integers ordered like the values (sign-magnitude -> two's complement)."""
    bits = t.view(torch.uint8).to(torch.int32)
    return torch.where(bits >= 128, -(bits - 128), bits)


def assert_within_one_ulp(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    nan_a, nan_e = actual.float().isnan(), expected.float().isnan()
    assert torch.equal(nan_a, nan_e), "NaN positions differ"
    ulps = (ordered_codes(actual) - ordered_codes(expected)).abs()[~nan_a]
    assert ulps.numel() == 0 or int(ulps.max()) <= 1, f"{int((ulps > 1).sum())} codes differ by more than one fp8 ulp"


def sample(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Rows of very different magnitudes make rowwise and tensorwise scales differ.
    x = torch.randn(shape, generator=g) * torch.logspace(-3, 3, shape[0])[:, None]
    return x.to(dtype)


def reference64(x, granularity, dtype):
    return kt.float64_reference(lambda t: fp8.fp8_cast_reference(t, granularity, dtype), x)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("granularity", ["tensorwise", "rowwise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_cast_matches_the_float64_reference_within_one_ulp(backend, shape, granularity, dtype):
    for target in FP8:
        x = kt.nan_guarded(sample(shape, dtype))
        y, scale = fp8.fp8_cast(x, granularity, target)
        expected_y, expected_scale = reference64(x, granularity, target)
        assert y.dtype == target and scale.dtype == torch.float32
        assert scale.shape == (() if granularity == "tensorwise" else (shape[0], 1))
        kt.assert_matches_reference(scale, expected_scale, name="scale")
        assert_within_one_ulp(y, expected_y)
        # the largest magnitude (per row, or overall) lands on the format's largest finite value
        top = y.float().abs().amax(dim=-1) if granularity == "rowwise" else y.float().abs().amax()
        assert torch.all(top == fp8.fp8_max(target))


def test_kernel_rounds_half_to_even_across_a_power_of_two(backend):
    # 127.7 * 1 in e4m3 must round up to 128 (the carry into the exponent), 100 ties to even (96),
    # and 0.001 is a subnormal (2**-9), not zero: the interpreter's own cast gets all three wrong.
    x = torch.tensor([[448.0, 127.7, 100.0, 0.001, -0.001, 0.0, -127.7]])
    y, scale = fp8.fp8_cast(x, "tensorwise", torch.float8_e4m3fn)
    assert scale.item() == 1.0
    assert y.float().tolist() == [[448.0, 128.0, 96.0, 2**-9, -(2**-9), 0.0, -128.0]]


def test_non_contiguous_rows_and_leading_dimensions(backend):
    x = kt.non_contiguous(sample((9, 130), torch.float32), "padded_rows")
    y, scale = fp8.fp8_cast(x, "rowwise")
    expected_y, expected_scale = reference64(x.contiguous(), "rowwise", torch.float8_e4m3fn)
    assert_within_one_ulp(y, expected_y)
    kt.assert_matches_reference(scale, expected_scale, name="scale")
    x3 = sample((6, 40), torch.float32).view(2, 3, 40)
    y3, s3 = fp8.fp8_cast(x3, "rowwise")
    assert y3.shape == (2, 3, 40) and s3.shape == (2, 3, 1)


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton's interpreter (TRITON_INTERPRET=1)")
def test_kernel_writes_every_element_and_nothing_outside():
    x = sample((17, 1030), torch.float32)
    for granularity in ("tensorwise", "rowwise"):
        out = kt.poisoned(x.shape, torch.float8_e4m3fn)
        y, _ = fp8.fp8_cast_triton(x, granularity, torch.float8_e4m3fn, out=out)
        assert not y.float().isnan().any()
        kt.assert_guards_intact(out)


def test_nan_and_zero_inputs(backend):
    zeros = torch.zeros(3, 5)
    y, scale = fp8.fp8_cast(zeros, "rowwise")
    assert torch.all(y.float() == 0) and torch.all(torch.isfinite(scale))
    x = sample((4, 8), torch.float32)
    x[1, 3] = float("nan")
    y, scale = fp8.fp8_cast(x, "rowwise")
    assert scale[1].isnan().all() and not scale[[0, 2, 3]].isnan().any()
    assert y[1].float().isnan().all() and not y[[0, 2, 3]].float().isnan().any()
    _, tensor_scale = fp8.fp8_cast(x, "tensorwise")
    assert tensor_scale.isnan()


def test_dequantize_recovers_the_input_to_fp8_precision(backend):
    x = sample((8, 64), torch.float32)
    for granularity in ("tensorwise", "rowwise"):
        back = fp8.fp8_quantize_dequantize(x, granularity)
        magnitude = x.abs().amax(dim=-1, keepdim=True) if granularity == "rowwise" else x.abs().amax()
        # e4m3 keeps 3 mantissa bits: error <= 2**-4 of the largest magnitude sharing the scale
        assert ((back - x).abs() / magnitude).amax() <= 2**-4
    assert fp8.fp8_scale(torch.tensor(2.0), torch.float8_e5m2).item() == 57344.0 / 2.0


def test_the_input_is_never_modified_and_dispatch_is_reported(backend):
    x = sample((5, 33), torch.bfloat16)
    before = x.clone()
    fp8.fp8_cast(x, "tensorwise")
    assert torch.equal(x, before)
    assert implementation_name("fp8_cast", x) == ("triton-interpreter" if backend == "triton" else "torch")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="granularity"):
        fp8.fp8_cast(torch.ones(2, 2), "blockwise")
    with pytest.raises(ValueError, match="fp8 dtype"):
        fp8.fp8_cast(torch.ones(2, 2), "tensorwise", torch.bfloat16)


def test_fp8_cast_compiles_as_one_op():
    compiled = torch.compile(lambda t: fp8.fp8_cast(t, "rowwise"), backend="aot_eager", fullgraph=True)
    x = sample((4, 16), torch.float32)
    y, scale = compiled(x)
    expected_y, expected_scale = fp8.fp8_cast_reference(x, "rowwise", torch.float8_e4m3fn)
    assert_within_one_ulp(y, expected_y)
    torch.testing.assert_close(scale, expected_scale)
