"""InfoBatch: the epoch plan (pure), the opt-in sampler, training behaviour, resume, DDP, preflight."""

import lightning.pytorch as pl
import pytest
import torch
from data_helpers import InfoBatchData, RecordingClassifier
from torch.utils.data import DistributedSampler

from lightning_eff import EfficiencyHub
from lightning_eff.plugins.data import InfoBatch, InfoBatchSampler, SelectiveBackprop
from lightning_eff.plugins.data.info_batch_plan import prune_plan, shard
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

# --- the plan ---------------------------------------------------------------------------------


def test_plan_prunes_the_ratio_of_below_mean_samples_and_reweights_the_rest():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 0.15, 0.25])  # mean 1.55: six well learned
    seen = torch.ones(8, dtype=torch.bool)
    order, weights = prune_plan(scores, seen, prune_ratio=0.5, generator=torch.Generator().manual_seed(0))
    kept = set(order.tolist())
    assert {4, 5} <= kept and len(kept) == 2 + 3 and order.numel() == 5
    easy_kept = kept - {4, 5}
    assert all(weights[i] == 2.0 for i in easy_kept)
    assert weights[4] == weights[5] == 1.0


def test_plan_never_prunes_unseen_samples():
    scores = torch.tensor([0.0, 0.0, 1.0, 1.0])
    seen = torch.tensor([False, False, True, True])  # equal seen scores: nothing is below their mean
    order, weights = prune_plan(scores, seen, 0.9, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == [0, 1, 2, 3] and torch.all(weights == 1)


def test_shard_matches_torch_distributed_sampler():
    data = list(range(10))
    for drop_last in (False, True):
        for rank in (0, 1, 2):
            ours = shard(data, rank, 3, drop_last)
            theirs = list(
                DistributedSampler(data, num_replicas=3, rank=rank, shuffle=False, drop_last=drop_last)
            )
            assert ours == theirs


def test_sampler_without_a_plan_shuffles_every_sample_per_epoch():
    sampler = InfoBatchSampler(list(range(20)))
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == list(range(20)) and list(sampler) != first


# --- in training ------------------------------------------------------------------------------


def fit(technique, steps, data=None, module=None, **kwargs):
    module = module or RecordingClassifier()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=[technique])
    trainer.fit(module, datamodule=data or InfoBatchData())
    return trainer, module


class EpochLengths(pl.Callback):
    def __init__(self):
        self.batches: dict[int, int] = {}

    def on_train_batch_end(self, trainer, *args):
        self.batches[trainer.current_epoch] = self.batches.get(trainer.current_epoch, 0) + 1


def test_epochs_after_the_first_are_shorter_and_the_end_uses_full_data():
    ib, lengths = InfoBatch(prune_ratio=0.5, anneal=0.3), EpochLengths()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=40), callbacks=[ib, lengths])
    trainer.fit(RecordingClassifier(), datamodule=InfoBatchData())
    full = 64 // 8
    assert lengths.batches[0] == full
    assert all(lengths.batches[e] < full for e in (1, 2))
    last = max(lengths.batches)
    assert trainer.global_step >= 40 * 0.7 and ib.order.numel() == 64  # annealing: the full data again
    assert ib.metrics()["backward_saved"] == ib.samples_pruned > 0
    assert ib.most_dropped(3)[0][1] >= 1 and lengths.batches[last] <= full


def test_weights_of_kept_well_learned_samples_are_one_over_one_minus_ratio():
    ib = InfoBatch(prune_ratio=0.75, anneal=0.0)
    given = []

    class Spy(RecordingClassifier):
        def efficient_loss(self, batch, batch_idx=0):
            given.append(
                EfficiencyHub.of(self.trainer).hook.leff_sample_weights(
                    module=self, batch=batch, per_sample_loss=self.per_sample_loss(batch).detach()
                )
            )
            return super().efficient_loss(batch, batch_idx)

    fit(ib, steps=12, module=Spy())
    assert ib.plan_epoch == 1
    epoch1 = torch.cat([w[0] for w in given[8:]])
    assert set(epoch1.unique().tolist()) == {1.0, 4.0}
    assert torch.all(torch.cat([w[0] for w in given[:8]]) == 1.0)  # epoch 0: full data, unweighted


def test_scores_are_the_per_sample_training_losses():
    ib = InfoBatch()
    last_losses = []

    class Spy(RecordingClassifier):
        def per_sample_loss(self, batch):
            losses = super().per_sample_loss(batch)
            last_losses[:] = losses.detach().tolist()
            return losses

    fit(ib, steps=8, module=Spy())  # one full epoch: every sample scored once
    assert ib.seen.all() and ib.metrics()["kept_fraction_epoch"] == 1.0
    assert torch.allclose(ib.scores[ib.current], torch.tensor(last_losses))


def infobatch_techniques():
    return [InfoBatch(prune_ratio=0.5, anneal=0.2, seed=3)]


def test_resume_is_exact_across_pruned_epochs(tmp_path):
    states = assert_resume_equivalent(
        TinyClassifier, InfoBatchData, infobatch_techniques, half_steps=8, tmp_path=tmp_path
    )
    (state,) = states.values()
    assert state["plan_epoch"] >= 2 and state["samples_pruned"] > 0


@pytest.mark.ddp
def test_ddp_ranks_hold_identical_scores_and_plans(tmp_path):
    states = run_ddp(TinyClassifier, InfoBatchData, infobatch_techniques, max_steps=10, tmp_path=tmp_path)
    assert_ranks_identical(states)
    (state,) = states[0]["techniques"].values()
    assert state["seen"].all() and state["samples_pruned"] > 0  # both ranks' losses reached both ranks


# --- preflight --------------------------------------------------------------------------------


def test_preflight_refuses_a_loader_without_the_info_batch_sampler():
    problems = preflight_problems([InfoBatch()], data=TinyDataModule())
    assert any("sampler=InfoBatchSampler(dataset)" in p for p in problems)


def test_preflight_refuses_info_batch_with_a_batch_selector():
    problems = preflight_problems([InfoBatch(), SelectiveBackprop()], data=InfoBatchData())
    assert any("info_batch conflicts with selective_backprop" in p for p in problems)


def test_metrics_are_logged():
    trainer, _ = fit(InfoBatch(), steps=12, log_every_n_steps=1)
    logged = EfficiencyHub.of(trainer).last_metrics
    for key in ("kept_fraction", "backward_saved", "score_p50", "most_dropped_epochs"):
        assert f"efficiency/info_batch/{key}" in logged


def test_shipped_recipe_builds():
    (technique,) = load_recipe("info_batch").build()
    assert isinstance(technique, InfoBatch) and technique.config.prune_ratio == 0.5


def test_info_batch_dataloader_keeps_the_loader_and_refuses_a_custom_sampler():
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_eff.plugins.data import info_batch_dataloader
    from lightning_eff.testing import EpochSeededSampler

    data = TensorDataset(torch.arange(10).float())
    wrapped = info_batch_dataloader(DataLoader(data, batch_size=3, shuffle=True, drop_last=True))
    assert isinstance(wrapped.sampler, InfoBatchSampler) and wrapped.batch_size == 3 and wrapped.drop_last
    with pytest.raises(TypeError, match="sampler=InfoBatchSampler"):
        info_batch_dataloader(DataLoader(data, batch_size=3, sampler=EpochSeededSampler(10)))
