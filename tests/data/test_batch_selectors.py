"""SelectiveBackprop, RandomSubset and LossThresholdSkip in training: behaviour, metrics, resume, DDP, preflight."""

import lightning.pytorch as pl
import pytest
import torch
from data_helpers import NoPerSampleLoss, RecordingClassifier

from lightning_eff import ConfigError
from lightning_eff.plugins.data import LossThresholdSkip, RandomSubset, SelectiveBackprop
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


def fit(technique, steps=8, module=None, **kwargs):
    module = module or RecordingClassifier()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=[technique])
    trainer.fit(module, datamodule=TinyDataModule())
    return trainer, module


def test_selective_backprop_trains_on_keep_fraction_only_inside_its_window_and_off_interrupt_steps():
    sb = SelectiveBackprop(keep=0.25, start=2, end=6, interrupt=2)
    _, module = fit(sb, steps=8)
    # batch 8; active on steps 2 and 4 (3 and 5 are interrupt steps): 2 of 8 samples trained there
    assert module.trained == [8, 8, 2, 8, 2, 8, 8, 8]
    assert module.scored == [8, 8]
    m = sb.metrics()
    assert m["kept_fraction"] == pytest.approx((6 * 8 + 2 * 2) / 64)
    assert m["backward_saved"] == 12.0
    assert sb.savings()["backward_samples_saved"] == 12.0


def test_selective_backprop_picks_high_loss_samples_more_often_than_random_subset():
    def mean_kept_loss(technique):
        fit(technique, steps=24)
        return technique.stats.metrics()["score_mean_kept"], technique.stats.metrics()["score_mean_dropped"]

    kept, dropped = mean_kept_loss(SelectiveBackprop(keep=0.25, start=0, end=24, interrupt=0))
    assert kept > 1.1 * dropped


def test_random_subset_needs_no_scoring_pass_and_draws_fresh_subsets():
    rs = RandomSubset(keep=0.5)
    kept_batches = []

    class Spy(RecordingClassifier):
        def per_sample_loss(self, batch):
            if torch.is_grad_enabled():
                kept_batches.append(batch[1].tolist())
            return super().per_sample_loss(batch)

    _, module = fit(rs, steps=8, module=Spy())
    assert module.scored == [] and module.trained == [4] * 8
    assert rs.metrics()["kept_fraction"] == 0.5
    assert len({tuple(b) for b in kept_batches}) > 1


def test_loss_threshold_skip_keeps_only_samples_above_the_threshold():
    lts = LossThresholdSkip(threshold=1e6, min_keep=3)  # nothing is above: the 3 largest losses train
    _, module = fit(lts, steps=4)
    assert module.trained == [3, 3, 3, 3]
    lts_low = LossThresholdSkip(threshold=1e-6)  # everything is above
    _, module = fit(lts_low, steps=4)
    assert module.trained == [8, 8, 8, 8] and lts_low.metrics()["backward_saved"] == 0.0


def test_metrics_are_logged_under_the_technique_name(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    sb = SelectiveBackprop(start=0, end=8, interrupt=0)
    trainer, _ = fit(sb, steps=8, logger=CSVLogger(tmp_path), log_every_n_steps=2)
    logged = trainer.callbacks[-1].last_metrics if hasattr(trainer.callbacks[-1], "last_metrics") else None
    from lightning_eff import EfficiencyHub

    logged = EfficiencyHub.of(trainer).last_metrics
    for key in ("kept_fraction", "backward_saved_fraction", "score_p50", "score_mean_kept"):
        assert f"efficiency/selective_backprop/{key}" in logged


def resume_techniques_sb():
    return [SelectiveBackprop(keep=0.5, start=2, end=14, interrupt=3)]


def resume_techniques_rs():
    return [RandomSubset(keep=0.5, start=0.25)]


def resume_techniques_lts():
    return [LossThresholdSkip(threshold=1.3, min_keep=2)]  # initial CE is ~ln(4)=1.39: some fall below


@pytest.mark.parametrize(
    "make_techniques", [resume_techniques_sb, resume_techniques_rs, resume_techniques_lts]
)
def test_resume_is_exact(make_techniques, tmp_path):
    states = assert_resume_equivalent(
        TinyClassifier, TinyDataModule, make_techniques, half_steps=8, tmp_path=tmp_path
    )
    (state,) = states.values()
    assert state["selected_batches"] > 0 and state["samples_seen"] == 16 * 8


@pytest.mark.ddp
@pytest.mark.parametrize(
    "make_techniques", [resume_techniques_sb, resume_techniques_rs, resume_techniques_lts]
)
def test_ddp_ranks_agree_on_selector_state(make_techniques, tmp_path):
    states = run_ddp(TinyClassifier, TinyDataModule, make_techniques, max_steps=6, tmp_path=tmp_path)
    assert_ranks_identical(states)
    (state,) = states[0]["techniques"].values()
    assert state["samples_seen"] == 6 * 8 and state["samples_kept"] < state["samples_seen"]


def test_preflight_refuses_two_batch_selectors():
    problems = preflight_problems([SelectiveBackprop(), RandomSubset()])
    assert any("two batch selectors are active (selective_backprop, random_subset)" in p for p in problems)


def test_preflight_refuses_a_module_without_per_sample_loss():
    problems = preflight_problems([SelectiveBackprop()], module=NoPerSampleLoss())
    assert any("does not implement per_sample_loss(batch)" in p for p in problems)


def test_preflight_refuses_a_module_without_the_mixin():
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(16, 4)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    problems = preflight_problems([RandomSubset()], module=Plain())
    assert any("mix in lightning_eff.EfficientModule" in p for p in problems)


def test_preflight_refuses_a_window_that_closes_before_it_opens_in_mixed_units():
    problems = preflight_problems([SelectiveBackprop(start=5, end=0.5)])  # max_steps=1: end is step 1
    assert any(
        "start=5steps (step 5) is not before end=0.5frac (step 1): widen the window" in p for p in problems
    )


@pytest.mark.parametrize(
    "cls, options, message",
    [
        (SelectiveBackprop, {"keep": 1.5}, "keep=1.5: Input should be less than 1"),
        (SelectiveBackprop, {"keep": 0.0}, "keep=0.0: Input should be greater than 0"),
        (RandomSubset, {"keep": 1.0}, "keep=1.0: Input should be less than 1"),
        (SelectiveBackprop, {"start": 0.9, "end": 0.5}, "start=0.9frac must be before end=0.5frac"),
        (LossThresholdSkip, {"threshold": -1.0}, "threshold=-1.0: Input should be greater than 0"),
        (LossThresholdSkip, {"min_keep": 0}, "min_keep=0: Input should be greater than or equal to 1"),
    ],
)
def test_bad_options_fail_at_construction(cls, options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        cls(**options)


@pytest.mark.parametrize(
    "recipe, cls",
    [
        ("selective_backprop", SelectiveBackprop),
        ("random_subset", RandomSubset),
        ("loss_threshold_skip", LossThresholdSkip),
    ],
)
def test_shipped_recipe_builds(recipe, cls):
    (technique,) = load_recipe(recipe).build()
    assert isinstance(technique, cls)
