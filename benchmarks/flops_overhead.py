"""What counting FLOPs costs in training time: the same run with and without the FlopMeter.

Two levels, both alternating uncounted / counted so that a busy machine hits both alike:

* ``runs``: whole bench runs (Lightning, validation, set-up) of each task's baseline at one seed;
  median training time of each and their ratio.
* ``steps``: bare training steps (forward, backward, AdamW; the update uncounted, as in the bench) of
  the task's model on one batch, in blocks; median seconds per step. Less exposed to other processes
  than whole runs. A third arm runs the steps under a Python dispatch mode that counts nothing: the
  part of the cost that any per-op Python hook pays, whatever it does.

The bench counts inside timed runs only if this stays within 1.1x (docs/benchmarking.md, "Compute").

    .venv/bin/python benchmarks/flops_overhead.py --level steps --tasks vision lm
    .venv/bin/python benchmarks/flops_overhead.py --level runs --tasks vision lm --steps 60 --pairs 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_eff.bench.flops import SplitFlopCounter
from lightning_eff.bench.runner import RunPlan, run_once
from lightning_eff.bench.tasks import get_task
from lightning_eff.recipe import load_recipe


def measure(task_name: str, steps: int, pairs: int, recipe: str | None, evals: int = 1) -> dict:
    task = get_task(task_name)
    loaded = load_recipe(recipe or {"techniques": []})
    arm = "recipe" if recipe else "baseline"
    plan = RunPlan(task=task, recipe=loaded, max_steps=steps, eval_every=steps // evals, accelerator="cpu", progress_bar=False)
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
        "task": task_name, "recipe": recipe or "(baseline)", "steps": steps, "evals": evals, "pairs": pairs,
        "uncounted_s": times["uncounted"], "counted_s": times["counted"],
        "median_uncounted_s": round(plain, 3), "median_counted_s": round(counted, 3), "ratio": round(counted / plain, 3),
        "distinct_flop_totals": sorted(flops),
    }


class _PassThrough(TorchDispatchMode):
    """A Python dispatch mode that counts nothing: what any per-op Python hook costs, the floor for ours."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def measure_steps(task_name: str, blocks: int, steps_per_block: int) -> dict:
    task = get_task(task_name)
    torch.manual_seed(0)
    module, data = task.make_module(), task.make_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    counter = SplitFlopCounter()
    modes = {"uncounted": contextlib.nullcontext, "passthrough": _PassThrough, "counted": lambda: counter}

    def step(arm: str) -> None:
        with modes[arm]():  # as the bench counts: forward and backward, the optimizer update outside
            module.per_sample_loss(batch).mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    def block(arm: str) -> float:
        start = time.perf_counter()
        for _ in range(steps_per_block):
            step(arm)
        return (time.perf_counter() - start) / steps_per_block

    for arm in modes:  # warm-up
        block(arm)
    times = {arm: [] for arm in modes}
    arms = list(modes)
    for i in range(blocks):
        for arm in arms[i % 3:] + arms[: i % 3]:  # rotate the order: drifts in machine speed hit every arm alike
            times[arm].append(block(arm))
    medians = {arm: statistics.median(t) for arm, t in times.items()}
    return {
        "task": task_name, "level": "steps", "blocks": blocks, "steps_per_block": steps_per_block,
        **{f"median_{arm}_ms": round(m * 1e3, 2) for arm, m in medians.items()},
        "ratio": round(medians["counted"] / medians["uncounted"], 3),
        "passthrough_ratio": round(medians["passthrough"] / medians["uncounted"], 3),
        "flops_per_step": counter.total // ((blocks + 1) * steps_per_block),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", choices=["steps", "runs"], default="steps")
    parser.add_argument("--tasks", nargs="+", default=["vision", "lm"])
    parser.add_argument("--blocks", type=int, default=10, help="steps level: blocks per arm")
    parser.add_argument("--block-steps", type=int, default=10, help="steps level: steps per block")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--evals", type=int, default=1, help="runs level: evaluations per run (as the bench's --evals)")
    parser.add_argument("--recipe", default=None, help="measure the recipe arm of this recipe instead of the baseline")
    args = parser.parse_args()
    for task in args.tasks:
        if args.level == "steps":
            print(json.dumps(measure_steps(task, args.blocks, args.block_steps)), flush=True)
        else:
            print(json.dumps(measure(task, args.steps, args.pairs, args.recipe, args.evals)), flush=True)


if __name__ == "__main__":
    main()
