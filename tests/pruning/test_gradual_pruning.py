"""GradualPruning: the cubic schedule, the masks through training, checkpoints, resume, DDP, bad input."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision

from lightning_eff import ConfigError
from lightning_eff.plugins.pruning import GradualPruning
from lightning_eff.plugins.pruning.gradual import is_update_step, sparsity_at
from lightning_eff.recipe import load_recipe
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    preflight_problems,
    quiet_trainer_kwargs,
    run_ddp,
)

# --- the schedule -------------------------------------------------------------------------------


def test_cubic_schedule_matches_zhu_and_gupta():
    assert sparsity_at(5, start=10, end=110, initial=0.1, final=0.8) == 0.0
    assert sparsity_at(10, 10, 110, 0.1, 0.8) == pytest.approx(0.1)
    assert sparsity_at(60, 10, 110, 0.1, 0.8) == pytest.approx(0.8 + (0.1 - 0.8) * 0.5**3)
    assert sparsity_at(110, 10, 110, 0.1, 0.8) == 0.8
    assert sparsity_at(500, 10, 110, 0.1, 0.8) == 0.8
    ramp = [sparsity_at(t, 0, 100, 0.0, 0.9) for t in range(101)]
    assert all(a <= b for a, b in zip(ramp, ramp[1:]))
    # cubic: most of the pruning happens early, when the network still has redundancy
    assert ramp[50] > 0.75 * 0.9


def test_masks_update_every_interval_and_at_the_end():
    steps = [t for t in range(30) if is_update_step(t, start=4, end=20, interval=5)]
    assert steps == [4, 9, 14, 19, 20]
    assert [t for t in range(10) if is_update_step(t, 3, 3, 5)] == [3]


# --- training -----------------------------------------------------------------------------------


class RecordAfterStep(pl.Callback):
    """The masked weights and masks left by each optimizer step, seen at the start of the next batch
    (a plain callback's on_train_batch_end would run before the hub's)."""

    def __init__(self):
        self.pruned_weight_max, self.sparsity = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step > 0:
            self.record(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.record(pl_module)

    def record(self, pl_module):
        w, mask = pl_module.blocks[1][0].weight, pl_module.blocks[1][0].weight_mask
        self.pruned_weight_max.append(w[~mask].abs().max().item() if (~mask).any() else 0.0)
        self.sparsity.append(1 - mask.float().mean().item())


class GradSpyClassifier(TinyClassifier):
    """Records the largest pruned gradient the optimizer is about to use (the module's hook runs
    after every callback's on_before_optimizer_step)."""

    def on_before_optimizer_step(self, optimizer):
        layer = self.blocks[1][0]
        pruned = layer.weight.grad[~layer.weight_mask]
        self.pruned_grad_max = max(getattr(self, "pruned_grad_max", 0.0), pruned.abs().max().item() if pruned.numel() else 0.0)


def fit(technique, steps=24, callbacks=(), module_cls=TinyClassifier, **kwargs):
    pl.seed_everything(0)
    module, data = module_cls(), TinyDataModule()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=[technique, *callbacks])
    trainer.fit(module, datamodule=data)
    return trainer, module


def test_reaches_final_sparsity_in_every_layer_and_keeps_pruned_weights_and_grads_at_zero():
    record = RecordAfterStep()
    technique = GradualPruning(final_sparsity=0.75, start=2, end=14, update_every=3, make_permanent=False)
    _, module = fit(technique, callbacks=[record], module_cls=GradSpyClassifier)
    for name, sparsity in technique.masked.layer_sparsity().items():
        assert sparsity == pytest.approx(0.75, abs=0.01), name
    assert record.sparsity[0] == 0.0 and record.sparsity[-1] == pytest.approx(0.75, abs=0.01)
    assert all(b >= a for a, b in zip(record.sparsity, record.sparsity[1:]))  # never un-prunes
    assert max(record.pruned_weight_max) == 0.0  # momentum would move them without the re-mask
    assert module.pruned_grad_max == 0.0
    assert (module.blocks[0][0].weight == 0).float().mean().item() == pytest.approx(0.75, abs=0.01)


def test_global_scope_prunes_layers_unevenly_to_the_same_total():
    technique = GradualPruning(final_sparsity=0.7, start=1, end=8, update_every=1, scope="global", make_permanent=False)
    fit(technique, steps=8)
    per_layer = technique.masked.layer_sparsity()
    metrics = technique.metrics()
    assert metrics["sparsity"] == pytest.approx(0.7, abs=0.001)
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05


