"""StructuredPruning: finding units, exact shrinking, gradual training, resume, DDP, bad input."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_eff import ConfigError
from lightning_eff.plugins.pruning import StructuredPruning
from lightning_eff.plugins.pruning.structure import (
    find_groups,
    magnitude_importance,
    mask_group,
    shrink_group,
)
from lightning_eff.recipe import load_recipe
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    preflight_problems,
    quiet_trainer_kwargs,
    run_ddp,
)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def tiny_llama():
    import transformers  # imported here: DDP workers import this module and need no transformers

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_bert():
    import transformers

    config = transformers.BertConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def random_keep(group, seed):
    keep = torch.rand(group.units, generator=torch.Generator().manual_seed(seed)) > 0.5
    keep[0] = True
    return keep


def masked_then_shrunk(model, kind, inputs):
    modules, groups = dict(model.named_modules()), find_groups(model, kind)
    keeps = [random_keep(g, i) for i, g in enumerate(groups)]
    for g, keep in zip(groups, keeps):
        mask_group(modules, g, keep)
    with torch.no_grad():
        masked = model(inputs)
    for g, keep in zip(groups, keeps):
        shrink_group(modules, g, keep)
    with torch.no_grad():
        shrunk = model(inputs)
    return groups, keeps, masked, shrunk


def test_finds_conv_channels_through_batchnorm_pooling_and_flatten():
    groups = {g.name: g for g in find_groups(SmallCNN(), "channels")}
    assert list(groups) == ["conv1", "conv2"]
    assert {(s.module, s.tensor) for s in groups["conv1"].producers} >= {("bn1", "weight"), ("bn1", "running_var")}
    assert [(s.module, s.dim, s.repeat) for s in groups["conv2"].consumers] == [("fc", 1, 16)]


def test_shrinking_a_cnn_computes_what_the_masked_cnn_computed():
    model = SmallCNN()
    model.bn1.running_mean.uniform_(-1, 1)  # non-trivial statistics make a BatchNorm mistake visible
    model.eval()
    _, keeps, masked, shrunk = masked_then_shrunk(model, "channels", torch.randn(2, 3, 8, 8))
    torch.testing.assert_close(shrunk, masked, rtol=1e-5, atol=1e-6)
    assert model.conv2.in_channels == int(keeps[0].sum()) == model.bn1.num_features
    assert model.fc.in_features == 16 * int(keeps[1].sum())


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_bert], ids=["llama", "bert"])
def test_shrinking_transformer_ffns_preserves_outputs(make_model):
    model = make_model()
    groups, keeps, masked, shrunk = masked_then_shrunk(model, "ffn", torch.randint(0, 64, (2, 10)))
    assert groups[0].name in ("model.layers.0.mlp", "encoder.layer.0")
    torch.testing.assert_close(shrunk[0], masked[0], rtol=1e-5, atol=1e-5)
    widths = [m.out_features for n, m in model.named_modules() if n.endswith(("up_proj", "intermediate.dense"))]
    assert widths == [int(k.sum()) for k in keeps] and widths != [48, 48]


def fit(technique, steps=24, module=None, data=None):
    pl.seed_everything(0)
    module = module or TinyClassifier()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps), callbacks=[technique])
    trainer.fit(module, datamodule=data or TinyDataModule())
    return trainer, module


def test_gradual_training_removes_half_the_neurons_and_shrinks_the_mlp():
    technique = StructuredPruning(final_sparsity=0.5, start=2, end=12, update_every=2)
    _, module = fit(technique)
    assert [b[0].out_features for b in module.blocks] == [16, 16, 16]
    assert module.blocks[1][0].in_features == 16 and module.head.in_features == 16
    metrics = technique.metrics()
    assert metrics["params_after"] == sum(p.numel() for p in module.parameters()) < metrics["params_before"]
    assert module(torch.randn(5, 16)).shape == (5, 4)


class ZeroSpy(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, *args):
        technique = trainer.callbacks[0]
        keep = technique.keep.get("blocks.0.0")
        if keep is not None and (~keep).any():
            dropped = ~keep
            self.worst = max(getattr(self, "worst", 0.0), pl_module.blocks[0][0].weight[dropped].abs().max().item(),
                             pl_module.blocks[1][0].weight[:, dropped].abs().max().item())


def test_pruned_units_stay_zero_during_training():
    spy = ZeroSpy()
    technique = StructuredPruning(final_sparsity=0.5, start=2, end=10, update_every=2, make_permanent=False)
    pl.seed_everything(0)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=16), callbacks=[technique, spy])
    trainer.fit(TinyClassifier(), datamodule=TinyDataModule())
    assert spy.worst == 0.0
    assert technique.metrics()["sparsity"] == 0.5


def test_taylor_and_magnitude_pick_different_units():
    kept = {}
    for importance in ("magnitude", "taylor"):
        technique = StructuredPruning(final_sparsity=0.5, start=4, end=4, importance=importance, make_permanent=False)
        fit(technique, steps=6)
        kept[importance] = technique.keep["blocks.1.0"]
    assert kept["magnitude"].sum() == kept["taylor"].sum() == 16
    assert not torch.equal(kept["magnitude"], kept["taylor"])


def test_magnitude_importance_is_the_norm_of_a_units_rows_and_columns():
    model = TinyClassifier()
    group = next(g for g in find_groups(model, "ffn") if g.name == "blocks.0.0")
    w, b, nxt = model.blocks[0][0].weight, model.blocks[0][0].bias, model.blocks[1][0].weight
    expected = (w.pow(2).sum(1) + b.pow(2) + nxt.pow(2).sum(0)).sqrt()
    torch.testing.assert_close(magnitude_importance(dict(model.named_modules()), group), expected.detach())


# --- resume and DDP -------------------------------------------------------------------------------


def structured_pruning_techniques():
    return [StructuredPruning(final_sparsity=0.5, start=2, end=13, update_every=3, importance="taylor")]


def test_resume_is_exact(tmp_path):
    states = assert_resume_equivalent(TinyClassifier, TinyDataModule, structured_pruning_techniques, half_steps=8,
                                      tmp_path=tmp_path)
    (state,) = states.values()
    assert all(int(k.sum()) == 16 for k in state["keep"].values())


def structured_pruning_ddp_techniques():
    # ddp_spawn copies weights back into the unshrunk model of the main process: no shrink under it
    return [StructuredPruning(final_sparsity=0.5, start=1, end=5, update_every=2, importance="taylor", make_permanent=False)]


@pytest.mark.ddp
def test_ddp_ranks_prune_the_same_units(tmp_path):
    states = run_ddp(TinyClassifier, TinyDataModule, structured_pruning_ddp_techniques, max_steps=6, tmp_path=tmp_path)
    assert_ranks_identical(states)
    (state,) = states[0]["techniques"].values()
    assert all(int(k.sum()) == 16 for k in state["keep"].values())
    dropped = ~state["keep"]["blocks.0.0"]
    assert (states[0]["weights"]["blocks.0.0.weight"][dropped] == 0).all()


def test_preflight_refuses_to_shrink_under_a_spawn_strategy():
    trainer = pl.Trainer(**quiet_trainer_kwargs(strategy="ddp_spawn", devices=2))
    (problem,) = StructuredPruning().strategy_problems(trainer)
    assert "make_permanent=True cannot shrink under ddp_spawn" in problem
    assert StructuredPruning(make_permanent=False).strategy_problems(trainer) == []
    assert StructuredPruning().strategy_problems(pl.Trainer(**quiet_trainer_kwargs())) == []


# --- bad input ------------------------------------------------------------------------------------


def test_bad_options_fail_at_construction():
    with pytest.raises(ConfigError, match="final_sparsity=1.0: Input should be less than 1"):
        StructuredPruning(final_sparsity=1.0)
    with pytest.raises(ConfigError, match="start=0.8 is after end=0.2"):
        StructuredPruning(start=0.8, end=0.2)
    with pytest.raises(ConfigError, match="importance='random'"):
        StructuredPruning.from_options(importance="random")


def test_preflight_reports_a_model_without_channels_and_patterns_matching_nothing():
    problems = preflight_problems([StructuredPruning(kind="channels")])
    assert problems == [(
        "structured_pruning: kind='channels' finds nothing to prune in TinyClassifier: it needs a Conv "
        "whose output reaches exactly one Conv/Linear through activations, BatchNorm, pooling or flatten"
    )]
    problems = preflight_problems([StructuredPruning(include_names=["layers.*"], start=0, end=1)])
    assert any("include_names pattern 'layers.*' matches no ffn group; groups are named like 'blocks.0.0'" in p
               for p in problems)


def test_shipped_recipe_removes_half_the_ffn_neurons():
    (technique,) = load_recipe("structured_pruning").build()
    assert technique.config.kind == "ffn" and technique.config.final_sparsity == 0.5


class TinyLlamaLM(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = tiny_llama().train()

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        return self.model(input_ids=tokens, labels=tokens).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def test_trains_and_shrinks_a_transformers_llama():
    from torch.utils.data import DataLoader, TensorDataset

    tokens = torch.randint(0, 64, (32, 12), generator=torch.Generator().manual_seed(0))
    technique = StructuredPruning(final_sparsity=0.5, start=1, end=6, update_every=1, importance="taylor")
    module = TinyLlamaLM()
    pl.seed_everything(0)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=8), callbacks=[technique])
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(tokens), batch_size=8))
    mlp = module.model.model.layers[1].mlp
    assert (mlp.gate_proj.out_features, mlp.up_proj.out_features, mlp.down_proj.in_features) == (24, 24, 24)
    assert module.model(input_ids=tokens[:2]).logits.shape == (2, 12, 64)
    assert technique.savings()["params_removed_fraction"] > 0
