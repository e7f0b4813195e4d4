"""LoRA with the other families: the order it runs in, and adapters kept fp32 under a bf16 base."""

from __future__ import annotations

import torch
from lora_helpers import fit, lora_on_blocks

from lightning_eff.plan import resolve_order
from lightning_eff.plugins.peft import LoRA
from lightning_eff.plugins.peft.composition import CONFLICT_REASONS
from lightning_eff.plugins.precision import MixedPrecision
from lightning_eff.registry import get_registry
from lightning_eff.testing import TinyClassifier


def test_every_refused_technique_is_declared_as_a_conflict_and_exists():
    registered = set(get_registry().techniques)
    assert set(LoRA.conflicts) == set(CONFLICT_REASONS)
    assert set(CONFLICT_REASONS) <= registered


def test_lora_runs_before_mixed_precision_whatever_the_user_order():
    order, problems = resolve_order([MixedPrecision(), lora_on_blocks()])
    assert problems == [] and [t.name for t in order] == ["lora", "mixed_precision"]


def test_adapters_stay_fp32_and_train_under_a_bf16_base_with_bf16_mixed():
    module = TinyClassifier().to(torch.bfloat16)
    module.head.to(torch.float32)  # the trained head in fp32 too, like the adapters
    technique = lora_on_blocks()
    trainer, module = fit([technique, MixedPrecision("bf16-mixed")], steps=4, module=module, precision="bf16-mixed")
    params = dict(module.named_parameters())
    assert params["blocks.0.0.base_layer.weight"].dtype == torch.bfloat16
    adapters = {n: p for n, p in params.items() if "lora_" in n}
    assert adapters and all(p.dtype == torch.float32 for p in adapters.values())
    assert all(p.abs().sum() > 0 for n, p in adapters.items() if "lora_B" in n)
    assert all(torch.isfinite(p).all() for p in params.values())
