"""merge_at_end: the adapters folded into the base weights, a plain model with the original keys."""

from __future__ import annotations

import pytest
import torch
from lora_helpers import PlainClassifier, fit, lora_on_blocks

from lightning_eff.plugins.peft import merge_lora
from lightning_eff.surgery import recorded_specs
from lightning_eff.testing import TinyClassifier


def _randomise_adapters(model: torch.nn.Module) -> None:
    # B starts at 0; a merge of zeros would prove nothing
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)


@pytest.mark.parametrize("variant", [{}, {"dora": True, "rslora": True}])
def test_merged_model_has_the_original_keys_and_the_adapted_outputs(variant):
    torch.manual_seed(0)
    model, x = TinyClassifier(), torch.randn(4, 16)
    keys = list(model.state_dict())
    lora_on_blocks(**variant).adapt(model)
    _randomise_adapters(model)
    adapted = model(x)
    merge_lora(model)
    assert list(model.state_dict()) == keys
    assert recorded_specs(model) == []  # nothing left to replay on load
    torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-5)


def test_merge_at_end_writes_a_state_dict_a_fresh_plain_torch_model_loads(tmp_path):
    path = tmp_path / "merged.pt"
    technique = lora_on_blocks(merge_at_end=True, merged_path=str(path))
    _, module = fit([technique], steps=4)
    assert technique.merged and not any("lora_" in k for k in module.state_dict())
    plain = PlainClassifier()
    plain.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(6, 16)
    torch.testing.assert_close(plain(x), module(x))


def test_a_transformers_model_merges_back_into_its_own_class():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    keys = set(model.state_dict())
    lora_on_blocks(targets=["*.query", "*.value", "*.intermediate.dense"], train=["classifier.*"]).adapt(model)
    assert sum("lora_A" in k for k in model.state_dict()) == 6
    _randomise_adapters(model)
    ids = torch.randint(0, 40, (2, 7))
    adapted = model(input_ids=ids).logits
    merged = merge_lora(model).state_dict()
    assert set(merged) == keys
    fresh = transformers.BertForSequenceClassification(config).eval()
    fresh.load_state_dict(merged)
    torch.testing.assert_close(fresh(input_ids=ids).logits, adapted, rtol=1e-5, atol=1e-5)
