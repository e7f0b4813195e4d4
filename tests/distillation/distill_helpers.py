"""Small teachers and students for the distillation tests (module level: picklable for DDP)."""

from pathlib import Path

import torch
from torch import nn

from lightning_eff.testing import TinyClassifier

TEACHER_CLASS = "distill_helpers:Teacher"


class Teacher(nn.Module):
    """A wider MLP over TinyDataModule's inputs (16 features, 4 classes), with named blocks."""

    def __init__(self, features: int = 16, hidden: int = 48, classes: int = 4) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Linear(features, hidden), nn.ReLU()),
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()),
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class GradSpyTeacher(Teacher):
    """Records whether gradients were enabled and whether it was in train mode at each forward."""

    calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        GradSpyTeacher.calls.append((torch.is_grad_enabled(), self.training))
        return super().forward(x)


def save_teacher(folder: Path, seed: int = 1, **hparams) -> str:
    """A teacher's weights-only state dict in ``folder``; returns its path."""
    torch.manual_seed(seed)
    path = Path(folder) / "teacher.pt"
    torch.save(Teacher(**hparams).state_dict(), path)
    return str(path)


def student() -> TinyClassifier:
    return TinyClassifier(hidden=16, depth=2)
