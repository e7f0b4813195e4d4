"""LowPrecisionOptimizerStates / LowPrecisionAdamW: blockwise quantisation, the update against torch's
AdamW, exact state_dict round trip, the swap inside a Trainer, resume, DDP, memory."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from precision_helpers import NormClassifier

from lightning_eff import ConfigError
from lightning_eff.plugins.precision import LowPrecisionAdamW, LowPrecisionOptimizerStates
from lightning_eff.plugins.precision.blockwise import (
    dequantize_blockwise,
    quantize_blockwise,
    round_to_bf16,
    state_bytes_per_value,
)
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    quiet_trainer_kwargs,
    run_ddp,
    state_differences,
)

# --- quantisation (pure) --------------------------------------------------------------------------


def test_blockwise_codes_recover_each_block_to_its_own_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g) * torch.logspace(-4, 2, 1000)  # magnitudes over six decades
    codes, absmax = quantize_blockwise(x, block=100, signed=True, power=2.0)
    assert codes.dtype == torch.int8 and codes.shape == (10, 100) and absmax.shape == (10,)
    back = dequantize_blockwise(codes, absmax, x.shape, signed=True, power=2.0)
    # one outlier block does not flatten the others: the error is relative to each block's maximum
    err = (back - x).view(10, 100).abs().amax(dim=1) / absmax
    assert err.max() < 2 / 127


def test_second_moment_codes_span_many_decades_and_never_round_a_positive_value_to_zero():
    v = torch.tensor([1.0, 1e-3, 1e-6, 1e-9, 1e-14, 0.0])
    codes, absmax = quantize_blockwise(v, block=8, signed=False, power=4.0)
    back = dequantize_blockwise(codes, absmax, v.shape, signed=False, power=4.0)
    assert codes.dtype == torch.uint8
    assert torch.allclose(back[:3], v[:3], rtol=0.05)
    assert back[4] > 0 and back[5] == 0


def test_stochastic_rounding_is_unbiased():
    x = torch.full((4096,), 0.3)
    x[0] = 1.0  # the block maximum
    noise = torch.rand((1, 4096), generator=torch.Generator().manual_seed(1))
    codes, absmax = quantize_blockwise(x, block=4096, signed=True, power=1.0, noise=noise)
    back = dequantize_blockwise(codes, absmax, x.shape, signed=True, power=1.0)
    assert back[1:].mean().item() == pytest.approx(0.3, abs=1e-3)  # 0.3 * 127 = 38.1 is not a code
    bits = torch.randint(0, 1 << 16, (4096,), generator=torch.Generator().manual_seed(2), dtype=torch.int32)
    third = torch.full((4096,), 1 / 3)
    assert round_to_bf16(third, bits).float().mean().item() == pytest.approx(1 / 3, rel=1e-4)
    assert round_to_bf16(third).float()[0].item() != pytest.approx(1 / 3, rel=1e-4)


def test_bytes_per_value():
    assert state_bytes_per_value("int8", 256) == pytest.approx(1.015625)
    assert state_bytes_per_value("bf16", 256) == 2.0


# --- the optimizer --------------------------------------------------------------------------------


def train_pair(state_dtype, steps=30, **options):
    torch.manual_seed(0)
    model = torch.nn.Linear(128, 64)
    reference_model = copy.deepcopy(model)
    opt = LowPrecisionAdamW(model.parameters(), lr=1e-2, state_dtype=state_dtype, min_numel=1000, **options)
    ref = torch.optim.AdamW(reference_model.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randn(32, 128)
        for m, o in ((model, opt), (reference_model, ref)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
    return model, reference_model, opt, ref


@pytest.mark.parametrize("state_dtype, tolerance", [("bf16", 0.05), ("int8", 0.15)])
# 30 steps at lr 1e-2 move the weights by about 0.3 of their largest value: the bounds are far tighter
def test_updates_follow_torch_adamw(state_dtype, tolerance):
    model, reference, opt, _ = train_pair(state_dtype)
    assert (model.weight - reference.weight).abs().max() < tolerance * reference.weight.abs().max()
    state = opt.state[model.weight]
    if state_dtype == "bf16":
        assert state["exp_avg"].dtype == torch.bfloat16
    else:
        assert state["exp_avg_codes"].dtype == torch.int8 and state["exp_avg_sq_codes"].dtype == torch.uint8
    assert opt.state[model.bias]["exp_avg"].dtype == torch.float32  # 64 < min_numel: kept fp32


def test_small_parameters_keep_fp32_moments_and_match_torch_adamw():
    torch.manual_seed(0)
    small = torch.nn.Linear(8, 4)
    ref_small = copy.deepcopy(small)
    opt = LowPrecisionAdamW(small.parameters(), lr=1e-2, state_dtype="int8")  # everything below min_numel
    ref = torch.optim.AdamW(ref_small.parameters(), lr=1e-2)
    for _ in range(5):
        x = torch.randn(3, 8)
        for m, o in ((small, opt), (ref_small, ref)):
            o.zero_grad()
            m(x).sum().backward()
            o.step()
    torch.testing.assert_close(small.weight, ref_small.weight, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("state_dtype", ["bf16", "int8"])
def test_state_dict_round_trips_exactly_and_training_continues_identically(state_dtype):
    model, _, opt, _ = train_pair(state_dtype, steps=5)
    saved = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(model)
    restored = LowPrecisionAdamW(twin.parameters(), lr=1e-2, state_dtype=state_dtype, min_numel=1000)
    restored.load_state_dict(copy.deepcopy(saved))
    assert state_differences(saved, restored.state_dict()) == []
    x = torch.randn(8, 128)
    for m, o in ((model, opt), (twin, restored)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(model.weight, twin.weight)
    assert state_differences(opt.state_dict(), restored.state_dict()) == []


# --- the technique --------------------------------------------------------------------------------


def fit(technique, module_cls=NormClassifier, steps=6):
    pl.seed_everything(0)
    module = module_cls()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps), callbacks=[technique])
    trainer.fit(module, datamodule=TinyDataModule())
    return trainer, module


def test_adamw_is_swapped_and_the_lr_schedule_still_applies():
    technique = LowPrecisionOptimizerStates(state_dtype="int8", min_numel=256, block_size=64)
    trainer, _ = fit(technique)
    (optimizer,) = trainer.optimizers
    assert isinstance(optimizer, LowPrecisionAdamW)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.optimizer is optimizer
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / (1 + 0.05 * 6))
    metrics = technique.metrics()
    assert metrics["swapped_optimizers"] == 1
    assert metrics["optimizer_state_bytes"] < 0.45 * metrics["optimizer_state_bytes_fp32_adam"]


def test_an_optimizer_it_cannot_replace_stops_training_with_the_fix():
    with pytest.raises(Exception, match="returned SGD: use AdamW"):
        fit(LowPrecisionOptimizerStates(), module_cls=TinyClassifier, steps=1)


def test_bad_options_fail_at_construction():
    with pytest.raises(ConfigError, match="state_dtype"):
        LowPrecisionOptimizerStates.from_options(state_dtype="fp8")


def int8_techniques():
    return [LowPrecisionOptimizerStates(state_dtype="int8", min_numel=256, block_size=64)]


def bf16_techniques():
    return [LowPrecisionOptimizerStates(state_dtype="bf16", min_numel=256)]


@pytest.mark.parametrize("make", [int8_techniques, bf16_techniques])
def test_resume_is_exact(tmp_path, make):
    assert_resume_equivalent(NormClassifier, TinyDataModule, make, half_steps=8, tmp_path=tmp_path)


@pytest.mark.ddp
def test_ddp_ranks_stay_identical(tmp_path):
    # the stochastic rounding noise is seeded by (step, parameter), so every rank rounds alike
    states = run_ddp(NormClassifier, TinyDataModule, int8_techniques, max_steps=4, tmp_path=tmp_path)
    assert_ranks_identical(states)
