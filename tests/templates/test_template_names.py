"""Names are checked before anything is generated, with errors that say what is allowed."""

import pytest
from click.testing import CliRunner
from cookiecutter.exceptions import FailedHookException
from template_helpers import bake

from lightning_eff import ConfigError
from lightning_eff.new import new, template_options, templates_root


def test_names_derive_from_the_project_name():
    options = template_options("Digits Demo")
    assert (options.project_slug, options.package_name) == ("digits-demo", "digits_demo")
    plugin = template_options("Gradient Noise", kind="plugin")
    assert (plugin.project_slug, plugin.package_name) == ("leff-gradient-noise", "leff_gradient_noise")


@pytest.mark.parametrize(
    ("package", "message"),
    [
        (
            "My-Pkg",
            (
                "package_name 'My-Pkg' is not a valid Python package name: use lowercase letters, digits and "
                "underscores, starting with a letter (PEP 8), e.g. 'my_pkg'"
            ),
        ),
        ("1models", "is not a valid Python package name"),
        ("class", "package_name 'class' is a Python keyword"),
        ("json", "would shadow the installed module 'json'"),
        ("torch", "would shadow the installed module 'torch'"),
        ("lightning_eff", "would shadow the installed module 'lightning_eff'"),
    ],
)
def test_an_invalid_package_name_is_refused_with_what_is_allowed(package, message):
    with pytest.raises(ConfigError, match="package_name") as error:
        template_options("Demo", package=package)
    assert message in str(error.value)


@pytest.mark.parametrize("slug", ["-demo", "demo-", "my demo", "démo"])
def test_an_invalid_distribution_name_is_refused(slug):
    with pytest.raises(ConfigError, match=f"project_slug '{slug}' is not a valid distribution name"):
        template_options("Demo", slug=slug)


def test_a_name_that_gives_no_valid_package_asks_for_one():
    with pytest.raises(ConfigError, match="give the import name with --package NAME"):
        template_options("123 Models")
    assert template_options("123 Models", package="models_123").project_slug == "123-models"


def test_the_new_command_refuses_an_invalid_name_and_writes_nothing(tmp_path):
    result = CliRunner().invoke(new, ["project", "Demo", "--package", "My-Pkg", "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert "package_name 'My-Pkg' is not a valid Python package name" in result.output
    assert list(tmp_path.iterdir()) == []


def test_the_new_command_does_not_overwrite_an_existing_folder_without_force(tmp_path):
    (tmp_path / "demo").mkdir()
    result = CliRunner().invoke(new, ["project", "demo", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "already exists" in result.output and "--force" in result.output


@pytest.mark.parametrize("kind", ["project", "plugin"])
def test_plain_cookiecutter_runs_the_same_check_in_its_pre_generation_hook(kind, tmp_path):
    with pytest.raises(FailedHookException):
        bake(kind, tmp_path, project_slug="demo", package_name="My-Pkg")
    assert not (tmp_path / "demo").exists()


def test_templates_are_found_in_this_installation():
    assert {p.name for p in templates_root().iterdir() if p.is_dir()} >= {"project", "plugin"}


def test_byte_compiled_files_in_the_installed_templates_are_not_copied(tmp_path, monkeypatch):
    # pip byte-compiles the templates' .py files when it installs the wheel.
    import shutil

    from lightning_eff import new as new_module

    installed = tmp_path / "templates"
    shutil.copytree(templates_root(), installed)
    cache = installed / "project" / "{{cookiecutter.project_slug}}" / "{{cookiecutter.package_name}}" / "__pycache__"
    cache.mkdir()
    (cache / "model.cpython-311.pyc").write_bytes(b"\0")
    monkeypatch.setattr(new_module, "templates_root", lambda: installed)
    made = new_module.bake("project", template_options("Demo"), output_dir=tmp_path / "out")
    assert not list(made.rglob("__pycache__"))


def test_new_is_a_lightning_eff_subcommand(capsys):
    from lightning_eff.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["new", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "project" in out and "plugin" in out


# --- what the user types is data ----------------------------------------------------------------------

# Jinja markup of every kind, and the characters that would break the files it lands in.
MARKUP = '{{ 7*7 }} {% if %} {# "quoted" \\ back }} {% endraw %}'


@pytest.mark.parametrize("kind", ["project", "plugin"])
def test_user_text_with_jinja_markup_comes_out_verbatim(kind, tmp_path):
    import ast

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    name, author = "Demo {{ 6*7 }}", "Ann {% if %} {#"
    result = CliRunner().invoke(new, [
        kind, name, "--slug", "demo", "--package", "demo", "--description", MARKUP, "--author", author,
        "-o", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    root = tmp_path / "demo"
    meta = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert meta["description"] == MARKUP and meta["authors"] == [{"name": author}]
    readme = (root / "README.md").read_text().splitlines()
    assert readme[0] == f"# {name}" and readme[2] == f"{MARKUP}."
    docstring = ast.get_docstring(ast.parse((root / "demo" / "__init__.py").read_text()))
    assert docstring.splitlines()[0] == f"{name}: {MARKUP}."


def test_text_without_markup_is_passed_unchanged():
    from lightning_eff.new import verbatim

    assert verbatim("A plain {description} with 'quotes'") == "A plain {description} with 'quotes'"


@pytest.mark.parametrize("kind", ["project", "plugin"])
def test_help_states_the_default_folder_the_command_creates(kind, tmp_path):
    help_text = " ".join(CliRunner().invoke(new, [kind, "--help"]).output.split())
    result = CliRunner().invoke(new, [kind, "My Thing", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (made,) = [p.name for p in tmp_path.iterdir()]
    assert made == ("leff-my-thing" if kind == "plugin" else "my-thing")
    assert "default: NAME in lowercase, with '-' for spaces and punctuation" in help_text
    assert ("prefixed with 'leff-'" in help_text) == made.startswith("leff-")
