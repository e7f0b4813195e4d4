"""The kernel benchmark's CPU mode: correctness of every op through the interpreter, a CSV, and a
non-zero exit when a kernel is wrong."""

import csv

import pytest
import torch

from lightning_eff.kernels import _dispatch, bench

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU mode runs only without CUDA")


def test_cpu_mode_checks_every_op_and_writes_a_csv(tmp_path, capsys):
    out = tmp_path / "kernels.csv"
    assert bench.main(["--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {r["op"] for r in rows} == {
        "per_sample_cross_entropy+backward", "rms_norm+backward", "layer_norm+backward", "rms_norm",
        "fused_linear_cross_entropy+backward", "fused_linear_cross_entropy", "moe_topk_routing", "moe_grouped_swiglu+backward",
        "fp8_cast (tensorwise)", "fp8_cast (rowwise)", "nm_mask_decay (2:4)",
    }
    assert all(r["status"] == "ok" and float(r["max_rel_error"]) < 0.02 for r in rows)
    assert all(r["device"] == "cpu" and r["torch"] == torch.__version__ and r["ms"] == "" for r in rows)
    if _dispatch.INTERPRETED:
        assert {r["impl"] for r in rows} == {"lightning_eff (interpreter)", "reference"}
    printed = capsys.readouterr().out
    assert "timings need a GPU" in printed
    # every console line names its dtype: rows that differ only in dtype must not look duplicated
    lines = printed.splitlines()
    for row in rows:
        assert any(x.startswith(row["op"]) and row["shape"] in x and f" {row['dtype']} " in x for x in lines), row


def test_a_wrong_kernel_fails_the_run(monkeypatch, tmp_path):
    case = bench.norm_case("rms_norm", 4, 8, torch.float32, "cpu")
    broken_run = case.run
    case.run = lambda x, w, b, dy: tuple(o * 1.01 for o in broken_run(x, w, b, dy))
    monkeypatch.setattr(bench, "cpu_cases", lambda: [case])
    out = tmp_path / "kernels.csv"
    assert bench.main(["--out", str(out)]) == 1
    assert all(r["status"].startswith("FAIL") for r in csv.DictReader(out.open()))


def test_only_runs_the_ops_with_those_prefixes(tmp_path):
    out = tmp_path / "norms.csv"
    assert bench.main(["--out", str(out), "--only", "rms_norm", "layer_norm"]) == 0
    assert {r["op"] for r in csv.DictReader(out.open())} == {"rms_norm+backward", "rms_norm", "layer_norm+backward"}


def test_rows_reach_the_csv_as_they_are_measured(monkeypatch, tmp_path):
    out = tmp_path / "partial.csv"
    measured = []

    def rows(only):
        yield {"op": "first", "status": "ok"}
        measured.extend(r["op"] for r in csv.DictReader(out.open()))  # what a killed run would leave
        yield {"op": "second", "status": "ok"}

    monkeypatch.setattr(bench, "run_cpu", rows)
    assert bench.main(["--out", str(out)]) == 0
    assert measured == ["first"]


def test_the_grouped_mm_baseline_computes_the_same_moe_swiglu():
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no _grouped_mm")
    case = bench.moe_grouped_case(20, 32, 48, 4, 2, torch.float32, "cpu")
    x, wg, wu, wd, w, chosen, offsets, permutation, _ = case.make()
    expected = bench.gg.moe_swiglu_loop_reference(x, wg, wu, wd, w, chosen)
    torch.testing.assert_close(bench.grouped_mm_swiglu(x, wg, wu, wd, w, offsets, permutation), expected)


def test_gpu_mode_rows_with_faked_timings(monkeypatch):
    # The GPU path's bookkeeping (ceiling rows, units, % of ceiling, a failing baseline) on CPU.
    monkeypatch.setattr(bench, "ceilings", lambda repeats: {"GB/s": 1000.0, "TFLOP/s": 100.0})
    monkeypatch.setattr(bench, "time_cuda", lambda fn, repeats: (fn(), (1e-6, 5.0))[1])  # 1 ns: a real GB/s
    case = bench.norm_case("rms_norm", 4, 8, torch.float32, "cpu")
    case.baselines = {"broken baseline": lambda *args: 1 / 0}
    monkeypatch.setattr(bench, "gpu_cases", lambda: [case])
    rows = {r["impl"] if not r["op"].startswith("ceiling") else r["op"]: r for r in bench.run_gpu(1)}
    assert rows["ceiling: copy bandwidth"]["throughput"] == "1000.0"
    assert rows["ceiling: dense GEMM"]["unit"] == "TFLOP/s"
    ours = rows["lightning_eff"]
    assert ours["status"] == "ok" and ours["unit"] == "GB/s" and ours["peak_memory_mb"] == "5"
    assert ours["throughput"] == "640.0"  # forward + backward move 5 x 4 x 8 float32 = 640 bytes
    assert ours["pct_of_ceiling"] == "64.0"
    assert rows["reference"]["status"] == "ok"
    assert rows["broken baseline"]["status"].startswith("error: ZeroDivisionError")
