"""Training through the command line with the recipe, and the recipe's promise of exact resume."""

from functools import partial
from pathlib import Path

from lightning_eff import Technique
from lightning_eff.recipe import load_recipe
from lightning_eff.testing import assert_resume_equivalent

from {{ cookiecutter.package_name }}.data import DigitsDataModule
from {{ cookiecutter.package_name }}.model import DigitsClassifier
from {{ cookiecutter.package_name }}.train import cli_main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipe.yaml"


def test_recipe_is_valid():
    assert load_recipe(RECIPE).validate() == []


def test_cli_fits_with_the_recipe_techniques(tmp_path):
    args = [
        "fit", "--config", str(ROOT / "config.yaml"), "--recipe", str(RECIPE),
        "--trainer.max_steps=6", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.limit_val_batches=0",
    ]
    cli = cli_main(args)
    assert cli.trainer.global_step == 6
    active = sorted(cb.name for cb in cli.trainer.callbacks if isinstance(cb, Technique))
    assert active == sorted(entry.cls.name for entry in load_recipe(RECIPE).entries)


def test_cli_trains_the_baseline_with_recipe_none(tmp_path):
    args = [
        "fit", "--config", str(ROOT / "config.yaml"), "--recipe", "none",
        "--trainer.max_steps=2", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.limit_val_batches=0",
    ]
    cli = cli_main(args)
    assert not [cb for cb in cli.trainer.callbacks if isinstance(cb, Technique)]


def test_training_with_the_recipe_resumes_exactly(tmp_path):
    # Large batches keep the test short; the checkpoint falls at an epoch boundary because an
    # ordinary DataLoader restarts its epoch when a run resumes.
    make_data = partial(DigitsDataModule, batch_size=256)
    make_model = partial(DigitsClassifier, hidden=32)
    half = make_data().steps_per_epoch
    assert_resume_equivalent(make_model, make_data, lambda: load_recipe(RECIPE).build(), half_steps=half, tmp_path=tmp_path)
