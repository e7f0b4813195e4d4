import sys
from pathlib import Path

import pytest

# example_techniques is imported by name (also inside DDP worker processes).
sys.path.insert(0, str(Path(__file__).parent))

import example_techniques  # noqa: E402

from lightning_eff import registry as registry_module  # noqa: E402


@pytest.fixture
def example_registry(monkeypatch):
    """A fresh registry holding only the example techniques (no entry points)."""
    reg = registry_module.Registry()

    class Plugin:
        @staticmethod
        @example_techniques.hookimpl
        def leff_register_techniques(register):
            for cls in (
                example_techniques.WeightNoise,
                example_techniques.HalfBatch,
                example_techniques.OtherSelector,
                example_techniques.ConstantAuxLoss,
            ):
                register(cls)

    reg.add_plugin(Plugin(), "examples")
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    return reg
