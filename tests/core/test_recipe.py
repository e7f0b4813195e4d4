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
