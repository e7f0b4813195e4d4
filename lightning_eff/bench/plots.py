"""Quality curves as PNG: one line per run, against training seconds and against steps."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt

from lightning_eff.bench.schema import BenchResult

COLORS = {"baseline": "#1f77b4", "recipe": "#ff7f0e"}
STYLES = {"baseline": "-", "recipe": "--"}


def plot_curves(result: BenchResult, x: str, path: Path) -> Path:
    """``x``: ``train_seconds`` or ``step``."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for run in result.runs:
        xs = [getattr(p, x) for p in run.curve]
        ys = [p.quality for p in run.curve]
        ax.plot(xs, ys, STYLES[run.arm], color=COLORS[run.arm], marker=".", alpha=0.85, label=f"{run.arm} (seed {run.seed})")
    targets = [c.target_quality for c in result.comparisons]
    if targets:
        ax.axhline(statistics.median(targets), color="grey", linestyle=":", linewidth=1, label="baseline final (median)")
    metric = result.task.metric
    ax.set_xlabel("training time (s, validation excluded)" if x == "train_seconds" else "optimizer step")
    ax.set_ylabel(f"{metric} ({'higher' if result.task.higher_is_better else 'lower'} is better)")
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
