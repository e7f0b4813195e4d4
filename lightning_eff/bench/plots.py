"""Quality curves as PNG: one line per run (colour and line style by arm, marker by seed), against
training seconds, training FLOPs or steps.

One slow run (another process took the machine) would squeeze every other curve into the left
edge, so the x axis stops at 1.5x the latest median end of an arm; runs that go further are cut
there and marked with an arrow and their end (the caption says so too).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt

from lightning_eff.bench.schema import BenchResult, Run
from lightning_eff.bench.table import fmt_flops

COLORS = {"baseline": "#1f77b4", "recipe": "#ff7f0e"}
STYLES = {"baseline": "-", "recipe": "--"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
CLIP_FACTOR = 1.5
X_LABELS = {
    "train_seconds": "training time (s, validation excluded)",
    "flops": "training compute (FLOP, matmul-type ops)",
    "step": "optimizer step",
}


def clip_bound(ends: dict[str, list[float]], factor: float = CLIP_FACTOR) -> float | None:
    """Where to cut the x axis: ``factor`` x the largest per-arm median of the runs' ends, or
    ``None`` when no run ends beyond it (per arm, so a recipe that trains 2x the steps is no outlier)."""
    medians = [statistics.median(v) for v in ends.values() if v]
    if not medians:
        return None
    bound = factor * max(medians)
    return bound if any(e > bound for v in ends.values() for e in v) else None


def _xs(run: Run, x: str) -> list[float | None]:
    return [getattr(p, x) for p in run.curve]


def plotted_runs(result: BenchResult, x: str) -> list[Run]:
    """Runs with a value on this axis at every evaluation (FLOPs may not have been counted)."""
    return [r for r in result.runs if r.curve and all(v is not None for v in _xs(r, x))]


def clipping(result: BenchResult, x: str) -> tuple[float | None, list[Run]]:
    """(x-axis bound or ``None``, the runs cut by it)."""
    runs = plotted_runs(result, x)
    ends: dict[str, list[float]] = {}
    for r in runs:
        ends.setdefault(r.arm, []).append(_xs(r, x)[-1])
    bound = clip_bound(ends)
    return bound, [r for r in runs if bound is not None and _xs(r, x)[-1] > bound]


def height_at(xs: list[float], ys: list[float], x: float) -> float:
    """Where the drawn line crosses ``x`` (straight segments between points); the nearest end outside."""
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1] if x > xs[-1] else ys[0]


def _fmt_x(value: float, x: str) -> str:
    return fmt_flops(value) if x == "flops" else f"{value:.1f}s" if x == "train_seconds" else f"{value:.0f}"


def caption(result: BenchResult, x: str) -> str:
    """What a reader needs to read the plot: markers, and any clipping."""
    text = "Colour and line style: arm; marker: seed; dotted line: the baseline's final quality (median)."
    bound, cut = clipping(result, x)
    if bound is not None:
        ends = ", ".join(f"{r.arm} seed {r.seed} ends at {_fmt_x(_xs(r, x)[-1], x)}" for r in cut)
        text += f" The x axis is clipped at {_fmt_x(bound, x)} ({CLIP_FACTOR:g}x the median run's end); beyond it (arrow): {ends}."
    return text


def plot_curves(result: BenchResult, x: str, path: Path) -> Path:
    """``x``: ``train_seconds``, ``flops`` or ``step``."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    seeds = sorted({r.seed for r in result.runs})
    bound, cut = clipping(result, x)
    for run in plotted_runs(result, x):
        xs, ys = _xs(run, x), [p.quality for p in run.curve]
        marker = MARKERS[seeds.index(run.seed) % len(MARKERS)]
        ax.plot(xs, ys, STYLES[run.arm], color=COLORS[run.arm], marker=marker, markersize=4, alpha=0.85,
                label=f"{run.arm} (seed {run.seed})")
    for run in cut:
        y = height_at(_xs(run, x), [p.quality for p in run.curve], bound)
        ax.annotate(
            f"seed {run.seed}: {_fmt_x(_xs(run, x)[-1], x)}", xy=(bound, y), xytext=(-70, 12), textcoords="offset points",
            fontsize=7, color=COLORS[run.arm], arrowprops={"arrowstyle": "->", "color": COLORS[run.arm]},
        )
    ax.set_xlim(left=0, right=bound)
    targets = [c.target_quality for c in result.comparisons]
    if targets:
        ax.axhline(statistics.median(targets), color="grey", linestyle=":", linewidth=1, label="baseline final (median)")
    ax.set_xlabel(X_LABELS[x] + (" (clipped)" if bound is not None else ""))
    ax.set_ylabel(f"{result.task.metric} ({'higher' if result.task.higher_is_better else 'lower'} is better)")
    ax.set_title(f"{result.task.name}: baseline vs {result.recipe.name}")
    _zoom(ax, result)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _zoom(ax, result: BenchResult) -> None:
    # The first evaluation (untrained model) would flatten everything else: show it, but scale the
    # y axis to the later points.
    later = [p.quality for run in result.runs for p in run.curve[1:]]
    if len(later) >= 2:
        low, high = min(later), max(later)
        pad = 0.05 * (high - low or abs(high) or 1.0)
        ax.set_ylim(low - pad, high + pad)
