"""Model surgery: replace submodules, keep the optimizers right, and replay the change on load.

Techniques that change a model's structure (MoE upcycling replaces MLPs, structured pruning
shrinks Linear layers, float8 training converts them) all need the same three things:

1. **Find** the modules a policy names: :func:`find_modules` by type and by qualified name.
2. **Replace** them without leaving the optimizers behind: :func:`apply_surgery` removes the old
   parameters from every param group (and drops their optimizer state: stale momentum of a
   removed tensor is a leak, not a feature), puts the new parameters in the group their
   predecessor was in (same learning rate, weight decay...), and leaves the state of every
   parameter kept by identity untouched. Groups are never added or removed, so learning-rate
   schedulers, which index groups by position, stay valid.
3. **Replay** it on load: each replacement is a *spec*, plain JSON
   (``{"name": "layers.0.mlp", "builder": "moe_upcycle", "params": {"experts": 8}}``) naming a
   builder registered with :func:`register_replacement`. Specs are recorded on the root module,
   saved in the checkpoint (:func:`save_specs`) and re-applied to a freshly built model before its
   ``load_state_dict`` (:func:`restore_surgery`). No code is pickled or evaluated: a checkpoint
   loads with ``torch.load(weights_only=True)``.

Where to call it in Lightning: surgery before the optimizers exist belongs in ``setup(stage="fit")``
(``optimizers=None``); surgery mid-run passes ``trainer.optimizers`` and must happen before any
DDP/FSDP wrap or not under them. On resume, Lightning calls the *LightningModule's*
``on_load_checkpoint`` before ``load_state_dict`` but callbacks' ``on_load_checkpoint`` after it, so
the specs must be replayed from the module: call :func:`restore_surgery` there, or let a technique
call :func:`restore_surgery_on_load` on the module during ``setup``.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import fnmatch
import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from lightning_eff.errors import LightningEffError

#: attribute of a module holding the specs applied to it, in order (names relative to it)
SPECS_ATTRIBUTE = "_lightning_eff_surgery"
#: key of the checkpoint dict holding ``{"version": 1, "specs": [...]}``
CHECKPOINT_KEY = "lightning_eff_surgery"
SPEC_VERSION = 1

Builder = Callable[..., nn.Module]
Pattern = str | Sequence[str]
TypeSpec = type | str | Iterable[type | str]


class SurgeryError(LightningEffError, ValueError):
    """A surgery spec cannot be applied (unknown module or builder, bad params)."""


# -- finding modules --------------------------------------------------------------------------------


def name_matches(name: str, pattern: Pattern) -> bool:
    """Whether a qualified module name matches a pattern (or any of a list of patterns).

    A pattern is an fnmatch glob over the whole dotted name (``layers.*.mlp``; ``*`` also crosses
    dots) or, with the prefix ``re:``, a regular expression that must match the whole name
    (``re:layers\\.\\d+\\.mlp``), as PEFT's ``target_modules`` does. Matching is case-sensitive.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    for p in patterns:
        if p.startswith("re:"):
            if re.fullmatch(p[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, p):
            return True
    return False


def names_matching_each(names: Iterable[str], patterns: Iterable[str]) -> tuple[set[str], tuple[str, ...]]:
    """The names some glob matches, and the globs that matched none (for a preflight problem)."""
    names = list(names)
    chosen: set[str] = set()
    unmatched = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        chosen.update(hits)
        if not hits:
            unmatched.append(pattern)
    return chosen, tuple(unmatched)


def _type_matches(module: nn.Module, types: TypeSpec) -> bool:
    # Strings name a class in the module's MRO, short or fully qualified ("Linear", "torch.nn.Linear"),
    # so YAML recipes can select by type without importing anything.
    wanted = [types] if isinstance(types, (type, str)) else list(types)
    for cls in type(module).__mro__:
        for w in wanted:
            if isinstance(w, type) and cls is w:
                return True
            if isinstance(w, str) and w in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}"):
                return True
    return False


def find_modules(
    root: nn.Module,
    types: TypeSpec | None = None,
    pattern: Pattern | None = None,
    exclude: Pattern | None = None,
) -> list[tuple[str, nn.Module]]:
    """``(qualified_name, module)`` of every submodule of ``root`` matching all the given criteria.

    ``types``: a class, a class name, or several (instances of subclasses match). ``pattern`` and
    ``exclude``: see :func:`name_matches`. The root itself is never returned (it cannot be replaced
    in place), and a module reachable under two names is returned once, under its first name.
    """
    found = []
    for name, module in root.named_modules():
        if not name:
            continue
        if types is not None and not _type_matches(module, types):
            continue
        if pattern is not None and not name_matches(name, pattern):
            continue
        if exclude is not None and name_matches(name, exclude):
            continue
        found.append((name, module))
    return found


