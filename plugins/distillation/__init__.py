"""Built-in distillation techniques (plugin module of the `lightning_eff` entry-point group)."""

from lightning_eff.hookspecs import hookimpl
from lightning_eff.lazy import lazy_exports

# Imported on first use: discovering this plugin must not import Lightning (see lightning_eff.lazy).
_EXPORTS = {
    "FeatureDistillation": ".features",
    "KnowledgeDistillation": ".knowledge",
    "distillation_weight": ".losses",
    "feature_loss": ".losses",
    "kd_loss": ".losses",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


@hookimpl
def leff_register_techniques(register):
    from .features import FeatureDistillation
    from .knowledge import KnowledgeDistillation

    register(KnowledgeDistillation)
    register(FeatureDistillation)


@hookimpl
def leff_add_cli_commands(cli):
    from .distill_cli import distill

    cli.add_command(distill)
