"""Real packages, built and pip-installed (no deps) into a separate target folder, then discovered
by `lightning-eff plugins` in a subprocess whose PYTHONPATH includes that folder."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PLUGIN_MODULE = '''
from lightning_eff import Technique, TechniqueConfig, hookimpl
import click


class GreetConfig(TechniqueConfig):
    pass


class Greet(Technique):
    """Says hello (third-party example)."""

    name = "greet"
    Config = GreetConfig


@hookimpl
def leff_register_techniques(register):
    register(Greet)


@hookimpl
def leff_register_kernels(register):
    register("rms_norm", "greet_rms", lambda *a, **k: None, priority=1)


@hookimpl
def leff_add_cli_commands(cli):
    @cli.command(name="greet")
    def greet():
        click.echo("hello from a plugin")
'''


# Claims a built-in name; its entry point ('leff_aaa_takeover') sorts before the built-in 'pruning'.
TAKEOVER_MODULE = '''
from lightning_eff import Technique, hookimpl


class Takeover(Technique):
    """Claims the name of a built-in technique."""

    name = "gradual_pruning"


@hookimpl
def leff_register_techniques(register):
    register(Takeover)


@hookimpl
def leff_register_kernel(register):  # misspelled: pluggy alone would ignore it silently
    pass
'''


def make_package(root: Path, dist: str, module: str, body: str) -> Path:
    pkg = root / dist
    (pkg / module).mkdir(parents=True)
    (pkg / module / "__init__.py").write_text(textwrap.dedent(body))
    (pkg / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "1.2.3"
        [project.entry-points.lightning_eff]
        {module} = "{module}"
        [tool.setuptools]
        packages = ["{module}"]
        """))
    return pkg


def pip_install_target(package: Path, target: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(package)],
        check=True,
        capture_output=True,
    )


def run_cli(args, pythonpath: Path):
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [sys.executable, "-m", "lightning_eff.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    target = root / "site"
    pip_install_target(make_package(root, "leff-greet", "leff_greet", PLUGIN_MODULE), target)
    pip_install_target(make_package(root, "leff-broken", "leff_broken", "raise ImportError('needs libfoo')\n"), target)
    pip_install_target(make_package(root, "leff-takeover", "leff_aaa_takeover", TAKEOVER_MODULE), target)
    return target


def test_installed_third_party_plugin_is_listed_with_its_techniques_and_kernels(installed_plugins):
    result = run_cli(["plugins", "--json"], installed_plugins)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    greet = next(p for p in report["plugins"] if p["name"] == "leff_greet")
    assert greet["distribution"] == "leff-greet" and greet["version"] == "1.2.3"
    assert greet["techniques"] == ["greet"]
    assert greet["kernels"] == ["rms_norm:greet_rms"]


def test_a_broken_plugin_is_reported_and_the_others_still_load(installed_plugins):
    report = json.loads(run_cli(["plugins", "--json"], installed_plugins).stdout)
    (error,) = [e for e in report["errors"] if e["plugin"] == "leff_broken"]
    assert "ImportError: needs libfoo" in error["message"]
    assert any(p["name"] == "pruning" for p in report["plugins"])


def test_an_installed_plugin_cannot_take_over_a_builtin_technique(installed_plugins):
    report = json.loads(run_cli(["plugins", "--json"], installed_plugins).stdout)
    errors = [e["message"] for e in report["errors"] if e["plugin"] == "leff_aaa_takeover"]
    assert any(
        "technique name 'gradual_pruning' is already registered by plugin 'pruning' (distribution lightning-eff" in m
        and "(distribution leff-takeover 1.2.3, module leff_aaa_takeover) is skipped" in m
        for m in errors
    ), errors
    assert "implements unknown hook 'leff_register_kernel', which is never called: did you mean " \
        "'leff_register_kernels'?" in errors
    info = run_cli(["info", "gradual_pruning"], installed_plugins)
    assert info.returncode == 0, info.stderr
    assert "lightning_eff.plugins.pruning" in info.stdout.splitlines()[0]
    assert "  from plugin 'pruning' (distribution lightning-eff " in info.stdout


def test_a_plugin_adds_cli_commands_and_the_deny_list_removes_them(installed_plugins):
    result = run_cli(["greet"], installed_plugins)
    assert result.stdout.strip() == "hello from a plugin"
    env_result = subprocess.run(
        [sys.executable, "-m", "lightning_eff.cli", "plugins", "--json"],
        env={**os.environ, "PYTHONPATH": str(installed_plugins), "LIGHTNING_EFF_DISABLE_PLUGINS": "leff_greet"},
        capture_output=True,
        text=True,
    )
    assert "leff_greet" not in [p["name"] for p in json.loads(env_result.stdout)["plugins"]]


def test_built_wheel_contains_and_imports_plugins_kernels_and_recipes(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("lightning_eff-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "lightning_eff/hub.py",
        "lightning_eff/plugins/__init__.py",
        "lightning_eff/plugins/pruning/__init__.py",
        "lightning_eff/kernels/__init__.py",
        "lightning_eff/recipes/quickstart.yaml",
        "lightning_eff/templates/project/cookiecutter.json",
        "lightning_eff/templates/plugin/cookiecutter.json",
    ):
        assert expected in names, expected
    assert any(n.startswith("lightning_eff/templates/plugin/{{cookiecutter.project_slug}}/") for n in names)
    assert not any(n.startswith(("plugins/", "kernels/", "tests/", "templates/")) for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))
    ).decode()
    assert "[lightning_eff]" in entry_points and "pruning = lightning_eff.plugins.pruning" in entry_points

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    probe = (
        "import lightning_eff, lightning_eff.plugins.pruning, lightning_eff.kernels;"
        "from lightning_eff.new import templates_root; from lightning_eff.recipe import load_recipe;"
        "load_recipe('quickstart'); print(lightning_eff.__file__); print(templates_root())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path,
        capture_output=True, text=True, check=True,
    ).stdout
    package_path, templates_path = out.strip().splitlines()
    assert package_path.startswith(str(target)) and templates_path.startswith(str(target))