def _describe_criteria(types: TypeSpec | None, pattern: Pattern | None) -> str:
    parts = []
    if pattern is not None:
        parts.append(f"pattern {pattern!r}")
    if types is not None:
        names = [types] if isinstance(types, (type, str)) else list(types)
        parts.append("type " + " | ".join(t if isinstance(t, str) else t.__name__ for t in names))
    return " and ".join(parts) or "its criteria"


def unmatched_problem(
    policy_name: str,
    matches: Sequence[Any],
    root: nn.Module | None = None,
    types: TypeSpec | None = None,
    pattern: Pattern | None = None,
    examples: int = 6,
) -> str | None:
    """Preflight: a sentence when a policy matched no module (``None`` when it matched some).

    The sentence shows the pattern and a few real module names of ``root`` (those of the wanted
    type first) so that the user sees how names look in their model.
    """
    if matches:
        return None
    message = f"{policy_name}: {_describe_criteria(types, pattern)} matched no module"
    if root is not None:
        candidates = find_modules(root, types=types) if types is not None else []
        candidates = candidates or find_modules(root)
        shown = ", ".join(f"'{n}' ({type(m).__name__})" for n, m in candidates[:examples])
        message += f" of {type(root).__name__}; its modules are named like: {shown or '(none)'}"
    return message + "; fix the pattern (globs like 'layers.*.mlp', or 're:<regex>')"


def warn_if_unmatched(
    policy_name: str,
    matches: Sequence[Any],
    root: nn.Module | None = None,
    types: TypeSpec | None = None,
    pattern: Pattern | None = None,
) -> bool:
    """Warn (``UserWarning``) when a policy matched nothing; return whether it did match.

    A pattern that matches nothing is the most common silent failure of name-based policies (a
    model whose blocks are called ``h.0`` rather than ``layers.0``): the run would train the
    baseline and report no savings.
    """
    problem = unmatched_problem(policy_name, matches, root, types, pattern)
    if problem is not None:
        warnings.warn(problem, UserWarning, stacklevel=2)
    return problem is None


# -- replacing one module ---------------------------------------------------------------------------


def _parent_and_attr(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    try:
        parent = root.get_submodule(parent_name) if parent_name else root
        if attr not in parent._modules:
            raise AttributeError(attr)
    except AttributeError:
        known = [n for n, _ in root.named_modules() if n]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise SurgeryError(f"{type(root).__name__} has no submodule named {name!r}{hint}") from None
    return parent, attr


def get_module(root: nn.Module, name: str) -> nn.Module:
    """The submodule at a qualified name, with an error that suggests close names."""
    parent, attr = _parent_and_attr(root, name)
    return parent._modules[attr]


def replace_module(root: nn.Module, name: str, new_module: nn.Module) -> nn.Module:
    """Put ``new_module`` at qualified ``name`` inside ``root``; return the module it replaced.

    Works for attributes, ``nn.Sequential`` / ``nn.ModuleList`` indices (``"0"``) and
    ``nn.ModuleDict`` keys. Optimizers are not touched: use :func:`apply_surgery` for that.
    """
    if not name:
        raise SurgeryError("cannot replace the root module itself; replace it where it is referenced")
    parent, attr = _parent_and_attr(root, name)
    old = parent._modules[attr]
    setattr(parent, attr, new_module)
    return old


# -- the builder registry ---------------------------------------------------------------------------

_BUILDERS: dict[str, Builder] = {}
_restoring: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lightning_eff_surgery_restoring", default=False
)


def register_replacement(name: str) -> Callable[[Builder], Builder]:
    """Register ``fn(old_module, **params) -> new_module`` as the replacement builder ``name``.

    Builders are looked up by name when a checkpoint's specs are replayed, so the module defining
    one must be imported by then (plugins registered through the ``lightning_eff`` entry points are
    loaded automatically). A builder must build the same structure from the same ``(old_module,
    params)``; weights need not match, the checkpoint's state dict overwrites them. Building can
    skip expensive initialisation when :func:`is_restoring` is true.
    """

    def decorate(fn: Builder) -> Builder:
        existing = _BUILDERS.get(name)
        if existing is not None and existing is not fn and _qualname(existing) != _qualname(fn):
            raise ValueError(f"replacement builder {name!r} is already registered by {_qualname(existing)}")
        _BUILDERS[name] = fn
        return fn

    return decorate


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def registered_replacements() -> dict[str, Builder]:
    """Name -> builder of every registered replacement."""
    return dict(_BUILDERS)


