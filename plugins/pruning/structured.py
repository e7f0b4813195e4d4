"""Structured pruning: remove whole FFN neurons, conv channels or attention heads, gradually, then shrink
the modules.

Units are scored by magnitude (L2 norm of the unit's weights) or first-order Taylor importance
(|sum w * dL/dw| accumulated over the steps since the last update, Molchanov et al. 2019, "Importance
Estimation for Neural Network Pruning"), and pruned on the cubic schedule of GradualPruning. During
training pruned units are zeroed (weights after each step, gradients before it). At fit end the
modules are physically shrunk (``index_select`` of every producer row and consumer column) so the
model is really smaller and faster, which masks alone never make it. An attention head is a unit
like any other (its q/k/v rows and o columns, see :mod:`.heads`); with grouped-query attention the
unit is a whole KV group.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor

from lightning_eff import Technique, TechniqueConfig
from lightning_eff.config_types import Patterns
from lightning_eff.errors import ConfigError
from lightning_eff.schedule import TimeLike, TimePoint, check_window, step_resolver, training_progress
from lightning_eff.technique import DDP_TESTED

from .gradual import is_update_step, sparsity_at
from .heads import head_problems
from .masks import count_for, prune_smallest
from .structure import (
    UnitGroup,
    find_groups,
    magnitude_importance,
    mask_group,
    shrink_group,
    taylor_contribution,
)
from .targets import overlap_problems


def select_groups(groups: list[UnitGroup], include: tuple[str, ...], exclude: tuple[str, ...]):
    """(selected groups, include patterns matching none, exclude patterns matching none)."""
    chosen = [g for g in groups if (not include or any(fnmatchcase(g.name, p) for p in include))
              and not any(fnmatchcase(g.name, p) for p in exclude)]
    dead_in = [p for p in include if not any(fnmatchcase(g.name, p) for g in groups)]
    dead_out = [p for p in exclude if not any(fnmatchcase(g.name, p) for g in groups)]
    return chosen, dead_in, dead_out


class StructuredPruningConfig(TechniqueConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    kind: Literal["ffn", "channels", "heads"] = Field(
        "ffn", description="FFN hidden neurons, conv output channels, or attention heads (Llama GQA: whole KV groups)")
    final_sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of each group's units removed at the end")
    start: TimePoint = Field(0.1, description="first pruning step (int) or fraction of the run (float)")
    end: TimePoint = Field(0.6, description="step or fraction at which final_sparsity is reached")
    update_every: TimePoint = Field(0.05, description="steps or fraction of the run between pruning updates")
    importance: Literal["magnitude", "taylor"] = Field("magnitude", description="unit score")
    include_names: Patterns = Field((), description="glob patterns of group names (e.g. 'model.layers.*.mlp')")
    exclude_names: Patterns = Field((), description="glob patterns of group names left whole")
    min_units: int = Field(1, ge=1, description="units every group keeps whatever the sparsity")
    make_permanent: bool = Field(True, description="at fit end, physically shrink the modules")

    @model_validator(mode="after")
    def _ordered(self) -> StructuredPruningConfig:
        check_window(self.start, self.end, self.update_every, what="pruning")
        return self


class StructuredPruning(Technique):
    """Removes FFN neurons, conv channels or attention heads by magnitude or Taylor importance, then shrinks
    the model."""

    name = "structured_pruning"
    phase = "optimizer"
    # masks index whole weight tensors: FSDP/DeepSpeed shards would need sharded masks (not done)
    supported_strategies = DDP_TESTED
    acts_before_sharding = True  # the shrink replaces modules
    strategy_refusals = {
        "fsdp2": "its masks and shrink act on whole weights, and the shrink replaces layers by smaller ones after "
        "configure_model has sharded them (FSDP2 would need the units re-sharded and the optimizer rebuilt): prune "
        "under DDP, then fine-tune the shrunk model under FSDP2",
    }
    Config = StructuredPruningConfig

    def __init__(
        self,
        kind: Literal["ffn", "channels", "heads"] = "ffn",
        final_sparsity: float = 0.5,
        start: TimeLike = 0.1,
        end: TimeLike = 0.6,
        update_every: TimeLike = 0.05,
        importance: Literal["magnitude", "taylor"] = "magnitude",
        include_names: Sequence[str] = (),
        exclude_names: Sequence[str] = (),
        min_units: int = 1,
        make_permanent: bool = True,
    ) -> None:
        super().__init__(
            kind=kind, final_sparsity=final_sparsity, start=start, end=end, update_every=update_every,
            importance=importance, include_names=include_names, exclude_names=exclude_names,
            min_units=min_units, make_permanent=make_permanent,
        )
        self.groups: list[UnitGroup] = []
        self.modules: dict[str, Any] = {}
        self.keep: dict[str, Tensor] = {}
        self.taylor: dict[str, Tensor] = {}
        self.start_step = self.end_step = self.every = 0
        self.last_update_step = -1
        self.last_mask_changes = 0
        self.params_before = self.params_after = 0
        self.shrunk = False
        self._stepped = False
        self._pending: dict[str, Any] | None = None

    # -- preflight -------------------------------------------------------------------------------

    def validate(self, trainer, pl_module) -> list[str]:
        c = self.config
        groups = find_groups(pl_module, c.kind)
        if c.kind == "heads" and not groups:
            return head_problems(pl_module, groups, groups, c.final_sparsity, c.min_units)
        if not groups:
            what = ("a Conv whose output reaches exactly one Conv/Linear through activations, BatchNorm, pooling or "
                    "flatten" if c.kind == "channels" else "a Llama/BERT FFN or a Linear -> activation -> Linear chain")
            return [f"kind='{c.kind}' finds nothing to prune in {type(pl_module).__name__}: it needs {what}"]
        chosen, dead_in, dead_out = select_groups(groups, c.include_names, c.exclude_names)
        names = ", ".join(repr(g.name) for g in groups[:4])
        problems = [f"include_names pattern {p!r} matches no {c.kind} group; groups are named like {names}" for p in dead_in]
        problems += [f"exclude_names pattern {p!r} matches no {c.kind} group; groups are named like {names}" for p in dead_out]
        if not chosen and not problems:
            problems.append(f"every {c.kind} group is excluded: narrow exclude_names")
        if c.kind == "heads":
            problems += head_problems(pl_module, groups, chosen, c.final_sparsity, c.min_units)
        problems += overlap_problems(self, trainer, pl_module)
        problems += self.strategy_problems(trainer)
        total = training_progress(trainer, need_total=False)[1]
        steps = step_resolver(trainer, total)
        try:
            start, end, _ = steps(c.start), steps(c.end), steps(c.update_every)
        except ConfigError as exc:
            return problems + [str(exc)]
        if start > end:
            problems.append(f"start={c.start.plain()} (step {start}) is after end={c.end.plain()} (step {end}): "
                            "make start earlier than end")
        if end > total:
            problems.append(f"end={c.end.plain()} is after the last step ({int(total)}): final_sparsity would never be reached")
        return problems

    def pruned_module_names(self, pl_module) -> list[str]:
        c = self.config
        groups = select_groups(find_groups(pl_module, c.kind), c.include_names, c.exclude_names)[0]
        return sorted({s.module for g in groups for s in g.slices})

    def strategy_problems(self, trainer) -> list[str]:
        launcher = getattr(trainer.strategy, "launcher", None)
        if not (self.config.make_permanent and type(launcher).__name__ == "_MultiProcessingLauncher"):
            return []
        # ddp_spawn/ddp_fork copy the final weights back into the main process's unshrunk model.
        method = getattr(trainer.strategy, "_start_method", "spawn")
        return [(
            f"make_permanent=True cannot shrink under ddp_{method} (the weights are copied back into the original, "
            "unshrunk model): use strategy='ddp', or make_permanent=False and shrink_model(...) afterwards"
        )]

    # -- Lightning hooks -------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        c = self.config
        total = training_progress(trainer, need_total=False)[1]
        steps = step_resolver(trainer, total)
        self.start_step, self.end_step = steps(c.start), steps(c.end)
        self.every = max(1, steps(c.update_every))
        self.groups = select_groups(find_groups(pl_module, c.kind), c.include_names, c.exclude_names)[0]
        self.modules = dict(pl_module.named_modules())
        self.keep = {g.name: torch.ones(g.units, dtype=torch.bool) for g in self.groups}
        self.taylor = {g.name: torch.zeros(g.units) for g in self.groups} if c.importance == "taylor" else {}
        self.params_before = sum(p.numel() for p in pl_module.parameters())
        # a technique reused for another fit starts over (a checkpoint's state is restored just below)
        self.last_update_step, self.last_mask_changes, self.params_after, self.shrunk = -1, 0, 0, False
        if self._pending is not None:
            self._restore(self._pending)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0:
            self._after_step(0)

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.taylor and trainer.global_step < self.end_step:
            for g in self.groups:
                contribution = taylor_contribution(self.modules, g)
                if contribution is not None:
                    self.taylor[g.name] += contribution
        if self.last_update_step >= 0:  # nothing is pruned before the first update
            for g in self.groups:
                mask_group(self.modules, g, self.keep[g.name], grads=True)
        self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stepped:
            self._stepped = False
            if self.last_update_step >= 0:
                for g in self.groups:
                    mask_group(self.modules, g, self.keep[g.name])
            self._after_step(trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.config.make_permanent and not self.shrunk and self.groups:
            self.shrink_model(pl_module)

    def shrink_model(self, model) -> None:
        """Physically remove the pruned units from ``model`` (done at fit end with make_permanent)."""
        modules = dict(model.named_modules())
        for g in self.groups:
            shrink_group(modules, g, self.keep[g.name])
        self.shrunk = True
        self.params_after = sum(p.numel() for p in model.parameters())

    # -- the work --------------------------------------------------------------------------------

    def _after_step(self, step: int) -> None:
        if step != self.last_update_step and is_update_step(step, self.start_step, self.end_step, self.every):
            self.last_update_step = step
            c = self.config
            self.update_masks(sparsity_at(step, self.start_step, self.end_step, 0.0, c.final_sparsity))

    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        changes = 0
        for g in self.groups:
            old = self.keep[g.name]
            scores = self.taylor.get(g.name)
            if scores is None or not scores.any():  # Taylor before any gradient: fall back to magnitude
                scores = magnitude_importance(self.modules, g)
            scores = scores.masked_fill(~old, -1.0)  # pruned units stay pruned
            new = prune_smallest(scores, min(count_for(sparsity, g.units), g.units - self.config.min_units))
            changes += int((new != old).sum())
            self.keep[g.name] = new
            mask_group(self.modules, g, new)
            if g.name in self.taylor:
                self.taylor[g.name].zero_()
        self.last_mask_changes = changes

    # -- metrics and state -----------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        if not self.keep:
            return {}
        pruned = {n: int((~k).sum()) for n, k in self.keep.items()}
        units = sum(k.numel() for k in self.keep.values())
        out = {
            "sparsity": sum(pruned.values()) / max(1, units),
            "units_remaining": float(units - sum(pruned.values())),
            "mask_changes": float(self.last_mask_changes),
        }
        if self.shrunk:
            out["params_before"], out["params_after"] = float(self.params_before), float(self.params_after)
        out.update({f"sparsity/{n}": pruned[n] / max(1, self.keep[n].numel()) for n in self.keep})
        return out

    def savings(self) -> dict[str, float]:
        if not self.shrunk:
            return {}
        return {"params_removed_fraction": 1 - self.params_after / max(1, self.params_before)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "keep": {n: k.clone() for n, k in self.keep.items()},
            "taylor": {n: t.clone() for n, t in self.taylor.items()},
            "last_update_step": self.last_update_step,
            "last_mask_changes": self.last_mask_changes,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.keep:  # loaded before setup: applied there
            self._pending = state_dict
        else:
            self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        self._pending = None
        if set(state["keep"]) != set(self.keep):
            raise RuntimeError("checkpoint unit masks do not match this model's groups: resume with the same model and options")
        self.keep = {n: k.clone() for n, k in state["keep"].items()}
        self.taylor = {n: t.clone() for n, t in state["taylor"].items()}
        self.last_update_step, self.last_mask_changes = state["last_update_step"], state["last_mask_changes"]
