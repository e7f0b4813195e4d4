"""Offline filters (`lightning-eff data dedup` + `data score`/`filter`) on the `lm` bench task with
injected duplicates and junk text.

The `lm` task has no injection option, so this script builds the corruption itself from the task's
own byte windows (``byte_windows``) and leaves ``lightning_eff.bench`` untouched:

- clean: the first ``--clean`` training windows (64+1 bytes of stdlib source / pydoc text);
- duplicates: ``--dup-sources`` of them repeated ``--dup-copies`` more times each;
- junk: ``--junk`` windows of random printable ASCII;

shuffled together with a fixed seed. Three training sets, same model, same steps, same seeds, same
clean validation windows (TinyLlamaLM, val/loss in nats per byte):

- ``noisy``: everything (the baseline);
- ``filtered``: what ``data dedup`` (MinHash, char 5-grams) then ``data score`` + ``data filter
  --max 20`` (perplexity under a tiny byte LM trained on the noisy set itself) keep, read
  through ``filtered_datamodule``;
- ``random``: a seeded random subset of the noisy set of the same size as ``filtered`` (the
  RandomSubset control: fewer samples, chosen blindly).

The filters' own time (CLI in-process) is reported separately from training time.

    .venv/bin/python benchmarks/data_lm_filters.py --repeats 3 --max-steps 600 --out bench-out/lm-filters
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lightning_eff.bench.harness import resolve_recipe
from lightning_eff.bench.quality import first_reaching
from lightning_eff.bench.runner import RunPlan, run_once
from lightning_eff.bench.tasks.base import BenchTask
from lightning_eff.bench.tasks.lm import TRAIN_BYTES, VAL_BYTES, TinyLlamaLM, byte_windows, count_tokens


def corrupt(clean: torch.Tensor, dup_sources: int, dup_copies: int, junk: int, seed: int = 0):
    """``(windows, kind)``: clean + duplicated + junk windows, shuffled; kind 0 clean, 1 copy, 2 junk."""
    g = torch.Generator().manual_seed(seed)
    sources = torch.randperm(clean.shape[0], generator=g)[:dup_sources]
    copies = clean[sources].repeat(dup_copies, 1)
    noise = torch.randint(32, 127, (junk, clean.shape[1]), generator=g)
    windows = torch.cat([clean, copies, noise])
    kind = torch.cat([torch.zeros(len(clean)), torch.ones(len(copies)), torch.full((junk,), 2.0)]).long()
    order = torch.randperm(len(windows), generator=g)
    return windows[order], kind[order]


class WindowsData(pl.LightningDataModule):
    def __init__(self, train: torch.Tensor, val: torch.Tensor, batch_size: int = 16) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, val, batch_size

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=64)


def run_filters(windows: torch.Tensor, folder: Path, args) -> tuple[list[int], dict]:
    """The offline CLI, in-process: dedup, score, filter within the dedup index."""
    import click
    from click.testing import CliRunner

    from lightning_eff.plugins import data as data_plugin

    root = click.Group("lightning-eff")
    data_plugin.leff_add_cli_commands(cli=root)
    src = folder / "noisy.jsonl"
    with open(src, "w") as f:
        f.writelines(json.dumps({"text": bytes(w).decode("latin-1")}) + "\n" for w in windows.tolist())
    seconds = {}
    steps = [
        ("dedup", ["data", "dedup", str(src), "-o", str(folder / "dedup.json"), "--unit", "char", "--ngram", "5", "--threshold", "0.8"]),
        ("score", ["data", "score", str(src), "-o", str(folder / "scores.json"), "--train-steps", str(args.score_steps), "--max-len", "80"]),
        ("filter", ["data", "filter", str(folder / "scores.json"), "-o", str(folder / "kept.json"), "--within", str(folder / "dedup.json"), "--max", str(args.max_perplexity)]),
    ]
    for name, argv in steps:
        t0 = time.perf_counter()
        result = CliRunner().invoke(root, argv, catch_exceptions=False)
        seconds[name] = time.perf_counter() - t0
        if result.exit_code != 0:
            raise SystemExit(f"{name} failed: {result.output}")
        print(result.output.strip())
    kept = json.loads((folder / "kept.json").read_text())["kept"]
    return kept, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--evals", type=int, default=12)
    parser.add_argument("--clean", type=int, default=3000)
    parser.add_argument("--dup-sources", type=int, default=300)
    parser.add_argument("--dup-copies", type=int, default=5)
    parser.add_argument("--junk", type=int, default=900)
    parser.add_argument("--score-steps", type=int, default=300)
    parser.add_argument("--max-perplexity", type=float, default=20.0, help="filter: keep perplexity <= this")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench-out/lm-filters")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    windows = byte_windows(64, TRAIN_BYTES, VAL_BYTES)
    noisy, kind = corrupt(windows["train"][: args.clean], args.dup_sources, args.dup_copies, args.junk)
    kept, filter_seconds = run_filters(noisy, out, args)
    kept_t = torch.tensor(kept)
    kept_kind = kind[kept_t]
    filtering = {
        "noisy_windows": len(noisy),
        "kept": len(kept),
        "kept_clean": int((kept_kind == 0).sum()),
        "kept_copies": int((kept_kind == 1).sum()),
        "kept_junk": int((kept_kind == 2).sum()),
        "kept_distinct": len({tuple(w) for w in noisy[kept_t].tolist()}),
        "noisy_distinct": len({tuple(w) for w in noisy.tolist()}),
        "injected_copies": int((kind == 1).sum()),
        "injected_junk": int((kind == 2).sum()),
        "seconds": filter_seconds,
    }
    print(json.dumps(filtering))
    g = torch.Generator().manual_seed(1)
    random_kept = torch.randperm(len(noisy), generator=g)[: len(kept)].sort().values.tolist()

    from lightning_eff.plugins.data import filtered_datamodule

    val = windows["val"]
    variants = {
        "noisy": lambda: WindowsData(noisy, val),
        "filtered": lambda: filtered_datamodule(WindowsData(noisy, val), out / "kept.json"),
        "random": lambda: filtered_datamodule(WindowsData(noisy, val), random_kept),
    }
    base_task = BenchTask(
        name="lm+injected", description="tiny Llama, byte-level, duplicates and junk injected",
        make_module=TinyLlamaLM, make_data=variants["noisy"], metric="val/loss", higher_is_better=False,
        default_max_steps=args.max_steps, count_tokens=count_tokens,
    )
    eval_every = max(1, args.max_steps // args.evals)
    plan = RunPlan(task=base_task, recipe=resolve_recipe("random_subset"), max_steps=args.max_steps, eval_every=eval_every, progress_bar=False)
    run_once(replace(plan, max_steps=5, eval_every=5), "baseline", -1, 0)  # warm-up, discarded
    runs: dict[str, list] = {name: [] for name in variants}
    for r in range(args.repeats):
        for name, make_data in variants.items():
            run = run_once(replace(plan, task=replace(base_task, make_data=make_data)), "baseline", r, r)
            runs[name].append(run)
            print(f"{name} seed {r}: final val/loss {run.final_quality:.4f}, {run.train_seconds:.1f}s")
    target = statistics.median(run.final_quality for run in runs["noisy"])
    from lightning_eff.bench.quality import CurvePoint

    report = {"filtering": filtering, "target_val_loss": target, "max_steps": args.max_steps, "variants": {}}
    for name, rs in runs.items():
        hits = [first_reaching([CurvePoint(p.step, p.train_seconds, p.quality) for p in run.curve], target, False) for run in rs]
        report["variants"][name] = {
            "final_val_loss": [round(run.final_quality, 4) for run in rs],
            "train_seconds": [round(run.train_seconds, 2) for run in rs],
            "steps_to_target": [h.step if h else None for h in hits],
            "seconds_to_target": [round(h.train_seconds, 2) if h else None for h in hits],
        }
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
