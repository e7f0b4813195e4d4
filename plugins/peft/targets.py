"""Which Linear layers get adapters and which parameters stay trainable (pure, no ``peft`` needed).

Patterns follow the convention of every technique (:func:`lightning_eff.surgery.name_matches`): fnmatch
globs over the qualified module name (``*.attention.self.query``) or ``re:<regex>``. Each target
pattern must match at least one Linear layer, or preflight names the pattern and shows real names.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_eff.surgery import find_modules, names_matching_each, unmatched_problem

#: prefix of every adapter parameter and submodule peft's LoRA adds (lora_A, lora_B, lora_magnitude_vector...)
ADAPTER_PREFIX = "lora_"


def is_adapter_name(name: str) -> bool:
    """Whether a qualified parameter or module name lies inside a LoRA adapter."""
    return any(part.startswith(ADAPTER_PREFIX) for part in name.split("."))


def _adaptable(name: str, module: nn.Module) -> bool:
    # nn.MultiheadAttention reads out_proj.weight directly (F.multi_head_attention_forward): a wrapped
    # out_proj would be skipped silently. Layers inside an existing LoRA layer are not targets.
    return type(module).__name__ != "NonDynamicallyQuantizableLinear" and not (
        is_adapter_name(name) or ".base_layer" in f".{name}"
    )


def lora_targets(
    model: nn.Module, patterns: Sequence[str], exclude: Sequence[str] = ()
) -> list[tuple[str, nn.Linear]]:
    """``(name, Linear)`` of every Linear layer matched by a pattern and by no ``exclude`` pattern."""
    found = find_modules(model, types=nn.Linear, pattern=tuple(patterns), exclude=tuple(exclude) or None)
    return [(n, m) for n, m in found if _adaptable(n, m)]


def target_problems(model: nn.Module, patterns: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """One sentence per target pattern that matches no Linear layer (after ``exclude``)."""
    problems = []
    for pattern in patterns:
        problem = unmatched_problem(
            f"targets {pattern!r}", lora_targets(model, (pattern,), exclude), model, types=nn.Linear, pattern=pattern
        )
        if problem:
            problems.append(problem)
    return problems


def kept_trainable(model: nn.Module, patterns: Sequence[str]) -> tuple[set[str], tuple[str, ...]]:
    """Names of the base parameters the ``train`` globs keep trainable (a new task head), and the
    globs that matched no parameter."""
    return names_matching_each((n for n, _ in model.named_parameters() if not is_adapter_name(n)), patterns)


def frozen_base(model: nn.Module, train: set[str]) -> list[nn.Parameter]:
    """Every parameter that is neither an adapter nor kept trainable, each once (tied ones too)."""
    keep = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n in train or is_adapter_name(n)}
    return list({id(p): p for p in model.parameters() if id(p) not in keep}.values())
