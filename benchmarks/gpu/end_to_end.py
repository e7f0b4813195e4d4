"""End-to-end parts of the GPU kit: training steps and inference matmuls with the project's techniques.

    python benchmarks/gpu/end_to_end.py --part e2e_mixed_precision --out rows.csv [--dry-run]

Parts (``benchmarks/gpu/runner.py`` runs each in its own process, under its own time guard):

- ``e2e_mixed_precision``: a ~1B Llama-style model (hidden 2048, 16 layers, d_ff 8192, vocab 32000),
  one AdamW training step on 2 x 2048 tokens, fp32 (TF32 off) vs bf16 autocast with the
  ``mixed_precision`` technique's fp32 policy (norms kept in fp32).
- ``e2e_float8``: the same model in bf16, each decoder layer ``torch.compile``-d, vs the same with the
  ``float8_training`` technique's conversion (torchao ``Float8Linear``, tensorwise scaling).
- ``e2e_sparse_2_4``: the model's Linear shapes at 8192 tokens, bf16 inference matmuls: dense vs the
  weight pruned 2:4 by ``nm_sparsity``'s mask and converted with ``to_sparse_semi_structured``.
- ``e2e_moe``: an upcycled MoE layer (8 SwiGLU experts of the model's MLP, top-2, 8192 tokens,
  bf16), forward + backward: the grouped kernels (``MoELayer``'s path) vs the per-expert loop.

Every measurement is its own ``try``: a failure becomes an ``error`` row and the part goes on. Rows
use the columns of ``lightning_eff.kernels.bench`` (ms = median step or matmul time; ``speedup``
rows compare two arms). ``--dry-run`` uses tiny sizes and whatever device there is; what needs CUDA
is recorded as ``skipped: needs CUDA``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lightning_eff.kernels import bench

NEEDS_CUDA = "skipped: needs CUDA"


class Rows:
    """The part's CSV, written a row at a time (a killed part keeps what it measured)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "w", newline="")  # open for the part's lifetime
        self._writer = csv.DictWriter(self._file, fieldnames=bench.COLUMNS)
        self._writer.writeheader()
        self._stamp = bench._versions()

    def add(self, **row: Any) -> None:
        self._writer.writerow({**self._stamp, **{k: v for k, v in row.items() if v is not None}})
        self._file.flush()
        print({k: row[k] for k in ("op", "impl", "ms", "throughput", "unit", "status") if k in row}, flush=True)

    def error(self, op: str, shape: str, impl: str, exc: Exception) -> None:
        self.add(op=op, shape=shape, impl=impl, status=f"error: {type(exc).__name__}: {exc}"[:300])


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float | None]:
    """(median ms, peak MiB on CUDA or None) after warm-up."""
    if torch.cuda.is_available():
        return bench.time_cuda(fn, repeats)
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), None


def measure(rows: Rows, op: str, shape: str, impl: str, fn: Callable[[], Any], repeats: int,
            work: float = 0.0, unit: str = "tokens/s") -> float | None:
    """Times ``fn`` into a row (``work`` units per call); an exception becomes an error row."""
    try:
        ms, peak = timed(fn, repeats)
    except Exception as exc:  # noqa: BLE001 - one failing arm must not end the part
        rows.error(op, shape, impl, exc)
        return None
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rows.add(op=op, shape=shape, impl=impl, ms=f"{ms:.3f}", throughput=f"{work / ms * 1e3:.1f}" if work else None,
             unit=unit if work else None, peak_memory_mb=f"{peak:.0f}" if peak is not None else None, status="ok")
    return ms


def speedup(rows: Rows, op: str, shape: str, impl: str, baseline_ms: float | None, ms: float | None) -> None:
    if baseline_ms and ms:
        rows.add(op=op, shape=shape, impl=impl, throughput=f"{baseline_ms / ms:.3f}", unit="speedup", status="ok")


# --- the model -----------------------------------------------------------------------------------


