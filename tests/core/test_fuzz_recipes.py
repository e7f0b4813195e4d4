"""Property test (issue 15): whatever a recipe holds, ``load_recipe`` + ``validate`` either succeed or
raise :class:`ConfigError`, never another exception, and the error stays short. Bounded so that the
whole file runs in a few seconds."""

import math
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_eff import ConfigError
from lightning_eff.recipe import MAX_ERROR_LINES, load_recipe
from lightning_eff.registry import get_registry

NAMES = sorted(get_registry().techniques)
OPTION_NAMES = sorted({k for cls in get_registry().techniques.values() for k in cls.Config.model_fields})
TRAINER_NAMES = ["max_steps", "accumulate_grad_batches", "max_epochs", "precision", "max_stepz", "log_every_n_steps"]

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**62, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.5, 1.5, 1e308, -0.0, math.inf, -math.inf, math.nan]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12), st.sampled_from(NAMES + OPTION_NAMES))
keys = st.one_of(st.sampled_from(OPTION_NAMES + ["name", "options", "class_path", "init_args"]), st.text(max_size=8),
                 st.integers(), st.booleans())
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
options = st.dictionaries(st.one_of(st.sampled_from(OPTION_NAMES), keys), st.one_of(leaves, values), max_size=4)
entries = st.one_of(
    st.fixed_dictionaries({"name": st.one_of(st.sampled_from(NAMES), st.text(max_size=20))}, optional={"options": options}),
    st.fixed_dictionaries(
        {"class_path": st.sampled_from([
            "lightning.pytorch.callbacks.ModelPruning", "lightning_eff.Technique", "tempfile:mkdtemp", "os.system",
            "collections.OrderedDict", "..", "lightning.pytorch.callbacks.EarlyStopping", "nope.Nope",
        ])},
        optional={"init_args": st.dictionaries(st.sampled_from(["pruning_fn", "amount", "monitor", "x"]), leaves, max_size=3)},
    ),
    values,
)
recipes = st.one_of(
    st.fixed_dictionaries(
        {"techniques": st.lists(entries, max_size=3)},
        optional={
            "trainer": st.one_of(st.dictionaries(st.sampled_from(TRAINER_NAMES), leaves, max_size=3), values),
            "description": leaves,
            "extra": values,
        },
    ),
    values,
)


def assert_bounded(message: str) -> None:
    lines = message.splitlines()
    assert len(lines) <= MAX_ERROR_LINES + 1, f"{len(lines)} lines"
    assert all(len(line) < 1200 for line in lines), max(len(line) for line in lines)


def load_and_validate(source):
    try:
        recipe = load_recipe(source)
        problems = recipe.validate()
    except ConfigError as exc:
        assert_bounded(str(exc))
        return
    assert all(len(p) < 1200 for p in problems)


FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(recipes)
def test_any_mapping_is_accepted_or_a_config_error(data):
    load_and_validate(data)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    recipes.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["a: &a [1]\nb: *a\n", "techniques: [{name: x}]\ntechniques: []\n", "!!python/object:os.system {}",
                     "techniques: [" * 50, "{? [1]: 2}", "techniques: !!set {a, b}"]),
))
def test_any_yaml_text_is_accepted_or_a_config_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        load_and_validate(path)
