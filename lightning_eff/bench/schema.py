"""The results file (``results.json``) as pydantic models: the schema is ``BenchResult.model_json_schema()``.

Bump ``SCHEMA_VERSION`` on any change that breaks a reader.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2  # 2: training FLOPs and compute-to-quality, per-batch time dispersion, epoch budgets


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Point(_Strict):
    step: int = Field(description="optimizer steps done when this evaluation ran")
    train_seconds: float = Field(description="training wall time up to this evaluation, validation excluded")
    quality: float
    flops: int | None = Field(None, description="cumulative training FLOPs up to this evaluation; null: not counted")


class Spread(_Strict):
    min: float
    median: float
    max: float
    n: int = Field(description="number of values summarised (repeats that have the quantity)")


class BatchTimes(_Strict):
    batches: int = Field(description="training batches timed (the first after each validation included)")
    median: float = Field(description="median seconds per batch, batch end to batch end, validation excluded")
    p90: float
    max: float


class Environment(_Strict):
    date: str = Field(description="ISO 8601 time the benchmark started")
    command: str = Field(description="shell command that reproduces this report")
    platform: str
    machine: str
    processor: str
    cpu_count: int | None
    torch_threads: int
    device: str = Field(description="cpu, or the CUDA device name")
    python: str
    versions: dict[str, str] = Field(description="torch, lightning, lightning-eff, and task libraries")


class TaskInfo(_Strict):
    name: str
    description: str
    metric: str = Field(description="logged validation key that is 'quality'")
    higher_is_better: bool
    budget: Literal["steps", "epochs"] = Field(description="what bounds each run: max_steps or max_epochs")
    max_steps: int | None = Field(description="optimizer steps per run (steps budget); null with an epochs budget")
    max_epochs: int | None = Field(None, description="epochs per run (epochs budget); null with a steps budget")
    recipe_max_steps: int | None = Field(
        None, description="the recipe arm's steps when it differs from max_steps (--recipe-steps), else null"
    )
    eval_every: int | None = Field(description="optimizer steps between evaluations; null with an epochs budget")
    evals_per_epoch: int | None = Field(None, description="evaluations per epoch (epochs budget), else null")
    details: dict[str, str | int | float | bool | None] = {}


class RecipeInfo(_Strict):
    name: str
    description: str
    source: str
    techniques: list[str] = Field(description="repr of each technique with its options")
    trainer: dict[str, object] = Field(description="Trainer settings the recipe changes")


class Method(_Strict):
    repeats: int
    seeds: list[int]
    order: str = Field(description="order of the arms within each repeat")
    time_to_quality: str = Field(description="how time-to-quality is read from a curve")
    tolerance: float = Field(description="quality within this of the target counts as reaching it")
    schedule: str = Field(description="optimizer and learning-rate schedule shared by both arms")
    flops: str = Field(description="how training FLOPs are counted, and what counting costs in time")
    noise: str = Field(description="when a run's timing is flagged as noisy")


class Run(_Strict):
    arm: Literal["baseline", "recipe"]
    repeat: int
    seed: int
    steps: int
    epochs: int = Field(description="trainer.current_epoch at the end: epochs completed")
    estimated_steps: int | None = Field(
        description="Lightning's estimated_stepping_batches, which the embedded tasks' schedules decay over"
    )
    train_seconds: float = Field(description="training wall time, validation excluded")
    wall_seconds: float = Field(description="whole fit including validation and set-up")
    samples: int
    tokens: int | None
    samples_per_second: float
    tokens_per_second: float | None
    peak_memory_mb: float
    memory_kind: str = Field(description="cuda_max_allocated, cpu_peak_rss or cpu_process_high_water")
    final_quality: float
    best_quality: float
    time_to_quality: float | None = Field(description="train seconds to reach the target; null: did not reach")
    step_to_quality: int | None
    parameters: int
    trainable_parameters: int
    nonzero_parameters: int
    sparsity: float = Field(description="fraction of parameters that are exactly zero at the end")
    frozen_fraction: float = Field(description="fraction of parameters without requires_grad at the end")
    final_lr_fraction: float | None = Field(description="last step's learning rate over the peak")
    efficiency_metrics: dict[str, float] = Field(description="the techniques' last metrics (efficiency/<technique>/<key>)")
    flops: int | None = Field(description="training FLOPs counted (forward + backward); null: not counted")
    forward_flops: int | None = Field(description="outside autograd's backward: forwards, including no-grad scoring forwards")
    backward_flops: int | None = Field(description="run by autograd's backward")
    setup_flops: int | None = Field(description="part of flops counted before the first training batch (technique set-up)")
    uncounted_ops: list[str] = Field(description="custom ops executed that have no FLOP formula (counted as 0)")
    flops_to_quality: int | None = Field(description="cumulative training FLOPs to reach the target; null: not reached or not counted")
    batch_times: BatchTimes | None = Field(description="per-batch wall time dispersion; null: no batch timed")
    technique_seconds: dict[str, float] = Field(description="time spent inside each technique's hooks")
    savings: dict[str, dict[str, float]] = Field(description="what each technique claims it saved")
    curve: list[Point]


class Comparison(_Strict):
    repeat: int
    seed: int
    target_quality: float = Field(description="the baseline's final validation quality in this repeat")
    baseline_time_to_quality: float | None
    recipe_time_to_quality: float | None
    speedup: float | None = Field(description="baseline / recipe time-to-quality; null: did not reach")
    baseline_flops_to_quality: int | None
    recipe_flops_to_quality: int | None
    compute_saving: float | None = Field(description="baseline / recipe FLOPs-to-quality; null: did not reach or not counted")
    reached: bool
    quality_delta: float = Field(description="recipe final quality - baseline final quality")


class Summary(_Strict):
    verdict: str = Field(description="faster, slower, did not reach, or mixed (k of K reached)")
    reached: int
    repeats: int
    speedup: Spread | None
    compute_verdict: str = Field(description="less compute, same compute, more compute, did not reach, mixed (k of K reached), or not counted")
    compute_saving: Spread | None = Field(description="baseline / recipe FLOPs-to-quality over repeats")
    ratios: dict[str, Spread | None] = Field(description="recipe / baseline per repeat, by quantity")
    baseline: dict[str, float | None] = Field(description="median over repeats, by quantity")
    recipe: dict[str, float | None] = Field(description="median over repeats, by quantity")


class BenchResult(_Strict):
    schema_version: Literal[2] = SCHEMA_VERSION
    environment: Environment
    task: TaskInfo
    recipe: RecipeInfo
    method: Method
    runs: list[Run]
    comparisons: list[Comparison]
    summary: Summary
    warnings: list[str] = []
    files: dict[str, str] = Field(default={}, description="report files written, by kind, relative to the out folder")
