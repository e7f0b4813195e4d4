"""The MoE technique tests run the kernels' PyTorch references (the CPU production path): the Triton
kernels under the interpreter would add about 40 s. Tests that request ``triton_kernels`` run the
MoE layer through the Triton kernels (interpreter) instead; ``tests/kernels`` tests the ops themselves."""

import pytest

from lightning_eff.kernels import _dispatch


@pytest.fixture(autouse=True)
def _reference_kernels(monkeypatch):
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "torch")  # inherited by DDP workers


@pytest.fixture
def triton_kernels(monkeypatch):
    if not _dispatch.INTERPRETED:
        pytest.skip("Triton interpreter not available")
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "triton")
