"""Kernel benchmark: correctness at real sizes, then time per implementation, against ceilings
measured in the same run.

    python -m lightning_eff.kernels.bench [--out results.csv] [--repeats 20] [--only OP_PREFIX ...]

On a GPU, every case is first checked against its float64 reference, then timed (median of
``--repeats`` CUDA-event timings after warm-up; inputs are larger than the 50 MB L2 of an H100, so
each run streams from HBM) for: ``lightning_eff`` (the Triton path), ``reference`` (the PyTorch
reference, i.e. the CPU production path run on the GPU), ``torch.compile(reference)``,
``torch`` (the stock PyTorch op where there is one) and ``liger`` (Liger Kernel, when it imports).
Memory-bound ops report GB/s as a percentage of the measured copy bandwidth, GEMM-bound ones
TFLOP/s of the measured bf16 GEMM rate (both ceilings are rows of the CSV too). The CSV has one row
per (op, impl), with peak memory, date, device and versions, written as each row is measured (a run
stopped by a time guard keeps what it measured); commit it under ``docs/benchmarks/``. ``--only``
keeps the cases whose op starts with one of the prefixes (``benchmarks/gpu/run.sh`` runs one group
of ops per process).

Without CUDA it checks correctness only, at small sizes, through Triton's interpreter (re-running
itself with ``TRITON_INTERPRET=1`` when needed), and says that timings need a GPU.
``main(argv)`` is the entry point for ``lightning-eff bench kernels``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_eff.kernels import (
    _dispatch,
    layer_norm,
    moe_grouped_swiglu,
    moe_topk_routing,
    per_sample_cross_entropy,
    rms_norm,
)
from lightning_eff.kernels import grouped_gemm as gg
from lightning_eff.kernels import moe_routing as mr
from lightning_eff.kernels import testing as kt
from lightning_eff.kernels.cross_entropy import cross_entropy_forward_reference
from lightning_eff.kernels.norms import norm_forward_reference

# modules whose name is also the op's name (the package exports the op function)
flce = importlib.import_module("lightning_eff.kernels.fused_linear_cross_entropy")
f8 = importlib.import_module("lightning_eff.kernels.fp8_cast")
nm = importlib.import_module("lightning_eff.kernels.nm_sparsity")

COLUMNS = ["date", "device", "torch", "triton", "op", "shape", "dtype", "impl", "ms", "throughput", "unit",
           "pct_of_ceiling", "peak_memory_mb", "max_rel_error", "status"]


@dataclass
class Case:
    """One op at one size: how to make inputs, run it (outputs to check) and judge it."""

    op: str
    shape: str
    dtype: torch.dtype
    make: Callable[[], tuple]
    run: Callable[..., tuple[Tensor, ...]]  # ours: outputs (and gradients) to compare
    expected: Callable[..., tuple[Tensor, ...]]  # the same, from the float64 reference
    bytes_moved: int = 0  # minimal HBM traffic, for GB/s
    flops: int = 0  # for TFLOP/s (GEMM-bound ops)
    baselines: dict[str, Callable[..., Any]] = field(default_factory=dict)


@contextmanager
def forced_backend(name: str):
    old = os.environ.get(_dispatch.BACKEND_ENV)
    os.environ[_dispatch.BACKEND_ENV] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_dispatch.BACKEND_ENV, None)
        else:
            os.environ[_dispatch.BACKEND_ENV] = old


def _grad(outputs: Tensor, inputs: list[Tensor], grad_output: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad(outputs, inputs, grad_output)


# --- cases ---------------------------------------------------------------------------------------


def cross_entropy_case(rows: int, classes: int, dtype: torch.dtype, device: str, backward: bool) -> Case:
    def make():
        logits = (torch.randn(rows, classes, device=device) * 3).to(dtype).requires_grad_(backward)
        targets = torch.randint(0, classes, (rows,), device=device)
        targets[::11] = -100
        return logits, targets, torch.randn(rows, device=device)

    def ours(logits, targets, g):
        loss = per_sample_cross_entropy(logits, targets)
        return (loss, *_grad(loss, [logits], g)) if backward else (loss,)

    def expected(logits, targets, g):
        loss = kt.float64_reference(cross_entropy_forward_reference, logits, targets)[0]
        if not backward:
            return (loss,)
        fn = lambda x: cross_entropy_forward_reference(x, targets)[0]
        return (loss, *kt.float64_gradients(fn, [logits], [g], wrt=[0]))

    def torch_op(logits, targets, g):
        loss = F.cross_entropy(logits.float(), targets, reduction="none")
        return _grad(loss, [logits], g) if backward else loss

    baselines = _baselines(device, {"torch": torch_op, "torch.compile(torch)": torch_op})
    liger = _liger(device, "LigerCrossEntropyLoss", reduction="none")
    if liger is not None:
        baselines["liger"] = lambda x, t, g: (_grad(liger(x, t), [x], g) if backward else liger(x, t))
    element = torch.finfo(dtype).bits // 8
    return Case(
        "per_sample_cross_entropy" + ("+backward" if backward else ""), f"{rows}x{classes}", dtype, make, ours,
        expected, bytes_moved=(3 if backward else 1) * rows * classes * element, baselines=baselines,
    )


def norm_case(name: str, rows: int, cols: int, dtype: torch.dtype, device: str, backward: bool = True) -> Case:
    center = name == "layer_norm"
    eps = 1e-5 if center else 1e-6

    def make():
        x = torch.randn(rows, cols, device=device).to(dtype).requires_grad_(backward)
        w = torch.randn(cols, device=device).to(dtype).requires_grad_(backward)
        b = torch.randn(cols, device=device).to(dtype).requires_grad_(backward) if center else None
        return x, w, b, torch.randn(rows, cols, device=device).to(dtype)

    def params(x, w, b):
        return [x, w] + ([b] if b is not None else [])

    def ours(x, w, b, dy):
        y = layer_norm(x, w, b, eps) if center else rms_norm(x, w, eps)
        return (y, *_grad(y, params(x, w, b), dy)) if backward else (y,)

    def reference(x, w, b):
        return norm_forward_reference(x, w, b, eps, center)[0]

    def expected(x, w, b, dy):
        y = kt.float64_reference(reference, x, w, b)
        if not backward:
            return (y,)
        wrt = [0, 1, 2] if center else [0, 1]
        return (y, *kt.float64_gradients(reference, [x, w, b], [dy], wrt=wrt))

    def torch_op(x, w, b, dy):
        y = F.layer_norm(x, (cols,), w, b, eps) if center else F.rms_norm(x, (cols,), w, eps)
        return _grad(y, params(x, w, b), dy) if backward else y

    def fp32_formula(x, w, b, dy):
        y = reference(x, w, b)
        return _grad(y, params(x, w, b), dy) if backward else y

    baselines = _baselines(device, {"torch": torch_op, "torch.compile(reference)": fp32_formula})
    liger = _liger(device, "LigerLayerNorm" if center else "LigerRMSNorm", cols, eps=eps)
    if liger is not None:
        liger = liger.to(device=device, dtype=dtype)
        baselines["liger"] = lambda x, w, b, dy: (_grad(liger(x), [x, *liger.parameters()], dy) if backward else liger(x))
    element = torch.finfo(dtype).bits // 8
    # forward reads x, writes y; the backward reads x and dy, writes dx
    return Case(name + ("+backward" if backward else ""), f"{rows}x{cols}", dtype, make, ours, expected,
                bytes_moved=(5 if backward else 2) * rows * cols * element, baselines=baselines)


def fused_linear_case(tokens: int, hidden: int, vocab: int, dtype: torch.dtype, device: str, backward: bool = True) -> Case:
    """Training (forward + backward) or, with ``backward=False``, scoring under ``no_grad``."""

    def make():
        h = (torch.randn(tokens, hidden, device=device)).to(dtype).requires_grad_(backward)
        w = (torch.randn(vocab, hidden, device=device) / hidden**0.5).to(dtype).requires_grad_(backward)
        t = torch.randint(0, vocab, (tokens,), device=device)
        return h, w, t, torch.randn(tokens, device=device)

    def ours(h, w, t, g):
        loss = flce.fused_linear_cross_entropy(h, w, t)
        return (loss, *_grad(loss, [h, w], g)) if backward else (loss,)

    def expected(h, w, t, g):
        ref = lambda h, w: flce.fused_linear_cross_entropy_reference(h, w, t)
        loss = kt.float64_reference(ref, h, w)
        return (loss, *kt.float64_gradients(ref, [h, w], [g], wrt=[0, 1])) if backward else (loss,)

    def unfused(h, w, t, g):
        loss = F.cross_entropy((h @ w.T).float(), t, reduction="none")
        return _grad(loss, [h, w], g) if backward else loss

    baselines = _baselines(device, {"torch (unfused)": unfused, "torch.compile(unfused)": unfused})
    liger = _liger(device, "LigerFusedLinearCrossEntropyLoss", reduction="sum")  # its backward assumes a scalar
    if liger is not None:
        baselines["liger (sum)"] = lambda h, w, t, g: (torch.autograd.grad(liger(w, h, t), [h, w]) if backward
                                                       else liger(w, h, t))
    # 6 N H V: the model FLOPs of forward + backward (ours spends 8 N H V: it recomputes the logits).
    return Case("fused_linear_cross_entropy" + ("+backward" if backward else ""), f"{tokens}x{hidden}->{vocab}",
                dtype, make, ours, expected, flops=(6 if backward else 2) * tokens * hidden * vocab,
                baselines=baselines)


def moe_routing_case(tokens: int, experts: int, top_k: int, device: str) -> Case:
    def make():
        return (torch.randn(tokens, experts, device=device),)

    def ours(logits):
        routed = moe_topk_routing(logits, top_k)
        return routed.weights, routed.experts, routed.counts, routed.offsets, routed.permutation

    def expected(logits):
        weights = kt.float64_reference(lambda x: mr.topk_reference(x, top_k)[0], logits)
        chosen = mr.topk_reference(logits.double(), top_k)[1]
        return (weights, chosen, *mr.metadata_reference(chosen, experts)[:3])

    def torch_op(logits):
        weights, chosen = mr.topk_reference(logits, top_k)
        return weights, mr.metadata_reference(chosen, experts)

    baselines = _baselines(device, {"reference (sort + bincount)": torch_op, "torch.compile(reference)": torch_op})
    slots = tokens * top_k
    return Case("moe_topk_routing", f"{tokens}x{experts} k={top_k}", torch.float32, make, ours, expected,
                bytes_moved=4 * tokens * experts + slots * (4 + 8 + 8 + 8), baselines=baselines)


def moe_grouped_case(tokens: int, hidden: int, ff: int, experts: int, top_k: int, dtype: torch.dtype, device: str) -> Case:
    def make():
        g = lambda *shape, scale=1.0: (torch.randn(*shape, device=device) * scale).to(dtype).requires_grad_(True)
        x = g(tokens, hidden)
        w_gate, w_up = g(experts, ff, hidden, scale=hidden**-0.5), g(experts, ff, hidden, scale=hidden**-0.5)
        w_down = g(experts, hidden, ff, scale=ff**-0.5)
        weights, chosen = mr.topk_reference(torch.randn(tokens, experts, device=device), top_k)
        _, offsets, permutation, _ = mr.metadata_reference(chosen, experts)
        return (x, w_gate, w_up, w_down, weights.requires_grad_(True), chosen, offsets, permutation,
                torch.randn(tokens, hidden, device=device).to(dtype))

    def ours(x, wg, wu, wd, w, chosen, offsets, permutation, dy):
        out = moe_grouped_swiglu(x, wg, wu, wd, w, offsets, permutation)
        return (out, *_grad(out, [x, wg, wu, wd, w], dy))

    def expected(x, wg, wu, wd, w, chosen, offsets, permutation, dy):
        ref = lambda *a: gg.moe_swiglu_loop_reference(*a, chosen)
        args = [x, wg, wu, wd, w]
        return (kt.float64_reference(ref, *args), *kt.float64_gradients(ref, args, [dy], wrt=[0, 1, 2, 3, 4]))

    def loop(x, wg, wu, wd, w, chosen, offsets, permutation, dy):
        return _grad(gg.moe_swiglu_loop_reference(x, wg, wu, wd, w, chosen), [x, wg, wu, wd, w], dy)

    def grouped_mm(x, wg, wu, wd, w, chosen, offsets, permutation, dy):
        return _grad(grouped_mm_swiglu(x, wg, wu, wd, w, offsets, permutation), [x, wg, wu, wd, w], dy)

    fns = {"torch (loop over experts)": loop}
    if hasattr(torch, "_grouped_mm"):
        fns["torch._grouped_mm"] = grouped_mm
    baselines = _baselines(device, fns)
    # 3 GEMMs of 2 * slots * hidden * ff FLOPs forward, twice that backward
    return Case("moe_grouped_swiglu+backward", f"{tokens}x{hidden}->{ff} E={experts} k={top_k}", dtype, make, ours,
                expected, flops=18 * tokens * top_k * hidden * ff, baselines=baselines)


def grouped_mm_swiglu(x: Tensor, wg: Tensor, wu: Tensor, wd: Tensor, weights: Tensor, offsets: Tensor,
                      permutation: Tensor) -> Tensor:
    """``moe_grouped_swiglu`` written with PyTorch's grouped GEMM (``torch._grouped_mm``), the
    stock-PyTorch baseline for the grouped kernel: gather, three grouped GEMMs, weighted scatter-add."""
    top_k = weights.shape[1]
    kept = permutation[: int(offsets[-1])]
    rows = x[kept // top_k]
    ends = offsets[1:].to(torch.int32)  # _grouped_mm takes each group's end row
    gate = torch._grouped_mm(rows, wg.transpose(-2, -1), offs=ends)
    up = torch._grouped_mm(rows, wu.transpose(-2, -1), offs=ends)
    y = torch._grouped_mm(F.silu(gate) * up, wd.transpose(-2, -1), offs=ends)
    y = y.float() * weights.reshape(-1)[kept, None]
    return torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add(0, kept // top_k, y).to(x.dtype)


def fp8_cast_case(rows: int, cols: int, granularity: str, device: str) -> Case:
    def make():
        return (torch.randn(rows, cols, device=device) * 4,)

    def ours(x):
        y, scale = f8.fp8_cast(x, granularity)
        return y.float(), scale.float().reshape(-1)

    def expected(x):  # the cast is exact arithmetic on fp32: ours must match the reference bit for bit
        y, scale = f8.fp8_cast_reference(x, granularity, torch.float8_e4m3fn)
        return y.float(), scale.float().reshape(-1)

    reference = lambda x: f8.fp8_cast_reference(x, granularity, torch.float8_e4m3fn)
    baselines = _baselines(device, {"reference (amax + scale + cast)": reference, "torch.compile(reference)": reference})
    return Case(f"fp8_cast ({granularity})", f"{rows}x{cols}", torch.float32, make, ours, expected,
                bytes_moved=rows * cols * (4 + 1), baselines=baselines)


def nm_mask_decay_case(rows: int, cols: int, n: int, m: int, dtype: torch.dtype, device: str) -> Case:
    decay = 2e-4

    def make():
        return torch.randn(rows, cols, device=device).to(dtype), torch.randn(rows, cols, device=device).to(dtype)

    def ours(w, g):
        keep, grad = nm.nm_mask_decay(w, g, n, m, decay)
        return keep.float(), grad

    def expected(w, g):  # the mask must match exactly (the float64 |w| order is the fp32 one)
        keep, grad = nm.nm_mask_decay_reference(w.double(), g.double(), n, m, decay)
        return keep.float(), grad

    reference = lambda w, g: nm.nm_mask_decay_reference(w, g, n, m, decay)
    baselines = _baselines(device, {"reference (topk + where)": reference, "torch.compile(reference)": reference})
    size = rows * cols * torch.tensor([], dtype=dtype).element_size()
    return Case(f"nm_mask_decay ({n}:{m})", f"{rows}x{cols}", dtype, make, ours, expected,
                bytes_moved=3 * size + rows * cols, baselines=baselines)


def gpu_cases() -> list[Case]:
    # LLM shapes (8k-16k tokens, hidden 4096, vocab 32k / 128k); every input is larger than an
    # H100's 50 MB L2.
    bf16 = torch.bfloat16
    return [
        cross_entropy_case(8192, 32768, bf16, "cuda", backward=False),
        cross_entropy_case(8192, 32768, bf16, "cuda", backward=True),
        cross_entropy_case(8192, 131072, bf16, "cuda", backward=False),
        cross_entropy_case(8192, 131072, bf16, "cuda", backward=True),
        norm_case("rms_norm", 16384, 4096, bf16, "cuda", backward=False),
        norm_case("rms_norm", 16384, 4096, bf16, "cuda"),
        norm_case("layer_norm", 16384, 4096, bf16, "cuda", backward=False),
        norm_case("layer_norm", 16384, 4096, bf16, "cuda"),
        fused_linear_case(8192, 4096, 32768, bf16, "cuda"),
        fused_linear_case(8192, 4096, 131072, bf16, "cuda"),
        fused_linear_case(8192, 4096, 131072, bf16, "cuda", backward=False),
        moe_routing_case(65536, 64, 4, "cuda"),
        moe_grouped_case(8192, 2048, 8192, 8, 2, bf16, "cuda"),
        fp8_cast_case(16384, 8192, "tensorwise", "cuda"),
        fp8_cast_case(16384, 8192, "rowwise", "cuda"),
        nm_mask_decay_case(16384, 8192, 2, 4, bf16, "cuda"),
    ]


def cpu_cases() -> list[Case]:
    # Small: the interpreter runs one Python step per program.
    return [
        cross_entropy_case(8, 300, torch.float32, "cpu", backward=True),
        cross_entropy_case(8, 300, torch.bfloat16, "cpu", backward=True),
        norm_case("rms_norm", 20, 257, torch.float16, "cpu"),
        norm_case("layer_norm", 20, 257, torch.float16, "cpu"),
        norm_case("rms_norm", 20, 257, torch.float16, "cpu", backward=False),
        fused_linear_case(24, 64, 300, torch.float32, "cpu"),
        fused_linear_case(24, 64, 300, torch.float32, "cpu", backward=False),
        moe_routing_case(300, 6, 2, "cpu"),
        moe_grouped_case(20, 32, 48, 4, 2, torch.float32, "cpu"),
        fp8_cast_case(9, 130, "tensorwise", "cpu"),
        fp8_cast_case(9, 130, "rowwise", "cpu"),
        nm_mask_decay_case(12, 64, 2, 4, torch.float32, "cpu"),
        nm_mask_decay_case(12, 64, 2, 4, torch.bfloat16, "cpu"),
    ]


def _baselines(device: str, fns: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """What ours is timed against, compiled where the name says so; none on CPU (no timings there)."""
    if device != "cuda":
        return {}
    # static shapes: each case is one shape, and a dynamic recompile on the next case would slow the baseline
    return {name: torch.compile(fn, dynamic=False) if name.startswith("torch.compile") else fn for name, fn in fns.items()}


def _liger(device: str, name: str, *args: Any, **kwargs: Any) -> Any:
    if device != "cuda":
        return None
    try:
        return getattr(importlib.import_module("liger_kernel.transformers"), name)(*args, **kwargs)
    except Exception:  # noqa: BLE001 - not installed, or an API that moved: benchmark without it
        return None


# --- measurement ---------------------------------------------------------------------------------


def check(case: Case, backend: str) -> tuple[float, str]:
    """Largest normalised max error over the case's outputs through ``backend``, and a status."""
    inputs = case.make()
    with forced_backend(backend):
        actual = case.run(*inputs)
    expected = case.expected(*inputs)
    worst = 0.0
    for i, (a, e) in enumerate(zip(actual, expected)):
        try:
            worst = max(worst, kt.assert_matches_reference(a, e, dtype=case.dtype, name=f"output {i}").max_rel)
        except AssertionError as exc:
            return kt.compare(a, e).max_rel, f"FAIL: {exc}"
    return worst, "ok"


