"""The repository's top-level ``kernels/`` and ``plugins/`` folders must never hide an installed
distribution of the same name when the repository root is on ``sys.path`` (``python -m pytest``,
``python -c`` and notebooks started in the checkout all put it there). transformers 5 imports the
PyPI package ``kernels``; our folder answered instead and 53 tests failed on a fresh clone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_from_root(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` started in the repository root, with the root first on ``sys.path``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_transformers_hub_kernels_integration_imports_from_the_repository_root():
    pytest.importorskip("transformers")
    proc = _run_from_root(
        "import transformers.integrations.hub_kernels\n"
        "import kernels\n"
        "print(kernels.__file__)"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = Path(proc.stdout.strip().splitlines()[-1]).resolve()
    assert printed.parent != ROOT / "kernels", f"'kernels' came from the checkout: {printed}"


def test_a_transformers_llama_builds_from_the_repository_root():
    pytest.importorskip("transformers")
    proc = _run_from_root(
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,\n"
        "                  num_attention_heads=2, num_key_value_heads=2, vocab_size=50)\n"
        "print(sum(p.numel() for p in LlamaForCausalLM(cfg).parameters()))"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip().splitlines()[-1]) > 0


def test_plugins_folder_is_not_importable_as_top_level_plugins_but_names_the_real_package():
    proc = _run_from_root("import plugins")
    if proc.returncode == 0:  # some distribution really named 'plugins' is installed: it must be that one
        where = _run_from_root("import plugins; print(plugins.__file__)").stdout.strip()
        assert Path(where).resolve().parent != ROOT / "plugins"
    else:
        assert "ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr
        assert "lightning_eff.plugins" in proc.stderr


def test_the_folders_still_import_under_their_package_names_from_the_root():
    proc = _run_from_root(
        "import lightning_eff.kernels as k, lightning_eff.plugins.pruning as p\n"
        "print(callable(k.rms_norm), p.GradualPruning.name)"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["True", "gradual_pruning"]
