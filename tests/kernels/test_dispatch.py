"""Which implementation runs: plugin > Triton (CUDA, or the interpreter on CPU) > reference, with the
LIGHTNING_EFF_KERNELS override; and the package imports without Triton or loading plugins."""

import subprocess
import sys
import types

import pytest
import torch

from lightning_eff import hookimpl
from lightning_eff import registry as registry_module
from lightning_eff.kernels import _dispatch, cross_entropy, moe_routing, norms, rms_norm
from lightning_eff.registry import Registry

needs_interpreter = pytest.mark.skipif(not _dispatch.INTERPRETED, reason="needs Triton's interpreter")


@pytest.fixture
def plugin_registry(monkeypatch):
    """A registry holding only the plugins a test adds (instead of the installed entry points)."""
    reg = Registry()
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)

    def add(**kernels):
        def leff_register_kernels(register):
            for impl_name, (op, fn, priority) in kernels.items():
                register(op, impl_name, fn, priority=priority)

        plugin = types.SimpleNamespace(leff_register_kernels=hookimpl(leff_register_kernels))
        reg.add_plugin(plugin, f"plugin{len(reg.plugins)}")
        return reg

    return add


@needs_interpreter
def test_cpu_tensors_run_the_triton_kernel_under_the_interpreter(monkeypatch):
    calls = []
    monkeypatch.setattr(norms, "norm_forward_triton", lambda *a: calls.append("triton") or norms.norm_forward_reference(*a))
    rms_norm(torch.randn(3, 8))
    assert calls == ["triton"]
    assert _dispatch.implementation_name("rms_norm", torch.randn(2)) == "triton-interpreter"


def test_without_the_interpreter_cpu_tensors_run_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(norms, "norm_forward_triton", lambda *a: pytest.fail("Triton kernel called"))
    rms_norm(torch.randn(3, 8))
    assert _dispatch.implementation_name("rms_norm", torch.randn(2)) == "torch"


def test_override_torch_runs_the_reference(monkeypatch):
    monkeypatch.setenv("LIGHTNING_EFF_KERNELS", "torch")
    monkeypatch.setattr(cross_entropy, "cross_entropy_forward_triton", lambda *a: pytest.fail("Triton kernel called"))
    cross_entropy.per_sample_cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 2]))


def test_override_triton_that_cannot_run_says_how_to_fix_it(monkeypatch):
    monkeypatch.setenv("LIGHTNING_EFF_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fix = "install triton" if _dispatch.triton is None else "set TRITON_INTERPRET=1 before importing"
    with pytest.raises(RuntimeError, match=f"LIGHTNING_EFF_KERNELS=triton.*{fix}"):
        rms_norm(torch.randn(3, 8))


def test_an_unknown_override_is_refused(monkeypatch):
    monkeypatch.setenv("LIGHTNING_EFF_KERNELS", "cuda")
    with pytest.raises(ValueError, match="set it to 'torch', 'triton' or leave it unset"):
        rms_norm(torch.randn(3, 8))


def test_the_highest_priority_plugin_that_supports_the_inputs_wins(plugin_registry):
    def fast(x, weight=None, eps=1e-6):
        return torch.full_like(x, 1.0)

    def faster_for_bf16(x, weight=None, eps=1e-6):
        return torch.full_like(x, 2.0)

    faster_for_bf16.supports = lambda x, weight=None, eps=1e-6: x.dtype == torch.bfloat16
    plugin_registry(fast=("rms_norm", fast, 5), faster=("rms_norm", faster_for_bf16, 10))
    assert (rms_norm(torch.randn(2, 4).bfloat16()) == 2).all()
    assert (rms_norm(torch.randn(2, 4)) == 1).all()  # the priority-10 one declines fp32
    assert _dispatch.implementation_name("rms_norm", torch.randn(2, 4)) == "plugin:fast"


def test_the_override_bypasses_plugins(plugin_registry, monkeypatch):
    plugin_registry(broken=("rms_norm", lambda *a, **k: pytest.fail("plugin called"), 100))
    monkeypatch.setenv("LIGHTNING_EFF_KERNELS", "torch")
    x = torch.randn(2, 4)
    torch.testing.assert_close(rms_norm(x), torch.nn.functional.rms_norm(x, (4,), eps=1e-6))


def test_plugins_for_other_ops_are_ignored(plugin_registry):
    plugin_registry(other=("layer_norm", lambda *a, **k: pytest.fail("wrong op"), 100))
    rms_norm(torch.randn(2, 4))


def test_the_kernels_import_without_loading_plugins_and_run_without_triton():
    # One subprocess for both (importing lightning_eff takes seconds): a clean interpreter where
    # `import triton` fails.
    code = (
        "import sys, torch\n"
        "sys.modules['triton'] = None  # makes `import triton` raise ImportError\n"
        "import lightning_eff.registry as registry\n"
        "from lightning_eff import kernels\n"
        "from lightning_eff.kernels import _dispatch\n"
        "assert registry._REGISTRY is None, 'plugins loaded at import'\n"
        "assert _dispatch.triton is None\n"
        "x = torch.randn(4, 8, requires_grad=True)\n"
        "kernels.rms_norm(x).sum().backward()\n"
        "kernels.per_sample_cross_entropy(x, torch.tensor([1, 2, 3, -100]))\n"
        "assert _dispatch.implementation_name('rms_norm', x) == 'torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


@needs_interpreter
def test_autotuned_kernels_use_a_single_config_without_a_gpu():
    assert len(cross_entropy._cross_entropy_forward_kernel.configs) == 1
    assert len(cross_entropy._CONFIGS) > 1  # a GPU tunes over all of them


def _spy(monkeypatch, module, name):
    """Replace ``module.name`` (a Triton entry point) by a recorder that runs the original."""
    calls, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(name) or original(*a, **k))
    return calls


@needs_interpreter
@pytest.mark.parametrize(
    "x, triton_runs",
    [
        (torch.randn(2, 8), True),
        (torch.randn(2, 8, dtype=torch.float64), False),  # the kernels take fp32/fp16/bf16 only
        (torch.randn(1, norms.MAX_TRITON_COLS + 1), False),  # a row wider than one block
    ],
    ids=["fp32", "float64", "wide_rows"],
)
def test_implementation_name_names_the_reference_for_inputs_the_norm_kernel_does_not_take(monkeypatch, x, triton_runs):
    calls = _spy(monkeypatch, norms, "norm_forward_triton")
    rms_norm(x)
    assert bool(calls) == triton_runs
    assert _dispatch.implementation_name("rms_norm", x) == ("triton-interpreter" if triton_runs else "torch")


@needs_interpreter
@pytest.mark.parametrize(
    "logits, triton_runs",
    [
        (torch.randn(4, 8), True),
        (torch.randn(4, 8, dtype=torch.float64), False),
        (torch.randn(4, moe_routing.MAX_TRITON_EXPERTS), False),  # one-hot tiles hold E + 1 columns
    ],
    ids=["fp32", "float64", "many_experts"],
)
def test_implementation_name_names_the_reference_for_routing_the_kernel_does_not_take(monkeypatch, logits, triton_runs):
    calls = _spy(monkeypatch, moe_routing, "topk_triton")
    moe_routing.moe_topk_routing(logits, 2)
    assert bool(calls) == triton_runs
    name = _dispatch.implementation_name("moe_topk_routing", logits, 2)
    assert name == ("triton-interpreter" if triton_runs else "torch")
