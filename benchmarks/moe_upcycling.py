"""Upcycled vs. dense continuation on the bench ``lm`` task (the measurement in docs/techniques/moe-upcycling.md).

Stage 1 trains the dense tiny Llama of the ``lm`` task for ``--dense-steps`` steps (seed 0, the task's
AdamW + warm-up + cosine schedule) and caches its weights. Stage 2 is ``lightning_eff.bench.run_bench``
on a task whose every run starts from those weights: the baseline continues the dense model, the recipe
arm upcycles it (``MoEUpcycling`` in ``setup``) and trains the same number of steps with the same
schedule. Same seeds, same batches, alternating arm order, ``--repeats`` repeats.

    .venv/bin/python benchmarks/moe_upcycling.py --dense-steps 300 --steps 300 --repeats 3 --every-n 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_eff.bench import format_table, run_bench
from lightning_eff.bench.tasks.base import BenchTask
from lightning_eff.bench.tasks.lm import ByteTextDataModule, TinyLlamaLM, count_tokens, lm_task
from lightning_eff.testing import quiet_trainer_kwargs


def train_dense(steps: int, path: Path) -> Path:
    if path.exists():
        return path
    pl.seed_everything(0)
    module = TinyLlamaLM()
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_steps=steps))
    trainer.fit(module, datamodule=ByteTextDataModule())
    torch.save(module.state_dict(), path)
    return path


def from_dense(path: Path) -> TinyLlamaLM:
    module = TinyLlamaLM()
    module.load_state_dict(torch.load(path, weights_only=True))
    return module


def continued_task(path: Path) -> BenchTask:
    base = lm_task()
    return BenchTask(
        name="lm (continued from a dense checkpoint)",
        description=f"{base.description}; every run starts from the same dense weights ({path.name})",
        make_module=lambda: from_dense(path),
        make_data=base.make_data,
        metric=base.metric,
        higher_is_better=False,
        default_max_steps=base.default_max_steps,
        count_tokens=count_tokens,
        details=dict(base.details),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--every-n", type=int, default=1)
    parser.add_argument("--init", default="copy")
    parser.add_argument("--out", type=Path, default=Path("build/bench/moe_upcycling"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timing on a shared machine)")
    parser.add_argument("--flops", choices=["separate", "inline", "off"], default="separate", help="as bench --flops")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    started = time.time()
    dense = train_dense(args.dense_steps, args.out / f"dense_{args.dense_steps}.pt")
    recipe = {
        "description": f"MoE upcycling {args.experts} experts top-{args.top_k} every {args.every_n} MLP, init {args.init}",
        "techniques": [
            {"name": "moe_upcycling", "options": {"num_experts": args.experts, "top_k": args.top_k, "every_n": args.every_n, "init": args.init}}
        ],
    }
    result = run_bench(continued_task(dense), recipe, repeats=args.repeats, max_steps=args.steps, out=args.out / "bench", quiet=True, flops=args.flops,
                       command="benchmarks/moe_upcycling.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()))
    print(format_table(result))
    summary = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": [
            {"arm": r.arm, "seed": r.seed, "final_val_loss": r.final_quality, "train_seconds": r.train_seconds, "steps": r.steps}
            for r in result.runs
        ],
        "seconds": time.time() - started,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