def time_cuda(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median ms, peak MB allocated above the starting point)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**20


def ceilings(repeats: int) -> dict[str, float]:
    """Measured copy bandwidth (GB/s, read + write) and dense bf16 GEMM rate (TFLOP/s)."""
    src = torch.empty(2**29, dtype=torch.uint8, device="cuda").random_(0, 255)  # 512 MiB
    dst = torch.empty_like(src)
    copy_ms, _ = time_cuda(lambda: dst.copy_(src), repeats)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    gemm_ms, _ = time_cuda(lambda: a @ b, repeats)
    return {"GB/s": 2 * src.numel() / copy_ms / 1e6, "TFLOP/s": 2 * 8192**3 / gemm_ms / 1e9}


def _versions() -> dict[str, str]:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    triton_version = getattr(_dispatch.triton, "__version__", "not installed")
    return {"date": dt.date.today().isoformat(), "device": device, "torch": torch.__version__, "triton": triton_version}


def ceiling_rows(limits: dict[str, float]) -> list[dict[str, Any]]:
    what = {"GB/s": ("ceiling: copy bandwidth", "512 MiB", "uint8"), "TFLOP/s": ("ceiling: dense GEMM", "8192^3", "bfloat16")}
    return [{"op": what[unit][0], "shape": what[unit][1], "dtype": what[unit][2], "impl": "torch",
             "throughput": f"{amount:.1f}", "unit": unit, "pct_of_ceiling": "100.0", "status": "ok"}
            for unit, amount in limits.items()]