def test_include_and_exclude_patterns_limit_what_is_pruned():
    technique = GradualPruning(final_sparsity=0.5, start=1, end=4, update_every=1, include_names=["blocks.*"],
                               exclude_names=["blocks.0.*"], make_permanent=False)
    _, module = fit(technique, steps=6)
    assert technique.masked.names() == ["blocks.1.0", "blocks.2.0"]
    assert (module.blocks[0][0].weight != 0).all() and (module.head.weight != 0).all()


def test_metrics_report_sparsity_real_parameter_count_and_mask_changes():
    technique = GradualPruning(final_sparsity=0.5, start=2, end=6, update_every=2, make_permanent=False)
    _, module = fit(technique, steps=8)
    metrics = technique.metrics()
    nonzero = sum(int((p != 0).sum()) for p in module.parameters())
    pruned = sum(int((~m).sum()) for m in technique.masked.masks().values())
    assert metrics["params_remaining"] == sum(p.numel() for p in module.parameters()) - pruned
    assert metrics["params_remaining"] >= nonzero  # unpruned weights are almost never exactly zero
    assert metrics["sparsity/blocks.0.0"] == pytest.approx(0.5, abs=0.01)
    # the last update (step 6) went from s(4) to s(6) = final: the changes are the newly pruned weights
    total = sum(m.numel() for m in technique.masked.masks().values())
    expected = sum(round(0.5 * m.numel()) - round(sparsity_at(4, 2, 6, 0.0, 0.5) * m.numel())
                   for m in technique.masked.masks().values())
    assert metrics["mask_changes"] == pytest.approx(expected, abs=len(technique.masked.names()))
    assert 0 < metrics["mask_changes"] < total


def test_make_permanent_removes_mask_buffers_and_keeps_the_zeros():
    technique = GradualPruning(final_sparsity=0.6, start=1, end=5, update_every=1)
    _, module = fit(technique, steps=6)
    assert not any(name.endswith("weight_mask") for name, _ in module.named_buffers())
    assert (module.blocks[2][0].weight == 0).float().mean().item() == pytest.approx(0.6, abs=0.01)
    assert technique.metrics()["sparsity"] == pytest.approx(0.6, abs=0.01)  # still reported after removal


