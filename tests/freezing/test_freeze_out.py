"""FreezeOut: per-block stop times, learning rates annealed through scaled updates, exact resume, DDP."""

import pytest
import torch
from freezing_helpers import (
    STEPS_PER_EPOCH,
    AdamWClassifier,
    RecordFrozen,
    assert_frozen_weights_never_move,
    fit,
    preflight_problems_for_run,
)

from lightning_eff import ConfigError
from lightning_eff.plugins.freezing import FreezeOut
from lightning_eff.plugins.freezing.schedules import freezeout_stop_fractions, stopped_prefix
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    run_ddp,
)

BLOCK_PARAMS = [{f"blocks.{i}.0.weight", f"blocks.{i}.0.bias"} for i in range(3)] + [
    {"head.weight", "head.bias"}
]


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=1e-2),
        lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "adamw"],
)
def test_scaling_the_update_equals_scaling_the_learning_rate(make_optimizer):
    """The premise of FreezeOut's implementation: w0 + f * (step(lr) - w0) == step(f * lr)."""
    torch.manual_seed(0)
    scaled, reference = torch.nn.Parameter(torch.randn(50)), None
    reference = torch.nn.Parameter(scaled.detach().clone())
    opt_scaled, opt_ref = make_optimizer([scaled], 0.1), make_optimizer([reference], 0.1)
    for factor in [1.0, 0.7, 0.3, 0.05]:
        grad = torch.randn(50)
        for group in opt_ref.param_groups:
            group["lr"] = 0.1 * factor
        scaled.grad, reference.grad = grad.clone(), grad.clone()
        before = scaled.detach().clone()
        opt_scaled.step()
        opt_ref.step()
        with torch.no_grad():
            scaled.sub_(before).mul_(factor).add_(before)
        torch.testing.assert_close(scaled, reference, rtol=1e-6, atol=1e-7)


def test_blocks_stop_at_their_cubic_stop_times_and_stay_bit_identical():
    recorder = RecordFrozen()
    _, module = fit(
        [FreezeOut(t0=0.5, scale="cubic")], steps=32, module_cls=AdamWClassifier, callbacks=[recorder]
    )
    stops = [int(f * 32 + 0.5) for f in freezeout_stop_fractions(4, 0.5, "cubic")]  # [4, 9, 18, 32]
    counts = [sum(1 for b in BLOCK_PARAMS if b <= frozen) for frozen in recorder.frozen[:32]]
    assert counts == [stopped_prefix(t, stops) for t in range(32)]
    assert counts[-1] == 3  # the head never stops
    assert assert_frozen_weights_never_move(recorder, module) > 0


def test_annealed_block_moves_less_than_without_freezeout():
    """The first block's learning rate is near 0 just before its stop: its last update is tiny
    compared with the same step of an unscaled run."""
    plain, with_fo = RecordFrozen(), RecordFrozen()
    fit([], steps=12, module_cls=AdamWClassifier, callbacks=[plain])
    fit(
        [FreezeOut(t0=0.5, scale="linear", scale_lr=False)],
        steps=12,
        module_cls=AdamWClassifier,
        callbacks=[with_fo],
    )

    # 4 blocks over 12 steps: block 0 stops at step 6; the update at step 5 has factor (1+cos(5pi/6))/2
    def moved(rec, t):
        return (
            (rec.weights[t + 1]["blocks.0.0.weight"] - rec.weights[t]["blocks.0.0.weight"]).abs().max().item()
        )

    assert moved(with_fo, 5) < 0.1 * moved(plain, 5)
    assert moved(with_fo, 0) == pytest.approx(moved(plain, 0), rel=1e-4)  # factor 1 at step 0


def make_techniques():
    return [FreezeOut(t0=0.6, scale="cubic")]  # stop steps 7, 13, 20 of 32: events on both sides of 16


@pytest.mark.parametrize("module_cls", [TinyClassifier, AdamWClassifier], ids=["sgd-momentum-wd", "adamw"])
def test_resume_across_a_freeze_event_is_exact(tmp_path, module_cls):
    states = assert_resume_equivalent(
        module_cls, TinyDataModule, make_techniques, 2 * STEPS_PER_EPOCH, tmp_path
    )
    (state,) = states.values()
    assert state["frozen_blocks"] == [0, 1, 2]


def ddp_techniques():
    return [FreezeOut(t0=0.5, scale="linear")]


@pytest.mark.ddp
def test_ddp_ranks_anneal_and_freeze_identically(tmp_path):
    states = run_ddp(
        TinyClassifier,
        TinyDataModule,
        ddp_techniques,
        max_steps=6,
        tmp_path=tmp_path,
        strategy="ddp_spawn_find_unused_parameters_true",
    )
    assert_ranks_identical(states)
    (state,) = states[0]["techniques"].values()
    assert state["frozen_blocks"] == [0, 1, 2]  # stops at steps 3, 4, 5; the head never


def test_bad_options_and_preflight():
    with pytest.raises(ConfigError, match="t0=0.0: Input should be greater than 0"):
        FreezeOut.from_options(t0=0.0)
    with pytest.raises(ConfigError, match="scale='quartic'"):
        FreezeOut.from_options(scale="quartic")
    (problem,) = preflight_problems_for_run([FreezeOut(t0=0.1, scale="cubic")], max_steps=20)
    assert "stops the first block at step 0 of 20: raise t0" in problem
    (problem,) = preflight_problems_for_run([FreezeOut(blocks=["nothing.*"])], max_steps=20)
    assert "'nothing.*' matches no module" in problem
