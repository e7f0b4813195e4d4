"""The Technique base class: a Lightning Callback with declared metadata and a pydantic config.

Authors write ordinary Lightning hooks (``setup``, ``on_train_batch_end``...). The first technique
whose ``setup`` runs attaches the :class:`~lightning_eff.hub.EfficiencyHub` to the Trainer; from
then on the hub calls every technique's hooks in plan order (reverse order on exit hooks) and times
them, and the direct calls Lightning makes to each technique return at once. Without a hub (a unit
test calling a hook by hand) the hook simply runs.
"""

from __future__ import annotations

import difflib
import functools
import json
import types
import typing
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from lightning.pytorch import Callback
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from lightning_eff.config_types import clip, short_repr
from lightning_eff.errors import ConfigError

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_eff.hub import EfficiencyHub

PHASES = ("surgery", "data", "loss", "optimizer", "precision")

# Lightning callback hooks the hub dispatches in plan order. Checkpoint hooks are left to Lightning:
# their order does not matter, and state travels through ``state_dict`` keyed by ``state_key``.
DISPATCHED_HOOKS = (
    "setup",
    "teardown",
    "on_fit_start",
    "on_fit_end",
    "on_train_start",
    "on_train_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_exception",
)
# Exit hooks unwind in reverse plan order, like nested context managers: the technique that
# changed the model first restores it last.
EXIT_HOOKS = frozenset({"teardown", "on_fit_end", "on_train_end", "on_train_epoch_end", "on_validation_end"})


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type takes ``True``/``False`` as a value of its own (not as 1/0)."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _admits_bool(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return any(_admits_bool(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return any(isinstance(arg, bool) for arg in typing.get_args(annotation))
    return False


