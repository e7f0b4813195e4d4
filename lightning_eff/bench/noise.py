"""Is a run's timing trustworthy on a shared machine? Pure checks over measured wall times."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from lightning_eff.bench.schema import BatchTimes, Run

SLOW_REPEAT = 2.0  # a repeat this many times its arm's median training time is flagged
DISPERSED_BATCHES = 2.0  # p90 / median batch time above this is flagged

NOISE_METHOD = (
    f"a run is flagged when its training time exceeds {SLOW_REPEAT:g}x its arm's median over repeats "
    f"(needs 3 or more repeats to fire), or when its 90th-percentile batch time exceeds {DISPERSED_BATCHES:g}x "
    "its median batch time (batch end to batch end, validation excluded, no device sync)"
)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of a non-empty sequence (``q`` in [0, 1])."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def batch_times(seconds: Sequence[float]) -> BatchTimes | None:
    if not seconds:
        return None
    return BatchTimes(batches=len(seconds), median=statistics.median(seconds), p90=quantile(seconds, 0.9), max=max(seconds))


def slow_repeats(runs: Sequence[Run], factor: float = SLOW_REPEAT) -> list[tuple[Run, float]]:
    """(run, its arm's median training time) for each run more than ``factor`` x that median."""
    slow = []
    for arm in ("baseline", "recipe"):
        mine = [r for r in runs if r.arm == arm]
        median = statistics.median(r.train_seconds for r in mine) if mine else 0.0
        slow += [(r, median) for r in mine if r.train_seconds > factor * median]
    return slow


def dispersed(run: Run, factor: float = DISPERSED_BATCHES) -> bool:
    t = run.batch_times
    return t is not None and t.median > 0 and t.p90 / t.median > factor


def noisy_runs(runs: Sequence[Run]) -> set[tuple[str, int]]:
    """(arm, seed) of every flagged run."""
    return {(r.arm, r.seed) for r, _ in slow_repeats(runs)} | {(r.arm, r.seed) for r in runs if dispersed(r)}


def noise_warnings(runs: Sequence[Run]) -> list[str]:
    """One line per flagged run, naming the arm and seed and the numbers that flagged it."""
    lines = [
        f"noisy timing: {r.arm} seed {r.seed} trained {r.train_seconds:.2f}s, {r.train_seconds / median:.1f}x its "
        f"arm's median {median:.2f}s (another process competing for the machine?)"
        for r, median in slow_repeats(runs)
    ]
    for r in runs:
        if dispersed(r):
            t = r.batch_times
            lines.append(
                f"noisy timing: {r.arm} seed {r.seed} batch times vary: p90 {t.p90 * 1e3:.1f}ms is {t.p90 / t.median:.1f}x "
                f"the median {t.median * 1e3:.1f}ms"
            )
    return lines
