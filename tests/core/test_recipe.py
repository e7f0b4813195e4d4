import textwrap

import example_techniques as ex
import pytest

from lightning_eff import ConfigError
from lightning_eff.recipe import load_recipe


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path):
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    return str(info.value)


def test_a_valid_recipe_builds_fresh_techniques_each_time(tmp_path, example_registry):
    recipe = load_recipe(write(tmp_path, """
        description: noise and half batches
        techniques:
          - name: weight_noise
            options: {scale: 0.5, every: 3}
          - name: half_batch
        trainer: {log_every_n_steps: 7}
        """))
    first, second = recipe.build(), recipe.build()
    assert [type(t) for t in first] == [ex.WeightNoise, ex.HalfBatch]
    assert first[0].config.scale == 0.5 and first[0].config.every == 3
    assert first[0] is not second[0]
    assert recipe.trainer_kwargs(first, base={"max_steps": 5}) == {"max_steps": 5, "log_every_n_steps": 7}
    assert recipe.description == "noise and half batches"


def test_unknown_technique_lists_the_installed_ones(tmp_path, example_registry):
    message = error_of(write(tmp_path, "techniques: [{name: weight_nosie}]"))
    assert "techniques[0]: unknown technique 'weight_nosie'" in message
    assert "Installed techniques: constant_aux, half_batch, other_selector, weight_noise" in message


def test_unknown_option_points_at_the_key(tmp_path, example_registry):
    message = error_of(write(tmp_path, "techniques: [{name: weight_noise, options: {sigma: 1}}]"))
    assert message.endswith("techniques[0].options: WeightNoise: unknown option 'sigma'")


def test_wrong_type_points_at_the_key(tmp_path, example_registry):
    message = error_of(write(tmp_path, "techniques: [{name: weight_noise, options: {every: often}}]"))
    assert "techniques[0].options: WeightNoise: every='often': Input should be a valid integer" in message


def test_out_of_range_value_says_the_limit(tmp_path, example_registry):
    message = error_of(write(tmp_path, "techniques: [{name: half_batch, options: {keep: 1.5}}]"))
    assert "techniques[0].options: HalfBatch: keep=1.5: Input should be less than or equal to 1" in message


def test_every_error_in_a_recipe_is_reported_at_once(tmp_path, example_registry):
    message = error_of(write(tmp_path, """
        techniques:
          - {name: half_batch, options: {keep: 0}}
          - {name: nope}
        extra: 1
        """))
    assert len(message.splitlines()) == 3
    assert "unknown top-level key 'extra'" in message


def test_unknown_entry_key_and_missing_name(tmp_path, example_registry):
    assert "unknown key(s) ['option']" in error_of(write(tmp_path, "techniques: [{name: half_batch, option: {}}]"))
    assert "give exactly one of 'name'" in error_of(write(tmp_path, "techniques: [{options: {}}]"))


def test_invalid_yaml_and_unknown_recipe_name(tmp_path, example_registry):
    assert "not valid YAML" in error_of(write(tmp_path, "techniques: [\n"))
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe"):
        load_recipe("no_such_recipe")


def test_class_path_entries_build_any_technique(tmp_path, example_registry):
    recipe = load_recipe(write(tmp_path, """
        techniques:
          - class_path: example_techniques.WeightNoise
            init_args: {scale: 0.25}
        """))
    (technique,) = recipe.build()
    assert isinstance(technique, ex.WeightNoise) and technique.config.scale == 0.25
    message = error_of(write(tmp_path, "techniques: [{class_path: collections.OrderedDict}]"))
    assert "is not a lightning_eff.Technique" in message


def test_recipe_validate_reports_conflicts_without_a_trainer(tmp_path, example_registry):
    recipe = load_recipe(write(tmp_path, "techniques: [{name: weight_noise}, {name: weight_noise}]"))
    assert any("added twice" in p for p in recipe.validate())


