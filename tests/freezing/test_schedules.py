"""The pure schedules: which blocks are frozen at step t, FreezeOut's stop times and learning-rate
factors, AdaptiveFreezing's gradient-norm statistics, and the backward timer."""

import itertools
import math

import pytest

from lightning_eff.plugins.freezing import backward_timer
from lightning_eff.plugins.freezing.backward_timer import BackwardTimer
from lightning_eff.plugins.freezing.schedules import (
    freezeout_lr_factor,
    freezeout_stop_fractions,
    frozen_block_count,
    percentile,
    progressive_fraction,
    relative_changes,
    slow_prefix,
    stopped_prefix,
)


def test_progressive_fraction_is_zero_until_start_then_linear_to_level():
    assert progressive_fraction(50, start=50, end=100, level=0.8) == 0.0
    assert progressive_fraction(75, 50, 100, 0.8) == pytest.approx(0.4)
    assert progressive_fraction(100, 50, 100, 0.8) == 0.8
    assert progressive_fraction(500, 50, 100, 0.8) == 0.8
    ramp = [progressive_fraction(t, 10, 90, 1.0) for t in range(100)]
    assert all(a <= b for a, b in itertools.pairwise(ramp))


def test_frozen_block_count_floors_without_float_noise():
    assert frozen_block_count(0.75, 4) == 3
    assert frozen_block_count(0.7 * 10 / 10, 10) == 7
    assert frozen_block_count(0.2, 4) == 0
    assert frozen_block_count(1.0, 5) == 5


def test_freezeout_stop_times_are_cubic_from_t0_and_the_head_never_stops():
    stops = freezeout_stop_fractions(5, t0=0.8, scale="cubic")
    assert stops[0] == pytest.approx(0.8**3)
    assert stops[2] == pytest.approx(0.9**3)
    assert stops[-1] == 1.0
    assert stops == sorted(stops)
    assert freezeout_stop_fractions(3, 0.5, "linear") == [0.5, 0.75, 1.0]


def test_freezeout_lr_factor_is_cosine_to_zero_at_the_stop_step():
    assert freezeout_lr_factor(0, stop_step=50, total_steps=100, scale_lr=False) == 1.0
    assert freezeout_lr_factor(25, 50, 100, False) == pytest.approx(0.5)
    assert freezeout_lr_factor(50, 50, 100, False) == 0.0
    assert freezeout_lr_factor(25, 50, 100, True) == pytest.approx(0.5 / 0.5)  # scaled by 1 / (t_i / T)
    assert freezeout_lr_factor(99, 100, 100, True) == 1.0  # the head keeps the user's schedule


def test_stopped_prefix_counts_blocks_past_their_stop():
    assert stopped_prefix(10, [5, 10, 20, 100]) == 2
    assert stopped_prefix(4, [5, 10, 20, 100]) == 0


def test_percentile_matches_linear_interpolation():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3], 0) == 1 and percentile([4, 1, 3], 100) == 4
    assert percentile([1.0, math.inf], 0) == 1.0


def test_relative_changes_and_the_slow_prefix():
    changes = relative_changes([1.0, 2.0, 4.0, 1.0], [1.1, 2.1, 2.0, 2.0])
    assert changes == pytest.approx([0.1, 0.05, 0.5, 1.0])
    # median of the changes is 0.3: the first two blocks changed less, the third did not
    assert slow_prefix(changes, 50) == 2
    assert slow_prefix([0.9, 0.01, 0.01, 0.01], 50) == 0  # a block is frozen only after those before it
    assert relative_changes([0.0], [0.0]) == [0.0]


def test_backward_timer_reports_saving_against_the_unfrozen_median(monkeypatch):
    clock = iter(range(10_000))
    monkeypatch.setattr(backward_timer.time, "perf_counter", lambda: float(next(clock)))
    timer, device = BackwardTimer(), __import__("torch").device("cpu")

    def measure(seconds, frozen):
        timer.start(0, device)
        for _ in range(seconds - 1):
            next(clock)
        timer.stop(device, frozen)

    for _ in range(backward_timer.WARMUP_STEPS):
        measure(100, False)  # ignored
    for _ in range(5):
        measure(8, False)
    timer.frozen_set_changed()
    for _ in range(5):
        measure(2, True)
    metrics = timer.metrics()
    assert metrics["backward_seconds_unfrozen"] == 8 and metrics["backward_seconds"] == 2
    assert metrics["backward_time_saved"] == pytest.approx(0.75)