def get_replacement(name: str) -> Builder:
    """The builder registered as ``name``; loads entry-point plugins once before giving up."""
    if name not in _BUILDERS:
        from lightning_eff.registry import get_registry

        get_registry()  # importing the plugins registers their builders
    try:
        return _BUILDERS[name]
    except KeyError:
        raise SurgeryError(
            f"unknown replacement builder {name!r}: import the package that registers it with "
            f"@register_replacement({name!r}) (registered: {sorted(_BUILDERS) or 'none'})"
        ) from None


def is_restoring() -> bool:
    """True while specs are being replayed from a checkpoint (weights will be overwritten)."""
    return _restoring.get()


# -- specs ------------------------------------------------------------------------------------------


class ReplacementSpec(BaseModel):
    """One replacement: the module at ``name`` becomes ``builder(old_module, **params)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    builder: str
    params: dict[str, Any] = {}


def _as_spec(raw: ReplacementSpec | dict[str, Any]) -> ReplacementSpec:
    try:
        spec = raw if isinstance(raw, ReplacementSpec) else ReplacementSpec(**raw)
    except (ValidationError, TypeError) as exc:
        raise SurgeryError(f"bad surgery spec {raw!r}: {exc}") from None
    try:
        # A JSON round trip makes the params canonical (tuples become lists), so specs compare equal
        # however the checkpoint travelled.
        params = json.loads(json.dumps(spec.params, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise SurgeryError(
            f"surgery spec for {spec.name!r}: params must be plain JSON (numbers, strings, lists, dicts) so the "
            f"checkpoint can replay them without pickled code: {exc}"
        ) from None
    return spec.model_copy(update={"params": params})


def recorded_specs(root: nn.Module) -> list[dict[str, Any]]:
    """Every spec applied to ``root`` and its submodules, names relative to ``root``.

    Specs recorded on a submodule come after its ancestors' (a parent's replacement creates the
    child first), in the order they were applied.
    """
    specs: list[dict[str, Any]] = []
    for prefix, module in root.named_modules():
        for spec in getattr(module, SPECS_ATTRIBUTE, ()):
            name = f"{prefix}.{spec['name']}" if prefix else spec["name"]
            specs.append({**spec, "name": name})
    return specs


# -- applying specs and fixing optimizers -----------------------------------------------------------


@dataclass
class SurgeryRecord:
    """What :func:`apply_surgery` changed (qualified names relative to the root)."""

    replaced: list[tuple[str, str, str]] = field(default_factory=list)  # (name, old type, new type)
    removed_parameters: list[str] = field(default_factory=list)
    added_parameters: list[str] = field(default_factory=list)
    #: new parameters whose predecessor was in no optimizer: nobody trains them unless you add them
    unassigned_parameters: list[str] = field(default_factory=list)
    parameters_before: int = 0
    parameters_after: int = 0


def _optimizer_of(optimizer: Any) -> torch.optim.Optimizer:
    # LightningOptimizer wraps the torch optimizer; the groups and state are the wrapped one's.
    return getattr(optimizer, "_optimizer", optimizer)


def _closest_predecessor(new_name: str, old_named: list[tuple[str, nn.Parameter]]) -> nn.Parameter | None:
    """The old parameter whose dotted name shares the longest suffix with ``new_name``.

    ``experts.3.fc1.bias`` descends from ``fc1.bias``, a shrunk ``weight`` from ``weight``: a
    weight keeps its weight decay group and a bias its no-decay group when a model uses both.
    """
    best, best_score = None, -1
    new_parts = new_name.split(".")[::-1]
    for old_name, param in old_named:
        score = 0
        for a, b in zip(new_parts, old_name.split(".")[::-1]):
            if a != b:
                break
            score += 1
        if score > best_score:
            best, best_score = param, score
    return best


def apply_surgery(
    root: nn.Module,
    specs: Sequence[ReplacementSpec | dict[str, Any]],
    optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    record: bool = True,
) -> SurgeryRecord:
    """Apply replacement specs to ``root`` in order and fix ``optimizers``; return what changed.

    Builders are all checked before anything changes. A new module is moved to the device of the
    module it replaces. When ``optimizers`` are given: removed parameters leave their groups and
    their state is dropped; each new parameter joins the group of its closest predecessor (see
    :func:`_closest_predecessor`) at the predecessor's position, in model order, so the groups equal
    what ``configure_optimizers`` builds from ``model.parameters()`` on the re-applied model and a
    resumed optimizer state lines up; kept parameters keep their state. ``record=False`` leaves the
    specs out of the module's record (for changes that must not be replayed on load).
    """
    parsed = [_as_spec(s) for s in specs]
    builders = {s.builder: get_replacement(s.builder) for s in parsed}
    if optimizers is None:
        optimizers = []
    elif isinstance(optimizers, torch.optim.Optimizer) or hasattr(optimizers, "param_groups"):
        optimizers = [optimizers]
    optimizers = [_optimizer_of(o) for o in optimizers]

    before = {id(p): p for p in root.parameters()}
    names_before = {id(p): n for n, p in root.named_parameters()}
    # (optimizer index, group index) of each parameter, and the original parameter new ones are placed at
    group_of: dict[int, tuple[int, int]] = {}
    for oi, opt in enumerate(optimizers):
        for gi, group in enumerate(opt.param_groups):
            for p in group["params"]:
                group_of[id(p)] = (oi, gi)
    anchor_of: dict[int, int] = {pid: pid for pid in group_of}
    position: dict[int, int] = {}
    for opt in optimizers:
        for group in opt.param_groups:
            position.update({id(p): i for i, p in enumerate(group["params"])})

    result = SurgeryRecord(parameters_before=sum(p.numel() for p in before.values()))
    for spec in parsed:
        old = get_module(root, spec.name)
        new = builders[spec.builder](old, **spec.params)
        if not isinstance(new, nn.Module):
            raise SurgeryError(
                f"replacement builder {spec.builder!r} returned {type(new).__name__}, not an nn.Module"
            )
        device = next(iter(old.parameters()), next(iter(old.buffers()), None))
        if device is not None:
            new = new.to(device.device)
        old_named = list(old.named_parameters())
        old_ids = {id(p) for _, p in old_named}
        for new_name, p in new.named_parameters():
            if id(p) in old_ids or id(p) in before:
                continue
            pred = _closest_predecessor(new_name, [(n, q) for n, q in old_named if id(q) in group_of])
            if pred is None:
                continue
            group_of[id(p)] = group_of[id(pred)]
            # All new parameters of one replacement in one group go where the predecessor's first was.
            first = min(
                (anchor_of[id(q)] for _, q in old_named if group_of.get(id(q)) == group_of[id(pred)]),
                key=lambda pid: position[pid],
            )
            anchor_of[id(p)] = first
        replace_module(root, spec.name, new)
        result.replaced.append((spec.name, type(old).__name__, type(new).__name__))

    after_named = list(root.named_parameters())
    after_ids = {id(p) for _, p in after_named}
    removed = [p for pid, p in before.items() if pid not in after_ids]
    added = [(n, p) for n, p in after_named if id(p) not in before]
    result.removed_parameters = [names_before[id(p)] for p in removed]
    result.added_parameters = [n for n, _ in added]
    result.parameters_after = sum(p.numel() for _, p in after_named)

    if optimizers:
        _fix_optimizers(optimizers, removed, added, group_of, anchor_of, result)
    if record:
        applied = list(getattr(root, SPECS_ATTRIBUTE, []))
        applied += [s.model_dump() for s in parsed]
        object.__setattr__(root, SPECS_ATTRIBUTE, applied)
    return result


def _fix_optimizers(
    optimizers: list[torch.optim.Optimizer],
    removed: list[nn.Parameter],
    added: list[tuple[str, nn.Parameter]],
    group_of: dict[int, tuple[int, int]],
    anchor_of: dict[int, int],
    result: SurgeryRecord,
) -> None:
    removed_ids = {id(p) for p in removed}
    incoming: dict[int, list[nn.Parameter]] = {}  # anchor id -> new params placed before it, model order
    for name, p in added:
        if id(p) in anchor_of:
            incoming.setdefault(anchor_of[id(p)], []).append(p)
        else:
            result.unassigned_parameters.append(name)
    for opt in optimizers:
        for group in opt.param_groups:
            params = []
            for p in group["params"]:
                params.extend(incoming.get(id(p), ()))
                if id(p) in removed_ids:
                    opt.state.pop(p, None)
                else:
                    params.append(p)
            group["params"] = params
    if result.unassigned_parameters:
        warnings.warn(
            f"surgery added parameters whose predecessors were in no optimizer param group, so nothing trains "
            f"them: {result.unassigned_parameters[:5]}; add them to an optimizer yourself if they should train",
            UserWarning,
            stacklevel=3,
        )


# -- checkpoints ------------------------------------------------------------------------------------


def save_specs(checkpoint: dict[str, Any], root: nn.Module) -> dict[str, Any]:
    """Write the specs applied to ``root`` (and its submodules) into ``checkpoint``; return it.

    Names are relative to ``root``: save from the module whose ``state_dict`` the checkpoint
    holds (the LightningModule in Lightning). Nothing is written when no surgery happened.
    """
    specs = recorded_specs(root)
    if specs:
        checkpoint[CHECKPOINT_KEY] = {"version": SPEC_VERSION, "specs": specs}
    else:
        checkpoint.pop(CHECKPOINT_KEY, None)
    return checkpoint


def load_specs(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The specs a checkpoint recorded (empty when it has none), validated."""
    entry = checkpoint.get(CHECKPOINT_KEY)
    if entry is None:
        return []
    if (
        not isinstance(entry, dict)
        or entry.get("version") != SPEC_VERSION
        or not isinstance(entry.get("specs"), list)
    ):
        raise SurgeryError(
            f"checkpoint entry {CHECKPOINT_KEY!r} is not a version-{SPEC_VERSION} surgery record: {str(entry)[:200]}; "
            f"it was written by another lightning-eff version"
        )
    return [_as_spec(s).model_dump() for s in entry["specs"]]


