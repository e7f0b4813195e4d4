"""InfoBatch on the `vision` bench task (30% label noise) through the time-to-quality harness.

The embedded task's data module shuffles with a plain DataLoader; InfoBatch needs the opt-in
InfoBatchSampler, so this script builds the same task with the training loader wrapped by
``info_batch_dataloader``, in both arms (without the technique the sampler is a plain shuffler).

    .venv/bin/python benchmarks/data_info_batch.py --repeats 3 --max-steps 300 --out bench-out/vision-info_batch
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from lightning_eff.bench import format_table, run_bench
from lightning_eff.bench.tasks.vision import DigitsDataModule, vision_task
from lightning_eff.plugins.data import info_batch_dataloader


class InfoBatchDigits(DigitsDataModule):
    def train_dataloader(self):
        return info_batch_dataloader(super().train_dataloader())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--label-noise", type=float, default=0.3)
    parser.add_argument("--recipe", default="info_batch")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    task = vision_task(label_noise=args.label_noise)
    task = replace(
        task, make_data=lambda: InfoBatchDigits(label_noise=args.label_noise), name="vision+InfoBatchSampler"
    )
    result = run_bench(
        task,
        args.recipe,
        repeats=args.repeats,
        max_steps=args.max_steps,
        out=args.out,
        command=f"python benchmarks/data_info_batch.py --repeats {args.repeats} --max-steps {args.max_steps} "
        f"--label-noise {args.label_noise} --recipe {args.recipe}",
    )
    print(format_table(result))


if __name__ == "__main__":
    main()
