"""lightning-eff: training-efficiency techniques as composable, resumable Lightning callbacks."""

from lightning_eff.errors import ConfigError, LightningEffError, MissingDependencyError, PreflightError
from lightning_eff.hookspecs import hookimpl
from lightning_eff.hub import EfficiencyHub
from lightning_eff.module import EfficientModule, index_batch
from lightning_eff.technique import Technique, TechniqueConfig

__version__ = "0.1.0"

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
