"""The GPU benchmark kit's CPU dry run: `bash benchmarks/gpu/run.sh OUTDIR --dry-run` runs every part
at tiny sizes, records what needs CUDA as skipped, and a part that outlives its time guard as timed
out while the later parts still run. Needs neither network nor carried wheels, so the kit cannot rot
between GPU sessions."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_eff.kernels import bench

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "benchmarks" / "gpu"
_spec = importlib.util.spec_from_file_location("gpu_kit_runner", KIT / "runner.py")
runner = sys.modules["gpu_kit_runner"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(runner)

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run's skips are those of a CPU machine")

GUARDED = "e2e_float8"  # given a guard shorter than Python's start-up: it must time out
AFTER = ["e2e_sparse_2_4", "e2e_moe"]  # the parts after it, which must still run


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kit")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(KIT / "run.sh"), str(out), "--dry-run", "--guard", f"{GUARDED}=0.3"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return done, rows, json.loads((out / "run.json").read_text()), out


def rows_of(rows, part):
    return [r for r in rows if r["part"] == part and r["op"] != "(part)"]


def part_status(rows, part):
    (row,) = [r for r in rows if r["part"] == part and r["op"] == "(part)"]
    return row["status"]


def test_every_part_reports_in_one_csv_with_the_bench_columns(dry_run):
    done, rows, summary, out = dry_run
    assert list(rows[0]) == ["part", *bench.COLUMNS]
    names = [p.name for p in runner.PARTS]
    assert [s["part"] for s in summary["parts"]] == names
    assert {r["part"] for r in rows} == set(names)
    assert summary["environment"]["torch"] == torch.__version__ and summary["environment"]["gpu"] is None
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "results.csv", "run.json", "run.log"]


def test_kernel_parts_check_their_ops_and_skip_the_timings(dry_run):
    _, rows, _, _ = dry_run
    for part in (p for p in runner.PARTS if p.kernel_ops):
        assert part_status(rows, part.name) == "ok"
        checked = [r for r in rows_of(rows, part.name) if r["op"] != "(timings)"]
        assert checked and all(r["op"].startswith(part.kernel_ops) and r["status"] == "ok" for r in checked)
        (timings,) = [r for r in rows_of(rows, part.name) if r["op"] == "(timings)"]
        assert timings["status"] == "skipped: needs CUDA"


def test_end_to_end_parts_measure_what_a_cpu_can_and_skip_the_rest(dry_run):
    _, rows, _, _ = dry_run
    precision = {r["impl"]: r for r in rows_of(rows, "e2e_mixed_precision")}
    assert float(precision["fp32"]["ms"]) > 0 and float(precision["bf16-mixed (mixed_precision)"]["ms"]) > 0
    assert precision["bf16-mixed / fp32"]["unit"] == "speedup"
    moe = {r["impl"]: r for r in rows_of(rows, "e2e_moe")}
    assert moe["grouped kernels (MoELayer)"]["status"] == "ok" and float(moe["grouped / loop"]["throughput"]) > 0
    assert [r["status"] for r in rows_of(rows, "e2e_sparse_2_4")] == ["skipped: needs CUDA"]


def test_a_part_over_its_guard_is_recorded_as_timed_out_and_later_parts_still_run(dry_run):
    done, rows, summary, _ = dry_run
    assert part_status(rows, GUARDED).startswith("timeout")
    assert rows_of(rows, GUARDED) == []
    assert all(part_status(rows, part) == "ok" for part in AFTER)
    assert done.returncode == 1  # a kit with a failed part says so
    assert f"{len(runner.PARTS) - 1}/{len(runner.PARTS)} parts ok" in done.stdout


def test_the_source_hash_tells_a_stale_wheel(tmp_path):
    for folder in runner.SOURCES:
        (tmp_path / folder).mkdir()
    (tmp_path / "kernels" / "op.py").write_text("x = 1\n")
    before = runner.source_hash(tmp_path)
    (tmp_path / "kernels" / "op.py").write_text("x = 2\n")
    assert runner.source_hash(tmp_path) != before


def test_the_shell_scripts_parse():
    for script in ("prepare.sh", "run.sh"):
        assert subprocess.run(["bash", "-n", str(KIT / script)]).returncode == 0
