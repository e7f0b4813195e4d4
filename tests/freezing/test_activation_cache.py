"""Activation caching of a frozen prefix: exact (same weights as without it), skips the prefix
forwards, upgrades when the prefix grows, rebuilt after resume, per-rank under DDP, verified on first
use, and refused before training when it could not be exact."""

import functools
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from freezing_helpers import preflight_problems_for_run, quiet_trainer_kwargs
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_eff.plugins.data import InfoBatchSampler, RandomSubset
from lightning_eff.plugins.freezing import FreezeOut, ProgressiveFreezing, SelectiveFinetuning
from lightning_eff.plugins.freezing.activation_cache import CachePolicyError
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    _fit,
    _StopAndSave,
    assert_ranks_identical,
    assert_resume_equivalent,
    run_ddp,
    state_differences,
)

CACHE = dict(cache_activations=True, static_data=True)


# --- data and models (module level: DDP pickles them) -----------------------------------------------


class IndexedDataModule(TinyDataModule):
    """TinyDataModule sampling through InfoBatchSampler, which records the indices of every batch."""

    shuffle = True

    def train_dataloader(self) -> DataLoader:
        dataset = TensorDataset(self.x, self.y)
        sampler = InfoBatchSampler(dataset, shuffle=self.shuffle, seed=self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True)


class FixedShardDataModule(IndexedDataModule):
    shuffle = False  # each DDP rank gets the same samples every epoch: every batch is served


class StaticIndexedDataModule(IndexedDataModule):
    static_data = True


class AugmentedDataModule(IndexedDataModule):
    static_data = False


class NoisyDataModule(IndexedDataModule):
    """Claims nothing, adds fresh noise every epoch (augmentation): the first cached batch must catch it."""

    def train_dataloader(self) -> DataLoader:
        self.x = self.x + 0.1 * torch.randn(self.x.shape)
        return super().train_dataloader()

    def val_dataloader(self):
        return None


class CountingClassifier(TinyClassifier):
    """Counts the forwards of each block's Linear (a cached block's forward is not run at all)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = [0] * len(self.blocks)
        for i, block in enumerate(self.blocks):
            block[0].register_forward_hook(functools.partial(self._count, i))

    def _count(self, i, module, args, output):
        if self.training:
            self.calls[i] += 1


class DropoutPrefixClassifier(TinyClassifier):
    def __init__(self, dropout_block: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.blocks[dropout_block].append(nn.Dropout(0.1))


class BatchNormPrefixClassifier(TinyClassifier):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks[0].append(nn.BatchNorm1d(self.hparams.hidden))


class SkipAroundTheCut(TinyClassifier):
    """The head also reads block 0's output: a cut after block 1 or 2 is not a chain."""

    def forward(self, x):
        h0 = self.blocks[0](x)
        return self.head(self.blocks[2](self.blocks[1](h0)) + h0)


class IndexCarryingData(TinyDataModule):
    static_data = True

    def train_dataloader(self) -> DataLoader:
        dataset = TensorDataset(torch.arange(len(self.x)), self.x, self.y)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)


class IndexCarryingClassifier(CountingClassifier):
    def sample_indices(self, batch):
        return batch[0]

    def per_sample_loss(self, batch):
        _, x, y = batch
        return F.cross_entropy(self(x), y, reduction="none")


def fit(techniques, steps, module_cls=CountingClassifier, data_cls=IndexedDataModule, **kwargs):
    pl.seed_everything(0)
    module = module_cls(**kwargs.pop("module_kwargs", {}))
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps, **kwargs), callbacks=list(techniques))
    trainer.fit(module, datamodule=data_cls())
    return trainer, module


def cache_metrics(trainer):
    (technique,) = [cb for cb in trainer.callbacks if hasattr(cb, "cache")]
    return technique.metrics()


# --- exactness and skipped work ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        # 2 of 4 blocks frozen after step 4: epoch 0 caches, later epochs are served
        lambda cache: ProgressiveFreezing(start=2, end=4, level=0.5, **cache),
        # the prefix grows across epochs (1, 2, 3 blocks): the cache is upgraded, not rebuilt
        lambda cache: ProgressiveFreezing(start=8, end=24, level=0.75, **cache),
        # a fixed frozen prefix from step 0 (the last block trains)
        lambda cache: SelectiveFinetuning(train_last_blocks=1, **cache),
    ],
    ids=["prefix-2", "growing-prefix", "selective"],
)
def test_caching_gives_the_same_weights_and_skips_prefix_forwards(make):
    steps = 48  # 6 epochs of 8 batches
    plain_trainer, plain = fit([make({})], steps)
    cached_trainer, cached = fit([make(CACHE)], steps)
    problems = state_differences(plain.state_dict(), cached.state_dict(), "weights")
    assert not problems, "\n".join(problems)  # bit-identical on CPU
    metrics = cache_metrics(cached_trainer)
    skipped = sum(plain.calls) - sum(cached.calls)
    assert skipped == metrics["cache_block_forwards_skipped"] > 0
    assert metrics["cache_served_batch_fraction"] >= 0.4
    # the first block ran fewer times, the blocks that never froze as often
    frozen = int(metrics["frozen_prefix_blocks"])
    assert cached.calls[0] < plain.calls[0] and cached.calls[frozen:] == plain.calls[frozen:]


