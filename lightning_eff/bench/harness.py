"""``run_bench``: baseline and recipe on one task, same seeds, alternating, measured and compared.

Everything that can be wrong with the inputs (task, recipe, import paths, logger) is checked before
the first run starts.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lightning_eff.bench.checks import schedule_warnings, uncounted_warnings
from lightning_eff.bench.counting import FLOPS_METHOD, FLOPS_MODES, diverged, merge_counts
from lightning_eff.bench.environment import describe_environment, reproduce_command
from lightning_eff.bench.noise import NOISE_METHOD, noise_warnings
from lightning_eff.bench.runner import FIXED_TRAINER_KEYS, LOGGERS, RunPlan, run_once, with_time_to_quality
from lightning_eff.bench.schema import BenchResult, Method, RecipeInfo, Run, TaskInfo
from lightning_eff.bench.summary import compare, summarise
from lightning_eff.bench.tasks import get_task
from lightning_eff.bench.tasks.base import BenchTask
from lightning_eff.bench.tasks.user import user_task
from lightning_eff.errors import ConfigError
from lightning_eff.recipe import Recipe, load_recipe

ORDER = "one short discarded warm-up run per arm, then alternating: baseline first in even repeats, recipe first in odd repeats"
TIME_TO_QUALITY = (
    "training seconds (validation excluded) at the first evaluation whose validation quality reaches the "
    "same-seed baseline's final quality; no interpolation between evaluations; the baseline is read the same way; "
    "compute-to-quality is the cumulative training FLOPs at that same evaluation; a model changed after its last "
    "evaluation (a callback pruning at the end of the epoch) is evaluated again after training, and that "
    "evaluation replaces the last one"
)
SCHEDULE = (
    "each task's own optimizer, identical in both arms; embedded tasks: AdamW, 5% warm-up, cosine decay to 0 "
    "over trainer.estimated_stepping_batches (max_steps, or max_epochs x batches per epoch)"
)


def resolve_recipe(recipe: str | Path | dict[str, Any] | Recipe) -> Recipe:
    loaded = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    problems = loaded.validate()
    if problems:
        raise ConfigError(f"recipe '{loaded.name}' has problems:\n" + "\n".join(f"  - {p}" for p in problems))
    return loaded


def resolve_task(
    task: str | BenchTask, model: str | None, data: str | None, metric: str | None, higher_is_better: bool | None,
    label_noise: float,
) -> BenchTask:
    if isinstance(task, BenchTask):
        return task
    if model or data:
        if not (model and data):
            raise ConfigError("give both --model pkg.module:MyModule and --data pkg.module:MyDataModule")
        return user_task(model, data, metric=metric or "val/loss", higher_is_better=bool(higher_is_better))
    resolved = get_task(task, label_noise=label_noise)
    if metric is not None or higher_is_better is not None:
        raise ConfigError(f"--metric and --mode are for your own task (--model/--data); task '{task}' uses {resolved.metric}")
    return resolved


def eval_schedule(max_steps: int, evals: int) -> tuple[int, int]:
    """(steps between evaluations, max_steps rounded up so that the last step is evaluated)."""
    if max_steps < 1 or evals < 1:
        raise ConfigError(f"max_steps={max_steps} and evals={evals} must be at least 1")
    every = max(1, math.ceil(max_steps / evals))
    return every, every * math.ceil(max_steps / every)


def epoch_evals(epochs: int, evals: int) -> int:
    """Evaluations per epoch for an epochs budget: at least one (at each epoch's end), more when
    ``evals`` asks for more than ``epochs`` in total."""
    if epochs < 1 or evals < 1:
        raise ConfigError(f"epochs={epochs} and evals={evals} must be at least 1")
    return max(1, math.ceil(evals / epochs))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_bench(
    task: str | BenchTask = "vision",
    recipe: str | Path | dict[str, Any] | Recipe = "quickstart",
    *,
    repeats: int | None = None,
    max_steps: int | None = None,
    evals: int = 10,
    seed: int = 0,
    out: str | Path | None = None,
    label_noise: float = 0.0,
    model: str | None = None,
    data: str | None = None,
    metric: str | None = None,
    higher_is_better: bool | None = None,
    tolerance: float = 0.0,
    logger: str = "none",
    accelerator: str = "auto",
    quiet: bool = False,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
    warmup_steps: int = 5,
    recipe_steps: float = 1.0,
    epochs: int | None = None,
    flops: str = "separate",
    quick: bool = False,
) -> BenchResult:
    """Train the baseline and the recipe ``repeats`` times each and compare time-to-quality.

    ``out``: folder for ``results.json``, the plots and ``report.html`` (nothing is written when None).
    ``progress``: receives one line before each run (default: stderr unless ``quiet``).
    ``warmup_steps``: steps of one discarded run per arm before the measured ones (0: none).
    ``recipe_steps``: the recipe arm trains this multiple of the baseline's steps (its own schedule,
    decayed at its own end; same evaluation interval). Above 1 for techniques that make steps cheaper
    but learn less per step: time-to-quality still decides, so more steps are not a free win.
    ``epochs``: the budget is that many epochs instead of steps (``max_steps`` must then be None), so
    techniques that shorten epochs (InfoBatch) save steps; evaluated at each epoch's end, or
    ``ceil(evals / epochs)`` times per epoch.
    ``quick``: the task's ``quick_max_steps``, one repeat, two evaluations, no warm-up: a smoke run.
    ``flops``: ``separate`` counts training FLOPs in an untimed second pass of each run (timing
    undistorted), ``inline`` inside the timed runs (cheaper, but slows them), ``off`` not at all.
    """
    bench_task = resolve_task(task, model, data, metric, higher_is_better, label_noise)
    loaded = resolve_recipe(recipe)
    if quick:  # every code path for a few steps (tests, smoke runs): measures nothing, and says so
        if max_steps is not None or epochs is not None:
            raise ConfigError("quick sets the budget (the task's quick_max_steps): drop max_steps / epochs")
        max_steps, evals, warmup_steps = bench_task.quick_max_steps, min(evals, 2), 0
        repeats = 1 if repeats is None else repeats
    if logger not in LOGGERS:
        raise ConfigError(f"unknown logger '{logger}'; choose one of {', '.join(LOGGERS)}")
    if logger != "none" and out is None:
        raise ConfigError(f"logger '{logger}' writes into the output folder: give out=... (--out)")
    if logger == "wandb":
        from lightning_eff.errors import require

        require("wandb", "--logger wandb", extra="wandb")
    repeats = repeats if repeats is not None else bench_task.default_repeats
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} must be at least 1")
    if flops not in FLOPS_MODES:
        raise ConfigError(f"flops='{flops}': choose one of {', '.join(FLOPS_MODES)}")
    if epochs is not None:
        if max_steps is not None:
            raise ConfigError(f"give max_steps ({max_steps}) or epochs ({epochs}), not both: they are two budgets")
        if recipe_steps != 1.0:
            raise ConfigError("recipe_steps is a multiple of a steps budget; with epochs both arms train the same epochs")
        per_epoch = epoch_evals(epochs, evals)
    eval_every, steps = eval_schedule(max_steps or bench_task.default_max_steps, evals)
    if not 0 < recipe_steps <= 100:
        raise ConfigError(f"recipe_steps={recipe_steps} must be in (0, 100]: a multiple of the baseline's {steps} steps")
    recipe_total = eval_every * max(1, math.ceil(round(steps * recipe_steps) / eval_every))
    out_dir = Path(out) if out is not None else None
    say = progress or ((lambda line: None) if quiet else _stderr)

    warnings = []
    if quick:
        warnings.append(f"quick run ({steps} steps, {repeats} repeat(s)): it checks that everything runs, it measures nothing")
    if max_steps and steps != max_steps:
        warnings.append(f"max_steps rounded up from {max_steps} to {steps} so that the last step is evaluated")
    overridden = sorted(set(loaded.trainer) & {*FIXED_TRAINER_KEYS, "val_check_interval"})
    if overridden:
        warnings.append(f"the recipe's trainer settings {overridden} are ignored: both arms train and evaluate on the same schedule")
    if not loaded.entries:
        warnings.append("the recipe has no techniques: any difference between the arms is noise")
    if repeats < 3:
        warnings.append(f"only {repeats} repeat(s): min/median/max over so few runs says little about noise")

    plan = RunPlan(
        task=bench_task, recipe=loaded, max_steps=steps, eval_every=eval_every, accelerator=accelerator,
        logger=logger, log_dir=out_dir / "logs" if out_dir else None,
        progress_bar=not quiet and sys.stderr.isatty(),  # a bar piped to a log file is noise
        count_flops=flops == "inline",
    )
    if epochs is not None:
        plan = replace(plan, max_epochs=epochs, evals_per_epoch=per_epoch)
    plans = {"baseline": plan, "recipe": replace(plan, max_steps=recipe_total)}
    if recipe_total != steps:
        warnings.append(
            f"the recipe arm trained {recipe_total} steps, the baseline {steps} (recipe_steps={recipe_steps}): "
            "compare time to quality, not per-step numbers"
        )
    seeds = [seed + r for r in range(repeats)]
    if warmup_steps:
        # The first fit in a process pays one-time costs (lazy imports, allocator growth, first
        # kernel launches): seconds on CPU. A short discarded run of each arm keeps them out of
        # whichever arm would otherwise run first.
        say(f"warm-up: {warmup_steps} discarded steps of each arm")
        warm = replace(plan, max_steps=warmup_steps, eval_every=warmup_steps, max_epochs=None, logger="none", progress_bar=False)
        for arm in ("baseline", "recipe"):
            run_once(warm, arm, -1, seed)
    runs: list[Run] = []
    total, started, durations = 2 * repeats, time.perf_counter(), []
    device = "cpu"
    for r, run_seed in enumerate(seeds):
        arms = ("baseline", "recipe") if r % 2 == 0 else ("recipe", "baseline")
        for arm in arms:
            index = len(runs) + 1
            eta = _duration(statistics_mean(durations) * (total - index + 1)) if durations else "after the first run"
            say(
                f"[{index}/{total}] {bench_task.name}: {arm} ({loaded.name if arm == 'recipe' else 'no techniques'}), "
                f"repeat {r + 1}/{repeats}, seed {run_seed}, {budget_text(plans[arm])} | elapsed {_duration(time.perf_counter() - started)}, ETA {eta}"
            )
            t0 = time.perf_counter()
            run = run_once(plans[arm], arm, r, run_seed)
            say(f"        {arm}: {run.train_seconds:.1f}s training, {bench_task.metric} {run.final_quality:.4f}")
            if flops == "separate":
                say(f"        {arm}: counting FLOPs in an untimed pass")
                counted = run_once(replace(plans[arm], count_flops=True, logger="none", progress_bar=False), arm, r, run_seed)
                if diverged(run, counted):
                    warnings.append(
                        f"the FLOP-counting pass of {arm} seed {run_seed} trained differently from the timed run "
                        "(non-deterministic kernels?): its FLOPs are read at the timed run's evaluation steps"
                    )
                run = merge_counts(run, counted)
            durations.append(time.perf_counter() - t0)
            runs.append(run)

    higher = bench_task.higher_is_better
    pairs, comparisons = [], []
    for r in range(repeats):
        b = next(x for x in runs if x.repeat == r and x.arm == "baseline")
        c = next(x for x in runs if x.repeat == r and x.arm == "recipe")
        target = b.final_quality
        b, c = with_time_to_quality(b, target, higher, tolerance), with_time_to_quality(c, target, higher, tolerance)
        pairs.append((b, c))
        comparisons.append(compare(b, c))
    runs = [run for pair in pairs for run in pair]  # grouped by repeat; the order they ran in is ORDER

    warnings += noise_warnings(runs) + schedule_warnings(runs) + uncounted_warnings(runs)
    lr_left = [b.final_lr_fraction for b, _ in pairs if b.final_lr_fraction is not None and b.final_lr_fraction > 0.05]
    if lr_left:
        warnings.append(
            f"the baseline's learning rate ended at {max(lr_left):.0%} of its peak: not fully decayed, so a speed-up "
            "may only reflect the schedule (decay it to 0 at trainer.max_steps)"
        )

    if command is None:
        command = reproduce_command(
            {
                "task": None if model else (task if isinstance(task, str) else bench_task.name),
                "model": model, "data": data, "metric": metric,
                "mode": None if higher_is_better is None else ("max" if higher_is_better else "min"),
                "recipe": str(recipe) if isinstance(recipe, (str, Path)) else f"<{loaded.name}: given as a Python object>",
                "repeats": repeats, "max_steps": None if epochs else steps, "epochs": epochs, "evals": evals, "seed": seed,
                "label_noise": label_noise or None, "tolerance": tolerance or None,
                "warmup_steps": None if warmup_steps == 5 else warmup_steps, "out": str(out) if out else None,
                "recipe_steps": None if recipe_total == steps else recipe_steps,
                "flops": None if flops == "separate" else flops,
            }
        )
    if plan.accelerator != "cpu":
        import torch

        device = "cuda" if torch.cuda.is_available() and plan.accelerator in ("auto", "gpu", "cuda") else "cpu"
    result = BenchResult(
        environment=describe_environment(command, device),
        task=TaskInfo(
            name=bench_task.name, description=bench_task.description, metric=bench_task.metric,
            higher_is_better=higher, budget="epochs" if epochs else "steps", max_steps=None if epochs else steps,
            max_epochs=epochs, recipe_max_steps=None if recipe_total == steps else recipe_total,
            eval_every=None if epochs else eval_every, evals_per_epoch=plan.evals_per_epoch if epochs else None,
            details=bench_task.details,
        ),
        recipe=RecipeInfo(
            name=loaded.name, description=loaded.description, source=loaded.source,
            techniques=[repr(t) for t in loaded.build()], trainer=dict(loaded.trainer),
        ),
        method=Method(
            repeats=repeats, seeds=seeds, order=ORDER, time_to_quality=TIME_TO_QUALITY, tolerance=tolerance, schedule=SCHEDULE,
            flops=FLOPS_METHOD[flops], noise=NOISE_METHOD,
        ),
        runs=runs,
        comparisons=comparisons,
        summary=summarise(pairs, comparisons),
        warnings=warnings,
    )
    if out_dir is not None:
        from lightning_eff.bench.report import write_report

        result = write_report(result, out_dir)
    return result


def budget_text(plan: RunPlan) -> str:
    return f"{plan.max_epochs} epochs" if plan.max_epochs is not None else f"{plan.max_steps} steps"


def statistics_mean(values: list[float]) -> float:
    return sum(values) / len(values)
