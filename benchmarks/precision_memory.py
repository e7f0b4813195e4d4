"""Memory and quality of the precision techniques on the ``lm`` bench task, measured on CPU.

    python benchmarks/precision_memory.py memory                 # bytes: parameters, Adam states, activations
    python benchmarks/precision_memory.py quality --max-steps 150 --recipe low_precision_optimizer_states

``memory`` builds the task's model (tiny Llama, hidden 128) and one batch, and measures parameter
bytes, optimizer-state bytes after 3 AdamW steps (fp32 torch.optim.AdamW vs LowPrecisionAdamW bf16 /
int8, every parameter eligible: min_numel=0, and the default min_numel=4096), and the bytes autograd
saves for the backward of one step in fp32 and under bf16 autocast (what bf16-mixed saves).
``quality`` runs the time-to-quality harness (``lightning-eff bench --task lm --recipe R``) and
prints the final validation losses; ``float8_emulated`` is an inline recipe converting every Linear
with torchao's CPU emulation (the real fp8 casts, fp32 matmuls), to see fp8's effect on quality.
"""

from __future__ import annotations

import argparse
import json

import torch

FLOAT8_EMULATED = {
    "description": "float8 training of every eligible Linear, emulated on CPU (quality only)",
    "techniques": [{"name": "float8_training", "options": {"min_features": 16, "emulate": True, "recipe": "tensorwise"}}],
}


def measure_memory(steps: int = 3) -> dict:
    from lightning_eff.bench.tasks.lm import TinyLlamaLM, byte_windows
    from lightning_eff.plugins.precision import LowPrecisionAdamW
    from lightning_eff.plugins.precision.memory import StepProbe, optimizer_state_bytes, parameter_bytes

    batch = byte_windows(64, 1_000_000, 32_000)["train"][:16]
    out: dict = {}
    for label, make in [
        ("adamw_fp32", lambda ps: torch.optim.AdamW(ps, lr=1e-3)),
        ("bf16_all", lambda ps: LowPrecisionAdamW(ps, lr=1e-3, state_dtype="bf16", min_numel=0)),
        ("int8_all", lambda ps: LowPrecisionAdamW(ps, lr=1e-3, state_dtype="int8", min_numel=0)),
        ("bf16_default", lambda ps: LowPrecisionAdamW(ps, lr=1e-3, state_dtype="bf16")),
        ("int8_default", lambda ps: LowPrecisionAdamW(ps, lr=1e-3, state_dtype="int8")),
    ]:
        torch.manual_seed(0)
        model = TinyLlamaLM()
        opt = make(list(model.parameters()))
        for _ in range(steps):
            opt.zero_grad()
            model.token_losses(batch).mean().backward()
            opt.step()
        out[label] = optimizer_state_bytes([opt])
        out["parameter_bytes"] = parameter_bytes(model)
    for label, autocast in (("activations_fp32", False), ("activations_bf16_autocast", True)):
        torch.manual_seed(0)
        model = TinyLlamaLM()
        probe = StepProbe(model, {})  # counts the storages autograd saves for the backward
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model.token_losses(batch).mean()
        probe.close()
        loss.backward()
        out[label] = probe.saved_bytes
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["memory", "quality"])
    parser.add_argument("--recipe", default="low_precision_optimizer_states", help="shipped recipe, or float8_emulated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.what == "memory":
        print(json.dumps(measure_memory(), indent=1))
        return
    from lightning_eff.bench import format_table, run_bench

    recipe = FLOAT8_EMULATED if args.recipe == "float8_emulated" else args.recipe
    result = run_bench("lm", recipe, repeats=args.repeats, max_steps=args.max_steps, out=args.out, quiet=True)
    print(format_table(result))
    finals = {arm: [r.final_quality for r in result.runs if r.arm == arm] for arm in ("baseline", "recipe")}
    metrics = [r.efficiency_metrics for r in result.runs if r.arm == "recipe"]
    print(json.dumps({"recipe": args.recipe, "final_quality": finals, "metrics": metrics,
                      "command": result.environment.command}, indent=1))


if __name__ == "__main__":
    main()
