"""InfoBatch resumes exactly from checkpoints taken mid-epoch (pruned epochs are shorter, so
step-interval checkpoints land mid-epoch): the sampler continues where the checkpoint left it."""

import lightning.pytorch as pl
import pytest
import torch
from data_helpers import InfoBatchData
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_eff import Technique
from lightning_eff.plugins.data import InfoBatch
from lightning_eff.testing import (
    TinyClassifier,
    assert_resume_equivalent,
    quiet_trainer_kwargs,
    state_differences,
)


def techniques():
    return [InfoBatch(prune_ratio=0.5, anneal=0.2, seed=3)]


class EpochLengths(pl.Callback):
    def __init__(self):
        self.batches: dict[int, int] = {}

    def on_train_batch_end(self, trainer, *args):
        self.batches[trainer.current_epoch] = self.batches.get(trainer.current_epoch, 0) + 1


def epoch_ends(steps: int) -> list[int]:
    """Global steps at which the epochs of an uninterrupted run end."""
    lengths = EpochLengths()
    pl.seed_everything(0, workers=True)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps), callbacks=[*techniques(), lengths])
    trainer.fit(TinyClassifier(), datamodule=InfoBatchData())
    ends, total = [], 0
    for epoch in sorted(lengths.batches):
        total += lengths.batches[epoch]
        ends.append(total)
    return ends


# 8 full batches in epoch 0, then pruned epochs of 5 or 6: 10 and 11 are mid-epoch 1, 15 is in a
# later pruned epoch.
@pytest.mark.parametrize("half_steps", [10, 11, 15])
def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path, half_steps):
    ends = epoch_ends(2 * half_steps)
    assert half_steps not in ends and ends[0] == 8 and ends[1] - ends[0] < 8, ends  # really mid pruned epoch
    states = assert_resume_equivalent(TinyClassifier, InfoBatchData, techniques, half_steps, tmp_path)
    (state,) = states.values()
    assert state["samples_pruned"] > 0


class LastBatchSteps(Technique):
    """Records the steps whose batch Lightning flagged as its epoch's last (which drives epoch-end
    validation and ``trainer.is_last_batch``); kept in its state so that the resume helper compares it."""

    name = "last_batch_steps"
    phase = "data"

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.is_last_batch:
            self.steps.append(trainer.global_step)

    def state_dict(self):
        return {"steps": list(self.steps)}

    def load_state_dict(self, state_dict) -> None:
        self.steps = list(state_dict["steps"])


def test_resumed_epoch_ends_where_the_uninterrupted_one_did(tmp_path):
    states = assert_resume_equivalent(
        TinyClassifier, InfoBatchData, lambda: [*techniques(), LastBatchSteps()], 10, tmp_path
    )
    (steps,) = [state["steps"] for key, state in states.items() if key.startswith("LastBatchSteps")]
    assert len(steps) >= 2, steps  # epoch 0 and the resumed epoch 1


def test_resume_from_a_model_checkpoint_every_n_train_steps(tmp_path):
    """The user's setting: ModelCheckpoint every few steps, resume from one that is mid-epoch."""
    steps = 20

    def fit(ckpt_path=None, callbacks=()):
        pl.seed_everything(0, workers=True)
        trainer = pl.Trainer(
            **quiet_trainer_kwargs(max_steps=steps, enable_checkpointing=bool(callbacks)),
            callbacks=[*techniques(), *callbacks],
        )
        module = TinyClassifier()
        trainer.fit(module, datamodule=InfoBatchData(), ckpt_path=ckpt_path)
        return module

    every = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_top_k=-1, filename="{step}")
    full = fit(callbacks=[every])
    assert 15 not in epoch_ends(steps)
    resumed = fit(ckpt_path=tmp_path / "step=15.ckpt")
    problems = state_differences(full.state_dict(), resumed.state_dict(), "weights")
    assert not problems, problems


class EpochScheduledClassifier(TinyClassifier):
    """Steps its learning rate at epoch ends: the resumed epoch must end where the uninterrupted one did."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def test_epoch_interval_schedulers_step_at_the_end_of_the_resumed_epoch(tmp_path):
    assert_resume_equivalent(EpochScheduledClassifier, InfoBatchData, techniques, 10, tmp_path)


def test_batch_positions_follow_the_iteration_not_lightnings_carried_on_batch_idx():
    from lightning_eff.module import batch_sample_indices
    from lightning_eff.plugins.data import InfoBatchSampler

    sampler = InfoBatchSampler(list(range(12)), shuffle=False)
    batch = torch.zeros(4)
    iter(sampler)  # an ordinary loader restarted mid-epoch: it serves from the first sample...
    assert batch_sample_indices(sampler, 2, 4, batch).tolist() == [0, 1, 2, 3]  # ...while batch_idx is 2
    assert batch_sample_indices(sampler, 3, 4, batch).tolist() == [4, 5, 6, 7]
    sampler.set_plan(list(range(12)), epoch=0, start=8)  # InfoBatch's resume point: batch 2 of 3 done
    iter(sampler)
    assert batch_sample_indices(sampler, 2, 4, batch).tolist() == [8, 9, 10, 11]
    iter(sampler)  # a fresh epoch
    assert batch_sample_indices(sampler, 0, 4, batch).tolist() == [0, 1, 2, 3]
