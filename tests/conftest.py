"""Test-suite setup. TRITON_INTERPRET must be set before anything imports Triton, so that kernels
run through Triton's interpreter on CPU tensors (see docs/kernels.md)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest_plugins = ["lightning_eff.testing"]


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
