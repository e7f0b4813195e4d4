"""Built-in moe techniques (plugin module of the `lightning_eff` entry-point group)."""

from lightning_eff import hookimpl


@hookimpl
def leff_register_techniques(register):
    pass
