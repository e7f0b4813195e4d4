"""The plugin's hooks register its technique and kernel; once installed, lightning-eff finds them."""

import importlib.metadata

import pytest
import torch
from lightning_eff.recipe import load_recipe
from lightning_eff.registry import Registry, get_registry

import {{ cookiecutter.package_name }} as plugin
from {{ cookiecutter.package_name }}.gradient_noise import GradientNoise
from {{ cookiecutter.package_name }}.rms_norm import KERNEL_NAME, PRIORITY

INSTALLED = any(ep.name == "{{ cookiecutter.package_name }}" for ep in importlib.metadata.entry_points(group="lightning_eff"))
needs_install = pytest.mark.skipif(not INSTALLED, reason="install the plugin first: pip install -e .")


def test_hooks_register_the_technique_and_the_kernel():
    registry = Registry()
    registry.add_plugin(plugin, "{{ cookiecutter.package_name }}")
    assert registry.errors == []
    assert registry.techniques == {"gradient_noise": GradientNoise}
    (impl,) = registry.kernels["rms_norm"]
    assert (impl.name, impl.priority) == (KERNEL_NAME, PRIORITY)


@needs_install
def test_the_installed_plugin_is_found_through_its_entry_point():
    registry = get_registry()
    info = registry.plugins["{{ cookiecutter.package_name }}"]
    assert info.techniques == ["gradient_noise"] and info.kernels == [f"rms_norm:{KERNEL_NAME}"]
    (technique,) = load_recipe({"techniques": [{"name": "gradient_noise", "options": {"eta": 0.3}}]}).build()
    assert isinstance(technique, GradientNoise) and technique.config.eta == 0.3


@needs_install
def test_lightning_eff_rms_norm_dispatches_to_this_plugin_on_cpu(monkeypatch):
    from lightning_eff.kernels import rms_norm
    from lightning_eff.kernels._dispatch import implementation_name

    monkeypatch.delenv("LIGHTNING_EFF_KERNELS", raising=False)
    x = torch.randn(3, 8)
    assert implementation_name("rms_norm", x) == f"plugin:{KERNEL_NAME}"
    assert rms_norm(x).shape == x.shape
