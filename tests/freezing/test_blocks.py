"""Blocks in forward order: found automatically in transformers models, Sequential stacks and CNNs,
or named by patterns; shared parameters freeze only with every block that holds them."""

import pytest
import torch
from torch import nn

from lightning_eff.plugins.freezing.blocks import block_problems, find_blocks
from lightning_eff.plugins.freezing.freezer import BlockFreezer, freeze_parameters
from lightning_eff.testing import TinyClassifier


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(config)


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


class PlainCNN(nn.Module):
    """No container at all: attributes registered in forward order."""

    def __init__(self):
        super().__init__()
        self.conv1, self.act = nn.Conv2d(1, 4, 3), nn.ReLU()
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(8, 10)


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner


def test_transformers_llama_blocks_are_embedding_layers_norm_head():
    assert find_blocks(tiny_llama()).names == (
        "model.embed_tokens",
        "model.layers.0",
        "model.layers.1",
        "model.layers.2",
        "model.norm",
        "lm_head",
    )


def test_transformers_bert_blocks_are_embeddings_encoder_layers_pooler_classifier():
    assert find_blocks(tiny_bert()).names == (
        "bert.embeddings",
        "bert.encoder.layer.0",
        "bert.encoder.layer.1",
        "bert.pooler",
        "classifier",
    )


def test_sequential_stack_blocks_skip_modules_without_parameters():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert find_blocks(model).names == ("0", "2", "4")
    assert find_blocks(TinyClassifier()).names == ("blocks.0", "blocks.1", "blocks.2", "head")


def test_a_nested_stack_holding_most_parameters_is_expanded():
    model = nn.Sequential(
        nn.Linear(2, 2), nn.Sequential(*(nn.Linear(20, 20) for _ in range(3))), nn.Linear(2, 2)
    )
    assert find_blocks(model).names == ("0", "1.0", "1.1", "1.2", "2")


def test_cnn_without_containers_uses_children_in_registration_order_through_wrappers():
    assert find_blocks(Wrapper(PlainCNN())).names == ("inner.conv1", "inner.conv2", "inner.fc")


def test_patterns_name_the_outermost_matching_modules_in_pattern_order():
    model = tiny_llama()
    blocks = find_blocks(model, ["model.layers.*", "lm_head"])  # the order given is the freezing order
    assert blocks.names == ("model.layers.0", "model.layers.1", "model.layers.2", "lm_head")
    assert find_blocks(model, ["lm_head", "model.layers.*"]).names[0] == "lm_head"
    assert blocks.unmatched == ()


def test_a_pattern_matching_nothing_is_a_problem_naming_real_block_names():
    model = TinyClassifier()
    problems = block_problems(model, find_blocks(model, ["layers.*", "head"]))
    assert len(problems) == 1
    assert "'layers.*' matches no module" in problems[0] and "'blocks.0'" in problems[0]


def test_a_single_block_is_a_problem_that_names_the_blocks_option():
    model = Wrapper(nn.Linear(3, 3))
    problems = block_problems(model, find_blocks(model))
    assert problems and "need at least 2" in problems[0] and "`blocks` option" in problems[0]


def test_tied_weight_is_frozen_only_when_every_block_holding_it_is():
    model = tiny_llama()
    freezer = BlockFreezer(model, find_blocks(model))
    embedding = model.model.embed_tokens.weight
    assert embedding is model.lm_head.weight
    freezer.freeze_prefix(1, optimizers=[])
    assert embedding.requires_grad, "freezing the embedding block must not freeze the tied head"
    freezer.freeze_prefix(len(freezer), optimizers=[])
    assert not embedding.requires_grad


def test_freezing_leaves_param_groups_and_drops_only_the_frozen_state():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    optimizer = torch.optim.SGD(
        [
            {"params": [model[0].weight, model[1].weight]},
            {"params": [model[0].bias, model[1].bias], "weight_decay": 0},
        ],
        lr=0.1,
        momentum=0.9,
    )
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    freeze_parameters(model[0].parameters(), [optimizer])
    assert [g["params"] for g in optimizer.param_groups] == [[model[1].weight], [model[1].bias]]
    assert set(optimizer.state) == {model[1].weight, model[1].bias}
    assert not model[0].weight.requires_grad and model[0].weight.grad is None
    # the structure is what a later optimizer.load_state_dict (Lightning's resume) must find
    assert len(optimizer.param_groups) == 2


def test_frozen_fractions_count_parameters_and_blocks():
    model = TinyClassifier(features=4, hidden=8, classes=2, depth=3)
    freezer = BlockFreezer(model, find_blocks(model))
    freezer.freeze_prefix(2, optimizers=[])
    metrics = freezer.metrics()
    frozen = sum(p.numel() for p in model.blocks[:2].parameters())
    assert metrics["frozen_param_fraction"] == pytest.approx(
        frozen / sum(p.numel() for p in model.parameters())
    )
    assert metrics["frozen_block_fraction"] == 0.5 and metrics["frozen_prefix_blocks"] == 2
