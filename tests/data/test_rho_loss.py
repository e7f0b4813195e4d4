"""RhoLoss: reducible-loss selection, reference sources and cache, resume, DDP, preflight."""

import lightning.pytorch as pl
import pytest
import torch
from data_helpers import InfoBatchData, LabelReference, NoHparamsClassifier, RecordingClassifier

from lightning_eff import ConfigError
from lightning_eff.plugins.data import RandomSubset, RhoLoss
from lightning_eff.plugins.data import reference as ref
from lightning_eff.plugins.data.selection import reducible_loss, top_fraction
from lightning_eff.recipe import load_recipe
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_ranks_identical,
    assert_resume_equivalent,
    preflight_problems,
    quiet_trainer_kwargs,
)


def fit(technique, steps=8, module=None, data=None, **kwargs):
    module = module or RecordingClassifier()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=[technique])
    trainer.fit(module, datamodule=data or InfoBatchData())
    return trainer, module


# --- the math -------------------------------------------------------------------------------------


def test_top_fraction_keeps_the_largest_scores_in_batch_order_ties_to_the_earlier():
    scores = torch.tensor([0.1, 3.0, 2.0, 3.0, -1.0])
    assert top_fraction(scores, 0.4).tolist() == [1, 3]
    assert top_fraction(torch.tensor([1.0, 1.0, 1.0]), 0.5).tolist() == [0]
    assert reducible_loss(torch.tensor([2.0]), torch.tensor([0.5])).tolist() == [1.5]


def test_folds_partition_the_samples_reproducibly():
    a, b = ref.folds(11, 2, seed=3)
    assert sorted(torch.cat([a, b]).tolist()) == list(range(11)) and abs(a.numel() - b.numel()) <= 1
    assert all(torch.equal(x, y) for x, y in zip(ref.folds(11, 2, 3), (a, b)))


# --- in training ----------------------------------------------------------------------------------


class BatchSpy(RecordingClassifier):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.full_labels, self.kept_labels = [], []

    def per_sample_loss(self, batch):
        (self.kept_labels if torch.is_grad_enabled() else self.full_labels).append(batch[1].tolist())
        return super().per_sample_loss(batch)


def test_online_reference_keeps_the_largest_reducible_loss():
    # reference loss = 100 x label: the kept quarter of each batch are its smallest labels
    rho = RhoLoss(keep=0.25, reference=LabelReference())
    _, module = fit(rho, steps=6, module=BatchSpy(), data=TinyDataModule())
    assert module.trained == [2] * 6 and module.scored == [8] * 6
    for full, kept in zip(module.full_labels, module.kept_labels):
        dropped = list(full)
        for y in kept:
            dropped.remove(y)
        assert max(kept) <= min(dropped)
    m = rho.metrics()
    assert m["kept_fraction"] == 0.25 and m["reference_forwards"] == 6.0


def test_cross_fit_precomputes_one_reference_loss_per_sample_and_counts_drops():
    rho = RhoLoss(keep=0.5, reference_steps=5)
    _, module = fit(rho, steps=8)
    assert rho.table.shape == (64,) and torch.isfinite(rho.table).all()
    assert module.trained == [4] * 8
    assert int(rho.drop_counts.sum()) == 8 * 4 == rho.metrics()["backward_saved"]
    (index, times), *_ = rho.most_dropped(3)
    assert 0 <= index < 64 and times >= 1
    assert "reference_loss_mean" in rho.metrics()


def test_cache_is_written_then_read_instead_of_training(tmp_path, monkeypatch):
    cache = tmp_path / "ref.pt"
    first = RhoLoss(keep=0.5, reference_steps=5, cache=str(cache))
    fit(first, steps=2)
    assert cache.exists()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached reference losses should have been used")

    monkeypatch.setattr(ref, "train_reference", no_training)
    second = RhoLoss(keep=0.5, reference_steps=5, cache=str(cache))
    fit(second, steps=2)
    assert torch.equal(first.table, second.table)


def test_cache_of_another_dataset_is_refused(tmp_path):
    cache = tmp_path / "ref.pt"
    ref.save_cache(cache, torch.zeros(10), {})
    with pytest.raises(ConfigError, match="holds \\(10,\\) reference losses but the training set has 64"):
        fit(RhoLoss(cache=str(cache)), steps=1)


