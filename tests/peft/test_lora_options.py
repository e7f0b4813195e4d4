"""LoRA's options and the pure functions that pick targets and trainable parameters."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_eff.errors import ConfigError
from lightning_eff.plugins.peft import LoRA
from lightning_eff.plugins.peft.composition import conflict_reasons
from lightning_eff.plugins.peft.targets import (
    frozen_base,
    is_adapter_name,
    kept_trainable,
    lora_targets,
    target_problems,
)
from lightning_eff.testing import TinyClassifier


def test_defaults_put_rank_8_adapters_on_every_linear_layer():
    c = LoRA().config
    assert (c.r, c.alpha, c.dropout, c.targets, c.rslora, c.dora, c.merge_at_end) == (8, 16.0, 0.0, ("*",), False, False, False)


@pytest.mark.parametrize(
    "options, key",
    [({"r": 0}, "r="), ({"dropout": 1.0}, "dropout="), ({"alpha": 0}, "alpha="), ({"r": True}, "r=")],
)
def test_bad_options_are_refused_when_built(options, key):
    with pytest.raises(ConfigError, match=key):
        LoRA(**options)


def test_an_unknown_option_in_a_recipe_names_the_close_one():
    with pytest.raises(ConfigError, match="unknown option 'rank'"):
        LoRA.from_options(rank=4)


def test_a_single_target_string_is_one_pattern():
    assert LoRA(targets="blocks.*").config.targets == ("blocks.*",)


def test_targets_are_linear_layers_matched_by_glob_or_regex_minus_excluded():
    model = TinyClassifier()
    assert [n for n, _ in lora_targets(model, ["*"])] == ["blocks.0.0", "blocks.1.0", "blocks.2.0", "head"]
    assert [n for n, _ in lora_targets(model, ["re:blocks\\.[01]\\.0"])] == ["blocks.0.0", "blocks.1.0"]
    assert [n for n, _ in lora_targets(model, ["*"], exclude=["head"])] == ["blocks.0.0", "blocks.1.0", "blocks.2.0"]


def test_multihead_attention_out_proj_is_never_a_target():
    model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 8))
    assert [n for n, _ in lora_targets(model, ["*"])] == ["1"]


def test_each_target_pattern_that_matches_nothing_is_named_with_real_names():
    problems = target_problems(TinyClassifier(), ["blocks.*", "layers.*"])
    assert len(problems) == 1
    assert "'layers.*'" in problems[0] and "'blocks.0.0' (Linear)" in problems[0]


def test_kept_trainable_reports_globs_that_match_no_parameter():
    names, unmatched = kept_trainable(TinyClassifier(), ["head.*", "classifier.*"])
    assert names == {"head.weight", "head.bias"} and unmatched == ("classifier.*",)


def test_frozen_base_is_every_parameter_but_adapters_and_kept_ones():
    model = TinyClassifier()
    frozen = frozen_base(model, {"head.weight", "head.bias"})
    assert len(frozen) == 6 and all(p is not model.head.weight for p in frozen)


def test_adapter_names_are_recognised_by_peft_prefix():
    assert is_adapter_name("blocks.0.0.lora_A.default.weight")
    assert is_adapter_name("x.lora_magnitude_vector.default.weight")
    assert not is_adapter_name("blocks.0.0.base_layer.weight")


def test_conflict_reasons_name_the_alternative():
    reasons = conflict_reasons(["mixed_precision", "selective_finetuning", "gradual_pruning"])
    assert len(reasons) == 2
    assert "train=['classifier.*']" in reasons[0]
    assert "second run" in reasons[1]
