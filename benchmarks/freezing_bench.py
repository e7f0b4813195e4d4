"""Time-to-quality of the freezing recipes, measured in process CPU time on a shared machine.

The ``lightning-eff bench`` harness (baseline vs. recipe, same seeds, alternating order, time to the
baseline's final quality) with one change: its clock reads ``time.process_time()`` instead of the wall
clock, and torch runs on one thread. On a machine shared with other jobs (load 10-18 on 2 cores when
these numbers were taken) wall-clock ratios swing by 2x between identical runs; the CPU time this
process spent is what the technique changes. Everything else (evaluations, targets, verdicts) is the
harness's own.

    .venv/bin/python benchmarks/freezing_bench.py --task vision --recipe progressive_freezing --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time
import types
from pathlib import Path

import torch
import yaml

import lightning_eff.bench.timing as bench_timing
from lightning_eff.bench import format_table, run_bench


def use_process_time() -> None:
    bench_timing.time = types.SimpleNamespace(perf_counter=time.process_time)


def recipe_with_overrides(name: str, overrides: list[str]) -> dict:
    """The named recipe as a dict, with ``key=value`` options of its (single) technique replaced."""
    from importlib import resources

    path = Path(name) if name.endswith(".yaml") else resources.files("lightning_eff.recipes") / f"{name}.yaml"
    recipe = yaml.safe_load(path.read_text())
    (entry,) = recipe["techniques"]
    for item in overrides:
        key, value = item.split("=", 1)
        entry.setdefault("options", {})[key] = yaml.safe_load(value)
    return recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="vision")
    parser.add_argument("--recipe", default="progressive_freezing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--evals", type=int, default=10)
    parser.add_argument("--recipe-steps", type=float, default=1.0, help="recipe arm's steps / baseline's")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an option of the recipe's technique (YAML value)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    use_process_time()
    tag = "".join(f"-{item}" for item in args.set).replace("=", "")
    tag += f"-x{args.recipe_steps:g}" if args.recipe_steps != 1.0 else ""
    out = args.out or f"bench-out/freezing/{args.task}-{Path(args.recipe).stem}{tag}"
    command = " ".join(
        [
            "benchmarks/freezing_bench.py",
            f"--task {args.task}",
            f"--recipe {args.recipe}",
            f"--repeats {args.repeats}",
            *([f"--recipe-steps {args.recipe_steps}"] if args.recipe_steps != 1.0 else []),
        ]
    )
    recipe = recipe_with_overrides(args.recipe, args.set)
    command += "".join(f" --set {item}" for item in args.set)
    result = run_bench(
        task=args.task,
        recipe=recipe,
        repeats=args.repeats,
        max_steps=args.max_steps,
        evals=args.evals,
        recipe_steps=args.recipe_steps,
        out=out,
        accelerator="cpu",
        command=command,
    )
    print(format_table(result))
    rows = [c.model_dump() for c in result.comparisons]
    print(
        json.dumps(
            {"verdict": result.summary.verdict, "comparisons": rows, "command": command},
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