def reapply_from_checkpoint(root: nn.Module, checkpoint: dict[str, Any]) -> SurgeryRecord:
    """Replay a checkpoint's specs on ``root`` so its ``load_state_dict`` fits; return what changed.

    Specs ``root`` already carries (a technique that repeats its surgery in ``setup`` before the
    checkpoint is restored) are skipped, so calling this twice is harmless. The global RNG is left
    as it was: replaying surgery must not shift the random stream of a resumed run.
    """
    wanted = load_specs(checkpoint)
    have = recorded_specs(root)
    if have != wanted[: len(have)]:
        raise SurgeryError(
            f"{type(root).__name__} already carries surgery {have} that is not the start of the checkpoint's "
            f"{wanted}: load the checkpoint into a freshly built model"
        )
    pending = wanted[len(have) :]
    if not pending:
        return SurgeryRecord()
    with restoring(), torch.random.fork_rng(devices=[]):
        return apply_surgery(root, pending)


def restore_surgery(module: nn.Module, checkpoint: dict[str, Any]) -> SurgeryRecord | None:
    """Call from a LightningModule's ``on_load_checkpoint``: replay recorded surgery, if any.

    Lightning calls the module's ``on_load_checkpoint`` right before ``load_state_dict`` (on resume
    and in ``load_from_checkpoint``), which is when the structure must already match.
    """
    if CHECKPOINT_KEY not in checkpoint:
        return None
    return reapply_from_checkpoint(module, checkpoint)


