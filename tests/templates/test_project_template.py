"""The project template: the exact files, baked the same by cookiecutter and `lightning-eff new
project`, and its own test suite passes (run with this environment's Python: lightning-eff is
already importable; a generated project normally installs it from PyPI)."""

import pytest
from click.testing import CliRunner
from template_helpers import bake, files_under, run_pytest, unrendered

from lightning_eff.new import new

# cookiecutter.json's default; `lightning-eff new` defaults to this checkout (test_lightning_eff_source.py)
TEMPLATE_DEFAULT_SOURCE = "lightning-eff>=0.1"

PROJECT_FILES = {
    ".gitignore",
    "Makefile",
    "README.md",
    "config.yaml",
    "pyproject.toml",
    "recipe.yaml",
    "digits_demo/__init__.py",
    "digits_demo/data.py",
    "digits_demo/model.py",
    "digits_demo/train.py",
    "tests/test_data.py",
    "tests/test_train.py",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return bake("project", tmp_path_factory.mktemp("bake"), project_name="Digits Demo")


def test_project_template_generates_exactly_these_files(project):
    assert project.name == "digits-demo"
    assert files_under(project) == PROJECT_FILES
    assert unrendered(project) == []


def test_lightning_eff_new_project_bakes_the_same_files(project, tmp_path):
    result = CliRunner().invoke(new, ["project", "--lightning-eff", TEMPLATE_DEFAULT_SOURCE, "Digits Demo", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    made = tmp_path / "digits-demo"
    assert files_under(made) == PROJECT_FILES
    assert all((made / f).read_bytes() == (project / f).read_bytes() for f in PROJECT_FILES)
    assert "make train" in result.output and "make test" in result.output


def test_readme_and_makefile_give_the_two_commands(project):
    readme, makefile = (project / "README.md").read_text(), (project / "Makefile").read_text()
    assert "make train" in readme and "make test" in readme
    assert "python -m digits_demo.train fit --config config.yaml" in readme
    for target in ("train:", "test:", "bench:"):
        assert f"\n{target}" in makefile


def test_baked_project_test_suite_passes(project):
    result = run_pytest(project, pythonpath=project)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
