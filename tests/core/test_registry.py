import importlib.metadata as md
import types

import pytest

from lightning_eff import Technique, hookimpl
from lightning_eff import registry as registry_module
from lightning_eff.errors import ConfigError
from lightning_eff.registry import Registry, builtin_kernel_ops, get_registry


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
        (
            "two",
            "technique name 'alpha' is already registered by plugin 'one' (no distribution, module SimpleNamespace); "
            "the registration by plugin 'two' (no distribution, module SimpleNamespace) is skipped: rename its technique",
        )
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


def test_a_kernel_for_an_op_that_does_not_exist_is_reported_with_the_closest_op():
    reg = Registry()
    reg.add_plugin(plugin(leff_register_kernels=lambda register: register("rms_nrom", "fast", lambda x: x)), "k")
    assert [e.message for e in reg.errors] == [
        "registers kernel 'fast' for op 'rms_nrom', which no built-in op dispatches, so it is never called: "
        "did you mean 'rms_norm'?"
    ]


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


# --- built-in names are reserved --------------------------------------------------------------------


class Takeover(Technique):
    """A third-party technique that claims a built-in name."""

    name = "gradual_pruning"


class AlphaTakeoverVictim(Technique):
    """Stands in for the built-in gradual_pruning."""

    name = "gradual_pruning"


def fake_module(module_name, **hooks):
    """A module as an entry point loads it: its hook functions marked with hookimpl."""
    module = types.ModuleType(module_name)
    for hook, fn in hooks.items():
        setattr(module, hook, hookimpl(fn))
    return module


def fake_entry_point(name, module, dist="leff-evil", version="6.6.6"):
    meta = types.SimpleNamespace(metadata={"Name": dist}, version=version)
    return types.SimpleNamespace(name=name, value=module.__name__, group="lightning_eff", dist=meta, load=lambda: module)


@pytest.fixture
def with_entry_points(monkeypatch):
    """Add fake third-party entry points to the installed (built-in) ones."""
    real = list(md.entry_points(group="lightning_eff"))

    def install(*extra):
        monkeypatch.setattr(registry_module.md, "entry_points", lambda group: [*extra, *real])
        reg = Registry()
        reg.load_entry_points()
        return reg

    return install


def test_a_third_party_plugin_cannot_take_over_a_builtin_name(with_entry_points):
    builtin = get_registry().technique("gradual_pruning")
    # 'aaa' sorts before every built-in entry point: in name order it would register first and win.
    evil = fake_module("leff_evil", leff_register_techniques=lambda register: register(Takeover))
    reg = with_entry_points(fake_entry_point("aaa", evil))
    assert reg.technique("gradual_pruning") is builtin
    assert "gradual_pruning" not in reg.plugins["aaa"].techniques
    (error,) = [e for e in reg.errors if e.plugin == "aaa"]
    assert "technique name 'gradual_pruning' is already registered by plugin 'pruning' (distribution lightning-eff" in error.message
    assert "(a built-in name, reserved)" in error.message
    assert "plugin 'aaa' (distribution leff-evil 6.6.6, module leff_evil) is skipped" in error.message


def test_a_builtin_registered_after_a_third_party_claim_takes_its_name_back():
    reg = Registry()
    reg.add_plugin(fake_module("leff_evil", leff_register_techniques=lambda register: register(Takeover)), "aaa",
                   distribution="leff-evil", version="6.6.6")
    builtin = fake_module("lightning_eff.plugins.fake", leff_register_techniques=lambda register: register(AlphaTakeoverVictim))
    reg.add_plugin(builtin, "fake", distribution="lightning_eff", version="0.1.0")  # normalized like pip
    assert reg.technique("gradual_pruning") is AlphaTakeoverVictim
    assert reg.plugins["aaa"].techniques == [] and reg.plugins["fake"].techniques == ["gradual_pruning"]
    (error,) = reg.errors
    assert error.plugin == "aaa" and "leff-evil 6.6.6" in error.message and "lightning_eff 0.1.0" in error.message


def test_an_entry_point_named_like_a_builtin_one_is_reported_not_dropped_silently(with_entry_points):
    evil = fake_module("leff_evil", leff_register_techniques=lambda register: register(Takeover))
    reg = with_entry_points(fake_entry_point("pruning", evil))
    assert reg.plugins["pruning"].distribution == "lightning-eff"
    (error,) = [e for e in reg.errors if "leff_evil" in e.message]
    assert "distribution leff-evil is not loaded: the name is taken by plugin 'pruning'" in error.message
    assert "rename the entry point" in error.message


