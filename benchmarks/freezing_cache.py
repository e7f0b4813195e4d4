"""Activation caching of a frozen prefix on the pretrained MiniLM of the ``finetune`` bench task:
training time with vs. without ``cache_activations``, same model, data, seeds and schedule.

The ``finetune`` task's model keeps transformers' dropout (0.1), which caching refuses; here the
dropout of the blocks that can freeze (embeddings, encoder layers 0-4) is set to 0, the last layer's
and the classifier's stay. The training data is the task's (tokenised once, padded to a fixed length:
static), sampled through ``InfoBatchSampler`` so that batches carry sample indices.

Runs alternate (plain, cached, plain, cached...) in one process; the clock is the process CPU time
with torch on one thread, as in ``freezing_bench.py`` (the machine is shared), and wall time is
reported beside it. Each run also checks that the cached run's final weights equal the plain run's.

    .venv/bin/python benchmarks/freezing_cache.py --epochs 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_eff.bench.tasks.finetune import DocstringDataModule, MiniLMClassifier
from lightning_eff.plugins.data import InfoBatchSampler
from lightning_eff.plugins.freezing import ProgressiveFreezing, SelectiveFinetuning
from lightning_eff.testing import quiet_trainer_kwargs, state_differences


class DeterministicPrefixMiniLM(MiniLMClassifier):
    """MiniLM with no dropout in the embeddings and encoder layers 0..4."""

    def __init__(self) -> None:
        super().__init__()
        bert = self.model.bert
        for module in [bert.embeddings, *bert.encoder.layer[:5]]:
            for sub in module.modules():
                if isinstance(sub, nn.Dropout):
                    sub.p = 0.0


class IndexedDocstrings(DocstringDataModule):
    static_data = True  # tokenised once, padded to max_length: the same tensors every epoch

    def train_dataloader(self) -> DataLoader:
        dataset = TensorDataset(*self.splits["train"])
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=InfoBatchSampler(dataset, seed=0), drop_last=True
        )


class EpochClock(pl.Callback):
    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._cpu, self._wall = time.process_time(), time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.cpu.append(time.process_time() - self._cpu)
        self.wall.append(time.perf_counter() - self._wall)


SETUPS = {
    # 6 of the 9 blocks (embeddings, layers 0-4) frozen after the first step
    "fixed-prefix": lambda **c: ProgressiveFreezing(start=0, end=1, level=0.67, **c),
    # the same prefix, frozen from step 0 by selection (the last layer, pooler and classifier train)
    "selective": lambda **c: SelectiveFinetuning(
        train=["model.bert.encoder.layer.5.*", "model.bert.pooler.*", "model.classifier.*"], **c
    ),
    # the recipe's ramp: nothing frozen for the first half, then linearly to 6 of 9 blocks
    "progressive-ramp": lambda **c: ProgressiveFreezing(start=0.5, end=1.0, level=0.67, **c),
}


def run(setup: str, cache: bool, epochs: int):
    pl.seed_everything(0)
    module, data, clock = DeterministicPrefixMiniLM(), IndexedDocstrings(), EpochClock()
    options = {"cache_activations": True, "static_data": True} if cache else {}
    technique = SETUPS[setup](**options)
    trainer = pl.Trainer(**quiet_trainer_kwargs(max_epochs=epochs), callbacks=[technique, clock])
    trainer.fit(module, datamodule=data)
    return module, clock, technique.metrics()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=sorted(SETUPS), default="fixed-prefix")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for repeat in range(args.repeats):
        plain, plain_clock, _ = run(args.setup, False, args.epochs)
        cached, cached_clock, metrics = run(args.setup, True, args.epochs)
        same = not state_differences(plain.state_dict(), cached.state_dict())
        rows.append(
            {
                "repeat": repeat,
                "plain_cpu": plain_clock.cpu,
                "cached_cpu": cached_clock.cpu,
                "plain_wall": plain_clock.wall,
                "cached_wall": cached_clock.wall,
                "identical_weights": same,
                "cache": {k: v for k, v in metrics.items() if k.startswith("cache_")},
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    def ratio(key: str, first_epoch: int) -> list[float]:
        return [sum(r[f"cached_{key}"][first_epoch:]) / sum(r[f"plain_{key}"][first_epoch:]) for r in rows]

    summary = {
        "setup": args.setup,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "identical_weights_all": all(r["identical_weights"] for r in rows),
        "cpu_ratio_whole_run": ratio("cpu", 0),
        "cpu_ratio_served_epochs": ratio("cpu", 2),
        "wall_ratio_whole_run": ratio("wall", 0),
        "wall_ratio_served_epochs": ratio("wall", 2),
        "plain_epoch_cpu_median": statistics.median(c for r in rows for c in r["plain_cpu"][2:]),
        "cached_epoch_cpu_median": statistics.median(c for r in rows for c in r["cached_cpu"][2:]),
    }
    for key in [k for k in summary if k.endswith("_run") or k.endswith("_epochs")]:
        values = summary[key]
        summary[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
