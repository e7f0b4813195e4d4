"""Configuration and metric hooks, and the rule that every hook is documented and tested."""

import re
import types
from pathlib import Path

import example_techniques as ex
import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger

from lightning_eff import hookimpl, hookspecs
from lightning_eff.recipe import load_recipe
from lightning_eff.testing import TinyClassifier, TinyDataModule, quiet_trainer_kwargs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("leff_"))


def test_leff_configure_trainer_lets_a_technique_set_trainer_arguments(example_registry):
    recipe = load_recipe({"techniques": [{"class_path": "example_techniques.TrainerTuner"}]})
    techniques = recipe.build()
    assert recipe.trainer_kwargs(techniques, base={"max_steps": 3}) == {"max_steps": 3, "gradient_clip_val": 1.0}


def test_leff_validate_errors_reach_the_recipe_check(example_registry):
    recipe = load_recipe(
        {"techniques": [{"class_path": "example_techniques.TrainerTuner"}], "trainer": {"accumulate_grad_batches": 2}}
    )
    assert recipe.validate() == ["trainer_tuner: set accumulate_grad_batches to 1"]


def test_leff_metrics_from_a_plugin_module_are_logged(tmp_path, example_registry):
    calls = []

    def leff_metrics(trainer):
        calls.append(trainer.global_step)
        return {"custom/steps_seen": float(trainer.global_step)}

    example_registry.add_plugin(types.SimpleNamespace(leff_metrics=hookimpl(leff_metrics)), "metrics-plugin")
    logger = CSVLogger(tmp_path, name="m")
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=4, logger=logger, log_every_n_steps=2), callbacks=[ex.WeightNoise()])
    trainer.fit(TinyClassifier(), datamodule=TinyDataModule())
    assert calls and calls[-1] == 4
    assert "efficiency/custom/steps_seen" in (tmp_path / "m" / "version_0" / "metrics.csv").read_text()


def test_every_hookspec_has_a_docstring_saying_when_it_is_called():
    for name in HOOKS:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Called" in doc, f"{name}'s docstring must say when it is called"


def test_every_hookspec_is_documented_in_the_hook_reference():
    reference = (ROOT / "docs" / "hooks.md").read_text()
    documented = set(re.findall(r"^## `(leff_\w+)", reference, flags=re.M))
    assert documented == set(HOOKS)


def test_every_hookspec_is_exercised_by_a_test():
    """A hook name must appear in a test or in the example techniques the tests use."""
    sources = [*(ROOT / "tests").rglob("test_*.py"), ROOT / "tests" / "core" / "example_techniques.py"]
    text = "\n".join(p.read_text() for p in sources if p != Path(__file__))
    text += "\n".join(f.__name__ for f in (test_leff_configure_trainer_lets_a_technique_set_trainer_arguments,
                                            test_leff_validate_errors_reach_the_recipe_check,
                                            test_leff_metrics_from_a_plugin_module_are_logged))
    untested = [name for name in HOOKS if name not in text]
    assert not untested, f"hooks without a test: {untested}"


def test_leff_validate_of_a_technique_also_runs_in_preflight(example_registry):
    from lightning_eff.testing import preflight_problems

    assert preflight_problems([ex.TrainerTuner()], accumulate_grad_batches=2) == [
        "trainer_tuner: set accumulate_grad_batches to 1"
    ]
