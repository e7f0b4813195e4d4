"""Blockwise 8-bit quantisation of optimizer moments, and bf16 rounding (pure functions).

A tensor is flattened, padded to a multiple of ``block`` and split into blocks; each block keeps its
absolute maximum in fp32 and one byte per value. The byte is a *companded* code: with ``c =
(|x| / absmax) ** (1 / power)``, ``code = round(c * levels)`` and ``x ~ absmax * (code / levels) **
power``. Companding spends the 8 bits logarithmically-ish: Adam's second moment spans many decades
within a block (``power=4`` reaches 255**-4 ~ 2e-10 of the block maximum), the first moment fewer
(``power=2``, signed). Blockwise scaling (Dettmers et al., "8-bit Optimizers via Block-wise
Quantization", 2022) keeps one outlier from flattening a whole tensor; companding replaces their
dynamic quantisation map with a formula.

Rounding is to nearest, or stochastic (``noise`` in [0, 1) added before ``floor``): an update
smaller than half a code step, such as ``(1 - beta2) * g**2`` against a large ``v``, is then kept
in expectation instead of always being rounded away. A positive second moment never rounds to the
zero code (its ``sqrt`` is a denominator).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _blocks(x: Tensor, block: int) -> Tensor:
    flat = x.reshape(-1).float()
    pad = (-flat.numel()) % block
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block)


def quantize_blockwise(
    x: Tensor, block: int = 256, signed: bool = True, power: float = 2.0, noise: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(codes, absmax)``: int8 (signed) or uint8 codes of shape ``[blocks, block]`` and fp32
    ``absmax[blocks]``. ``noise``: uniform [0, 1) of the codes' shape for stochastic rounding."""
    blocks = _blocks(x, block)
    absmax = blocks.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax, 1.0)[:, None]
    levels = 127 if signed else 255
    companded = (blocks.abs() / scale).clamp(max=1.0).pow(1.0 / power) * levels
    codes = (companded + noise).floor() if noise is not None else companded.round()
    codes = codes.clamp(max=levels)
    if not signed:
        codes = torch.where(blocks > 0, codes.clamp(min=1), codes)  # a denominator never becomes 0
    if signed:
        return (codes * blocks.sign()).to(torch.int8), absmax
    return codes.to(torch.uint8), absmax


def dequantize_blockwise(
    codes: Tensor, absmax: Tensor, shape: torch.Size, signed: bool = True, power: float = 2.0
) -> Tensor:
    """The fp32 tensor of ``shape`` that :func:`quantize_blockwise` encoded."""
    levels = 127 if signed else 255
    c = codes.float()
    values = (c.abs() / levels).pow(power) * absmax[:, None]
    if signed:
        values = values * c.sign()
    numel = 1
    for s in shape:
        numel *= s
    return values.reshape(-1)[:numel].view(shape)


def round_to_bf16(x: Tensor, noise_bits: Tensor | None = None) -> Tensor:
    """``x`` (fp32) as bf16: to nearest, or stochastically with ``noise_bits`` (int32 in [0, 2**16))."""
    if noise_bits is None:
        return x.to(torch.bfloat16)
    bits = x.float().contiguous().view(torch.int32)
    # Adding random low bits then truncating rounds up with probability = the discarded fraction.
    rounded = (bits + noise_bits) & ~0xFFFF
    out = rounded.view(torch.float32).to(torch.bfloat16)
    return torch.where(torch.isfinite(x), out, x.to(torch.bfloat16))


def state_bytes_per_value(state_dtype: str, block: int) -> float:
    """Bytes one moment costs per parameter element: 4 (fp32), 2 (bf16), 1 + 4 / block (int8)."""
    return {"fp32": 4.0, "bf16": 2.0, "int8": 1.0 + 4.0 / block}[state_dtype]