def llama_config(dry_run: bool):
    import transformers

    if dry_run:
        return transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    # Llama-3.2-1B's body with a 32k vocabulary (untied head): about 1.1B parameters.
    return transformers.LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                    num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def llama(config, dtype: torch.dtype = torch.float32):
    import transformers

    torch.manual_seed(0)
    with torch.device(device()):  # initialised where it runs: a 1B model's CPU init takes many seconds
        return transformers.LlamaForCausalLM(config).to(dtype)


def train_step(model, batch: torch.Tensor, autocast: bool) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=torch.cuda.is_available())

    def step() -> None:
        with torch.autocast(device(), dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss  # no KV cache in training
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def tokens(config, dry_run: bool) -> torch.Tensor:
    batch, seq = (2, 16) if dry_run else (2, 2048)
    return torch.randint(0, config.vocab_size, (batch, seq), device=device())


def model_shape(config, batch: torch.Tensor) -> str:
    return (f"llama h{config.hidden_size} L{config.num_hidden_layers} ff{config.intermediate_size} "
            f"V{config.vocab_size}, {batch.shape[0]}x{batch.shape[1]} tokens")


# --- parts ---------------------------------------------------------------------------------------


def e2e_mixed_precision(rows: Rows, dry_run: bool) -> None:
    from lightning_eff.plugins.precision.policy import DEFAULT_FP32_TYPES, fp32_policy_modules, keep_in_fp32

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    config = llama_config(dry_run)
    batch = tokens(config, dry_run)
    op, shape, repeats = "e2e: train step (AdamW)", model_shape(config, batch), 2 if dry_run else 5
    results = {}
    for impl, autocast in (("fp32", False), ("bf16-mixed (mixed_precision)", True)):
        try:
            model = llama(config)
            if autocast:
                for module in fp32_policy_modules(model, (), DEFAULT_FP32_TYPES).values():
                    keep_in_fp32(module)
            step = train_step(model, batch, autocast)
        except Exception as exc:  # noqa: BLE001
            rows.error(op, shape, impl, exc)
            continue
        results[impl] = measure(rows, op, shape, impl, step, repeats, work=batch.numel())
        del model, step
    speedup(rows, op, shape, "bf16-mixed / fp32", results.get("fp32"), results.get("bf16-mixed (mixed_precision)"))


def e2e_float8(rows: Rows, dry_run: bool) -> None:
    op = "e2e: train step (AdamW, compiled layers)"
    if not torch.cuda.is_available():  # before importing transformers and the plugins: skipped quickly
        rows.add(op=op, impl="float8 (float8_training)", status=NEEDS_CUDA)
        return
    from lightning_eff.plugins.precision import float8

    config = llama_config(dry_run)
    batch = tokens(config, dry_run)
    shape = model_shape(config, batch)

    problem = float8.hardware_problem() or float8.torchao_missing()
    if problem:
        rows.add(op=op, shape=shape, impl="float8 (float8_training)", status=f"skipped: {problem}")
        return
    results = {}
    for impl in ("bf16", "float8 (float8_training)"):
        try:
            model = llama(config, torch.bfloat16)
            if impl != "bf16":
                names, _ = float8.plan_conversion(model, min_features=64, include=(), exclude=("lm_head",))
                float8.convert(model, names, recipe="tensorwise", emulate=False)
            for layer in model.model.layers:
                layer.compile()  # one compiled graph serves every layer: minutes less than the whole model
            step = train_step(model, batch, autocast=False)
        except Exception as exc:  # noqa: BLE001
            rows.error(op, shape, impl, exc)
            continue
        results[impl] = measure(rows, op, shape, impl, step, 5, work=batch.numel())
        del model, step
    speedup(rows, op, shape, "float8 / bf16", results.get("bf16"), results.get("float8 (float8_training)"))


def linear_shapes(config) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of one decoder layer's Linear layers."""
    h, f = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * h // config.num_attention_heads
    return {"q/o_proj": (h, h), "k/v_proj": (kv, h), "gate/up_proj": (f, h), "down_proj": (h, f)}


def e2e_sparse_2_4(rows: Rows, dry_run: bool) -> None:
    if not torch.cuda.is_available():  # semi-structured sparse matmuls are CUDA kernels
        rows.add(op="e2e: 2:4 inference matmul (bf16)", impl="2:4 semi-structured", status=NEEDS_CUDA)
        return
    config = llama_config(dry_run)
    for name, (out_features, in_features) in linear_shapes(config).items():
        sparse_matmul(rows, name, 64 if dry_run else 8192, out_features, in_features)


def sparse_matmul(rows: Rows, name: str, n_tokens: int, out_features: int, in_features: int) -> None:
    from lightning_eff.kernels.nm_sparsity import nm_mask
    from lightning_eff.plugins.pruning.nm import semi_structured_unsupported

    op, shape = "e2e: 2:4 inference matmul (bf16)", f"{name} {n_tokens}x{in_features}->{out_features}"
    weight = torch.randn(out_features, in_features, device=device()).to(torch.bfloat16)
    weight = weight * nm_mask(weight, 2, 4)  # what nm_sparsity leaves after make_permanent
    problem = semi_structured_unsupported(weight, 2, 4)
    if problem:
        rows.add(op=op, shape=shape, impl="2:4 semi-structured", status=f"skipped: {problem}")
        return
    x = torch.randn(n_tokens, in_features, device=device()).to(torch.bfloat16)
    tflop = 2 * n_tokens * in_features * out_features / 1e12
    dense = measure(rows, op, shape, "dense", lambda: F.linear(x, weight), 20, work=tflop, unit="TFLOP/s")
    try:
        from torch.sparse import to_sparse_semi_structured

        sparse = to_sparse_semi_structured(weight)
        error = (F.linear(x, sparse).float() - F.linear(x, weight).float()).abs().max().item()
    except Exception as exc:  # noqa: BLE001
        rows.error(op, shape, "2:4 semi-structured", exc)
        return
    ms = measure(rows, op, shape, "2:4 semi-structured", lambda: F.linear(x, sparse), 20, work=tflop, unit="TFLOP/s")
    rows.add(op=op, shape=shape, impl="2:4 vs dense: max abs difference", max_rel_error=f"{error:.3g}", status="ok")
    speedup(rows, op, shape, "2:4 / dense", dense, ms)


def e2e_moe(rows: Rows, dry_run: bool) -> None:
    import transformers

    from lightning_eff.plugins.moe.layer import loop_topk_experts, routed_topk_experts
    from lightning_eff.plugins.moe.routing import topk_route

    config = llama_config(dry_run)
    n_tokens, n_experts, top_k = (64, 4, 2) if dry_run else (8192, 8, 2)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    torch.manual_seed(0)
    experts = torch.nn.ModuleList(
        transformers.models.llama.modeling_llama.LlamaMLP(config) for _ in range(n_experts)
    ).to(device=device(), dtype=dtype)
    router = torch.randn(n_experts, config.hidden_size, device=device(), dtype=dtype) * 0.02
    x0 = torch.randn(n_tokens, config.hidden_size, device=device(), dtype=dtype)
    grad = torch.randn_like(x0)
    op = "e2e: upcycled MoE layer fwd+bwd"
    shape = f"{n_tokens} tokens h{config.hidden_size} ff{config.intermediate_size} E={n_experts} k={top_k}"

    def step(compute) -> Callable[[], None]:
        def run() -> None:
            x = x0.clone().requires_grad_(True)
            out = compute(x, experts, topk_route(x @ router.t(), top_k))
            out.backward(grad)

        return run

    repeats = 2 if dry_run else 10
    loop = measure(rows, op, shape, "per-expert loop", step(loop_topk_experts), repeats, work=n_tokens)
    grouped = measure(rows, op, shape, "grouped kernels (MoELayer)", step(routed_topk_experts), repeats, work=n_tokens)
    speedup(rows, op, shape, "grouped / loop", loop, grouped)


PARTS = {f.__name__: f for f in (e2e_mixed_precision, e2e_float8, e2e_sparse_2_4, e2e_moe)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", required=True, choices=sorted(PARTS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, any device")
    args = parser.parse_args(argv)
    PARTS[args.part](Rows(args.out), args.dry_run)


if __name__ == "__main__":
    main()
