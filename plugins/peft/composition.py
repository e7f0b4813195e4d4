"""How LoRA composes with the other families: what it refuses and why (pure data + one function).

The plan's ``conflicts`` metadata refuses these pairs with a generic line; :func:`conflict_reasons`
adds the reason and the alternative, one sentence each, at preflight and in ``lightning-eff check``.
Ordering needs no declaration beyond the phase: LoRA is a ``surgery`` technique, so it runs before
data, loss, optimizer and precision techniques (mixed precision then sees the adapters, kept fp32).
"""

from __future__ import annotations

from collections.abc import Iterable

_FREEZE = (
    "lora already freezes every base parameter and trains only the adapters (and its 'train' globs); to save "
    "the backward pass through the early layers, put adapters only in the later layers (targets: "
    "['*.layer.4.*', '*.layer.5.*']): no gradient flows below the lowest adapter"
)
_PRUNE = (
    "{other} would prune lora's frozen base weights (or its adapters), but the merged weight W + scaling*B*A "
    "is dense again and pruned adapters make no sense: prune (and fine-tune) first, then fine-tune the pruned "
    "model with lora in a second run"
)

#: technique name -> why lora refuses to run with it, and what to do instead
CONFLICT_REASONS: dict[str, str] = {
    "selective_finetuning": "selective_finetuning and lora both decide which parameters train: keep lora and "
    "name the extra trainable parameters (a new task head) with lora's option train=['classifier.*']",
    "progressive_freezing": _FREEZE,
    "freeze_out": _FREEZE,
    "adaptive_freezing": _FREEZE,
    "gradual_pruning": _PRUNE.format(other="gradual_pruning"),
    "nm_sparsity": _PRUNE.format(other="nm_sparsity"),
    "structured_pruning": _PRUNE.format(other="structured_pruning"),
    "moe_upcycling": "moe_upcycling trains new experts and routers copied from the dense MLPs, which lora would "
    "freeze (and each expert would need its own adapters): upcycle and train first, then fine-tune the MoE "
    "model with lora in a second run",
    "float8_training": "float8_training converts Linear layers, and lora's layers wrap them (untested together): "
    "use mixed_precision (bf16) with lora",
}


def conflict_reasons(active: Iterable[str]) -> list[str]:
    """``lora: <reason>`` for every active technique lora refuses to run with."""
    return [f"lora: {CONFLICT_REASONS[name]}" for name in dict.fromkeys(active) if name in CONFLICT_REASONS]
