"""Ordering of active techniques and the preflight that runs before step 0.

``resolve_order`` is pure (metadata in, order or problems out) so it is tested without a Trainer;
``preflight`` adds the checks that need the Trainer and the module, and raises every problem at once.
"""

from __future__ import annotations

import heapq
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lightning_eff.errors import PreflightError
from lightning_eff.technique import PHASES, Technique, batch_selector_problems

if TYPE_CHECKING:
    import lightning.pytorch as pl


def resolve_order(techniques: Sequence[Technique]) -> tuple[list[Technique], list[str]]:
    """Topological order honouring ``before``/``after``; ties go by phase, then the user's order.

    Returns ``(order, problems)``; ``problems`` names cycles, duplicate state keys, missing
    requirements and conflicts. Names in ``before``/``after`` that are not active are ignored.
    """
    problems: list[str] = []
    by_name: dict[str, list[int]] = {}
    for i, t in enumerate(techniques):
        by_name.setdefault(t.name, []).append(i)

    keys: dict[str, int] = {}
    for i, t in enumerate(techniques):
        if t.state_key in keys:
            problems.append(
                f"{t.name} is added twice with the same options; remove one of them (each instance needs distinct options)"
            )
        keys[t.state_key] = i

    for t in techniques:
        for needed in t.requires:
            if needed not in by_name:
                problems.append(f"{t.name} requires technique '{needed}': add it to the recipe or the Trainer's callbacks")
    reported: set[frozenset[str]] = set()
    for t in techniques:
        for other in t.conflicts:
            pair = frozenset((t.name, other))
            if other in by_name and pair not in reported:
                reported.add(pair)
                problems.append(f"{t.name} conflicts with {other}: remove one of them")

    edges: dict[int, set[int]] = {i: set() for i in range(len(techniques))}
    indegree = [0] * len(techniques)

    def add_edge(a: int, b: int) -> None:
        if b not in edges[a] and a != b:
            edges[a].add(b)
            indegree[b] += 1

    for i, t in enumerate(techniques):
        for name in t.before:
            for j in by_name.get(name, []):
                add_edge(i, j)
        for name in t.after:
            for j in by_name.get(name, []):
                add_edge(j, i)

    def rank(i: int) -> tuple[int, int]:
        return (PHASES.index(techniques[i].phase), i)

    ready = [rank(i) for i in range(len(techniques)) if indegree[i] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for j in sorted(edges[i]):
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, rank(j))
    if len(order) < len(techniques):
        stuck = sorted({techniques[i].name for i in range(len(techniques)) if i not in order})
        problems.append(f"ordering cycle between {', '.join(stuck)}: their before/after declarations contradict each other")
        order += [i for i in range(len(techniques)) if i not in order]
    return [techniques[i] for i in order], problems


#: the strategy kinds ``supported_strategies`` names (``strategy_kind`` of a Lightning strategy)
STRATEGY_KINDS = ("single_device", "ddp", "fsdp2", "tensor_parallel", "fsdp", "deepspeed")


def strategy_kind(strategy: Any) -> str:
    """A short name for a Lightning strategy object: one of ``STRATEGY_KINDS``, or its class name.

    ``fsdp2`` is Lightning's ModelParallelStrategy as data parallelism (``fully_shard`` in
    ``configure_model``); with a tensor-parallel mesh dimension over 1 it is ``tensor_parallel``,
    which no technique is tested under; ``fsdp`` is the older FSDPStrategy."""
    from lightning.pytorch import strategies as S

    if isinstance(strategy, S.ModelParallelStrategy):
        # resolved from "auto" in setup_environment, before preflight runs
        tensor_parallel = getattr(strategy, "_tensor_parallel_size", 1)
        return "tensor_parallel" if isinstance(tensor_parallel, int) and tensor_parallel > 1 else "fsdp2"

    for cls, kind in ((S.FSDPStrategy, "fsdp"), (S.DeepSpeedStrategy, "deepspeed"), (S.DDPStrategy, "ddp")):
        if isinstance(strategy, cls):
            return kind
    if isinstance(strategy, S.SingleDeviceStrategy):
        return "single_device"
    return type(strategy).__name__


