"""Shared kernels, installed as ``lightning_eff.kernels``: one op per file, Triton + PyTorch reference.

Each op runs a plugin's implementation, the Triton kernel (CUDA, or the interpreter on CPU under
``TRITON_INTERPRET=1``) or the PyTorch reference, decided per call (see ``_dispatch``), and is a
``torch.library`` custom op, so ``torch.compile`` sees one node per op. ``docs/kernels.md`` has the
rules; :mod:`lightning_eff.kernels.testing` the shared correctness helpers.
"""

from lightning_eff._shadow_guard import defer_to_installed

# From the repository root this folder is also visible as top-level `kernels`, the name of a PyPI
# package transformers imports: hand that name to the installed package (see _shadow_guard).
if not defer_to_installed(__name__, __file__, "lightning_eff.kernels"):
    from lightning_eff.kernels.cross_entropy import cross_entropy_logsumexp, per_sample_cross_entropy
    from lightning_eff.kernels.fp8_cast import fp8_cast, fp8_dequantize, fp8_quantize_dequantize
    from lightning_eff.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
    from lightning_eff.kernels.grouped_gemm import moe_grouped_swiglu
    from lightning_eff.kernels.moe_routing import MoERouting, moe_routing_metadata, moe_topk_routing
    from lightning_eff.kernels.norms import layer_norm, rms_norm

__all__ = [
    "cross_entropy_logsumexp",
    "fp8_cast",
    "fp8_dequantize",
    "fp8_quantize_dequantize",
    "fused_linear_cross_entropy",
    "layer_norm",
    "MoERouting",
    "moe_grouped_swiglu",
    "moe_routing_metadata",
    "moe_topk_routing",
    "per_sample_cross_entropy",
    "rms_norm",
]
