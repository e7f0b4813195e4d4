"""Is an embedded task's step compute-dominated? Lightning + hub overhead per training step, measured.

For each task, the same module, data and optimizer run ``--steps`` steps twice, alternating:
a plain PyTorch loop (``training_step``, ``backward``, ``optimizer.step``, ``zero_grad``) and the
bench's Trainer (validation off, the hub present through one inactive technique). Each run's step
time is the median interval between consecutive steps; the reported overhead is the median over
pairs of trainer/plain - 1. Issue 14's bar: under 5%.

    .venv/bin/python benchmarks/task_overhead.py --tasks vision lm finetune --steps 30 --pairs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning.pytorch as pl
import torch

from lightning_eff.bench.tasks import get_task
from lightning_eff.testing import quiet_trainer_kwargs


class StepClock(pl.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter())


def median_interval(stamps: list[float]) -> float:
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps[2:] if len(gaps) > 4 else gaps)  # the first steps pay one-time costs


def plain_loop(task, steps: int) -> float:
    module, data = task.make_module(), task.make_data()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    loader = data.train_dataloader()
    stamps = []
    module.train()
    batches = iter(loader)
    for _ in range(steps):
        stamps.append(time.perf_counter())
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        loss = module.per_sample_loss(batch).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return median_interval(stamps)


def trainer_loop(task, steps: int) -> float:
    from lightning_eff.plugins.data import RandomSubset

    module, data = task.make_module(), task.make_data()
    clock = StepClock()
    inactive = RandomSubset(start=steps + 1000, end=steps + 2000)  # the hub in the loop; never starts
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps), callbacks=[clock, inactive])
    trainer.fit(module, datamodule=data)
    return median_interval(clock.stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["vision", "lm", "finetune"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"{'task':<10} {'plain ms/step':>14} {'trainer ms/step':>16} {'overhead':>9}  (median of {args.pairs} pairs)")
    for name in args.tasks:
        task = get_task(name)
        plain_loop(task, 5)  # warm-up
        ratios, plains, trainers = [], [], []
        for _ in range(args.pairs):
            p, t = plain_loop(task, args.steps), trainer_loop(task, args.steps)
            plains.append(p)
            trainers.append(t)
            ratios.append(t / p - 1)
        print(
            f"{name:<10} {1000 * statistics.median(plains):>14.1f} {1000 * statistics.median(trainers):>16.1f} "
            f"{statistics.median(ratios):>8.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
