"""``lightning-eff new project|plugin``: bake the cookiecutter templates, names checked first.

The templates live at the repository's top level (``templates/project``, ``templates/plugin``) and
ship in the wheel as package data (``lightning_eff/templates``); :func:`templates_root` finds
whichever this installation has. Names are validated here, before cookiecutter writes anything,
and again by each template's ``hooks/pre_gen_project.py`` for people who run ``cookiecutter``
directly (the hook cannot import lightning-eff: cookiecutter may run from another environment).
"""

from __future__ import annotations

import json
import keyword
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from lightning_eff.errors import ConfigError, MissingDependencyError

TemplateKind = Literal["project", "plugin"]
TEMPLATE_KINDS: tuple[str, ...] = ("project", "plugin")

# PEP 8: "Modules should have short, all-lowercase names. Underscores can be used..."; an import
# name must also be an identifier, so it cannot start with a digit.
PACKAGE_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Core metadata "Name" (PEP 508): ASCII letters and digits, with ``.``, ``-``, ``_`` inside.
DISTRIBUTION_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
# Import names a generated package must not shadow: the stack it runs on, and pytest's folders.
RESERVED_PACKAGES = frozenset(
    {"lightning_eff", "lightning", "pytorch_lightning", "torch", "torchmetrics", "sklearn", "pytest", "test", "tests"}
)


def suggest_package_name(text: str) -> str:
    """``"My Project-2"`` -> ``"my_project_2"`` (may still be invalid, e.g. when it starts with a digit)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def suggest_distribution_name(text: str) -> str:
    """``"My Project"`` -> ``"my-project"``."""
    return re.sub(r"[^a-z0-9._]+", "-", text.lower()).strip("-._")


def package_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the generated package's import name, or None when it can."""
    if not PACKAGE_NAME.fullmatch(name):
        suggestion = suggest_package_name(name)
        hint = f", e.g. '{suggestion}'" if PACKAGE_NAME.fullmatch(suggestion) else ""
        return (
            f"package_name '{name}' is not a valid Python package name: use lowercase letters, digits and "
            f"underscores, starting with a letter (PEP 8){hint}"
        )
    if keyword.iskeyword(name):
        return f"package_name '{name}' is a Python keyword: choose another name, e.g. '{name}_lib'"
    if name in RESERVED_PACKAGES or name in sys.stdlib_module_names:
        return f"package_name '{name}' would shadow the installed module '{name}': choose another name, e.g. 'my_{name}'"
    return None