def selected(cases: list[Case], only: list[str] | None) -> list[Case]:
    """The cases whose op starts with one of the prefixes (all of them without ``only``)."""
    return [c for c in cases if not only or any(c.op.startswith(prefix) for prefix in only)]


def _dtype(case: Case) -> str:
    """The dtype column of the console table: without it, cases differing only in dtype look duplicated."""
    return str(case.dtype).removeprefix("torch.")


def run_gpu(repeats: int, only: list[str] | None = None) -> Iterator[dict[str, Any]]:
    limits = ceilings(repeats)
    print(f"ceilings: copy {limits['GB/s']:.0f} GB/s, bf16 GEMM {limits['TFLOP/s']:.0f} TFLOP/s")
    yield from ceiling_rows(limits)
    for case in selected(gpu_cases(), only):
        error, status = check(case, "triton")
        impls: dict[str, Callable[..., Any]] = {
            "lightning_eff": lambda *a, c=case: _forced(c.run, "triton", *a),
            "reference": lambda *a, c=case: _forced(c.run, "torch", *a),
            **case.baselines,
        }
        for impl, fn in impls.items():
            row = {"op": case.op, "shape": case.shape, "dtype": _dtype(case), "impl": impl}
            try:
                inputs = case.make()
                ms, peak = time_cuda(lambda fn=fn, inputs=inputs: fn(*inputs), repeats)
                unit, amount = ("TFLOP/s", case.flops / ms / 1e9) if case.flops else ("GB/s", case.bytes_moved / ms / 1e6)
                row.update(ms=f"{ms:.4f}", throughput=f"{amount:.1f}", unit=unit,
                           pct_of_ceiling=f"{100 * amount / limits[unit]:.1f}", peak_memory_mb=f"{peak:.0f}",
                           status=status if impl == "lightning_eff" else "ok")
                if impl == "lightning_eff":
                    row["max_rel_error"] = f"{error:.3g}"
            except Exception as exc:  # noqa: BLE001 - one failing baseline must not end the run
                row["status"] = f"error: {type(exc).__name__}: {exc}"[:300]
            finally:
                inputs = None
                torch.cuda.empty_cache()
            print(f"{case.op:40s} {case.shape:>18s} {_dtype(case):>9s} {impl:26s} {row.get('ms', '-'):>10s} ms "
                  f"{row.get('pct_of_ceiling', '-'):>6s} % {row['status'][:60]}", flush=True)
            yield row


