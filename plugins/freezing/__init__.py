"""Built-in freezing techniques (plugin module of the `lightning_eff` entry-point group)."""

from lightning_eff.hookspecs import hookimpl
from lightning_eff.lazy import lazy_exports

# Imported on first use: discovering this plugin must not import Lightning (see lightning_eff.lazy).
_EXPORTS = {
    "AdaptiveFreezing": ".adaptive",
    "Blocks": ".blocks",
    "find_blocks": ".blocks",
    "FreezeOut": ".freeze_out",
    "ProgressiveFreezing": ".progressive",
    "SelectiveFinetuning": ".selective",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


@hookimpl
def leff_register_techniques(register):
    from .adaptive import AdaptiveFreezing
    from .freeze_out import FreezeOut
    from .progressive import ProgressiveFreezing
    from .selective import SelectiveFinetuning

    register(ProgressiveFreezing)
    register(FreezeOut)
    register(AdaptiveFreezing)
    register(SelectiveFinetuning)
