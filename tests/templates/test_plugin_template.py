"""The plugin template: the exact files; the baked package, pip-installed without dependencies, is
listed by `lightning-eff plugins --json`; its own suite passes; uninstalled, it is gone.

The package goes into a temporary ``--target`` folder put on PYTHONPATH of subprocesses, not into
this virtualenv: other test workers run concurrently and would see (or lose) a half-installed
plugin. Removing the folder is the uninstall (pip cannot uninstall from ``--target``).
"""

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from template_helpers import bake, clean_env, files_under, run_pytest, unrendered

from lightning_eff.new import new

# cookiecutter.json's default; `lightning-eff new` defaults to this checkout (test_lightning_eff_source.py)
TEMPLATE_DEFAULT_SOURCE = "lightning-eff>=0.1"

PACKAGE = "leff_gradient_noise"
PLUGIN_FILES = {
    ".gitignore",
    "README.md",
    "pyproject.toml",
    f"{PACKAGE}/__init__.py",
    f"{PACKAGE}/gradient_noise.py",
    f"{PACKAGE}/rms_norm.py",
    "tests/conftest.py",
    "tests/test_gradient_noise.py",
    "tests/test_registration.py",
    "tests/test_rms_norm.py",
}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    return bake("plugin", tmp_path_factory.mktemp("bake"), project_name="Gradient Noise")


def pip_install_target(package, target):
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(package)],
        check=True, capture_output=True, timeout=300,
    )


def entry_points_seen(target):
    probe = "import importlib.metadata as m; print(sorted(e.name for e in m.entry_points(group='lightning_eff')))"
    return subprocess.run(
        [sys.executable, "-c", probe], env=clean_env(PYTHONPATH=str(target)), capture_output=True, text=True, check=True
    ).stdout


def test_plugin_template_generates_exactly_these_files(plugin):
    assert plugin.name == "leff-gradient-noise"
    assert files_under(plugin) == PLUGIN_FILES
    assert unrendered(plugin) == []
    assert f'[project.entry-points.lightning_eff]\n{PACKAGE} = "{PACKAGE}"' in (plugin / "pyproject.toml").read_text()


def test_lightning_eff_new_plugin_bakes_the_same_files(plugin, tmp_path):
    result = CliRunner().invoke(new, ["plugin", "--lightning-eff", TEMPLATE_DEFAULT_SOURCE, "Gradient Noise", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    made = tmp_path / "leff-gradient-noise"
    assert files_under(made) == PLUGIN_FILES
    assert all((made / f).read_bytes() == (plugin / f).read_bytes() for f in PLUGIN_FILES)


def test_installed_plugin_is_listed_by_lightning_eff_plugins_and_gone_once_uninstalled(plugin, tmp_path):
    target = tmp_path / "site"
    pip_install_target(plugin, target)
    listed = subprocess.run(
        [sys.executable, "-m", "lightning_eff.cli", "plugins", "--json"],
        env=clean_env(PYTHONPATH=str(target)), capture_output=True, text=True, timeout=300, check=False,
    )
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    (info,) = [p for p in report["plugins"] if p["name"] == PACKAGE]
    assert info["distribution"] == "leff-gradient-noise" and info["version"] == "0.1.0"
    assert info["techniques"] == ["gradient_noise"]
    assert info["kernels"] == [f"rms_norm:{PACKAGE}_native_rms_norm"]
    assert not [e for e in report["errors"] if e["plugin"] == PACKAGE]

    shutil.rmtree(target)
    assert PACKAGE not in entry_points_seen(target)


def test_baked_plugin_test_suite_passes_when_installed(plugin, tmp_path):
    target = tmp_path / "site"
    pip_install_target(plugin, target)
    # The DDP test spawns two processes that each import torch and Lightning (tens of seconds on a
    # shared 2-core machine); the harness it uses, run_ddp, is covered by tests/core.
    result = run_pytest(plugin, "-m", "not ddp", pythonpath=target)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "skipped" not in result.stdout  # installed: the entry-point tests ran too
