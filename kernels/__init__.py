"""Shared kernels, installed as ``lightning_eff.kernels``: one op per file, Triton + PyTorch reference."""
