"""The two time helpers the pruning techniques share, on top of ``lightning_eff.schedule``."""

from __future__ import annotations

from lightning_eff.schedule import TimePoint, training_progress


def total_steps(trainer) -> float:
    """Optimizer steps of the whole fit (``math.inf`` when unknown; fractions then fail to resolve)."""
    return training_progress(trainer, need_total=False)[1]


def check_time_order(start: TimePoint, end: TimePoint, interval: TimePoint | None = None) -> None:
    """Config-time checks of a [start, end] window given in one unit (mixed units wait for preflight)."""
    if start.unit == end.unit and start.value > end.value:
        raise ValueError(f"start={start.plain()} is after end={end.plain()}: pruning must start before it ends")
    if interval is not None and interval.value == 0:
        raise ValueError("update_every must be positive (1 = every optimizer step)")
