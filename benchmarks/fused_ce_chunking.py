"""CPU time and peak memory of fused linear + cross-entropy per chunking rule, against unfused.

    .venv/bin/python benchmarks/fused_ce_chunking.py [--shapes 1024x256x32000 ...] [--repeats 5] [--threads 1]

For each ``tokens x hidden x vocab`` shape (float32, the reference path that CPUs run): the unfused
computation (``F.cross_entropy(hidden @ weight.T)`` with autograd), the fused op with Liger Kernel's
chunk (:func:`vocab_ratio_chunk_size`) and with the default chunk (:func:`default_chunk_size`), each
for training (forward + backward: hidden and weight gradients) and scoring (forward under
``no_grad``). Variants are timed round-robin (one run of each per repeat, so load from other processes
hits all of them alike) and the median is reported as a ratio to unfused. Peak memory is the
live-tensor tracker of ``kernel_memory.py`` (bytes the computation adds above its inputs).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("LIGHTNING_EFF_KERNELS", "torch")  # the CPU production path

import torch  # noqa: E402
from kernel_memory import (  # noqa: E402 - sibling script (benchmarks/ is sys.path[0])
    fused_scoring,
    fused_training,
    inputs,
    peak_bytes,
    unfused_scoring,
    unfused_training,
)

flce = importlib.import_module("lightning_eff.kernels.fused_linear_cross_entropy")

DEFAULT_SHAPES = ["1024x256x32000", "4096x256x32000", "1024x1024x32000", "512x256x128256"]


def variants(tokens: int, hidden: int, vocab: int) -> dict[str, tuple[int | None, Callable, Callable]]:
    """name -> (chunk, training fn, scoring fn); chunk None is unfused."""
    out: dict[str, tuple[int | None, Callable, Callable]] = {"unfused": (None, unfused_training, unfused_scoring)}
    for name, rule in (("fused, Liger chunk", flce.vocab_ratio_chunk_size), ("fused, default chunk", flce.default_chunk_size)):
        chunk = rule(tokens, hidden, vocab)
        out[name] = (
            chunk,
            lambda *a, c=chunk: fused_training(*a, c),
            lambda *a, c=chunk: fused_scoring(*a, c),
        )
    return out


def round_robin(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per function, one run of each per round after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(shape: str, repeats: int) -> list[dict[str, object]]:
    tokens, hidden, vocab = (int(x) for x in shape.split("x"))
    args = inputs(tokens, hidden, vocab)
    found = variants(tokens, hidden, vocab)
    rows = []
    for workload, pick in (("training", 1), ("scoring", 2)):
        fns = {name: (lambda fn=v[pick]: fn(*args)) for name, v in found.items()}
        seconds = round_robin(fns, repeats)
        memory = {name: peak_bytes(fn, list(args)) for name, fn in fns.items()}
        for name, (chunk, *_) in found.items():
            rows.append({
                "shape": shape, "workload": workload, "variant": name, "chunk": chunk or tokens,
                "ms": 1e3 * seconds[name], "time_vs_unfused": seconds[name] / seconds["unfused"],
                "peak_mib": memory[name] / 2**20, "memory_vs_unfused": memory[name] / memory["unfused"],
            })
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="tokens x hidden x vocab")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"float32, {args.threads} thread(s), median of {args.repeats}; ratios against unfused")
    print(f"{'shape':>16s} {'workload':8s} {'variant':22s} {'chunk':>6s} {'ms':>9s} {'time x':>7s} "
          f"{'peak MiB':>9s} {'memory x':>8s}")
    rows = []
    for shape in args.shapes:
        for row in measure(shape, args.repeats):
            rows.append(row)
            print(f"{row['shape']:>16s} {row['workload']:8s} {row['variant']:22s} {row['chunk']:6d} {row['ms']:9.1f} "
                  f"{row['time_vs_unfused']:7.2f} {row['peak_mib']:9.1f} {row['memory_vs_unfused']:8.3f}")
    return rows


if __name__ == "__main__":
    main()