class TechniqueConfig(BaseModel):
    """Base of every technique's options model: unknown keys are errors, values are immutable.

    Rules every option follows, subclasses included (pydantic merges ``model_config``): ``inf`` and
    ``nan`` are refused (they train to NaN or overflow), and so is a bool where the option is not a
    bool (pydantic would read ``true`` as 1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and not _admits_bool(field.annotation):
                raise ValueError(f"got {str(value).lower()}, a bool; this option is not a bool: write a number or value")
        return value


def batch_selector_problems(techniques: Sequence[Any]) -> list[str]:
    """At most one technique may replace batches (``selects_batches``); shared by ``check`` and preflight."""
    selectors = [t.name for t in techniques if getattr(t, "selects_batches", False)]
    if len(selectors) > 1:
        return [f"two batch selectors are active ({', '.join(selectors)}): keep only one of them"]
    return []


def format_validation_error(owner: str, error: ValidationError, known: Iterable[str] = ()) -> str:
    """One line per bad option: ``Owner: key=value: what is allowed`` (values cut to a line); an
    unknown option gets the closest of the ``known`` names."""
    lines = []
    for item in error.errors():
        key = clip(".".join(str(part) for part in item["loc"]), 120) or "(options)"
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"{owner}: unknown option '{clip(key, 80)}'{hint}")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"{owner}: {key}={short_repr(item.get('input'))}: {clip(msg)}")
    return "\n".join(lines)


def _dispatch_guard(hook_name: str, impl):
    @functools.wraps(impl)
    def hook(self: Technique, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs):
        if hook_name == "setup" and self._hub is None:
            from lightning_eff.hub import EfficiencyHub

            EfficiencyHub.attach(trainer).setup(trainer, pl_module, *args, **kwargs)
            return None
        hub = self._hub
        if hub is not None and not hub.dispatching:
            return None  # the hub calls this hook itself, in plan order
        return impl(self, trainer, pl_module, *args, **kwargs)

    hook._leff_impl = impl
    return hook


#: ``supported_strategies`` of a technique tested on one device and under DDP (two processes)
DDP_TESTED: tuple[str, ...] = ("single_device", "ddp")
#: ... and under FSDP2 (ModelParallelStrategy, fully_shard in configure_model; two processes)
FSDP2_TESTED: tuple[str, ...] = (*DDP_TESTED, "fsdp2")


class Technique(Callback):
    """Base class of every training-efficiency technique.

    Subclasses set the class attributes below, a ``Config`` pydantic model (the source of truth for
    options, their types, ranges and documentation) and a typed ``__init__`` that passes its
    arguments to ``super().__init__(**options)`` so that LightningCLI and Hydra can build it.
    """

    #: registered name, snake_case (``gradual_pruning``); recipes and the CLI use it
    name: ClassVar[str] = ""
    #: where in training it acts; breaks ordering ties (surgery first, precision last)
    phase: ClassVar[str] = "optimizer"
    #: names of techniques this one must run before / after when both are active
    before: ClassVar[tuple[str, ...]] = ()
    after: ClassVar[tuple[str, ...]] = ()
    #: names of techniques that must also be active
    requires: ClassVar[tuple[str, ...]] = ()
    #: names of techniques that cannot be active together with this one
    conflicts: ClassVar[tuple[str, ...]] = ()
    #: the LightningModule must mix in ``lightning_eff.EfficientModule``
    requires_module_mixin: ClassVar[bool] = False
    #: replaces batches through ``leff_select_batch``; at most one such technique may be active
    selects_batches: ClassVar[bool] = False
    #: parameters may stop receiving gradients (DDP must look for unused parameters)
    find_unused_parameters: ClassVar[bool] = False
    #: strategy kinds this technique is tested under (``lightning_eff.plan.STRATEGY_KINDS``:
    #: "single_device", "ddp", "fsdp2", ...); ``None``: all, only for techniques that touch neither
    #: parameters, modules nor optimizers
    supported_strategies: ClassVar[tuple[str, ...] | None] = None
    #: why a strategy kind is not supported and what to use instead (shown by preflight)
    strategy_refusals: ClassVar[dict[str, str]] = {}
    #: replaces modules or converts parameters in ``setup``, which must happen before FSDP2 shards
    #: them in ``configure_model``: preflight refuses a model whose parameters are already DTensors
    acts_before_sharding: ClassVar[bool] = False
    Config: ClassVar[type[TechniqueConfig]] = TechniqueConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for hook_name in DISPATCHED_HOOKS:
            impl = cls.__dict__.get(hook_name)
            if impl is not None and not hasattr(impl, "_leff_impl"):
                setattr(cls, hook_name, _dispatch_guard(hook_name, impl))

    def __init__(self, **options: Any) -> None:
        super().__init__()
        if not self.name:
            raise TypeError(f"{type(self).__name__} must set the class attribute 'name'")
        if self.phase not in PHASES:
            raise TypeError(f"{type(self).__name__}.phase={self.phase!r} must be one of {PHASES}")
        try:
            self.config = self.Config(**options)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(type(self).__name__, exc, self.Config.model_fields)) from None
        self._hub: EfficiencyHub | None = None

    @classmethod
    def from_options(cls, **options: Any) -> Technique:
        """Build from a mapping of options (recipes): unknown keys become a ConfigError, not a TypeError."""
        try:
            cls.Config(**options)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(cls.__name__, exc, cls.Config.model_fields)) from None
        return cls(**options)

    # Every technique gets the guard on setup, overridden or not: it is where the hub attaches.
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pass

    @property
    def state_key(self) -> str:
        # Two instances of one technique with different options keep separate checkpoint entries.
        # Cached: Lightning reads state_key for every callback on every hook call (profiler labels),
        # and the config is frozen.
        key = self.__dict__.get("_state_key")
        if key is None:
            options = json.dumps(self.config.model_dump(mode="json"), sort_keys=True)
            key = self.__dict__["_state_key"] = self._generate_state_key(name=self.name, options=options)
        return key

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring (shown by ``lightning-eff plugins`` and ``info``)."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def validate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
        """Problems with this configuration on this Trainer and model, found before step 0.

        Each problem is one sentence that names the fix. Called by preflight during ``setup``,
        before the technique's own ``setup``.
        """
        return []

    def metrics(self) -> dict[str, float]:
        """Scalars logged as ``efficiency/<name>/<key>`` every ``log_every_n_steps`` steps."""
        return {}

    def savings(self) -> dict[str, float]:
        """What the technique claims it saved so far (shown in the end-of-fit summary)."""
        return {}

    def overrides(self, hook_name: str) -> bool:
        """Whether this technique implements the Lightning hook ``hook_name``."""
        return getattr(type(self), hook_name) is not getattr(Technique, hook_name)

    def own_hook(self, hook_name: str):
        """This technique's own implementation of a Lightning hook, unguarded: ``impl(self, trainer, ...)``."""
        method = getattr(type(self), hook_name)
        return getattr(method, "_leff_impl", method)

    def call_hook(self, hook_name: str, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs):
        """Run this technique's own implementation of a Lightning hook (used by the hub)."""
        return self.own_hook(hook_name)(self, trainer, pl_module, *args, **kwargs)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({options})"


Technique.setup = _dispatch_guard("setup", Technique.setup)  # type: ignore[method-assign]
