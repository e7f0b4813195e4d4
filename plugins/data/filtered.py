"""Training on what an offline filter kept: a dataset view and a data-module wrapper that read an
index file written by ``lightning-eff data dedup|filter``.

    from lightning_eff.plugins.data import filtered_datamodule
    data = filtered_datamodule(MyDataModule(), "kept.json")   # trains on the kept samples only

The index refers to positions in the *training* dataset, in the order of the JSONL the filter read:
build the training dataset from that file in that order. Validation and test loaders are unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .index_file import IndexFileError, check_indices, read_index


class IndexFilteredDataset(Dataset):
    """The samples ``kept`` of ``dataset``, in index order. ``index`` is a path to an index file or a
    sequence of indices."""

    def __init__(self, dataset: Any, index: str | os.PathLike | Sequence[int]) -> None:
        n = len(dataset)
        if isinstance(index, (str, os.PathLike)):
            kept, total, self.meta = read_index(index)
            source = os.fspath(index)
            if total is not None and total != n:
                raise IndexFileError(
                    f"{source} was written for {total} samples but the dataset has {n}: "
                    "filter the same data the dataset is built from"
                )
        else:
            if isinstance(index, (bytes, dict)) or not hasattr(index, "__iter__"):
                raise IndexFileError(f"index must be an index file's path or a sequence of ints, got {type(index).__name__}")
            values = index.tolist() if hasattr(index, "tolist") else list(index)  # numpy arrays, tensors
            # the same checks as a file's: whole numbers (not floats, bools, strings), distinct, in range
            kept, self.meta, source = check_indices(values, n, "the index"), {}, "the index"
        bad = [i for i in kept if not 0 <= i < n]
        if bad:
            raise IndexFileError(f"{source} holds indices outside [0, {n}): {bad[:5]}")
        self.dataset, self.kept = dataset, kept

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.kept[i]]


def filtered_loader(loader: DataLoader, index: str | os.PathLike | Sequence[int]) -> DataLoader:
    """The same DataLoader settings over ``IndexFilteredDataset(loader.dataset, index)``."""
    return DataLoader(
        IndexFilteredDataset(loader.dataset, index),
        batch_size=loader.batch_size,
        shuffle=isinstance(loader.sampler, RandomSampler),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
    )


class FilteredDataModule(pl.LightningDataModule):
    """Wraps a data module: its training loader iterates only the indexed samples; all else is the
    wrapped module's."""

    def __init__(self, inner: pl.LightningDataModule, index: str | os.PathLike | Sequence[int]) -> None:
        super().__init__()
        self.inner, self.index = inner, index

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str) -> None:
        self.inner.setup(stage)

    def teardown(self, stage: str) -> None:
        self.inner.teardown(stage)

    def train_dataloader(self) -> DataLoader:
        return filtered_loader(self.inner.train_dataloader(), self.index)

    def val_dataloader(self):
        return self.inner.val_dataloader()

    def test_dataloader(self):
        return self.inner.test_dataloader()

    def __getattr__(self, name: str) -> Any:  # anything else (holdout_dataloader, sizes...) is the inner one's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def filtered_datamodule(datamodule: pl.LightningDataModule, index: str | os.PathLike | Sequence[int]) -> FilteredDataModule:
    """``datamodule`` training only on the samples of ``index`` (an index file or indices)."""
    return FilteredDataModule(datamodule, index)
