"""Train the teacher the distillation cards distil from: a wider DigitsCNN on the `vision` bench task.

    python benchmarks/distillation_teacher.py --out bench-out/distillation/teacher.pt

Saves a weights-only state dict (``torch.save(model.state_dict())``) that
``docs/benchmarks/distillation/*.yaml`` name as ``teacher`` with
``teacher_class: lightning_eff.bench.tasks.vision:DigitsCNN`` and the same ``teacher_hparams``.
Prints the teacher's validation accuracy and its training FLOPs (a one-off cost the cards report
apart from the distillation runs, which count the teacher's forwards).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_eff.bench.flops import FlopMeter
from lightning_eff.bench.tasks.vision import DigitsCNN, DigitsDataModule
from lightning_eff.testing import quiet_trainer_kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/distillation/teacher.pt"))
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(args.seed)
    model = DigitsCNN(width=args.width, hidden=args.hidden)
    meter = FlopMeter()
    kwargs = quiet_trainer_kwargs(max_steps=args.steps, limit_val_batches=None, deterministic=False)
    trainer = pl.Trainer(**kwargs, callbacks=meter.around([]), val_check_interval=None, check_val_every_n_epoch=None)
    trainer.fit(model, datamodule=DigitsDataModule(seed=args.seed))
    accuracy = trainer.validate(model, datamodule=DigitsDataModule(seed=args.seed), verbose=False)[0]["val/accuracy"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"teacher DigitsCNN(width={args.width}, hidden={args.hidden}): {params} parameters, {args.steps} steps, "
          f"val accuracy {accuracy:.4f}, training FLOPs {meter.total:.3e} -> {args.out}")


if __name__ == "__main__":
    main()
