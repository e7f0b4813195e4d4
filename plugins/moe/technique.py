"""MoEUpcycling: turn dense MLPs into mixture-of-experts layers before training starts.

The surgery runs in ``setup(stage="fit")``: before ``configure_optimizers``, the checkpoint restore
and the DDP wrap, so the optimizer, DDP and the checkpoint all see the MoE model. On resume the same
surgery is re-applied from the config (shapes only: the random parts of the init are skipped) and
Lightning then loads the checkpoint's expert and router weights into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from lightning_eff import Technique, TechniqueConfig, hookimpl
from lightning_eff.config_types import Patterns, Seed
from lightning_eff.module import EfficientModule
from lightning_eff.technique import FSDP2_TESTED

from .layer import MoELayer
from .routing import load_balancing_loss, load_cv, router_z_loss
from .upcycle import STRUCTURED_KINDS, build_moe, find_mlps, install_moe, moe_layers

# Upper bound: each expert is a copy of the MLP, so a typo (1e9) would hang allocating them; a
# capacity factor past num_experts / top_k already means "every token fits" (dropless).
MAX_EXPERTS = 1024


class MoEUpcyclingConfig(TechniqueConfig):
    num_experts: int = Field(8, ge=2, le=MAX_EXPERTS, description="experts per upcycled layer")
    top_k: int = Field(2, ge=1, description="experts per token (top-k routing) or capacity multiplier (expert choice)")
    every_n: int = Field(2, ge=1, description="upcycle every n-th MLP (the 2nd, 4th...; 1 = all), when include_names is empty")
    include_names: Patterns = Field((), description="glob patterns of module names to upcycle instead of every_n (e.g. 'blocks.1')")
    init: Literal["copy", "virtual_group", "drop"] = Field("copy", description="expert init: copies, FFN shards, or copies partly re-initialised")
    virtual_groups: int = Field(2, ge=1, description="virtual_group: shards per dense FFN (num_experts and top_k must be multiples)")
    drop_ratio: float = Field(0.5, gt=0.0, le=1.0, description="drop: fraction of each expert's hidden units re-initialised")
    routing: Literal["topk", "expert_choice"] = Field("topk", description="softmax-then-top-k (renormalised), or expert choice (non-causal models only)")
    capacity_factor: float | None = Field(None, gt=0.0, le=MAX_EXPERTS, description="slots per expert = factor * tokens * top_k / experts; None = dropless")
    shared_expert: bool = Field(False, description="add an always-on copy of the dense MLP; output = (shared + routed) / 2")
    router_init_std: float = Field(0.02, ge=0.0, description="std of the router's normal init")
    load_balancing_coef: float = Field(0.01, ge=0.0, description="Switch load-balancing loss coefficient (0: off; needs EfficientModule)")
    z_loss_coef: float = Field(0.001, ge=0.0, description="router z-loss coefficient (0: off; needs EfficientModule)")
    seed: Seed = Field(0, description="seed of the router init and of drop re-initialisation")

    @model_validator(mode="after")
    def _consistent(self) -> MoEUpcyclingConfig:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} is larger than num_experts={self.num_experts}: lower top_k or raise num_experts")
        if self.init == "virtual_group" and (self.num_experts % self.virtual_groups or self.top_k % self.virtual_groups):
            raise ValueError(
                f"init='virtual_group' with virtual_groups={self.virtual_groups} needs num_experts={self.num_experts} and "
                f"top_k={self.top_k} to be multiples of virtual_groups (top-k then picks whole copies of the dense FFN)"
            )
        return self


def is_causal_lm(module: torch.nn.Module) -> bool:
    """Whether the module holds a causal language model (expert choice would see future tokens)."""
    for m in module.modules():
        cls = type(m).__name__
        if cls.endswith(("ForCausalLM", "LMHeadModel")):
            return True
        if getattr(getattr(m, "config", None), "is_decoder", False):
            return True
    return False


class MoEUpcycling(Technique):
    """Sparse upcycling: replaces dense MLPs by MoE layers whose experts start as the dense MLP."""

    name = "moe_upcycling"
    phase = "surgery"
    # The upcycling surgery runs in setup, before configure_model shards: the experts are ordinary
    # parameters that the user's fully_shard (per decoder layer) shards like the others.
    supported_strategies = FSDP2_TESTED
    acts_before_sharding = True
    Config = MoEUpcyclingConfig

    def __init__(
        self,
        num_experts: int = 8,
        top_k: int = 2,
        every_n: int = 2,
        include_names: Sequence[str] = (),
        init: Literal["copy", "virtual_group", "drop"] = "copy",
        virtual_groups: int = 2,
        drop_ratio: float = 0.5,
        routing: Literal["topk", "expert_choice"] = "topk",
        capacity_factor: float | None = None,
        shared_expert: bool = False,
        router_init_std: float = 0.02,
        load_balancing_coef: float = 0.01,
        z_loss_coef: float = 0.001,
        seed: int = 0,
    ) -> None:
        super().__init__(
            num_experts=num_experts,
            top_k=top_k,
            every_n=every_n,
            include_names=include_names,
            init=init,
            virtual_groups=virtual_groups,
            drop_ratio=drop_ratio,
            routing=routing,
            capacity_factor=capacity_factor,
            shared_expert=shared_expert,
            router_init_std=router_init_std,
            load_balancing_coef=load_balancing_coef,
            z_loss_coef=z_loss_coef,
            seed=seed,
        )
        self.upcycled: list[str] = []
        self._layers: list[MoELayer] = []

    @property
    def uses_aux_losses(self) -> bool:
        return self.config.load_balancing_coef > 0 or self.config.z_loss_coef > 0

    # -- preflight -------------------------------------------------------------------------------

    def validate(self, trainer, pl_module) -> list[str]:
        c = self.config
        problems = []
        if self.uses_aux_losses and not isinstance(pl_module, EfficientModule):
            problems.append(
                f"{type(pl_module).__name__} does not mix in lightning_eff.EfficientModule, so the router losses cannot be "
                "added: mix it in (and implement per_sample_loss) or set load_balancing_coef=0 and z_loss_coef=0"
            )
        if c.routing == "expert_choice" and is_causal_lm(pl_module):
            problems.append(
                "routing='expert_choice' lets each expert pick tokens from the whole batch, which leaks future tokens "
                "in a causal language model: use routing='topk'"
            )
        if moe_layers(pl_module):
            return problems  # already upcycled (a second fit on the same module): nothing to find
        mlps = find_mlps(pl_module, c.include_names, c.every_n)
        if not mlps:
            where = f"include_names={list(c.include_names)}" if c.include_names else f"every_n={c.every_n}"
            problems.append(
                f"no MLP matched ({where}); SwiGLU MLPs (gate_proj/up_proj/down_proj) and BERT layers are found "
                "automatically, other blocks need include_names=['<module name glob>'] (or lower every_n)"
            )
        for mlp in mlps:
            if c.init != "copy" and mlp.kind not in STRUCTURED_KINDS:
                problems.append(
                    f"init='{c.init}' needs an FFN with hidden units, but '{mlp.name}' ({type(mlp.module).__name__}) is not a "
                    "SwiGLU MLP, BERT layer or Sequential(Linear, act, Linear): use init='copy' or point include_names at an FFN"
                )
            elif c.init == "virtual_group" and mlp.intermediate % c.virtual_groups:
                problems.append(
                    f"init='virtual_group': '{mlp.name}' has d_ff={mlp.intermediate}, not divisible by "
                    f"virtual_groups={c.virtual_groups}: choose virtual_groups dividing {mlp.intermediate}"
                )
        return problems

    # -- surgery ---------------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        existing = moe_layers(pl_module)
        if existing:  # a second fit on an already upcycled module
            self.upcycled = [n for n, _ in existing]
            self._layers = [m for _, m in existing]
            return
        c = self.config
        fresh = trainer.ckpt_path is None  # resuming: the checkpoint brings the weights
        generator = torch.Generator().manual_seed(c.seed)
        for mlp in find_mlps(pl_module, c.include_names, c.every_n):
            layer = build_moe(
                mlp, c.num_experts, c.top_k, c.init, c.virtual_groups, c.drop_ratio, c.routing,
                c.capacity_factor, c.shared_expert, c.router_init_std, generator, fresh=fresh,
            )
            install_moe(pl_module, mlp, layer)
        existing = moe_layers(pl_module)
        self.upcycled = [n for n, _ in existing]
        self._layers = [m for _, m in existing]

    # -- losses and metrics ----------------------------------------------------------------------

    @hookimpl
    def leff_aux_losses(self, module) -> dict[str, torch.Tensor] | None:
        records = [layer.last for layer in self._layers if layer.last is not None and layer.last.logits is not None]
        if not records or not self.uses_aux_losses:
            return None
        c = self.config
        losses = {}
        # Mean over layers (HF Mixtral pools all layers' logits likewise): the coefficient does not
        # depend on how many layers were upcycled.
        if c.load_balancing_coef > 0 and c.routing == "topk":  # expert choice is balanced by construction
            lb = torch.stack([load_balancing_loss(r.probs, r.experts, c.num_experts) for r in records]).mean()
            losses["moe_load_balancing"] = c.load_balancing_coef * lb
        if c.z_loss_coef > 0:
            losses["moe_z_loss"] = c.z_loss_coef * torch.stack([router_z_loss(r.logits) for r in records]).mean()
        return losses

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Drop the router tensors that hold the step's autograd graph; keep the detached statistics.
        for layer in self._layers:
            if layer.last is not None:
                layer.last = layer.last._replace(logits=None, probs=None, experts=None)

    def metrics(self) -> dict[str, float]:
        records = [layer.last for layer in self._layers if layer.last is not None]
        if not records:
            return {"moe_layers": float(len(self._layers))}
        counts = torch.stack([r.counts.float() for r in records])  # [layers, E]
        out = {
            "moe_layers": float(len(self._layers)),
            "load_cv": torch.stack([load_cv(c) for c in counts]).mean().item(),
            "router_entropy": torch.stack([r.entropy for r in records]).mean().item(),
            "dropped_fraction": torch.stack([r.dropped.float() for r in records]).mean().item(),
        }
        for e, value in enumerate(counts.mean(dim=0).tolist()):
            out[f"tokens_per_expert/{e}"] = value
        return out

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"upcycled": list(self.upcycled)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = list(state_dict.get("upcycled", []))
        if self.upcycled and saved != self.upcycled:
            raise RuntimeError(
                f"MoEUpcycling: the checkpoint upcycled {saved} but this configuration upcycles {self.upcycled}: "
                "resume with the options the checkpoint was trained with"
            )
        self.upcycled = saved
