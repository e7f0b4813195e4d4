"""Time points, schedule shapes and the Schedule model: units, boundaries, monotonicity, errors,
and that a real Trainer's progress is counted in optimizer steps under gradient accumulation."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_eff.errors import ConfigError
from lightning_eff.schedule import (
    SHAPES,
    Schedule,
    TimePoint,
    cubic,
    every,
    interpolate,
    samples_per_step,
    to_steps,
    tokens_per_step,
    training_progress,
)
from lightning_eff.testing import quiet_trainer_kwargs

progress = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)

# -- time points -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value", "unit"),
    [
        (500, 500, "steps"),
        ("500steps", 500, "steps"),
        (" 500 step ", 500, "steps"),
        ("500", 500, "steps"),
        ("10_000steps", 10000, "steps"),
        (0.3, 0.3, "fraction"),
        ("0.3frac", 0.3, "fraction"),
        ("30%", 0.3, "fraction"),
        ("0.5", 0.5, "fraction"),
        ("10000samples", 10000, "samples"),
        ("2e6tokens", 2_000_000, "tokens"),
    ],
)
def test_time_point_reads_every_documented_format(raw, value, unit):
    point = TimePoint.parse(raw)
    assert point.unit == unit
    assert point.value == pytest.approx(value)


def test_int_one_is_a_step_and_float_one_is_the_end_of_the_run():
    assert to_steps(1, 200) == 1
    assert to_steps(1.0, 200) == 200


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("abc", "cannot read time point"),
        ("5parsecs", "unknown unit 'parsecs'"),
        ("3ep", "is in epochs"),
        (1.5, "must be in [0, 1]"),
        (500.0, "write the integer 500"),
        ("150%", "must be in [0, 1]"),
        (-3, "must be a finite number >= 0"),
        ("2.5steps", "must be a whole number"),
        (True, "is a bool"),
        ([1], "has type list"),
    ],
)
def test_bad_time_point_error_names_the_accepted_formats(raw, fragment):
    with pytest.raises(ConfigError) as info:
        TimePoint.parse(raw)
    assert fragment in str(info.value)


def test_time_point_as_pydantic_field_parses_and_dumps_to_the_plainest_spelling():
    class Options(BaseModel):
        start: TimePoint
        end: TimePoint

    options = Options(start="10000samples", end=0.7)
    assert options.start == TimePoint(10000, "samples")
    assert options.model_dump() == {"start": "10000samples", "end": 0.7}
    assert Options.model_validate_json(options.model_dump_json()) == options


def test_time_point_field_error_is_a_validation_error_with_the_message():
    class Options(BaseModel):
        start: TimePoint

    with pytest.raises(ValidationError, match="unknown unit 'bananas'"):
        Options(start="3bananas")


def test_time_point_json_schema_lists_the_three_spellings():
    class Options(BaseModel):
        start: TimePoint

    schema = Options.model_json_schema()["properties"]["start"]
    assert [s["type"] for s in schema["anyOf"]] == ["integer", "number", "string"]


@given(st.one_of(st.integers(0, 10**9), progress))
def test_time_point_round_trips_through_its_plain_spelling(raw):
    point = TimePoint.parse(raw)
    assert TimePoint.parse(point.plain()) == point
    assert TimePoint.parse(str(point)).unit == point.unit


# -- to_steps --------------------------------------------------------------------------------------


def test_fraction_rounds_to_the_nearest_step():
    assert to_steps(0.5, 3) == 2
    assert to_steps("30%", 1000) == 300


def test_samples_and_tokens_round_up_to_the_step_that_has_seen_them():
    assert to_steps("100samples", 1000, samples_per_step=32) == 4
    assert to_steps("128samples", 1000, samples_per_step=32) == 4
    assert to_steps("2e6tokens", 1000, tokens_per_step=4096) == math.ceil(2e6 / 4096)


def test_samples_without_samples_per_step_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="samples_per_step"):
        to_steps("100samples", 1000)


def test_fraction_of_a_run_of_unknown_length_is_an_error_naming_the_fix():
    with pytest.raises(ConfigError, match="max_steps"):
        to_steps(0.5, math.inf)


def test_steps_need_no_run_length():
    assert to_steps("40steps", math.inf) == 40


# -- shapes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine", "cubic"])
def test_continuous_shapes_go_from_zero_to_one(name):
    assert SHAPES[name](0.0) == pytest.approx(0.0)
    assert SHAPES[name](1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(SHAPES))
@given(a=progress, b=progress)
def test_every_shape_is_monotone_and_stays_in_the_unit_interval(name, a, b):
    low, high = sorted((a, b))
    shape = SHAPES[name]
    assert 0.0 <= shape(low) <= shape(high) <= 1.0


def test_constant_changes_at_once_and_step_at_the_end():
    assert interpolate(0.0, 1.0, 10, 10, 20, "constant") == 1.0
    assert interpolate(0.0, 1.0, 19, 10, 20, "step") == 0.0
    assert interpolate(0.0, 1.0, 20, 10, 20, "step") == 1.0


@given(t=st.integers(0, 1000), s_i=st.floats(0, 0.5), s_f=st.floats(0.5, 0.99))
def test_cubic_interpolation_is_zhu_and_gupta(t, s_i, s_f):
    t0, t_end = 100, 700
    expected = (
        s_i if t < t0 else s_f if t >= t_end else s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** 3
    )
    assert interpolate(s_i, s_f, t, t0, t_end, cubic) == pytest.approx(expected)


def test_interpolate_holds_start_before_and_end_after_the_window():
    assert interpolate(2.0, 5.0, 9, 10, 20) == 2.0
    assert interpolate(2.0, 5.0, 15, 10, 20) == pytest.approx(3.5)
    assert interpolate(2.0, 5.0, 21, 10, 20) == 5.0


def test_unknown_shape_lists_the_known_ones():
    with pytest.raises(ConfigError, match="cosine"):
        interpolate(0, 1, 5, 0, 10, "exponential")


def test_every_counts_from_the_start_step():
    assert [t for t in range(12) if every(4, t, t_start=2)] == [2, 6, 10]


def test_every_rejects_a_zero_interval():
    with pytest.raises(ConfigError, match="at least 1"):
        every(0, 5)


# -- Schedule --------------------------------------------------------------------------------------


def test_schedule_start_after_end_names_both_values():
    with pytest.raises(ValidationError, match=r"start=500 is after end=100"):
        Schedule(start=500, end=100)


def test_schedule_in_mixed_units_checks_the_order_once_the_run_length_is_known():
    schedule = Schedule(start=500, end=0.1)
    with pytest.raises(ConfigError, match=r"start=500steps \(step 500\) is after end=0.1frac \(step 100\)"):
        schedule.value_at(0, 1000)


def test_schedule_value_at_boundaries():
    schedule = Schedule(start=0.1, end=0.7, shape="cubic", start_value=0.0, end_value=0.8)
    assert schedule.value_at(0, 1000) == 0.0
    assert schedule.value_at(100, 1000) == 0.0
    assert schedule.value_at(700, 1000) == pytest.approx(0.8)
    assert schedule.value_at(1000, 1000) == pytest.approx(0.8)


def test_schedule_holds_its_value_between_update_steps():
    schedule = Schedule(start=0, end=100, interval=10)
    assert schedule.value_at(10, 1000) == schedule.value_at(19, 1000) == pytest.approx(0.1)
    assert schedule.value_at(20, 1000) == pytest.approx(0.2)


def test_schedule_updates_every_interval_and_at_the_end():
    schedule = Schedule(start=5, end=30, interval=10)
    assert [t for t in range(40) if schedule.is_update_step(t, 1000)] == [5, 15, 25, 30]


@given(a=st.integers(0, 1200), b=st.integers(0, 1200), interval=st.integers(1, 50))
def test_rising_schedule_never_falls(a, b, interval):
    schedule = Schedule(start=0.2, end=0.8, shape="cosine", start_value=0.1, end_value=0.9, interval=interval)
    low, high = sorted((a, b))
    assert schedule.value_at(low, 1000) <= schedule.value_at(high, 1000)


def test_schedule_problems_flag_an_end_after_the_run():
    (problem,) = Schedule(end=5000).problems(total_steps=1000)
    assert "end=5000steps (step 5000) is after the run's last step 1000" in problem


def test_schedule_dump_rebuilds_the_same_schedule():
    schedule = Schedule(start="2e6tokens", end=0.9, shape="cubic", interval="1%")
    assert Schedule(**schedule.model_dump()) == schedule


# -- a real Trainer --------------------------------------------------------------------------------


class _MLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        self.seen: list[tuple[int, int | float]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(training_progress(self.trainer))
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n: int = 32, batch_size: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 4), torch.randint(0, 2, (n,))), batch_size=batch_size)


def test_training_progress_counts_optimizer_steps_under_gradient_accumulation():
    model = _MLP()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=6, accumulate_grad_batches=2))
    trainer.fit(model, _loader())
    # 12 batches for 6 optimizer steps: each step is reported for both of its micro-batches
    assert [s for s, _ in model.seen] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert {total for _, total in model.seen} == {6}


def test_training_progress_total_from_epochs_divides_by_accumulation():
    model = _MLP()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=2, accumulate_grad_batches=2))
    trainer.fit(model, _loader(n=32, batch_size=4))  # 8 batches an epoch -> 4 optimizer steps
    assert model.seen[-1] == (7, 8)
    assert training_progress(trainer) == (8, 8)


class _Endless(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.randn(4), torch.tensor(0)


class _AsksForProgress(_MLP):
    def training_step(self, batch, batch_idx):
        self.trainer.should_stop = True
        self.seen.append(training_progress(self.trainer, need_total=False))
        with pytest.raises(ConfigError) as info:
            training_progress(self.trainer)
        self.error = str(info.value)
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)


def test_training_progress_of_a_run_of_unknown_length_names_the_fix():
    model = _AsksForProgress()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=-1, max_epochs=-1))
    trainer.fit(model, DataLoader(_Endless(), batch_size=2))
    assert model.seen[0] == (0, math.inf)
    assert "set Trainer(max_steps=...)" in model.error


def test_samples_and_tokens_per_step_count_accumulation_and_ranks():
    class FakeTrainer:
        accumulate_grad_batches = 4
        world_size = 2

    assert samples_per_step(FakeTrainer(), batch_size=8) == 64
    assert tokens_per_step(FakeTrainer(), batch_size=8, sequence_length=128) == 64 * 128
