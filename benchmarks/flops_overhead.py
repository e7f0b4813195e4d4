"""What counting FLOPs costs in training time: the same run with and without the FlopMeter.

Runs each embedded task's baseline at one seed, alternating uncounted / counted, and prints the
median training time of each and their ratio. The bench counts every step in the timed run only if
this stays within 1.1x (docs/benchmarking.md, "Compute").

    .venv/bin/python benchmarks/flops_overhead.py --tasks vision lm --steps 60 --pairs 5
"""

from __future__ import annotations

import argparse
import json
import statistics

from lightning_eff.bench.runner import RunPlan, run_once
from lightning_eff.bench.tasks import get_task
from lightning_eff.recipe import load_recipe


def measure(task_name: str, steps: int, pairs: int, recipe: str | None) -> dict:
    task = get_task(task_name)
    loaded = load_recipe(recipe or {"techniques": []})
    arm = "recipe" if recipe else "baseline"
    plan = RunPlan(task=task, recipe=loaded, max_steps=steps, eval_every=steps, accelerator="cpu", progress_bar=False)
    counted_plan = RunPlan(**{**plan.__dict__, "count_flops": True})
    plain_plan = RunPlan(**{**plan.__dict__, "count_flops": False})
    run_once(plain_plan, arm, -1, 0)  # warm-up: one-time costs land on neither side
    times = {"uncounted": [], "counted": []}
    flops = set()
    for i in range(pairs):
        order = (("uncounted", plain_plan), ("counted", counted_plan))
        for name, p in order if i % 2 == 0 else order[::-1]:
            run = run_once(p, arm, i, 0)
            times[name].append(run.train_seconds)
            if name == "counted":
                flops.add(run.flops)
    plain, counted = statistics.median(times["uncounted"]), statistics.median(times["counted"])
    return {
        "task": task_name, "recipe": recipe or "(baseline)", "steps": steps, "pairs": pairs,
        "uncounted_s": times["uncounted"], "counted_s": times["counted"],
        "median_uncounted_s": round(plain, 3), "median_counted_s": round(counted, 3), "ratio": round(counted / plain, 3),
        "distinct_flop_totals": sorted(flops),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["vision", "lm"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--recipe", default=None, help="measure the recipe arm of this recipe instead of the baseline")
    args = parser.parse_args()
    for task in args.tasks:
        print(json.dumps(measure(task, args.steps, args.pairs, args.recipe)), flush=True)


if __name__ == "__main__":
    main()