def test_a_same_distribution_name_outside_lightning_eff_is_not_builtin():
    # A look-alike distribution cannot claim built-in status: the package must be lightning_eff's too.
    assert not registry_module.is_builtin("lightning-eff", "evil_pkg")
    assert registry_module.is_builtin("Lightning_Eff", "lightning_eff.plugins.pruning")


# --- hooks pluggy would silently ignore ---------------------------------------------------------------


def test_a_misspelled_hook_is_reported_with_the_closest_valid_name():
    reg = Registry()
    reg.add_plugin(plugin(leff_register_technique=lambda register: register(Alpha)), "typo")
    assert reg.techniques == {}
    assert [(e.plugin, e.message) for e in reg.errors] == [
        ("typo", "implements unknown hook 'leff_register_technique', which is never called: "
                 "did you mean 'leff_register_techniques'?")
    ]


def test_a_hook_without_the_marker_is_reported():
    module = types.ModuleType("leff_unmarked")
    module.leff_register_techniques = lambda register: register(Alpha)
    reg = Registry()
    reg.add_plugin(module, "unmarked")
    assert "defines leff_register_techniques without the @lightning_eff.hookimpl marker" in reg.errors[0].message


def test_a_misspelled_hook_on_a_technique_class_is_reported():
    class Typo(Technique):
        """Validates through a misspelled hook."""

        name = "typo"

        @hookimpl
        def leff_valdate(self, techniques, trainer_kwargs):
            return ["never called"]

    reg = Registry()
    reg.add_plugin(plugin(leff_register_techniques=lambda register: register(Typo)), "one")
    (error,) = reg.errors
    assert error.message.startswith("technique 'typo' (test_registry.")
    assert error.message.endswith("Typo) implements unknown hook 'leff_valdate', which is never called: "
                                  "did you mean 'leff_validate'?")


def test_an_optional_hook_is_not_reported():
    module = types.SimpleNamespace(leff_future_hook=hookimpl(optionalhook=True)(lambda: None))
    reg = Registry()
    reg.add_plugin(module, "future")
    assert reg.errors == []


def test_builtin_kernel_ops_are_the_ops_plugins_can_replace():
    ops = builtin_kernel_ops()
    assert {
        "cross_entropy_logsumexp", "per_sample_cross_entropy", "fp8_cast", "fused_linear_cross_entropy",
        "moe_grouped_swiglu", "moe_topk_routing", "moe_routing_metadata", "rms_norm", "layer_norm",
    } <= set(ops)
    assert ops == sorted(set(ops)) and "plugin_implementation" not in ops


# --- what `lightning-eff plugins` and `info` show -------------------------------------------------------


def invoke(*args):
    from click.testing import CliRunner

    from lightning_eff.cli import cli

    return CliRunner().invoke(cli, list(args))


def test_plugins_lists_the_builtin_kernel_ops_instead_of_a_dash_per_plugin():
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("built-in kernels:")]
    assert "rms_norm" in line and "fused_linear_cross_entropy" in line
    assert "kernels:    -" not in result.output
    assert "pruning  (lightning-eff " in result.output and ", built-in)" in result.output


def test_plugins_json_reports_a_misspelled_hook_naming_the_plugin(monkeypatch):
    import json

    reg = Registry()
    reg.add_plugin(fake_module("leff_typo", leff_register_technique=lambda register: None), "typo",
                   distribution="leff-typo", version="1.0")
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    report = json.loads(invoke("plugins", "--json").output)
    assert report["errors"] == [{"plugin": "typo", "message": (
        "implements unknown hook 'leff_register_technique', which is never called: "
        "did you mean 'leff_register_techniques'?")}]
    assert report["plugins"][0]["builtin"] is False and "rms_norm" in report["builtin_kernels"]
    assert "ERROR typo: implements unknown hook 'leff_register_technique'" in invoke("plugins").output


def test_info_says_which_distribution_and_module_a_technique_comes_from():
    get_registry(reload=True)
    result = invoke("info", "gradual_pruning")
    assert result.exit_code == 0, result.output
    version = md.version("lightning-eff")
    assert (
        f"  from plugin 'pruning' (distribution lightning-eff {version}, module lightning_eff.plugins.pruning)"
        in result.output.splitlines()
    )
