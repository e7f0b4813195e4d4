"""The shared comparison helper: it must catch what kernels get wrong, not only pass what they get right."""

import math

import pytest
import torch

from lightning_eff.kernels import testing as kt


def test_a_result_within_tolerance_passes_and_reports_its_errors():
    expected = torch.linspace(-2, 2, 101, dtype=torch.float64)
    actual = (expected * (1 + 1e-6)).float()
    result = kt.assert_matches_reference(actual, expected)
    assert 0 < result.max_rel < kt.TOLERANCES[torch.float32].max_rel
    assert 0 < result.rms_rel < result.max_rel * 2


def test_errors_are_normalised_by_the_reference_scale_not_per_element():
    # An absolute error of 1e-7 next to a zero would be an infinite per-element relative error.
    expected = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    actual = torch.tensor([1e-7, 1.0, -1.0])
    assert kt.compare(actual, expected).max_rel == pytest.approx(1e-7, rel=1e-3)


def test_an_error_beyond_tolerance_names_the_worst_element():
    expected = torch.zeros(4, 5, dtype=torch.float64) + 1
    actual = expected.float().clone()
    actual[2, 3] = 1.01
    with pytest.raises(AssertionError, match=r"max relative error 0\.01.*worst at \(2, 3\)"):
        kt.assert_matches_reference(actual, expected, name="y")


def test_rms_error_is_checked_even_when_the_max_error_passes():
    expected = torch.ones(1000, dtype=torch.float64)
    actual = torch.full((1000,), 1 + 1e-5)  # every element a little off: max ok for fp32, RMS not
    tight = kt.Tolerance(max_rel=2e-5, rms_rel=1e-6)
    with pytest.raises(AssertionError, match="RMS relative error"):
        kt.assert_matches_reference(actual, expected, tolerance=tight)


def test_tolerance_follows_the_dtype_the_result_is_held_in():
    expected = torch.randn(256, dtype=torch.float64)
    kt.assert_matches_reference(expected.to(torch.bfloat16), expected)
    with pytest.raises(AssertionError):
        kt.assert_matches_reference(expected.to(torch.bfloat16).float(), expected)  # bf16 error, fp32 tolerance


def test_nan_must_sit_in_the_same_positions():
    expected = torch.tensor([1.0, math.nan, 3.0], dtype=torch.float64)
    kt.assert_matches_reference(torch.tensor([1.0, math.nan, 3.0]), expected)
    with pytest.raises(AssertionError, match="1 NaN/inf position mismatches"):
        kt.assert_matches_reference(torch.tensor([1.0, 2.0, 3.0]), expected)
    with pytest.raises(AssertionError, match="NaN/inf position mismatches"):
        kt.assert_matches_reference(torch.tensor([math.nan, math.nan, 3.0]), expected)


def test_the_sign_of_an_infinity_must_match():
    expected = torch.tensor([math.inf, 1.0], dtype=torch.float64)
    with pytest.raises(AssertionError, match="NaN/inf"):
        kt.assert_matches_reference(torch.tensor([-math.inf, 1.0]), expected)


def test_integer_results_are_compared_exactly():
    expected = torch.tensor([[0, 1], [2, 3]])
    kt.assert_matches_reference(expected.clone(), expected)
    off_by_one = expected.clone()
    off_by_one[1, 0] = 3
    with pytest.raises(AssertionError, match=r"1 of 4 elements differ \(first: \(1, 0\): 3 vs 2\)"):
        kt.assert_matches_reference(off_by_one, expected, name="routing")
    with pytest.raises(AssertionError, match="bool"):
        kt.assert_exactly_equal(expected.bool(), expected)


def test_shape_mismatch_is_reported():
    with pytest.raises(AssertionError, match=r"shape \(3,\) differs"):
        kt.compare(torch.zeros(3), torch.zeros(4, dtype=torch.float64))


def test_float64_reference_upcasts_floats_and_passes_integers_through():
    seen = {}

    def fn(x, idx, scale):
        seen.update(x=x.dtype, idx=idx.dtype, scale=scale)
        return x * scale

    out = kt.float64_reference(fn, torch.ones(2, dtype=torch.bfloat16), torch.tensor([1]), 3.0)
    assert seen == {"x": torch.float64, "idx": torch.int64, "scale": 3.0} and out.dtype == torch.float64


def test_float64_gradients_equal_the_analytic_gradient():
    x = torch.randn(5)
    w = torch.randn(5)
    gx, gw = kt.float64_gradients(lambda x, w: (x * w, x.sum()), [x, w], [torch.ones(5), torch.tensor(2.0)], wrt=[0, 1])
    torch.testing.assert_close(gx, w.double() + 2)
    torch.testing.assert_close(gw, x.double())


def test_nan_guarded_input_turns_an_out_of_bounds_read_into_nan():
    values = torch.arange(6, dtype=torch.float32).view(2, 3)
    guarded = kt.nan_guarded(values, pad=4)
    assert torch.equal(guarded, values) and guarded.is_contiguous()
    one_past_the_end = torch.as_strided(guarded, (1,), (1,), guarded.storage_offset() + 6)
    one_before = torch.as_strided(guarded, (1,), (1,), guarded.storage_offset() - 1)
    assert one_past_the_end.isnan().all() and one_before.isnan().all()


def test_integer_inputs_are_guarded_with_an_implausible_value():
    guarded = kt.nan_guarded(torch.tensor([1, 2], dtype=torch.int32), pad=2)
    assert kt.guard_values(guarded).tolist() == [2**31 - 1] * 4


def test_poisoned_output_reveals_unwritten_elements_and_out_of_bounds_writes():
    out = kt.poisoned((3, 4), torch.float32, pad=8)
    assert out.isnan().all()
    out[:2] = 1.0  # a kernel that forgot the last row
    with pytest.raises(AssertionError, match="NaN/inf"):
        kt.assert_matches_reference(out, torch.ones(3, 4, dtype=torch.float64))
    kt.assert_guards_intact(out)
    torch.as_strided(out, (1,), (1,), out.storage_offset() + 12).fill_(0.0)  # one element past the end
    with pytest.raises(AssertionError, match="1 elements written outside"):
        kt.assert_guards_intact(out, name="y")


@pytest.mark.parametrize("layout", ["padded_rows", "every_other", "transposed"])
def test_non_contiguous_layouts_keep_the_values_and_fill_gaps_with_nan(layout):
    values = torch.randn(4, 5)
    strided = kt.non_contiguous(values, layout)
    assert torch.equal(strided, values) and not strided.is_contiguous()
    gaps = kt.guard_values(strided)
    assert gaps.isnan().all() and (layout == "transposed" or gaps.numel() > 0)
    if layout == "padded_rows":
        assert strided.stride() == (8, 1)


def test_ragged_sizes_straddle_the_block():
    assert kt.ragged_sizes(256) == [1, 3, 7, 13, 255, 256, 257]
    assert kt.ragged_sizes(2) == [1, 2, 3, 7, 13]
