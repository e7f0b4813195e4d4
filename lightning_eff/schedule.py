"""Time points and schedule shapes: when a technique acts, and how much.

Schedules speak **optimizer steps** (``trainer.global_step``), never ``batch_idx`` or epochs: with
``accumulate_grad_batches=4`` a batch index runs four times faster than the optimizer, and a
sub-epoch LLM run never finishes an epoch. The run's length is
``trainer.estimated_stepping_batches``, which already accounts for accumulation, ``max_steps``,
``max_epochs`` and ``limit_train_batches``.

A :class:`TimePoint` names a moment in training in one of four units and resolves to an optimizer
step with :func:`to_steps`:

=================  ==============================  ============================================
written            unit                            resolves to
=================  ==============================  ============================================
``500``            steps (an ``int``)              step 500
``"500steps"``     steps                           step 500
``0.3``            fraction (a ``float`` in [0,1]) ``round(0.3 * total_steps)``
``"0.3frac"``      fraction                        same
``"30%"``          fraction                        same
``"10000samples"`` samples                         ``ceil(10000 / samples_per_step)``
``"2e6tokens"``    tokens                          ``ceil(2e6 / tokens_per_step)``
=================  ==============================  ============================================

Given the Trainer (``to_steps(point, total, trainer=trainer)``), samples and tokens per step are read
from the training DataLoader: ``batch_size x accumulate_grad_batches x world_size`` samples, times
the length of a sample's ``input_ids`` for tokens (fixed-length samples given as mappings).

An ``int`` is always steps and a ``float`` always a fraction: ``1`` is the first step, ``1.0`` the
end of the run. Strings of a bare number follow the same rule (``"500"`` steps, ``"0.5"``
fraction), so values from a command line mean what they would in YAML.

Shapes map progress through a window ``p`` in [0, 1] to how far the value has moved from its start
to its end value, also in [0, 1]; :func:`interpolate` and :class:`Schedule` put them to use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import core_schema

from lightning_eff.errors import ConfigError

if TYPE_CHECKING:
    import lightning.pytorch as pl

Unit = Literal["steps", "fraction", "samples", "tokens"]

_UNIT_SUFFIXES: dict[str, Unit] = {
    "steps": "steps",
    "step": "steps",
    "frac": "fraction",
    "fraction": "fraction",
    "%": "fraction",
    "samples": "samples",
    "sample": "samples",
    "tokens": "tokens",
    "token": "tokens",
    "tok": "tokens",
}
_SUFFIX_OF: dict[Unit, str] = {"steps": "steps", "fraction": "frac", "samples": "samples", "tokens": "tokens"}
_TIME_RE = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+)\s*([a-zA-Z%]*)\s*$")
_FORMATS = "500 or '500steps' (optimizer steps), 0.3 / '0.3frac' / '30%' (fraction of the run), '10000samples', '2e6tokens'"


@dataclass(frozen=True)
class TimePoint:
    """A moment in training: ``value`` in ``unit`` (steps, fraction, samples or tokens).

    Usable directly as a pydantic field type (``start: TimePoint = TimePoint.parse(0.1)``): it
    accepts every format in the module docstring and serialises back to the plainest one (``int``
    for steps, ``float`` for fractions, ``"10000samples"`` otherwise), so a config dumps to what a
    user would have written.
    """

    value: int | float
    unit: Unit

    @classmethod
    def parse(cls, raw: TimeLike) -> TimePoint:
        """Read a time point; raise :class:`ConfigError` naming the accepted formats when it is bad."""
        if isinstance(raw, TimePoint):
            return raw
        if isinstance(raw, bool):  # True is an int in Python; never a time
            raise ConfigError(f"time point {raw!r} is a bool; write {_FORMATS}")
        if isinstance(raw, int):
            return cls._checked(raw, "steps", raw)
        if isinstance(raw, float):
            return cls._checked(raw, "fraction", raw)
        if isinstance(raw, str):
            return cls._parse_string(raw)
        raise ConfigError(f"time point {raw!r} has type {type(raw).__name__}; write {_FORMATS}")

    @classmethod
    def _parse_string(cls, raw: str) -> TimePoint:
        match = _TIME_RE.match(raw)
        if match is None:
            raise ConfigError(f"cannot read time point {raw!r}; write {_FORMATS}")
        number, suffix = match.group(1).replace("_", ""), match.group(2).lower()
        if suffix in ("ep", "epoch", "epochs"):
            raise ConfigError(
                f"time point {raw!r} is in epochs; schedules speak optimizer steps: write a fraction of the run "
                f"('0.5frac') or steps ('500steps'), which stay right under gradient accumulation"
            )
        if not suffix:  # a bare number keeps Python's rule: int = steps, float = fraction
            is_int = re.fullmatch(r"[0-9]+", number) is not None
            return cls._checked(
                int(number) if is_int else float(number), "steps" if is_int else "fraction", raw
            )
        unit = _UNIT_SUFFIXES.get(suffix)
        if unit is None:
            raise ConfigError(f"time point {raw!r} has unknown unit '{suffix}'; write {_FORMATS}")
        value = float(number) / 100.0 if suffix == "%" else float(number)
        return cls._checked(value, unit, raw)

    @classmethod
    def _checked(cls, value: float, unit: Unit, raw: Any) -> TimePoint:
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"time point {raw!r} must be a finite number >= 0")
        if unit == "fraction":
            if value > 1.0:
                hint = (
                    f"; for optimizer steps write the integer {int(value)} or '{int(value)}steps'"
                    if value.is_integer()
                    else ""
                )
                raise ConfigError(
                    f"time point {raw!r} is read as a fraction of the run and must be in [0, 1]{hint}"
                )
            return cls(float(value), unit)
        if not float(value).is_integer():
            raise ConfigError(f"time point {raw!r}: a number of {unit} must be a whole number")
        return cls(int(value), unit)

    def plain(self) -> int | float | str:
        """The simplest spelling that parses back to this point (used when serialising configs)."""
        if self.unit == "steps":
            return int(self.value)
        if self.unit == "fraction":
            return float(self.value)
        return str(self)

    def __str__(self) -> str:
        number = f"{self.value:g}" if self.unit == "fraction" else str(int(self.value))
        return f"{number}{_SUFFIX_OF[self.unit]}"

    # -- pydantic ----------------------------------------------------------------------------------

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda point: point.plain()),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "integer", "minimum": 0, "description": "optimizer steps"},
                {"type": "number", "minimum": 0, "maximum": 1, "description": "fraction of the run"},
                {"type": "string", "pattern": _TIME_RE.pattern},
            ],
            "description": f"a time point: {_FORMATS}",
        }


#: what a technique's ``__init__`` accepts for a time point (its Config turns it into a TimePoint)
TimeLike = int | float | str | TimePoint


def to_steps(
    point: TimeLike,
    total_steps: float,
    samples_per_step: int | None = None,
    tokens_per_step: int | None = None,
    trainer: pl.Trainer | None = None,
) -> int:
    """The optimizer step a time point names.

    Fractions round to the nearest step (``0.5`` of 3 steps is step 2); samples and tokens round up,
    to the first step by whose end at least that many have been seen. ``total_steps`` may be
    ``math.inf`` as long as the point is not a fraction. Samples and tokens per step not given are
    read from ``trainer``'s training DataLoader (:func:`per_step_of`).
    """
    point = TimePoint.parse(point)
    if point.unit == "steps":
        return int(point.value)
    if point.unit == "fraction":
        if not math.isfinite(total_steps):
            raise ConfigError(
                f"time point {point} is a fraction of the run, but the run's length is unknown "
                f"(trainer.estimated_stepping_batches={total_steps}): set Trainer(max_steps=...), or give the time "
                f"in steps"
            )
        return int(point.value * total_steps + 0.5)
    per_step = samples_per_step if point.unit == "samples" else tokens_per_step
    if (per_step is None or per_step <= 0) and trainer is not None:
        per_step = per_step_of(trainer, point)
    if per_step is None or per_step <= 0:
        raise ConfigError(
            f"time point {point} is in {point.unit}, which needs {point.unit}_per_step (got {per_step}): "
            f"pass {point.unit}_per_step= or trainer= to to_steps, or give the time in steps or as a fraction"
        )
    return math.ceil(point.value / per_step)


def step_resolver(trainer: pl.Trainer, total_steps: float) -> Callable[[TimeLike], int]:
    """``to_steps`` for one fit: samples and tokens per step read from its training DataLoader."""
    return lambda point: to_steps(point, total_steps, trainer=trainer)


def _first_train_loader(trainer: pl.Trainer) -> Any:
    """The fit's (first) training DataLoader: the loaded one, else the one the data source gives
    (preflight and ``setup`` run before Lightning loads it)."""
    loaders = getattr(trainer, "train_dataloader", None)
    if loaders is None:
        source = getattr(trainer.fit_loop, "_data_source", None)
        loaders = source.dataloader() if source is not None and source.is_defined() else None
    while isinstance(loaders, (dict, list, tuple)) and loaders:
        loaders = next(iter(loaders.values())) if isinstance(loaders, dict) else loaders[0]
    return loaders


def _sequence_length(loader: Any) -> int | None:
    """The length of a training sample's ``input_ids`` (samples given as mappings), else None."""
    from collections.abc import Mapping, Sized

    dataset = getattr(loader, "dataset", None)
    if dataset is None or not isinstance(dataset, Sized) or len(dataset) == 0:
        return None
    sample = dataset[0]
    ids = sample.get("input_ids") if isinstance(sample, Mapping) else None
    shape = getattr(ids, "shape", None)
    if shape is not None and len(shape) >= 1:
        return int(shape[-1])
    return len(ids) if isinstance(ids, (list, tuple)) else None


