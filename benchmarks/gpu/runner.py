"""Runs the GPU benchmark kit's parts, each in its own process under a time guard, and collects them.

    python benchmarks/gpu/runner.py OUTDIR [--dry-run] [--parts NAME ...] [--guard NAME=SECONDS ...]

``benchmarks/gpu/run.sh`` calls this after installing the carried wheels. Each part is one command
(a group of ops of ``lightning_eff.kernels.bench``, or one part of ``end_to_end.py``) that writes its
rows to a CSV as it measures them; a part that outlives its guard is killed (its whole process
group) and recorded as timed out, keeping the rows it wrote, and the next part runs. The total time
is bounded too (``--budget``): a part never gets more than what is left. ``--dry-run`` runs every
part at tiny sizes on whatever device there is (the CPU in the test suite); what needs CUDA is
recorded as ``skipped: needs CUDA``.

OUTDIR receives ``results.csv`` (every row, with its part; one ``(part)`` row per part giving its
status and wall time), ``run.json`` (environment and part statuses), ``run.log`` (every part's
output) and ``plot.png`` (percent of the measured ceilings and end-to-end speedups, if matplotlib
imports).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOURCES = ("lightning_eff", "plugins", "kernels", "templates")  # what the package wheel is built from


@dataclass(frozen=True)
class Part:
    name: str
    guard_s: float  # on the GPU; dry runs get DRY_RUN_GUARD_S
    kernel_ops: tuple[str, ...] = ()  # bench --only prefixes; empty: an end_to_end.py part

    def command(self, out_csv: Path, dry_run: bool, repeats: int) -> list[str]:
        if self.kernel_ops:
            return [sys.executable, "-m", "lightning_eff.kernels.bench", "--only", *self.kernel_ops,
                    "--out", str(out_csv), "--repeats", str(repeats)]
        return [sys.executable, str(HERE / "end_to_end.py"), "--part", self.name, "--out", str(out_csv),
                *(["--dry-run"] if dry_run else [])]


# Sum of guards 450 s: with the install and the environment check the kit ends within 8 minutes on
# one H100. torch.compile's first compile is most of each kernel part's time.
PARTS = [
    Part("cross_entropy", 60, ("per_sample_cross_entropy",)),
    Part("fused_linear_cross_entropy", 65, ("fused_linear_cross_entropy",)),
    Part("norms", 50, ("rms_norm", "layer_norm")),
    Part("moe", 50, ("moe_topk_routing", "moe_grouped_swiglu")),
    Part("nm_fp8", 35, ("nm_mask_decay", "fp8_cast")),
    Part("e2e_mixed_precision", 45),
    Part("e2e_float8", 100),  # two torch.compile runs (bf16, float8)
    Part("e2e_sparse_2_4", 20),
    Part("e2e_moe", 25),
]
DRY_RUN_GUARD_S = 60
DEFAULT_BUDGET_S = 460


def source_hash(root: Path = REPO) -> str:
    """Hash of the package sources, to tell whether a carried wheel was built from this tree."""
    digest = hashlib.sha1()
    for folder in SOURCES:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def environment() -> dict[str, object]:
    info: dict[str, object] = {"python": platform.python_version(), "machine": platform.machine()}
    for dist in ("torch", "triton", "lightning", "transformers", "pydantic", "torchao", "liger-kernel", "lightning-eff"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    try:
        import torch

        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        info["has_grouped_mm"] = hasattr(torch, "_grouped_mm")
    except Exception as exc:  # noqa: BLE001 - recorded, and every part will say what failed
        info["torch_error"] = repr(exc)
    info["wheel_note"] = os.environ.get("LEFF_KIT_WHEEL_NOTE", "")
    return info


def run_part(command: list[str], timeout_s: float, env: dict[str, str], workdir: Path, name: str) -> tuple[str, float, str]:
    """(status, seconds, output). The part runs in its own process group, killed whole at the guard."""
    start = time.monotonic()
    with (workdir / f"{name}.log").open("w+") as output:
        # cwd outside the repository: from its root, the bare lightning_eff/ folder (no kernels/ in
        # it) would shadow the installed package.
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=workdir, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
            status = "ok" if code == 0 else f"error: exit code {code}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part's children too (bench re-runs itself on CPU)
            proc.wait()
            status = f"timeout after {timeout_s:.0f} s"
        output.seek(0)
        text = output.read()
    if status.startswith("error"):  # the exception's last line, so the CSV alone says what broke
        status = f"{status}: {(text.strip().splitlines() or [''])[-1]}"[:300]
    return status, time.monotonic() - start, text


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    columns = ["part"]
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, str]], path: Path) -> None:
    """Bars: % of the measured ceiling per kernel implementation, and end-to-end speedups."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - plots are optional
        return
    kernels = [r for r in rows if r.get("pct_of_ceiling") and not r["op"].startswith("ceiling")]
    speedups = [r for r in rows if r.get("unit") == "speedup" and r.get("throughput")]
    if not kernels and not speedups:
        return
    fig, axes = plt.subplots(1, 2, figsize=(16, max(4, 0.25 * max(len(kernels), len(speedups)))), squeeze=False)
    for ax, chosen, value, title in (
        (axes[0][0], kernels, "pct_of_ceiling", "% of measured ceiling (copy GB/s or bf16 GEMM TFLOP/s)"),
        (axes[0][1], speedups, "throughput", "end-to-end speedup (x)"),
    ):
        labels = [f"{r['op']} {r['shape']} | {r['impl']}" for r in chosen]
        ax.barh(range(len(chosen)), [float(r[value]) for r in chosen])
        ax.set_yticks(range(len(chosen)), labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path, nargs="?")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, any device (CPU: what needs CUDA is skipped)")
    parser.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS], help="run only these (in kit order)")
    parser.add_argument("--guard", action="append", default=[], metavar="NAME=SECONDS", help="override a part's guard")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all parts together")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per kernel implementation")
    parser.add_argument("--source-hash", action="store_true", help="print the package sources' hash and exit")
    args = parser.parse_args(argv)
    if args.source_hash:
        print(source_hash())
        return 0
    if args.outdir is None:
        parser.error("OUTDIR is required")
    guards = {name: float(seconds) for name, seconds in (g.split("=", 1) for g in args.guard)}
    args.outdir.mkdir(parents=True, exist_ok=True)
    scratch = args.outdir / ".parts"  # per-part CSVs; merged, then removed (OUTDIR keeps few files)
    scratch.mkdir(exist_ok=True)

    env_info = environment()
    print(json.dumps(env_info, indent=1), flush=True)
    cuda = bool(env_info.get("gpu"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)  # end-to-end parts run the production path
    # bench checks the Triton kernels through the interpreter without CUDA (set here, it need not re-run itself)
    kernel_env = env if cuda else {**env, "TRITON_INTERPRET": "1"}
    deadline = time.monotonic() + args.budget
    rows: list[dict[str, str]] = []
    statuses = []
    with (args.outdir / "run.log").open("w") as log:
        for part in [p for p in PARTS if not args.parts or p.name in args.parts]:
            out_csv = scratch / f"{part.name}.csv"
            guard = guards.get(part.name, DRY_RUN_GUARD_S if args.dry_run else part.guard_s)
            left = deadline - time.monotonic()
            if left < 1:
                status, seconds = "skipped: the kit's time budget is spent", 0.0
            else:
                command = part.command(out_csv, args.dry_run, args.repeats)
                timeout = min(guard, left)
                status, seconds, output = run_part(command, timeout, kernel_env if part.kernel_ops else env, scratch, part.name)
                log.write(f"\n===== {part.name}: {' '.join(command)} (guard {timeout:.0f} s): {status}\n{output}")
                log.flush()
            rows += [{"part": part.name, **row} for row in read_rows(out_csv)]
            if part.kernel_ops and not cuda:
                rows.append({"part": part.name, "op": "(timings)", "impl": "ours, torch, torch.compile, liger",
                             "status": "skipped: needs CUDA"})
            rows.append({"part": part.name, "op": "(part)", "impl": "runner", "ms": f"{1e3 * seconds:.0f}",
                         "status": status})
            statuses.append({"part": part.name, "status": status, "seconds": round(seconds, 1)})
            print(f"{part.name:28s} {status:40s} {seconds:6.1f} s", flush=True)
            write_csv(args.outdir / "results.csv", rows)  # after every part: a killed kit keeps them
    for path in scratch.iterdir():
        path.unlink()
    scratch.rmdir()
    (args.outdir / "run.json").write_text(json.dumps({"environment": env_info, "parts": statuses}, indent=1))
    plot(rows, args.outdir / "plot.png")
    failed = [s for s in statuses if s["status"] != "ok"]
    print(f"{len(statuses) - len(failed)}/{len(statuses)} parts ok; results in {args.outdir}/results.csv")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