def test_lightning_cli_builds_techniques_from_class_path(tmp_path):
    """Techniques are ordinary typed callbacks: LightningCLI instantiates them from its config."""
    from lightning.pytorch.cli import LightningCLI

    from lightning_eff.testing import TinyClassifier, TinyDataModule

    config = write(tmp_path, """
        trainer:
          max_steps: 2
          logger: false
          enable_checkpointing: false
          enable_progress_bar: false
          callbacks:
            - class_path: example_techniques.WeightNoise
              init_args: {scale: 0.125, every: 1}
        """)
    cli = LightningCLI(TinyClassifier, TinyDataModule, run=False, args=["--config", str(config)], save_config_callback=None)
    (technique,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, ex.WeightNoise)]
    assert technique.config.scale == 0.125
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert technique.applied == 2


def test_hydra_instantiate_builds_a_technique():
    from hydra.utils import instantiate

    technique = instantiate({"_target_": "example_techniques.HalfBatch", "keep": 0.75})
    assert isinstance(technique, ex.HalfBatch) and technique.config.keep == 0.75
    with pytest.raises(Exception, match="keep=2"):
        instantiate({"_target_": "example_techniques.HalfBatch", "keep": 2})


def test_class_path_may_name_a_lightning_callback_with_init_args(tmp_path, example_registry):
    """Issue 14 item 6: one recipe compares ours with Lightning's own (the bench passes build() to the Trainer)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import BackboneFinetuning, ModelPruning

    from lightning_eff.testing import TinyClassifier, TinyDataModule

    recipe = load_recipe(write(tmp_path, """
        techniques:
          - class_path: lightning.pytorch.callbacks.ModelPruning
            init_args: {pruning_fn: l1_unstructured, amount: 0.3}
          - class_path: lightning.pytorch.callbacks.BackboneFinetuning
            init_args: {unfreeze_backbone_at_epoch: 2}
          - name: weight_noise
        trainer: {max_steps: 2}
        """))
    assert recipe.validate() == []
    pruning, finetuning, noise = recipe.build()
    assert isinstance(pruning, ModelPruning) and pruning.amount == 0.3
    assert isinstance(finetuning, BackboneFinetuning) and finetuning.unfreeze_backbone_at_epoch == 2
    assert isinstance(noise, ex.WeightNoise)
    assert recipe.build()[0] is not pruning
    kwargs = recipe.trainer_kwargs(recipe.build(), base={"logger": False})
    callbacks = [c for c in recipe.build() if not isinstance(c, BackboneFinetuning)]  # needs a .backbone
    trainer = pl.Trainer(**kwargs, callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(TinyClassifier(), datamodule=TinyDataModule())
    assert trainer.global_step == 2


def test_lightning_callback_init_args_are_checked(tmp_path, example_registry):
    message = error_of(write(tmp_path, """
        techniques:
          - class_path: lightning.pytorch.callbacks.ModelPruning
            init_args: {pruning_fn: l1_unstructured, amont: 0.3}
        """))
    assert "techniques[0].init_args: ModelPruning: unknown init_arg 'amont' (did you mean 'amount'?)" in message
    message = error_of(write(tmp_path, "techniques: [{class_path: lightning.pytorch.callbacks.ModelPruning}]"))
    assert "missing required init_arg(s) pruning_fn" in message
    message = error_of(write(tmp_path, """
        techniques:
          - class_path: lightning.pytorch.callbacks.ModelPruning
            init_args: {pruning_fn: no_such_fn}
        """))
    assert "techniques[0].init_args: ModelPruning: init_args {'pruning_fn': 'no_such_fn'} were refused" in message
    message = error_of(write(tmp_path, "techniques: [{name: weight_noise, options: {}, init_args: {}}]"))
    assert "give 'options' or 'init_args', not both" in message


def test_check_lists_lightning_callbacks_after_the_plan(tmp_path, example_registry):
    from click.testing import CliRunner

    from lightning_eff.cli import cli

    path = write(tmp_path, """
        techniques:
          - {name: half_batch}
          - class_path: lightning.pytorch.callbacks.ModelPruning
            init_args: {pruning_fn: l1_unstructured, amount: 0.3}
        """)
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "OK, 1 technique(s)" in result.output and "plus 1 Lightning callback(s): ModelPruning" in result.output
