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


# --- rules every technique's options follow (TechniqueConfig and lightning_eff.config_types) ------


def _registered(name):
    return get_registry().techniques[name]


@pytest.mark.parametrize(
    "name, key",
    [
        ("moe_upcycling", "load_balancing_coef"),
        ("moe_upcycling", "z_loss_coef"),
        ("moe_upcycling", "router_init_std"),
        ("moe_upcycling", "capacity_factor"),
        ("nm_sparsity", "decay"),
        ("loss_threshold_skip", "threshold"),
        ("adaptive_freezing", "percentile"),
    ],
)
@pytest.mark.parametrize("value", [float("inf"), float("nan"), "nan", ".inf"])
def test_non_finite_numbers_are_refused_for_every_technique(name, key, value):
    if value == ".inf":  # what YAML's .inf becomes
        value = float("inf")
    with pytest.raises(ConfigError, match=rf"{key}=.*finite number"):
        _registered(name)(**{key: value})


@pytest.mark.parametrize(
    "name, key", [("gradual_pruning", "final_sparsity"), ("moe_upcycling", "num_experts"), ("info_batch", "seed"),
                  ("moe_upcycling", "capacity_factor")]
)
def test_a_bool_is_not_read_as_a_number(name, key):
    with pytest.raises(ConfigError, match=rf"{key}=True: got true, a bool; this option is not a bool"):
        _registered(name)(**{key: True})


def test_bool_options_still_take_bools():
    assert _registered("moe_upcycling")(shared_expert=True).config.shared_expert is True
    assert _registered("gradual_pruning")(make_permanent=False).config.make_permanent is False


@pytest.mark.parametrize(
    "name, key",
    [("gradual_pruning", "exclude_names"), ("nm_sparsity", "include_types"), ("progressive_freezing", "blocks"),
     ("selective_finetuning", "train"), ("mixed_precision", "fp32_modules"), ("moe_upcycling", "include_names"),
     ("structured_pruning", "include_names"), ("float8_training", "exclude_names")],
)
def test_a_single_string_is_one_pattern_not_its_characters(name, key):
    assert getattr(_registered(name)(**{key: "head"}).config, key) == ("head",)
    with pytest.raises(ConfigError, match=rf"{key}=None: expected a list of patterns, got None; write \[\]"):
        _registered(name)(**{key: None})
    with pytest.raises(ConfigError, match=rf"{key}=.*expected a list of patterns \(strings\), got a dict"):
        _registered(name)(**{key: {"a": 1}})


@pytest.mark.parametrize("name", ["moe_upcycling", "low_precision_optimizer_states", "info_batch", "random_subset"])
def test_a_seed_must_fit_64_bits(name):
    assert _registered(name)(seed=2**63 - 1).config.seed == 2**63 - 1
    with pytest.raises(ConfigError, match="seed=.*less than or equal to 9223372036854775807"):
        _registered(name)(seed=2**64)
    with pytest.raises(ConfigError, match="seed=-1: Input should be greater than or equal to 0"):
        _registered(name)(seed=-1)


def test_huge_sizes_are_refused_by_an_upper_bound_instead_of_hanging():
    moe = _registered("moe_upcycling")
    with pytest.raises(ConfigError, match="num_experts=1000000000: Input should be less than or equal to 1024"):
        moe(num_experts=1_000_000_000)
    with pytest.raises(ConfigError, match="capacity_factor=1e.*less than or equal to 1024"):
        moe(capacity_factor=1e300)


def test_error_messages_echo_a_bounded_part_of_the_value():
    with pytest.raises(ConfigError) as info:
        HalfBatch(keep="x" * 1_000_000)
    assert len(str(info.value)) < 300 and "..." in str(info.value)
    with pytest.raises(ConfigError) as info:
        HalfBatch(keep=[list(range(1000))] * 1000)
    assert len(str(info.value)) < 300


def test_an_unknown_option_gets_the_closest_name():
    with pytest.raises(ConfigError, match=r"GradualPruning: unknown option 'final_sparsty' \(did you mean 'final_sparsity'\?\)"):
        _registered("gradual_pruning").from_options(final_sparsty=0.5)
