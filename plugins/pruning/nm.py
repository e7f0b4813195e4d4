"""N:M structured sparsity trained with SR-STE (Zhou et al. 2021, "Learning N:M Fine-grained
Structured Sparse Neural Networks From Scratch"); default 2:4, the pattern sparse tensor cores run.

The parameter holds the sparse weights ``W * mask`` between optimizer steps, so the forward pass,
validation, checkpoints and ``load_from_checkpoint`` all see the N:M model. The values the mask hides
(``W * (1 - mask)``) are kept by the technique (and in its checkpoint state). Around each optimizer
step: the dense ``W`` is restored, its gradient is the straight-through gradient plus the SR-STE
decay ``lambda * (1 - mask) * W``, the optimizer updates dense ``W``, and every ``update_every``
steps the mask is recomputed from the dense weights before ``W`` is split again.

Optional progressive gradient flow ("Progressive Gradient Flow for Robust N:M Sparsity Training in
Transformers", Bambhaniya et al. 2024): the straight-through gradient reaching pruned positions is
scaled by a factor going linearly from 1 to 0 between ``flow_decay_start`` and ``flow_decay_end``.
The paper decays the pruned weights' contribution in the forward pass; here the decay acts on the
gradient, which keeps the forward exactly N:M throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor, nn

from lightning_eff import Technique, TechniqueConfig
from lightning_eff.config_types import Patterns
from lightning_eff.errors import ConfigError
from lightning_eff.kernels.nm_sparsity import masked_update_, nm_mask, nm_mask_decay
from lightning_eff.schedule import (
    TimeLike,
    TimePoint,
    check_window,
    interpolate,
    step_resolver,
    training_progress,
)
from lightning_eff.sharding import full_from_local, is_sharded, local_part, local_value
from lightning_eff.technique import FSDP2_TESTED

from .masked import MASK_BUFFER, MaskedWeights
from .targets import overlap_problems, select_modules, selection_problems


class _SparseSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, n: int, m: int, decay: float) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.nm = (n, m, decay)
        return weight * nm_mask(weight, n, m)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        n, m, decay = ctx.nm
        # The mask is recomputed from the same weights (deterministic) rather than saved: one pass.
        _, grad_weight = nm_mask_decay(weight, grad, n, m, decay)
        return grad_weight, None, None, None


def nm_sparse_ste(weight: Tensor, n: int = 2, m: int = 4, decay: float = 2e-4) -> Tensor:
    """Functional SR-STE: ``weight * nm_mask(weight)`` whose gradient reaches every dense weight,
    plus ``decay * (1 - mask) * weight``. For models that write their own layers; the
    :class:`NMSparsity` callback gives the same training trajectory without changing the model."""
    return _SparseSTE.apply(weight, n, m, decay)


def flow_factor(step: int, start: int, end: int) -> float:
    """Scale of the gradient reaching pruned positions: 1 until ``start``, linear to 0 at ``end``."""
    return interpolate(1.0, 0.0, step, start, end, "linear")


def semi_structured_unsupported(weight: Tensor, n: int, m: int) -> str | None:
    """Why ``torch.sparse.to_sparse_semi_structured`` cannot take this weight, or None."""
    if (n, m) != (2, 4):
        return f"{n}:{m} is not 2:4"
    if is_sharded(weight):
        return "the weight is an FSDP2 shard (export from a consolidated checkpoint)"
    if not weight.is_cuda:
        return "the weight is not on a CUDA device"
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        return "the GPU is older than Ampere (sm80)"
    if weight.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {weight.dtype} is not float16/bfloat16"
    if weight.dim() != 2 or weight.shape[0] % 64 or weight.shape[1] % 64:
        return f"shape {tuple(weight.shape)} is not a 2-D multiple of 64"
    return None


class NMSparsityConfig(TechniqueConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    n: int = Field(2, ge=1, description="weights kept in each group")
    m: int = Field(4, ge=2, description="group size along the input dimension")
    decay: float = Field(2e-4, ge=0.0, description="SR-STE decay lambda on pruned weights [paper: 2e-4]")
    update_every: TimePoint = Field(1, description="steps (int) or fraction of the run (float) between mask recomputations")
    start: TimePoint = Field(0, description="step or fraction at which the model becomes N:M sparse")
    gradient_flow_decay: bool = Field(False, description="scale the gradient to pruned weights from 1 to 0")
    flow_decay_start: TimePoint = Field(0.0, description="where that scale starts falling")
    flow_decay_end: TimePoint = Field(1.0, description="where that scale reaches 0")
    include_types: Patterns = Field(("Linear",), description="module class names made N:M sparse")
    include_names: Patterns = Field((), description="glob patterns of module names (empty: all)")
    exclude_names: Patterns = Field((), description="glob patterns of module names left dense")
    make_permanent: bool = Field(True, description="at fit end, drop the dense copy and the mask buffers")
    export_semi_structured: bool = Field(
        False, description="with make_permanent: convert 2:4 weights to to_sparse_semi_structured where the GPU allows"
    )

    @model_validator(mode="after")
    def _n_below_m(self) -> NMSparsityConfig:
        if self.n >= self.m:
            raise ValueError(f"n={self.n} must be smaller than m={self.m} (keep N of every M weights)")
        check_window(self.flow_decay_start, self.flow_decay_end, self.update_every, what="the gradient-flow decay")
        return self


class NMSparsity(Technique):
    """N:M structured sparsity (default 2:4) with SR-STE, masks recomputed from the dense weights."""

    name = "nm_sparsity"
    phase = "optimizer"
    # FSDP2 shards rows (dim 0) and N:M groups run along the input dimension (dim 1): each rank
    # splits its own rows, the hidden values are kept per rank (local layout), the masks whole.
    # The older FSDP/DeepSpeed flatten weights, which the groups cannot index.
    supported_strategies = FSDP2_TESTED
    Config = NMSparsityConfig

    def __init__(
        self,
        n: int = 2,
        m: int = 4,
        decay: float = 2e-4,
        update_every: TimeLike = 1,
        start: TimeLike = 0,
        gradient_flow_decay: bool = False,
        flow_decay_start: TimeLike = 0.0,
        flow_decay_end: TimeLike = 1.0,
        include_types: Sequence[str] = ("Linear",),
        include_names: Sequence[str] = (),
        exclude_names: Sequence[str] = (),
        make_permanent: bool = True,
        export_semi_structured: bool = False,
    ) -> None:
        super().__init__(
            n=n, m=m, decay=decay, update_every=update_every, start=start, gradient_flow_decay=gradient_flow_decay,
            flow_decay_start=flow_decay_start, flow_decay_end=flow_decay_end, include_types=include_types,
            include_names=include_names, exclude_names=exclude_names, make_permanent=make_permanent,
            export_semi_structured=export_semi_structured,
        )
        self.masked: MaskedWeights | None = None
        self.hidden: dict[str, Tensor] = {}  # W * (1 - mask): the dense values the parameters do not hold
        self.active = False
        self.start_step = self.every = self.flow_start = self.flow_end = 0
        self.last_update_step = -1
        self.last_mask_changes = 0
        self.exported = 0
        self._stepped = False
        self._pending: dict[str, Any] | None = None
        self._final_masks: dict[str, Tensor] | None = None

    # -- preflight -------------------------------------------------------------------------------

    def _selection(self, pl_module):
        c = self.config
        return select_modules(pl_module, c.include_types, c.include_names, c.exclude_names)

    def pruned_module_names(self, pl_module) -> list[str]:
        return list(self._selection(pl_module).modules)

    def validate(self, trainer, pl_module) -> list[str]:
        c = self.config
        selection = self._selection(pl_module)
        problems = selection_problems(selection, c.include_types) + overlap_problems(self, trainer, pl_module)
        for name, module in selection.modules.items():
            shape = tuple(module.weight.shape)
            if len(shape) != 2:
                problems.append(f"module '{name}' has a {len(shape)}-D weight {shape}: N:M applies to Linear weights; exclude it")
            elif shape[1] % c.m:
                problems.append(
                    f"module '{name}' has {shape[1]} input features, not a multiple of m={c.m}: "
                    f"add it to exclude_names or choose an m that divides {shape[1]}"
                )
            if MASK_BUFFER in module._buffers:
                problems.append(f"module '{name}' already carries a '{MASK_BUFFER}' (another pruning technique?): exclude it")
        total = training_progress(trainer, need_total=False)[1]
        steps = step_resolver(trainer, total)
        try:
            start, _ = steps(c.start), steps(c.update_every)
            flow = (steps(c.flow_decay_start), steps(c.flow_decay_end))
        except ConfigError as exc:
            return problems + [str(exc)]
        if start > total:
            problems.append(f"start={c.start.plain()} is after the last step ({int(total)}): the model would never become sparse")
        if c.gradient_flow_decay and flow[0] > flow[1]:
            problems.append(f"flow_decay_start={c.flow_decay_start.plain()} (step {flow[0]}) is after flow_decay_end "
                            f"(step {flow[1]}): make the start earlier")
        return problems

    # -- Lightning hooks -------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        c = self.config
        total = training_progress(trainer, need_total=False)[1]
        steps = step_resolver(trainer, total)
        self.start_step, self.every = steps(c.start), max(1, steps(c.update_every))
        self.flow_start, self.flow_end = steps(c.flow_decay_start), steps(c.flow_decay_end)
        self.masked = MaskedWeights(self._selection(pl_module).modules)
        self.hidden = {n: torch.zeros_like(self.masked.weight(n), memory_format=torch.contiguous_format)
                       for n in self.masked.names()}
        if self._pending is not None:
            self._restore(self._pending)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0 and self.start_step == 0 and not self.active:
            self._after_step(0)

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.active:
            return
        flow = flow_factor(trainer.global_step, self.flow_start, self.flow_end) if self.config.gradient_flow_decay else 1.0
        for name in self.masked.names():
            param, hidden = self.masked.weight(name), self._local_hidden(name)
            weight, mask = local_value(param), local_part(self.masked.mask(name), param)
            weight.add_(hidden)  # exact: the parameter is 0 where hidden is not, and hidden is 0 elsewhere
            if param.grad is not None:
                grad = local_value(param.grad)
                # SR-STE: the straight-through gradient plus lambda * (1 - mask) * W at pruned positions.
                if flow == 1.0:
                    # hidden is 0 at kept positions, so one in-place add is the masked sum (10x cheaper on CPU than the where).
                    grad.add_(hidden * self.config.decay)  # not alpha=: a fused multiply-add rounds differently
                else:
                    grad.copy_(torch.where(mask, grad, grad * flow + self.config.decay * hidden))
        self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stepped or (not self.active and trainer.global_step >= self.start_step):
            self._stepped = False
            self._after_step(trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not (self.config.make_permanent and self.masked is not None and self._final_masks is None):
            return
        self._final_masks = self.masked.remove()
        self.hidden = {}
        if self.config.export_semi_structured:
            self.exported = self.export(trainer)

    # -- the work --------------------------------------------------------------------------------

    @torch.no_grad()
    def _after_step(self, step: int) -> None:
        """The parameters hold dense W here (restored before the step); split them again."""
        update = not self.active or (step != self.last_update_step and (step - self.start_step) % self.every == 0)
        self.active = True
        changes = 0
        for name in self.masked.names():
            param, hidden = self.masked.weight(name), self._local_hidden(name)
            weight = local_value(param)
            if update:
                # Whole rows on each rank: local masks are exact; gathering them (bools) makes the full mask.
                keep = full_from_local(nm_mask(weight, self.config.n, self.config.m), param)
                changes += int(torch.count_nonzero(keep != self.masked.mask(name)))
                self.masked.set(name, keep)
            mask = local_part(self.masked.mask(name), param)
            torch.where(mask, torch.zeros((), dtype=weight.dtype, device=weight.device), weight, out=hidden)
            masked_update_(weight, mask)
        if update:
            self.last_update_step, self.last_mask_changes = step, changes

    def _local_hidden(self, name: str) -> Tensor:
        """The hidden values of this rank's slice of the weight. Made whole in setup (or restored
        whole from a checkpoint); sliced once FSDP2 has sharded the weight."""
        param = self.masked.weight(name)
        if self.hidden[name].shape != local_value(param).shape:
            self.hidden[name] = local_part(self.hidden[name], param).clone()
        return self.hidden[name]

    def export(self, trainer) -> int:
        """Replace 2:4 weights by semi-structured sparse tensors where supported; returns how many."""
        converted, reasons = 0, set()
        for module in self.masked.modules.values():
            reason = semi_structured_unsupported(module.weight, self.config.n, self.config.m)
            if reason is not None:
                reasons.add(reason)
                continue
            from torch.sparse import to_sparse_semi_structured

            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
            converted += 1
        if reasons:
            rank_zero_warn(f"NMSparsity: {len(self.masked.modules) - converted} weight(s) kept dense: {'; '.join(sorted(reasons))}")
        return converted

    # -- metrics and state -----------------------------------------------------------------------

    def _current_masks(self) -> dict[str, Tensor]:
        if self._final_masks is not None:
            return self._final_masks
        return self.masked.masks() if (self.masked is not None and self.active) else {}

    def metrics(self) -> dict[str, float]:
        masks = self._current_masks()
        if not masks:
            return {}
        pruned = {n: int((~m).sum()) for n, m in masks.items()}
        out = {
            "sparsity": sum(pruned.values()) / max(1, sum(m.numel() for m in masks.values())),
            "mask_changes": float(self.last_mask_changes),
            "semi_structured_exported": float(self.exported),
        }
        out.update({f"sparsity/{n}": pruned[n] / max(1, masks[n].numel()) for n in masks})
        return out

    def savings(self) -> dict[str, float]:
        masks = self._current_masks()
        return {"nm_weights_pruned": float(sum(int((~m).sum()) for m in masks.values()))} if masks else {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "masks": {n: m.cpu().clone() for n, m in self._current_masks().items()},
            "hidden": {n: self._full_hidden(n).cpu().clone() for n in self.hidden} if self.active else {},
            "last_update_step": self.last_update_step,
            "last_mask_changes": self.last_mask_changes,
        }

    def _full_hidden(self, name: str) -> Tensor:
        """Whole on every rank (an all-gather under FSDP2: checkpoints save on every rank)."""
        hidden = self.hidden[name]
        if self.masked is None or name not in self.masked.modules:
            return hidden
        param = self.masked.weight(name)
        return full_from_local(hidden, param) if hidden.shape == local_value(param).shape else hidden

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.masked is None:  # loaded before setup: applied there
            self._pending = state_dict
        else:
            self._restore(state_dict)

    @torch.no_grad()
    def _restore(self, state: dict[str, Any]) -> None:
        self._pending = None
        self.active = state["active"]
        if self.active:
            self.masked.load_state_dict(state["masks"])
            for name, hidden in state["hidden"].items():
                # whole: sliced by _local_hidden when the weight is sharded
                self.hidden[name] = hidden.to(self.hidden[name].device).clone()
        self.last_update_step, self.last_mask_changes = state["last_update_step"], state["last_mask_changes"]
