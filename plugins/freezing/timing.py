"""Time points of the freezing schedules: optimizer steps (int) or fractions of the run (float).

Schedules speak optimizer steps (``trainer.global_step``), never ``batch_idx`` or epochs: gradient
accumulation and sub-epoch runs stay right. A float in [0, 1] is a fraction of
``trainer.estimated_stepping_batches``. (Kept local until ``lightning_eff.schedule`` lands in core.)
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field

#: an optimizer step (int >= 0) or a fraction of the run's optimizer steps (float in [0, 1])
StepOrFraction = Annotated[int, Field(ge=0)] | Annotated[float, Field(ge=0.0, le=1.0)]
#: a positive interval: steps (int >= 1) or a fraction of the run (float in (0, 1])
Interval = Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0.0, le=1.0)]


def resolve_step(point: float, total_steps: float) -> int:
    """The optimizer step a time point names; fractions need a finite ``total_steps``."""
    if not isinstance(point, float):
        return int(point)
    if not math.isfinite(total_steps):
        raise ValueError("a fraction of the run needs a finite number of steps: set max_steps or max_epochs")
    return int(point * total_steps + 0.5)


def total_steps_of(trainer) -> float:
    """``trainer.estimated_stepping_batches`` (optimizer steps of the whole fit; may be inf)."""
    return float(trainer.estimated_stepping_batches)
