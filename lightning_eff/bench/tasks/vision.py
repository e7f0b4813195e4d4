"""``vision``: a small CNN on scikit-learn's bundled 8x8 digits (1797 images, 10 classes), upsampled.

Shipped with scikit-learn, so nothing is downloaded. ``label_noise`` flips that fraction of the
*training* labels to another class (validation labels stay clean): the regime where data-filtering
techniques are supposed to pay off.
"""

from __future__ import annotations

import functools
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_eff.bench.tasks.base import BenchModule, BenchTask
from lightning_eff.errors import ConfigError, require

CLASSES = 10
DATA_SEED = 0  # the split and the noisy labels are fixed; repeats vary init and data order


@functools.lru_cache(maxsize=4)
def digits_splits(label_noise: float, val_fraction: float = 0.2) -> dict[str, torch.Tensor]:
    """Stratified train/validation split of the digits, pixels scaled to [0, 1], noisy train labels."""
    datasets = require("sklearn.datasets", "the 'vision' bench task", extra="tasks", package="scikit-learn")
    model_selection = require("sklearn.model_selection", "the 'vision' bench task", extra="tasks", package="scikit-learn")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train_idx, val_idx = model_selection.train_test_split(
        list(range(len(y))), test_size=val_fraction, random_state=DATA_SEED, stratify=digits.target
    )
    train_idx, val_idx = torch.tensor(sorted(train_idx)), torch.tensor(sorted(val_idx))
    y_train = flip_labels(y[train_idx], label_noise, CLASSES, seed=DATA_SEED)
    return {"x_train": x[train_idx], "y_train": y_train, "y_train_clean": y[train_idx], "x_val": x[val_idx], "y_val": y[val_idx]}


def flip_labels(labels: torch.Tensor, fraction: float, classes: int, seed: int) -> torch.Tensor:
    """Replace ``round(fraction * N)`` labels, chosen at random, by a different random class."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"label_noise={fraction} must be in [0, 1)")
    g = torch.Generator().manual_seed(seed)
    noisy = labels.clone()
    count = round(fraction * len(labels))
    chosen = torch.randperm(len(labels), generator=g)[:count]
    shift = torch.randint(1, classes, (count,), generator=g)  # never the true class
    noisy[chosen] = (labels[chosen] + shift) % classes
    return noisy


class DigitsDataModule(pl.LightningDataModule):
    def __init__(self, label_noise: float = 0.0, batch_size: int = 64, seed: int | None = None) -> None:
        super().__init__()
        self.label_noise, self.batch_size = label_noise, batch_size
        self.seed = torch.initial_seed() % 2**31 if seed is None else seed  # the run's, after seed_everything
        self.splits = digits_splits(label_noise)

    def train_dataloader(self) -> DataLoader:
        # InfoBatchSampler shuffles like shuffle=True and records the sample indices that InfoBatch and
        # RHO-LOSS's per-sample reference losses are addressed by (both arms sample the same way).
        from lightning_eff.plugins.data import InfoBatchSampler

        data = TensorDataset(self.splits["x_train"], self.splits["y_train"])
        sampler = InfoBatchSampler(data, seed=self.seed)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.splits["x_val"], self.splits["y_val"]), batch_size=512)


class DigitsCNN(BenchModule):
    """Conv stages in ``self.blocks`` (input side first) and a Linear ``self.head``.

    The 8x8 images are upsampled to ``resolution`` inside the first stage, so a step is conv compute
    (not Python and Lightning overhead) while the parameter count stays small: about 150k at the
    defaults, few enough not to memorise the flipped labels of ``--label-noise`` within the task's
    13 epochs (a 600k-parameter variant peaked at step 90 and then lost 9 accuracy points to them).
    The stages are separate so freezing can take an input-side prefix; the MLP stage gives pruning
    Linear layers to act on.
    """

    def __init__(self, width: int = 24, hidden: int = 64, resolution: int = 32, lr: float = 3e-3) -> None:
        super().__init__(lr=lr)
        if resolution % 8:
            raise ConfigError(f"resolution={resolution} must be a multiple of the digits' 8 pixels")
        self.save_hyperparameters()
        upsample = [nn.Upsample(size=resolution, mode="bilinear")] if resolution != 8 else []
        self.blocks = nn.Sequential(
            nn.Sequential(*upsample, nn.Conv2d(1, width, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(resolution // 8)),
            nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 16, hidden), nn.ReLU()),
        )
        self.head = nn.Linear(hidden, CLASSES)
        self.val_accuracy = MulticlassAccuracy(num_classes=CLASSES, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))

    def per_sample_loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y, reduction="none")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.val_accuracy.update(self(x), y)
        self.log("val/accuracy", self.val_accuracy, on_epoch=True, batch_size=len(y))


def vision_task(label_noise: float = 0.0, batch_size: int = 64) -> BenchTask:
    splits = digits_splits(label_noise)
    return BenchTask(
        name="vision",
        description="small CNN on scikit-learn's 8x8 digits" + (f", {label_noise:.0%} training labels flipped" if label_noise else ""),
        make_module=DigitsCNN,
        make_data=lambda: DigitsDataModule(label_noise=label_noise, batch_size=batch_size),
        metric="val/accuracy",
        higher_is_better=True,
        default_max_steps=360,
        default_repeats=3,
        details={
            "dataset": "sklearn.datasets.load_digits",
            "train_samples": len(splits["y_train"]),
            "val_samples": len(splits["y_val"]),
            "label_noise": label_noise,
            "batch_size": batch_size,
        },
    )
