"""ProgressiveFreezing: the schedule in training, frozen weights untouched, exact resume across a
freeze event, DDP, bad input."""

import lightning.pytorch as pl
import pytest
import torch
from freezing_helpers import (
    STEPS_PER_EPOCH,
    AdamWClassifier,
    KeepZeroGradsClassifier,
    RecordFrozen,
    assert_frozen_weights_never_move,
    fit,
    preflight_problems_for_run,
)

from lightning_eff import ConfigError
from lightning_eff.plugins.freezing import ProgressiveFreezing
from lightning_eff.recipe import load_recipe
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    quiet_trainer_kwargs,
    run_ddp,
)

BLOCK_PARAMS = [{f"blocks.{i}.0.weight", f"blocks.{i}.0.bias"} for i in range(3)] + [
    {"head.weight", "head.bias"}
]


def test_prefix_grows_linearly_after_start():
    recorder = RecordFrozen()
    fit([ProgressiveFreezing(start=8, end=24, level=0.75)], steps=24, callbacks=[recorder])
    # recorder.frozen[t] = frozen set after optimizer step t; 4 blocks, 3 of them frozen at step 24
    counts = [sum(1 for b in BLOCK_PARAMS if b <= frozen) for frozen in recorder.frozen[:24]]
    expected = [int(0.75 * max(0, t - 8) / 16 * 4 + 1e-9) for t in range(24)]
    assert counts == expected
    assert all(frozen == set().union(*BLOCK_PARAMS[:c]) for frozen, c in zip(recorder.frozen, counts))


@pytest.mark.parametrize(
    "module_cls", [KeepZeroGradsClassifier, AdamWClassifier], ids=["sgd-momentum-wd", "adamw"]
)
def test_frozen_weights_are_bit_identical_from_the_freeze_step_on(module_cls):
    recorder = RecordFrozen()
    _, module = fit(
        [ProgressiveFreezing(start=4, end=20, level=0.75)],
        steps=24,
        module_cls=module_cls,
        callbacks=[recorder],
    )
    assert assert_frozen_weights_never_move(recorder, module) > 20
    # and the parameters that stay trainable did move until the end
    assert not torch.equal(recorder.weights[-1]["head.weight"], recorder.weights[-5]["head.weight"])


def test_metrics_report_frozen_fractions_and_measured_backward_time():
    trainer, module = fit([ProgressiveFreezing(start=4, end=20, level=0.75)], steps=24)
    (technique,) = [cb for cb in trainer.callbacks if isinstance(cb, ProgressiveFreezing)]
    metrics = technique.metrics()
    total = sum(p.numel() for p in module.parameters())
    frozen = sum(p.numel() for p in module.blocks.parameters())
    assert metrics["frozen_param_fraction"] == pytest.approx(frozen / total)
    assert metrics["frozen_block_fraction"] == 0.75 and metrics["frozen_prefix_blocks"] == 3
    assert metrics["backward_seconds"] > 0 and metrics["backward_seconds_unfrozen"] > 0
    assert "backward_time_saved" in metrics
    assert trainer.callbacks  # the hub logged them too
    hub_metrics = next(cb for cb in trainer.callbacks if type(cb).__name__ == "EfficiencyHub").last_metrics
    assert hub_metrics["efficiency/progressive_freezing/frozen_block_fraction"] == 0.75


def make_techniques():
    # 4 blocks over 32 steps: freeze events after steps 14, 20, 26; the checkpoint is at step 16
    return [ProgressiveFreezing(start=0.25, end=1.0, level=1.0)]


@pytest.mark.parametrize("module_cls", [TinyClassifier, AdamWClassifier], ids=["sgd-momentum-wd", "adamw"])
def test_resume_across_a_freeze_event_is_exact(tmp_path, module_cls):
    half = 2 * STEPS_PER_EPOCH
    states = assert_resume_equivalent(
        module_cls, TinyDataModule, make_techniques, half_steps=half, tmp_path=tmp_path
    )
    (state,) = states.values()
    assert state["frozen_blocks"] == [0, 1, 2]


class StopAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        trainer.should_stop = trainer.global_step >= self.step


class CheckFrozenAtTrainStart(RecordFrozen):
    def on_train_start(self, trainer, pl_module):
        self.record(trainer, pl_module)


