"""Time-to-quality arithmetic: reading curves, ratios, spreads and the verdict."""

import math

import pytest

from lightning_eff.bench.harness import eval_schedule
from lightning_eff.bench.quality import (
    CurvePoint,
    compute_verdict,
    first_reaching,
    reaches,
    speedup,
    spread,
    verdict,
)
from lightning_eff.bench.tasks.base import warmup_cosine_factor
from lightning_eff.errors import ConfigError

CURVE = [CurvePoint(0, 0.0, 0.1), CurvePoint(10, 1.0, 0.5), CurvePoint(20, 2.0, 0.9), CurvePoint(30, 3.0, 0.85)]


def test_accuracy_reaches_target_from_above_loss_from_below():
    assert reaches(0.9, 0.9, higher_is_better=True)
    assert not reaches(0.89, 0.9, higher_is_better=True)
    assert reaches(2.0, 2.1, higher_is_better=False)
    assert not reaches(2.2, 2.1, higher_is_better=False)


def test_tolerance_widens_the_target_in_the_right_direction():
    assert reaches(0.89, 0.9, higher_is_better=True, tolerance=0.02)
    assert reaches(2.15, 2.1, higher_is_better=False, tolerance=0.1)


def test_nan_quality_never_reaches():
    assert not reaches(float("nan"), 0.5, higher_is_better=True)
    assert not reaches(float("nan"), 0.5, higher_is_better=False)


def test_time_to_quality_is_the_first_evaluation_point_without_interpolation():
    hit = first_reaching(CURVE, 0.7, higher_is_better=True)
    assert hit == CurvePoint(20, 2.0, 0.9)  # 0.7 lies between t=1 and t=2; no credit for t~1.5


def test_first_reaching_returns_none_when_the_target_is_never_reached():
    assert first_reaching(CURVE, 0.95, higher_is_better=True) is None


def test_lower_is_better_curves_are_read_downwards():
    losses = [CurvePoint(0, 0.0, 5.0), CurvePoint(5, 1.5, 3.0), CurvePoint(10, 3.0, 2.0)]
    assert first_reaching(losses, 3.0, higher_is_better=False).train_seconds == 1.5


def test_speedup_is_baseline_over_recipe_and_none_when_not_reached():
    assert speedup(6.0, 3.0) == 2.0
    assert speedup(6.0, None) is None
    assert speedup(6.0, 0.0) == math.inf


def test_spread_ignores_missing_values():
    s = spread([3.0, None, 1.0, 2.0])
    assert (s.min, s.median, s.max) == (1.0, 2.0, 3.0)
    assert spread([None, None]) is None


@pytest.mark.parametrize(
    ("speedups", "expected"),
    [
        ([1.5, 1.2, 2.0], "faster"),
        ([0.8, 0.9, 1.1], "slower"),
        ([None, None], "did not reach"),
        ([2.0, None, 3.0], "mixed (2 of 3 reached)"),
    ],
)
def test_verdict_never_claims_a_speedup_for_a_repeat_that_did_not_reach(speedups, expected):
    assert verdict(speedups) == expected


@pytest.mark.parametrize(
    ("savings", "expected"),
    [
        ([1.0, 1.0, 1.0], "same compute"),  # exact counts: a technique that changes no op
        ([1.0, 1.11, 1.0], "same compute"),
        ([1.0, 0.9, 1.0], "same compute"),
        ([0.9, 1.0, 0.95], "more compute"),
        ([1.0, 1.2, 1.3], "less compute"),
        ([1.0, None, 1.0], "mixed (2 of 3 reached)"),
    ],
)
def test_compute_verdict_calls_exactly_equal_flops_the_same_compute(savings, expected):
    assert compute_verdict(savings) == expected


def test_schedule_warms_up_then_decays_fully_to_zero():
    total, warmup = 100, 10
    factors = [warmup_cosine_factor(s, total, warmup) for s in range(total + 5)]
    assert factors[0] < factors[5] < factors[9] <= 1.0
    assert factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :]))
    assert factors[total - 1] < 1e-3 and factors[total] == 0.0 and factors[-1] == 0.0


def test_eval_schedule_evaluates_the_last_step():
    assert eval_schedule(300, 10) == (30, 300)
    every, steps = eval_schedule(301, 10)
    assert steps % every == 0 and steps >= 301


def test_eval_schedule_rejects_zero_steps():
    with pytest.raises(ConfigError, match="at least 1"):
        eval_schedule(0, 10)
