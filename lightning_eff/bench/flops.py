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


class _LeanDispatch(_FlopCounterMode):
    """torch's counting dispatch without its per-op detours. For every op outside its formula table
    (nearly all of them) torch's mode re-enters itself and tries ``func.decompose``, which fails unless
    the op has a CompositeImplicitAutograd kernel; and each call passes a ``torch._disable_dynamo``
    wrapper. Here an op known to have no decomposition just runs, and is counted if it has a formula;
    ops with a decomposition, higher-order ops and ops returning non-tensors (metadata queries) take
    torch's path, so the counts are torch's (tests/bench/test_flops.py compares them). About 5 us per
    op instead of 15 on this project's CPU machine."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # no per-op wrapper: the bench counts eager training, nothing traces this mode

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        route = self.counter.routes.get(func)
        if route is None:
            route = self.counter.routes[func] = self.counter.route(func)
        if route is _TORCH_PATH:
            return super().__torch_dispatch__(func, types, args, kwargs)
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if route is not _NO_FORMULA:
            self.counter.add(route(*args, **kwargs, out_val=out))
        return out


_TORCH_PATH, _NO_FORMULA = object(), object()


def _has_decomposition(func) -> bool:
    key = torch._C.DispatchKey.CompositeImplicitAutograd
    return key in func.py_kernels or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), key)


class SplitFlopCounter(FlopCounterMode):
    """FlopCounterMode split by autograd phase, without its per-module tracker (one global count is
    all the bench needs, and the tracker's hooks on every module cost time). Re-enterable: counts
    accumulate across ``with`` blocks."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=custom_mapping())
        self.forward = 0
        self.backward = 0
        self.unknown_ops: set[str] = set()
        self.routes: dict[Any, Any] = {}  # per op, decided once: torch's path, no formula, or its formula

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def __enter__(self):
        self.mode = _LeanDispatch(self)
        self.mode.__enter__()
        return self

    def __exit__(self, *args):
        mode, self.mode = self.mode, None
        return mode.__exit__(*args) if mode is not None else None

    def route(self, func) -> Any:
        """How ``func`` is counted from now on: torch's path (ops with a decomposition, higher-order
        ops, metadata queries returning no tensor), no formula (0 FLOPs; unknown namespaces noted), or
        its formula."""
        if not isinstance(func, torch._ops.OpOverload) or _has_decomposition(func):
            return _TORCH_PATH
        if not all("Tensor" in str(r.type) for r in func._schema.returns):
            return _TORCH_PATH  # size, stride, is_contiguous...: torch's mode declines them
        formula = self.flop_registry.get(func._overloadpacket)
        if formula is None:
            self._note_if_unknown(func._overloadpacket)
            return _NO_FORMULA
        return formula

    def add(self, flops: int) -> None:
        if torch._C._current_autograd_node() is None:
            self.forward += int(flops)
        else:
            self.backward += int(flops)

    def _note_if_unknown(self, func_packet) -> None:
        name = getattr(func_packet, "_qualified_op_name", "aten::")
        if name.split("::", 1)[0] not in KNOWN_NAMESPACES and name not in ZERO_FLOP_OPS:
            self.unknown_ops.add(name)

    def _count_flops(self, func_packet, out, args, kwargs):  # torch's path ends here
        formula = self.flop_registry.get(func_packet)
        if formula is None:
            self._note_if_unknown(func_packet)
        else:
            self.add(formula(*args, **kwargs, out_val=out))
        return out


class FlopMeter(Callback):
    """Counts FLOPs over the same window as the training clock: from ``setup('fit')`` (the techniques'
    set-up work counts) to the end of training, paused during validation (sanity check included) and
    during the optimizer's update.

    Placed right after the clock, before the techniques, so their set-up and per-batch work is inside;
    ``optimizer_pause`` goes last, so the techniques' ``on_before_optimizer_step`` work is inside too.
    The update itself is left out: its ops are elementwise (0 FLOPs by the convention above), and
    passing each of them through the counter cost time (a bare vision step counted with its AdamW
    update: 1.79x, without: 1.46x; finetune 1.12x and 1.07x; measured 2026-12-06).
    """

    def __init__(self) -> None:
        self.counter = SplitFlopCounter()
        self.setup_flops: int | None = None  # counted before the first training batch
        self._active = False
        self.optimizer_pause = _PauseForOptimizerUpdate(self)
        self._hooks: list[Any] = []

    @property
    def total(self) -> int:
        return self.counter.total

    def around(self, callbacks: list[Callback]) -> list[Callback]:
        """``Trainer(callbacks=meter.around(techniques))``: the meter first, its update pause last."""
        return [self, *callbacks, self.optimizer_pause]

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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Counting resumes as soon as an update returns (manual optimization may compute after it).
        self._hooks = [opt.register_step_post_hook(lambda *_: self._start()) for opt in trainer.optimizers]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.setup_flops is None:
            self.setup_flops = self.counter.total
        self._start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._start()  # an update skipped (inf gradients under a scaler) fires no post-hook

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stop()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


class _PauseForOptimizerUpdate(Callback):
    """The last callback: its ``on_before_optimizer_step`` runs after every technique's, right before
    the update."""

    def __init__(self, meter: FlopMeter) -> None:
        self.meter = meter

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.meter._stop()