def per_step_of(trainer: pl.Trainer, point: TimePoint) -> int:
    """Samples (or tokens, by ``point``'s unit) one optimizer step of this fit consumes, from the
    training DataLoader's batch size; a ConfigError naming what to set when it cannot be known."""
    fix = f"or give {point} in steps or as a fraction of the run"
    loader = _first_train_loader(trainer)
    if loader is None:
        raise ConfigError(
            f"time point {point} is in {point.unit}, but this fit has no training DataLoader to read the batch size "
            f"from yet: pass train_dataloaders= or a datamodule to Trainer.fit, {fix}"
        )
    batch_size = getattr(loader, "batch_size", None)
    if not batch_size:
        raise ConfigError(
            f"time point {point} is in {point.unit}, but the training DataLoader has no batch_size (it batches through "
            f"a batch_sampler or its dataset), so the {point.unit} per optimizer step are unknown: build it with "
            f"DataLoader(..., batch_size=N), {fix}"
        )
    per_step = samples_per_step(trainer, batch_size)
    if point.unit == "samples":
        return per_step
    length = _sequence_length(loader)
    if length is None:
        raise ConfigError(
            f"time point {point} is in tokens, but the tokens per sample are unknown: they are read from the "
            "'input_ids' of the training dataset's first sample (a mapping of fixed-length sequences); give the "
            f"time in samples, {fix}"
        )
    return per_step * length


