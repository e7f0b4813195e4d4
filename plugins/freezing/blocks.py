"""The blocks of a network in forward order: what freezing techniques count, freeze and report.

Only freezing a *prefix* (the input side) saves backward compute, so freezing needs an order. The
order used is the modules' registration order, which is the forward order of transformers models
(embeddings, then ``layers``/``encoder.layer``, then the final norm and head), of ``nn.Sequential``
stacks and of the usual hand-written CNNs. A model whose ``__init__`` registers modules in another
order names its blocks with glob patterns instead (``blocks=["stem", "stages.*", "head"]``).

Automatic discovery, pure over an ``nn.Module`` tree:

1. the *stack* is the ``nn.ModuleList``/``nn.Sequential`` with at least two parameter-holding children
   that holds the most parameters (the shallowest on a tie): ``model.model.layers`` in a Llama,
   ``bert.encoder.layer`` in BERT, ``blocks`` in a CNN written as stages;
2. the blocks are, in order, the parameter-holding siblings registered *before* the path to the
   stack at each level from the root down (embeddings, stems), the stack's children, then the
   siblings registered *after* it from the innermost level out (final norm, pooler, head);
3. a block that is itself such a stack and holds more than half of all parameters is expanded into
   its children (``Sequential(stem, Sequential(*layers), head)``).

Without any stack the blocks are the root's parameter-holding children (wrappers with a single such
child are looked through). Modules without parameters (activations, rotary embeddings, metrics) are
never blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn


@dataclass(frozen=True)
class Blocks:
    """Blocks in forward order (qualified module names and the modules) and the patterns that
    matched nothing (only when the blocks were named by patterns)."""

    names: tuple[str, ...]
    modules: tuple[nn.Module, ...]
    unmatched: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.names)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _holds_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _is_stack(module: nn.Module) -> bool:
    return (
        isinstance(module, (nn.ModuleList, nn.Sequential))
        and sum(map(_holds_parameters, module.children())) >= 2
    )


def _children(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    return [(f"{prefix}{name}", child) for name, child in module.named_children() if _holds_parameters(child)]


def _largest_stack(model: nn.Module) -> str | None:
    best_name, best_count = None, -1
    for name, module in model.named_modules():  # parents come first: ties keep the shallowest
        if _is_stack(module) and parameter_count(module) > best_count:
            best_name, best_count = name, parameter_count(module)
    return best_name


def _expand_large_stacks(blocks: list[tuple[str, nn.Module]], total: int) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name, module in blocks:
        if _is_stack(module) and 2 * parameter_count(module) > total:
            out += _expand_large_stacks(_children(module, f"{name}."), total)
        else:
            out.append((name, module))
    return out


def discover_blocks(model: nn.Module) -> Blocks:
    """Blocks found automatically (see the module docstring); the root alone when nothing splits."""
    stack = _largest_stack(model)
    if stack is None:
        prefix, module = "", model
        while len(kids := _children(module, prefix)) == 1 and not isinstance(
            kids[0][1], (nn.Linear, nn.Embedding)
        ):
            prefix, module = kids[0][0] + ".", kids[0][1]
        found = kids or [(prefix.rstrip("."), module)]
    else:
        before: list[tuple[str, nn.Module]] = []
        after: list[list[tuple[str, nn.Module]]] = []
        module, prefix = model, ""
        for part in stack.split(".") if stack else []:
            siblings = _children(module, prefix)
            index = next(i for i, (n, _) in enumerate(siblings) if n == f"{prefix}{part}")
            before += siblings[:index]
            after.append(siblings[index + 1 :])
            module, prefix = getattr(module, part), f"{prefix}{part}."
        found = before + _children(module, prefix) + [b for level in reversed(after) for b in level]
    found = _expand_large_stacks(found, parameter_count(model))
    return Blocks(tuple(n for n, _ in found), tuple(m for _, m in found))


def match_blocks(model: nn.Module, patterns: Sequence[str]) -> Blocks:
    """Modules whose qualified name matches a glob pattern, in registration order; a module inside
    an already matched one is part of that block (``layers.*`` also matches ``layers.0.mlp``)."""
    hits = dict.fromkeys(patterns, False)
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        matched = [p for p in patterns if fnmatchcase(name, p)]
        for p in matched:
            hits[p] = True
        inside = any(name.startswith(f"{outer}.") or outer == "" for outer, _ in found)
        if matched and not inside and _holds_parameters(module):
            found.append((name, module))
    return Blocks(
        tuple(n for n, _ in found),
        tuple(m for _, m in found),
        unmatched=tuple(p for p, hit in hits.items() if not hit),
    )


def find_blocks(model: nn.Module, patterns: Sequence[str] = ()) -> Blocks:
    """The blocks named by ``patterns`` when given, else the ones found automatically."""
    return match_blocks(model, patterns) if patterns else discover_blocks(model)


def block_problems(model: nn.Module, blocks: Blocks, minimum: int = 2) -> list[str]:
    """Preflight sentences: patterns matching nothing, too few blocks to freeze part of the model."""
    examples = ", ".join(repr(n) for n in discover_blocks(model).names[:5])
    problems = [
        f"blocks pattern {p!r} matches no module with parameters; block names look like {examples} (glob syntax, e.g. 'layers.*')"
        for p in blocks.unmatched
    ]
    if not problems and len(blocks) < minimum:
        problems.append(
            f"found {len(blocks)} block(s) ({', '.join(blocks.names) or 'none'}), need at least {minimum} to freeze part of "
            "the model: name the blocks in forward order with the `blocks` option, e.g. blocks=['embed', 'layers.*', 'head']"
        )
    return problems


def parameters_by_block(blocks: Blocks) -> list[list[nn.Parameter]]:
    """Each block's parameters, each parameter once per block (a module shared inside a block)."""
    return [list({id(p): p for p in m.parameters()}.values()) for m in blocks.modules]
