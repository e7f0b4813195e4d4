"""Training FLOPs counted from the ops actually executed, forward and backward apart.

Counting uses torch's ``FlopCounterMode`` formulas: matmul-type ops (mm, addmm, bmm, convolution,
scaled-dot-product attention, and their backward ops) count; elementwise ops, norms, softmax and the
optimizer's update count 0 (torch's convention). An op counts as *backward* when the autograd engine
runs it for a backward node (``torch._C._current_autograd_node()``), so recomputation inside a
backward (activation checkpointing) is backward work, and a no-grad scoring forward of a data
selector is forward work. Work that is not executed (the backward a frozen block skips, a cached
activation) is not counted.

The project's own custom ops (``lightning_eff::*``) are opaque to the counter; the two that do
matmuls get formulas here. Any other op outside ``aten`` is reported by name (counted as 0).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

# Ops of these namespaces carry no hidden matmul (or are torch's own bookkeeping).
KNOWN_NAMESPACES = {"aten", "prims", "prim", "profiler", "_c10d_functional", "c10d"}
# The project's custom ops without matmuls: 0 FLOPs by the same convention as elementwise aten ops.
ZERO_FLOP_OPS = {
    "lightning_eff::cross_entropy_logsumexp", "lightning_eff::cross_entropy_logsumexp_backward",
    "lightning_eff::rms_norm", "lightning_eff::layer_norm", "lightning_eff::norm_backward",
    "lightning_eff::fp8_cast", "lightning_eff::moe_routing_metadata", "lightning_eff::moe_topk_routing",
    "lightning_eff::nm_mask", "lightning_eff::nm_mask_decay", "lightning_eff::masked_update_",
}


def _raw(formula):
    formula._get_raw = True  # FlopCounterMode passes tensors, not shapes: the kept-slot count is a value
    return formula


@_raw
def grouped_swiglu_flops(x, w_gate, w_up, w_down, weights, offsets, permutation, *args, out_val=None, **kwargs) -> int:
    """``moe_grouped_swiglu``: gate, up and down GEMMs of every kept (token, expert) slot."""
    kept = int(offsets[-1])
    _, n_ff, hidden = w_gate.shape
    return 3 * 2 * kept * hidden * n_ff


@_raw
def grouped_swiglu_backward_flops(grad_out, x, w_gate, w_up, w_down, weights, offsets, *args, out_val=None, **kwargs) -> int:
    """Its backward: grad of the down input, three weight grads and two input grads per kept slot."""
    kept = int(offsets[-1])
    _, n_ff, hidden = w_gate.shape
    return 6 * 2 * kept * hidden * n_ff


@_raw
def fused_linear_ce_flops(hidden, weight, *args, out_val=None, **kwargs) -> int:
    """``fused_linear_cross_entropy``: the logits GEMM, chunk by chunk."""
    return 2 * hidden.shape[0] * hidden.shape[1] * weight.shape[0]


@_raw
def fused_linear_ce_backward_flops(hidden, weight, bias, targets, lse, grad_loss, ignore_index, chunk_size, needs, out_val=None) -> int:
    """Its backward recomputes the logits, then the hidden and weight grads it needs."""
    gemm = 2 * hidden.shape[0] * hidden.shape[1] * weight.shape[0]
    return gemm * (1 + int(bool(needs[0])) + int(bool(needs[1])))


CUSTOM_FORMULAS = {
    "moe_grouped_swiglu": grouped_swiglu_flops,
    "moe_grouped_swiglu_backward": grouped_swiglu_backward_flops,
    "fused_linear_cross_entropy": fused_linear_ce_flops,
    "fused_linear_cross_entropy_backward": fused_linear_ce_backward_flops,
}


def custom_mapping() -> dict[Any, Any]:
    """Formulas for the project's matmul custom ops that are registered in this process."""
    try:
        import lightning_eff.kernels  # noqa: F401 - registers the torch.ops.lightning_eff namespace
    except ImportError:  # kernels unavailable: nothing of theirs can run either
        return {}
    mapping = {}
    for name, formula in CUSTOM_FORMULAS.items():
        try:
            mapping[getattr(torch.ops.lightning_eff, name)] = formula
        except (AttributeError, RuntimeError):
            continue
    return mapping


class SplitFlopCounter(FlopCounterMode):
    """FlopCounterMode split by autograd phase, without its per-module tracker (one global count is
    all the bench needs, and the tracker's hooks on every module cost time). Re-enterable: counts
    accumulate across ``with`` blocks."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=custom_mapping())
        self.forward = 0
        self.backward = 0
        self.unknown_ops: set[str] = set()

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def __enter__(self):
        self.mode = _FlopCounterMode(self)
        self.mode.__enter__()
        return self

    def __exit__(self, *args):
        mode, self.mode = self.mode, None
        return mode.__exit__(*args) if mode is not None else None

    def _count_flops(self, func_packet, out, args, kwargs):
        formula = self.flop_registry.get(func_packet)
        if formula is None:
            name = getattr(func_packet, "_qualified_op_name", "aten::")
            if name.split("::", 1)[0] not in KNOWN_NAMESPACES and name not in ZERO_FLOP_OPS:
                self.unknown_ops.add(name)
            return out
        flops = int(formula(*args, **kwargs, out_val=out))
        if torch._C._current_autograd_node() is None:
            self.forward += flops
        else:
            self.backward += flops
        return out


class FlopMeter(Callback):
    """Counts FLOPs over the same window as the training clock: from ``setup('fit')`` (the techniques'
    set-up work counts) to the end of training, paused during validation (sanity check included).

    Placed right after the clock, before the techniques, so their set-up and per-batch work is inside.
    """

    def __init__(self) -> None:
        self.counter = SplitFlopCounter()
        self.setup_flops: int | None = None  # counted before the first training batch
        self._active = False

    @property
    def total(self) -> int:
        return self.counter.total

    def _start(self) -> None:
        if not self._active:
            self.counter.__enter__()
            self._active = True

    def _stop(self) -> None:
        if self._active:
            self._active = False
            self.counter.__exit__(None, None, None)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._start()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # validation inside fit (sanity check too): training resumes
            self._start()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.setup_flops is None:
            self.setup_flops = self.counter.total

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stop()
