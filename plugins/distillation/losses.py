"""The math of distillation, as pure functions of tensors (no Trainer, no hooks).

- :func:`kd_loss`: Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network"): the KL
  divergence from the teacher's to the student's softened distribution at temperature ``T``, scaled
  by ``T**2`` so that its gradients keep their size when ``T`` changes.
- :func:`feature_loss`: FitNets-style hints (Romero et al. 2015): a projected student feature
  regressed on the teacher's, divided by the teacher feature's energy so that every layer's term is
  about 1 at the start whatever its scale, and no layer dominates the sum.
- :func:`distillation_weight`: the weight of the distillation term at a step: ``alpha`` inside a
  window, down to 0 at its end (SALT, Rawat et al. 2024, "A Little Help Goes a Long Way": a small
  teacher helps a large student early in training and hurts later, so distil only the first part).
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from lightning_eff.schedule import shape_function


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over samples.

    Logits of shape ``[N, C]`` or ``[N, ..., C]`` (a sequence model's ``[N, L, V]``: every position is
    a sample of the average). Computed in float32 whatever the inputs' dtype."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    classes = student_logits.shape[-1]
    student = student_logits.float().reshape(-1, classes) / temperature
    teacher = teacher_logits.detach().float().reshape(-1, classes) / temperature
    kl = F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True, reduction="batchmean")
    return kl * temperature**2


def feature_loss(projected_student: Tensor, teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """``mean_i ||s_i - t_i||**2 / mean_i ||t_i||**2`` over the samples ``i`` (dimension 0).

    Normalised by the teacher feature's mean energy (detached): a layer whose activations are 100x
    larger does not weigh 10,000x more, and a student that outputs zeros scores exactly 1."""
    if projected_student.shape != teacher.shape:
        raise ValueError(
            f"projected student feature {tuple(projected_student.shape)} and teacher feature {tuple(teacher.shape)} differ"
        )
    s = projected_student.float().flatten(1)
    t = teacher.detach().float().flatten(1)
    return (s - t).pow(2).sum(1).mean() / (t.pow(2).sum(1).mean() + eps)


def distillation_weight(step: int, alpha: float, start_step: int, end_step: int, decay: str = "step") -> float:
    """The weight at optimizer step ``step``: 0 before ``start_step`` and from ``end_step`` on; inside
    ``[start_step, end_step)`` ``alpha`` (``decay="step"``, switched off at the end) or ``alpha``
    brought down to 0 at the end along a schedule shape (``"linear"``, ``"cosine"``)."""
    if step < start_step or step >= end_step:
        return 0.0
    if decay == "step":
        return float(alpha)
    progress = (step - start_step) / max(1, end_step - start_step)
    return float(alpha) * (1.0 - shape_function(decay)(progress))


def mixed_loss(student_loss: Tensor, distill_loss: Tensor, weight: float) -> Tensor:
    """Hinton's mixture ``(1 - w) * student_loss + w * distill_loss`` (reference for the tests: the
    techniques reach it through per-sample weights ``1 - w`` and an auxiliary loss ``w * distill``)."""
    return (1.0 - weight) * student_loss + weight * distill_loss