# -- reading the Trainer ----------------------------------------------------------------------------


def training_progress(trainer: pl.Trainer, need_total: bool = True) -> tuple[int, int | float]:
    """``(optimizer steps done, optimizer steps of the whole fit)``.

    The step is ``trainer.global_step``, which counts optimizer steps (not batches) and is restored
    on resume. The total is ``trainer.estimated_stepping_batches``; when it is infinite
    (``max_steps=-1`` with an iterable dataset of unknown length) this raises unless ``need_total``
    is False, in which case the total comes back as ``math.inf``.
    """
    total = trainer.estimated_stepping_batches
    if math.isfinite(total):
        total = int(total)
    elif need_total:
        raise ConfigError(
            "the run's length in optimizer steps is unknown (trainer.estimated_stepping_batches is inf, "
            "e.g. max_steps=-1 with an iterable dataset): set Trainer(max_steps=...) or give schedule times in steps"
        )
    return int(trainer.global_step), total


def samples_per_step(trainer: pl.Trainer, batch_size: int) -> int:
    """Samples consumed by one optimizer step across all ranks: batch x accumulation x world size."""
    return int(batch_size) * int(trainer.accumulate_grad_batches) * int(trainer.world_size)


def tokens_per_step(trainer: pl.Trainer, batch_size: int, sequence_length: int) -> int:
    """Tokens consumed by one optimizer step across all ranks (fixed-length sequences)."""
    return samples_per_step(trainer, batch_size) * int(sequence_length)


