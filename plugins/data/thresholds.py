"""Which samples a score keeps: thresholds and quantiles, pure functions.

Scores that are NaN (a text the model could not score) are never kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of the finite ``values`` (numpy's default method)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q={q} must be in [0, 1]")
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        raise ValueError("no finite scores to take a quantile of")
    pos = q * (len(finite) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(finite) - 1)
    return finite[lo] + (finite[hi] - finite[lo]) * (pos - lo)


def bounds(
    scores: Sequence[float],
    min_score: float | None = None,
    max_score: float | None = None,
    min_quantile: float | None = None,
    max_quantile: float | None = None,
) -> tuple[float, float]:
    """The inclusive ``[low, high]`` range the options describe (the tighter of value and quantile)."""
    low, high = -math.inf, math.inf
    if min_score is not None:
        low = max(low, min_score)
    if max_score is not None:
        high = min(high, max_score)
    if min_quantile is not None:
        low = max(low, quantile(scores, min_quantile))
    if max_quantile is not None:
        high = min(high, quantile(scores, max_quantile))
    return low, high


def keep_in_range(scores: Sequence[float], low: float, high: float, within: Sequence[int] | None = None) -> list[int]:
    """Indices (ascending) whose score lies in ``[low, high]``, optionally only among ``within``."""
    candidates = range(len(scores)) if within is None else sorted(within)
    return [i for i in candidates if not math.isnan(scores[i]) and low <= scores[i] <= high]
