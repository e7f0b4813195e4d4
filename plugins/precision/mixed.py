"""MixedPrecision: the Trainer's mixed precision, a per-module fp32 policy, an fp32 finish.

The precision itself is Lightning's (``bf16-mixed``, ``16-mixed`` with a grad scaler,
``transformer-engine``): this technique asks for it through ``leff_configure_trainer`` (recipes,
``lightning-eff bench``) and refuses to run, at preflight, on a Trainer built with another one. What
it adds: modules kept in fp32 (norms, routers, the loss head), checked on the first training step;
an optional switch to full precision for the end of training (``full_precision_from``); and the
numbers (activation bytes per step, Linear layers in low precision, fp16 overflows).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import ConfigDict, Field

from lightning_eff import Technique, TechniqueConfig, hookimpl
from lightning_eff.config_types import Patterns
from lightning_eff.errors import ConfigError, LightningEffError
from lightning_eff.schedule import TimeLike, TimePoint, to_steps
from lightning_eff.technique import FSDP2_TESTED

from .memory import StepProbe, parameter_bytes
from .policy import (
    DEFAULT_FP32_TYPES,
    LOW_PRECISIONS,
    fp32_policy_modules,
    keep_in_fp32,
    precision_problem,
    release_fp32,
    unmatched_patterns,
)


def runs_on_cpu(trainer_kwargs: dict[str, Any]) -> bool:
    accelerator = trainer_kwargs.get("accelerator", "auto")
    if accelerator in (None, "auto"):
        return not torch.cuda.is_available()
    return str(accelerator) == "cpu"


def full_precision_step(point: TimePoint | None, total_steps: float, trainer: Any = None) -> int | None:
    """The first optimizer step trained in full precision (``None``: never); sample and token points
    are read against the ``trainer``'s training DataLoader."""
    return None if point is None else to_steps(point, total_steps, trainer=trainer)


