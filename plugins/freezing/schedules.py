"""Which blocks are frozen at optimizer step t: the pure schedules of the freezing techniques."""

from __future__ import annotations

import math
from collections.abc import Sequence

#: FreezeOut's scalings of the per-block stop times [Brock et al. 2017]
SCALES = {"linear": lambda x: x, "squared": lambda x: x**2, "cubic": lambda x: x**3}


def frozen_block_count(fraction: float, blocks: int) -> int:
    """``floor(fraction * blocks)``, robust to float noise (0.75 * 4 is 3, not 2.9999)."""
    return min(blocks, math.floor(fraction * blocks + 1e-9))


# --- ProgressiveFreezing ----------------------------------------------------------------------------


def progressive_fraction(step: int, start: int, end: int, level: float) -> float:
    """Fraction of the blocks frozen after optimizer step ``step``: 0 until ``start``, then a linear
    rise to ``level`` at ``end`` [Composer's layer freezing, with ``end`` = the run's end]."""
    if step <= start:
        return 0.0
    if step >= end:
        return level
    return level * (step - start) / (end - start)


# --- FreezeOut --------------------------------------------------------------------------------------


def freezeout_stop_fractions(blocks: int, t0: float, scale: str = "cubic") -> list[float]:
    """Fraction of the run at which block ``i`` stops: ``scale(t0 + (1 - t0) * i / (L - 1))``.

    The last block (the head) gets ``scale(1) = 1``: it trains to the end, as in the paper where
    the classifier never freezes."""
    if blocks == 1:
        return [1.0]
    return [SCALES[scale](t0 + (1.0 - t0) * i / (blocks - 1)) for i in range(blocks)]


def freezeout_lr_factor(step: int, stop_step: int, total_steps: int, scale_lr: bool) -> float:
    """Multiplier of a block's learning rate for the update made at step ``step``: cosine from 1 to 0
    at ``stop_step``; divided by ``stop_step / total_steps`` when ``scale_lr`` so that early-stopping
    blocks get a comparable total learning rate [FreezeOut's ``scale_lr``]. A block that never stops
    keeps the user's schedule (1)."""
    if stop_step >= total_steps:
        return 1.0
    if step >= stop_step:
        return 0.0
    factor = 0.5 * (1.0 + math.cos(math.pi * step / stop_step))
    return factor * total_steps / stop_step if scale_lr else factor


def stopped_prefix(step: int, stop_steps: Sequence[int]) -> int:
    """How many leading blocks have reached their stop step (stop steps rise with depth)."""
    count = 0
    while count < len(stop_steps) and stop_steps[count] <= step:
        count += 1
    return count


# --- AdaptiveFreezing -------------------------------------------------------------------------------


def relative_changes(previous: Sequence[float], current: Sequence[float]) -> list[float]:
    """``|g_now - g_before| / g_before`` of each block's mean gradient norm over two windows."""
    return [abs(c - p) / p if p > 0 else (0.0 if c == 0 else math.inf) for p, c in zip(previous, current)]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    if math.isinf(ordered[low]) or math.isinf(ordered[high]):
        return ordered[low] if position == low else ordered[high]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def slow_prefix(changes: Sequence[float], q: float) -> int:
    """Length of the longest prefix of blocks whose gradient-norm change is at most the ``q``-th
    percentile of all the changes given: those blocks have converged relative to the rest
    [AutoFreeze, Liu et al. 2021; a block is frozen only after every block before it]."""
    if not changes:
        return 0
    threshold = percentile(changes, q)
    count = 0
    while count < len(changes) and changes[count] <= threshold:
        count += 1
    return count
