"""What a LoRA run trains, what it leaves alone, and what its checkpoint holds."""

from __future__ import annotations

import torch
from lora_helpers import KeepZeroGradsClassifier, fit, lora_on_blocks

from lightning_eff.plugins.peft import lora_layers
from lightning_eff.surgery import CHECKPOINT_KEY, restore_surgery
from lightning_eff.testing import TinyClassifier


def test_adapted_model_starts_as_the_pretrained_function():
    torch.manual_seed(0)
    model, x = TinyClassifier(), torch.randn(5, 16)
    before = model(x)
    lora_on_blocks().adapt(model)
    assert [n for n, _ in lora_layers(model)] == ["blocks.0.0", "blocks.1.0", "blocks.2.0"]
    assert torch.equal(model(x), before)  # B = 0


def test_base_weights_stay_bit_identical_and_out_of_the_optimizer_while_adapters_and_head_train():
    base = KeepZeroGradsClassifier()  # zero grads, momentum and weight decay would move a frozen weight left in a group
    start = {n: p.detach().clone() for n, p in base.named_parameters()}
    trainer, module = fit([lora_on_blocks()], module=base)
    params = dict(module.named_parameters())
    for i in range(3):
        assert torch.equal(params[f"blocks.{i}.0.base_layer.weight"], start[f"blocks.{i}.0.weight"])
        assert torch.equal(params[f"blocks.{i}.0.base_layer.bias"], start[f"blocks.{i}.0.bias"])
        assert params[f"blocks.{i}.0.lora_B.default.weight"].abs().sum() > 0
    assert not torch.equal(params["head.weight"], start["head.weight"])
    in_groups = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in module.parameters() if p.requires_grad}
    assert all(id(p) in in_groups for n, p in params.items() if "lora_" in n or n.startswith("head."))


def test_metrics_count_adapters_and_trainable_parameters():
    technique = lora_on_blocks()
    fit([technique], steps=1)
    adapter = (4 * 16 + 32 * 4) + 2 * (4 * 32 + 32 * 4)
    head = 32 * 4 + 4
    m = technique.metrics()
    assert m["adapters"] == 3 and m["adapter_params"] == adapter and m["trainable_params"] == adapter + head
    assert 0 < m["trainable_fraction"] < 0.5


def test_checkpoint_holds_adapters_and_replays_them_into_a_fresh_plain_model(tmp_path):
    trainer, module = fit([lora_on_blocks()])
    path = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert any("lora_A.default" in k for k in checkpoint["state_dict"])
    assert [s["name"] for s in checkpoint[CHECKPOINT_KEY]["specs"]] == ["blocks.0.0", "blocks.1.0", "blocks.2.0"]
    fresh = TinyClassifier()
    restore_surgery(fresh, checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    x = torch.randn(3, 16)
    assert torch.equal(fresh(x), module(x))


def test_a_second_fit_on_the_adapted_module_keeps_its_adapters():
    technique = lora_on_blocks()
    trainer, module = fit([technique], steps=2)
    trained = module.blocks[0][0].lora_B.default.weight.detach().clone()
    fit([lora_on_blocks()], steps=2, module=module)
    assert len(lora_layers(module)) == 3
    assert not torch.equal(module.blocks[0][0].lora_B.default.weight, trained)  # trained on, not rebuilt


