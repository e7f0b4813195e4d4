"""Noisy-timing flags, spreads of one value, and the plots' clipping: pure functions over runs."""

import pytest

from lightning_eff.bench.html import text
from lightning_eff.bench.noise import (
    batch_times,
    dispersed,
    noise_warnings,
    noisy_runs,
    quantile,
    slow_repeats,
)
from lightning_eff.bench.plots import MARKERS, caption, clip_bound, clipping, height_at
from lightning_eff.bench.quality import spread
from lightning_eff.bench.schema import Point, Run, Spread
from lightning_eff.bench.table import delta_text, fmt_flops, fmt_spread, spread_row


def make_run(arm="baseline", seed=0, train_seconds=1.0, batch=(0.01, 0.012, 0.011), ends=None) -> Run:
    end = train_seconds if ends is None else ends
    return Run(
        arm=arm, repeat=seed, seed=seed, steps=10, epochs=1, estimated_steps=10, train_seconds=train_seconds,
        wall_seconds=train_seconds, samples=10, tokens=None, samples_per_second=1.0, tokens_per_second=None,
        peak_memory_mb=1.0, memory_kind="cpu_peak_rss", final_quality=0.5, best_quality=0.5, time_to_quality=None,
        step_to_quality=None, parameters=1, trainable_parameters=1, nonzero_parameters=1, sparsity=0.0,
        frozen_fraction=0.0, final_lr_fraction=None, flops=100, forward_flops=40, backward_flops=60, setup_flops=0,
        uncounted_ops=[], flops_to_quality=None, batch_times=batch_times(batch), efficiency_metrics={},
        technique_seconds={}, savings={},
        curve=[Point(step=0, train_seconds=0.0, quality=0.1, flops=0), Point(step=10, train_seconds=end, quality=0.5, flops=100)],
    )


def test_quantile_interpolates_and_batch_times_summarise():
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.9) == pytest.approx(4.6)
    t = batch_times([0.1] * 9 + [1.0])
    assert (t.batches, t.median, t.max) == (10, 0.1, 1.0) and t.p90 == pytest.approx(0.19)
    assert batch_times([]) is None


def test_a_repeat_over_twice_its_arms_median_is_flagged_and_named():
    runs = [make_run(seed=0, train_seconds=1.0), make_run(seed=1, train_seconds=1.1), make_run(seed=2, train_seconds=2.5)]
    assert [(r.seed, median) for r, median in slow_repeats(runs)] == [(2, 1.1)]
    lines = noise_warnings(runs)
    assert len(lines) == 1 and "baseline seed 2 trained 2.50s, 2.3x its arm's median 1.10s" in lines[0]


def test_arms_are_judged_apart_and_two_repeats_cannot_flag_each_other():
    runs = [make_run(seed=0, train_seconds=1.0), make_run("recipe", seed=0, train_seconds=5.0)]
    assert slow_repeats(runs) == []  # the recipe is slower, not noisy
    assert slow_repeats([make_run(seed=0, train_seconds=1.0), make_run(seed=1, train_seconds=9.0)]) == []


def test_dispersed_batch_times_are_flagged():
    steady = make_run(batch=[0.01] * 20)
    bursty = make_run(seed=1, batch=[0.01] * 16 + [0.05] * 4)  # p90 0.05 = 5x the median
    assert not dispersed(steady) and dispersed(bursty)
    lines = noise_warnings([steady, bursty])
    assert len(lines) == 1 and "baseline seed 1 batch times vary: p90 50.0ms is 5.0x the median 10.0ms" in lines[0]


def test_the_report_marks_slow_and_dispersed_runs_alike():
    runs = [make_run(seed=0, train_seconds=1.0), make_run(seed=1, train_seconds=1.1), make_run(seed=2, train_seconds=2.5),
            make_run("recipe", seed=0, batch=[0.01] * 16 + [0.05] * 4), make_run("recipe", seed=1)]
    assert noisy_runs(runs) == {("baseline", 2), ("recipe", 0)}


def test_one_value_is_printed_once_with_1_run():
    assert fmt_spread(Spread(min=1.5, median=1.5, max=1.5, n=1), "x") == "1.50x (1 run)"
    assert fmt_spread(Spread(min=1.0, median=1.5, max=2.0, n=3), "x") == "1.00x / 1.50x / 2.00x"
    assert spread([None, 2.0]).n == 1
    assert delta_text([0.25]) == "delta +0.2500 (1 run)"


def test_each_arms_spread_prints_a_lone_reached_repeat_once():
    reached = [make_run("recipe", seed=s).model_copy(update={"time_to_quality": t}) for s, t in ((0, 2.0), (1, None), (2, None))]
    baseline = [make_run(seed=s).model_copy(update={"time_to_quality": t}) for s, t in ((0, 3.0), (1, 4.0), (2, 6.0))]
    row = spread_row(_Result(baseline + reached), "  min / median / max", lambda r: r.time_to_quality)
    assert (row.baseline, row.recipe) == ("3.00 / 4.00 / 6.00", "2.00 (1 run)")


def test_flops_format_with_si_prefixes():
    assert [fmt_flops(v) for v in (512, 5.137e9, 1.2e12, 3.0e15)] == ["512", "5.14G", "1.2T", "3P"]


def test_clip_bound_cuts_only_outliers_and_judges_arms_apart():
    assert clip_bound({"baseline": [10.0, 11.0, 40.0], "recipe": [5.0, 6.0, 5.5]}) == pytest.approx(16.5)
    assert clip_bound({"baseline": [10.0, 11.0, 12.0], "recipe": [5.0, 6.0, 5.5]}) is None
    # A recipe arm that trains twice the steps ends twice as late: not an outlier.
    assert clip_bound({"baseline": [10.0, 10.5, 11.0], "recipe": [20.0, 21.0, 22.0]}) is None


class _Result:
    def __init__(self, runs):
        self.runs = runs


def test_a_clipped_run_is_named_in_the_caption_with_its_end():
    runs = [make_run(seed=0, ends=10.0), make_run(seed=1, ends=11.0), make_run(seed=2, ends=40.0)]
    bound, cut = clipping(_Result(runs), "train_seconds")
    assert bound == pytest.approx(16.5) and [r.seed for r in cut] == [2]
    note = caption(_Result(runs), "train_seconds")
    assert "clipped at 16.5s" in note and "baseline seed 2 ends at 40.0s" in note
    assert "clipped" not in caption(_Result(runs[:2]), "train_seconds")
    assert "marker: seed" in note and len(set(MARKERS)) == len(MARKERS)


def test_the_clip_arrow_sits_where_the_line_crosses_the_bound():
    assert height_at([0.0, 10.0, 40.0], [0.1, 0.3, 0.9], 25.0) == pytest.approx(0.6)
    assert height_at([0.0, 10.0], [0.1, 0.3], 50.0) == 0.3


def test_runs_without_counted_flops_are_left_out_of_the_flops_plot():
    uncounted = make_run(seed=3).model_copy(update={"curve": [Point(step=0, train_seconds=0.0, quality=0.1)]})
    _, cut = clipping(_Result([make_run(), uncounted]), "flops")
    assert cut == []


def test_method_text_renders_code_spans_not_backticks():
    assert text("cosine to 0 at `max_steps` & <b>") == "cosine to 0 at <code>max_steps</code> &amp; &lt;b&gt;"

