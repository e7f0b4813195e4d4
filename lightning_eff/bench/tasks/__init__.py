"""Embedded benchmark tasks by name, and the user's own task from import paths.

Task modules import their heavy libraries (transformers, scikit-learn) only when the task is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning_eff.bench.tasks.base import BenchModule, BenchTask, warmup_cosine_factor
from lightning_eff.errors import ConfigError


def _vision(**options: Any) -> BenchTask:
    from lightning_eff.bench.tasks.vision import vision_task

    return vision_task(**options)


def _lm(**options: Any) -> BenchTask:
    from lightning_eff.bench.tasks.lm import lm_task

    return lm_task(**options)


def _finetune(**options: Any) -> BenchTask:
    from lightning_eff.bench.tasks.finetune import finetune_task

    return finetune_task(**options)


TASKS: dict[str, Callable[..., BenchTask]] = {"vision": _vision, "lm": _lm, "finetune": _finetune}
#: options each embedded task understands (others are rejected before anything is built)
TASK_OPTIONS: dict[str, set[str]] = {"vision": {"label_noise"}, "lm": set(), "finetune": set()}


def get_task(name: str, **options: Any) -> BenchTask:
    """An embedded task by name; unknown names and options fail naming what exists."""
    if name not in TASKS:
        raise ConfigError(
            f"unknown bench task '{name}'; known tasks: {', '.join(TASKS)} "
            "(or your own: --model pkg.module:MyModule --data pkg.module:MyDataModule)"
        )
    given = {k: v for k, v in options.items() if v not in (None, 0, 0.0)}
    unsupported = sorted(set(given) - TASK_OPTIONS[name])
    if unsupported:
        raise ConfigError(f"task '{name}' does not take {', '.join(unsupported)}; it takes: {', '.join(sorted(TASK_OPTIONS[name])) or 'no options'}")
    return TASKS[name](**given)


__all__ = ["TASKS", "BenchModule", "BenchTask", "get_task", "warmup_cosine_factor"]
