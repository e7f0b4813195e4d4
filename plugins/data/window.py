"""When a batch selector acts: a window of optimizer steps, optionally skipping every k-th step.

The window's ends are :class:`lightning_eff.schedule.TimePoint` values (steps, fractions of the run,
samples or tokens), resolved once to optimizer steps: ``trainer.global_step``, never ``batch_idx``,
so gradient accumulation and sub-epoch runs stay right.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActiveWindow:
    """Active on steps ``[start, end)`` except every ``interrupt``-th one (0: no interruption).

    Composer's Selective Backprop trains every other batch on the full batch (``interrupt=2``) so
    the model keeps seeing the easy samples it would otherwise forget.
    """

    start: int
    end: int
    interrupt: int = 0

    def active(self, step: int) -> bool:
        in_window = self.start <= step < self.end
        return in_window and (self.interrupt == 0 or (step + 1) % self.interrupt != 0)

    def active_steps(self) -> int:
        """How many steps of the window select (for a compute estimate)."""
        return sum(self.active(s) for s in range(self.start, self.end))
