"""The one callback per Trainer that runs the techniques: plan, preflight, dispatch, timing, metrics.

Added by the first technique's ``setup`` (see ``technique.py``), placed before the checkpoint
callbacks so that checkpoints saved at the end of a batch see the techniques' work of that batch.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pluggy
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_eff import hookspecs
from lightning_eff.plan import describe_plan, preflight
from lightning_eff.technique import DISPATCHED_HOOKS, EXIT_HOOKS, Technique

if TYPE_CHECKING:
    import lightning.pytorch as pl


class EfficiencyHub(Callback):
    """Runs the active techniques of one Trainer in plan order and accounts for their cost."""

    def __init__(self, techniques: list[Technique]) -> None:
        super().__init__()
        self.techniques = list(techniques)
        self.order: list[Technique] = list(techniques)
        self.dispatching = False
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.last_metrics: dict[str, float] = {}
        self.summary: dict[str, Any] | None = None
        self._stages_set_up: set[str] = set()
        self._last_logged_step = -1
        self._implementers: dict[str, list[Technique]] = {}
        #: plugins whose ``leff_metrics`` raised in this run: reported once, not asked again
        self.failed_metric_plugins: set[str] = set()
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)

    # -- attaching -------------------------------------------------------------------------------

    @classmethod
    def attach(cls, trainer: pl.Trainer) -> EfficiencyHub:
        """Return the Trainer's hub, creating it (and adopting every technique) on first use."""
        for cb in trainer.callbacks:
            if isinstance(cb, EfficiencyHub):
                return cb
        techniques = [cb for cb in trainer.callbacks if isinstance(cb, Technique)]
        hub = cls(techniques)
        for t in techniques:
            t._hub = hub
        position = next((i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, Checkpoint)), None)
        if position is None:
            trainer.callbacks.append(hub)
        else:
            trainer.callbacks.insert(position, hub)
        return hub

    @staticmethod
    def of(trainer: pl.Trainer | None) -> EfficiencyHub | None:
        if trainer is None:
            return None
        return next((cb for cb in trainer.callbacks if isinstance(cb, EfficiencyHub)), None)

    @property
    def hook(self):
        """Training-time pluggy hooks (``leff_select_batch``...) of the active techniques."""
        return self.pm.hook

    @property
    def state_key(self) -> str:
        return "lightning_eff.EfficiencyHub"

    # -- dispatch --------------------------------------------------------------------------------

    def _set_order(self, order: list[Technique]) -> None:
        self.order = order
        for plugin in list(self.pm.get_plugins()):
            self.pm.unregister(plugin)
        # pluggy calls the last registered first: register in reverse so plan order is call order.
        for t in reversed(order):
            self.pm.register(t, name=t.state_key)
        # Resolved once: per step, a hook costs one call per implementer plus its timing.
        self._implementers = {}
        for hook_name in DISPATCHED_HOOKS:
            calls = [(t, t.own_hook(hook_name), self.seconds[t.name]) for t in order if t.overrides(hook_name)]
            self._implementers[hook_name] = calls[::-1] if hook_name in EXIT_HOOKS else calls

    def dispatch(self, hook_name: str, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs) -> None:
        calls = self._implementers.get(hook_name)
        if calls is None:  # a hook before setup resolved the plan
            calls = [(t, t.own_hook(hook_name), self.seconds[t.name]) for t in self.order if t.overrides(hook_name)]
            calls = calls[::-1] if hook_name in EXIT_HOOKS else calls
        if not calls:
            return
        self.dispatching = True
        clock = time.perf_counter
        try:
            for t, impl, seconds in calls:
                start = clock()
                impl(t, trainer, pl_module, *args, **kwargs)
                seconds[hook_name] += clock() - start
        finally:
            self.dispatching = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage in self._stages_set_up:
            return
        self._stages_set_up.add(stage)
        if stage == "fit":
            order = preflight(self.techniques, trainer, pl_module)
            self._set_order(order)
            if trainer.is_global_zero and order:
                rank_zero_info(describe_plan(order))
        elif not self._implementers:
            self._set_order(self.order)
        self.dispatch("setup", trainer, pl_module, stage)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.dispatch("teardown", trainer, pl_module, stage)
        self._stages_set_up.discard(stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.dispatch("on_train_batch_end", trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if step != self._last_logged_step and step % max(1, trainer.log_every_n_steps) == 0:
            self._last_logged_step = step
            self.log_metrics(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.dispatch("on_fit_end", trainer, pl_module)
        self.log_metrics(trainer)
        self.summary = self.build_summary(trainer)
        if trainer.is_global_zero and self.order:
            rank_zero_info(format_summary(self.summary))

    # -- metrics and summary ---------------------------------------------------------------------

    def collect_metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for t in self.order:
            for key, value in t.metrics().items():
                metrics[f"efficiency/{t.name}/{key}"] = float(value)
        from lightning_eff.registry import get_registry

        registry = get_registry()
        # One call per plugin (pluggy's call order: last registered first) rather than one pluggy
        # call, so that a plugin failing mid-run loses its own metrics only, not the run.
        for impl in reversed(registry.pm.hook.leff_metrics.get_hookimpls()):
            if impl.plugin_name in self.failed_metric_plugins or impl.hookwrapper or impl.wrapper:
                continue
            try:
                found = impl.function(*(trainer for _ in impl.argnames))  # as pluggy: only the args it takes
                extra = {f"efficiency/{key}": float(value) for key, value in (found or {}).items()}
            except Exception as exc:  # noqa: BLE001 - reported once, then that plugin is left out
                self.failed_metric_plugins.add(impl.plugin_name)
                rank_zero_warn(
                    f"{registry.describe_plugin(impl.plugin_name)} failed in its hook leff_metrics at step "
                    f"{trainer.global_step} ({type(exc).__name__}: {exc}); training goes on without its metrics. "
                    f"Fix or update it, or skip it with LIGHTNING_EFF_DISABLE_PLUGINS={impl.plugin_name}"
                )
                continue
            metrics.update(extra)
        return metrics

    def log_metrics(self, trainer: pl.Trainer) -> None:
        if not self.order:
            return
        self.last_metrics = self.collect_metrics(trainer)
        if self.last_metrics and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(self.last_metrics, step=trainer.global_step)

    def build_summary(self, trainer: pl.Trainer) -> dict[str, Any]:
        rows = []
        for t in self.order:
            rows.append(
                {
                    "technique": t.name,
                    "seconds": round(sum(self.seconds[t.name].values()), 6),
                    "seconds_by_hook": {k: round(v, 6) for k, v in sorted(self.seconds[t.name].items())},
                    "savings": t.savings(),
                }
            )
        return {"global_step": trainer.global_step, "techniques": rows, "metrics": dict(self.last_metrics)}

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": {k: dict(v) for k, v in self.seconds.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, hooks in state_dict.get("seconds", {}).items():
            for hook, value in hooks.items():
                self.seconds[name][hook] = value


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"lightning-eff efficiency summary (step {summary['global_step']}):"]
    for row in summary["techniques"]:
        claims = ", ".join(f"{k}={v:.4g}" for k, v in row["savings"].items()) or "-"
        lines.append(f"  {row['technique']:<24} own time {row['seconds']:8.3f}s   saves: {claims}")
    return "\n".join(lines)


def _make_dispatcher(hook_name: str):
    def hook(self: EfficiencyHub, trainer, pl_module, *args, **kwargs) -> None:
        self.dispatch(hook_name, trainer, pl_module, *args, **kwargs)

    hook.__name__ = hook_name
    hook.__doc__ = f"Dispatch ``{hook_name}`` to the techniques in plan order."
    return hook


for _hook in DISPATCHED_HOOKS:
    if _hook not in EfficiencyHub.__dict__:
        setattr(EfficiencyHub, _hook, _make_dispatcher(_hook))
