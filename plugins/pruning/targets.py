"""Which modules a pruning technique touches: by type name and by glob pattern on the module name.

Pure functions over ``nn.Module`` trees, shared by the three pruning techniques.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

#: types pruned by default: biases, norms and embeddings are left alone unless asked for [Zhu & Gupta]
DEFAULT_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


@dataclass(frozen=True)
class Selection:
    """The modules selected, in model order, and the patterns that matched no candidate."""

    modules: dict[str, nn.Module]
    unmatched_include: tuple[str, ...]
    unmatched_exclude: tuple[str, ...]
    candidates: tuple[str, ...]  # names of every module of an included type (for error messages)


def has_type(module: nn.Module, type_names: tuple[str, ...]) -> bool:
    """Whether the module's class or one of its bases is named in ``type_names`` (subclasses of
    ``nn.Linear``, such as ``NonDynamicallyQuantizableLinear``, count as ``Linear``)."""
    return any(cls.__name__ in type_names for cls in type(module).__mro__)


def select_modules(
    model: nn.Module,
    types: tuple[str, ...] = DEFAULT_TYPES,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    exclude_types: tuple[str, ...] = (),
) -> Selection:
    """Modules of an included type with a ``weight`` parameter, named by a pattern of ``include`` (all
    when empty) and by none of ``exclude``. A weight shared by two modules (tied embeddings) is
    selected only through its first holder: a head tied to an embedding is left alone unless embeddings
    are selected."""
    candidates: dict[str, nn.Module] = {}
    owner: dict[int, nn.Module] = {}  # a shared weight belongs to the first module holding it
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or owner.setdefault(id(weight), module) is not module:
            continue
        if has_type(module, types) and not has_type(module, exclude_types):
            candidates[name] = module
    hits_in = {p: False for p in include}
    hits_out = {p: False for p in exclude}
    chosen: dict[str, nn.Module] = {}
    for name, module in candidates.items():
        included = not include
        for p in include:
            if fnmatchcase(name, p):
                hits_in[p] = included = True
        excluded = False
        for p in exclude:
            if fnmatchcase(name, p):
                hits_out[p] = excluded = True
        if included and not excluded:
            chosen[name] = module
    return Selection(
        modules=chosen,
        unmatched_include=tuple(p for p, hit in hits_in.items() if not hit),
        unmatched_exclude=tuple(p for p, hit in hits_out.items() if not hit),
        candidates=tuple(candidates),
    )


def selection_problems(selection: Selection, types: tuple[str, ...]) -> list[str]:
    """Preflight sentences for patterns that match nothing and for an empty selection."""
    examples = ", ".join(repr(n) for n in selection.candidates[:4]) or "(none)"
    kinds = "/".join(types)
    problems = [
        f"include_names pattern {p!r} matches no {kinds} module; names look like {examples} (glob syntax, e.g. 'blocks.*')"
        for p in selection.unmatched_include
    ]
    problems += [
        f"exclude_names pattern {p!r} matches no {kinds} module; names look like {examples}: fix or remove it"
        for p in selection.unmatched_exclude
    ]
    if not selection.modules and not problems:
        problems.append(f"no {kinds} module is selected for pruning: widen include_types/include_names or narrow exclude_names")
    return problems


def overlap_problems(me, trainer, pl_module) -> list[str]:
    """Two pruning techniques on the same module would share (and fight over) one mask: report each
    overlapping pair once, from the first of the two in the Trainer's callbacks."""
    others = [cb for cb in trainer.callbacks if hasattr(cb, "pruned_module_names")]
    if me not in others:
        return []
    mine = set(me.pruned_module_names(pl_module))
    problems = []
    for other in others[others.index(me) + 1 :]:
        shared = sorted(mine & set(other.pruned_module_names(pl_module)))
        if shared:
            problems.append(
                f"{me.name} and {other.name} both prune {', '.join(repr(n) for n in shared[:3])}"
                f"{' ...' if len(shared) > 3 else ''}: give them disjoint include_names/exclude_names"
            )
    return problems
