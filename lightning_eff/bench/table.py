"""The comparison table, as rows of formatted cells shared by the terminal and the HTML report.

Every number shown is formatted here from a :class:`BenchResult`, so the printed table, the HTML
table and ``results.json`` cannot disagree (a test re-renders the table from the JSON file).
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_eff.bench.quality import spread
from lightning_eff.bench.schema import BenchResult, Spread

DID_NOT_REACH = "did not reach"


@dataclass(frozen=True)
class Row:
    label: str
    baseline: str
    recipe: str
    ratio: str


def fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "int":
        return f"{round(value):,}"
    if kind == "seconds":
        return f"{value:.2f}"
    if kind == "quality":
        return f"{value:.4f}"
    if kind == "fraction":
        return f"{value:.3f}"
    if kind == "flops":
        return fmt_flops(value)
    return f"{value:.1f}"


def fmt_flops(value: float) -> str:
    """Three significant digits and an SI prefix: ``5.14G``."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


def fmt_spread(spread: Spread | None, suffix: str = "", digits: int = 2) -> str:
    """``min / median / max``; a single value once, as ``1.23x (1 run)``."""
    if spread is None:
        return "-"
    if spread.n == 1:
        return f"{spread.median:.{digits}f}{suffix} (1 run)"
    return " / ".join(f"{v:.{digits}f}{suffix}" for v in (spread.min, spread.median, spread.max))


# (label, summary key, kind, show a recipe/baseline ratio)
ROWS = (
    ("training compute (FLOP)", "flops", "flops", True),
    ("  forward", "forward_flops", "flops", True),
    ("  backward", "backward_flops", "flops", True),
    ("wall time (s)", "wall_seconds", "seconds", True),
    ("training time (s)", "train_seconds", "seconds", True),
    ("throughput (samples/s)", "samples_per_second", "rate", True),
    ("throughput (tokens/s)", "tokens_per_second", "rate", True),
    ("peak memory (MB)", "peak_memory_mb", "rate", True),
    ("parameters", "parameters", "int", True),
    ("nonzero parameters", "nonzero_parameters", "int", True),
    ("sparsity", "sparsity", "fraction", False),
    ("frozen fraction", "frozen_fraction", "fraction", False),
    ("samples skipped", "samples_skipped", "int", False),
    ("experts", "experts", "int", False),
)
OPTIONAL = {"tokens_per_second", "samples_skipped", "experts", "flops", "forward_flops", "backward_flops"}  # shown only when measured


def _to_quality_row(result: BenchResult, label: str, key: str, unit: str, word: str, spread) -> Row:
    """A "... to quality" row: the baseline's and recipe's medians, the ratio with how many reached."""
    s = result.summary
    if s.reached == 0:
        recipe, ratio = DID_NOT_REACH, DID_NOT_REACH
    else:
        recipe = fmt(s.recipe[key], unit)
        ratio = f"{word} " + fmt_spread(spread, "x")
        if s.reached < s.repeats:
            recipe += f" ({s.reached}/{s.repeats} reached)"
            ratio += f" ({s.repeats - s.reached} did not reach)"
    return Row(label, fmt(s.baseline[key], unit), recipe, ratio)


def time_to_quality_row(result: BenchResult) -> Row:
    return _to_quality_row(result, "time to quality (s)", "time_to_quality", "seconds", "speed-up", result.summary.speedup)


def compute_to_quality_row(result: BenchResult) -> Row | None:
    """FLOPs at the same evaluation as time to quality; the ratio column is baseline / recipe."""
    if result.summary.compute_verdict == "not counted":
        return None
    return _to_quality_row(
        result, "compute to quality (FLOP)", "flops_to_quality", "flops", "saving", result.summary.compute_saving
    )


def delta_text(values: list[float]) -> str:
    d = spread(values)
    if d is None:
        return "-"
    if d.n == 1:
        return f"delta {d.median:+.4f} (1 run)"
    return "delta " + " / ".join(f"{v:+.4f}" for v in (d.min, d.median, d.max))


