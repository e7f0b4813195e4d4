"""Small techniques used by the core tests: a stateful one, and ones that record hook order."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from lightning_eff import Technique, TechniqueConfig, hookimpl
from lightning_eff.module import index_batch

CALLS: list[tuple[str, str]] = []


class WeightNoiseConfig(TechniqueConfig):
    scale: float = Field(1e-3, ge=0, description="std of the noise added to the head weights each step")
    every: int = Field(2, ge=1, description="add noise every this many optimizer steps")


class WeightNoise(Technique):
    """Adds seeded noise to the head every few steps; keeps its RNG and a counter in state_dict."""

    name = "weight_noise"
    phase = "optimizer"
    Config = WeightNoiseConfig

    def __init__(self, scale: float = 1e-3, every: int = 2) -> None:
        super().__init__(scale=scale, every=every)
        self.generator = torch.Generator().manual_seed(1234)
        self.applied = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.config.every == 0:
            with torch.no_grad():
                w = pl_module.head.weight
                w.add_(torch.randn(w.shape, generator=self.generator) * self.config.scale)
            self.applied += 1

    def metrics(self) -> dict[str, float]:
        return {"applied": float(self.applied)}

    def savings(self) -> dict[str, float]:
        return {"noise_events": float(self.applied)}

    def state_dict(self):
        return {"rng": self.generator.get_state(), "applied": self.applied}

    def load_state_dict(self, state_dict) -> None:
        self.generator.set_state(state_dict["rng"])
        self.applied = state_dict["applied"]


class _Recorder(Technique):
    label: ClassVar[str] = ""

    def setup(self, trainer, pl_module, stage) -> None:
        CALLS.append((self.name, "setup"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        CALLS.append((self.name, "on_train_batch_end"))

    def on_fit_end(self, trainer, pl_module) -> None:
        CALLS.append((self.name, "on_fit_end"))


class SurgeryRecorder(_Recorder):
    """Records hook calls; phase surgery."""

    name = "surgery_recorder"
    phase = "surgery"


class PrecisionRecorder(_Recorder):
    """Records hook calls; phase precision, declared to run before surgery_recorder."""

    name = "precision_recorder"
    phase = "precision"
    before = ("surgery_recorder",)


class DataRecorder(_Recorder):
    """Records hook calls; phase data."""

    name = "data_recorder"
    phase = "data"


class HalfBatchConfig(TechniqueConfig):
    keep: float = Field(0.5, gt=0, le=1, description="fraction of each batch kept")


class HalfBatch(Technique):
    """Keeps the first `keep` fraction of every batch (a deterministic batch selector)."""

    name = "half_batch"
    phase = "data"
    selects_batches = True
    requires_module_mixin = True
    Config = HalfBatchConfig

    def __init__(self, keep: float = 0.5) -> None:
        super().__init__(keep=keep)
        self.seen = 0

    @hookimpl
    def leff_select_batch(self, module, batch, batch_idx):
        n = batch[0].shape[0]
        self.seen += n
        return index_batch(batch, torch.arange(max(1, int(n * self.config.keep))))


class OtherSelector(HalfBatch):
    """A second batch selector (for the two-selectors preflight error)."""

    name = "other_selector"


class ConstantAuxLoss(Technique):
    """Adds a constant auxiliary loss and doubles every sample's weight."""

    name = "constant_aux"
    phase = "loss"
    requires_module_mixin = True

    @hookimpl
    def leff_aux_losses(self, module):
        return {"constant": torch.tensor(0.25)}

    @hookimpl
    def leff_sample_weights(self, module, batch, per_sample_loss):
        return torch.full_like(per_sample_loss, 2.0)


class TrainerTuner(Technique):
    """Asks for a Trainer setting through leff_configure_trainer and validates the recipe."""

    name = "trainer_tuner"

    @hookimpl
    def leff_configure_trainer(self, trainer_kwargs, techniques):
        trainer_kwargs.setdefault("gradient_clip_val", 1.0)

    @hookimpl
    def leff_validate(self, techniques, trainer_kwargs):
        if trainer_kwargs.get("accumulate_grad_batches", 1) > 1:
            return ["trainer_tuner: set accumulate_grad_batches to 1"]
        return None
