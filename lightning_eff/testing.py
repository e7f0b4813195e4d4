"""Test helpers for technique authors (also a pytest plugin: ``pytest_plugins = ["lightning_eff.testing"]``).

- :func:`assert_resume_equivalent`: train 2N steps uninterrupted vs. N steps + checkpoint + resume +
  N steps; weights, optimizer state and every technique's ``state_dict`` must be identical.
- :func:`run_ddp`: fit with two CPU processes (gloo, ``ddp_spawn``) and return each rank's final
  weights and technique states, to assert that ranks agree.
- :func:`preflight_problems`: run a Trainer until preflight and return the problems it reported.
- :class:`TinyClassifier` / :class:`TinyDataModule`: a small deterministic model and data.

Resume-equivalence is exact on CPU when (a) N is a multiple of the steps per epoch, or the data
position is resumable (Lightning restarts the epoch of a DataLoader without ``state_dict`` /
``load_state_dict`` from its first batch; InfoBatch restores its InfoBatchSampler's position itself)
and (b) every random choice a technique makes comes from a generator kept in its ``state_dict`` (the
global RNG is not in Lightning checkpoints).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset

from lightning_eff.errors import PreflightError
from lightning_eff.module import EfficientModule
from lightning_eff.technique import Technique

# --- tiny model and data ------------------------------------------------------------------------


class EpochSeededSampler(Sampler[int]):
    """Shuffles with a seed derived from the epoch, so a resumed run sees the same order."""

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())

    def __len__(self) -> int:
        return self.length


class TinyDataModule(pl.LightningDataModule):
    """A fixed random classification problem (a noisy linear teacher), deterministic per seed."""

    def __init__(self, samples: int = 64, features: int = 16, classes: int = 4, batch_size: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(samples, features, generator=g)
        teacher = torch.randn(features, classes, generator=g)
        self.y = (self.x @ teacher + 0.1 * torch.randn(samples, classes, generator=g)).argmax(dim=1)
        self.batch_size, self.seed = batch_size, seed

    @property
    def steps_per_epoch(self) -> int:
        return len(self.x) // self.batch_size

    def train_dataloader(self) -> DataLoader:
        dataset = TensorDataset(self.x, self.y)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=EpochSeededSampler(len(dataset), self.seed), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)


class TinyClassifier(EfficientModule, pl.LightningModule):
    """An MLP of ``depth`` Linear+ReLU blocks in ``self.blocks`` and a Linear ``self.head``."""

    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 4, depth: int = 3, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        dims = [features] + [hidden] * depth
        self.blocks = nn.Sequential(*(nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims, dims[1:])))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))

    def per_sample_loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y, reduction="none")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y), batch_size=len(y))

    def configure_optimizers(self):
        # Momentum and weight decay make optimizer-state mistakes visible in the weights.
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1.0 + 0.01 * step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def quiet_trainer_kwargs(**overrides: Any) -> dict[str, Any]:
    """Trainer arguments for fast, silent, deterministic CPU tests."""
    kwargs: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
    )
    kwargs.update(overrides)
    return kwargs


# --- comparing states ---------------------------------------------------------------------------


def state_differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two nested states (dicts, lists, tensors, numbers) differ, compared exactly."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [f"{path}: tensor vs {type(b if isinstance(a, torch.Tensor) else a).__name__}"]
        if a.shape != b.shape or a.dtype != b.dtype:
            return [f"{path}: {tuple(a.shape)}/{a.dtype} vs {tuple(b.shape)}/{b.dtype}"]
        if not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else "n/a"
            return [f"{path}: values differ (max abs diff {diff})"]
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: missing on one side" for k in sorted(set(a) ^ set(b), key=str)]
        for k in sorted(set(a) & set(b), key=str):
            out += state_differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in state_differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def technique_states(trainer: pl.Trainer) -> dict[str, Any]:
    return {cb.state_key: copy.deepcopy(cb.state_dict()) for cb in trainer.callbacks if isinstance(cb, Technique)}


# --- resume equivalence -------------------------------------------------------------------------


class _StopAndSave(Checkpoint):
    """Saves a checkpoint after optimizer step ``step`` and stops. A Checkpoint subclass so that it
    runs after the efficiency hub, like ModelCheckpoint."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _fit(make_module, make_data, make_techniques, max_steps, trainer_kwargs, extra_callbacks=(), ckpt_path=None, seed=0):
    pl.seed_everything(seed, workers=True)
    module, data, techniques = make_module(), make_data(), list(make_techniques())
    # enable_checkpointing=True only so Lightning accepts _StopAndSave (a Checkpoint subclass).
    kwargs = quiet_trainer_kwargs(max_steps=max_steps, enable_checkpointing=bool(extra_callbacks), **trainer_kwargs)
    trainer = pl.Trainer(**kwargs, callbacks=[*techniques, *extra_callbacks])
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer, module


