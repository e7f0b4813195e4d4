"""Running a teacher over a training set once and storing its top-k logits (``lightning-eff distill
cache``): the inputs each sample gives the student's forward are found by running the student's own
``per_sample_loss`` on it (no gradients, eval mode), so the stored keys are exactly what
:class:`~.knowledge.KnowledgeDistillation` sees during training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .capture import ForwardCapture, submodule
from .offline import TeacherOutputsWriter, sample_keys, top_k_logits
from .teacher import logits_of, run_teacher


def store_teacher_outputs(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    dataset: Any,
    collate: Callable,
    out: Path,
    top_k: int,
    batch_size: int = 64,
    student_module: str | None = None,
    precision: str = "fp32",
    meta: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``out`` (see :mod:`.offline`) for every sample of ``dataset``, in dataset order."""
    total = len(dataset)
    capture = ForwardCapture(submodule(student, student_module), always=True)
    capture.active = True
    writer = None
    student.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for begin in range(0, total, batch_size):
                batch = collate([dataset[i] for i in range(begin, min(total, begin + batch_size))])
                capture.clear()
                student.per_sample_loss(batch)
                if capture.inputs is None:
                    raise ValueError("per_sample_loss(batch) never called the student's forward: pass --student-module")
                logits = logits_of(run_teacher(teacher, *capture.inputs, precision))
                values, indices = top_k_logits(logits, top_k)
                if writer is None:
                    writer = TeacherOutputsWriter(out, total, tuple(logits.shape[1:-1]), values.shape[-1], logits.shape[-1], dict(meta or {}))
                writer.add(values, indices, sample_keys(*capture.inputs))
                if progress is not None:
                    progress(min(total, begin + batch_size), total)
    finally:
        capture.remove()
    if writer is None:
        raise ValueError("the training set is empty: nothing to store")
    return writer.close()
