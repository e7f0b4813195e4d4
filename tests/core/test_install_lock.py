"""The README's commands install a tested, locked set (constraints.txt) while pyproject.toml keeps
honest ranges: the lock must satisfy every range, and the Makefile must use it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from lock_drift import canonical, drift, read_lock  # noqa: E402


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("req", project_requirements(), ids=str)
def test_the_lock_pins_every_dependency_inside_its_declared_range(req):
    lock = read_lock(ROOT / "constraints.txt")
    name = canonical(req.name)
    assert name in lock, f"{req.name} is a dependency but constraints.txt does not pin it (run make lock)"
    assert req.specifier.contains(lock[name], prereleases=True), f"lock {req.name}=={lock[name]} is outside '{req}'"


@pytest.mark.parametrize("req", project_requirements(), ids=str)
def test_every_range_has_an_upper_bound(req):
    assert any(spec.operator in ("<", "<=", "==", "~=") for spec in req.specifier), (
        f"'{req}' has no upper bound: a new major release would reach users untested"
    )


def test_the_makefile_installs_with_the_lock_and_the_cpu_torch_pin():
    makefile = (ROOT / "Makefile").read_text()
    install = re.search(r"^\$\(STAMP\):.*?(?=^\S)", makefile, re.S | re.M).group(0)
    assert "-c $(LOCK)" in install and "LOCK := constraints.txt" in makefile
    assert "$(TORCH_PIN)" in install and re.search(r"TORCH_PIN \?= torch==[\d.]+\n", makefile)


def test_drift_lists_moved_missing_and_new_packages_but_not_local_build_labels():
    lock = {"torch": "2.13.0", "click": "8.1.0", "gone": "1.0"}
    now = {"torch": "2.13.0+cpu", "click": "8.2.0", "new": "0.1"}
    assert drift(lock, now) == [("click", "8.1.0", "8.2.0"), ("gone", "1.0", "-"), ("new", "-", "0.1")]


def test_read_lock_ignores_comments_and_canonicalises_names(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# comment\nPyYAML==6.0.4\ntyping_extensions==4.15.0 ; python_version < '4'\n\n")
    assert read_lock(path) == {"pyyaml": "6.0.4", "typing-extensions": "4.15.0"}
