"""YAML recipes -> validated technique instances.

A recipe lists techniques by registered name with their options, plus optional Trainer settings::

    description: prune to 50% while freezing the input half
    techniques:
      - name: gradual_pruning
        options: {final_sparsity: 0.5}
      - class_path: my_pkg.MyTechnique      # LightningCLI style also works
        init_args: {alpha: 0.1}
    trainer:
      precision: bf16-mixed

Every problem in a recipe (unknown technique or key, wrong type, out-of-range value) is reported
in one :class:`ConfigError` whose lines point at the key (``techniques[0].options.final_sparsity``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lightning_eff.errors import ConfigError
from lightning_eff.registry import get_registry
from lightning_eff.technique import Technique

RECIPE_KEYS = {"description", "techniques", "trainer"}
ENTRY_KEYS = {"name", "options", "class_path", "init_args"}


@dataclass(frozen=True)
class TechniqueEntry:
    where: str  # e.g. "techniques[0]", for error messages
    cls: type[Technique]
    options: dict[str, Any]


@dataclass
class Recipe:
    name: str
    description: str = ""
    entries: list[TechniqueEntry] = field(default_factory=list)
    trainer: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"

    def build(self) -> list[Technique]:
        """Fresh technique instances (each Trainer needs its own)."""
        techniques, errors = [], []
        for entry in self.entries:
            try:
                techniques.append(entry.cls.from_options(**entry.options))
            except ConfigError as exc:
                errors += [f"{self.source}: {entry.where}: {line}" for line in str(exc).splitlines()]
        if errors:
            raise ConfigError("\n".join(errors))
        return techniques

    def trainer_kwargs(self, techniques: list[Technique], base: dict[str, Any] | None = None) -> dict[str, Any]:
        """``base`` updated with the recipe's ``trainer`` section and every ``leff_configure_trainer``."""
        kwargs = dict(base or {})
        kwargs.update(self.trainer)
        configure_trainer(kwargs, techniques)
        return kwargs

    def validate(self) -> list[str]:
        """Every problem found without a Trainer (options and ``leff_validate``), as sentences."""
        try:
            techniques = self.build()
        except ConfigError as exc:
            return str(exc).splitlines()
        return validate_techniques(techniques, self.trainer_kwargs(techniques))


def configure_trainer(trainer_kwargs: dict[str, Any], techniques: list[Technique]) -> dict[str, Any]:
    """Let plugins and techniques adjust Trainer kwargs (``leff_configure_trainer``), in place."""
    get_registry().with_techniques(techniques).hook.leff_configure_trainer(trainer_kwargs=trainer_kwargs, techniques=techniques)
    return trainer_kwargs


def validate_techniques(techniques: list[Technique], trainer_kwargs: dict[str, Any]) -> list[str]:
    from lightning_eff.plan import resolve_order

    _, problems = resolve_order(techniques)
    for found in get_registry().with_techniques(techniques).hook.leff_validate(techniques=techniques, trainer_kwargs=trainer_kwargs):
        problems += list(found or [])
    return problems


def _import_class(path: str) -> type:
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"cannot import '{path}': {exc}") from None
    return cls


def _parse_entry(where: str, raw: Any) -> tuple[TechniqueEntry | None, list[str]]:
    if not isinstance(raw, dict):
        return None, [f"{where}: expected a mapping with 'name' and 'options', got {type(raw).__name__}"]
    unknown = sorted(set(raw) - ENTRY_KEYS)
    if unknown:
        return None, [f"{where}: unknown key(s) {unknown}; allowed: name, options (or class_path, init_args)"]
    if ("name" in raw) == ("class_path" in raw):
        return None, [f"{where}: give exactly one of 'name' (a registered technique) or 'class_path'"]
    options = raw.get("options", raw.get("init_args")) or {}
    if not isinstance(options, dict):
        return None, [f"{where}.options: expected a mapping of option: value, got {type(options).__name__}"]
    try:
        if "name" in raw:
            cls = get_registry().technique(str(raw["name"]))
        else:
            cls = _import_class(str(raw["class_path"]))
            if not (isinstance(cls, type) and issubclass(cls, Technique)):
                return None, [f"{where}.class_path: {raw['class_path']} is not a lightning_eff.Technique"]
    except ConfigError as exc:
        return None, [f"{where}: {exc}"]
    entry = TechniqueEntry(where, cls, dict(options))
    try:  # validate options now so every error of the recipe is reported together
        cls.from_options(**entry.options)
    except ConfigError as exc:
        return None, [f"{where}.options: {line}" for line in str(exc).splitlines()]
    return entry, []


def recipe_from_dict(data: Any, name: str = "recipe", source: str = "<dict>") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a mapping with a 'techniques' list, got {type(data).__name__}")
    errors = [f"{source}: unknown top-level key '{k}'; allowed: {sorted(RECIPE_KEYS)}" for k in sorted(set(data) - RECIPE_KEYS)]
    raw_entries = data.get("techniques") or []
    if not isinstance(raw_entries, list):
        errors.append(f"{source}: 'techniques' must be a list")
        raw_entries = []
    trainer = data.get("trainer") or {}
    if not isinstance(trainer, dict):
        errors.append(f"{source}: 'trainer' must be a mapping of Trainer arguments")
        trainer = {}
    entries = []
    for i, raw in enumerate(raw_entries):
        entry, problems = _parse_entry(f"techniques[{i}]", raw)
        errors += [f"{source}: {p}" for p in problems]
        if entry is not None:
            entries.append(entry)
    if errors:
        raise ConfigError("\n".join(errors))
    return Recipe(name=name, description=str(data.get("description", "")), entries=entries, trainer=trainer, source=source)


def shipped_recipes() -> dict[str, Path]:
    """Recipes shipped in the package (``lightning_eff/recipes/*.yaml``), by stem."""
    folder = resources.files("lightning_eff") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def load_recipe(source: str | Path | dict[str, Any]) -> Recipe:
    """A shipped recipe by name (``quickstart``), a YAML path, or an already parsed mapping."""
    if isinstance(source, dict):
        return recipe_from_dict(source)
    path = Path(source)
    if not path.exists():
        shipped = shipped_recipes()
        if str(source) not in shipped:
            raise ConfigError(
                f"recipe '{source}' is neither a file nor a shipped recipe; shipped: {', '.join(sorted(shipped)) or '(none)'}"
            )
        path = shipped[str(source)]
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return recipe_from_dict(data, name=path.stem, source=str(path))
