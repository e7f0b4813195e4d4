"""From measured runs to per-repeat comparisons and the min / median / max summary."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from lightning_eff.bench.quality import compute_verdict, ratio, speedup, spread, verdict
from lightning_eff.bench.schema import Comparison, Run, Spread, Summary

# Quantities compared recipe / baseline, in table order. Efficiency metrics of techniques (samples
# skipped, experts) are summed over techniques under their standard key.
QUANTITIES: dict[str, Callable[[Run], float | None]] = {
    "wall_seconds": lambda r: r.wall_seconds,
    "train_seconds": lambda r: r.train_seconds,
    "time_to_quality": lambda r: r.time_to_quality,
    "flops_to_quality": lambda r: None if r.flops_to_quality is None else float(r.flops_to_quality),
    "flops": lambda r: None if r.flops is None else float(r.flops),
    "forward_flops": lambda r: None if r.forward_flops is None else float(r.forward_flops),
    "backward_flops": lambda r: None if r.backward_flops is None else float(r.backward_flops),
    "final_quality": lambda r: r.final_quality,
    "samples_per_second": lambda r: r.samples_per_second,
    "tokens_per_second": lambda r: r.tokens_per_second,
    "peak_memory_mb": lambda r: r.peak_memory_mb,
    "parameters": lambda r: float(r.parameters),
    "nonzero_parameters": lambda r: float(r.nonzero_parameters),
    "sparsity": lambda r: r.sparsity,
    "frozen_fraction": lambda r: r.frozen_fraction,
}
TECHNIQUE_METRICS = ("samples_skipped", "experts")


def technique_metric(run: Run, key: str) -> float | None:
    """Sum of ``efficiency/<technique>/<key>`` over techniques; ``None`` when no technique reports it."""
    values = [v for k, v in run.efficiency_metrics.items() if k.rsplit("/", 1)[-1] == key]
    return sum(values) if values else None


def quantity(run: Run, name: str) -> float | None:
    if name in QUANTITIES:
        return QUANTITIES[name](run)
    return technique_metric(run, name)


def compare(baseline: Run, recipe: Run) -> Comparison:
    reached = recipe.time_to_quality is not None
    return Comparison(
        repeat=baseline.repeat,
        seed=baseline.seed,
        target_quality=baseline.final_quality,
        baseline_time_to_quality=baseline.time_to_quality,
        recipe_time_to_quality=recipe.time_to_quality,
        speedup=speedup(baseline.time_to_quality, recipe.time_to_quality),
        baseline_flops_to_quality=baseline.flops_to_quality,
        recipe_flops_to_quality=recipe.flops_to_quality,
        compute_saving=speedup(baseline.flops_to_quality, recipe.flops_to_quality),
        reached=reached,
        quality_delta=recipe.final_quality - baseline.final_quality,
    )


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _as_model(s) -> Spread | None:
    return Spread(min=s.min, median=s.median, max=s.max, n=s.n) if s is not None else None


def summarise(pairs: list[tuple[Run, Run]], comparisons: list[Comparison]) -> Summary:
    names = [*QUANTITIES, *TECHNIQUE_METRICS]
    ratios = {
        name: _as_model(spread([ratio(quantity(r, name), quantity(b, name)) for b, r in pairs]))
        for name in names
        if name not in ("time_to_quality", "flops_to_quality", "final_quality", "sparsity", "frozen_fraction", *TECHNIQUE_METRICS)
    }
    speedups = [c.speedup for c in comparisons]
    savings = [c.compute_saving for c in comparisons]
    counted = any(r.flops is not None for pair in pairs for r in pair)
    return Summary(
        verdict=verdict(speedups),
        reached=sum(c.reached for c in comparisons),
        repeats=len(comparisons),
        speedup=_as_model(spread(speedups)),
        compute_verdict=compute_verdict(savings) if counted else "not counted",
        compute_saving=_as_model(spread(savings)),
        ratios=ratios,
        baseline={name: _median([quantity(b, name) for b, _ in pairs]) for name in names},
        recipe={name: _median([quantity(r, name) for _, r in pairs]) for name in names},
    )
