import inspect

import pytest
from example_techniques import HalfBatch, WeightNoise
from pydantic import ValidationError

from lightning_eff import ConfigError, Technique
from lightning_eff.registry import get_registry


def test_out_of_range_option_names_the_technique_the_key_and_the_limit():
    with pytest.raises(ConfigError, match=r"HalfBatch: keep=1.5: Input should be less than or equal to 1"):
        HalfBatch(keep=1.5)


def test_unknown_option_is_rejected_by_name():
    with pytest.raises(ConfigError, match="WeightNoise: unknown option 'sigma'"):
        Technique.__init__(WeightNoise.__new__(WeightNoise), sigma=1.0)


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="every='often'"):
        WeightNoise(every="often")


def test_two_instances_with_different_options_have_distinct_state_keys():
    assert WeightNoise(scale=0.1).state_key != WeightNoise(scale=0.2).state_key
    assert WeightNoise(scale=0.1).state_key == WeightNoise(scale=0.1).state_key


def test_a_technique_without_a_name_cannot_be_built():
    class Nameless(Technique):
        pass

    with pytest.raises(TypeError, match="must set the class attribute 'name'"):
        Nameless()


def test_unknown_phase_is_a_programming_error():
    class Odd(Technique):
        name = "odd"
        phase = "sometime"

    with pytest.raises(TypeError, match="phase='sometime' must be one of"):
        Odd()


def test_config_is_immutable():
    technique = WeightNoise()
    with pytest.raises(ValidationError, match="frozen"):
        technique.config.scale = 5.0


@pytest.mark.parametrize("name", sorted(get_registry().techniques))
def test_every_registered_technique_init_matches_its_config(name):
    """LightningCLI/Hydra build techniques from __init__; pydantic validates the Config: both must agree."""
    cls = get_registry().techniques[name]
    params = {
        p.name: p.default for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"
    }
    fields = cls.Config.model_fields
    assert set(params) == set(fields), f"{name}: __init__ {sorted(params)} vs Config {sorted(fields)}"
    for key, field in fields.items():
        if not field.is_required():
            assert params[key] == field.default, f"{name}.{key}: default {params[key]!r} vs {field.default!r}"
        assert field.description, f"{name}.{key} has no description"
    for key, p in inspect.signature(cls.__init__).parameters.items():
        if key != "self":
            assert p.annotation is not inspect.Parameter.empty, f"{name}.__init__({key}) is not typed"


def test_every_registered_technique_has_a_docstring_and_a_known_phase():
    for name, cls in get_registry().techniques.items():
        assert cls.summary(), f"{name} has no docstring"
        assert cls.phase in ("surgery", "data", "loss", "optimizer", "precision")