class MixedPrecisionConfig(TechniqueConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    precision: str = Field("bf16-mixed", description=f"Trainer precision: one of {sorted(LOW_PRECISIONS)}")
    fp32_modules: Patterns = Field(
        (), description="glob / 're:' patterns of module names kept in fp32 (e.g. 'lm_head', '*.router')"
    )
    fp32_types: Patterns = Field(
        DEFAULT_FP32_TYPES, description="class-name globs of modules kept in fp32 (default: norms and MoE routers)"
    )
    full_precision_from: TimePoint | None = Field(
        None, description="train in full precision from this step or fraction of the run on (None: never)"
    )


class MixedPrecision(Technique):
    """Mixed precision (bf16 / fp16 with scaler / Transformer Engine) with an fp32 module policy and an fp32 finish."""

    name = "mixed_precision"
    phase = "precision"
    # Under FSDP2 Lightning's precision plugin autocasts the forward of the sharded model; the fp32
    # policy hooks modules, which fully_shard keeps. FSDP2's MixedPrecisionPolicy (bf16 all-gathers)
    # is the user's choice in configure_model and composes with it.
    supported_strategies = FSDP2_TESTED
    Config = MixedPrecisionConfig

    def __init__(
        self,
        precision: str = "bf16-mixed",
        fp32_modules: Sequence[str] = (),
        fp32_types: Sequence[str] = DEFAULT_FP32_TYPES,
        full_precision_from: TimeLike | None = None,
    ) -> None:
        super().__init__(
            precision=precision, fp32_modules=fp32_modules, fp32_types=fp32_types,
            full_precision_from=full_precision_from,
        )
        self.policy: dict[str, Any] = {}
        self.switch_step: int | None = None
        self.switched = False
        self.overflow_steps = 0
        self.loss_scale: float | None = None
        self.probe: StepProbe | None = None
        self.probe_results: dict[str, float] = {}
        self._probe_pending = True
        self._plugin = None
        self._param_bytes = 0
        self._last_scale: float | None = None

    # -- configuration (before the Trainer exists) --------------------------------------------------

    @hookimpl
    def leff_configure_trainer(self, trainer_kwargs, techniques):
        precision = self.config.precision
        if precision_problem(precision) is not None:
            return  # reported by leff_validate; an unknown value would crash the Trainer first
        if precision == "16-mixed" and runs_on_cpu(trainer_kwargs):
            # Lightning silently replaces 16-mixed with bf16-mixed on CPU; its AMP plugin with a CPU
            # grad scaler (torch >= 2.3) is the real thing.
            from lightning.pytorch.plugins import MixedPrecision as AmpPlugin

            trainer_kwargs.pop("precision", None)
            plugins = [p for p in trainer_kwargs.get("plugins") or [] if not isinstance(p, AmpPlugin)]
            trainer_kwargs["plugins"] = [*plugins, AmpPlugin("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
        else:
            trainer_kwargs["precision"] = precision

    @hookimpl
    def leff_validate(self, techniques, trainer_kwargs):
        precision = self.config.precision
        problem = precision_problem(precision)
        if problem is not None:
            return [f"{self.name}: {problem}"]
        problems = []
        if precision.startswith("transformer-engine") and importlib.util.find_spec("transformer_engine") is None:
            problems.append(f"{self.name}: precision={precision!r} needs NVIDIA Transformer Engine: "
                            "pip install transformer-engine[pytorch] (GPU only), or use 'bf16-mixed'")
        running = str(trainer_kwargs.get("precision", "32-true"))
        plugins = trainer_kwargs.get("plugins") or []
        asked = {str(getattr(p, "precision", "")) for p in plugins} | {running}
        if precision not in asked:
            problems.append(
                f"{self.name}: the Trainer runs precision={running!r} but this technique asks for {precision!r}: "
                f"pass Trainer(precision={precision!r}) or build its arguments with Recipe.trainer_kwargs"
                + (" (on CPU, 16-mixed needs plugins=[MixedPrecision('16-mixed', 'cpu')]: Lightning would swap it for bf16)"
                   if precision == "16-mixed" else "")
            )
        return problems

    # -- preflight needing the model ----------------------------------------------------------------

    def _explicit(self, key: str) -> tuple[str, ...]:
        # The defaults (norms, routers) may match nothing in a model without them; patterns the user
        # chose must match something, or the policy silently does nothing.
        value = getattr(self.config, key)
        return () if value == type(self.config).model_fields[key].default else value

    def validate(self, trainer, pl_module) -> list[str]:
        c = self.config
        problems = [
            f"fp32 policy {kind} pattern {pattern!r} matches no module of {type(pl_module).__name__}; "
            f"its modules are named like {[n for n, _ in pl_module.named_modules() if n][:6]}: fix or remove the pattern"
            for kind, _, pattern in (
                m.partition(":") for m in unmatched_patterns(pl_module, self._explicit("fp32_modules"), self._explicit("fp32_types"))
            )
        ]
        try:
            full_precision_step(c.full_precision_from, trainer.estimated_stepping_batches, trainer)
        except ConfigError as exc:
            problems.append(str(exc))
        return problems

    # -- Lightning hooks ----------------------------------------------------------------------------

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        c = self.config
        self.policy = fp32_policy_modules(pl_module, c.fp32_modules, c.fp32_types)
        for module in self.policy.values():
            keep_in_fp32(module)
        self.switch_step = full_precision_step(c.full_precision_from, trainer.estimated_stepping_batches, trainer)
        self._plugin = trainer.precision_plugin
        self._param_bytes = parameter_bytes(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.switch_step is not None and trainer.global_step >= self.switch_step and not self.switched:
            # Lightning enters precision_plugin.forward_context() around every step; from here on it
            # is a no-op (the fp16 scaler keeps scaling, which is harmless in fp32).
            self._plugin.forward_context = contextlib.nullcontext
            self.switched = True
            self._probe_pending = True  # measure again: the fraction in low precision drops to 0
        if self._probe_pending and trainer.training:
            self._probe_pending = False
            self.probe = StepProbe(pl_module, self.policy)

    def on_after_backward(self, trainer, pl_module) -> None:
        self._close_probe(check=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._close_probe(check=False)  # a step that skipped its backward (manual optimisation)
        scaler = getattr(self._plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            scale = float(scaler.get_scale())
            # GradScaler lowers its scale exactly when it found inf/NaN gradients and skipped the step.
            if self.loss_scale is not None and scale < self.loss_scale:
                self.overflow_steps += 1
            self.loss_scale = scale

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close_probe(check=False)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self._close_probe(check=False)
        for module in self.policy.values():
            release_fp32(module)
        if self._plugin is not None and "forward_context" in self._plugin.__dict__:
            del self._plugin.forward_context

    def _close_probe(self, check: bool) -> None:
        probe, self.probe = self.probe, None
        if probe is None:
            return
        probe.close()
        self.probe_results = {
            "low_precision_linear_fraction": probe.low_precision_linear_fraction(),
            "activation_bytes": float(probe.saved_bytes),
        }
        violations = probe.fp32_violations(self.policy)
        if check and violations:
            raise LightningEffError(
                f"{self.name}: the fp32 policy did not take effect for {violations[:5]}: something casts these modules "
                "or their outputs after setup (a '-true' precision, model.half(), another technique); keep them fp32 "
                "or remove their patterns"
            )
        self.probe_results["fp32_policy_verified"] = 1.0

    # -- metrics and state --------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        out = {
            "fp32_modules": float(len(self.policy)),
            "full_precision": float(self.switched),
            "parameter_bytes": float(self._param_bytes),
            **self.probe_results,
        }
        if self.loss_scale is not None:
            out.update({"loss_scale": self.loss_scale, "overflow_steps": float(self.overflow_steps)})
        return out

    def savings(self) -> dict[str, float]:
        fraction = self.probe_results.get("low_precision_linear_fraction")
        return {} if fraction is None else {"low_precision_linear_fraction": fraction}

    def state_dict(self) -> dict[str, Any]:
        # The switch is a function of the step; the GradScaler's own state travels in Lightning's
        # checkpoint (the precision plugin's entry), its scale is repeated here so tests compare it.
        return {"overflow_steps": self.overflow_steps, "loss_scale": self.loss_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.overflow_steps = int(state["overflow_steps"])
        self.loss_scale = state["loss_scale"]