def test_growing_prefix_upgrades_the_cache_from_the_previous_cut():
    """When the prefix grows from s to t blocks, a batch stored at s runs only blocks s..t-1."""
    trainer, module = fit([ProgressiveFreezing(start=8, end=24, level=0.75, **CACHE)], 48)
    technique = trainer.callbacks[0]
    # prefix 1 block after step 14, 2 after step 19, 3 after step 24; epochs of 8 steps: the cut is 1
    # in epochs 1-2 and 3 from epoch 3 on (it moves at epoch starts, and from 0 at any step)
    assert technique.cache.verified == {1, 3} and not technique.cache.broken
    # in epoch 3 the batches stored at cut 1 ran blocks 1 and 2 only, and were stored at cut 3
    assert module.calls[1] > module.calls[0]


def test_sample_indices_carried_by_the_batch():
    plain_trainer, plain = fit(
        [ProgressiveFreezing(start=2, end=4, level=0.5)], 32, IndexCarryingClassifier, IndexCarryingData
    )
    cached_trainer, cached = fit(
        [ProgressiveFreezing(start=2, end=4, level=0.5, cache_activations=True)],
        32,
        IndexCarryingClassifier,
        IndexCarryingData,
    )
    assert not state_differences(plain.state_dict(), cached.state_dict())
    assert cache_metrics(cached_trainer)["cache_block_forwards_skipped"] > 0


# --- resume and DDP ---------------------------------------------------------------------------------


def resume_techniques():
    return [ProgressiveFreezing(start=2, end=4, level=0.5, **CACHE)]


def test_resume_with_caching_is_exact(tmp_path):
    # the checkpoint (step 16) falls where the cache serves; the resumed run starts with an empty one
    states = assert_resume_equivalent(
        CountingClassifier, IndexedDataModule, resume_techniques, half_steps=16, tmp_path=tmp_path
    )
    (state,) = states.values()
    assert state["frozen_blocks"] == [0, 1]
    assert set(state) == {"block_names", "frozen_blocks", "extra"}  # nothing of the cache


class RecordStored(pl.Callback):
    """Over the epoch a mid-epoch resume continues: the samples trained on, and those stored."""

    def __init__(self):
        self.epoch, self.trained, self.stored = None, set(), set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.epoch is None:
            self.epoch = trainer.current_epoch
        if trainer.current_epoch == self.epoch:
            rows = trainer.datamodule.x
            self.trained |= {int((rows == sample).all(dim=1).nonzero()[0]) for sample in batch[0]}
            cache = next(cb for cb in trainer.callbacks if isinstance(cb, ProgressiveFreezing)).cache
            self.stored = set(torch.nonzero(cache.levels).flatten().tolist())


@pytest.mark.parametrize("half_steps", [13, 19])
def test_a_mid_epoch_resume_stores_no_output_under_a_sample_it_did_not_train_on(tmp_path, half_steps):
    # An ordinary DataLoader restarts its epoch on a mid-epoch resume while Lightning's batch_idx
    # carries on, so batch_idx no longer addresses InfoBatchSampler's recorded indices: outputs were
    # stored under other samples' keys, to be served later in place of theirs.
    def resumed(cache: dict, extra=()):
        def techniques():
            return [ProgressiveFreezing(start=2, end=4, level=0.5, **cache)]

        ckpt = Path(tmp_path) / f"half-{bool(cache)}.ckpt"
        _fit(CountingClassifier, IndexedDataModule, techniques, 2 * half_steps, {}, extra_callbacks=[_StopAndSave(half_steps, ckpt)])
        return _fit(CountingClassifier, IndexedDataModule, techniques, 2 * half_steps, {}, extra_callbacks=list(extra), ckpt_path=ckpt)[1]

    record = RecordStored()
    cached = resumed(CACHE, [record])
    assert record.stored <= record.trained
    # and the resumed run still equals the same resume without the cache
    assert not state_differences(cached.state_dict(), resumed({}).state_dict(), "weights")


