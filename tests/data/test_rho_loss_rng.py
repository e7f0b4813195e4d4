"""RhoLoss's set-up (reference training and scoring) leaves the run's global random stream alone."""

import lightning.pytorch as pl
import pytest
import torch
from data_helpers import InfoBatchData, LabelReference
from lightning.pytorch.callbacks import Checkpoint

from lightning_eff.plugins.data import RhoLoss
from lightning_eff.testing import TinyClassifier, quiet_trainer_kwargs


class RngBefore(pl.Callback):
    """Records the CPU random state in on_train_start before the techniques' set-up (the hub that
    runs them sits after the user's callbacks)."""

    def __init__(self, states: list[torch.Tensor]) -> None:
        self.states = states

    def on_train_start(self, trainer, pl_module) -> None:
        self.states.append(torch.get_rng_state())


class RngAfter(Checkpoint, RngBefore):
    """The same after the set-up: the hub runs before Checkpoint callbacks."""


@pytest.mark.parametrize(
    "options",
    [
        {"holdout": "cross_fit", "reference_steps": 4},  # trains two references, scores every sample
        {"reference": LabelReference()},  # scores every sample with a given reference
    ],
    ids=["cross_fit", "given_reference"],
)
def test_set_up_does_not_advance_the_global_random_stream(options):
    states: list[torch.Tensor] = []
    technique = RhoLoss(**options)
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(max_steps=1, enable_checkpointing=True),
        callbacks=[RngBefore(states), technique, RngAfter(states)],
    )
    trainer.fit(TinyClassifier(), datamodule=InfoBatchData())
    assert technique.table is not None and len(states) == 2  # the set-up ran between the two records
    assert torch.equal(states[0], states[1])
