import types

import pytest

from lightning_eff import Technique, hookimpl
from lightning_eff.errors import ConfigError
from lightning_eff.registry import Registry, get_registry


class Alpha(Technique):
    """A technique named alpha."""

    name = "alpha"


class AlphaAgain(Technique):
    """Another technique that claims the name alpha."""

    name = "alpha"


def plugin(**hooks):
    module = types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})
    return module


def test_registered_name_is_the_class_attribute():
    reg = Registry()
    reg.add_plugin(plugin(leff_register_techniques=lambda register: register(Alpha)), "one")
    assert reg.technique("alpha") is Alpha
    assert reg.plugins["one"].techniques == ["alpha"]


def test_duplicate_name_is_reported_and_the_first_registration_kept():
    reg = Registry()
    reg.add_plugin(plugin(leff_register_techniques=lambda register: register(Alpha)), "one")
    reg.add_plugin(plugin(leff_register_techniques=lambda register: register(AlphaAgain)), "two")
    assert reg.technique("alpha") is Alpha
    assert [(e.plugin, e.message) for e in reg.errors] == [
        ("two", "technique name 'alpha' already registered by plugin 'one'; skipped")
    ]


def test_a_registration_hook_that_raises_is_reported_not_raised():
    def broken(register):
        raise RuntimeError("boom")

    reg = Registry()
    reg.add_plugin(plugin(leff_register_techniques=broken), "broken")
    assert len(reg.errors) == 1 and "RuntimeError: boom" in reg.errors[0].message


def test_registering_something_that_is_not_a_technique_is_reported():
    reg = Registry()
    reg.add_plugin(plugin(leff_register_techniques=lambda register: register(dict)), "odd")
    assert "is not a lightning_eff.Technique subclass" in reg.errors[0].message
    assert reg.techniques == {}


def test_a_hook_with_a_wrong_signature_is_reported():
    reg = Registry()
    reg.add_plugin(plugin(leff_register_techniques=lambda wrong_arg: None), "bad-signature")
    assert "invalid hook implementation" in reg.errors[0].message


def test_kernel_registrations_are_collected_per_op():
    def register_kernels(register):
        register("rms_norm", "fast", lambda x: x, priority=5)

    reg = Registry()
    reg.add_plugin(plugin(leff_register_kernels=register_kernels), "k")
    (impl,) = reg.kernels["rms_norm"]
    assert (impl.name, impl.priority, impl.plugin) == ("fast", 5, "k")
    assert reg.plugins["k"].kernels == ["rms_norm:fast"]


def test_unknown_technique_error_lists_what_is_installed():
    reg = Registry()
    reg.add_plugin(plugin(leff_register_techniques=lambda register: register(Alpha)), "one")
    with pytest.raises(ConfigError, match="unknown technique 'beta'. Installed techniques: alpha"):
        reg.technique("beta")


def test_builtin_families_load_through_entry_points():
    reg = get_registry(reload=True)
    assert {"pruning", "freezing", "data", "precision", "moe"} <= set(reg.plugins)
    assert all(reg.plugins[name].distribution == "lightning-eff" for name in ("pruning", "moe"))
    assert reg.errors == []


def test_deny_and_allow_lists(monkeypatch):
    monkeypatch.setenv("LIGHTNING_EFF_DISABLE_PLUGINS", "moe, data")
    reg = Registry()
    reg.load_entry_points()
    assert "moe" not in reg.plugins and "data" not in reg.plugins and "pruning" in reg.plugins
    monkeypatch.delenv("LIGHTNING_EFF_DISABLE_PLUGINS")
    monkeypatch.setenv("LIGHTNING_EFF_PLUGINS", "pruning")
    reg = Registry()
    reg.load_entry_points()
    assert set(reg.plugins) == {"pruning"}
