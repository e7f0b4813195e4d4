"""The 8x8 handwritten digits that ship with scikit-learn (1,797 images, 10 classes): no download."""

from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Sampler, TensorDataset


class EpochShuffle(Sampler[int]):
    """Shuffles with a seed derived from (seed, epoch).

    A resumed run then sees exactly the order the uninterrupted run saw: the global random state is
    not part of a Lightning checkpoint, so ``shuffle=True`` would reshuffle differently after resume.
    """

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


class DigitsDataModule(pl.LightningDataModule):
    """Pixels scaled to [0, 1], flattened to 64 features; a fixed random validation split."""

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> None:
        """
        Args:
            batch_size: samples per training step.
            val_fraction: share of the images held out for validation.
            seed: seed of the split and of the per-epoch shuffle.
        """
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"DigitsDataModule: val_fraction={val_fraction} must be in (0, 1)")
        self.batch_size, self.val_fraction, self.seed = batch_size, val_fraction, seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        n_val = int(len(y) * self.val_fraction)
        val, train = order[:n_val], order[n_val:]
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])

    @property
    def steps_per_epoch(self) -> int:
        self.setup()
        return len(self.train_set) // self.batch_size

    def train_dataloader(self) -> DataLoader:
        sampler = EpochShuffle(len(self.train_set), self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)
