"""Kernel tests run the Triton kernels through Triton's interpreter on CPU tensors (``tests/conftest.py``
sets ``TRITON_INTERPRET=1`` before anything imports Triton). Helpers shared by the op tests live in
``lightning_eff.kernels.testing``, the same module kernel authors in other packages use."""

import pytest

from lightning_eff.kernels import _dispatch


@pytest.fixture(params=["triton", "torch"])
def backend(request, monkeypatch):
    """Run the test once through the Triton kernel (interpreter) and once through the reference."""
    if request.param == "triton" and not _dispatch.INTERPRETED:
        pytest.skip("Triton interpreter not available")
    monkeypatch.setenv(_dispatch.BACKEND_ENV, request.param)
    return request.param


@pytest.fixture(autouse=True)
def _automatic_dispatch(monkeypatch):
    """A LIGHTNING_EFF_KERNELS set in the developer's shell must not leak into the tests (the
    ``backend`` fixture, which runs after this one, sets it on purpose)."""
    monkeypatch.delenv(_dispatch.BACKEND_ENV, raising=False)
