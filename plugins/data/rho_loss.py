"""RHO-LOSS (Mindermann et al., "Prioritized Training on Points that are Learnable, Worth Learning, and
Not Yet Learnt", ICML 2022): train on the samples of largest *reducible* holdout loss.

Score every sample of a batch without gradients, subtract its reference ("irreducible") loss, the
loss of a small model trained on data held out from that sample, and backpropagate only the top
``keep`` fraction. Noisy or ambiguous samples have a high training loss *and* a high reference loss,
so unlike Selective Backprop RHO-LOSS leaves them out; samples already learned have a low training
loss and are left out too.

Where the reference losses come from (checked in this order):

1. ``cache``: a file written by an earlier run (reference losses keyed by dataset index);
2. ``reference``: a model given by the user (a class path ``pkg.mod:Class`` of a ``torch.nn.Module``,
   a Lightning ``.ckpt`` or a state dict file loaded into ``reference_class`` or a copy of the training
   module, or a Python object / callable); files are read as data (``weights_only=True``);
3. ``holdout="datamodule"``: a fresh, optionally smaller copy of the training module trained on the
   data module's ``holdout_dataloader()``;
4. ``holdout="cross_fit"`` (default): the training set split into two seeded halves, one fresh
   reference trained on each, and every sample scored by the one that never saw it (the paper's
   variant without extra holdout data).

When the training DataLoader samples through :class:`InfoBatchSampler` (the package's index-tracking
sampler, see ``info_batch_dataloader``), the reference losses of every training sample are
precomputed once, broadcast from rank 0, kept in the checkpoint (and in ``cache`` when set), and
looked up by dataset index. Without it, a given or holdout-trained reference scores every batch
online (one extra forward of the small model per step); ``cross_fit`` needs the indices.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from pydantic import Field

from lightning_eff import PreflightError
from lightning_eff.module import batch_sample_indices
from lightning_eff.schedule import TimeLike

from . import reference as ref
from .info_batch import find_info_batch_sampler
from .selection import reducible_loss, top_fraction
from .selector import BatchSelector, SelectorConfig

Holdout = Literal["cross_fit", "datamodule"]


class RhoLossConfig(SelectorConfig):
    keep: float = Field(
        0.1, gt=0.0, lt=1.0, description="fraction of each batch trained on: the largest reducible losses"
    )
    reference: str | None = Field(
        None,
        description="reference model: 'pkg.mod:Class' (a torch.nn.Module subclass, built with "
        "reference_hparams), or a weights file: a Lightning .ckpt or a state dict (.pt, .safetensors), "
        "read as data (a Python object can also be passed); None: train one (see holdout)",
    )
    reference_class: str | None = Field(
        None,
        description="with a weights file as reference: 'pkg.mod:Class' (a torch.nn.Module subclass built "
        "with reference_hparams) the weights load into; None: the training module's class",
    )
    holdout: Holdout = Field(
        "cross_fit",
        description="without reference: 'cross_fit' (two references, each trained on one half of the "
        "training set, scoring the other half) or 'datamodule' (trained on datamodule.holdout_dataloader())",
    )
    reference_steps: int = Field(200, ge=1, description="optimizer steps of each reference model trained here")
    reference_lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate of the reference models")
    reference_hparams: dict[str, Any] | None = Field(
        None,
        description="constructor arguments of the reference: overrides for a copy of the training module "
        "(a smaller one: {'hidden': 32}), or the arguments of reference_class / a class-path reference",
    )
    cache: str | None = Field(
        None, description="file of the precomputed reference losses: read when it exists, else written"
    )


class RhoLoss(BatchSelector):
    """Train on the samples of largest reducible holdout loss (RHO-LOSS, Mindermann et al. 2022)."""

    name = "rho_loss"
    Config = RhoLossConfig

    def __init__(
        self,
        keep: float = 0.1,
        reference: Any = None,
        reference_class: str | None = None,
        holdout: Holdout = "cross_fit",
        reference_steps: int = 200,
        reference_lr: float = 1e-3,
        reference_hparams: dict[str, Any] | None = None,
        cache: str | None = None,
        start: TimeLike = 0.0,
        end: TimeLike = 1.0,
        interrupt: int = 0,
        seed: int = 0,
    ) -> None:
        # A model object or callable is not an option a recipe can hold: kept aside, not in the config.
        self.reference_object = None if reference is None or isinstance(reference, str) else reference
        super().__init__(
            keep=keep,
            reference=reference if isinstance(reference, str) else None,
            reference_class=reference_class,
            holdout=holdout,
            reference_steps=reference_steps,
            reference_lr=reference_lr,
            reference_hparams=None if reference_hparams is None else dict(reference_hparams),
            cache=cache,
            start=start,
            end=end,
            interrupt=interrupt,
            seed=seed,
        )
        #: reference loss of every training sample, by dataset index (indexed mode)
        self.table: torch.Tensor | None = None
        #: how often each training sample got no backward pass (indexed mode)
        self.drop_counts = torch.zeros(0, dtype=torch.long)
        self.online_fn: ref.ReferenceFn | None = None
        self.sampler = None
        self.batch_size = 0
        self.current: torch.Tensor | None = None
        self.reference_seconds = 0.0
        self.reference_forwards = 0
        self._last_reference: torch.Tensor | None = None

    # -- preflight -------------------------------------------------------------------------------

    def validate(self, trainer, pl_module) -> list[str]:
        problems = super().validate(trainer, pl_module)
        c = self.config
        if c.reference is not None and self.reference_object is None:
            try:
                self.reference_object = ref.load_reference(
                    c.reference, pl_module, c.reference_class, c.reference_hparams, c.seed
                )
            except Exception as exc:  # noqa: BLE001 - any failure to load is the same problem
                problems.append(f"rho_loss cannot load its reference: {exc}")
                return problems
        if self.reference_object is not None:
            try:
                ref.reference_fn(self.reference_object)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"rho_loss: {exc}")
            return problems
        if c.cache is not None and _exists(c.cache):
            return problems
        if c.holdout == "datamodule" and not hasattr(trainer.datamodule, "holdout_dataloader"):
            problems.append(
                "rho_loss has no reference available: holdout='datamodule' but the data module has no "
                "holdout_dataloader(); add one, pass reference= (a model, 'pkg.mod:Class' or a "
                "weights file), or use holdout='cross_fit'"
            )
        if ref.fresh_module_kwargs(pl_module, c.reference_hparams or {}) is None:
            problems.append(
                f"rho_loss has no reference available: it cannot build a fresh {type(pl_module).__name__} "
                f"from its saved hyperparameters + reference_hparams={c.reference_hparams}; call "
                "self.save_hyperparameters() in __init__, or pass reference= (a model, 'pkg.mod:Class' "
                "or a weights file)"
            )
        return problems

    # -- building the reference ------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        # Scoring iterates DataLoaders, and each iteration draws a base seed from the global random
        # stream: fork it so that the run's stream is the same with and without this set-up.
        device = pl_module.device
        cuda = []
        if device.type == "cuda":
            cuda = [device.index if device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=cuda):
            self._set_up(trainer, pl_module)

    def _set_up(self, trainer, pl_module) -> None:
        found = find_info_batch_sampler(trainer)
        if found is not None:
            self.sampler, self.batch_size = found
        started = time.perf_counter()
        if found is not None:
            size = self.sampler.size
            if self.table is None:
                self.table = self._reference_table(trainer, pl_module, size)
                self.drop_counts = torch.zeros(size, dtype=torch.long)
            elif self.table.numel() != size:
                problem = (
                    f"rho_loss: the checkpoint holds reference losses of {self.table.numel()} samples "
                    f"but the dataset has {size}: resume with the same dataset"
                )
                raise PreflightError([problem])
        else:
            if self.config.holdout == "cross_fit" and self.reference_object is None:
                problem = (
                    "rho_loss has no reference available: holdout='cross_fit' looks samples up by "
                    "dataset index, so the training DataLoader must sample through "
                    "lightning_eff.plugins.data.InfoBatchSampler (wrap it with info_batch_dataloader(loader)); "
                    "or pass reference= or use holdout='datamodule' to score batches online"
                )
                raise PreflightError([problem])
            self.online_fn = ref.reference_fn(self._online_reference(trainer, pl_module))
        self.reference_seconds += time.perf_counter() - started

    def _dataset_and_collate(self, trainer):
        loaders = trainer.train_dataloader
        loader = loaders
        if isinstance(loaders, dict):
            loader = next(iter(loaders.values()))
        elif isinstance(loaders, (list, tuple)):
            loader = loaders[0]
        return loader.dataset, loader.collate_fn, loader.batch_size or 1

    def _train_fresh(self, pl_module, dataset, indices, collate_fn, batch_size, seed):
        kwargs = ref.fresh_module_kwargs(pl_module, self.config.reference_hparams or {})
        model = ref.build_fresh_module(type(pl_module), kwargs, seed)
        return ref.train_reference(
            model, dataset, indices, collate_fn, batch_size, self.config.reference_steps,
            self.config.reference_lr, seed, pl_module.device,
        )

    def _holdout_reference(self, trainer, pl_module):
        loader = trainer.datamodule.holdout_dataloader()
        return self._train_fresh(
            pl_module, loader.dataset, range(len(loader.dataset)), loader.collate_fn,
            loader.batch_size or 1, self.config.seed,
        )

    def _online_reference(self, trainer, pl_module):
        if self.reference_object is not None:
            model = self.reference_object
        else:
            model = None
            if trainer.is_global_zero:
                model = self._holdout_reference(trainer, pl_module)
            if trainer.world_size > 1:  # every rank scores with rank 0's weights
                state = trainer.strategy.broadcast(
                    {k: v.cpu() for k, v in model.state_dict().items()} if model is not None else None, src=0
                )
                if model is None:
                    kwargs = ref.fresh_module_kwargs(pl_module, self.config.reference_hparams or {})
                    model = ref.build_fresh_module(type(pl_module), kwargs, self.config.seed)
                model.load_state_dict(state)
        if isinstance(model, torch.nn.Module):
            model.to(pl_module.device).eval()
        return model

    def _reference_table(self, trainer, pl_module, size: int) -> torch.Tensor:
        c = self.config
        table = None
        if trainer.is_global_zero:
            table = ref.load_cache(c.cache, size) if c.cache else None
            if table is None:
                table = self._compute_table(trainer, pl_module)
                if c.cache:
                    ref.save_cache(c.cache, table, self._cache_meta(pl_module))
        if trainer.world_size > 1:
            table = trainer.strategy.broadcast(table, src=0)
        return table.float().cpu()

    def _cache_meta(self, pl_module) -> dict[str, Any]:
        return {"module": type(pl_module).__qualname__, "options": self.config.model_dump(mode="json")}

    def _compute_table(self, trainer, pl_module) -> torch.Tensor:
        c = self.config
        dataset, collate_fn, batch_size = self._dataset_and_collate(trainer)
        n = len(dataset)
        if self.reference_object is not None or c.holdout == "datamodule":
            model = self._online_reference(trainer, pl_module)
            return ref.score_indices(ref.reference_fn(model), dataset, range(n), collate_fn, batch_size, pl_module.device)
        table = torch.zeros(n)
        halves = ref.folds(n, 2, c.seed)
        for k, scored in enumerate(halves):
            trained_on = halves[1 - k]
            model = self._train_fresh(pl_module, dataset, trained_on.tolist(), collate_fn, batch_size, c.seed + 1 + k)
            table[scored] = ref.score_indices(
                ref.reference_fn(model), dataset, scored.tolist(), collate_fn, batch_size, pl_module.device
            )
        return table

    # -- per batch -------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.table is None:
            return
        self.current = batch_sample_indices(self.sampler, batch_idx, self.batch_size, batch)

    def _reference_losses(self, batch, n: int) -> torch.Tensor:
        if self.table is not None:
            if self.current is None or self.current.numel() != n:
                raise RuntimeError(
                    f"rho_loss: the batch holds {n} samples but the sampler gave "
                    f"{None if self.current is None else self.current.numel()}"
                )
            return self.table[self.current]
        with torch.no_grad():
            self.reference_forwards += 1
            return self.online_fn(batch).detach().float().cpu()

    def scores(self, losses, batch, module):
        reference_losses = self._reference_losses(batch, losses.shape[0])
        self._last_reference = reference_losses
        return reducible_loss(losses, reference_losses)

    def choose(self, losses, batch, module):
        kept = top_fraction(losses, self.config.keep)
        if self.table is not None:
            dropped = torch.ones(losses.shape[0], dtype=torch.bool)
            dropped[kept] = False
            self._count_drops(module.trainer, self.current[dropped])
        return kept

    def _count_drops(self, trainer, dropped: torch.Tensor) -> None:
        """Every rank counts every rank's drops (ranks' batches are equally large under DDP's
        sampler, so the gathered tensors have one shape): the counts stay identical across ranks."""
        if trainer.world_size > 1:
            dropped = trainer.strategy.all_gather(dropped.to(trainer.strategy.root_device)).reshape(-1).cpu()
        self.drop_counts += torch.bincount(dropped, minlength=self.drop_counts.numel())

    # -- reporting -------------------------------------------------------------------------------

    def most_dropped(self, k: int = 10) -> list[tuple[int, int]]:
        """``(dataset index, times dropped)`` of the samples left out most often (indexed mode)."""
        counts, index = torch.sort(self.drop_counts, descending=True, stable=True)
        return [(int(i), int(c)) for i, c in zip(index[:k], counts[:k]) if c > 0]

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        out["reference_seconds"] = self.reference_seconds
        if self.table is not None and self.table.numel():
            out["reference_loss_mean"] = float(self.table.mean())
            top = self.most_dropped(1)
            if top:
                out["most_dropped_times"] = float(top[0][1])
        else:
            out["reference_forwards"] = float(self.reference_forwards)
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["reference_losses"] = None if self.table is None else self.table.clone()
        state["drop_counts"] = self.drop_counts.clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        table = state_dict.get("reference_losses")
        self.table = None if table is None else table.clone()
        self.drop_counts = state_dict.get("drop_counts", torch.zeros(0, dtype=torch.long)).clone()


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file()
