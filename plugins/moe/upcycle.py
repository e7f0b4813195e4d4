"""Sparse upcycling: find a model's dense MLPs and replace them by MoE layers initialised from them.

Inits ("Sparse Upcycling", Komatsuzaki et al. 2023; "Upcycling Large Language Models into Mixture of
Experts", He et al. 2024; "Drop-Upcycling", Nakamura et al. 2025):

- ``copy``: every expert is the dense MLP. With renormalised top-k the layer computes exactly the dense
  function at step 0 (the weights sum to 1 over identical experts).
- ``virtual_group``: the FFN's hidden units are cut into G shards; expert ``e`` is shard ``e % G`` of copy
  ``e // G``, its down projection scaled by G, and the router rows of one copy are equal. Top-k with k a
  multiple of G then picks whole copies, and ``sum_shards G * shard / G = dense``: function-preserving,
  with G-times finer experts.
- ``drop``: ``copy``, then in each expert a random fraction of the hidden units is re-initialised from a
  normal with the mean and std of the original weight (breaks expert symmetry so they specialise sooner).

MLP kinds found: SwiGLU (``gate_proj``/``up_proj``/``down_proj``: Llama, Mistral, Qwen2), BERT
(``layer.intermediate`` + ``layer.output.dense``; the layer is named, the FFN moved into the experts and
``output.dense`` becomes ``Identity`` so ``output``'s dropout + residual LayerNorm stay), ``nn.Sequential``
FFNs (Linear, activation..., Linear), and any other module (``copy`` only).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

import torch
from torch import Tensor, nn

from .layer import MoELayer, RoutingMode

Init = Literal["copy", "virtual_group", "drop"]
STRUCTURED_KINDS = ("swiglu", "bert", "ffn")


class FFNExpert(nn.Module):
    """``down(act(up(x)))``: a BERT FFN lifted out of ``BertIntermediate`` / ``BertOutput``."""

    def __init__(self, up: nn.Linear, act: nn.Module, down: nn.Linear) -> None:
        super().__init__()
        self.up, self.act, self.down = up, act, down

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


@dataclass
class DenseMLP:
    """A dense MLP found in a model. ``name`` is the module replaced (for BERT: the layer)."""

    name: str
    kind: str  # swiglu | bert | ffn | module
    module: nn.Module
    hidden: int
    intermediate: int | None  # hidden units of the FFN (None for an unstructured module)


def _is_swiglu(m: nn.Module) -> bool:
    return all(isinstance(getattr(m, a, None), nn.Linear) for a in ("gate_proj", "up_proj", "down_proj")) and hasattr(m, "act_fn")


def _is_bert_layer(m: nn.Module) -> bool:
    inter, out = getattr(m, "intermediate", None), getattr(m, "output", None)
    return (
        isinstance(getattr(inter, "dense", None), nn.Linear)
        and hasattr(inter, "intermediate_act_fn")
        and isinstance(getattr(out, "dense", None), nn.Linear)
        and hasattr(out, "LayerNorm")
    )


def _sequential_linears(m: nn.Module) -> list[int] | None:
    if not isinstance(m, nn.Sequential):
        return None
    linears = [i for i, child in enumerate(m) if isinstance(child, nn.Linear)]
    if len(linears) != 2 or linears[0] != 0 or m[linears[0]].out_features != m[linears[1]].in_features:
        return None
    return linears


def describe_mlp(name: str, m: nn.Module) -> DenseMLP | None:
    """Classify a module as a dense MLP; ``None`` if it holds no Linear at all."""
    if _is_swiglu(m):
        return DenseMLP(name, "swiglu", m, m.gate_proj.in_features, m.gate_proj.out_features)
    if _is_bert_layer(m):
        return DenseMLP(name, "bert", m, m.intermediate.dense.in_features, m.intermediate.dense.out_features)
    linears = _sequential_linears(m)
    if linears is not None:
        return DenseMLP(name, "ffn", m, m[linears[0]].in_features, m[linears[0]].out_features)
    first = next((c for c in m.modules() if isinstance(c, nn.Linear)), None)
    return None if first is None else DenseMLP(name, "module", m, first.in_features, None)


def find_mlps(model: nn.Module, include_names: tuple[str, ...] = (), every_n: int = 2) -> list[DenseMLP]:
    """Dense MLPs to upcycle, in module order.

    With ``include_names`` (glob patterns of module names), exactly the outermost matching modules;
    otherwise every ``every_n``-th SwiGLU MLP / BERT layer (the 2nd, 4th... for ``every_n=2``, as in
    GShard and Switch, which put experts in every other layer).
    """
    found: list[DenseMLP] = []
    taken: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(t + ".") for t in taken):
            continue
        if isinstance(m, MoELayer):  # already upcycled: its experts are not dense MLPs to upcycle again
            taken.append(name)
            continue
        if include_names:
            if not any(fnmatchcase(name, p) for p in include_names):
                continue
            mlp = describe_mlp(name, m)
        elif _is_swiglu(m) or _is_bert_layer(m):
            mlp = describe_mlp(name, m)
        else:
            continue
        if mlp is not None:
            found.append(mlp)
            taken.append(name)
    if not include_names:
        found = [m for i, m in enumerate(found) if (i + 1) % every_n == 0]
    return found


# --- expert construction -----------------------------------------------------------------------


def dense_expert(mlp: DenseMLP) -> nn.Module:
    """A fresh copy of the dense MLP as a standalone module ``[..., hidden] -> [..., hidden]``."""
    if mlp.kind == "bert":
        inter, out = mlp.module.intermediate, mlp.module.output
        return FFNExpert(copy.deepcopy(inter.dense), copy.deepcopy(inter.intermediate_act_fn), copy.deepcopy(out.dense))
    return copy.deepcopy(mlp.module)


def ffn_linears(expert: nn.Module, kind: str) -> tuple[list[nn.Linear], nn.Linear]:
    """(Linears producing the hidden units, Linear consuming them) of a structured expert."""
    if kind == "swiglu":
        return [expert.gate_proj, expert.up_proj], expert.down_proj
    if kind == "bert":
        return [expert.up], expert.down
    if kind == "ffn":
        linears = _sequential_linears(expert)
        return [expert[linears[0]]], expert[linears[1]]
    raise ValueError(f"a '{kind}' module has no FFN structure (hidden units) to shard or re-initialise")


def _set_weight(linear: nn.Linear, weight: Tensor, bias: Tensor | None) -> None:
    linear.weight = nn.Parameter(weight.contiguous())
    linear.out_features, linear.in_features = weight.shape
    if linear.bias is not None:
        linear.bias = nn.Parameter(bias.contiguous())


def shard_expert(expert: nn.Module, kind: str, shard: int, groups: int) -> nn.Module:
    """Keep hidden units ``[shard * d/G, (shard+1) * d/G)``; down projection weight scaled by G."""
    producers, consumer = ffn_linears(expert, kind)
    size = producers[0].out_features // groups
    keep = slice(shard * size, (shard + 1) * size)
    with torch.no_grad():
        for lin in producers:
            _set_weight(lin, lin.weight[keep].clone(), None if lin.bias is None else lin.bias[keep].clone())
        # Each shard keeps the full down bias: the G shards are averaged with weight 1/G each.
        _set_weight(consumer, consumer.weight[:, keep] * groups, None if consumer.bias is None else consumer.bias.clone())
    return expert


def drop_reinit(expert: nn.Module, kind: str, ratio: float, generator: torch.Generator) -> None:
    """Drop-Upcycling: re-initialise ``ratio`` of the hidden units from N(mean, std) of each weight."""
    producers, consumer = ffn_linears(expert, kind)
    units = producers[0].out_features
    count = round(ratio * units)
    if count == 0:
        return
    chosen = torch.randperm(units, generator=generator)[:count]
    with torch.no_grad():
        for lin in producers:
            w = lin.weight
            fresh = torch.randn((count, w.shape[1]), generator=generator, dtype=torch.float32) * w.float().std() + w.float().mean()
            w[chosen] = fresh.to(w.dtype)
        w = consumer.weight
        fresh = torch.randn((w.shape[0], count), generator=generator, dtype=torch.float32) * w.float().std() + w.float().mean()
        w[:, chosen] = fresh.to(w.dtype)


def build_moe(
    mlp: DenseMLP,
    num_experts: int,
    top_k: int,
    init: Init = "copy",
    virtual_groups: int = 1,
    drop_ratio: float = 0.5,
    routing: RoutingMode = "topk",
    capacity_factor: float | None = None,
    shared_expert: bool = False,
    router_init_std: float = 0.02,
    generator: torch.Generator | None = None,
    fresh: bool = True,
) -> MoELayer:
    """An MoE layer whose experts are initialised from ``mlp`` (see the module docstring).

    ``fresh=False`` (resuming from an upcycled checkpoint) builds only the shapes: the random parts of
    the init are skipped, since the checkpoint's expert and router weights replace them.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    groups = virtual_groups if init == "virtual_group" else 1
    experts = []
    for e in range(num_experts):
        expert = dense_expert(mlp)
        if init == "virtual_group":
            shard_expert(expert, mlp.kind, e % groups, groups)
        elif init == "drop" and fresh:
            drop_reinit(expert, mlp.kind, drop_ratio, generator)
        experts.append(expert)
    shared = dense_expert(mlp) if shared_expert else None
    layer = MoELayer(experts, mlp.hidden, top_k, routing, capacity_factor, shared)
    ref = next(p for p in mlp.module.parameters())
    layer.to(device=ref.device)
    if not fresh:
        return layer
    with torch.no_grad():
        rows = torch.randn((num_experts // groups, mlp.hidden), generator=generator) * router_init_std
        # virtual groups: the G shards of one copy share a router row, so top-k picks whole copies
        layer.router.weight.copy_(rows.repeat_interleave(groups, dim=0))
    return layer


def install_moe(model: nn.Module, mlp: DenseMLP, layer: MoELayer) -> None:
    """Put ``layer`` in place of the dense MLP inside ``model``."""
    if mlp.kind == "bert":
        mlp.module.intermediate = layer
        mlp.module.output.dense = nn.Identity()  # its weights live on in the experts
        return
    parent_name, _, child = mlp.name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, layer)


def moe_layers(model: nn.Module) -> list[tuple[str, MoELayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MoELayer)]