def restore_surgery_on_load(pl_module: nn.Module) -> None:
    """Make ``pl_module.on_load_checkpoint`` replay surgery first (for techniques, from ``setup``).

    A Callback's own ``on_load_checkpoint`` runs after the model's ``load_state_dict``, too late to
    change its structure; this wraps the module instance's hook once. Idempotent. (It cannot reach
    ``LightningModule.load_from_checkpoint``, which builds a new instance: there the module's own
    ``on_load_checkpoint`` must call :func:`restore_surgery`.)
    """
    if isinstance(pl_module.on_load_checkpoint, _RestoreThenLoad):
        return
    object.__setattr__(
        pl_module, "on_load_checkpoint", _RestoreThenLoad(pl_module, pl_module.on_load_checkpoint)
    )


class _RestoreThenLoad:
    """The wrapped hook; a class rather than a closure so the module still pickles (ddp_spawn)."""

    def __init__(self, module: nn.Module, hook: Callable[[dict[str, Any]], Any]) -> None:
        self.module, self.hook = module, hook

    def __call__(self, checkpoint: dict[str, Any]) -> Any:
        restore_surgery(self.module, checkpoint)
        return self.hook(checkpoint)


@contextlib.contextmanager
def restoring() -> Iterator[None]:
    """Mark a block as replaying surgery (:func:`is_restoring` is true inside it)."""
    token = _restoring.set(True)
    try:
        yield
    finally:
        _restoring.reset(token)