def test_checkpoint_loads_with_plain_load_from_checkpoint(tmp_path):
    technique = GradualPruning(final_sparsity=0.5, start=1, end=4, update_every=1)
    trainer, module = fit(technique, steps=6)
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    loaded = TinyClassifier.load_from_checkpoint(tmp_path / "pruned.ckpt")
    assert torch.equal(loaded.blocks[1][0].weight, module.blocks[1][0].weight)
    assert (loaded.blocks[1][0].weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    masks = torch.load(tmp_path / "pruned.ckpt", weights_only=False)["callbacks"][technique.state_key]["masks"]
    assert torch.equal(masks["blocks.1.0"], loaded.blocks[1][0].weight != 0)


class InfGradAt(pl.Callback):
    """Puts an inf into an unpruned gradient at one step so that the fp16 scaler skips that step."""

    def __init__(self, step):
        self.step, self.before, self.after = step, None, None

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step:
            self.before = pl_module.blocks[1][0].weight.detach().clone()
            w = pl_module.blocks[1][0]
            w.weight.grad[w.weight_mask.nonzero()[0].unbind()] = float("inf")

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step == self.step + 1:
            self.after = pl_module.blocks[1][0].weight.detach().clone()


def test_a_step_skipped_by_the_fp16_scaler_leaves_weights_masked():
    skip = InfGradAt(step=5)  # mask updates at 2, 4, 6: step 5 is between them
    record = RecordAfterStep()
    technique = GradualPruning(final_sparsity=0.5, start=2, end=6, update_every=2, make_permanent=False)
    scaler = torch.amp.GradScaler("cpu")
    fit(technique, steps=8, callbacks=[skip, record], plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert torch.equal(skip.before, skip.after)  # the step really was skipped
    assert scaler.get_scale() < 65536.0
    assert max(record.pruned_weight_max) == 0.0
    assert technique.masked.layer_sparsity()["blocks.1.0"] == pytest.approx(0.5, abs=0.01)


def test_lottery_ticket_rewind_resets_survivors_to_their_early_values():
    class Snapshot(pl.Callback):  # what steps 1 and 6 left (seen after the hub ran)
        def on_train_batch_start(self, trainer, pl_module, *args):
            if trainer.global_step == 1:
                self.early = pl_module.blocks[1][0].weight.detach().clone()

        def on_train_end(self, trainer, pl_module):
            self.at_end = pl_module.blocks[1][0].weight.detach().clone()

    snap = Snapshot()
    technique = GradualPruning(final_sparsity=0.5, start=2, end=6, update_every=2, rewind_to=1, make_permanent=False)
    fit(technique, steps=6, callbacks=[snap])
    mask = technique.masked.mask("blocks.1.0")
    assert torch.equal(snap.at_end, snap.early * mask)
    assert technique.state_dict()["rewind_weights"] == {}  # used, and the copy freed


# --- resume and DDP -------------------------------------------------------------------------------


def gradual_pruning_techniques():
    return [GradualPruning(final_sparsity=0.7, start=2, end=13, update_every=3, scope="global", rewind_to=1)]


def test_resume_is_exact_mid_schedule(tmp_path):
    # 8 steps per epoch; the checkpoint at step 8 falls between mask updates 5 and 11
    states = assert_resume_equivalent(TinyClassifier, TinyDataModule, gradual_pruning_techniques, half_steps=8,
                                      tmp_path=tmp_path)
    (state,) = states.values()
    assert state["last_update_step"] == 13
    pruned = sum(int((~m).sum()) for m in state["masks"].values())
    assert pruned / sum(m.numel() for m in state["masks"].values()) == pytest.approx(0.7, abs=0.001)


def gradual_pruning_ddp_techniques():
    return [GradualPruning(final_sparsity=0.7, start=1, end=5, update_every=2, scope="global")]


@pytest.mark.ddp
def test_ddp_ranks_hold_identical_masks(tmp_path):
    states = run_ddp(TinyClassifier, TinyDataModule, gradual_pruning_ddp_techniques, max_steps=6, tmp_path=tmp_path)
    assert_ranks_identical(states)
    (state,) = states[0]["techniques"].values()
    assert 0 < sum(int((~m).sum()) for m in state["masks"].values())


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"final_sparsity": 1.0}, "final_sparsity=1.0: Input should be less than 1"),
        ({"final_sparsity": -0.1}, "final_sparsity=-0.1: Input should be greater than or equal to 0"),
        ({"start": 50, "end": 10}, "start=50 is after end=10"),
        ({"initial_sparsity": 0.5, "final_sparsity": 0.2}, "must not exceed final_sparsity"),
        ({"scope": "row"}, "scope='row'"),
        ({"sparsity": 0.5}, "unknown option 'sparsity'"),
    ],
)
def test_bad_options_fail_at_construction(options, message):
    with pytest.raises(ConfigError, match="GradualPruning") as info:
        GradualPruning.from_options(**options)
    assert message in str(info.value)


# preflight_problems runs a Trainer with max_steps=1: fractions of the run resolve against 1 step.


def test_preflight_catches_start_after_end_in_mixed_units_and_patterns_matching_nothing():
    problems = preflight_problems([GradualPruning(start=1, end=0.2, include_names=["block.*"], exclude_names=["head"])])
    assert any("start=1 (step 1) is after end=0.2 (step 0)" in p for p in problems)
    assert any("include_names pattern 'block.*' matches no Linear" in p and "'blocks.0.0'" in p for p in problems)
    assert not any("exclude_names" in p for p in problems)


def test_preflight_catches_an_end_beyond_training_and_a_late_rewind():
    problems = preflight_problems([GradualPruning(start=0, end=100, rewind_to=1)])
    assert any("end=100 is after the last step (1)" in p for p in problems)
    assert any("rewind_to=1 (step 1) is after start (step 0)" in p for p in problems)
    assert preflight_problems([GradualPruning(start=0, end=1, rewind_to=0)]) == []


def test_shipped_recipe_builds_gradual_pruning():
    (technique,) = load_recipe("gradual_pruning").build()
    assert isinstance(technique, GradualPruning)
    assert technique.config.final_sparsity == 0.8


def test_preflight_refuses_two_pruning_techniques_on_the_same_module():
    from lightning_eff.plugins.pruning import NMSparsity

    problems = preflight_problems([GradualPruning(start=0, end=1, include_names=["blocks.*"]),
                                   NMSparsity(include_names=["blocks.2.0", "head"])])
    assert problems == [
        "gradual_pruning and nm_sparsity both prune 'blocks.2.0': give them disjoint include_names/exclude_names"
    ]
    assert preflight_problems([GradualPruning(start=0, end=1, include_names=["blocks.*"]),
                               NMSparsity(include_names=["head"])]) == []
