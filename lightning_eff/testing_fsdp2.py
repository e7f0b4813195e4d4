"""FSDP2 test helper: several techniques' runs under Lightning's ModelParallelStrategy (data
parallel 2, ``fully_shard`` in ``configure_model``) on two CPU processes (gloo), in ONE launch.

Starting two processes that import torch and Lightning costs ~10 s on two cores while a tiny fit
costs well under a second, so :func:`run_fsdp2` takes a list of :class:`Fsdp2Case` and runs them
one after the other in the same pair of processes. Each case returns, per rank, the full (gathered)
weights, optimizer state and technique states, or the error it raised (preflight refusals are
tested here too, under a real ModelParallelStrategy). A case with ``resume_at`` also trains N
steps, saves a sharded (distributed) checkpoint, resumes from it and lists what differs from the
uninterrupted run.

We launch the processes ourselves (``LOCAL_RANK`` set, so Lightning's environment says they are
created externally): ModelParallelStrategy would otherwise re-run ``sys.argv`` (pytest) per rank.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.distributed.fsdp import fully_shard

from lightning_eff.sharding import gather_full
from lightning_eff.technique import Technique
from lightning_eff.testing import (
    TinyClassifier,
    TinyDataModule,
    _free_port,
    _StopAndSave,
    quiet_trainer_kwargs,
    state_differences,
    technique_states,
)

#: a collective that waits longer than this fails the case instead of hanging the suite
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


class ShardedTinyClassifier(TinyClassifier):
    """TinyClassifier sharded the FSDP2 way: each block, then the root, in ``configure_model``."""

    def configure_model(self) -> None:
        mesh = self.device_mesh["data_parallel"]
        for block in self.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(self, mesh=mesh)


@dataclass(frozen=True)
class Fsdp2Case:
    """One fit under FSDP2. Factories must be picklable (module-level functions or classes)."""

    name: str
    make_techniques: Callable[[], Sequence[Technique]]
    make_module: Callable[[], pl.LightningModule] = ShardedTinyClassifier
    make_data: Callable[[], pl.LightningDataModule] = TinyDataModule
    max_steps: int = 4
    #: also run ``resume_at`` steps + sharded checkpoint + resume to ``max_steps``, and compare
    resume_at: int | None = None
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    #: ModelParallelStrategy options, e.g. ``save_distributed_checkpoint=False`` (one full file)
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)


def fsdp2_strategy(**kwargs: Any):
    """Data parallel over two processes, no tensor parallelism: FSDP2 as ``fully_shard`` applies it."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, timeout=COLLECTIVE_TIMEOUT, **kwargs)


def _fit(case: Fsdp2Case, max_steps: int, extra_callbacks=(), ckpt_path=None) -> dict[str, Any]:
    pl.seed_everything(0, workers=True)
    module, data, techniques = case.make_module(), case.make_data(), list(case.make_techniques())
    kwargs = quiet_trainer_kwargs(
        max_steps=max_steps, devices=2, strategy=fsdp2_strategy(**case.strategy_kwargs), enable_checkpointing=bool(extra_callbacks),
        **case.trainer_kwargs,
    )
    trainer = pl.Trainer(**kwargs, callbacks=[*techniques, *extra_callbacks])
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return {
        "weights": gather_full(module.state_dict()),
        "optimizer": gather_full([_sharded_optimizer_state(module, o) for o in trainer.optimizers]),
        "techniques": gather_full(technique_states(trainer)),
        "global_step": trainer.global_step,
    }


def _sharded_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Keyed by parameter name, DTensors on every rank (the strategy's own view is empty on rank > 0
    when it saves full checkpoints)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=False))


def _run_case(case: Fsdp2Case, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = _fit(case, case.max_steps)
        if case.resume_at is not None:
            ckpt = folder / f"{case.name}.ckpt"
            _fit(case, case.max_steps, extra_callbacks=[_StopAndSave(case.resume_at, ckpt)])
            resumed = _fit(case, case.max_steps, ckpt_path=ckpt)
            result["resume_differences"] = state_differences(
                {k: result[k] for k in ("weights", "optimizer", "techniques", "global_step")}, resumed, "resumed"
            )
            result["checkpoint_files"] = sorted(p.name for p in ckpt.iterdir()) if ckpt.is_dir() else [ckpt.name]
        result["error"] = None
    except Exception as exc:  # noqa: BLE001 - recorded per case: a refusal is an expected outcome
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["seconds"] = time.perf_counter() - started
    return result


def _worker(rank: int, port: int, cases: Sequence[Fsdp2Case], folder: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), RANK=str(rank), NODE_RANK="0", WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    # The group exists before the first case, so a factory may build a mesh (a model sharded early).
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, timeout=COLLECTIVE_TIMEOUT)
    results = {case.name: _run_case(case, Path(folder)) for case in cases}
    torch.save(results, Path(folder) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def run_fsdp2(cases: Sequence[Fsdp2Case], tmp_path: Path, timeout_s: float = 600.0) -> dict[str, list[dict[str, Any]]]:
    """Run every case on two CPU processes; returns ``{case name: [rank0 result, rank1 result]}``."""
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"case names must be unique: {names}")
    context = torch.multiprocessing.start_processes(
        _worker, args=(_free_port(), list(cases), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
    while not context.join(timeout=5):
        if datetime.datetime.now() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the two FSDP2 processes did not finish within {timeout_s:.0f} s")
    ranks = [torch.load(Path(tmp_path) / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {name: [ranks[0][name], ranks[1][name]] for name in names}


def assert_fsdp2_case_ok(results: list[dict[str, Any]], resume: bool = False) -> dict[str, Any]:
    """The case trained on both ranks, the ranks agree on every gathered tensor and state, and
    (``resume``) the resumed run equals the uninterrupted one. Returns rank 0's result."""
    for rank, result in enumerate(results):
        assert result["error"] is None, f"rank {rank} failed: {result['error']}\n{result.get('traceback', '')}"
    keys = ("weights", "optimizer", "techniques", "global_step")
    problems = state_differences(*({k: r[k] for k in keys} for r in results), "rank0 vs rank1")
    assert not problems, "ranks diverged:\n" + "\n".join(problems[:20])
    if resume:
        differences = results[0]["resume_differences"]
        assert not differences, "resumed run differs from the uninterrupted run:\n" + "\n".join(differences[:20])
    return results[0]
