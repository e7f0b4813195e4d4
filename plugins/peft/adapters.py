"""LoRA layers built by the ``peft`` library, as a surgery builder, and merged back into plain Linears.

``peft`` is an optional dependency (``pip install 'lightning-eff[peft]'``); this module imports it only
inside the functions that need it, so the plugin is discovered, and its options listed, without it.
Always ``import peft`` absolutely: this package's folder is also named ``peft`` (see
``lightning_eff/_shadow_guard.py`` and ``plugins/peft/__init__.py``).

A LoRA layer is one surgery spec (``lightning_eff.surgery``): ``{"name": "encoder.layer.0.attention.self.query",
"builder": "lora", "params": {...}}``. Specs are recorded on the module and written into checkpoints,
so a checkpoint of a LoRA run loads into a freshly built plain model through
``lightning_eff.surgery.restore_surgery`` before ``load_state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_eff.errors import MissingDependencyError, require
from lightning_eff.surgery import SPECS_ATTRIBUTE, register_replacement, replace_module

BUILDER = "lora"
NEEDED_FOR = "the 'lora' technique"
LOW_PRECISION = (torch.bfloat16, torch.float16)


def require_peft() -> Any:
    """The ``peft`` package, or :class:`MissingDependencyError` naming ``pip install 'lightning-eff[peft]'``.

    Imports a submodule: with ``tests/`` on ``sys.path`` an uninstalled ``peft`` would otherwise be
    found as the namespace package ``tests/peft`` and fail later with a puzzling AttributeError."""
    require("peft.tuners.lora", NEEDED_FOR, extra="peft", package="peft")
    import peft

    return peft


def missing_peft_problem() -> str | None:
    """A sentence when ``peft`` cannot be imported, for preflight (``None`` when it can)."""
    try:
        require_peft()
    except MissingDependencyError as exc:
        return str(exc)
    return None


class _Holder(nn.Module):
    """peft's public ``inject_adapter_in_model`` works on a model: the one Linear is wrapped in one."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer


@register_replacement(BUILDER)
def lora_linear(
    old: nn.Module, r: int, alpha: float, dropout: float, rslora: bool, dora: bool, seed: int
) -> nn.Module:
    """``old`` (a Linear) wrapped in peft's LoRA layer: base weights frozen, ``B = 0`` so the output is
    unchanged at first, ``A`` drawn from ``seed`` (the run's random stream is left untouched).

    Adapters are fp32 whatever the base's dtype: a bf16 base keeps its memory saving, while the
    small adapter updates, of size lr * scaling, are not rounded away (peft's ``autocast_adapter_dtype``)."""
    peft = require_peft()
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=rslora, use_dora=dora, target_modules=["layer"]
    )
    holder = _Holder(old)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(config, holder)
    layer = holder.layer
    for name, p in layer.named_parameters():
        if name.split(".")[0].startswith("lora_") and p.dtype in LOW_PRECISION:
            p.data = p.data.float()
    return layer


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every peft LoRA layer in ``model``, outermost first."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def has_lora(model: nn.Module) -> bool:
    """Whether the model already carries LoRA layers (without importing peft when it has none)."""
    return any(n.split(".")[-1] == "lora_A" for n, _ in model.named_modules())


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W + scaling * B A``, DoRA's magnitude too) and put the
    plain Linear back: the model's state-dict keys become the original model's again. In place;
    returns ``model``. The LoRA surgery specs are dropped from the model's record, so a checkpoint of
    the merged model does not replay them on load."""
    for name, layer in lora_layers(model):
        layer.merge(safe_merge=True)
        replace_module(model, name, layer.get_base_layer())
    for module in model.modules():
        specs = getattr(module, SPECS_ATTRIBUTE, None)
        if specs:
            object.__setattr__(module, SPECS_ATTRIBUTE, [s for s in specs if s.get("builder") != BUILDER])
    return model