# -- shapes: progress p in [0, 1] -> how far from start value to end value, in [0, 1] ----------------


def _clip(progress: float) -> float:
    return min(1.0, max(0.0, float(progress)))


def constant(progress: float) -> float:
    """1 everywhere: the end value from the first step of the window on (a one-shot change)."""
    return 1.0


def step(progress: float) -> float:
    """0 until the end of the window, then 1: hold the start value, switch at the window's end."""
    return 1.0 if progress >= 1.0 else 0.0


def linear(progress: float) -> float:
    """``p``: equal change per step."""
    return _clip(progress)


def cosine(progress: float) -> float:
    """``(1 - cos(pi p)) / 2``: slow at both ends of the window."""
    return 0.5 * (1.0 - math.cos(math.pi * _clip(progress)))


def cubic(progress: float) -> float:
    """``1 - (1 - p)**3``: fast early, slow late (Zhu & Gupta 2017, "To prune, or not to prune").

    With :func:`interpolate` it gives their sparsity ``s_f + (s_i - s_f) * (1 - p)**3``: prune hard
    while the network has redundant weights, gently as it has fewer left to lose.
    """
    return 1.0 - (1.0 - _clip(progress)) ** 3


Shape = Literal["constant", "step", "linear", "cosine", "cubic"]
SHAPES: dict[str, Callable[[float], float]] = {
    "constant": constant,
    "step": step,
    "linear": linear,
    "cosine": cosine,
    "cubic": cubic,
}


def shape_function(shape: str | Callable[[float], float]) -> Callable[[float], float]:
    """A shape by name (or a callable, returned as is)."""
    if callable(shape):
        return shape
    try:
        return SHAPES[shape]
    except KeyError:
        raise ConfigError(f"unknown schedule shape {shape!r}: choose one of {sorted(SHAPES)}") from None


def interpolate(
    start_value: float,
    end_value: float,
    t: float,
    t_start: float,
    t_end: float,
    shape: str | Callable[[float], float] = "linear",
) -> float:
    """The value at step ``t``: ``start_value`` before ``t_start``, ``end_value`` from ``t_end`` on,
    and ``start + (end - start) * shape(p)`` with ``p = (t - t_start) / (t_end - t_start)`` between."""
    if t < t_start:
        return float(start_value)
    if t >= t_end:
        return float(end_value)
    progress = (t - t_start) / (t_end - t_start)
    return float(start_value) + (float(end_value) - float(start_value)) * shape_function(shape)(progress)


def every(interval_steps: int, t: int, t_start: int = 0) -> bool:
    """Whether step ``t`` is an update step of "every ``interval_steps`` steps from ``t_start``"."""
    if interval_steps < 1:
        raise ConfigError(f"update interval {interval_steps} must be at least 1 step")
    return t >= t_start and (t - t_start) % interval_steps == 0