def distribution_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the distribution (pip) name and folder name, or None when it can."""
    if DISTRIBUTION_NAME.fullmatch(name):
        return None
    suggestion = suggest_distribution_name(name)
    hint = f", e.g. '{suggestion}'" if DISTRIBUTION_NAME.fullmatch(suggestion) else ""
    return (
        f"project_slug '{name}' is not a valid distribution name: use ASCII letters and digits, with '-', '_' "
        f"or '.' only between them (PEP 508){hint}"
    )


class TemplateOptions(BaseModel):
    """The variables both templates share, validated before anything is generated."""

    model_config = ConfigDict(extra="forbid")

    project_name: str
    project_slug: str
    package_name: str
    description: str
    author_name: str
    #: what the generated pyproject.toml depends on for lightning-eff (a pip requirement)
    lightning_eff_requirement: str

    @field_validator("project_name")
    @classmethod
    def _project_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("give a non-empty project name")
        return value.strip()

    @field_validator("project_slug")
    @classmethod
    def _project_slug(cls, value: str) -> str:
        problem = distribution_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("package_name")
    @classmethod
    def _package_name(cls, value: str) -> str:
        problem = package_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value


def default_lightning_eff_requirement() -> str:
    """Where a generated project gets lightning-eff from: the checkout this lightning-eff runs from
    (an editable install), as a direct reference pip installs without a package index; otherwise this
    exact version (a wheel: ``pip install --find-links DIR`` with the folder holding it)."""
    from importlib import metadata

    checkout = Path(__file__).resolve().parents[1]
    pyproject = checkout / "pyproject.toml"
    if pyproject.is_file() and 'name = "lightning-eff"' in pyproject.read_text(encoding="utf-8", errors="replace"):
        return f"lightning-eff @ {checkout.as_uri()}"
    try:
        return f"lightning-eff=={metadata.version('lightning-eff')}"
    except metadata.PackageNotFoundError:
        return "lightning-eff"


def template_options(
    name: str,
    slug: str | None = None,
    package: str | None = None,
    description: str | None = None,
    author: str | None = None,
    kind: TemplateKind = "project",
    lightning_eff: str | None = None,
) -> TemplateOptions:
    """Options from a human name; the slug and package name default to forms derived from it.

    Raises :class:`ConfigError` listing every invalid name and what is allowed."""
    if slug is None:
        slug = suggest_distribution_name(name)
        if kind == "plugin" and not slug.startswith("leff-"):
            slug = f"leff-{slug}"  # the plugin naming convention, as pytest-* or datasette-*
    default_description = (
        "A Lightning project that trains cheaper with lightning-eff"
        if kind == "project"
        else "A lightning-eff plugin: an example technique and kernel"
    )
    values = {
        "project_name": name,
        "project_slug": slug,
        "package_name": package if package is not None else suggest_package_name(slug),
        "description": description if description is not None else default_description,
        "author_name": author if author is not None else "Your Name",
        "lightning_eff_requirement": lightning_eff if lightning_eff is not None else default_lightning_eff_requirement(),
    }
    try:
        return TemplateOptions(**values)
    except ValidationError as exc:
        lines = [str(item["ctx"]["error"]) if "ctx" in item else item["msg"] for item in exc.errors()]
        if package is None and any(item["loc"] == ("package_name",) for item in exc.errors()):
            lines.append("give the import name with --package NAME")
        raise ConfigError("\n".join(lines)) from None


# Jinja's three opening delimiters: text holding one of them would be executed as a template.
JINJA_MARKUP = ("{{", "{%", "{#")


def verbatim(value: str) -> str:
    """``value`` in a form cookiecutter renders back to exactly ``value``.

    cookiecutter renders every context value as a Jinja template before using it, so a description
    ``{{ 7*7 }}`` would become ``49`` and ``{% if %}`` a crash. What the user typed is data: text with
    Jinja markup is turned into one string-literal expression (JSON string escapes are also Jinja's),
    whose rendering is the text itself, whatever delimiters or quotes it holds."""
    if not any(mark in value for mark in JINJA_MARKUP):
        return value
    return "{{ " + json.dumps(value, ensure_ascii=False) + " }}"


def templates_root() -> Path:
    """The folder holding ``project/`` and ``plugin/``: the wheel's package data, else the checkout's."""
    package_dir = Path(__file__).resolve().parent
    candidates = (package_dir / "templates", package_dir.parent / "templates")
    for folder in candidates:
        if all((folder / kind / "cookiecutter.json").is_file() for kind in TEMPLATE_KINDS):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"lightning-eff's templates are missing (looked in {looked}); reinstall lightning-eff")


def template_dir(kind: TemplateKind) -> Path:
    if kind not in TEMPLATE_KINDS:
        raise ConfigError(f"unknown template '{kind}': use one of {', '.join(TEMPLATE_KINDS)}")
    return templates_root() / kind


def bake(kind: TemplateKind, options: TemplateOptions, output_dir: str | Path = ".", overwrite: bool = False) -> Path:
    """Generate ``kind`` with ``options`` under ``output_dir``; returns the new project's folder."""
    try:
        from cookiecutter.exceptions import CookiecutterException
        from cookiecutter.main import cookiecutter
    except ImportError as exc:
        raise MissingDependencyError("cookiecutter", "lightning-eff new") from exc

    output_dir = Path(output_dir)
    target = output_dir / options.project_slug
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists: choose another name or --output-dir, or pass --force")
    context: dict[str, Any] = {key: verbatim(value) for key, value in options.model_dump().items()}
    with tempfile.TemporaryDirectory(prefix="leff-new-") as scratch:
        # pip byte-compiles the template's .py files when it installs the wheel; a clean copy keeps
        # their __pycache__ out of the generated project.
        template = Path(scratch) / kind
        shutil.copytree(template_dir(kind), template, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        try:
            result = cookiecutter(
                str(template),
                no_input=True,
                extra_context=context,
                output_dir=str(output_dir),
                overwrite_if_exists=overwrite,
                # A private replay folder: nothing is left in ~/.cookiecutter_replay, and parallel
                # runs (tests) never write the same replay file.
                default_config={"replay_dir": str(Path(scratch) / "replay")},
            )
        except CookiecutterException as exc:
            raise ConfigError(f"generating the {kind} template failed: {exc}") from None
    return Path(result)


# --- command line ---------------------------------------------------------------------------------

NEXT_STEPS = {
    "project": ["make install   # editable install with the dev tools", "make train     # fit with recipe.yaml",
                "make test      # the project's tests"],
    "plugin": ["pip install -e '.[dev]'", "lightning-eff plugins       # your technique and kernel are listed",
               "pytest -q"],
}


# The default slug as ``template_options`` derives it, stated per kind so that ``--help`` says what happens.
SLUG_HELP = {
    "project": "NAME in lowercase, with '-' for spaces and punctuation",
    "plugin": "NAME in lowercase, with '-' for spaces and punctuation, prefixed with 'leff-' (the plugin naming convention)",
}


def _options(kind: TemplateKind) -> Any:
    """The arguments both sub-commands take."""

    def decorate(fn: Any) -> Any:
        fn = click.option("--force", is_flag=True, help="Write into an existing folder, overwriting its files.")(fn)
        fn = click.option("--output-dir", "-o", default=".", show_default=True, type=click.Path(file_okay=False),
                          help="Folder in which the new project folder is created.")(fn)
        fn = click.option("--author", default=None, help="Author name for pyproject.toml.")(fn)
        fn = click.option(
            "--lightning-eff", "lightning_eff", default=None, metavar="REQUIREMENT",
            help="Where the new project gets lightning-eff, as a pip requirement (default: this checkout as "
            "'lightning-eff @ file:///...', or this version when installed from a wheel), e.g. "
            "'lightning-eff @ file:///path/to/lightning_eff-0.1.0-py3-none-any.whl'.",
        )(fn)
        fn = click.option("--description", default=None, help="One-line description.")(fn)
        fn = click.option("--package", "package", default=None,
                          help="Import name (default: the slug with '_' for '-' and '.').")(fn)
        fn = click.option("--slug", default=None, help=f"Folder and distribution name (default: {SLUG_HELP[kind]}).")(fn)
        return click.argument("name")(fn)

    return decorate


def _create(kind: TemplateKind, name, slug, package, description, author, lightning_eff, output_dir, force) -> None:
    try:
        options = template_options(
            name, slug=slug, package=package, description=description, author=author, kind=kind, lightning_eff=lightning_eff
        )
        path = bake(kind, options, output_dir=output_dir, overwrite=force)
    except (ConfigError, MissingDependencyError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {kind} {options.project_name!r} in {path} (package {options.package_name})")
    click.echo("next:")
    click.echo(f"  cd {path}")
    for step in NEXT_STEPS[kind]:
        click.echo(f"  {step}")


@click.group(name="new")
def new() -> None:
    """Start a Lightning project or a plugin package from lightning-eff's templates."""


@new.command()
@_options("project")
def project(name, slug, package, description, author, lightning_eff, output_dir, force) -> None:
    """A Lightning project using lightning-eff: LightningCLI entry, recipe, model, data, tests, bench."""
    _create("project", name, slug, package, description, author, lightning_eff, output_dir, force)


@new.command()
@_options("plugin")
def plugin(name, slug, package, description, author, lightning_eff, output_dir, force) -> None:
    """A third-party plugin package: an example technique and kernel registered through entry points."""
    _create("plugin", name, slug, package, description, author, lightning_eff, output_dir, force)
