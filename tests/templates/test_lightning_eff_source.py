"""A generated project names where it gets lightning-eff (the package is on no index): by default
this checkout as a direct reference, which pip resolves without any index; `--lightning-eff` sets it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tomllib

from lightning_eff.new import bake, default_lightning_eff_requirement, template_options


def dependency(project) -> str:
    deps = tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if d.replace("_", "-").startswith("lightning-eff"))


@pytest.mark.parametrize("kind", ["project", "plugin"])
def test_the_default_source_is_this_checkout_and_pip_resolves_it_without_an_index(kind, tmp_path):
    project = bake(kind, template_options("Source Check", kind=kind), output_dir=tmp_path)
    requirement = dependency(project)
    assert requirement == default_lightning_eff_requirement()
    assert requirement.startswith("lightning-eff @ file://"), requirement
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index", "--no-build-isolation",
         "--quiet", "--report", str(report), requirement],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [i["metadata"]["name"] for i in json.loads(report.read_text())["install"]] == ["lightning-eff"]


def test_a_given_source_is_written_verbatim(tmp_path):
    wheel = "lightning-eff @ file:///opt/wheels/lightning_eff-0.1.0-py3-none-any.whl"
    project = bake("project", template_options("Wheel User", lightning_eff=wheel), output_dir=tmp_path)
    assert dependency(project) == wheel
