"""AdaptiveFreezing: freezes the longest prefix whose gradient norm stopped changing, never the head,
never past max_fraction; window state in the checkpoint; DDP; bad input."""

import lightning.pytorch as pl
import pytest
import torch
from freezing_helpers import (
    STEPS_PER_EPOCH,
    RecordFrozen,
    assert_frozen_weights_never_move,
    fit,
    preflight_problems_for_run,
)

from lightning_eff import ConfigError
from lightning_eff.plugins.freezing import AdaptiveFreezing
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    run_ddp,
)


class DesignedGradients(pl.Callback):
    """Overwrites the gradients before the technique reads them (plain callbacks run before the hub):
    blocks 0 and 2 get constant gradient norms (converged), block 1 a growing one (still learning)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        t = trainer.global_step
        for i, scale in enumerate([1.0, 1.0 + t, 1.0]):
            for p in pl_module.blocks[i].parameters():
                if p.requires_grad:
                    p.grad = torch.full_like(p, scale * 1e-3)


def test_freezes_the_converged_prefix_and_stops_at_a_still_learning_block():
    recorder = RecordFrozen()
    technique = AdaptiveFreezing(every=4, percentile=50)
    fit([technique], steps=24, callbacks=[DesignedGradients(), recorder])
    frozen_blocks = [sum(1 for i in range(3) if f"blocks.{i}.0.weight" in f) for f in recorder.frozen]
    # first decision after two windows (step 8): changes [0, big, 0] -> prefix of 1; block 1 blocks the rest
    assert frozen_blocks[:8] == [0] * 8 and frozen_blocks[8:] == [1] * (len(frozen_blocks) - 8)
    assert technique.metrics()["frozen_prefix_blocks"] == 1


def test_never_freezes_past_max_fraction_nor_the_head():
    recorder = RecordFrozen()
    technique = AdaptiveFreezing(every=2, percentile=100, max_fraction=0.5)  # every block counts as converged
    _, module = fit([technique], steps=16, callbacks=[recorder])
    assert technique.state_dict()["frozen_blocks"] == [0, 1]
    assert "head.weight" not in recorder.frozen[-1]
    assert assert_frozen_weights_never_move(recorder, module) > 0


def make_techniques():
    return [
        AdaptiveFreezing(every=3, percentile=50)
    ]  # windows end at 3, 6, ...: the checkpoint (16) is mid-window


def test_resume_mid_window_is_exact(tmp_path):
    states = assert_resume_equivalent(
        TinyClassifier, TinyDataModule, make_techniques, 2 * STEPS_PER_EPOCH, tmp_path
    )
    (state,) = states.values()
    assert state["frozen_blocks"], "the run froze nothing: the resume was not tested across a freeze event"


def ddp_techniques():
    return [AdaptiveFreezing(every=2, percentile=100, max_fraction=0.5)]


@pytest.mark.ddp
def test_ddp_ranks_decide_identically(tmp_path):
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
    assert state["frozen_blocks"] == [0, 1]


def test_bad_options_and_preflight():
    with pytest.raises(ConfigError, match="max_fraction=1.0: Input should be less than 1"):
        AdaptiveFreezing.from_options(max_fraction=1.0)
    with pytest.raises(ConfigError, match="percentile=0.0: Input should be greater than 0"):
        AdaptiveFreezing.from_options(percentile=0.0)
    (problem,) = preflight_problems_for_run([AdaptiveFreezing(every=50)], max_steps=60)
    assert "first freezing decision" in problem and "step 100" in problem and "lower every" in problem
    (problem,) = preflight_problems_for_run([AdaptiveFreezing(every=2, max_fraction=0.2)], max_steps=60)
    assert "allows floor(0.2 * 4) = 0 of the 4 blocks to freeze" in problem
