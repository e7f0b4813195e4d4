"""One training run of one arm (baseline or recipe) at one seed, measured."""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_eff.bench.epochs import EvaluateEachEpoch
from lightning_eff.bench.flops import FlopMeter
from lightning_eff.bench.memory import read_peak_mb, reset_peak
from lightning_eff.bench.model_stats import count_parameters
from lightning_eff.bench.noise import batch_times
from lightning_eff.bench.progress import StepProgressBar
from lightning_eff.bench.quality import first_reaching
from lightning_eff.bench.schema import Point, Run
from lightning_eff.bench.tasks.base import BenchTask
from lightning_eff.bench.timing import RunClock
from lightning_eff.hub import EfficiencyHub
from lightning_eff.recipe import Recipe

LOGGERS = ("none", "csv", "tensorboard", "wandb")
# Trainer settings a recipe may not change: the budget and the evaluation (val_check_interval is
# derived from the evaluation interval below).
FIXED_TRAINER_KEYS = ("max_steps", "max_epochs", "check_val_every_n_epoch", "num_sanity_val_steps", "limit_val_batches")


@dataclass(frozen=True)
class RunPlan:
    """Everything both arms share. Budget: ``max_steps`` (evaluated every ``eval_every`` steps), or,
    when ``max_epochs`` is set, that many epochs (``max_steps`` ignored) evaluated ``evals_per_epoch``
    times per epoch."""

    task: BenchTask
    recipe: Recipe
    max_steps: int
    eval_every: int
    accelerator: str = "auto"
    logger: str = "none"
    log_dir: Path | None = None
    progress_bar: bool = True
    max_epochs: int | None = None
    evals_per_epoch: int = 1
    count_flops: bool = True


