"""LoRA: train low-rank adapters on chosen Linear layers, freeze every base weight (Hu et al., 2021).

``y = W x + scaling * B A dropout(x)`` with ``A`` (r x in) random, ``B`` (out x r) zero, so training starts
from the pretrained function; ``scaling = alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA (Kalajdzievski,
2023), which keeps higher ranks learning. DoRA (Liu et al., 2024) adds a trained per-output magnitude.
The layers are peft's (an optional dependency); this technique decides where and when.

- ``setup(stage="fit")``, before the optimizer, the checkpoint restore and the DDP wrap: each target
  Linear becomes a LoRA layer through :func:`lightning_eff.surgery.apply_surgery` (specs recorded on the
  module and written into checkpoints) and every other parameter, bar the ``train`` globs, gets
  ``requires_grad=False``.
- ``on_fit_start`` (optimizers exist, their state not yet restored): the frozen parameters leave every
  param group, for a ``configure_optimizers`` that passed ``self.parameters()``.
- Resume: the same surgery is re-applied from the configuration (adapters seeded, then overwritten by
  the checkpoint), so the weights, the optimizer state and the groups line up exactly.
- ``merge_at_end``: at the end of fit the adapters are folded into the base weights and the plain
  Linears put back (state-dict keys as the original model's), optionally saved to ``merged_path``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from lightning_eff import Technique, TechniqueConfig, hookimpl
from lightning_eff.config_types import Patterns, Seed
from lightning_eff.frozen import freeze_parameters
from lightning_eff.surgery import apply_surgery, restore_surgery_on_load, save_specs

from .adapters import BUILDER, has_lora, lora_layers, merge_lora, missing_peft_problem
from .composition import CONFLICT_REASONS, conflict_reasons
from .targets import frozen_base, is_adapter_name, kept_trainable, lora_targets, target_problems


class LoRAConfig(TechniqueConfig):
    r: int = Field(8, ge=1, le=4096, description="rank of each adapter (A: r x in, B: out x r)")
    alpha: float = Field(16.0, gt=0, description="scaling = alpha / r (alpha / sqrt(r) with rslora); acts like the adapters' learning rate")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapters' input")
    targets: Patterns = Field(("*",), description="glob / 're:' patterns of Linear layer names that get adapters (each must match)")
    exclude: Patterns = Field((), description="patterns of Linear layer names left without adapters (e.g. a task head)")
    train: Patterns = Field((), description="glob patterns of base parameter names kept trainable in full, e.g. a new head 'model.classifier.*'")
    rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r) (rsLoRA)")
    dora: bool = Field(False, description="weight-decomposed LoRA (DoRA): also train a per-output magnitude")
    merge_at_end: bool = Field(False, description="at the end of fit, fold the adapters into the base weights and restore plain Linear layers")
    merged_path: str | None = Field(None, description="with merge_at_end: also save the merged model's state_dict here (torch.save)")
    seed: Seed = Field(0, description="seed of the adapters' A initialisation")


class LoRA(Technique):
    """LoRA adapters (peft) on chosen Linear layers; base weights frozen and out of the optimizer."""

    name = "lora"
    phase = "surgery"
    conflicts = tuple(CONFLICT_REASONS)
    supported_strategies = ("single_device", "ddp")
    strategy_refusals = {
        "fsdp2": "LoRA under FSDP2 (fully_shard of peft's layers, mixed requires_grad per shard) is not tested yet",
    }
    acts_before_sharding = True
    Config = LoRAConfig

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        targets: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        train: Sequence[str] = (),
        rslora: bool = False,
        dora: bool = False,
        merge_at_end: bool = False,
        merged_path: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            r=r, alpha=alpha, dropout=dropout, targets=targets, exclude=exclude, train=train, rslora=rslora,
            dora=dora, merge_at_end=merge_at_end, merged_path=merged_path, seed=seed,
        )
        self.adapted: list[str] = []
        self.counts = {"total": 0, "trainable": 0, "adapter": 0}
        self._frozen: list[torch.nn.Parameter] = []
        self.merged = False

    # -- preflight -------------------------------------------------------------------------------

    @hookimpl
    def leff_validate(self, techniques, trainer_kwargs) -> list[str]:
        missing = missing_peft_problem()
        problems = [f"{self.name}: {missing}"] if missing else []
        return problems + conflict_reasons(t.name for t in techniques if t is not self)

    def validate(self, trainer, pl_module) -> list[str]:
        c = self.config
        if has_lora(pl_module):
            return []  # a second fit on an already adapted module
        problems = target_problems(pl_module, c.targets, c.exclude)
        _, unmatched = kept_trainable(pl_module, c.train)
        examples = ", ".join(repr(n) for n, _ in list(pl_module.named_parameters())[:4])
        problems += [f"train pattern {p!r} matches no parameter; names look like {examples}" for p in unmatched]
        if c.merged_path and not c.merge_at_end:
            problems.append(f"merged_path={c.merged_path!r} is set but merge_at_end is false: set merge_at_end=true")
        return problems

    # -- surgery and freezing --------------------------------------------------------------------

    def specs(self, pl_module) -> list[dict[str, Any]]:
        c = self.config
        params = {"r": c.r, "alpha": c.alpha, "dropout": c.dropout, "rslora": c.rslora, "dora": c.dora}
        return [
            {"name": name, "builder": BUILDER, "params": {**params, "seed": c.seed + i}}
            for i, (name, _) in enumerate(lora_targets(pl_module, c.targets, c.exclude))
        ]

    def adapt(self, model: torch.nn.Module) -> torch.nn.Module:
        """Add the adapters (unless the model has them already) and freeze the rest; no Trainer needed."""
        if not has_lora(model):
            apply_surgery(model, self.specs(model))
        train, _ = kept_trainable(model, self.config.train)
        self._frozen = frozen_base(model, train)
        freeze_parameters(self._frozen)
        self.adapted = [n for n, _ in lora_layers(model)]
        self._count(model)
        return model

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.adapt(pl_module)
            restore_surgery_on_load(pl_module)  # a checkpoint's specs are replayed before its weights load

    def on_fit_start(self, trainer, pl_module) -> None:
        # configure_optimizers may have passed self.parameters(): frozen ones leave the groups before
        # Lightning restores a checkpoint's optimizer state, which expects exactly this structure.
        freeze_parameters(self._frozen, trainer.optimizers)

    def _count(self, pl_module) -> None:
        unique = {id(p): (n, p) for n, p in pl_module.named_parameters()}.values()
        self.counts = {
            "total": sum(p.numel() for _, p in unique),
            "trainable": sum(p.numel() for _, p in unique if p.requires_grad),
            "adapter": sum(p.numel() for n, p in unique if is_adapter_name(n)),
        }

    # -- the end of fit --------------------------------------------------------------------------

    def on_fit_end(self, trainer, pl_module) -> None:
        c = self.config
        if not c.merge_at_end:
            return
        merge_lora(pl_module)
        self.merged = True
        if c.merged_path and trainer.is_global_zero:
            path = Path(c.merged_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, path)

    # -- checkpoints, metrics --------------------------------------------------------------------

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        save_specs(checkpoint, pl_module)  # a fresh plain model can replay the adapters before loading

    def metrics(self) -> dict[str, float]:
        total = max(1, self.counts["total"])
        return {
            "adapters": float(len(self.adapted)),
            "adapter_params": float(self.counts["adapter"]),
            "trainable_params": float(self.counts["trainable"]),
            "trainable_fraction": self.counts["trainable"] / total,
        }

    def savings(self) -> dict[str, float]:
        return {"frozen_param_fraction": 1.0 - self.counts["trainable"] / max(1, self.counts["total"])}

    def state_dict(self) -> dict[str, Any]:
        return {"adapted": list(self.adapted)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = list(state_dict.get("adapted", []))
        if self.adapted and saved != self.adapted:
            raise RuntimeError(
                f"LoRA: the checkpoint has adapters on {saved[:4]}... but this configuration puts them on "
                f"{self.adapted[:4]}...: resume with the options the checkpoint was trained with"
            )
        self.adapted = saved