def test_resumed_run_starts_with_the_checkpointed_frozen_set(tmp_path):
    """Lightning's BaseFinetuning re-runs its freeze logic on resume and can unfreeze or re-freeze
    the wrong layers; ours restores exactly the frozen set and optimizer groups of the checkpoint."""
    ckpt = tmp_path / "a.ckpt"
    trainer, _ = fit(make_techniques(), steps=32, callbacks=[StopAt(16)])
    trainer.save_checkpoint(ckpt)
    recorder = CheckFrozenAtTrainStart()
    pl.seed_everything(0)
    module = TinyClassifier()
    resumed = pl.Trainer(
        **quiet_trainer_kwargs(max_steps=32), callbacks=[*make_techniques(), recorder, StopAt(17)]
    )
    resumed.fit(module, datamodule=TinyDataModule(), ckpt_path=ckpt)
    assert recorder.frozen[0] == BLOCK_PARAMS[0]  # one block frozen after step 14
    assert id(module.blocks[0][0].weight) not in recorder.group_ids[0]
    saved = torch.load(ckpt, weights_only=False)["optimizer_states"][0]
    assert [len(g["params"]) for g in saved["param_groups"]] == [
        len(g["params"]) for g in resumed.optimizers[0].param_groups
    ]


def ddp_techniques():
    return [ProgressiveFreezing(start=1, end=5, level=0.75)]


@pytest.mark.ddp
def test_ddp_ranks_freeze_the_same_blocks(tmp_path):
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
    assert state["frozen_blocks"] == [0, 1, 2]  # 0.75 of 4 blocks after step 5


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"level": 1.5}, "level=1.5: Input should be less than or equal to 1"),
        ({"level": 0.0}, "level=0.0: Input should be greater than 0"),
        ({"start": 0.6, "end": 0.4}, "start=0.6 is after end=0.4"),
        ({"shape": "cubic"}, "unknown option 'shape'"),
    ],
)
def test_bad_options_fail_at_construction(options, message):
    with pytest.raises(ConfigError, match=message):
        ProgressiveFreezing.from_options(**options)


def test_preflight_refuses_freezing_everything_while_training_continues():
    (problem,) = preflight_problems_for_run(
        [ProgressiveFreezing(start=0.1, end=0.5, level=1.0)], max_steps=20
    )
    assert (
        "freezes every trainable parameter while training continues" in problem and "lower level" in problem
    )
    assert (
        preflight_problems_for_run([ProgressiveFreezing(start=0.1, end=1.0, level=1.0)], max_steps=20) == []
    )


def test_preflight_refuses_a_level_that_freezes_no_block():
    (problem,) = preflight_problems_for_run([ProgressiveFreezing(level=0.2)], max_steps=20)
    assert "freezes floor(0.2 * 4) = 0 of the 4 blocks" in problem and "at least 0.25" in problem


def test_preflight_refuses_block_patterns_matching_nothing():
    (problem,) = preflight_problems_for_run([ProgressiveFreezing(blocks=["encoder.*", "head"])], max_steps=20)
    assert "'encoder.*' matches no module" in problem


def test_preflight_requires_ddp_to_find_unused_parameters():
    problems = preflight_problems_for_run([ProgressiveFreezing()], max_steps=20, strategy="ddp", devices=1)
    assert any("ddp_find_unused_parameters_true" in p for p in problems)
    assert (
        preflight_problems_for_run(
            [ProgressiveFreezing()], max_steps=20, strategy="ddp_find_unused_parameters_true", devices=1
        )
        == []
    )


def test_recipe_builds_the_technique():
    recipe = load_recipe("progressive_freezing")
    (technique,) = recipe.build()
    assert isinstance(technique, ProgressiveFreezing)


def quickstart_techniques():
    from lightning_eff.plugins.pruning import GradualPruning

    return [
        GradualPruning(final_sparsity=0.8, start=0.1, end=0.7, update_every=2),
        ProgressiveFreezing(start=0.3),
    ]


def test_composes_with_gradual_pruning_and_resumes_exactly(tmp_path):
    """The quickstart pair: masks and frozen blocks both survive a resume across their events."""
    states = assert_resume_equivalent(
        TinyClassifier, TinyDataModule, quickstart_techniques, 2 * STEPS_PER_EPOCH, tmp_path
    )
    frozen = [s["frozen_blocks"] for s in states.values() if "frozen_blocks" in s]
    assert frozen == [[0, 1, 2]]


def test_a_start_after_the_last_step_is_refused_before_training():
    """ProgressiveFreezing(start=200) in a 100-step run trained silently without ever freezing."""
    from lightning_eff.testing import TinyClassifier, preflight_problems

    (problem,) = preflight_problems([ProgressiveFreezing(start=200)], module=TinyClassifier(), max_steps=100)
    assert "start=200steps (step 200) is at or after the last step (100)" in problem
    assert preflight_problems([ProgressiveFreezing(start=50)], module=TinyClassifier(), max_steps=100) == []
