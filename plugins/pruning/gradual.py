"""Gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", 2017).

Sparsity follows the cubic ``s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3`` between
steps ``t0`` and ``t1``; every ``dt`` optimizer steps the smallest-magnitude weights are pruned to
reach ``s(t)``, per layer or under one global threshold. Pruned weights stay pruned: their
gradients are zeroed before the optimizer step (so momentum, weight decay and gradient clipping
ignore them) and the weights are re-masked after it (Adam's moments would otherwise move them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor

from lightning_eff import Technique, TechniqueConfig
from lightning_eff.config_types import Patterns
from lightning_eff.errors import ConfigError
from lightning_eff.schedule import (
    TimeLike,
    TimePoint,
    check_window,
    every,
    interpolate,
    step_resolver,
    training_progress,
)
from lightning_eff.sharding import full_value, local_part, local_value
from lightning_eff.technique import FSDP2_TESTED

from .masked import MASK_BUFFER, MaskedWeights
from .masks import changed, global_masks, layerwise_masks, magnitude_scores
from .targets import DEFAULT_TYPES, overlap_problems, select_modules, selection_problems

# --- the schedule (pure) ------------------------------------------------------------------------


def sparsity_at(step: int, start: int, end: int, initial: float, final: float) -> float:
    """Target sparsity after optimizer step ``step``: 0 before ``start`` (dense), then the cubic ramp
    ``final + (initial - final) * (1 - p)**3`` from ``initial`` to ``final`` on [start, end]."""
    return 0.0 if step < start else interpolate(initial, final, step, start, end, "cubic")


def is_update_step(step: int, start: int, end: int, interval: int) -> bool:
    """Masks change at start, every ``interval`` steps after it, and at ``end`` itself."""
    return start <= step <= end and (step == end or every(interval, step, start))


# --- the technique ------------------------------------------------------------------------------


class GradualPruningConfig(TechniqueConfig):
    # validate_default: time defaults are written as a user would (0.1) and parsed into TimePoints.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    final_sparsity: float = Field(0.8, ge=0.0, lt=1.0, description="fraction of the selected weights pruned at the end")
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="sparsity applied at the first update")
    start: TimePoint = Field(0.1, description="first mask update: optimizer step (int) or fraction of the run (float)")
    end: TimePoint = Field(0.7, description="step or fraction at which final_sparsity is reached")
    update_every: TimePoint = Field(0.01, description="steps or fraction of the run between mask updates (>= 1 step)")
    scope: Literal["layer", "global"] = Field("layer", description="per-layer threshold, or one global threshold")
    include_types: Patterns = Field(DEFAULT_TYPES, description="module class names whose weight is pruned")
    include_names: Patterns = Field((), description="glob patterns of module names to prune (empty: all)")
    exclude_names: Patterns = Field((), description="glob patterns of module names never pruned")
    rewind_to: TimePoint | None = Field(
        None, description="lottery-ticket rewind: at `end`, surviving weights return to their value at this step"
    )
    make_permanent: bool = Field(True, description="at fit end, remove the mask buffers (weights stay zero)")

    @model_validator(mode="after")
    def _ordered(self) -> GradualPruningConfig:
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity={self.initial_sparsity} must not exceed final_sparsity={self.final_sparsity}")
        check_window(self.start, self.end, self.update_every, what="pruning")
        return self


class GradualPruning(Technique):
    """Gradual magnitude pruning on a cubic schedule (Zhu & Gupta), layer-wise or global, masks in the checkpoint."""

    name = "gradual_pruning"
    phase = "optimizer"
    # FSDP2: thresholds from each weight's full tensor (gathered), masks whole on every rank and
    # applied to the local slices; the older FSDP/DeepSpeed flatten weights, which masks cannot index
    supported_strategies = FSDP2_TESTED
    Config = GradualPruningConfig

    def __init__(
        self,
        final_sparsity: float = 0.8,
        initial_sparsity: float = 0.0,
        start: TimeLike = 0.1,
        end: TimeLike = 0.7,
        update_every: TimeLike = 0.01,
        scope: Literal["layer", "global"] = "layer",
        include_types: Sequence[str] = DEFAULT_TYPES,
        include_names: Sequence[str] = (),
        exclude_names: Sequence[str] = (),
        rewind_to: TimeLike | None = None,
        make_permanent: bool = True,
    ) -> None:
        super().__init__(
            final_sparsity=final_sparsity, initial_sparsity=initial_sparsity, start=start, end=end,
            update_every=update_every, scope=scope, include_types=include_types,
            include_names=include_names, exclude_names=exclude_names, rewind_to=rewind_to,
            make_permanent=make_permanent,
        )
        self.masked: MaskedWeights | None = None
        self.start_step = self.end_step = self.every = 0
        self.rewind_step: int | None = None
        self.rewind_weights: dict[str, Tensor] | None = None
        self.last_update_step = -1
        self.last_mask_changes = 0
        self.total_params = 0
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
        taken = [n for n, m in selection.modules.items() if MASK_BUFFER in m._buffers]
        if taken:
            problems.append(f"modules {taken[:3]} already carry a '{MASK_BUFFER}' (another pruning technique?): exclude them")
        total = training_progress(trainer, need_total=False)[1]
        steps = step_resolver(trainer, total)
        try:
            start, end = steps(c.start), steps(c.end)
            steps(c.update_every)
            rewind = steps(c.rewind_to) if c.rewind_to is not None else None
        except ConfigError as exc:
            return problems + [str(exc)]
        if start > end:
            problems.append(f"start={c.start.plain()} (step {start}) is after end={c.end.plain()} (step {end}): "
                            "make start earlier than end")
        if end > total:
            problems.append(f"end={c.end.plain()} is after the last step ({int(total)}): final_sparsity would never be reached")
        if rewind is not None and rewind > start:
            problems.append(f"rewind_to={c.rewind_to.plain()} (step {rewind}) is after start (step {start}): "
                            "rewind to a step before pruning starts")
        return problems

    # -- Lightning hooks -------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        c = self.config
        total = training_progress(trainer, need_total=False)[1]
        steps = step_resolver(trainer, total)
        self.start_step, self.end_step = steps(c.start), steps(c.end)
        self.every = max(1, steps(c.update_every))
        self.rewind_step = steps(c.rewind_to) if c.rewind_to is not None else None
        self.masked = MaskedWeights(self._selection(pl_module).modules)
        self.total_params = sum(p.numel() for p in {id(p): p for p in pl_module.parameters()}.values())
        if self._pending is not None:
            self._restore(self._pending)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0:  # steps after an optimizer step happen in on_train_batch_end
            self._after_step(0)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Before gradient clipping and the update (Lightning calls this after unscaling under AMP).
        if self.last_update_step >= 0:  # masks are all ones before the first update
            self.masked.zero_pruned_grads()
        self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # A flag, not global_step arithmetic: also re-masks after a step the fp16 scaler skipped.
        if self._stepped:
            self._stepped = False
            if self.last_update_step >= 0:
                self.masked.apply_to_weights()
            self._after_step(trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.config.make_permanent and self.masked is not None and self._final_masks is None:
            self._final_masks = self.masked.remove()

    # -- the work --------------------------------------------------------------------------------

    @torch.no_grad()
    def _after_step(self, step: int) -> None:
        if self.rewind_step == step and self.rewind_weights is None:
            self.rewind_weights = {n: full_value(self.masked.weight(n)).detach().clone() for n in self.masked.names()}
        if step != self.last_update_step and is_update_step(step, self.start_step, self.end_step, self.every):
            self.last_update_step = step
            self.update_masks(self.target_sparsity(step))
            if step == self.end_step and self.rewind_weights is not None:
                for name, weight in self.rewind_weights.items():
                    target = self.masked.weight(name)
                    local_value(target).copy_(local_part(weight * self.masked.mask(name), target))
                self.rewind_weights = {}  # rewound: keep the fact, free the copy

    def target_sparsity(self, step: int) -> float:
        c = self.config
        return sparsity_at(step, self.start_step, self.end_step, c.initial_sparsity, c.final_sparsity)

    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        old = self.masked.masks()
        # Full tensors (an all-gather per weight under FSDP2): every rank computes the same masks.
        scores = {n: magnitude_scores(full_value(self.masked.weight(n)), old[n]) for n in self.masked.names()}
        new = (global_masks if self.config.scope == "global" else layerwise_masks)(scores, sparsity)
        self.last_mask_changes = sum(changed(old[n], new[n]) for n in new)
        for name, keep in new.items():
            self.masked.set(name, keep)
        self.masked.apply_to_weights()

    # -- metrics and state -----------------------------------------------------------------------

    def _current_masks(self) -> dict[str, Tensor]:
        if self._final_masks is not None:
            return self._final_masks
        return self.masked.masks() if self.masked is not None else {}

    def metrics(self) -> dict[str, float]:
        masks = self._current_masks()
        if not masks:
            return {}
        pruned = {n: int((~m).sum()) for n, m in masks.items()}
        total = sum(m.numel() for m in masks.values())
        out = {
            "sparsity": sum(pruned.values()) / max(1, total),
            "target_sparsity": self.target_sparsity(max(self.last_update_step, 0)) if self.last_update_step >= 0 else 0.0,
            "params_remaining": float(self.total_params - sum(pruned.values())),
            "mask_changes": float(self.last_mask_changes),
        }
        out.update({f"sparsity/{n}": pruned[n] / max(1, masks[n].numel()) for n in masks})
        return out

    def savings(self) -> dict[str, float]:
        masks = self._current_masks()
        pruned = sum(int((~m).sum()) for m in masks.values())
        return {"params_pruned_fraction": pruned / max(1, self.total_params)} if masks else {}

    def state_dict(self) -> dict[str, Any]:
        rewind = None if self.rewind_weights is None else {n: w.cpu().clone() for n, w in self.rewind_weights.items()}
        return {
            "masks": {n: m.cpu().clone() for n, m in self._current_masks().items()},
            "last_update_step": self.last_update_step,
            "last_mask_changes": self.last_mask_changes,
            "rewind_weights": rewind,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.masked is None:  # loaded before setup: applied there
            self._pending = state_dict
        else:
            self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        self._pending = None
        self.masked.load_state_dict(state["masks"])
        self.last_update_step = state["last_update_step"]
        self.last_mask_changes = state["last_mask_changes"]
        rewind = state["rewind_weights"]
        device = next(iter(self.masked.masks().values())).device
        self.rewind_weights = None if rewind is None else {n: w.to(device) for n, w in rewind.items()}
