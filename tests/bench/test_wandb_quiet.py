"""`bench --logger wandb` writes an offline run without burying the bench's output under wandb's
banner, sync hints and run summary (about 28 lines per run before)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_a_wandb_logged_bench_prints_at_most_a_line_of_wandb(tmp_path):
    pytest.importorskip("wandb")
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "WANDB_DIR": str(tmp_path)}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lightning_eff.cli", "bench", "--task", "vision", "--recipe", "random_subset",
           "--quick", "--flops", "off", "--logger", "wandb", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = (proc.stdout + proc.stderr).splitlines()
    said = [line for line in printed if line.startswith("wandb:")]
    assert len(said) <= 1, said
    runs = list((out / "logs").rglob("offline-run-*"))
    assert len(runs) == 2, "one offline wandb run per arm"
