"""Attention heads as prunable units: the slices of each head in BERT-style and Llama-style attention.

A head is ``head_dim`` consecutive rows of the query, key and value projections (weights and biases)
and the same ``head_dim`` consecutive columns of the output projection. Zeroing a head's value rows
and output columns removes its contribution exactly (its query and key rows are zeroed too, so the
masked and the shrunk model agree to fp32 rounding); a :class:`~.structure.UnitGroup` then carries a
head like any other unit, and masking, importance and shrinking are the generic ones of
:mod:`.structure`. Only the head-count attributes the attention module reads are specific
(:class:`~.structure.SizeAttr`).

Grouped-query attention (Llama, Mistral, Qwen2 with ``num_key_value_heads < num_attention_heads``):
the unit is a **whole KV group**, one key/value head with the ``num_key_value_groups`` query heads
that read it. ``repeat_kv`` and SDPA's GQA path need every KV head to serve the same number of query
heads, so pruning query heads inside groups would have to remove the same number from every group of
a layer, and would leave the K/V projections and the KV cache as large as before. Removing whole
groups keeps ``num_key_value_groups`` unchanged, shrinks Q, K, V, O and the KV cache alike, and needs
no change to the attention code. With plain multi-head attention (one query head per KV head) a
unit is one head.

The model's ``config`` is not changed: it is shared by all layers and each layer may keep a different
number of heads; the per-layer counts live on the attention modules.
"""

from __future__ import annotations

from torch import nn

from .structure import SizeAttr, Slice, UnitGroup, _param_slices

SUPPORTED_FAMILIES = (
    "BERT-style attention (attention.self.query/key/value + attention.output.dense: BERT, RoBERTa, "
    "MiniLM/sentence-transformers BERT models) and Llama-style attention (self_attn.q_proj/k_proj/v_proj/o_proj "
    "with head_dim and num_key_value_groups: Llama, Mistral, Qwen2)"
)


def _linear(module: nn.Module | None, name: str) -> nn.Linear | None:
    child = getattr(module, name, None) if module is not None else None
    return child if isinstance(child, nn.Linear) else None


def _rows(prefix: str, module: nn.Linear, repeat: int) -> list[Slice]:
    return [Slice(s.module, s.tensor, s.dim, repeat) for s in _param_slices(prefix, module, 0)]


def _columns(prefix: str, module: nn.Linear, repeat: int) -> list[Slice]:
    return [Slice(s.module, s.tensor, s.dim, repeat) for s in _param_slices(prefix, module, 1)]


def bert_head_group(name: str, module: nn.Module) -> UnitGroup | None:
    """``module`` is a BERT-style ``XAttention`` with ``self.query/key/value`` and ``output.dense``."""
    inner = getattr(module, "self", None)
    q, k, v = (_linear(inner, n) for n in ("query", "key", "value"))
    out = _linear(getattr(module, "output", None), "dense")
    heads, size = getattr(inner, "num_attention_heads", None), getattr(inner, "attention_head_size", None)
    if None in (q, k, v, out) or not isinstance(heads, int) or not isinstance(size, int) or heads * size == 0:
        return None
    width = heads * size
    if not (q.out_features == k.out_features == v.out_features == out.in_features == width):
        return None
    p = f"{name}." if name else ""
    return UnitGroup(
        name, heads,
        producers=[s for n, lin in (("query", q), ("key", k), ("value", v)) for s in _rows(f"{p}self.{n}", lin, size)],
        consumers=_columns(f"{p}output.dense", out, size),
        sizes=[SizeAttr(f"{p}self", "num_attention_heads"), SizeAttr(f"{p}self", "all_head_size", size)],
        unit_name="heads",
    )


def llama_head_group(name: str, module: nn.Module) -> UnitGroup | None:
    """``module`` is a Llama-style attention with ``q_proj/k_proj/v_proj/o_proj``; units are KV groups."""
    q, k, v, o = (_linear(module, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    head_dim = getattr(module, "head_dim", None)
    if None in (q, k, v, o) or not isinstance(head_dim, int) or head_dim <= 0:
        return None
    if q.out_features % head_dim or k.out_features % head_dim:
        return None
    q_heads, kv_heads = q.out_features // head_dim, k.out_features // head_dim
    per_group = getattr(module, "num_key_value_groups", q_heads // max(1, kv_heads))
    if kv_heads == 0 or v.out_features != k.out_features or o.in_features != q.out_features or q_heads != kv_heads * per_group:
        return None
    p = f"{name}." if name else ""
    q_rows = per_group * head_dim  # a KV group's query heads are consecutive (query head i reads KV head i // per_group)
    # Attributes some Llama-family classes keep (and read) besides head_dim and num_key_value_groups.
    optional = (("num_heads", per_group), ("num_attention_heads", per_group), ("num_key_value_heads", 1),
                ("num_kv_heads", 1))
    return UnitGroup(
        name, kv_heads,
        producers=_rows(f"{p}q_proj", q, q_rows) + _rows(f"{p}k_proj", k, head_dim) + _rows(f"{p}v_proj", v, head_dim),
        consumers=_columns(f"{p}o_proj", o, q_rows),
        sizes=[SizeAttr(name, attr, n) for attr, n in optional if isinstance(getattr(module, attr, None), int)],
        unit_name="heads" if per_group == 1 else f"KV groups ({per_group} query heads each)",
    )


def attention_head_groups(model: nn.Module) -> list[UnitGroup]:
    """One group per attention module of a supported layout, in model order."""
    groups = []
    for name, module in model.named_modules():
        group = bert_head_group(name, module) or llama_head_group(name, module)
        if group is not None:
            groups.append(group)
    return groups


def looks_like_attention(module: nn.Module) -> bool:
    """``nn.MultiheadAttention``, or a class named ``...Attention`` / ``...Attn`` (GPT2Attention, T5Attention)."""
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.lower().endswith(("attention", "attn"))


def unsupported_attention(model: nn.Module, groups: list[UnitGroup]) -> list[tuple[str, str]]:
    """(name, class name) of attention-looking modules that are neither a group nor inside or around one."""
    found = [g.name for g in groups]
    out = []
    for name, module in model.named_modules():
        if not name or not looks_like_attention(module):  # the root is the user's model, not a layer
            continue
        inside = any(name == g or name.startswith(f"{g}.") or g.startswith(f"{name}.") for g in found)
        if not inside:
            out.append((name, type(module).__name__))
    return out


def head_problems(model: nn.Module, groups: list[UnitGroup], chosen: list[UnitGroup], final_sparsity: float,
                  min_units: int) -> list[str]:
    """Preflight sentences for ``kind='heads'``: nothing found, a layout not understood, a layer emptied."""
    from .masks import count_for

    model_name = type(model).__name__
    if not groups:
        unknown = unsupported_attention(model, groups)
        if unknown:
            types = sorted({t for _, t in unknown})
            return [f"kind='heads' does not understand the attention layout of {', '.join(types)} "
                    f"(e.g. {unknown[0][0]!r}) in {model_name}: supported are {SUPPORTED_FAMILIES}"]
        return [f"kind='heads' finds no attention module in {model_name}: it needs {SUPPORTED_FAMILIES}"]
    problems = []
    for g in chosen:
        removed = count_for(final_sparsity, g.units)
        if removed > g.units - min_units:
            problems.append(
                f"final_sparsity={final_sparsity} would remove {removed} of the {g.units} {g.unit_name} of {g.name!r}, "
                f"leaving fewer than min_units={min_units}: lower final_sparsity or exclude it with exclude_names"
            )
            break  # one sentence is enough: every layer of a model usually has the same head count
    return problems
