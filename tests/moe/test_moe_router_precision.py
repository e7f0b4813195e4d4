"""The MoE router computes its logits in fp32 under autocast, and the mixed-precision fp32 policy
recognises it by its class."""

import torch
from torch import nn

from lightning_eff.plugins.moe.layer import MoELayer
from lightning_eff.plugins.precision.policy import DEFAULT_FP32_TYPES, fp32_policy_modules


def moe_model(hidden: int = 8, experts: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    layer = MoELayer([nn.Linear(hidden, hidden) for _ in range(experts)], hidden=hidden, top_k=2)
    return nn.Sequential(nn.Linear(hidden, hidden), layer)


def test_router_logits_are_fp32_under_bf16_autocast():
    model = moe_model()
    x = torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        hidden = model[0](x)  # bf16 under autocast: what the router receives
    logits = model[1].last.logits
    assert out.dtype == torch.bfloat16 and hidden.dtype == torch.bfloat16
    assert logits.dtype == torch.float32
    # the fp32 product of the bf16 input, not a bf16 product cast up
    expected = hidden.float() @ model[1].router.weight.float().T
    assert torch.equal(logits, expected)


def test_default_fp32_policy_keeps_the_moe_router_and_not_the_experts():
    chosen = fp32_policy_modules(moe_model(), name_patterns=(), type_patterns=DEFAULT_FP32_TYPES)
    assert list(chosen) == ["1.router"]