def check_window(
    start: TimePoint,
    end: TimePoint,
    interval: TimePoint | None = None,
    what: str = "a schedule",
    interval_name: str = "update_every",
    empty_ok: bool = True,
) -> None:
    """Config-time checks of a ``[start, end]`` window (``ValueError``, which pydantic reports).

    Points in different units (steps vs. a fraction) can only be compared once the run's length is
    known; preflight does that. ``empty_ok=False`` also refuses ``start == end``.
    """
    if start.unit == end.unit and start.value > end.value:
        raise ValueError(f"start={start.plain()} is after end={end.plain()}: {what} must start before it ends")
    if start.unit == end.unit and start.value == end.value and not empty_ok:
        raise ValueError(f"start={start.plain()} equals end={end.plain()}: {what} needs start before end")
    if interval is not None and interval.value == 0:
        raise ValueError(f"{interval_name} must be positive (1 = every optimizer step)")


# -- a schedule as a config object -----------------------------------------------------------------


class Schedule(BaseModel):
    """A value moving from ``start_value`` to ``end_value`` between two time points.

    The value is updated only on update steps (every ``interval`` from ``start``, and at ``end``) and
    held in between, like Zhu & Gupta's mask updates every dt steps. Use it as a field of a
    technique's Config, or alone: ``Schedule(start=0.1, end=0.7, shape="cubic", end_value=0.8)``.
    """

    # validate_default: defaults are written as a user would (0, 1.0) and parsed like user input.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    start: TimePoint = 0  # type: ignore[assignment]
    end: TimePoint = 1.0  # type: ignore[assignment]
    shape: Shape = "linear"
    start_value: float = 0.0
    end_value: float = 1.0
    interval: TimePoint = 1  # type: ignore[assignment]

    @model_validator(mode="after")
    def _start_not_after_end(self) -> Schedule:
        check_window(self.start, self.end, self.interval, interval_name="interval")
        return self

    def resolve(
        self, total_steps: float, samples_per_step: int | None = None, tokens_per_step: int | None = None
    ) -> tuple[int, int, int]:
        """``(start_step, end_step, interval_steps)`` for a run of ``total_steps`` optimizer steps."""
        start = to_steps(self.start, total_steps, samples_per_step, tokens_per_step)
        end = to_steps(self.end, total_steps, samples_per_step, tokens_per_step)
        interval = max(1, to_steps(self.interval, total_steps, samples_per_step, tokens_per_step))
        if start > end:
            raise ConfigError(
                f"schedule start={self.start} (step {start}) is after end={self.end} (step {end}) "
                f"in a run of {total_steps} steps: move start earlier or end later"
            )
        return start, end, interval

    def value_at(
        self,
        step: int,
        total_steps: float,
        samples_per_step: int | None = None,
        tokens_per_step: int | None = None,
    ) -> float:
        """The value in force after the last update step at or before ``step``."""
        start, end, interval = self.resolve(total_steps, samples_per_step, tokens_per_step)
        if start <= step < end:
            step = start + (step - start) // interval * interval
        return interpolate(self.start_value, self.end_value, step, start, end, self.shape)

    def is_update_step(
        self,
        step: int,
        total_steps: float,
        samples_per_step: int | None = None,
        tokens_per_step: int | None = None,
    ) -> bool:
        """Whether the value changes at ``step``: every ``interval`` from ``start``, and at ``end``."""
        start, end, interval = self.resolve(total_steps, samples_per_step, tokens_per_step)
        return step == end or (step < end and every(interval, step, start))

    def problems(
        self, total_steps: float, samples_per_step: int | None = None, tokens_per_step: int | None = None
    ) -> list[str]:
        """Preflight: sentences describing why this schedule cannot work on a run of ``total_steps``."""
        try:
            _, end, _ = self.resolve(total_steps, samples_per_step, tokens_per_step)
        except ConfigError as exc:
            return [str(exc)]
        if math.isfinite(total_steps) and end > total_steps:
            problem = (
                f"schedule end={self.end} (step {end}) is after the run's last step {int(total_steps)}: "
                f"the value never reaches {self.end_value}; end earlier or train longer"
            )
            return [problem]
        return []
