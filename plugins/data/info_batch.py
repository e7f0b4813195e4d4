"""InfoBatch (Qin et al., ICLR 2024): unbiased dynamic data pruning.

Each epoch, a random ``prune_ratio`` of the samples whose last loss is below the mean sit out;
the kept ones of that group are weighted ``1 / (1 - prune_ratio)``; the last ``anneal`` of
training uses the full data unweighted. Epochs get shorter, so a fixed number of epochs costs
fewer steps (the paper: about 40% saved at unchanged accuracy).

The user's data module opts in with :class:`InfoBatchSampler` (see ``info_batch_sampler.py``).
Scores are the per-sample training losses, all-gathered every step so that every DDP rank holds
the same scores and draws the same plan.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch.utils.data import DataLoader

from lightning_eff import PreflightError, Technique, TechniqueConfig, hookimpl
from lightning_eff.config_types import Seed
from lightning_eff.module import batch_sample_indices
from lightning_eff.technique import FSDP2_TESTED

from .info_batch_plan import full_plan, prune_plan
from .info_batch_sampler import InfoBatchSampler
from .stats import ScoreStats


class InfoBatchConfig(TechniqueConfig):
    prune_ratio: float = Field(
        0.5, gt=0.0, lt=1.0, description="fraction of the below-mean-loss samples dropped each epoch"
    )
    anneal: float = Field(
        0.125, ge=0.0, lt=1.0, description="final fraction of training on the full data, unweighted"
    )
    seed: Seed = Field(
        0, ge=0, description="seed of the epoch plans (each epoch's generator is derived from it)"
    )


def find_info_batch_sampler(trainer) -> tuple[InfoBatchSampler, int] | None:
    """The InfoBatchSampler of the training DataLoader and the loader's batch size, if there is one."""
    loaders = trainer.train_dataloader
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        if isinstance(loader, DataLoader) and isinstance(loader.sampler, InfoBatchSampler):
            return loader.sampler, loader.batch_size
    return None


