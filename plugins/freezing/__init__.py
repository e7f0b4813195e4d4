"""Built-in freezing techniques (plugin module of the `lightning_eff` entry-point group)."""

from lightning_eff import hookimpl

from .adaptive import AdaptiveFreezing
from .blocks import Blocks, find_blocks
from .freeze_out import FreezeOut
from .progressive import ProgressiveFreezing
from .selective import SelectiveFinetuning

__all__ = [
    "AdaptiveFreezing",
    "Blocks",
    "FreezeOut",
    "ProgressiveFreezing",
    "SelectiveFinetuning",
    "find_blocks",
]


@hookimpl
def leff_register_techniques(register):
    register(ProgressiveFreezing)
    register(FreezeOut)
    register(AdaptiveFreezing)
    register(SelectiveFinetuning)
