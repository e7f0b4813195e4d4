"""Save an upcycled transformers Llama/Mistral as the matching transformers MoE model (Mixtral).

Mixtral is a Mistral/Llama decoder whose every MLP is a ``MixtralSparseMoeBlock``: router
``gate.weight [E, h]``, softmax-then-top-k with renormalisation (our ``topk`` routing), dropless, and
experts stored as ``experts.gate_up_proj [E, 2*d_ff, h]`` (gate rows then up rows) and
``experts.down_proj [E, h, d_ff]`` (transformers 5 names). Everything else keeps its name.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .layer import MoELayer

# dense config class -> (MoE config class, MoE model class), names in ``transformers``
MOE_COUNTERPART = {
    "LlamaForCausalLM": ("MixtralConfig", "MixtralForCausalLM"),
    "MistralForCausalLM": ("MixtralConfig", "MixtralForCausalLM"),
}
_SHARED_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "pad_token_id", "bos_token_id",
    "eos_token_id", "tie_word_embeddings", "attention_dropout", "rope_parameters", "sliding_window",
)


def export_problems(model: nn.Module) -> list[str]:
    """Why ``model`` cannot be saved as a transformers MoE model (empty when it can)."""
    cls = type(model).__name__
    if cls not in MOE_COUNTERPART:
        return [f"{cls} has no transformers MoE counterpart here; supported: {sorted(MOE_COUNTERPART)}"]
    problems = []
    config = model.config
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            problems.append(f"{flag}=True: Mixtral has no biases in attention and MLP")
    layers = model.model.layers
    moe = [getattr(layer, "mlp", None) for layer in layers]
    if not all(isinstance(m, MoELayer) for m in moe):
        dense = [i for i, m in enumerate(moe) if not isinstance(m, MoELayer)]
        problems.append(f"layers {dense} are dense: Mixtral has experts in every layer (upcycle with every_n=1)")
        return problems
    shapes = {(m.num_experts, m.top_k, m.experts[0].up_proj.out_features) for m in moe}
    if len(shapes) > 1:
        problems.append(f"layers differ in (experts, top_k, d_ff): {sorted(shapes)}; Mixtral needs one shape")
    if any(m.routing != "topk" or m.capacity_factor is not None or m.shared_expert is not None for m in moe):
        problems.append("Mixtral routes dropless top-k without a shared expert: use routing='topk', capacity_factor=None, shared_expert=False")
    return problems


def to_mixtral(model: nn.Module):
    """The transformers MoE model (e.g. ``MixtralForCausalLM``) computing what the upcycled ``model`` computes."""
    import transformers

    problems = export_problems(model)
    if problems:
        raise ValueError("cannot export to a transformers MoE model:\n  " + "\n  ".join(problems))
    config_cls, model_cls = (getattr(transformers, n) for n in MOE_COUNTERPART[type(model).__name__])
    dense_config = model.config
    first = model.model.layers[0].mlp
    shared = {k: getattr(dense_config, k) for k in _SHARED_CONFIG_KEYS if hasattr(dense_config, k)}
    config = config_cls(
        **shared,
        intermediate_size=first.experts[0].up_proj.out_features,
        num_local_experts=first.num_experts,
        num_experts_per_tok=first.top_k,
    )
    config._attn_implementation = getattr(dense_config, "_attn_implementation", None) or "sdpa"
    state = {}
    for key, value in model.state_dict().items():
        if ".mlp." not in key:
            state[key] = value
    for i, layer in enumerate(model.model.layers):
        moe: MoELayer = layer.mlp
        prefix = f"model.layers.{i}.mlp"
        state[f"{prefix}.gate.weight"] = moe.router.weight.detach()
        state[f"{prefix}.experts.gate_up_proj"] = torch.stack(
            [torch.cat([e.gate_proj.weight, e.up_proj.weight], dim=0) for e in moe.experts]
        ).detach()
        state[f"{prefix}.experts.down_proj"] = torch.stack([e.down_proj.weight for e in moe.experts]).detach()
    ref = next(model.parameters())
    out = model_cls(config).to(dtype=ref.dtype, device=ref.device)
    missing, unexpected = out.load_state_dict(state, strict=False)
    # a tied lm_head is absent from the dense state dict only when tied (then it is the embedding)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"weight names do not match {model_cls.__name__}: missing {missing}, unexpected {unexpected}")
    return out.eval() if not model.training else out


def save_as_transformers_moe(model: nn.Module, path: str | Path) -> Path:
    """Save the upcycled ``model`` with ``save_pretrained`` as its transformers MoE class; returns ``path``."""
    path = Path(path)
    to_mixtral(model).save_pretrained(path)
    return path
