"""The blocks of a network in forward order: what freezing techniques count, freeze and report.

Only freezing a *prefix* (the input side) saves backward compute, so freezing needs an order. The
order used is the modules' registration order, which is the forward order of transformers models
(embeddings, then ``layers``/``encoder.layer``, then the final norm and head), of ``nn.Sequential``
stacks and of the usual hand-written CNNs. A model whose ``__init__`` registers modules in another
order names its blocks with glob patterns instead (``blocks=["stem", "stages.*", "head"]``): the
blocks are then in the order of the patterns (the modules one pattern matches in registration order).
Automatic discovery refuses a layout whose first block looks like the output head (a module named
``head``/``classifier``/``lm_head``..., or a ``Linear`` producing the model's declared output size):
freezing would start at the head, so such a model must name its blocks.

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
    #: ``(pattern, module, block)``: a module a pattern matched that holds a block an earlier
    #: pattern chose (it cannot be a block of its own)
    overlaps: tuple[tuple[str, str, str], ...] = ()
    #: found by :func:`discover_blocks` (registration order) rather than named by patterns
    discovered: bool = False

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
    return Blocks(tuple(n for n, _ in found), tuple(m for _, m in found), discovered=True)


def _contains(outer: str, inner: str) -> bool:
    return outer == "" or inner == outer or inner.startswith(f"{outer}.")


def match_blocks(model: nn.Module, patterns: Sequence[str]) -> Blocks:
    """Modules whose qualified name matches a glob pattern, in the order of the patterns (the
    modules one pattern matches in registration order). A module inside an already matched one is
    part of that block (``layers.*`` also matches ``layers.0.mlp``); a module holding an earlier
    pattern's block is reported in ``overlaps``."""
    hits = dict.fromkeys(patterns, False)
    found: list[tuple[str, nn.Module]] = []
    overlaps: list[tuple[str, str, str]] = []
    for pattern in dict.fromkeys(patterns):
        for name, module in model.named_modules():
            if not fnmatchcase(name, pattern):
                continue
            hits[pattern] = True
            if not _holds_parameters(module) or any(_contains(outer, name) for outer, _ in found):
                continue  # part of a block already chosen
            around = next((inner for inner, _ in found if _contains(name, inner)), None)
            if around is not None:
                overlaps.append((pattern, name, around))
                continue
            found.append((name, module))
    return Blocks(
        tuple(n for n, _ in found),
        tuple(m for _, m in found),
        unmatched=tuple(p for p, hit in hits.items() if not hit),
        overlaps=tuple(overlaps),
    )


def find_blocks(model: nn.Module, patterns: Sequence[str] = ()) -> Blocks:
    """The blocks named by ``patterns`` when given, else the ones found automatically."""
    return match_blocks(model, patterns) if patterns else discover_blocks(model)


#: globs of the last part of a module name that mark an output head
HEAD_NAMES = ("head", "*_head", "heads", "classifier", "score", "fc_out", "output_layer")
#: hyperparameter / transformers-config names of a model's output size
OUTPUT_SIZE_KEYS = ("classes", "num_classes", "n_classes", "num_labels", "vocab_size", "output_size", "output_dim")


def declared_output_sizes(model: nn.Module) -> dict[int, str]:
    """Output sizes the model declares in its saved hyperparameters or a transformers ``config``
    (size -> the name it was found under)."""
    hparams = getattr(model, "hparams", None)
    sources = [hparams] if isinstance(hparams, dict) else []
    config = next((m.config for m in model.modules() if hasattr(m, "config")), None)
    sizes: dict[int, str] = {}
    for key in OUTPUT_SIZE_KEYS:
        values = [src.get(key) for src in sources] + [getattr(config, key, None)]
        for value in values:
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                sizes.setdefault(value, key)
    return sizes


def head_like(model: nn.Module, name: str, module: nn.Module) -> str | None:
    """Why block ``name`` looks like the model's output head (None when it does not)."""
    last = name.rsplit(".", 1)[-1]
    if any(fnmatchcase(last, glob) for glob in HEAD_NAMES):
        return f"is named {last!r}"
    outputs = declared_output_sizes(model)
    if isinstance(module, nn.Linear) and module.out_features in outputs:
        key = outputs[module.out_features]
        return f"is a Linear producing {module.out_features} outputs, the model's {key}"
    return None


def _suggest(names: Sequence[str], limit: int = 6) -> str:
    shown = [repr(n) for n in names[:limit]] + (["..."] if len(names) > limit else [])
    return "[" + ", ".join(shown) + "]"


def block_problems(model: nn.Module, blocks: Blocks, minimum: int = 2, ordered: bool = True) -> list[str]:
    """Preflight sentences: patterns matching nothing or overlapping, too few blocks to freeze part
    of the model, and (``ordered``: the technique freezes by position) a discovered order that
    starts at the output head."""
    examples = ", ".join(repr(n) for n in discover_blocks(model).names[:5])
    problems = [
        f"blocks pattern {p!r} matches no module with parameters; block names look like {examples} (glob syntax, e.g. 'layers.*')"
        for p in blocks.unmatched
    ]
    problems += [
        f"blocks pattern {p!r} matches {name!r}, which holds the block {inner!r} an earlier pattern named: a block "
        f"cannot hold another; drop one of the two patterns or name {name!r}'s other parts"
        for p, name, inner in blocks.overlaps
    ]
    if not problems and ordered and blocks.discovered and len(blocks) >= 2:
        reason = head_like(model, blocks.names[0], blocks.modules[0])
        if reason is not None:
            problems.append(
                f"the first block found, {blocks.names[0]!r}, {reason}: it looks like the output head registered "
                "before the body, and blocks are found in registration order, so it would freeze first. Name the "
                f"blocks in forward order with the `blocks` option, e.g. blocks={_suggest([*blocks.names[1:], blocks.names[0]])}"
            )
    if not problems and len(blocks) < minimum:
        problems.append(
            f"found {len(blocks)} block(s) ({', '.join(blocks.names) or 'none'}), need at least {minimum} to freeze part of "
            "the model: name the blocks in forward order with the `blocks` option, e.g. blocks=['embed', 'layers.*', 'head']"
        )
    return problems


def parameters_by_block(blocks: Blocks) -> list[list[nn.Parameter]]:
    """Each block's parameters, each parameter once per block (a module shared inside a block)."""
    return [list({id(p): p for p in m.parameters()}.values()) for m in blocks.modules]
