"""Plugin discovery: entry points of the ``lightning_eff`` group -> techniques and kernels.

Built-in techniques are found exactly like third-party ones. A plugin that fails to import, whose
registration hook raises, that registers a name already taken, or that implements a hook that does
not exist (a misspelling pluggy would silently ignore) is recorded in ``Registry.errors`` (shown by
``lightning-eff plugins``) and skipped: a broken plugin never crashes the host.

Names registered by lightning-eff's own distribution are reserved: its entry points load first, and
a third-party plugin registering one of them is reported (naming both distributions) and skipped,
whatever its entry point is called.

Hooks called on the user's behalf later (``leff_configure_trainer``, ``leff_validate``) go through
:meth:`Registry.with_techniques`, which turns an exception from a plugin into a
:class:`PluginHookError` naming the plugin, its distribution, module and hook.

``LIGHTNING_EFF_PLUGINS``: comma-separated allow-list of entry-point names (only these load).
``LIGHTNING_EFF_DISABLE_PLUGINS``: comma-separated deny-list.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.metadata as md
import importlib.util
import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from lightning_eff import hookspecs
from lightning_eff.errors import ConfigError, LightningEffError

if TYPE_CHECKING:  # imported where used: the Technique base imports Lightning (seconds)
    from lightning_eff.technique import Technique

ENTRY_POINT_GROUP = "lightning_eff"
ALLOW_ENV = "LIGHTNING_EFF_PLUGINS"
DENY_ENV = "LIGHTNING_EFF_DISABLE_PLUGINS"
#: the distribution whose technique names are reserved (the built-ins)
OWN_DISTRIBUTION = "lightning-eff"
HOOK_NAMES = tuple(sorted(name for name in dir(hookspecs) if name.startswith("leff_")))


def _normalized(distribution: str | None) -> str:
    return re.sub(r"[-_.]+", "-", distribution or "").lower()


def is_builtin(distribution: str | None, module: str) -> bool:
    """Whether a plugin is lightning-eff's own: its distribution *and* its package."""
    return _normalized(distribution) == OWN_DISTRIBUTION and module.startswith("lightning_eff.")


@dataclass
class PluginInfo:
    name: str  # entry-point name
    module: str
    distribution: str | None
    version: str | None
    techniques: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return is_builtin(self.distribution, self.module)

    def describe(self) -> str:
        """``plugin 'x' (distribution leff-x 1.0, module leff_x)``: enough to find and remove it."""
        dist = f"distribution {self.distribution} {self.version or ''}".rstrip() if self.distribution else "no distribution"
        return f"plugin '{self.name}' ({dist}, module {self.module})"


class PluginHookError(LightningEffError):
    """A plugin's (or a technique's) hook raised; the message names where it comes from and the fix."""

    def __init__(self, origin: str, hook: str, exc: BaseException, fix: str):
        self.origin, self.hook = origin, hook
        super().__init__(f"{origin} failed in its hook {hook}: {_short_error(exc)}. {fix}")


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


def _dist_name(ep: Any) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist else None


def _clash_message(name: str, claimant: PluginInfo, owner: PluginInfo) -> str:
    reserved = " (a built-in name, reserved)" if owner.builtin else ""
    return (
        f"technique name '{name}' is already registered by {owner.describe()}{reserved}; the registration by "
        f"{claimant.describe()} is skipped: rename its technique"
    )