def assert_resume_equivalent(
    make_module: Callable[[], pl.LightningModule],
    make_data: Callable[[], pl.LightningDataModule],
    make_techniques: Callable[[], Sequence[Technique]],
    half_steps: int,
    tmp_path: Path,
    trainer_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train 2N steps vs. N + checkpoint + resume + N; assert identical weights, optimizer state and
    technique states. Returns the uninterrupted run's technique states (for further asserts)."""
    trainer_kwargs = dict(trainer_kwargs or {})
    total = 2 * half_steps
    full_trainer, full_module = _fit(make_module, make_data, make_techniques, total, trainer_kwargs)

    ckpt = Path(tmp_path) / "half.ckpt"
    _fit(make_module, make_data, make_techniques, total, trainer_kwargs, extra_callbacks=[_StopAndSave(half_steps, ckpt)])
    assert ckpt.exists(), f"no checkpoint was written at step {half_steps}; is half_steps < total steps?"
    resumed_trainer, resumed_module = _fit(make_module, make_data, make_techniques, total, trainer_kwargs, ckpt_path=ckpt)

    assert full_trainer.global_step == resumed_trainer.global_step == total
    problems = state_differences(full_module.state_dict(), resumed_module.state_dict(), "weights")
    problems += state_differences(
        [o.state_dict() for o in full_trainer.optimizers], [o.state_dict() for o in resumed_trainer.optimizers], "optimizer"
    )
    full_states = technique_states(full_trainer)
    problems += state_differences(full_states, technique_states(resumed_trainer), "techniques")
    assert not problems, "resumed run differs from the uninterrupted run:\n" + "\n".join(problems[:20])
    return full_states


# --- DDP ----------------------------------------------------------------------------------------


class _RecordRankState(pl.Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def on_fit_end(self, trainer, pl_module) -> None:
        state = {
            "weights": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            "techniques": technique_states(trainer),
            "global_step": trainer.global_step,
        }
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


def run_ddp(
    make_module: Callable[[], pl.LightningModule],
    make_data: Callable[[], pl.LightningDataModule],
    make_techniques: Callable[[], Sequence[Technique]],
    max_steps: int,
    tmp_path: Path,
    strategy: str = "ddp_spawn",
    trainer_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Fit on two CPU processes (gloo) and return each rank's final weights and technique states.

    The factories must be picklable (module-level functions or classes)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    # A fresh port per run: Lightning keeps the first run's MASTER_PORT in os.environ, and parallel
    # test workers must not meet on it.
    os.environ["MASTER_PORT"] = str(_free_port())
    # Spawned workers failed to rebuild tensors shared by file descriptor ("unable to resize file"),
    # seen with torch 2.13 CPU; sharing through the file system works everywhere.
    previous = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        return _run_ddp(make_module, make_data, make_techniques, max_steps, tmp_path, strategy, trainer_kwargs)
    finally:
        torch.multiprocessing.set_sharing_strategy(previous)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_ddp(make_module, make_data, make_techniques, max_steps, tmp_path, strategy, trainer_kwargs):
    pl.seed_everything(0, workers=True)
    module, data, techniques = make_module(), make_data(), list(make_techniques())
    kwargs = quiet_trainer_kwargs(max_steps=max_steps, devices=2, strategy=strategy, **(trainer_kwargs or {}))
    trainer = pl.Trainer(**kwargs, callbacks=[*techniques, _RecordRankState(Path(tmp_path))])
    trainer.fit(module, datamodule=data)
    return [torch.load(Path(tmp_path) / f"rank{r}.pt", weights_only=False) for r in range(2)]


def assert_ranks_identical(states: list[dict[str, Any]]) -> None:
    problems = state_differences(states[0], states[1], "rank0 vs rank1")
    assert not problems, "ranks diverged:\n" + "\n".join(problems[:20])


# --- preflight ----------------------------------------------------------------------------------


def preflight_problems(
    techniques: Sequence[Technique],
    module: pl.LightningModule | None = None,
    data: pl.LightningDataModule | None = None,
    max_steps: int = 1,
    **trainer_kwargs: Any,
) -> list[str]:
    """Run ``fit`` until preflight; return the problems it raised (empty when preflight passed).

    ``max_steps`` is the run length preflight judges schedules against (fractions of the run,
    windows that must fit); training itself stops at the first batch either way. Fails the test if
    training started despite a problem: preflight must stop it before step 0."""
    steps_seen: list[int] = []

    class _StepSpy(pl.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            steps_seen.append(trainer.global_step)
            trainer.should_stop = True

    module = module if module is not None else TinyClassifier()
    data = data if data is not None else TinyDataModule()
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(max_steps=max_steps, **trainer_kwargs), callbacks=[*techniques, _StepSpy()]
    )
    try:
        trainer.fit(module, datamodule=data)
    except PreflightError as exc:
        assert not steps_seen, "preflight raised only after training had started"
        return exc.problems
    return []
