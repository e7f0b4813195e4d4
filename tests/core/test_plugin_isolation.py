"""A third-party plugin whose hook raises must not crash the host with a bare exception from inside
it: ``check`` and ``fit`` stop before step 0 with a :class:`PluginHookError` naming the plugin
(distribution, module, hook); a ``leff_metrics`` failing mid-run is reported once and dropped."""

import types
import warnings

import lightning.pytorch as pl
import pytest
from click.testing import CliRunner

from lightning_eff import hookimpl
from lightning_eff import registry as registry_module
from lightning_eff.cli import cli
from lightning_eff.errors import ConfigError, LightningEffError
from lightning_eff.plugins.data import RandomSubset
from lightning_eff.recipe import configure_trainer
from lightning_eff.registry import PluginHookError, Registry
from lightning_eff.testing import TinyClassifier, TinyDataModule, quiet_trainer_kwargs

ORIGIN = "plugin 'broken' (distribution leff-broken 0.0.1, module leff_broken)"


def boom(*args, **kwargs):
    raise RuntimeError("boom")


@pytest.fixture
def install(monkeypatch):
    """The built-in plugins plus a third-party module ``leff_broken`` with the given hooks."""

    def make(**hooks):
        reg = Registry()
        reg.load_entry_points()
        module = types.ModuleType("leff_broken")
        for name, fn in hooks.items():
            setattr(module, name, hookimpl(fn))
        reg.add_plugin(module, "broken", distribution="leff-broken", version="0.0.1")
        monkeypatch.setattr(registry_module, "_REGISTRY", reg)
        return reg

    return make


def fit(*techniques, steps=2, **kwargs):
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=list(techniques))
    trainer.fit(TinyClassifier(), datamodule=TinyDataModule())
    return trainer


def assert_names_the_plugin(exc, hook):
    assert isinstance(exc, PluginHookError) and isinstance(exc, LightningEffError), repr(exc)
    assert str(exc).startswith(f"{ORIGIN} failed in its hook {hook}: RuntimeError: boom (")
    assert "LIGHTNING_EFF_DISABLE_PLUGINS=broken" in str(exc)
    assert isinstance(exc.__cause__, RuntimeError)  # the plugin's traceback is kept for its author


def assert_check_names_the_plugin(result, hook):
    """`check` reports a LightningEffError as one message, without a traceback."""
    assert result.exit_code != 0
    assert f"{ORIGIN} failed in its hook {hook}: RuntimeError: boom (" in result.output, result.output
    assert "LIGHTNING_EFF_DISABLE_PLUGINS=broken" in result.output
    assert not isinstance(result.exception, RuntimeError)


def test_check_of_a_builtin_only_recipe_names_a_plugin_whose_validate_raises(install, tmp_path):
    install(leff_validate=lambda techniques, trainer_kwargs: boom())
    recipe = tmp_path / "r.yaml"
    recipe.write_text("techniques: [{name: random_subset, options: {keep: 0.5}}]\n")
    assert_check_names_the_plugin(CliRunner().invoke(cli, ["check", str(recipe)]), "leff_validate")


def test_check_names_a_plugin_whose_configure_trainer_raises(install):
    install(leff_configure_trainer=lambda trainer_kwargs, techniques: boom())
    assert_check_names_the_plugin(CliRunner().invoke(cli, ["check", "quickstart"]), "leff_configure_trainer")
    with pytest.raises(PluginHookError) as info:
        configure_trainer({}, [RandomSubset()])
    assert_names_the_plugin(info.value, "leff_configure_trainer")


def test_fit_stops_before_step_0_naming_a_plugin_whose_validate_raises(install):
    install(leff_validate=lambda techniques, trainer_kwargs: boom())
    steps = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            steps.append(trainer.global_step)

    with pytest.raises(PluginHookError) as info:
        fit(RandomSubset(), Spy())
    assert_names_the_plugin(info.value, "leff_validate")
    assert steps == []


def test_a_deliberate_config_error_from_a_plugin_passes_unchanged(install):
    def refuse(trainer_kwargs, techniques):
        raise ConfigError("set precision to bf16-mixed")

    install(leff_configure_trainer=refuse)
    with pytest.raises(ConfigError, match="^set precision to bf16-mixed$"):
        configure_trainer({}, [])


def test_a_technique_hook_that_raises_is_named_with_its_plugin(install):
    class Fragile(RandomSubset):
        @hookimpl
        def leff_validate(self, techniques, trainer_kwargs):
            raise RuntimeError("boom")

    install()
    with pytest.raises(PluginHookError, match=r"^technique 'random_subset' \(class test_plugin_isolation\..*Fragile, "
                       r"not registered by a plugin\) failed in its hook leff_validate: RuntimeError: boom"):
        fit(Fragile())


def test_working_plugin_hooks_still_run_through_the_guard(install):
    def configure(trainer_kwargs, techniques):
        trainer_kwargs["seen"] = [t.name for t in techniques]

    install(leff_configure_trainer=configure, leff_validate=lambda techniques, trainer_kwargs: ["a problem"])
    assert configure_trainer({}, [RandomSubset()]) == {"seen": ["random_subset"]}
    result = CliRunner().invoke(cli, ["check", "quickstart"])
    assert result.exit_code != 0 and "  - a problem" in result.output


def test_a_metrics_hook_failing_mid_run_is_reported_once_and_dropped(install):
    calls = []

    def flaky(trainer):
        calls.append(trainer.global_step)
        if len(calls) >= 2:
            raise RuntimeError("boom")
        return {"flaky": 1.0}

    install(leff_metrics=flaky)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(RandomSubset(), steps=6, log_every_n_steps=1)
    assert trainer.global_step == 6  # the run went on
    reported = [str(w.message) for w in caught if "leff_metrics" in str(w.message)]
    assert len(reported) == 1, reported
    assert reported[0].startswith(f"{ORIGIN} failed in its hook leff_metrics at step ")
    assert "training goes on without its metrics" in reported[0]
    assert len(calls) == 2  # not asked again after it failed
    hub = next(cb for cb in trainer.callbacks if type(cb).__name__ == "EfficiencyHub")
    assert "efficiency/flaky" not in hub.last_metrics and "efficiency/random_subset/kept_fraction" in hub.last_metrics
