"""Step-time overhead of the efficiency hub with five inactive techniques vs. a bare Trainer.

Runs alternate (bare, hub, bare, hub, ...) on the same small model and data; each run's step time
is the median interval between consecutive ``on_train_batch_start`` calls, and the reported ratio
is the median over repeats of hub/bare. Usage: ``python benchmarks/hub_overhead.py [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

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


def one_run(with_hub: bool, steps: int, hidden: int = 256) -> float:
    pl.seed_everything(0, verbose=False)
    timer = StepTimer()
    callbacks = [_inactive(i) for i in range(5)] if with_hub else []
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps), callbacks=[*callbacks, timer])
    data = TinyDataModule(samples=512, features=64, batch_size=32)
    trainer.fit(TinyClassifier(features=64, hidden=hidden, depth=4), datamodule=data)
    return timer.median_step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=256, help="MLP width: 256 gives ~2 ms steps, 2048 ~20 ms")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios, bare_times = [], []
    for _ in range(args.repeats):
        bare = one_run(False, args.steps, args.hidden)
        hub = one_run(True, args.steps, args.hidden)
        ratios.append(hub / bare)
        bare_times.append(bare)
    print(f"hidden {args.hidden}, steps per run: {args.steps}, repeats: {args.repeats}, bare median step {statistics.median(bare_times) * 1e3:.3f} ms")
    extra_ms = statistics.median(bare_times) * (statistics.median(ratios) - 1) * 1e3
    print(f"hub + 5 inactive techniques / bare step time: median {statistics.median(ratios):.4f} "
          f"(min {min(ratios):.4f}, max {max(ratios):.4f}), about {extra_ms:.3f} ms a step")


if __name__ == "__main__":
    main()