class ReportCache(pl.Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_fit_end(self, trainer, pl_module):
        metrics = next(cb for cb in trainer.callbacks if hasattr(cb, "cache")).metrics()
        Path(self.folder, f"cache{trainer.global_rank}.json").write_text(json.dumps(metrics))


def ddp_techniques(folder):
    return [ProgressiveFreezing(start=1, end=2, level=0.5, **CACHE), ReportCache(folder)]


@pytest.mark.ddp
def test_ddp_ranks_cache_their_own_samples_and_stay_identical(tmp_path):
    states = run_ddp(
        CountingClassifier,
        FixedShardDataModule,
        functools.partial(ddp_techniques, str(tmp_path)),
        max_steps=16,  # 4 steps per epoch per rank
        tmp_path=tmp_path,
        strategy="ddp_spawn_find_unused_parameters_true",
    )
    assert_ranks_identical(states)
    for rank in range(2):
        metrics = json.loads((tmp_path / f"cache{rank}.json").read_text())
        assert metrics["cache_block_forwards_skipped"] >= 8  # 2 blocks x 4 served batches at least


# --- verification on first use ----------------------------------------------------------------------


def test_data_that_changes_between_epochs_is_caught_at_the_first_cached_batch():
    with pytest.raises(CachePolicyError, match="the training data is not static"):
        fit(
            [ProgressiveFreezing(start=2, end=4, level=0.5, **CACHE)],
            32,
            data_cls=NoisyDataModule,
            reload_dataloaders_every_n_epochs=1,
        )


def test_a_skip_connection_around_the_cut_is_detected_and_that_cut_not_served():
    plain_trainer, plain = fit([ProgressiveFreezing(start=2, end=4, level=0.5)], 32, SkipAroundTheCut)
    with pytest.warns(UserWarning, match="skip connection"):
        cached_trainer, cached = fit(
            [ProgressiveFreezing(start=2, end=4, level=0.5, **CACHE)], 32, SkipAroundTheCut
        )
    assert not state_differences(plain.state_dict(), cached.state_dict())
    technique = cached_trainer.callbacks[0]
    assert 2 in technique.cache.broken  # the cut after block 1 (block 0's output is used later)
    assert technique.cache.verified == {1}  # the cut after block 0 is fine


# --- preflight --------------------------------------------------------------------------------------


def two_blocks(**options):
    """Freezes 2 of the 4 blocks by step 10 of 20: the prefix that can freeze is blocks 0 and 1."""
    return ProgressiveFreezing(start=0.1, end=0.5, level=0.5, **options)


def problems(technique, module=None, data=None, max_steps=20):
    return preflight_problems_for_run(
        [technique],
        max_steps=max_steps,
        module=module,
        data=data if data is not None else IndexedDataModule(),
    )


def test_a_correct_setup_passes_preflight():
    assert problems(two_blocks(**CACHE)) == []
    assert problems(two_blocks(cache_activations=True), data=StaticIndexedDataModule()) == []
    # dropout after the blocks the schedule can freeze (2 of 4) does not matter
    assert problems(two_blocks(**CACHE), module=DropoutPrefixClassifier(dropout_block=2)) == []


def test_preflight_refuses_dropout_and_batch_statistics_in_the_prefix():
    (problem,) = problems(two_blocks(**CACHE), module=DropoutPrefixClassifier(dropout_block=1))
    assert "deterministic prefix" in problem and "blocks.1.2 (Dropout p=0.1)" in problem
    (problem,) = problems(FreezeOut(**CACHE), module=BatchNormPrefixClassifier(), max_steps=40)
    assert "blocks.0.2 (BatchNorm1d: batch statistics in training mode)" in problem

    class AttentionLike(TinyClassifier):  # functional dropout, as transformers' attention modules
        def __init__(self):
            super().__init__()
            self.blocks[0].attention_dropout = 0.1

    (problem,) = problems(two_blocks(**CACHE), module=AttentionLike())
    assert "blocks.0 (attention_dropout=0.1)" in problem


def test_preflight_needs_static_data_and_sample_indices():
    (problem,) = problems(two_blocks(cache_activations=True))
    assert "needs static training data" in problem and "static_data=True" in problem
    (problem,) = problems(two_blocks(**CACHE), data=AugmentedDataModule())
    assert "declares static_data=False" in problem
    (problem,) = problems(two_blocks(**CACHE), data=TinyDataModule())
    assert "keys the cache by sample index" in problem and "InfoBatchSampler" in problem


def test_preflight_refuses_a_cache_over_its_memory_bound():
    # 64 samples x 32 floats at the deepest cut = 8 KiB
    (problem,) = problems(two_blocks(cache_max_bytes=4096, **CACHE))
    assert "about 8.0 KiB" in problem and "cache_max_bytes=4096" in problem
    assert problems(two_blocks(cache_max_bytes=8192, **CACHE)) == []


def test_preflight_refuses_batch_selectors_and_nothing_to_cache():
    found = preflight_problems_for_run(
        [two_blocks(**CACHE), RandomSubset(keep=0.5)], max_steps=20, data=IndexedDataModule()
    )
    assert any("cannot be combined with random_subset" in p for p in found)
    (problem,) = problems(SelectiveFinetuning(preset="bias", **CACHE))
    assert "nothing to cache" in problem
