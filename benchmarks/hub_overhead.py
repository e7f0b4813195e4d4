"""Step-time overhead of the efficiency hub with five inactive techniques vs. a bare Trainer.

Runs alternate (bare, hub, bare, hub, ...) on the same small model and data; each run's step time
is the median interval between consecutive ``on_train_batch_start`` calls, and the reported ratio
is the median over repeats of hub/bare. Usage: ``python benchmarks/hub_overhead.py [--repeats 7]``.

``--strategy fsdp2``: the same on two CPU processes (gloo) under Lightning's ModelParallelStrategy,
the model sharded with ``fully_shard`` per block (the tests' ``ShardedTinyClassifier``); every step
then also all-gathers and reduce-scatters, so the hub's share is measured against a sharded step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_eff import Technique
from lightning_eff.testing import TinyClassifier, TinyDataModule, quiet_trainer_kwargs


class Inactive(Technique):
    """Implements the per-step hooks but does nothing before its (never reached) start step."""

    name = "inactive"
    start_step = 10**9

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.start_step:
            raise AssertionError("unreachable")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step >= self.start_step:
            raise AssertionError("unreachable")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.start_step:
            raise AssertionError("unreachable")


def _inactive(index: int) -> Technique:
    cls = type(f"Inactive{index}", (Inactive,), {"name": f"inactive_{index}", "__doc__": "inactive"})
    return cls()


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.stamps.append(time.perf_counter())

    def median_step(self, warmup: int = 10) -> float:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])][warmup:]
        return statistics.median(gaps)


def one_run(with_hub: bool, steps: int, hidden: int = 256, fsdp2: bool = False) -> float:
    pl.seed_everything(0, verbose=False)
    timer = StepTimer()
    callbacks = [_inactive(i) for i in range(5)] if with_hub else []
    kwargs = quiet_trainer_kwargs(max_steps=steps)
    model_class = TinyClassifier
    if fsdp2:
        from lightning_eff.testing_fsdp2 import ShardedTinyClassifier, fsdp2_strategy

        kwargs.update(devices=2, strategy=fsdp2_strategy())
        model_class = ShardedTinyClassifier
    trainer = pl.Trainer(**kwargs, callbacks=[*callbacks, timer])
    data = TinyDataModule(samples=512, features=64, batch_size=32)
    trainer.fit(model_class(features=64, hidden=hidden, depth=4), datamodule=data)
    return timer.median_step()


def measure(repeats: int, steps: int, hidden: int, fsdp2: bool = False) -> tuple[list[float], list[float]]:
    """Alternating bare/hub runs: (hub/bare ratios, bare step times)."""
    ratios, bare_times = [], []
    for _ in range(repeats):
        bare = one_run(False, steps, hidden, fsdp2)
        hub = one_run(True, steps, hidden, fsdp2)
        ratios.append(hub / bare)
        bare_times.append(bare)
    return ratios, bare_times


def _fsdp2_worker(rank: int, port: int, repeats: int, steps: int, hidden: int, out: str) -> None:
    # Launched by us with LOCAL_RANK set, so Lightning does not re-run this script per rank.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), RANK=str(rank),
                      NODE_RANK="0", WORLD_SIZE="2")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    ratios, bare_times = measure(repeats, steps, hidden, fsdp2=True)
    if rank == 0:
        Path(out).write_text(json.dumps({"ratios": ratios, "bare_times": bare_times}))
    torch.distributed.destroy_process_group()


def measure_fsdp2(repeats: int, steps: int, hidden: int) -> tuple[list[float], list[float]]:
    from lightning_eff.testing import _free_port

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rank0.json"
        torch.multiprocessing.start_processes(
            _fsdp2_worker, args=(_free_port(), repeats, steps, hidden, str(out)), nprocs=2, start_method="spawn"
        )
        result = json.loads(out.read_text())
    return result["ratios"], result["bare_times"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=256, help="MLP width: 256 gives ~2 ms steps, 2048 ~20 ms")
    parser.add_argument("--strategy", choices=("single", "fsdp2"), default="single",
                        help="fsdp2: two CPU processes, ModelParallelStrategy + fully_shard")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.strategy == "fsdp2":
        ratios, bare_times = measure_fsdp2(args.repeats, args.steps, args.hidden)
    else:
        ratios, bare_times = measure(args.repeats, args.steps, args.hidden)
    print(f"strategy {args.strategy}, hidden {args.hidden}, steps per run: {args.steps}, repeats: {args.repeats}, "
          f"bare median step {statistics.median(bare_times) * 1e3:.3f} ms")
    extra_ms = statistics.median(bare_times) * (statistics.median(ratios) - 1) * 1e3
    print(f"hub + 5 inactive techniques / bare step time: median {statistics.median(ratios):.4f} "
          f"(min {min(ratios):.4f}, max {max(ratios):.4f}), about {extra_ms:.3f} ms a step")


if __name__ == "__main__":
    main()
