"""Learned projections from student features to teacher features (FitNets' regressors).

A feature of shape ``[N, C, H, W]`` (a convolution's) is projected over its channels by a 1x1
convolution (spatial sizes must match); any other shape ``[N, ..., D]`` over its last dimension by a
Linear layer (all other dimensions must match). The projections are trained with the student: they
are a submodule of the LightningModule (so in its optimizer and its checkpoint) and are not needed
after training.
"""

from __future__ import annotations

import torch
from torch import nn

ATTRIBUTE = "distillation_projections"


def projection_problem(student: torch.Tensor, teacher: torch.Tensor) -> str | None:
    """Why ``student`` cannot be projected onto ``teacher``'s shape, or None."""
    if student.dim() != teacher.dim() or student.dim() < 2:
        return f"shapes {tuple(student.shape)} and {tuple(teacher.shape)} have different ranks (or no feature dimension)"
    if student.dim() == 4:
        if student.shape[2:] != teacher.shape[2:]:
            return f"convolution features {tuple(student.shape)} and {tuple(teacher.shape)} differ in spatial size"
    elif student.shape[:-1] != teacher.shape[:-1]:
        return f"features {tuple(student.shape)} and {tuple(teacher.shape)} differ outside their last dimension"
    return None


def make_projection(student: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
    """A 1x1 convolution (4-D features) or a Linear layer from the student's to the teacher's width."""
    if student.dim() == 4:
        return nn.Conv2d(student.shape[1], teacher.shape[1], kernel_size=1)
    return nn.Linear(student.shape[-1], teacher.shape[-1])


def build_projections(pairs: list[tuple[torch.Tensor, torch.Tensor]], seed: int) -> nn.ModuleList:
    """One projection per (student feature, teacher feature) pair, initialised from ``seed`` without
    touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.ModuleList(make_projection(s, t) for s, t in pairs)