def spread_row(result: BenchResult, label: str, value) -> Row:
    """Each arm's own min / median / max over repeats (no ratio): how much the repeats disagree."""
    cells = []
    for arm in ("baseline", "recipe"):
        cells.append(fmt_spread(spread([value(r) for r in result.runs if r.arm == arm])))
    return Row(label, *cells, "")


def table_rows(result: BenchResult) -> list[Row]:
    s = result.summary
    label = result.task.metric.split("/")[-1]
    compute = compute_to_quality_row(result)
    rows = [
        time_to_quality_row(result),
        *([compute] if compute else []),
        Row(
            f"final {label} ({'higher' if result.task.higher_is_better else 'lower'} is better)",
            fmt(s.baseline["final_quality"], "quality"),
            fmt(s.recipe["final_quality"], "quality"),
            delta_text([c.quality_delta for c in result.comparisons]),
        ),
    ]
    for text, key, kind, with_ratio in ROWS:
        base, rec = s.baseline.get(key), s.recipe.get(key)
        if key in OPTIONAL and base is None and rec is None:
            continue
        rows.append(Row(text, fmt(base, kind), fmt(rec, kind), fmt_spread(s.ratios.get(key)) if with_ratio else ""))
        if key == "train_seconds":
            rows.append(spread_row(result, "  min / median / max", lambda r: r.train_seconds))
    if s.reached:
        rows.insert(1, spread_row(result, "  min / median / max", lambda r: r.time_to_quality))
    return rows


def verdict_line(result: BenchResult) -> str:
    """Time first, then compute (read at the same evaluations, so reached in the same repeats)."""
    s = result.summary
    metric = result.task.metric.split("/")[-1]
    target = fmt(s.baseline["final_quality"], "quality")
    if s.reached == 0:
        line = f"verdict: did not reach: the recipe never reached the baseline's final {metric} ({target}, median) in {s.repeats} repeat(s)"
    elif s.reached < s.repeats:
        line = f"verdict: {s.verdict}: no speed-up is claimed while a repeat misses the baseline's {metric} ({target}, median)"
    else:
        line = (
            f"verdict: {s.verdict}: reached the baseline's final {metric} in {s.reached}/{s.repeats} repeats; "
            f"speed-up (baseline / recipe time-to-quality) {_spread_label(s.speedup)} = {fmt_spread(s.speedup, 'x')}"
        )
    if s.compute_verdict == "not counted":
        return line + "; compute not counted"
    if s.reached < s.repeats:
        return f"{line}; compute: {s.compute_verdict}"
    return (
        f"{line}; compute: {s.compute_verdict}, saving (baseline / recipe FLOPs-to-quality) "
        f"{_spread_label(s.compute_saving)} = {fmt_spread(s.compute_saving, 'x')}"
    )


def _spread_label(spread: Spread | None) -> str:
    return "min / median / max" if spread is None or spread.n > 1 else "of the one repeat"


def steps_label(task) -> str:
    """The budget: ``300 steps``, ``300 steps (recipe 600)`` when the arms trained different step
    counts, or ``3 epochs``."""
    if task.budget == "epochs":
        return f"{task.max_epochs} epochs"
    extra = f" (recipe {task.recipe_max_steps})" if task.recipe_max_steps else ""
    return f"{task.max_steps} steps{extra}"


def format_table(result: BenchResult) -> str:
    header = Row("", "baseline (median)", "recipe (median)", "recipe / baseline: min / median / max")
    rows = [header, *table_rows(result)]
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("label", "baseline", "recipe")]
    lines = [
        (
            f"lightning-eff bench: task {result.task.name} ({result.task.description}), recipe {result.recipe.name}, "
            f"{result.method.repeats} repeat(s), {steps_label(result.task)}, device {result.environment.device}"
        )
    ]
    for i, r in enumerate(rows):
        lines.append(f"  {r.label:<{widths[0]}}  {r.baseline:>{widths[1]}}  {r.recipe:>{widths[2]}}  {r.ratio}".rstrip())
        if i == 0:
            lines.append("  " + "-" * (sum(widths) + 4 + len(header.ratio) + 2))
    lines.append(verdict_line(result))
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)