def hook_name_problems(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Hook implementations pluggy would silently never call: an unknown ``leff_*`` name (a
    misspelling), or a hook function without the ``@hookimpl`` marker."""
    problems = []
    for attr in sorted(dir(plugin)):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        hook = (opts or {}).get("specname") or attr
        if opts is not None and hook not in HOOK_NAMES and not opts.get("optionalhook"):
            close = difflib.get_close_matches(hook, HOOK_NAMES, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid hooks: {', '.join(HOOK_NAMES)}"
            problems.append(f"implements unknown hook '{hook}', which is never called: {hint}")
        elif opts is None and attr in HOOK_NAMES and callable(getattr(plugin, attr, None)):
            problems.append(f"defines {attr} without the @lightning_eff.hookimpl marker, so it is never called: mark it")
    return problems


class _HookProxy:
    """Holds a plugin's guarded hooks; compared by identity (pluggy refuses a plugin equal to one
    already registered, and two empty namespaces would be equal)."""


def _guarded(pm: pluggy.PluginManager, plugin: object, origin: str, fix: str) -> object:
    """A stand-in for ``plugin`` with the same hook implementations, each raising
    :class:`PluginHookError` (``origin``, the hook, ``fix``) when it fails. A deliberate
    :class:`LightningEffError` (a ConfigError...) passes unchanged: it already tells the user what to do."""
    proxy = _HookProxy()
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            continue
        fn = getattr(plugin, attr)
        if opts.get("hookwrapper") or opts.get("wrapper"):
            fn = _pass_through(fn)  # a wrapper's failures surface through the hooks it wraps
        else:
            fn = _guard(fn, origin, opts.get("specname") or attr, fix)
        setattr(fn, f"{hookspecs.PROJECT}_impl", opts)
        setattr(proxy, attr, fn)
    return proxy


def _pass_through(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:  # a generator function, as pluggy requires of wrappers
        return (yield from fn(*args, **kwargs))

    return wrapper


def _guard(fn: Callable[..., Any], origin: str, hook: str, fix: str) -> Callable[..., Any]:
    @functools.wraps(fn)  # pluggy reads the hook's argument names through __wrapped__
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LightningEffError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure inside a plugin is reported as the plugin's
            raise PluginHookError(origin, hook, exc, fix) from exc

    return guarded


@functools.lru_cache(maxsize=1)
def builtin_kernel_ops() -> list[str]:
    """Ops of ``lightning_eff.kernels`` a plugin may register implementations for: the names their
    public functions dispatch through ``plugin_implementation("<op>", ...)``. Read from the source,
    so that listing them neither imports Triton nor loads plugins."""
    spec = importlib.util.find_spec("lightning_eff.kernels")
    if spec is None or not spec.submodule_search_locations:
        return []
    ops: set[str] = set()
    for folder in spec.submodule_search_locations:
        for path in sorted(Path(folder).glob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, SyntaxError, UnicodeDecodeError):
                continue
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", getattr(node.func, "attr", None)) == "plugin_implementation"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    ops.add(node.args[0].value)
    return sorted(ops)


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

    def load_entry_points(self, registrations: bool = True) -> None:
        """Import every allowed plugin of the entry-point group and register it.

        ``registrations=False`` only imports the plugin modules and registers their hooks, without
        asking them for techniques and kernels: enough for the commands plugins add to the CLI
        (``lightning-eff --help``), and it does not import the techniques (nor Lightning).
        """
        allow, deny = _env_list(ALLOW_ENV), _env_list(DENY_ENV) or set()
        found = md.entry_points(group=ENTRY_POINT_GROUP)
        # Built-ins first, so that their names are taken before any third-party plugin is asked
        # (a name-sorted order would let an entry point named 'aaa' claim 'gradual_pruning').
        for ep in sorted(found, key=lambda e: (not is_builtin(_dist_name(e), e.value), e.name)):
            if (allow is not None and ep.name not in allow) or ep.name in deny:
                continue
            dist = getattr(ep, "dist", None)
            if ep.name in self.plugins:
                owner = self.plugins[ep.name]
                self.errors.append(PluginError(ep.name, (
                    f"entry point '{ep.name}' = {ep.value} of distribution {_dist_name(ep) or '?'} is not loaded: "
                    f"the name is taken by {owner.describe()}; rename the entry point"
                )))
                continue
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
                self.errors.append(PluginError(ep.name, f"failed to import {ep.value}: {_short_error(exc)}"))
                continue
            self.add_plugin(
                module,
                ep.name,
                distribution=_dist_name(ep),
                version=dist.version if dist else None,
                registrations=registrations,
            )

    def add_plugin(
        self,
        module: ModuleType | object,
        name: str,
        distribution: str | None = None,
        version: str | None = None,
        registrations: bool = True,
    ) -> None:
        """Register one plugin module (also usable directly, e.g. in tests) and run its registrations
        (unless ``registrations`` is False: hooks only, see :meth:`load_entry_points`)."""
        try:
            self.pm.register(module, name=name)
        except Exception as exc:  # noqa: BLE001 - bad hook signatures are reported per plugin
            self.errors.append(PluginError(name, f"invalid hook implementation: {_short_error(exc)}"))
            return
        info = PluginInfo(name, getattr(module, "__name__", type(module).__name__), distribution, version)
        self.plugins[name] = info
        self.errors += [PluginError(name, message) for message in hook_name_problems(self.pm, module)]
        if not registrations:
            return
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
        from lightning_eff.technique import Technique

        def register(cls: type[Technique]) -> None:
            if not (isinstance(cls, type) and issubclass(cls, Technique)):
                self.errors.append(PluginError(info.name, f"{cls!r} is not a lightning_eff.Technique subclass"))
                return
            if not cls.name:
                self.errors.append(PluginError(info.name, f"{cls.__qualname__} has no class attribute 'name'"))
                return
            for message in hook_name_problems(self.pm, cls):
                self.errors.append(PluginError(info.name, f"technique '{cls.name}' ({cls.__module__}.{cls.__qualname__}) {message}"))
            if cls.name in self.techniques:
                owner = self.plugins[self.technique_plugin[cls.name]]
                if not (info.builtin and not owner.builtin):
                    self.errors.append(PluginError(info.name, _clash_message(cls.name, info, owner)))
                    return
                # A built-in registered after a third-party claim (add_plugin order): it takes its
                # name back, and the claim is reported against the third-party plugin.
                owner.techniques.remove(cls.name)
                self.errors.append(PluginError(owner.name, _clash_message(cls.name, owner, info)))
            self.techniques[cls.name] = cls
            self.technique_plugin[cls.name] = info.name
            info.techniques.append(cls.name)

        return register

    def _kernel_registrar(self, info: PluginInfo) -> Callable[..., None]:
        def register(op: str, impl_name: str, fn: Callable[..., Any], priority: int = 0) -> None:
            ops = builtin_kernel_ops()
            if ops and op not in ops:  # kept (harmless), but reported: no op would ever dispatch to it
                close = difflib.get_close_matches(op, ops, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"the ops are: {', '.join(ops)}"
                self.errors.append(PluginError(info.name, (
                    f"registers kernel '{impl_name}' for op '{op}', which no built-in op dispatches, so it is "
                    f"never called: {hint}"
                )))
            self.kernels.setdefault(op, []).append(KernelImpl(op, impl_name, fn, priority, info.name))
            info.kernels.append(f"{op}:{impl_name}")

        return register

    def with_techniques(self, techniques: list[Technique]) -> pluggy.PluginManager:
        """A plugin manager holding every plugin module plus these technique instances (first
        technique called first), for hooks that concern a whole plan (configure, validate).

        Each is registered through a stand-in whose hooks raise :class:`PluginHookError` naming the
        plugin when they fail, so a broken plugin stops ``check`` or ``fit`` before step 0 with a
        message saying whose code failed, not with a bare exception from inside it."""
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for name, plugin in self.pm.list_name_plugin():
            info = self.plugins.get(name)
            origin = info.describe() if info else f"plugin '{name}'"
            fix = f"Fix or update it, uninstall it, or skip it with {DENY_ENV}={name}"
            pm.register(_guarded(pm, plugin, origin, fix), name=name)
        for i, technique in enumerate(reversed(techniques)):
            origin = self.describe_technique(type(technique))
            fix = f"Fix it, or remove {technique.name} from the recipe / the Trainer's callbacks"
            pm.register(_guarded(pm, technique, origin, fix), name=f"technique-{i}-{technique.state_key}")
        return pm

    def describe_technique(self, cls: type[Technique]) -> str:
        """``technique 'x' (class pkg.mod.Cls, plugin 'p' (distribution d 1.0, module m))``."""
        where = f"technique '{cls.name}' (class {cls.__module__}.{cls.__qualname__}"
        plugin = self.technique_plugin.get(cls.name) if self.techniques.get(cls.name) is cls else None
        return f"{where}, {self.plugins[plugin].describe()})" if plugin else f"{where}, not registered by a plugin)"

    def describe_plugin(self, name: str) -> str:
        info = self.plugins.get(name)
        return info.describe() if info else f"plugin '{name}'"

    def report(self) -> dict[str, Any]:
        """What ``lightning-eff plugins --json`` prints."""
        return {
            "plugins": [
                {
                    "name": info.name,
                    "module": info.module,
                    "distribution": info.distribution,
                    "version": info.version,
                    "builtin": info.builtin,
                    "techniques": sorted(info.techniques),
                    "kernels": sorted(info.kernels),
                }
                for info in sorted(self.plugins.values(), key=lambda i: i.name)
            ],
            "builtin_kernels": builtin_kernel_ops(),
            "errors": [{"plugin": e.plugin, "message": e.message} for e in self.errors],
        }

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
