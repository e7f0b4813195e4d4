"""Time-to-quality arithmetic: pure functions over recorded evaluation curves.

A curve is a list of evaluation points ``(step, train_seconds, quality, flops)`` in training order.
``train_seconds`` is training wall time only (validation excluded), ``flops`` the cumulative training
FLOPs counted up to that evaluation. Time- and compute-to-quality are read at the *first evaluation
point* whose quality reaches the target: no interpolation between points, so a run is never credited
with a time (or FLOP count) at which nobody measured it (resolution: one evaluation interval).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CurvePoint:
    step: int
    train_seconds: float
    quality: float
    flops: int | None = None


@dataclass(frozen=True)
class Spread:
    min: float
    median: float
    max: float
    n: int = 1  # values it summarises


def compute_to_quality(
    curve: Sequence[CurvePoint], target: float, higher_is_better: bool, tolerance: float = 0.0
) -> int | None:
    """Cumulative training FLOPs at the first evaluation that reaches ``target`` (the time-to-quality
    rule); ``None``: not reached, or FLOPs were not counted."""
    hit = first_reaching(curve, target, higher_is_better, tolerance)
    return hit.flops if hit is not None else None


def reaches(quality: float, target: float, higher_is_better: bool, tolerance: float = 0.0) -> bool:
    """Whether ``quality`` is at least as good as ``target`` (give or take ``tolerance``)."""
    if math.isnan(quality):  # NaN never reaches anything
        return False
    return quality >= target - tolerance if higher_is_better else quality <= target + tolerance


def first_reaching(
    curve: Sequence[CurvePoint], target: float, higher_is_better: bool, tolerance: float = 0.0
) -> CurvePoint | None:
    """The first evaluation point that reaches ``target``; ``None``: the run did not reach it."""
    return next((p for p in curve if reaches(p.quality, target, higher_is_better, tolerance)), None)


def speedup(baseline_seconds: float | None, recipe_seconds: float | None) -> float | None:
    """Baseline time-to-quality over the recipe's; ``None`` when the recipe did not reach the target."""
    if baseline_seconds is None or recipe_seconds is None:
        return None
    if recipe_seconds <= 0:
        return float("inf") if baseline_seconds > 0 else 1.0
    return baseline_seconds / recipe_seconds


def ratio(recipe_value: float | None, baseline_value: float | None) -> float | None:
    """recipe / baseline, ``None`` when either is missing or the baseline is zero."""
    if recipe_value is None or baseline_value is None or baseline_value == 0:
        return None
    return recipe_value / baseline_value


def spread(values: Sequence[float | None]) -> Spread | None:
    """min / median / max of the values that exist; ``None`` when none does."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Spread(min(present), statistics.median(present), max(present), len(present))


def compute_verdict(savings: Sequence[float | None]) -> str:
    """:func:`verdict` for compute-to-quality: ``less compute``, ``same compute``, ``more compute``,
    ``did not reach``, ``mixed (k of K reached)`` (the caller says ``not counted`` when no run counted
    FLOPs). FLOP counts are exact, so a median saving of exactly 1 (a technique that changes no op,
    reaching at the same evaluation) is the same compute, not more."""
    word = verdict(savings)
    if word == "slower" and statistics.median(savings) == 1.0:
        return "same compute"
    return {"faster": "less compute", "slower": "more compute"}.get(word, word)


def verdict(speedups: Sequence[float | None]) -> str:
    """One word for the whole comparison, counting a repeat that did not reach quality as a failure.

    ``faster``: every repeat reached the baseline's quality and the median speed-up is above 1;
    ``slower``: every repeat reached it, median at most 1; ``did not reach``: no repeat reached it;
    ``mixed (k of K reached)`` otherwise: some repeats did not reach it, so no speed-up is claimed.
    """
    if not speedups:
        return "no runs"
    reached = [s for s in speedups if s is not None]
    if not reached:
        return "did not reach"
    if len(reached) < len(speedups):
        return f"mixed ({len(reached)} of {len(speedups)} reached)"
    return "faster" if statistics.median(reached) > 1.0 else "slower"
