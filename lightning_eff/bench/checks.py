"""Checks over finished runs that a reader must hear about: a schedule built for more steps than
were trained, and executed ops whose FLOPs nobody could count."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_eff.bench.schema import Run


def schedule_shortfall(run: Run) -> float | None:
    """Fraction of Lightning's ``estimated_stepping_batches`` the run did not train (``None``: no
    estimate, or it trained at least that many)."""
    if not run.estimated_steps or run.steps >= run.estimated_steps:
        return None
    return 1.0 - run.steps / run.estimated_steps


def schedule_warnings(runs: Sequence[Run]) -> list[str]:
    lines = []
    for arm in ("baseline", "recipe"):
        short = [(r, schedule_shortfall(r)) for r in runs if r.arm == arm]
        # The embedded tasks' schedule follows the epochs and still ends at 0: only an undecayed one is news.
        short = [(r, f) for r, f in short if f is not None and f > 0.01 and (r.final_lr_fraction is None or r.final_lr_fraction > 0.05)]
        if not short:
            continue
        r, f = max(short, key=lambda pair: pair[1])
        lr = f", its learning rate ended at {r.final_lr_fraction:.0%} of its peak" if r.final_lr_fraction is not None else ""
        lines.append(
            f"the {arm} arm trained fewer steps than Lightning's estimate (seed {r.seed}: {r.steps} of "
            f"trainer.estimated_stepping_batches = {r.estimated_steps}, {f:.0%} short){lr}: the estimate assumes full "
            "epochs, so a sampler that shortens epochs leaves a schedule built on it undecayed"
        )
    return lines


def uncounted_warnings(runs: Sequence[Run]) -> list[str]:
    ops = sorted({op for r in runs for op in r.uncounted_ops})
    if not ops:
        return []
    return [f"ops without a FLOP formula ran and count as 0 FLOPs: {', '.join(ops)}"]
