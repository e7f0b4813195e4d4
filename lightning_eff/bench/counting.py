"""FLOP counts in the results: where they come from (the ``--flops`` modes) and how a separate,
untimed counting pass is joined to the timed run it repeats."""

from __future__ import annotations

from lightning_eff.bench.schema import Run

FLOPS_MODES = ("separate", "inline", "off")

WHAT_COUNTS = (
    "torch.utils.flop_counter formulas over the ops actually executed, from setup('fit') (technique "
    "set-up work included) to the end of training, validation excluded; backward = ops the autograd "
    "engine runs for a backward node, forward = everything else (no-grad scoring forwards of data "
    "selectors included; work that is skipped or cached is not executed, so not counted). Only "
    "matmul-type ops count (mm, addmm, bmm, convolution, scaled-dot-product attention, and the "
    "project's grouped-GEMM MoE and fused linear-cross-entropy ops); elementwise ops, norms, softmax "
    "count 0, and the optimizer update is left out of the count"
)
# benchmarks/flops_overhead.py, 2-core CPU, 2026-12-06: see docs/benchmarking.md ("Compute").
MEASURED_OVERHEAD = (
    "counting inside a run measured 1.09-1.12x the time of whole finetune baseline runs and 1.15x of its quickstart "
    "recipe runs (slightly over the 1.1x limit, both arms alike; a Python dispatch mode that counts nothing costs the "
    "same), 1.26x of a bare lm training step and 1.02x of a vision step"
)
FLOPS_METHOD = {
    "separate": (
        f"{WHAT_COUNTS}. Counted in a separate, untimed pass of every run (same seed and settings), "
        f"because {MEASURED_OVERHEAD} (limit 1.1x): timed runs are never counted. Compute-to-quality "
        "is the counted pass's cumulative FLOPs at the timed run's first evaluation that reaches the target"
    ),
    "inline": (
        f"{WHAT_COUNTS}. Counted inside the timed runs (--flops inline): {MEASURED_OVERHEAD}, so the "
        "times here include the counting overhead (inline is for tasks whose counted runs stay near 1.1x)"
    ),
    "off": "not counted (--flops off)",
}


def merge_counts(timed: Run, counted: Run) -> Run:
    """``timed`` with the FLOPs of its counting pass: totals, and each evaluation's cumulative count
    from the counted pass's evaluation at the same step (``None`` where it has none)."""
    at_step = {p.step: p.flops for p in counted.curve}
    curve = [p.model_copy(update={"flops": at_step.get(p.step)}) for p in timed.curve]
    fields = ("flops", "forward_flops", "backward_flops", "setup_flops", "uncounted_ops")
    return timed.model_copy(update={"curve": curve, **{f: getattr(counted, f) for f in fields}})


def diverged(timed: Run, counted: Run) -> bool:
    """Whether the counting pass trained differently (non-deterministic kernels): other steps or
    other qualities at the evaluations."""
    return [(p.step, p.quality) for p in timed.curve] != [(p.step, p.quality) for p in counted.curve]
