"""RhoLoss on the `vision` bench task with label noise, against the baseline and against RandomSubset at
the same compute (same ``keep``, same window: the same number of backward passes).

RhoLoss's default ``holdout='cross_fit'`` looks reference losses up by dataset index, so the training
loader samples through the index-tracking ``InfoBatchSampler`` (``info_batch_dataloader``) in *every*
arm (without InfoBatch attached it is a plain shuffling sampler). The reference models are trained
inside the measured run (the clock starts at ``setup``): their cost is part of RhoLoss's time.

    .venv/bin/python benchmarks/data_rho_loss.py --repeats 3 --max-steps 300 --keep 0.5 --out bench-out/rho
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from lightning_eff.bench import format_table, run_bench
from lightning_eff.bench.tasks.vision import DigitsDataModule, vision_task
from lightning_eff.plugins.data import info_batch_dataloader


class IndexedDigits(DigitsDataModule):
    def train_dataloader(self):
        return info_batch_dataloader(super().train_dataloader())


def recipes(args) -> dict[str, dict]:
    window = {"keep": args.keep, "start": args.start, "end": args.end, "interrupt": args.interrupt}
    rho = {
        **window,
        "reference_steps": args.reference_steps,
        "reference_lr": args.reference_lr,
        "reference_hparams": json.loads(args.reference_hparams),
    }
    return {
        "rho_loss": {"techniques": [{"name": "rho_loss", "options": rho}]},
        "random_subset": {"techniques": [{"name": "random_subset", "options": window}]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--evals", type=int, default=10)
    parser.add_argument("--label-noise", type=float, default=0.3)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--start", type=float, default=0.0)
    parser.add_argument("--end", type=float, default=1.0)
    parser.add_argument("--interrupt", type=int, default=0)
    parser.add_argument("--reference-steps", type=int, default=150)
    parser.add_argument("--reference-lr", type=float, default=3e-3)
    parser.add_argument("--reference-hparams", default='{"width": 8, "hidden": 32}')
    parser.add_argument("--arms", default="rho_loss,random_subset")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier timings on a shared machine)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    task = vision_task(label_noise=args.label_noise)
    task = replace(
        task, make_data=lambda: IndexedDigits(label_noise=args.label_noise), name="vision+indexed sampler"
    )
    summary = {}
    for arm in args.arms.split(","):
        recipe = recipes(args)[arm]
        out = Path(args.out) / arm if args.out else None
        result = run_bench(
            task,
            recipe,
            repeats=args.repeats,
            max_steps=args.max_steps,
            evals=args.evals,
            out=out,
            quiet=True,
            command=f"python benchmarks/data_rho_loss.py --arms {arm} --keep {args.keep} "
            f"--repeats {args.repeats} --max-steps {args.max_steps} --label-noise {args.label_noise}",
        )
        print(f"== {arm} ==")
        print(format_table(result))
        summary[arm] = result.model_dump(mode="json") if hasattr(result, "model_dump") else None
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
