"""The plugin contract: every hook lightning-eff calls, in one place.

A plugin is a module (found through the ``lightning_eff`` entry-point group) or an object (a
technique instance, registered per Trainer by the hub) whose functions are marked with
:data:`lightning_eff.hookimpl` and named like the specs below. All hook names start with ``leff_``.

Registration hooks run once per process when the registry loads; training-time hooks run only for
the techniques active in the current Trainer, in plan order (see ``lightning_eff.plan``).

A marked function whose name is not one of these (``leff_register_technique``), or a function named
like one of these but not marked, would never be called: the registry reports it, with the closest
valid name, in ``lightning-eff plugins``. Mark a hook meant for a future version
``@hookimpl(optionalhook=True)`` to silence that report.

A plugin's code failing never surfaces as a bare exception from inside it: configuration hooks
raise :class:`lightning_eff.registry.PluginHookError` naming the plugin, its distribution, module
and hook (before step 0), and a failing ``leff_metrics`` is reported once and left out. Raise a
:class:`lightning_eff.errors.ConfigError` for a problem the user must fix: it passes unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    import torch

    from lightning_eff.technique import Technique

PROJECT = "lightning_eff"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration (once per process, from entry-point modules) ---------------------------------


@hookspec
def leff_register_techniques(register: Callable[[type[Technique]], None]) -> None:
    """Register technique classes.

    Called once when the registry loads. Call ``register(TechniqueClass)`` for each technique the
    plugin provides; the registered name is the class attribute ``name``. A name already registered
    by another plugin is reported by ``lightning-eff plugins`` (naming both distributions) and the
    second registration skipped. The names of lightning-eff's own techniques are reserved: its
    entry points load first, and a built-in keeps its name whatever other plugins register.

    Example::

        @hookimpl
        def leff_register_techniques(register):
            register(MyTechnique)
    """


@hookspec
def leff_register_kernels(register: Callable[..., None]) -> None:
    """Register implementations of shared kernel ops.

    Called once when the registry loads. Call ``register(op, impl_name, fn, priority=0)``: ``op`` is
    a public op name from ``lightning_eff.kernels`` (e.g. ``"rms_norm"``); ``fn`` takes the same
    arguments as that public op and replaces it whole (forward and, through its own autograd,
    backward). An optional ``fn.supports(*args, **kwargs) -> bool`` declines inputs it does not
    handle. Dispatch picks the highest-priority implementation that accepts the inputs (see
    ``docs/kernels.md``). An ``op`` no built-in op dispatches (``lightning-eff plugins`` lists them
    under "built-in kernels") is reported with the closest op name.
    """


@hookspec
def leff_add_cli_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``lightning-eff`` command line.

    Called once when the CLI starts; ``cli`` is the root ``click.Group``: call
    ``cli.add_command(my_command)``. A plugin whose hook raises is reported and skipped.
    """


# --- configuration (before the Trainer exists) -------------------------------------------------


@hookspec
def leff_configure_trainer(trainer_kwargs: dict[str, Any], techniques: list[Technique]) -> None:
    """Adjust the keyword arguments a Trainer will be built with (precision, strategy flags).

    Called by :func:`lightning_eff.recipe.trainer_kwargs_for` and by ``lightning-eff bench``, for every
    registered plugin module and for each technique in ``techniques``. Mutate ``trainer_kwargs`` in
    place. A technique that needs a Trainer setting it cannot set itself (``precision``) implements
    this; preflight then checks the running Trainer agrees. An exception other than a
    ``LightningEffError`` becomes a ``PluginHookError`` naming the plugin and this hook.
    """


@hookspec
def leff_validate(techniques: list[Technique], trainer_kwargs: dict[str, Any]) -> list[str] | None:
    """Return configuration errors (each a sentence naming the fix) before any Trainer exists.

    Called by ``lightning-eff check RECIPE`` (``trainer_kwargs``: the recipe's Trainer arguments) and
    by preflight at the start of fit (``trainer_kwargs``: the running Trainer's settings, see
    ``lightning_eff.plan.trainer_settings``), for plugin modules and the techniques themselves. All
    results are collected and raised together as one :class:`lightning_eff.errors.PreflightError`.
    Return problems rather than raising: an exception other than a ``LightningEffError`` stops
    ``check`` or ``fit`` (before step 0) with a ``PluginHookError`` naming the plugin and this hook.
    """


# --- training time (per Trainer, for active techniques, through EfficientModule) ---------------


@hookspec(firstresult=True)
def leff_select_batch(module: Any, batch: Any, batch_idx: int) -> Any | None:
    """Return a smaller batch to train on, or ``None`` to keep the batch.

    Called by :meth:`lightning_eff.module.EfficientModule.efficient_loss` before the forward pass
    with gradients. The first non-``None`` result wins (techniques earlier in the plan are asked
    first); preflight refuses two active batch selectors. Use
    ``module.per_sample_loss(batch)`` under ``torch.no_grad()`` to score samples and
    :func:`lightning_eff.module.index_batch` to cut the batch.
    """


@hookspec
def leff_sample_weights(module: Any, batch: Any, per_sample_loss: torch.Tensor) -> torch.Tensor | None:
    """Return per-sample loss weights (shape ``[N]``) or ``None``.

    Called after the forward pass with gradients; ``per_sample_loss`` is detached. Results of all
    techniques are multiplied. The training loss is ``sum(w * loss) / N`` (an unbiased estimate
    when the weights compensate for dropped samples, as InfoBatch's 1/(1-r)).
    """


@hookspec
def leff_aux_losses(module: Any) -> dict[str, torch.Tensor] | None:
    """Return auxiliary losses, already multiplied by their coefficients, keyed by a short name.

    Called once per training step after the main loss. Every value is added to the loss and logged
    as ``efficiency/aux/<name>`` (e.g. MoE load balancing and router z-loss).
    """


@hookspec
def leff_metrics(trainer: Any) -> dict[str, float] | None:
    """Return extra scalar metrics to log under ``efficiency/``.

    Called by the hub every ``log_every_n_steps`` optimizer steps, on every rank, after the
    techniques' own :meth:`Technique.metrics`. Plugin modules implement it for cross-technique
    metrics; techniques usually override ``metrics()`` instead. A plugin whose hook raises is
    reported once (a warning naming it) and not asked again during that run: training goes on.
    """
