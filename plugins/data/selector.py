"""What every batch-selecting data technique shares: the active window, the seeded generator, the
accounting of kept samples and backward passes saved, and score statistics.

A subclass only says how to pick samples (``choose``). Selection happens through
``EfficientModule``'s ``leff_select_batch`` hook, inside ``training_step``: a Callback cannot change
a batch. Under DDP every rank selects within its own batch with a generator seeded identically, so
ranks stay consistent without communication.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor

from lightning_eff import ConfigError, Technique, TechniqueConfig, hookimpl
from lightning_eff.config_types import Seed
from lightning_eff.module import batch_size_of, index_batch
from lightning_eff.schedule import TimePoint, step_resolver
from lightning_eff.technique import FSDP2_TESTED

from .stats import ScoreStats
from .window import ActiveWindow


class SelectorConfig(TechniqueConfig):
    # validate_default: time defaults are written as a user would (0.5) and parsed into TimePoints.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    start: TimePoint = Field(
        0.0, description="first selecting step: steps (int), fraction of the run (float), '10000samples'"
    )
    end: TimePoint = Field(
        1.0, description="selection stops here: steps (int), fraction of the run (float), samples, tokens"
    )
    interrupt: int = Field(0, ge=0, description="every interrupt-th step trains on the full batch (0: never)")
    seed: Seed = Field(
        0, ge=0, description="seed of the technique's own random generator (kept in checkpoints)"
    )

    @model_validator(mode="after")
    def _ordered(self):
        if self.start.unit == self.end.unit and self.start.value >= self.end.value:
            raise ValueError(f"start={self.start} must be before end={self.end}")
        return self


class BatchSelector(Technique):
    """Base of the batch selectors: subclasses implement ``choose``."""

    phase = "data"
    # Every rank scores and trains on its own batch (at least one sample: min_keep >= 1), so the
    # FSDP2 collectives of forward and backward run on every rank at every step.
    supported_strategies = FSDP2_TESTED
    selects_batches = True
    requires_module_mixin = True
    #: whether ``choose`` needs the per-sample losses (a forward pass without gradients)
    needs_scores: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.window: ActiveWindow | None = None
        self.samples_seen = 0
        self.samples_kept = 0
        self.selected_batches = 0
        self.stats = ScoreStats()

    # -- to implement ----------------------------------------------------------------------------

    def choose(self, losses: Tensor | None, batch: Any, module: Any) -> Tensor:
        """Positions (ascending) of the samples of ``batch`` to train on.

        ``losses`` are the selection scores (``scores(...)``: the per-sample losses by default)."""
        raise NotImplementedError

    def scores(self, losses: Tensor, batch: Any, module: Any) -> Tensor:
        """What ``choose`` ranks and the statistics record; the per-sample training losses by default
        (RhoLoss subtracts the reference losses)."""
        return losses

    # -- preflight and setup ---------------------------------------------------------------------

    def _resolve_window(self, trainer) -> ActiveWindow:
        c = self.config
        steps = step_resolver(trainer, float(trainer.estimated_stepping_batches))
        return ActiveWindow(steps(c.start), steps(c.end), c.interrupt)

    def validate(self, trainer, pl_module) -> list[str]:
        from lightning_eff.module import EfficientModule

        if getattr(type(pl_module), "per_sample_loss", None) is EfficientModule.per_sample_loss:
            problem = (
                f"{type(pl_module).__name__} does not implement per_sample_loss(batch): return the loss of each "
                "sample, shape [N] (for token-level LM losses, the mean over each sample's non-padding tokens)"
            )
            return [problem]
        try:
            window = self._resolve_window(trainer)
        except ConfigError as exc:
            return [f"start/end cannot be resolved to steps: {exc}"]
        if window.start >= window.end:
            return [
                f"start={self.config.start} (step {window.start}) is not before end={self.config.end} (step {window.end}): widen the window"
            ]
        return []

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.window = self._resolve_window(trainer)

    # -- the hook --------------------------------------------------------------------------------

    @hookimpl
    def leff_select_batch(self, module, batch, batch_idx):
        n = batch_size_of(batch)
        self.samples_seen += n
        if self.window is None or not self.window.active(module.trainer.global_step):
            self.samples_kept += n
            return None
        losses = None
        if self.needs_scores:
            with torch.no_grad():
                losses = module.per_sample_loss(batch).detach()
            if losses.shape != (n,):
                raise ValueError(
                    f"{self.name}: per_sample_loss returned shape {tuple(losses.shape)}, expected ({n},)"
                )
        if losses is not None:
            losses = self.scores(losses, batch, module)
        index = self.choose(losses, batch, module)
        self.samples_kept += int(index.numel())
        self.selected_batches += 1
        if losses is not None:
            self.stats.record(losses, index)
        return index_batch(batch, index)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self.stats.log_histograms(trainer, self.name)

    # -- accounting ------------------------------------------------------------------------------

    @property
    def samples_dropped(self) -> int:
        """Samples that got no backward pass (each saves about 2/3 of its training FLOPs)."""
        return self.samples_seen - self.samples_kept

    def metrics(self) -> dict[str, float]:
        seen = max(1, self.samples_seen)
        return {
            "kept_fraction": self.samples_kept / seen,
            "backward_saved": float(self.samples_dropped),
            "backward_saved_fraction": self.samples_dropped / seen,
            "selected_batches": float(self.selected_batches),
            **self.stats.metrics(),
        }

    def savings(self) -> dict[str, float]:
        return {
            "backward_samples_saved": float(self.samples_dropped),
            "backward_fraction_saved": self.samples_dropped / max(1, self.samples_seen),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "samples_seen": self.samples_seen,
            "samples_kept": self.samples_kept,
            "selected_batches": self.selected_batches,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
        self.samples_seen = state_dict["samples_seen"]
        self.samples_kept = state_dict["samples_kept"]
        self.selected_batches = state_dict["selected_batches"]