@contextmanager
def quiet_lightning():
    """Lightning's per-fit chatter (devices, 'max_steps reached') would bury the bench's own lines."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning_eff")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*(LeafSpec|treespec).*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*smaller than the logging interval.*")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def make_logger(kind: str, log_dir: Path | None, task: str, arm: str, repeat: int) -> Any:
    if kind == "none":
        return False
    assert log_dir is not None, "loggers need an output folder"
    version = f"{arm}-r{repeat}"
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(log_dir), name=task, version=version)
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(log_dir), name=task, version=version)
    if kind == "wandb":
        import os

        import wandb
        from lightning.pytorch.loggers import WandbLogger

        online = os.environ.get("WANDB_MODE") == "online"  # offline unless asked: no account needed
        # wandb's banner, sync hints and run summary were about 28 lines per run between the bench's own
        # lines; the run folder (save_dir) holds everything they said.
        quiet = wandb.Settings(silent=True, console="off", disable_git=True)
        return WandbLogger(
            project="lightning-eff-bench", name=f"{task}-{version}", group=task, save_dir=str(log_dir), offline=not online,
            settings=quiet,
        )
    raise ValueError(f"unknown logger {kind!r}; choose one of {LOGGERS}")


def trainer_settings(plan: RunPlan, arm: str, techniques: list, logger: Any) -> dict[str, Any]:
    epochs = plan.max_epochs is not None
    base: dict[str, Any] = {
        "accelerator": plan.accelerator,
        "devices": 1,
        "max_steps": -1 if epochs else plan.max_steps,
        "max_epochs": plan.max_epochs if epochs else -1,
        "check_val_every_n_epoch": 1 if epochs else None,
        "num_sanity_val_steps": -1,  # the full validation set before step 0: the curve's first point
        "limit_val_batches": 1.0,
        "logger": logger,
        "log_every_n_steps": 50 if epochs else max(1, min(50, plan.eval_every)),
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": plan.progress_bar,
    }
    kwargs = plan.recipe.trainer_kwargs(techniques, base=base) if arm == "recipe" else base
    for fixed in FIXED_TRAINER_KEYS:
        kwargs[fixed] = base[fixed]  # both arms train and evaluate alike (the harness warns if a recipe tried)
    if epochs:  # a fraction of each epoch, however long the epoch turns out (samplers may shorten it)
        kwargs["val_check_interval"] = 1.0 / plan.evals_per_epoch
    else:  # counts batches; with gradient accumulation a step is several batches
        kwargs["val_check_interval"] = plan.eval_every * int(kwargs.get("accumulate_grad_batches", 1))
    return kwargs


def run_once(plan: RunPlan, arm: str, repeat: int, seed: int) -> Run:
    """Train ``arm`` once at ``seed``; ``time_to_quality`` is filled in later against the baseline."""
    pl.seed_everything(seed, workers=True, verbose=False)
    task = plan.task
    techniques = plan.recipe.build() if arm == "recipe" else []
    logger = make_logger(plan.logger, plan.log_dir, task.name, arm, repeat)
    kwargs = trainer_settings(plan, arm, techniques, logger)
    meter = [FlopMeter()] if plan.count_flops else []
    clock = RunClock(task.metric, task.count_tokens, flops=(lambda: meter[0].total) if meter else None)
    extra = [StepProgressBar(f"{arm} seed {seed}")] if plan.progress_bar else []
    if plan.max_epochs is not None:
        extra.append(EvaluateEachEpoch(plan.evals_per_epoch))
    with quiet_lightning():
        # The meter follows the clock and precedes the techniques: their set-up work is counted; its
        # pause for the optimizer update comes after them.
        inner = meter[0].around([*techniques, *extra]) if meter else [*techniques, *extra]
        trainer = pl.Trainer(**kwargs, callbacks=[clock, *inner])
        memory_kind = reset_peak(trainer.strategy.root_device.type)
        module, data = task.make_module(), task.make_data()
        start = time.perf_counter()
        trainer.fit(module, datamodule=data)
        wall = time.perf_counter() - start
        if clock.weights_changed_since_last_evaluation(module):
            # A callback changed the weights after the last evaluation: evaluate the model training
            # produced; the point replaces the last one (same step), its time is the end of training.
            trainer.validate(module, datamodule=data, verbose=False)
    peak = read_peak_mb(memory_kind)
    if plan.logger == "wandb":
        import wandb

        wandb.finish()
    counts = count_parameters(module)
    hub = EfficiencyHub.of(trainer)
    summary = (hub.summary if hub is not None else None) or {"techniques": [], "metrics": {}}
    train_seconds = clock.train_seconds
    run = Run(
        arm=arm,
        repeat=repeat,
        seed=seed,
        steps=trainer.global_step,
        epochs=trainer.current_epoch,
        estimated_steps=clock.estimated_steps,
        train_seconds=train_seconds,
        wall_seconds=wall,
        samples=clock.samples,
        tokens=clock.tokens,
        samples_per_second=clock.samples / train_seconds if train_seconds > 0 else 0.0,
        tokens_per_second=clock.tokens / train_seconds if clock.tokens is not None and train_seconds > 0 else None,
        peak_memory_mb=peak,
        memory_kind=memory_kind,
        final_quality=clock.curve[-1].quality,
        best_quality=(max if task.higher_is_better else min)(p.quality for p in clock.curve),
        time_to_quality=None,
        step_to_quality=None,
        parameters=counts.total,
        trainable_parameters=counts.trainable,
        nonzero_parameters=counts.nonzero,
        sparsity=counts.sparsity,
        frozen_fraction=counts.frozen_fraction,
        final_lr_fraction=clock.final_lr_fraction,
        efficiency_metrics={k: float(v) for k, v in (summary.get("metrics") or {}).items()},
        flops=meter[0].counter.total if meter else None,
        forward_flops=meter[0].counter.forward if meter else None,
        backward_flops=meter[0].counter.backward if meter else None,
        setup_flops=(meter[0].setup_flops or 0) if meter else None,
        uncounted_ops=sorted(meter[0].counter.unknown_ops) if meter else [],
        flops_to_quality=None,
        batch_times=batch_times(clock.batch_seconds),
        technique_seconds={row["technique"]: float(row["seconds"]) for row in summary["techniques"]},
        savings={row["technique"]: {k: float(v) for k, v in row["savings"].items()} for row in summary["techniques"]},
        curve=[Point(step=p.step, train_seconds=p.train_seconds, quality=p.quality, flops=p.flops) for p in clock.curve],
    )
    return run


def with_time_to_quality(run: Run, target: float, higher_is_better: bool, tolerance: float) -> Run:
    from lightning_eff.bench.quality import CurvePoint

    curve = [CurvePoint(p.step, p.train_seconds, p.quality, p.flops) for p in run.curve]
    hit = first_reaching(curve, target, higher_is_better, tolerance)
    return run.model_copy(update={
        "time_to_quality": hit.train_seconds if hit else None,
        "step_to_quality": hit.step if hit else None,
        "flops_to_quality": hit.flops if hit else None,  # same point: compute to quality
    })
