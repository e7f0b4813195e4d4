"""Built-in pruning techniques (plugin module of the `lightning_eff` entry-point group)."""

from lightning_eff import hookimpl

from .gradual import GradualPruning
from .nm import NMSparsity, nm_sparse_ste
from .structured import StructuredPruning

__all__ = ["GradualPruning", "NMSparsity", "StructuredPruning", "nm_sparse_ste"]


@hookimpl
def leff_register_techniques(register):
    register(GradualPruning)
    register(NMSparsity)
    register(StructuredPruning)