def _forced(fn: Callable[..., Any], backend: str, *args: Any) -> Any:
    with forced_backend(backend):
        return fn(*args)


def run_cpu(only: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Correctness of the Triton path (interpreter) and the reference at small sizes; no timings."""
    backends = ["triton", "torch"] if _dispatch.INTERPRETED else ["torch"]
    for case in selected(cpu_cases(), only):
        for backend in backends:
            error, status = check(case, backend)
            impl = "lightning_eff (interpreter)" if backend == "triton" else "reference"
            print(f"{case.op:40s} {case.shape:>12s} {_dtype(case):>9s} {impl:28s} max rel error {error:.2g}  {status[:80]}", flush=True)
            yield {"op": case.op, "shape": case.shape, "dtype": _dtype(case),
                   "impl": impl, "max_rel_error": f"{error:.3g}", "status": status}
    print("timings need a GPU: this run checked correctness only (no CUDA device)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_eff.kernels.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the results to this CSV file")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per implementation (GPU)")
    parser.add_argument("--only", nargs="+", metavar="OP_PREFIX", help="only the ops starting with these")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and _dispatch.triton is not None and not _dispatch.INTERPRETED:
        # Kernels are interpreted only if TRITON_INTERPRET was set before they were defined.
        env = {**os.environ, _dispatch.INTERPRET_ENV: "1"}
        return subprocess.call([sys.executable, "-m", "lightning_eff.kernels.bench", *(argv or sys.argv[1:])], env=env)
    rows = run_gpu(args.repeats, args.only) if torch.cuda.is_available() else run_cpu(args.only)
    stamp = _versions()
    failed = written = 0
    with open(args.out or os.devnull, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**stamp, **row})
            f.flush()  # a run killed by a time guard keeps the rows measured so far
            failed += row.get("status", "").startswith("FAIL")
            written += 1
    if args.out:
        print(f"wrote {written} rows to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
