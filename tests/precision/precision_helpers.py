"""Small models for the precision tests: module-level (picklable for ddp_spawn)."""

import torch
from lightning.pytorch.plugins import MixedPrecision
from torch import nn

from lightning_eff.testing import TinyClassifier


class NormClassifier(TinyClassifier):
    """TinyClassifier with a LayerNorm before the head and AdamW (what the precision techniques act on)."""

    def __init__(self, hidden: int = 32, lr: float = 0.01):
        super().__init__(hidden=hidden, lr=lr)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x):
        return self.head(self.norm(self.blocks(x)))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + 0.05 * step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class WideNormClassifier(NormClassifier):
    """Hidden 64: the blocks are 16x64 and 64x64 Linear layers, the head 64x4 (not a multiple of 16)."""

    def __init__(self):
        super().__init__(hidden=64)


class FreshScalerAmp(MixedPrecision):
    """Lightning's fp16 AMP plugin on CPU with a new GradScaler for every fit, so that one plugin
    instance can be passed to several Trainers (assert_resume_equivalent reuses trainer_kwargs).
    The initial scale 2**24 overflows fp16 at first: the scale moves during the run."""

    def __init__(self):
        super().__init__("16-mixed", "cpu", scaler=self.new_scaler())

    @staticmethod
    def new_scaler():
        return torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=3)

    def convert_module(self, module):  # called once per fit, before a checkpoint's scaler state is loaded
        self.scaler = self.new_scaler()
        return super().convert_module(module)
