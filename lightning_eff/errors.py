"""Errors a user sees. Each message names what to change."""

from __future__ import annotations


class LightningEffError(Exception):
    """Base class of every error lightning-eff raises on purpose."""


class ConfigError(LightningEffError, ValueError):
    """A technique or recipe option is invalid. Raised when the technique is built."""


class PreflightError(LightningEffError):
    """One or more problems found before step 0; ``problems`` holds every one of them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"lightning-eff preflight found {len(self.problems)} problem(s) before training:\n{lines}")


class MissingDependencyError(LightningEffError, ImportError):
    """An optional dependency a technique or task needs is not installed."""

    def __init__(self, package: str, needed_for: str, extra: str | None = None):
        fix = f"pip install 'lightning-eff[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{needed_for} needs the optional package '{package}': {fix}")
        self.package = package


def require(module_name: str, needed_for: str, extra: str | None = None, package: str | None = None):
    """Import an optional dependency or raise :class:`MissingDependencyError` naming the install."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(package or module_name, needed_for, extra) from exc
