"""lightning-eff: training-efficiency techniques as composable, resumable Lightning callbacks.

The public names are imported on first use (PEP 562): ``lightning-eff --help`` and the import guard
of the ``kernels/`` folder must not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lightning_eff.quiet import silence_known_noise

__version__ = "0.1.0"

silence_known_noise()

_PUBLIC = {
    "ConfigError": "lightning_eff.errors",
    "LightningEffError": "lightning_eff.errors",
    "MissingDependencyError": "lightning_eff.errors",
    "PreflightError": "lightning_eff.errors",
    "hookimpl": "lightning_eff.hookspecs",
    "EfficiencyHub": "lightning_eff.hub",
    "EfficientModule": "lightning_eff.module",
    "index_batch": "lightning_eff.module",
    "Technique": "lightning_eff.technique",
    "TechniqueConfig": "lightning_eff.technique",
}

__all__ = [
    "ConfigError",
    "EfficiencyHub",
    "EfficientModule",
    "LightningEffError",
    "MissingDependencyError",
    "PreflightError",
    "Technique",
    "TechniqueConfig",
    "hookimpl",
    "index_batch",
]

if TYPE_CHECKING:
    from lightning_eff.errors import ConfigError, LightningEffError, MissingDependencyError, PreflightError
    from lightning_eff.hookspecs import hookimpl
    from lightning_eff.hub import EfficiencyHub
    from lightning_eff.module import EfficientModule, index_batch
    from lightning_eff.technique import Technique, TechniqueConfig


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lightning_eff' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
