"""An alternative implementation of lightning-eff's ``rms_norm`` op: PyTorch's native
``torch.nn.functional.rms_norm`` (one fused ATen call on CPU instead of the reference's several).

Registered through ``leff_register_kernels``; ``lightning_eff.kernels.rms_norm`` then calls it
whenever its ``supports`` accepts the inputs, ahead of the built-in Triton kernel and reference
(``LIGHTNING_EFF_KERNELS=torch`` bypasses plugins, to compare). It keeps the op's contract:
statistics in float32, the result in ``x``'s dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

KERNEL_NAME = "{{ cookiecutter.package_name }}_native_rms_norm"
PRIORITY = 10  # above 0, the default of other plugins' implementations


def rms_norm_native(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x**2) + eps) * weight``."""
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not match the normalised dimension {x.shape[-1]}")
    y = F.rms_norm(x.float(), x.shape[-1:], weight.float() if weight is not None else None, eps)
    return y.to(x.dtype)


def _supports(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> bool:
    # CPU only: on CUDA the built-in Triton kernel is the faster choice.
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16)


rms_norm_native.supports = _supports
