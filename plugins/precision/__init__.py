"""Built-in precision techniques (plugin module of the `lightning_eff` entry-point group).

- :class:`MixedPrecision` (``mixed_precision``): bf16 / fp16 / Transformer Engine mixed precision with
  an fp32 module policy and an optional fp32 finish.
- :class:`Float8Training` (``float8_training``): torchao float8 Linear layers where the GPU allows.
- :class:`LowPrecisionOptimizerStates` (``low_precision_optimizer_states``): Adam moments in bf16 or
  blockwise 8-bit (:class:`LowPrecisionAdamW`).
"""

from lightning_eff.hookspecs import hookimpl
from lightning_eff.lazy import lazy_exports

# Imported on first use: discovering this plugin must not import Lightning (see lightning_eff.lazy).
_EXPORTS = {
    "Float8Training": ".float8",
    "MixedPrecision": ".mixed",
    "LowPrecisionAdamW": ".optimizer",
    "LowPrecisionOptimizerStates": ".optimizer_states",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


@hookimpl
def leff_register_techniques(register):
    from .float8 import Float8Training
    from .mixed import MixedPrecision
    from .optimizer_states import LowPrecisionOptimizerStates

    register(MixedPrecision)
    register(Float8Training)
    register(LowPrecisionOptimizerStates)
