"""Plugin discovery: entry points of the ``lightning_eff`` group -> techniques and kernels.

Built-in techniques are found exactly like third-party ones. A plugin that fails to import, whose
hook raises, or that registers a name already taken is recorded in ``Registry.errors`` (shown by
``lightning-eff plugins``) and skipped: a broken plugin never crashes the host.

``LIGHTNING_EFF_PLUGINS``: comma-separated allow-list of entry-point names (only these load).
``LIGHTNING_EFF_DISABLE_PLUGINS``: comma-separated deny-list.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from lightning_eff import hookspecs
from lightning_eff.errors import ConfigError
from lightning_eff.technique import Technique

ENTRY_POINT_GROUP = "lightning_eff"
ALLOW_ENV = "LIGHTNING_EFF_PLUGINS"
DENY_ENV = "LIGHTNING_EFF_DISABLE_PLUGINS"


@dataclass
class PluginInfo:
    name: str  # entry-point name
    module: str
    distribution: str | None
    version: str | None
    techniques: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)


@dataclass
class PluginError:
    plugin: str
    message: str


@dataclass
class KernelImpl:
    op: str
    name: str
    fn: Callable[..., Any]
    priority: int
    plugin: str


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _short_error(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({frame.filename}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


class Registry:
    """Loaded plugins, their techniques and kernel implementations."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.techniques: dict[str, type[Technique]] = {}
        self.technique_plugin: dict[str, str] = {}
        self.kernels: dict[str, list[KernelImpl]] = {}
        self.errors: list[PluginError] = []

    # -- loading ---------------------------------------------------------------------------------

    def load_entry_points(self) -> None:
        allow, deny = _env_list(ALLOW_ENV), _env_list(DENY_ENV) or set()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in self.plugins or (allow is not None and ep.name not in allow) or ep.name in deny:
                continue
            dist = getattr(ep, "dist", None)
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
                self.errors.append(PluginError(ep.name, f"failed to import {ep.value}: {_short_error(exc)}"))
                continue
            self.add_plugin(
                module,
                ep.name,
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
            )

    def add_plugin(
        self, module: ModuleType | object, name: str, distribution: str | None = None, version: str | None = None
    ) -> None:
        """Register one plugin module (also usable directly, e.g. in tests) and run its registrations."""
        try:
            self.pm.register(module, name=name)
        except Exception as exc:  # noqa: BLE001 - bad hook signatures are reported per plugin
            self.errors.append(PluginError(name, f"invalid hook implementation: {_short_error(exc)}"))
            return
        info = PluginInfo(name, getattr(module, "__name__", type(module).__name__), distribution, version)
        self.plugins[name] = info
        for impl in self.pm.hook.leff_register_techniques.get_hookimpls():
            if impl.plugin_name == name:
                self._run_registration(info, impl.function, "register", self._technique_registrar(info))
        for impl in self.pm.hook.leff_register_kernels.get_hookimpls():
            if impl.plugin_name == name:
                self._run_registration(info, impl.function, "register", self._kernel_registrar(info))

    def _run_registration(self, info: PluginInfo, fn: Callable, argname: str, registrar: Callable) -> None:
        try:
            fn(**{argname: registrar})
        except Exception as exc:  # noqa: BLE001
            self.errors.append(PluginError(info.name, f"{fn.__name__} raised {_short_error(exc)}"))

    def _technique_registrar(self, info: PluginInfo) -> Callable[[type[Technique]], None]:
        def register(cls: type[Technique]) -> None:
            if not (isinstance(cls, type) and issubclass(cls, Technique)):
                self.errors.append(PluginError(info.name, f"{cls!r} is not a lightning_eff.Technique subclass"))
                return
            if not cls.name:
                self.errors.append(PluginError(info.name, f"{cls.__qualname__} has no class attribute 'name'"))
                return
            if cls.name in self.techniques:
                owner = self.technique_plugin[cls.name]
                self.errors.append(
                    PluginError(info.name, f"technique name '{cls.name}' already registered by plugin '{owner}'; skipped")
                )
                return
            self.techniques[cls.name] = cls
            self.technique_plugin[cls.name] = info.name
            info.techniques.append(cls.name)

        return register

    def _kernel_registrar(self, info: PluginInfo) -> Callable[..., None]:
        def register(op: str, impl_name: str, fn: Callable[..., Any], priority: int = 0) -> None:
            self.kernels.setdefault(op, []).append(KernelImpl(op, impl_name, fn, priority, info.name))
            info.kernels.append(f"{op}:{impl_name}")

        return register

    def with_techniques(self, techniques: list[Technique]) -> pluggy.PluginManager:
        """A plugin manager holding every plugin module plus these technique instances (first
        technique called first), for hooks that concern a whole plan (configure, validate)."""
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for name, plugin in self.pm.list_name_plugin():
            pm.register(plugin, name=name)
        for i, technique in enumerate(reversed(techniques)):
            pm.register(technique, name=f"technique-{i}-{technique.state_key}")
        return pm

    # -- lookup ----------------------------------------------------------------------------------

    def technique(self, name: str) -> type[Technique]:
        try:
            return self.techniques[name]
        except KeyError:
            known = ", ".join(sorted(self.techniques)) or "(none installed)"
            raise ConfigError(f"unknown technique '{name}'. Installed techniques: {known}") from None


_REGISTRY: Registry | None = None


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None or reload:
        registry = Registry()
        registry.load_entry_points()
        _REGISTRY = registry
    return _REGISTRY


def technique_class(name: str) -> type[Technique]:
    return get_registry().technique(name)
