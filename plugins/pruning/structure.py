"""Prunable units (channels, FFN neurons, attention heads) and the tensors that carry them; shrinking them away.

A :class:`UnitGroup` is a set of units (the output channels of a Conv, the hidden neurons of an
FFN) with every tensor slice that belongs to a unit: *producers* compute the unit (rows of the
Linear/Conv weight and bias, BatchNorm parameters and statistics), *consumers* read it (columns of
the next Linear/Conv). Zeroing a unit's producer and consumer slices removes its contribution
exactly, so a physically shrunk model computes the same function as the masked one.

Groups are found by name for transformers models (Llama-style ``gate_proj/up_proj/down_proj``,
BERT-style ``intermediate.dense/output.dense``) and, for plain PyTorch models, by tracing the
forward with ``torch.fx``: a Linear/Conv whose output reaches exactly one Linear/Conv through
element-wise activations, BatchNorm, pooling, dropout or a flatten. Attention heads are found in
:mod:`.heads`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .targets import has_type


@dataclass(frozen=True)
class Slice:
    module: str  # qualified module name
    tensor: str  # parameter or buffer name on that module
    dim: int  # the axis that indexes units
    repeat: int = 1  # entries per unit along dim (a flatten of C x H x W gives H*W per channel)
    scored: bool = True  # part of the unit's importance (BatchNorm statistics are not)


@dataclass(frozen=True)
class SizeAttr:
    """An attribute a module's forward reads that counts units (an attention module's number of heads):
    set to ``kept units * per_unit`` when the group is shrunk."""

    module: str
    attr: str
    per_unit: int = 1


@dataclass
class UnitGroup:
    name: str
    units: int
    producers: list[Slice] = field(default_factory=list)
    consumers: list[Slice] = field(default_factory=list)
    sizes: list[SizeAttr] = field(default_factory=list)  # attributes updated by shrink_group
    unit_name: str = "units"  # for messages: "neurons", "heads", "KV groups (2 query heads each)"

    @property
    def slices(self) -> list[Slice]:
        return self.producers + self.consumers


def _param_slices(module_name: str, module: nn.Module, dim: int, repeat: int = 1) -> list[Slice]:
    out = [Slice(module_name, "weight", dim, repeat)]
    if dim == 0 and getattr(module, "bias", None) is not None:
        out.append(Slice(module_name, "bias", 0, repeat))
    return out


# --- discovery ------------------------------------------------------------------------------------


def transformer_ffn_groups(model: nn.Module) -> list[UnitGroup]:
    """FFN hidden neurons of Llama-style (gate/up/down) and BERT-style (intermediate/output) blocks."""
    groups = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        parts = [getattr(module, p, None) for p in ("gate_proj", "up_proj", "down_proj")]
        if all(isinstance(p, nn.Linear) for p in parts):
            gate, up, _ = parts
            groups.append(UnitGroup(
                name, gate.out_features,
                producers=_param_slices(prefix + "gate_proj", gate, 0) + _param_slices(prefix + "up_proj", up, 0),
                consumers=_param_slices(prefix + "down_proj", parts[2], 1),
            ))
            continue
        inner = getattr(getattr(module, "intermediate", None), "dense", None)
        outer = getattr(getattr(module, "output", None), "dense", None)
        if isinstance(inner, nn.Linear) and isinstance(outer, nn.Linear) and outer.in_features == inner.out_features:
            groups.append(UnitGroup(
                name, inner.out_features,
                producers=_param_slices(prefix + "intermediate.dense", inner, 0),
                consumers=_param_slices(prefix + "output.dense", outer, 1),
            ))
    return groups


_ELEMENTWISE_MODULES = ("ReLU", "ReLU6", "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "ELU", "Mish", "Hardswish",
                        "Dropout", "Dropout1d", "Dropout2d", "Identity", "MaxPool1d", "MaxPool2d", "AvgPool1d",
                        "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d")
_ELEMENTWISE_FUNCTIONS = {F.relu, torch.relu, F.gelu, F.silu, torch.tanh, torch.sigmoid, F.leaky_relu, F.dropout,
                          F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d}
_FLATTEN = {torch.flatten}
_NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")


def traced_groups(model: nn.Module, producer_types: tuple[str, ...]) -> list[UnitGroup]:
    """Producer -> (element-wise | BatchNorm | pool | flatten)* -> one Linear/Conv consumer, by torch.fx.

    Returns [] when the model cannot be traced symbolically (most transformers models)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure means "no traced groups"
        return []
    modules = dict(model.named_modules())
    groups = []
    for node in graph.nodes:
        if node.op != "call_module" or not has_type(modules[node.target], producer_types):
            continue
        producer = modules[node.target]
        if getattr(producer, "groups", 1) != 1:
            continue
        units = producer.out_features if isinstance(producer, nn.Linear) else getattr(producer, "out_channels", None)
        if units is None:
            continue
        group = UnitGroup(node.target, units, producers=_param_slices(node.target, producer, 0))
        flattened, current = False, node
        while True:
            users = list(current.users)
            if len(users) != 1:
                break
            user = users[0]
            target = modules.get(user.target) if user.op == "call_module" else None
            if target is not None and has_type(target, ("Linear", "Conv1d", "Conv2d", "Conv3d")):
                if getattr(target, "groups", 1) != 1 or user.args[0] is not current:
                    break
                fan_in = target.in_features if isinstance(target, nn.Linear) else target.in_channels
                if fan_in % units or (fan_in != units and not flattened):
                    break
                group.consumers = _param_slices(user.target, target, 1, repeat=fan_in // units)
                groups.append(group)
                break
            if target is not None and has_type(target, _NORMS):
                group.producers += [Slice(user.target, "weight", 0), Slice(user.target, "bias", 0)]
                group.producers += [Slice(user.target, b, 0, scored=False) for b in ("running_mean", "running_var")]
            elif target is not None and has_type(target, ("Flatten",)):
                flattened = True
            elif target is not None and has_type(target, _ELEMENTWISE_MODULES):
                pass
            elif user.op == "call_function" and user.target in _FLATTEN:
                flattened = True
            elif user.op == "call_function" and user.target in _ELEMENTWISE_FUNCTIONS:
                pass
            elif user.op == "call_method" and user.target in ("relu", "flatten"):
                flattened = flattened or user.target == "flatten"
            elif user.op == "call_function" and user.target is operator.getitem:
                break
            else:
                break
            current = user
    return groups


def find_groups(model: nn.Module, kind: str) -> list[UnitGroup]:
    """``ffn``: transformer FFN neurons, else hidden neurons of traced Linear -> Linear chains;
    ``channels``: Conv output channels of traced Conv -> Conv/Linear chains;
    ``heads``: attention heads of BERT-style and Llama-style attention modules (:mod:`.heads`)."""
    if kind == "heads":
        from .heads import attention_head_groups  # heads builds on this module's classes

        return attention_head_groups(model)
    if kind == "channels":
        return traced_groups(model, ("Conv1d", "Conv2d", "Conv3d"))
    return transformer_ffn_groups(model) or traced_groups(model, ("Linear",))


# --- tensors of a group ---------------------------------------------------------------------------


def tensor_of(modules: dict[str, nn.Module], s: Slice) -> Tensor:
    return getattr(modules[s.module], s.tensor)


def unit_view(mask: Tensor, s: Slice, ndim: int) -> Tensor:
    """A unit mask expanded along ``s.dim`` and shaped to broadcast against a tensor of ``ndim`` dims."""
    expanded = mask.repeat_interleave(s.repeat) if s.repeat > 1 else mask
    shape = [1] * ndim
    shape[s.dim] = -1
    return expanded.view(shape)


def per_unit_sum(values: Tensor, s: Slice, units: int) -> Tensor:
    """Sum ``values`` (a tensor of the slice's shape) over everything but the units axis."""
    # movedim puts the unit axis first; a unit's ``repeat`` consecutive entries then share a row
    return values.movedim(s.dim, 0).reshape(units, -1).sum(dim=1)


@torch.no_grad()
def magnitude_importance(modules: dict[str, nn.Module], group: UnitGroup) -> Tensor:
    """L2 norm of all of a unit's scored weights (producer rows and consumer columns together)."""
    total = torch.zeros(group.units, dtype=torch.float32)
    for s in group.slices:
        if s.scored:
            t = tensor_of(modules, s).detach().float()
            total += per_unit_sum(t * t, s, group.units).cpu()
    return total.sqrt()


@torch.no_grad()
def taylor_contribution(modules: dict[str, nn.Module], group: UnitGroup) -> Tensor | None:
    """First-order Taylor estimate of the loss change from removing each unit: |sum of w * dL/dw|
    over the unit's weights (Molchanov et al. 2019). None when no gradient is there."""
    total = torch.zeros(group.units, dtype=torch.float32)
    found = False
    for s in group.slices:
        t = tensor_of(modules, s)
        if not s.scored or not isinstance(t, nn.Parameter) or t.grad is None:
            continue
        found = True
        total += per_unit_sum(t.detach().float() * t.grad.float(), s, group.units).cpu()
    return total.abs() if found else None


@torch.no_grad()
def mask_group(modules: dict[str, nn.Module], group: UnitGroup, keep: Tensor, grads: bool = False) -> None:
    """Zero the pruned units' slices (of the gradients when ``grads``) in place."""
    for s in group.slices:
        t = tensor_of(modules, s)
        if grads:
            t = t.grad if isinstance(t, nn.Parameter) else None
            if t is None:
                continue
        if s.tensor == "running_var":  # a zero variance would divide by eps: park it at 1 instead
            t.copy_(torch.where(unit_view(keep.to(t.device), s, t.dim()), t, torch.ones((), dtype=t.dtype, device=t.device)))
        else:
            t.mul_(unit_view(keep.to(t.device), s, t.dim()))


_SIZE_ATTRS = {"Linear": ("out_features", "in_features"), "Conv1d": ("out_channels", "in_channels"),
               "Conv2d": ("out_channels", "in_channels"), "Conv3d": ("out_channels", "in_channels")}


@torch.no_grad()
def shrink_group(modules: dict[str, nn.Module], group: UnitGroup, keep: Tensor) -> None:
    """Physically remove the pruned units: index_select every slice, fix the modules' size attributes."""
    kept = keep.nonzero().flatten()
    for s in group.slices:
        module = modules[s.module]
        old = getattr(module, s.tensor)
        index = kept.to(old.device)
        if s.repeat > 1:
            index = (index[:, None] * s.repeat + torch.arange(s.repeat, device=old.device)).flatten()
        new = old.detach().index_select(s.dim, index).clone()
        if isinstance(old, nn.Parameter):
            setattr(module, s.tensor, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module._buffers[s.tensor] = new
        size = new.shape[s.dim]
        for cls_name, (out_attr, in_attr) in _SIZE_ATTRS.items():
            if has_type(module, (cls_name,)) and s.tensor == "weight":
                setattr(module, out_attr if s.dim == 0 else in_attr, size)
        if has_type(module, _NORMS) and s.tensor == "weight":
            module.num_features = size
    for a in group.sizes:
        setattr(modules[a.module], a.attr, int(kept.numel()) * a.per_unit)