class InfoBatch(Technique):
    """Each epoch drop a random part of the well-learned samples and reweight the rest (InfoBatch, Qin et al. 2024)."""

    name = "info_batch"
    phase = "data"
    # scores are all-gathered and the sampler gives every rank the same number of batches
    supported_strategies = FSDP2_TESTED
    requires_module_mixin = True
    # Batch selectors cut the batch after the sampler chose it: the per-sample weights and scores,
    # addressed by position, would land on the wrong samples.
    conflicts = ("selective_backprop", "random_subset", "loss_threshold_skip", "rho_loss")
    Config = InfoBatchConfig

    def __init__(self, prune_ratio: float = 0.5, anneal: float = 0.125, seed: int = 0) -> None:
        super().__init__(prune_ratio=prune_ratio, anneal=anneal, seed=seed)
        self.sampler: InfoBatchSampler | None = None
        self.batch_size = 0
        self.scores = torch.zeros(0)
        self.seen = torch.zeros(0, dtype=torch.bool)
        self.drop_counts = torch.zeros(0, dtype=torch.long)
        self.weights = torch.zeros(0)
        self.order = torch.zeros(0, dtype=torch.long)
        self.plan_epoch = -1
        self.batches_done = 0  # of the planned epoch, on this rank: where a resumed epoch continues
        self.samples_pruned = 0  # cumulative over epochs: each is a forward + backward saved
        self.samples_planned = 0
        self.current: torch.Tensor | None = None
        self.stats = ScoreStats(window=1 << 16)

    # -- finding the sampler -----------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        found = find_info_batch_sampler(trainer)
        if found is None:
            problem = (
                "info_batch needs the training DataLoader to sample through "
                "lightning_eff.plugins.data.InfoBatchSampler: build it with "
                "DataLoader(dataset, batch_size=..., sampler=InfoBatchSampler(dataset)) or wrap it with "
                "info_batch_dataloader(loader) in your data module's train_dataloader()"
            )
            raise PreflightError([problem])
        self.sampler, self.batch_size = found
        n = self.sampler.size
        if self.scores.numel() == 0:
            self.scores, self.seen = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
            self.drop_counts = torch.zeros(n, dtype=torch.long)
        elif self.scores.numel() != n:
            raise PreflightError(
                [
                    f"info_batch: the checkpoint holds scores of {self.scores.numel()} samples but the dataset has {n}: resume with the same dataset"
                ]
            )
        resumed = self.plan_epoch >= 0
        if resumed:  # the sampler iterates the restored plan from the first batch not trained on
            self.sampler.set_plan(
                self.order.tolist(), self.plan_epoch, start=self.batches_done * self.batch_size
            )
        # A checkpoint saved on an epoch's last batch resumes in the next epoch without calling
        # on_train_epoch_start: plan it here (same scores, same step: the same plan).
        self.plan_epoch_if_needed(trainer)
        if resumed:
            # Lightning measured the epoch before the restored plan was set; measure it again, or
            # the resumed epoch's last batch is not flagged as the last (epoch-end validation,
            # trainer.is_last_batch). Lightning sets the sampler's epoch only after this hook.
            self.sampler.set_epoch(trainer.current_epoch)
            fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
            if fetcher is not None:
                fetcher.reset()

    # -- the epoch plan ------------------------------------------------------------------------------

    def annealing(self, trainer) -> bool:
        """Full data at the end. With max_steps, in optimizer steps; with max_epochs only, in epochs
        (as the paper): pruned epochs are shorter, so a step estimate from full epochs would lag."""
        if trainer.max_steps and trainer.max_steps > 0:
            progress = trainer.global_step / max(1, trainer.max_steps)
        elif trainer.max_epochs and trainer.max_epochs > 0:
            progress = trainer.current_epoch / trainer.max_epochs
        else:
            return False
        return progress >= 1.0 - self.config.anneal

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.plan_epoch_if_needed(trainer)

    def plan_epoch_if_needed(self, trainer) -> None:
        epoch = trainer.current_epoch
        if epoch == self.plan_epoch:
            return
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        if self.annealing(trainer) or not self.seen.any():
            order, weights = full_plan(self.scores.numel(), g, self.sampler.shuffle)
        else:
            order, weights = prune_plan(
                self.scores, self.seen, self.config.prune_ratio, g, self.sampler.shuffle
            )
        self.order, self.weights, self.plan_epoch, self.batches_done = order, weights, epoch, 0
        kept = torch.zeros(self.scores.numel(), dtype=torch.bool)
        kept[order] = True
        self.drop_counts += (~kept).long()
        self.samples_pruned += int((~kept).sum())
        self.samples_planned += self.scores.numel()
        if self.seen.any():
            seen = torch.nonzero(self.seen).flatten()
            self.stats = ScoreStats(window=1 << 16)
            self.stats.record(self.scores[seen], torch.nonzero(kept[seen]).flatten())
            self.stats.log_histograms(trainer, self.name)
        self.sampler.set_plan(order.tolist(), epoch)

    # -- per batch -------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.sampler.plan_epoch != trainer.current_epoch:
            raise RuntimeError(
                f"info_batch: the sampler iterates a plan for epoch {self.sampler.plan_epoch}, not {trainer.current_epoch}"
            )
        self.current = batch_sample_indices(self.sampler, batch_idx, self.batch_size, batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches_done = batch_idx + 1

    @hookimpl
    def leff_sample_weights(self, module, batch, per_sample_loss):
        index = self.current
        if index is None or index.numel() != per_sample_loss.shape[0]:
            raise RuntimeError(
                f"info_batch: the batch holds {per_sample_loss.shape[0]} samples but the sampler gave "
                f"{None if index is None else index.numel()}: is another technique cutting batches?"
            )
        self.update_scores(module.trainer, index, per_sample_loss)
        return self.weights[index].to(per_sample_loss.device)

    def update_scores(self, trainer, index: torch.Tensor, losses: torch.Tensor) -> None:
        """Every rank writes every rank's losses: scores, and so the next plans, are identical."""
        pairs = torch.stack([index.to(losses.device, torch.float64), losses.detach().to(torch.float64)])
        if trainer.world_size > 1:
            pairs = trainer.strategy.all_gather(pairs).permute(1, 0, 2).reshape(2, -1)
        pairs = pairs.cpu()
        where = pairs[0].long()
        self.scores[where] = pairs[1].float()
        self.seen[where] = True

    # -- reporting -------------------------------------------------------------------------------

    def most_dropped(self, k: int = 10) -> list[tuple[int, int]]:
        """``(dataset index, epochs pruned)`` of the samples pruned most often: for inspection."""
        counts, index = torch.sort(self.drop_counts, descending=True, stable=True)
        return [(int(i), int(c)) for i, c in zip(index[:k], counts[:k]) if c > 0]

    def metrics(self) -> dict[str, float]:
        n = max(1, self.scores.numel())
        out = {
            "kept_fraction_epoch": self.order.numel() / n if self.plan_epoch >= 0 else 1.0,
            "kept_fraction": 1.0 - self.samples_pruned / max(1, self.samples_planned),
            "backward_saved": float(self.samples_pruned),
            "backward_saved_fraction": self.samples_pruned / max(1, self.samples_planned),
            **self.stats.metrics(),
        }
        top = self.most_dropped(1)
        if top:
            out["most_dropped_epochs"] = float(top[0][1])
        return out

    def savings(self) -> dict[str, float]:
        return {
            "samples_pruned": float(self.samples_pruned),
            "fraction_pruned": self.samples_pruned / max(1, self.samples_planned),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores.clone(),
            "seen": self.seen.clone(),
            "drop_counts": self.drop_counts.clone(),
            "order": self.order.clone(),
            "weights": self.weights.clone(),
            "plan_epoch": self.plan_epoch,
            "batches_done": self.batches_done,
            "samples_pruned": self.samples_pruned,
            "samples_planned": self.samples_planned,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in ("scores", "seen", "drop_counts", "order", "weights"):
            setattr(self, key, state_dict[key].clone())
        self.plan_epoch = state_dict["plan_epoch"]
        # Checkpoints from before batches_done was kept resume at the epoch's start, as they did.
        self.batches_done = state_dict.get("batches_done", 0)
        self.samples_pruned, self.samples_planned = (
            state_dict["samples_pruned"],
            state_dict["samples_planned"],
        )
