"""Knowledge distillation on logits (Hinton et al. 2015), optionally early-only (SALT, Rawat et al. 2024).

The training loss becomes ``(1 - w) * student_loss + w * T**2 * KL(p_teacher^T || p_student^T)``:
the student's own per-sample losses are weighted ``1 - w`` (``leff_sample_weights``) and the
distillation term is an auxiliary loss (``leff_aux_losses``), both through ``EfficientModule``. The
teacher runs once per step, under ``no_grad``, on exactly the inputs of the student's training
forward (after any batch selection).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from pydantic import Field

from lightning_eff import hookimpl
from lightning_eff.errors import ConfigError
from lightning_eff.schedule import TimeLike

from .base import Decay, DistillationConfig, DistillationTechnique
from .capture import ForwardCapture
from .losses import kd_loss
from .offline import TeacherOutputs, sample_keys, sparse_kd_loss
from .teacher import TeacherPrecision, logits_of

StudentLoss = Literal["complement", "full"]


class StoredOutput(NamedTuple):
    """The teacher's stored top-k logits (values, class indices) of a batch's samples."""

    values: torch.Tensor
    indices: torch.Tensor


class KnowledgeDistillationConfig(DistillationConfig):
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight w of the distillation term while it is on")
    temperature: float = Field(2.0, gt=0.0, description="softmax temperature T of both distributions (loss scaled by T**2)")
    teacher_outputs: str | None = Field(
        None,
        description="folder written by `lightning-eff distill cache` (the teacher's top-k logits per sample): read "
        "instead of running a teacher; samples are matched by their inputs' content",
    )
    student_loss: StudentLoss = Field(
        "complement", description="'complement': the student's own loss weighted 1 - w (Hinton); 'full': kept at weight 1"
    )


class KnowledgeDistillation(DistillationTechnique):
    """Distil a frozen teacher's softened logits into the student (Hinton et al. 2015; SALT schedule)."""

    name = "knowledge_distillation"
    after = ("moe_upcycling", "structured_pruning")  # student_module names a module as surgery leaves it
    Config = KnowledgeDistillationConfig

    def __init__(
        self,
        teacher: Any = None,
        teacher_class: str | None = None,
        teacher_hparams: dict[str, Any] | None = None,
        alpha: float = 0.5,
        temperature: float = 2.0,
        student_loss: StudentLoss = "complement",
        teacher_outputs: str | None = None,
        start: TimeLike = 0.0,
        end: TimeLike = 1.0,
        decay: Decay = "step",
        teacher_precision: TeacherPrecision = "fp32",
        student_module: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            teacher=teacher,
            teacher_class=teacher_class,
            teacher_hparams=None if teacher_hparams is None else dict(teacher_hparams),
            alpha=alpha,
            temperature=temperature,
            student_loss=student_loss,
            teacher_outputs=teacher_outputs,
            start=start,
            end=end,
            decay=decay,
            teacher_precision=teacher_precision,
            student_module=student_module,
            seed=seed,
        )
        self.stored: TeacherOutputs | None = None

    @property
    def alpha(self) -> float:
        return self.config.alpha

    # -- stored teacher outputs ------------------------------------------------------------------

    def load_teacher_problems(self) -> list[str]:
        c = self.config
        if c.teacher_outputs is None:
            return super().load_teacher_problems()
        if c.teacher is not None or self.teacher is not None:
            return [f"{self.name}: give either teacher= or teacher_outputs=, not both"]
        try:
            self.stored = TeacherOutputs(c.teacher_outputs)
        except ConfigError as exc:
            return [f"{self.name} cannot read its stored teacher outputs: {exc}"]
        return []

    def teacher_forward(self, capture: ForwardCapture) -> Any:
        if self.stored is None:
            return super().teacher_forward(capture)
        values, indices = self.stored.lookup(sample_keys(*capture.inputs))
        return StoredOutput(values, indices)

    def check_probe(self, pl_module, capture: ForwardCapture, teacher_output: Any) -> list[str]:
        where = self.config.student_module or type(pl_module).__name__
        if isinstance(teacher_output, StoredOutput):
            return self._check_stored(logits_of(capture.output), teacher_output, where)
        try:
            student, teacher = logits_of(capture.output), logits_of(teacher_output)
        except TypeError as exc:
            return [f"{self.name}: {exc}: the student ({where}) and the teacher must return logits"]
        if student.shape != teacher.shape:
            return [
                f"{self.name}: the teacher's logits {tuple(teacher.shape)} do not match the student's "
                f"{tuple(student.shape)} ({where}) on a probe batch: distil into a student with the same classes/vocabulary"
            ]
        if not torch.isfinite(teacher.float()).all():
            return [f"{self.name}: the teacher's logits on a probe batch are not finite (nan/inf): check its weights"]
        return []

    def _check_stored(self, student: torch.Tensor, stored: StoredOutput, where: str) -> list[str]:
        expected = (*self.stored.sample_shape, self.stored.classes)
        if tuple(student.shape[1:]) != expected:
            return [
                f"{self.name}: the stored teacher outputs are for logits of shape (N, {', '.join(map(str, expected))}) but "
                f"the student ({where}) returns {tuple(student.shape)}: store them for this student's classes/vocabulary"
            ]
        if not torch.isfinite(stored.values).all():
            return [f"{self.name}: the stored teacher outputs hold non-finite logits (nan/inf): store them again"]
        return []

    def distill_loss(self, pl_module, capture: ForwardCapture, teacher_output: Any) -> torch.Tensor:
        if isinstance(teacher_output, StoredOutput):
            return sparse_kd_loss(logits_of(capture.output), teacher_output.values, teacher_output.indices, self.config.temperature)
        return kd_loss(logits_of(capture.output), logits_of(teacher_output), self.config.temperature)

    @hookimpl
    def leff_sample_weights(self, module, batch, per_sample_loss) -> torch.Tensor | None:
        if self.config.student_loss != "complement" or self.weight <= 0:
            return None
        return torch.full_like(per_sample_loss, 1.0 - self.weight)

    @hookimpl
    def leff_aux_losses(self, module) -> dict[str, torch.Tensor] | None:
        loss = self.aux_loss(module)
        return None if loss is None else {"distill": loss}
