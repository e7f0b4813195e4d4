"""CPU inference latency of a bench task's model before and after StructuredPruning's shrink.

    python benchmarks/pruning_structured_speed.py --task finetune --sparsity 0.5
    python benchmarks/pruning_structured_speed.py --task finetune --sparsity 0.5 --kind heads
    python benchmarks/pruning_structured_speed.py --task finetune --sparsity 0.5 --kind ffn,heads

Builds the task's model, removes ``sparsity`` of every group's units of each ``--kind`` (FFN neurons,
attention heads, conv channels; lowest magnitude; which units go does not change the latency) with
the same functions StructuredPruning uses at fit end, and times the forward pass on one validation
batch: dense and shrunk alternate (ABAB...) so that the shared machine's noise hits both alike;
medians and their ratio are printed. Quality is measured
separately by the time-to-quality harness (see docs/techniques/structured-pruning.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from lightning_eff.bench import get_task
from lightning_eff.plugins.pruning.masks import count_for, prune_smallest
from lightning_eff.plugins.pruning.structure import (
    find_groups,
    magnitude_importance,
    mask_group,
    shrink_group,
)


def shrink(model: torch.nn.Module, sparsity: float, kinds: str) -> torch.nn.Module:
    """Remove ``sparsity`` of the units of every group of each comma-separated kind (``ffn,heads``)."""
    for kind in kinds.split(","):
        modules = dict(model.named_modules())
        for group in find_groups(model, kind.strip()):
            keep = prune_smallest(magnitude_importance(modules, group), count_for(sparsity, group.units))
            mask_group(modules, group, keep)
            shrink_group(modules, group, keep)
    return model


def forward_fn(task_name: str, module, batch):
    if task_name == "finetune":
        ids, mask, _ = batch
        return lambda: module(ids, mask)
    if task_name == "lm":
        return lambda: module(batch[:, :-1] if batch.dim() == 2 else batch)
    x, _ = batch
    return lambda: module(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="finetune")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--kind", default="ffn", help="ffn, heads, channels, or several comma-separated")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    dense = task.make_module().eval()
    data = task.make_data()
    batch = next(iter(data.val_dataloader()))
    pruned = shrink(copy.deepcopy(dense), args.sparsity, args.kind)
    runs = {"dense": forward_fn(args.task, dense, batch), "shrunk": forward_fn(args.task, pruned, batch)}
    times: dict[str, list[float]] = {"dense": [], "shrunk": []}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn(), fn()
        for i in range(args.repeats):
            for arm in (("dense", "shrunk") if i % 2 == 0 else ("shrunk", "dense")):
                start = time.perf_counter()
                runs[arm]()
                times[arm].append(time.perf_counter() - start)
    medians = {arm: statistics.median(t) for arm, t in times.items()}
    ratios = sorted(d / s for d, s in zip(times["dense"], times["shrunk"]))
    result = {
        "task": args.task,
        "kind": args.kind,
        "sparsity": args.sparsity,
        "threads": args.threads,
        "batch": int(next(t for t in (batch if isinstance(batch, (list, tuple)) else [batch])).shape[0]),
        "params_dense": sum(p.numel() for p in dense.parameters()),
        "params_shrunk": sum(p.numel() for p in pruned.parameters()),
        "median_ms": {arm: round(1000 * m, 3) for arm, m in medians.items()},
        "speedup_of_medians": round(medians["dense"] / medians["shrunk"], 3),
        "paired_speedup_min_median_max": [round(ratios[0], 3), round(statistics.median(ratios), 3), round(ratios[-1], 3)],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