def trainer_problems(techniques: Sequence[Technique], trainer: pl.Trainer, pl_module: Any) -> list[str]:
    """Checks that need the Trainer and the module (mixin, batch selectors, strategy)."""
    from lightning_eff.module import EfficientModule

    problems: list[str] = []
    for t in techniques:
        if t.requires_module_mixin and not isinstance(pl_module, EfficientModule):
            problems.append(
                f"{t.name} needs the LightningModule to mix in lightning_eff.EfficientModule "
                f"(class {type(pl_module).__name__}(EfficientModule, LightningModule)) and implement per_sample_loss"
            )
    problems += batch_selector_problems(techniques)

    strategy = strategy_kind(trainer.strategy)
    for t in techniques:
        if t.supported_strategies is not None and strategy not in t.supported_strategies:
            why = t.strategy_refusals.get(strategy)
            reason = f": {why}" if why else ""
            problems.append(
                f"{t.name} does not support strategy '{strategy}'{reason}; use one of {list(t.supported_strategies)}"
            )
    problems += sharding_order_problems(techniques, pl_module)
    needs_unused = [t.name for t in techniques if t.find_unused_parameters]
    if needs_unused and strategy == "ddp" and not getattr(trainer.strategy, "_ddp_kwargs", {}).get(
        "find_unused_parameters", False
    ):
        problems.append(
            f"{', '.join(needs_unused)} stop(s) gradients of some parameters: use "
            "strategy='ddp_find_unused_parameters_true' (or DDPStrategy(find_unused_parameters=True))"
        )
    for t in techniques:
        problems += [f"{t.name}: {p}" if not p.startswith(t.name) else p for p in t.validate(trainer, pl_module)]
    return problems


def sharding_order_problems(techniques: Sequence[Technique], pl_module: Any) -> list[str]:
    """Techniques that act on the whole model in ``setup`` refuse one sharded before ``fit``.

    Preflight runs in ``setup``, before ``configure_model``: parameters that are DTensors already
    were sharded by the user outside Lightning's order (see docs/scaling-out.md)."""
    from lightning_eff.sharding import already_sharded_problem

    problems = []
    for t in techniques:
        if t.acts_before_sharding:
            found = already_sharded_problem(t.name, pl_module)
            if found:
                problems.append(found)
    return problems


def trainer_settings(trainer: pl.Trainer) -> dict[str, Any]:
    """The running Trainer's settings in Trainer-argument form, for ``leff_validate`` at preflight."""
    return {
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "precision": trainer.precision,
        "max_steps": trainer.max_steps,
        "max_epochs": trainer.max_epochs,
        "strategy": strategy_kind(trainer.strategy),
        "devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "accelerator": type(trainer.accelerator).__name__,
    }


def preflight(techniques: Sequence[Technique], trainer: pl.Trainer, pl_module: Any) -> list[Technique]:
    """Resolve the order and run every check; raise one :class:`PreflightError` listing all problems."""
    from lightning_eff.registry import get_registry

    order, problems = resolve_order(techniques)
    problems += trainer_problems(order, trainer, pl_module)
    settings = trainer_settings(trainer)
    for found in get_registry().with_techniques(list(order)).hook.leff_validate(techniques=list(order), trainer_kwargs=settings):
        problems += list(found or [])
    if problems:
        raise PreflightError(problems)
    return order


PLAN_WIDTH = 100  # a technique's repr with every option ran past 300 characters on one line


def describe_plan(order: Sequence[Technique], width: int = PLAN_WIDTH) -> str:
    """The plan printed at fit start: one entry per technique, its options wrapped under its name."""
    lines = ["lightning-eff plan (hooks run top to bottom, exit hooks bottom to top):"]
    for i, t in enumerate(order, 1):
        lines.append(f"  {i}. {t.name} (phase: {t.phase})")
        lines += textwrap.wrap(repr(t), width=width, initial_indent="       ", subsequent_indent="         ",
                               break_on_hyphens=False)
    return "\n".join(lines)
