"""Feature distillation (FitNets, Romero et al. 2015): regress intermediate student representations,
through learned projections, on the teacher's.

Student and teacher layers are chosen by name patterns and paired in module order. Every pair's term
is normalised by the teacher feature's energy (:func:`~.losses.feature_loss`) and the terms are
averaged, so neither a layer with large activations nor the number of layers sets the scale. The
projections are trained and checkpointed with the student (attribute ``distillation_projections`` of
the LightningModule, created in ``setup`` before the optimizer exists).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator

from lightning_eff import PreflightError, hookimpl
from lightning_eff.schedule import TimeLike

from .base import Decay, DistillationConfig, DistillationTechnique
from .capture import ForwardCapture, match_modules
from .losses import feature_loss
from .projection import ATTRIBUTE, build_projections, projection_problem
from .teacher import TeacherPrecision


class FeatureDistillationConfig(DistillationConfig):
    student_layers: list[str] = Field(
        ..., description="name patterns (fnmatch, e.g. 'blocks.*') of the student modules whose outputs are distilled"
    )
    teacher_layers: list[str] = Field(
        ..., description="name patterns of the teacher modules; matched modules pair with the student's in module order"
    )
    weight: float = Field(1.0, ge=0.0, description="weight of the (layer-averaged, normalised) feature loss while it is on")

    @field_validator("student_layers", "teacher_layers")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one name pattern")
        return value


class FeatureDistillation(DistillationTechnique):
    """Match intermediate student features to a frozen teacher's through learned projections (FitNets)."""

    name = "feature_distillation"
    after = ("moe_upcycling", "structured_pruning")  # patterns name the modules as surgery leaves them
    acts_before_sharding = True  # adds the projections to the LightningModule in setup
    Config = FeatureDistillationConfig

    def __init__(
        self,
        student_layers: list[str],
        teacher_layers: list[str],
        teacher: Any = None,
        teacher_class: str | None = None,
        teacher_hparams: dict[str, Any] | None = None,
        weight: float = 1.0,
        start: TimeLike = 0.0,
        end: TimeLike = 1.0,
        decay: Decay = "step",
        teacher_precision: TeacherPrecision = "fp32",
        student_module: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            teacher=teacher,
            student_layers=list(student_layers),
            teacher_layers=list(teacher_layers),
            teacher_class=teacher_class,
            teacher_hparams=None if teacher_hparams is None else dict(teacher_hparams),
            weight=weight,
            start=start,
            end=end,
            decay=decay,
            teacher_precision=teacher_precision,
            student_module=student_module,
            seed=seed,
        )
        c = self.config
        # Outside the window the projections get no gradient: DDP must then look for unused parameters.
        self.find_unused_parameters = not (c.start.value == 0 and c.end.unit == "fraction" and c.end.value == 1.0)
        self.teacher_features: dict[str, torch.Tensor] = {}
        self._teacher_handles: list = []
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._student_names: list[str] = []

    @property
    def alpha(self) -> float:
        return self.config.weight

    # -- modules and hooks -----------------------------------------------------------------------

    def feature_modules(self, pl_module) -> dict[str, torch.nn.Module]:
        modules = match_modules(pl_module, self.config.student_layers)
        self._student_names = list(modules)  # fixed from here on: the projections match nothing
        return modules

    def _hook_teacher(self) -> None:
        if self._teacher_handles:
            return
        for name, module in match_modules(self.teacher, self.config.teacher_layers).items():
            self._teacher_handles.append(module.register_forward_hook(self._teacher_hook(name)))

    def _teacher_hook(self, name: str):
        def hook(module, args, output) -> None:
            self.teacher_features[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def prepare_teacher_run(self) -> None:
        self._hook_teacher()
        self.teacher_features = {}

    # -- preflight and set-up --------------------------------------------------------------------

    def validate(self, trainer, pl_module) -> list[str]:
        problems = super().validate(trainer, pl_module)
        if self.teacher is None:
            return problems
        if not match_modules(self.teacher, self.config.teacher_layers):
            problems.append(f"feature_distillation: teacher_layers={self.config.teacher_layers} match no module of the teacher ({type(self.teacher).__name__})")
        return problems

    def check_probe(self, pl_module, capture: ForwardCapture, teacher_output: Any) -> list[str]:
        c = self.config
        student = [capture.features[n] for n in self.feature_modules(pl_module) if n in capture.features]
        teacher = list(self.teacher_features.values())
        if not student:
            return [f"feature_distillation: student_layers={c.student_layers} match no module that ran in the student's forward"]
        if len(student) != len(teacher):
            return [
                f"feature_distillation: student_layers={c.student_layers} matched {len(student)} modules but "
                f"teacher_layers={c.teacher_layers} matched {len(teacher)}: the patterns must pair one to one"
            ]
        problems = []
        for i, (s, t) in enumerate(zip(student, teacher)):
            reason = projection_problem(s, t) if isinstance(s, torch.Tensor) and isinstance(t, torch.Tensor) else "a module did not return a tensor"
            if reason is not None:
                problems.append(f"feature_distillation: layer pair {i} cannot be projected: {reason}")
            elif not torch.isfinite(t.float()).all():
                problems.append(f"feature_distillation: the teacher's feature {i} on a probe batch is not finite (nan/inf): check its weights")
        self._pairs = [(s.detach(), t.detach()) for s, t in zip(student, teacher)]
        return problems

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        if not self._pairs:
            raise PreflightError(["feature_distillation needs a map-style training dataset to size its projections from one batch"])
        fresh = build_projections(self._pairs, self.config.seed)
        existing = getattr(pl_module, ATTRIBUTE, None)
        if existing is None or [p.shape for p in existing.parameters()] != [p.shape for p in fresh.parameters()]:
            setattr(pl_module, ATTRIBUTE, fresh)  # before the optimizer exists and the checkpoint is restored

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        optimised = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
        missing = [n for n, p in getattr(pl_module, ATTRIBUTE).named_parameters() if id(p) not in optimised]
        if missing:
            raise PreflightError([
                f"feature_distillation: the optimizer does not train the projections "
                f"(pl_module.{ATTRIBUTE}.{missing[0]}...): build it from self.parameters() in configure_optimizers"
            ])

    # -- per step --------------------------------------------------------------------------------

    def distill_loss(self, pl_module, capture: ForwardCapture, teacher_output: Any) -> torch.Tensor:
        student = [capture.features[n] for n in self._student_names if n in capture.features]
        teacher = list(self.teacher_features.values())
        projections = getattr(pl_module, ATTRIBUTE)
        terms = [feature_loss(proj(s), t) for proj, s, t in zip(projections, student, teacher)]
        return torch.stack(terms).mean()

    @hookimpl
    def leff_aux_losses(self, module) -> dict[str, torch.Tensor] | None:
        loss = self.aux_loss(module)
        return None if loss is None else {"feature_distill": loss}

    def teardown(self, trainer, pl_module, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        for handle in self._teacher_handles:
            handle.remove()
        self._teacher_handles = []
