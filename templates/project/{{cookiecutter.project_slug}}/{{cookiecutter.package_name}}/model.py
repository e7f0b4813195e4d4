"""A small MLP classifier that lets lightning-eff's techniques select and weight samples."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning_eff import EfficientModule
from torch import nn
from torch.nn import functional as F


class DigitsClassifier(EfficientModule, pl.LightningModule):
    """64 pixels -> ``depth`` hidden Linear+ReLU layers -> 10 classes.

    ``EfficientModule`` supplies ``training_step``: it asks the active techniques for a smaller
    batch, per-sample weights and auxiliary losses around :meth:`per_sample_loss`.
    """

    def __init__(self, hidden: int = 128, depth: int = 2, lr: float = 3e-3, weight_decay: float = 1e-4) -> None:
        """
        Args:
            hidden: width of the hidden layers.
            depth: number of hidden layers.
            lr: peak learning rate of AdamW (cosine decay to 0 at the last step).
            weight_decay: AdamW weight decay.
        """
        super().__init__()
        self.save_hyperparameters()
        dims = [64] + [hidden] * depth
        self.body = nn.Sequential(*(nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims, dims[1:])))
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def per_sample_loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y, reduction="none")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y), batch_size=len(y), prog_bar=True)
        self.log("val/acc", (logits.argmax(dim=1) == y).float().mean(), batch_size=len(y), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        # Decays to 0 at the run's last optimizer step, so runs of any length (and `lightning-eff bench`
        # arms) end annealed.
        total = max(1, int(self.trainer.estimated_stepping_batches))
        cosine = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
