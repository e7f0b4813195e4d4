"""What both distillation techniques share: the teacher (loaded, frozen, never trained), the capture
of the student's training forward, the weight's window, the one-batch preflight probe, and metrics.

Subclasses say what the distillation term is (:meth:`DistillationTechnique.distill_loss`) and what
the probe must check (:meth:`DistillationTechnique.check_probe`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, model_validator

from lightning_eff import PreflightError, Technique, TechniqueConfig
from lightning_eff.config_types import Seed
from lightning_eff.errors import ConfigError
from lightning_eff.schedule import TimePoint, step_resolver
from lightning_eff.technique import DDP_TESTED

from .capture import ForwardCapture, probe_batch, submodule
from .losses import distillation_weight
from .teacher import TeacherPrecision, load_teacher, run_teacher

Decay = Literal["step", "linear", "cosine"]


class DistillationConfig(TechniqueConfig):
    # validate_default: time defaults are written as a user would (1.0) and parsed into TimePoints.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    teacher: str | None = Field(
        None,
        description="the teacher: a weights file (.ckpt, or a state dict .pt/.safetensors, read as data) "
        "loaded into teacher_class, a transformers save_pretrained directory, or 'pkg.mod:Class' (built "
        "with teacher_hparams); a torch.nn.Module object can also be passed in Python",
    )
    teacher_class: str | None = Field(
        None,
        description="'pkg.mod:Class' the teacher weights load into: a torch.nn.Module subclass built with "
        "teacher_hparams, or a transformers PreTrainedModel subclass for a directory",
    )
    teacher_hparams: dict[str, Any] | None = Field(
        None, description="constructor arguments of teacher_class (or of a class-path teacher)"
    )
    teacher_precision: TeacherPrecision = Field(
        "fp32", description="'bf16': the teacher's forward under bf16 autocast (cheaper on GPUs); 'fp32': as is"
    )
    student_module: str | None = Field(
        None,
        description="submodule of the LightningModule whose forward takes the same inputs as the teacher "
        "(and, for logits, returns them); None: the LightningModule's own forward",
    )
    start: TimePoint = Field(0.0, description="distillation starts: steps (int), fraction of the run (float), samples, tokens")
    end: TimePoint = Field(
        1.0, description="distillation stops here (SALT: an early fraction such as 0.3); same units as start"
    )
    decay: Decay = Field(
        "step", description="weight inside [start, end): 'step' constant then off, 'linear'/'cosine' down to 0 at end"
    )
    seed: Seed = Field(0, ge=0, description="seed of a class-path teacher's initialisation (and of projections)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.start.unit == self.end.unit and self.start.value >= self.end.value:
            raise ValueError(f"start={self.start} must be before end={self.end}")
        return self


class DistillationTechnique(Technique):
    """Base of the distillation techniques: a frozen teacher run on the student's training inputs."""

    phase = "loss"
    requires_module_mixin = True
    supported_strategies = DDP_TESTED
    strategy_refusals = {
        "fsdp2": "distillation is not tested under FSDP2: the teacher is held whole (unsharded) on every rank and "
        "the probe runs the student before configure_model shards it; use strategy='ddp', or shard the teacher "
        "yourself and pass it as a module",
    }

    def __init__(self, teacher: Any = None, **options: Any) -> None:
        # A model object is not an option a recipe can hold: kept aside, not in the config.
        self.teacher_object = teacher if isinstance(teacher, torch.nn.Module) else None
        super().__init__(teacher=None if self.teacher_object is not None else teacher, **options)
        self.teacher: torch.nn.Module | None = self.teacher_object
        self.capture: ForwardCapture | None = None
        self.start_step, self.end_step = 0, 0
        self.weight = 0.0
        self.last_loss = 0.0
        self.teacher_forwards = 0
        self.teacher_seconds = 0.0

    # -- to implement ----------------------------------------------------------------------------

    def feature_modules(self, pl_module) -> dict[str, torch.nn.Module]:
        """Student submodules whose outputs the capture records (none for logit distillation)."""
        return {}

    def check_probe(self, pl_module, capture: ForwardCapture, teacher_output: Any) -> list[str]:
        """Problems found by running student and teacher on one batch before step 0."""
        return []

    def distill_loss(self, pl_module, capture: ForwardCapture, teacher_output: Any) -> torch.Tensor:
        raise NotImplementedError

    def prepare_teacher_run(self) -> None:
        """Called before each teacher forward (feature distillation clears its teacher records)."""

    def teacher_forward(self, capture: ForwardCapture) -> Any:
        """The teacher's output for the captured student inputs (logit distillation may read stored outputs)."""
        self.prepare_teacher_run()
        return run_teacher(self.teacher, *capture.inputs, self.config.teacher_precision)

    def load_teacher_problems(self) -> list[str]:
        """Load the teacher (or what stands for it); problems naming the fix."""
        c = self.config
        if self.teacher is not None:
            return []
        if c.teacher is None:
            return [f"{self.name} has no teacher: pass teacher= (a weights file with teacher_class, a directory, 'pkg.mod:Class' or a module)"]
        try:
            self.teacher = load_teacher(c.teacher, c.teacher_class, c.teacher_hparams, c.seed)
        except ConfigError as exc:
            return [f"{self.name} cannot load its teacher: {exc}"]
        return []

    # -- preflight -------------------------------------------------------------------------------

    def validate(self, trainer, pl_module) -> list[str]:
        c = self.config
        problems = self.load_teacher_problems()
        if problems:
            return problems
        try:
            submodule(pl_module, c.student_module)
        except KeyError as exc:
            problems.append(f"{self.name}: student_module={c.student_module!r}: {exc.args[0]}")
        total = trainer.estimated_stepping_batches
        try:
            resolve = step_resolver(trainer, total)
            start, end = resolve(c.start), resolve(c.end)
            if start >= end:
                problems.append(f"{self.name}: start={c.start.plain()} (step {start}) is not before end={c.end.plain()} (step {end}): move start earlier or end later")
            elif math.isfinite(total) and end > total:
                problems.append(
                    f"{self.name}: end={c.end.plain()} (step {end}) is after the run's last step {int(total)}: distillation "
                    "would never stop as planned; end earlier (e.g. a fraction such as 0.3) or train longer"
                )
        except ConfigError as exc:
            problems.append(f"{self.name}: {exc}")
        return problems

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        total = trainer.estimated_stepping_batches
        resolve = step_resolver(trainer, total)
        self.start_step, self.end_step = resolve(self.config.start), resolve(self.config.end)
        problems = self.probe(trainer, pl_module)
        if problems:
            raise PreflightError(problems)
        self.capture = ForwardCapture(submodule(pl_module, self.config.student_module), self.feature_modules(pl_module))

    def probe(self, trainer, pl_module) -> list[str]:
        """Student and teacher on one small batch of the training set (no gradients, eval mode, the
        random state forked): shapes and finiteness checked before step 0."""
        from lightning_eff.schedule import _first_train_loader

        try:
            batch = probe_batch(_first_train_loader(trainer))
        except Exception:  # noqa: BLE001 - no map-style dataset to probe: the checks run in training
            return []
        capture = ForwardCapture(submodule(pl_module, self.config.student_module), self.feature_modules(pl_module), always=True)
        capture.active = True
        was_training = pl_module.training
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                pl_module.eval()
                try:
                    pl_module.per_sample_loss(batch)
                except Exception as exc:  # noqa: BLE001
                    return [f"{self.name}: the student's per_sample_loss failed on a probe batch: {type(exc).__name__}: {exc}"]
                if capture.inputs is None:
                    return [
                        f"{self.name}: per_sample_loss(batch) never called the forward of "
                        f"{self.config.student_module or type(pl_module).__name__}: set student_module= to the submodule it calls"
                    ]
                try:
                    output = self.teacher_forward(capture)
                except Exception as exc:  # noqa: BLE001
                    return [f"{self.name}: the teacher failed on the student's inputs: {type(exc).__name__}: {exc}"]
                return self.check_probe(pl_module, capture, output)
        finally:
            capture.remove()
            pl_module.train(was_training)

    # -- per step --------------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.teacher is not None:
            self.teacher.to(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.weight = distillation_weight(trainer.global_step, self.alpha, self.start_step, self.end_step, self.config.decay)
        self.capture.clear()
        self.capture.active = self.weight > 0

    @property
    def alpha(self) -> float:
        raise NotImplementedError

    def aux_loss(self, module) -> torch.Tensor | None:
        """``weight * distill_loss`` of this step's training forward, or None (off, or no forward)."""
        capture = self.capture
        if capture is None or not capture.active or capture.inputs is None:
            return None
        started = time.perf_counter()
        teacher_output = self.teacher_forward(capture)
        self.teacher_forwards += 1
        self.teacher_seconds += time.perf_counter() - started
        loss = self.distill_loss(module, capture, teacher_output)
        self.last_loss = float(loss.detach())
        return self.weight * loss

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.capture.clear()  # drop the references to this step's graph

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.capture is not None:
            self.capture.remove()
            self.capture = None

    # -- reporting and state -----------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        return {
            "weight": self.weight,
            "loss": self.last_loss,
            "teacher_forwards": float(self.teacher_forwards),
            "teacher_seconds": self.teacher_seconds,
        }

    def state_dict(self) -> dict[str, Any]:
        # The teacher is not state: it is loaded again from its file. Only the counters are.
        return {"teacher_forwards": self.teacher_forwards}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.teacher_forwards = int(state_dict.get("teacher_forwards", 0))
