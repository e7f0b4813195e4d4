"""Built-in precision techniques (plugin module of the `lightning_eff` entry-point group).

- :class:`MixedPrecision` (``mixed_precision``): bf16 / fp16 / Transformer Engine mixed precision with
  an fp32 module policy and an optional fp32 finish.
- :class:`Float8Training` (``float8_training``): torchao float8 Linear layers where the GPU allows.
- :class:`LowPrecisionOptimizerStates` (``low_precision_optimizer_states``): Adam moments in bf16 or
  blockwise 8-bit (:class:`LowPrecisionAdamW`).
"""

from lightning_eff import hookimpl

from .float8 import Float8Training
from .mixed import MixedPrecision
from .optimizer import LowPrecisionAdamW
from .optimizer_states import LowPrecisionOptimizerStates

__all__ = ["Float8Training", "LowPrecisionAdamW", "LowPrecisionOptimizerStates", "MixedPrecision"]


@hookimpl
def leff_register_techniques(register):
    register(MixedPrecision)
    register(Float8Training)
    register(LowPrecisionOptimizerStates)
