import example_techniques as ex
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_eff import EfficiencyHub
from lightning_eff.testing import TinyClassifier, TinyDataModule, quiet_trainer_kwargs


def fit(techniques, steps=4, **kwargs):
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=list(techniques))
    trainer.fit(TinyClassifier(), datamodule=TinyDataModule())
    return trainer


@pytest.fixture(autouse=True)
def _clear_calls():
    ex.CALLS.clear()


def test_hub_is_added_once_and_adopts_every_technique():
    techniques = [ex.SurgeryRecorder(), ex.DataRecorder()]
    trainer = fit(techniques)
    hubs = [cb for cb in trainer.callbacks if isinstance(cb, EfficiencyHub)]
    assert len(hubs) == 1
    assert all(t._hub is hubs[0] for t in techniques)


def test_hooks_run_once_per_event_in_plan_order_and_exit_hooks_in_reverse():
    fit([ex.SurgeryRecorder(), ex.PrecisionRecorder(), ex.DataRecorder()], steps=2)
    # precision_recorder declares before=surgery_recorder; data has the lowest phase of the rest.
    expected = ["data_recorder", "precision_recorder", "surgery_recorder"]
    assert [n for n, h in ex.CALLS if h == "setup"] == expected
    batch_end = [n for n, h in ex.CALLS if h == "on_train_batch_end"]
    assert batch_end == expected * 2
    assert [n for n, h in ex.CALLS if h == "on_fit_end"] == expected[::-1]


def test_hub_sits_before_checkpoint_callbacks(tmp_path):
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(max_steps=1, enable_checkpointing=True, default_root_dir=tmp_path),
        callbacks=[ModelCheckpoint(dirpath=tmp_path), ex.DataRecorder()],
    )
    trainer.fit(TinyClassifier(), datamodule=TinyDataModule())
    kinds = [type(cb).__name__ for cb in trainer.callbacks]
    assert kinds.index("EfficiencyHub") < kinds.index("ModelCheckpoint")


def test_technique_metrics_reach_the_loggers_under_efficiency_keys(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    fit([ex.WeightNoise(every=1)], steps=4, logger=logger, log_every_n_steps=2)
    text = (tmp_path / "run" / "version_0" / "metrics.csv").read_text()
    header, *rows = text.strip().splitlines()
    assert "efficiency/weight_noise/applied" in header
    column = header.split(",").index("efficiency/weight_noise/applied")
    values = [float(r.split(",")[column]) for r in rows if r.split(",")[column]]
    assert values[-1] == 4.0 and values == sorted(values)


def test_summary_lists_each_technique_with_its_time_and_claimed_savings():
    trainer = fit([ex.WeightNoise(every=2), ex.DataRecorder()], steps=6)
    summary = EfficiencyHub.of(trainer).summary
    rows = {r["technique"]: r for r in summary["techniques"]}
    assert set(rows) == {"weight_noise", "data_recorder"}
    assert rows["weight_noise"]["savings"] == {"noise_events": 3.0}
    assert rows["weight_noise"]["seconds_by_hook"]["on_train_batch_end"] > 0
    assert summary["global_step"] == 6


def test_without_a_hub_a_technique_hook_runs_directly():
    technique = ex.DataRecorder()
    technique.on_train_batch_end(None, None, None, None, 0)
    assert ex.CALLS == [("data_recorder", "on_train_batch_end")]


def test_a_trainer_without_techniques_gets_no_hub():
    trainer = fit([], steps=1)
    assert EfficiencyHub.of(trainer) is None


class _RecordingClassifier(TinyClassifier):
    def training_step(self, batch, batch_idx):
        loss = self.efficient_loss(batch, batch_idx)
        with torch.no_grad():
            self.expected = 2.0 * self.per_sample_loss(batch)[: len(batch[1]) // 2].mean() + 0.25
            self.plain = self.per_sample_loss(batch).mean()
        self.got = loss.detach()
        return loss


def test_batch_selection_weights_and_aux_losses_reach_the_loss():
    """HalfBatch keeps the first half, ConstantAuxLoss doubles weights and adds 0.25."""
    module = _RecordingClassifier()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=1), callbacks=[ex.HalfBatch(keep=0.5), ex.ConstantAuxLoss()])
    trainer.fit(module, datamodule=TinyDataModule())
    assert module.got.item() == pytest.approx(module.expected.item(), rel=1e-6)


def test_without_techniques_the_loss_is_the_plain_mean():
    module = _RecordingClassifier()
    pl.Trainer(**quiet_trainer_kwargs(max_steps=1)).fit(module, datamodule=TinyDataModule())
    assert module.got.item() == pytest.approx(module.plain.item(), rel=1e-6)
    assert module.got.item() != pytest.approx(module.expected.item(), rel=1e-3)
