"""Built-in pruning techniques (plugin module of the `lightning_eff` entry-point group)."""

from lightning_eff.hookspecs import hookimpl
from lightning_eff.lazy import lazy_exports

# Imported on first use: discovering this plugin must not import Lightning (see lightning_eff.lazy).
_EXPORTS = {
    "GradualPruning": ".gradual",
    "NMSparsity": ".nm",
    "nm_sparse_ste": ".nm",
    "StructuredPruning": ".structured",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


@hookimpl
def leff_register_techniques(register):
    from .gradual import GradualPruning
    from .nm import NMSparsity
    from .structured import StructuredPruning

    register(GradualPruning)
    register(NMSparsity)
    register(StructuredPruning)
