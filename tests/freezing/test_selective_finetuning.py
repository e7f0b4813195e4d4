"""SelectiveFinetuning: presets (BitFit bias-only, norm-only), named parameters, last blocks; frozen
from step 0, exact resume, DDP, bad input."""

import pytest
import torch
from freezing_helpers import (
    STEPS_PER_EPOCH,
    AdamWClassifier,
    RecordFrozen,
    assert_frozen_weights_never_move,
    fit,
)

from lightning_eff import ConfigError
from lightning_eff.plugins.freezing import SelectiveFinetuning
from lightning_eff.plugins.freezing.selective import trained_parameter_names
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    preflight_problems,
    run_ddp,
)


def test_bias_preset_trains_only_biases_and_frozen_weights_never_move():
    recorder = RecordFrozen()
    trainer, module = fit(
        [SelectiveFinetuning(preset="bias")], steps=8, module_cls=AdamWClassifier, callbacks=[recorder]
    )
    weights = {n for n, _ in module.named_parameters() if n.endswith("weight")}
    assert all(frozen == weights for frozen in recorder.frozen)
    assert [p for g in trainer.optimizers[0].param_groups for p in g["params"]] == [
        p for n, p in module.named_parameters() if n.endswith("bias")
    ]
    assert assert_frozen_weights_never_move(recorder, module) > 0
    assert not torch.equal(recorder.weights[0]["head.bias"], recorder.weights[-1]["head.bias"])


def test_norm_preset_selects_layer_norms_of_a_transformer():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    model = transformers.BertModel(config)
    names, _ = trained_parameter_names(model, "norm", ())
    assert names and all("LayerNorm" in n for n in names)
    assert len(names) == 2 * (1 + 2 * 2)  # weight + bias of the embeddings' norm and two per layer


def test_last_blocks_and_patterns_are_unioned():
    trainer, module = fit([SelectiveFinetuning(train_last_blocks=1, train=["blocks.0.*"])], steps=2)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias", "blocks.0.0.weight", "blocks.0.0.bias"}
    (technique,) = [cb for cb in trainer.callbacks if isinstance(cb, SelectiveFinetuning)]
    assert technique.metrics()["frozen_block_fraction"] == 0.5


def make_techniques():
    return [SelectiveFinetuning(train_last_blocks=2)]


def test_resume_is_exact(tmp_path):
    assert_resume_equivalent(TinyClassifier, TinyDataModule, make_techniques, STEPS_PER_EPOCH, tmp_path)


def ddp_techniques():
    return [SelectiveFinetuning(preset="bias", train=["head.*"])]


@pytest.mark.ddp
def test_ddp_ranks_identical(tmp_path):
    states = run_ddp(
        TinyClassifier,
        TinyDataModule,
        ddp_techniques,
        max_steps=4,
        tmp_path=tmp_path,
        strategy="ddp_spawn_find_unused_parameters_true",
    )
    assert_ranks_identical(states)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"train": ["classifier.*"]},
            "train pattern 'classifier.*' matches no parameter; names look like 'blocks.0.0.weight'",
        ),
        ({}, "nothing is selected for training"),
        ({"train": ["*"]}, "trains every parameter: nothing is frozen"),
        ({"train_last_blocks": 4}, "train_last_blocks=4 keeps all 4 blocks trainable"),
    ],
)
def test_preflight_refuses_selections_that_match_nothing_everything_or_no_parameter(options, message):
    problems = preflight_problems([SelectiveFinetuning(**options)])
    assert any(message in p for p in problems), problems


def test_bad_options_fail_at_construction():
    with pytest.raises(ConfigError, match="preset='weights'"):
        SelectiveFinetuning.from_options(preset="weights")
    with pytest.raises(ConfigError, match="train_last_blocks=-1: Input should be greater than or equal to 0"):
        SelectiveFinetuning.from_options(train_last_blocks=-1)