class LabelModule(torch.nn.Module):
    """A reference named by class path: loss = scale x label (a Module, as class paths require)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, batch):
        return batch[1].float() * self.scale


def test_reference_from_a_checkpoint_and_from_state_dict_files(tmp_path):
    from safetensors.torch import save_file

    trainer, module = fit(RhoLoss(keep=0.5, reference=LabelReference()), steps=1, module=TinyClassifier(hidden=8))
    weights = module.state_dict()
    trainer.save_checkpoint(tmp_path / "ref.ckpt")
    torch.save(weights, tmp_path / "ref.pt")
    save_file(weights, str(tmp_path / "ref.safetensors"))
    for name in ("ref.ckpt", "ref.pt", "ref.safetensors"):
        # The checkpoint's own hyperparameters (hidden=8) rebuild it; the state dicts need the
        # training module's size given (its own hidden=32 would not fit).
        hparams = None if name == "ref.ckpt" else {"hidden": 8}
        rho = RhoLoss(keep=0.5, reference=str(tmp_path / name), reference_hparams=hparams)
        fit(rho, steps=2, module=TinyClassifier())
        assert rho.table.shape == (64,), name
        loaded = rho.reference_object.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in weights.items()), name


def test_a_state_dict_loads_into_reference_class(tmp_path):
    torch.save({}, tmp_path / "label.pt")  # LabelModule has no weights: an empty state dict fits
    rho = RhoLoss(
        keep=0.25, reference=str(tmp_path / "label.pt"), reference_class="test_rho_loss:LabelModule",
        reference_hparams={"scale": 100.0},
    )
    fit(rho, steps=2)
    assert torch.equal(rho.table, InfoBatchData().y.float() * 100)


def test_reference_from_a_class_path_built_with_reference_hparams():
    rho = RhoLoss(keep=0.25, reference="test_rho_loss:LabelModule", reference_hparams={"scale": 100.0})
    fit(rho, steps=2)
    assert torch.equal(rho.table, InfoBatchData().y.float() * 100)


def test_a_state_dict_that_does_not_fit_names_the_options_to_change(tmp_path):
    torch.save(TinyClassifier(hidden=8).state_dict(), tmp_path / "small.pt")
    problems = preflight_problems([RhoLoss(reference=str(tmp_path / "small.pt"))])
    assert any("does not fit TinyClassifier" in p and "reference_hparams" in p for p in problems), problems


def resume_cross_fit():
    return [RhoLoss(keep=0.5, reference_steps=5, start=2)]


def resume_online():
    return [RhoLoss(keep=0.25, reference=LabelReference(), interrupt=3)]


def test_resume_is_exact_with_precomputed_reference(tmp_path):
    states = assert_resume_equivalent(TinyClassifier, InfoBatchData, resume_cross_fit, half_steps=8, tmp_path=tmp_path)
    (state,) = states.values()
    assert state["reference_losses"].shape == (64,) and int(state["drop_counts"].sum()) == 14 * 4


def test_resume_is_exact_with_an_online_reference(tmp_path):
    states = assert_resume_equivalent(TinyClassifier, TinyDataModule, resume_online, half_steps=8, tmp_path=tmp_path)
    (state,) = states.values()
    assert state["reference_losses"] is None and state["selected_batches"] > 0


@pytest.mark.ddp
def test_ddp_ranks_share_the_reference_losses_and_select_alike(tmp_path):
    from lightning_eff.testing import run_ddp

    states = run_ddp(TinyClassifier, InfoBatchData, resume_cross_fit, max_steps=4, tmp_path=tmp_path)
    assert_ranks_identical(states)
    (state,) = states[0]["techniques"].values()
    assert state["reference_losses"].shape == (64,)
    # steps 2 and 3 select (start=2); every rank counts both ranks' drops: 2 ranks x 2 steps x 4 samples
    assert int(state["drop_counts"].sum()) == 2 * 2 * 4


# --- preflight ------------------------------------------------------------------------------------


def test_preflight_cross_fit_without_indices_has_no_reference():
    problems = preflight_problems([RhoLoss()])  # TinyDataModule: no index-tracking sampler
    assert any("rho_loss has no reference available: holdout='cross_fit'" in p for p in problems)


def test_preflight_datamodule_holdout_without_a_holdout_loader():
    problems = preflight_problems([RhoLoss(holdout="datamodule")])
    assert any("the data module has no holdout_dataloader()" in p for p in problems)


def test_preflight_module_that_cannot_be_rebuilt():
    problems = preflight_problems([RhoLoss()], module=NoHparamsClassifier(marker=1), data=InfoBatchData())
    assert any("cannot build a fresh NoHparamsClassifier" in p for p in problems)


def test_preflight_reference_that_cannot_be_loaded():
    problems = preflight_problems([RhoLoss(reference="no_such_module_xyz:Model")])
    assert any("rho_loss cannot load its reference" in p and "no_such_module_xyz" in p for p in problems)


def test_preflight_refuses_a_second_batch_selector():
    problems = preflight_problems([RhoLoss(reference=LabelReference()), RandomSubset()])
    assert any("two batch selectors are active (rho_loss, random_subset)" in p for p in problems)


def test_datamodule_holdout_trains_the_reference_there():
    class WithHoldout(TinyDataModule):
        def holdout_dataloader(self):
            return TinyDataModule(seed=1).train_dataloader()

    rho = RhoLoss(keep=0.5, holdout="datamodule", reference_steps=3)
    _, module = fit(rho, steps=2, data=WithHoldout())
    assert module.trained == [4, 4] and rho.metrics()["reference_forwards"] == 2.0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"keep": 1.0}, "keep=1.0: Input should be less than 1"),
        ({"keep": 0.0}, "keep=0.0: Input should be greater than 0"),
        ({"holdout": "val"}, "holdout='val'"),
        ({"reference_steps": 0}, "reference_steps=0"),
    ],
)
def test_bad_options_fail_at_construction(options, message):
    with pytest.raises(ConfigError, match=message):
        RhoLoss(**options)


def test_shipped_recipe_builds():
    (technique,) = load_recipe("rho_loss").build()
    assert isinstance(technique, RhoLoss)
