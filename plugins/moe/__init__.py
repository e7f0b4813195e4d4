"""Built-in MoE techniques (plugin module of the `lightning_eff` entry-point group)."""

from lightning_eff import hookimpl

from .layer import MoELayer
from .technique import MoEUpcycling

__all__ = ["MoELayer", "MoEUpcycling"]


@hookimpl
def leff_register_techniques(register):
    register(MoEUpcycling)
