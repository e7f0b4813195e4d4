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

A ``class_path`` may also name any concrete Lightning ``Callback`` (``lightning.pytorch.callbacks.ModelPruning``
with its ``init_args``), so one recipe can compare ours with Lightning's own; it may name nothing else
(no function is ever called to build an entry).

Every problem in a recipe (unknown technique or key, wrong type, out-of-range value, unknown Trainer
argument) is reported in one :class:`ConfigError` whose lines point at the key
(``techniques[0].options.final_sparsity``). What is read is bounded (file size, nesting depth, nodes
after YAML aliases are expanded) and every value echoed in a message is cut to a line, so a hostile or
broken file gives a short error at once rather than a hang or a traceback.
"""

from __future__ import annotations

import codecs
import inspect
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from lightning.pytorch import Callback
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from lightning_eff.config_types import clip, short_repr
from lightning_eff.errors import ConfigError
from lightning_eff.imports import closest, import_attribute
from lightning_eff.registry import get_registry
from lightning_eff.technique import Technique, batch_selector_problems, format_validation_error

RECIPE_KEYS = {"description", "techniques", "trainer"}
ENTRY_KEYS = {"name", "options", "class_path", "init_args"}

# Limits on what is read. Real recipes are a few hundred bytes and a few dozen values; the limits
# turn a hostile or mistaken file (an alias bomb of 470 bytes expands to gigabytes) into one error.
MAX_RECIPE_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_VALUES = 100_000  # counted with YAML aliases expanded
MAX_ERROR_LINES = 30


@dataclass(frozen=True)
class TechniqueEntry:
    """One entry of ``techniques``: a Technique, or a Lightning Callback named by ``class_path``."""

    where: str  # e.g. "techniques[0]", for error messages
    cls: type[Callback]
    options: dict[str, Any]

    @property
    def is_technique(self) -> bool:
        return issubclass(self.cls, Technique)

    def instantiate(self) -> Callback:
        """A fresh instance; every failure is a one-line :class:`ConfigError`."""
        name = self.cls.__name__
        if self.is_technique:
            try:
                return self.cls.from_options(**self.options)
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - a third-party constructor may fail in any way
                raise ConfigError(f"{name}: building it failed: {type(exc).__name__}: {clip(str(exc), 200)}") from None
        _check_init_args(self.cls, self.options)
        try:
            return self.cls(**self.options)
        except Exception as exc:  # noqa: BLE001 - a Lightning callback validates its own arguments
            raise ConfigError(
                f"{name}: init_args {short_repr(self.options)} were refused: {type(exc).__name__}: {clip(str(exc), 200)}"
            ) from None


@dataclass
class Recipe:
    name: str
    description: str = ""
    entries: list[TechniqueEntry] = field(default_factory=list)
    trainer: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"

    def build(self) -> list[Callback]:
        """Fresh instances in recipe order (each Trainer needs its own): techniques and any Lightning
        callbacks named by ``class_path``; all of them go to ``Trainer(callbacks=...)``."""
        built, errors = [], []
        for entry in self.entries:
            try:
                built.append(entry.instantiate())
            except ConfigError as exc:
                errors += [f"{self.source}: {entry.where}: {line}" for line in str(exc).splitlines()]
        if errors:
            raise _error(errors)
        return built

    def trainer_kwargs(self, techniques: list[Callback], base: dict[str, Any] | None = None) -> dict[str, Any]:
        """``base`` updated with the recipe's ``trainer`` section and every ``leff_configure_trainer``."""
        kwargs = dict(base or {})
        kwargs.update(self.trainer)
        configure_trainer(kwargs, _techniques(techniques))
        return kwargs

    def validate(self) -> list[str]:
        """Every problem found without a Trainer (options, ``leff_validate``, schedules that never
        start within the recipe's ``max_steps``), as sentences."""
        try:
            built = self.build()
        except ConfigError as exc:
            return str(exc).splitlines()
        techniques = _techniques(built)
        kwargs = self.trainer_kwargs(techniques)
        problems = validate_techniques(techniques, kwargs)
        wheres = [e.where for e in self.entries]
        for where, callback in zip(wheres, built):
            if isinstance(callback, Technique):
                problems += [f"{self.source}: {where}.options.{p}" for p in _never_starts(callback, kwargs.get("max_steps"))]
        return problems


def _techniques(callbacks: list[Callback]) -> list[Technique]:
    return [c for c in callbacks if isinstance(c, Technique)]


def configure_trainer(trainer_kwargs: dict[str, Any], techniques: list[Technique]) -> dict[str, Any]:
    """Let plugins and techniques adjust Trainer kwargs (``leff_configure_trainer``), in place."""
    techniques = _techniques(techniques)
    get_registry().with_techniques(techniques).hook.leff_configure_trainer(trainer_kwargs=trainer_kwargs, techniques=techniques)
    return trainer_kwargs


def validate_techniques(techniques: list[Technique], trainer_kwargs: dict[str, Any]) -> list[str]:
    from lightning_eff.plan import resolve_order

    techniques = _techniques(techniques)
    _, problems = resolve_order(techniques)
    problems += batch_selector_problems(techniques)
    for found in get_registry().with_techniques(techniques).hook.leff_validate(techniques=techniques, trainer_kwargs=trainer_kwargs):
        problems += list(found or [])
    return problems


def _never_starts(technique: Technique, max_steps: Any) -> list[str]:
    """Start times given in steps at or past ``max_steps``: the technique would silently do nothing."""
    from lightning_eff.schedule import TimePoint

    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= 0:
        return []  # no step budget (-1: epochs decide): fractions and steps cannot be compared
    problems = []
    for key, value in technique.config:
        if key.endswith("start") and isinstance(value, TimePoint) and value.unit == "steps" and value.value >= max_steps:
            problems.append(
                f"{key}={value.value}: {technique.name} never starts, the run ends at trainer.max_steps={max_steps}; "
                f"start earlier (a fraction such as 0.5 follows the run's length) or raise max_steps"
            )
    return problems


def _error(lines: list[str]) -> ConfigError:
    """One ConfigError of at most MAX_ERROR_LINES lines (a broken file can produce thousands)."""
    if len(lines) > MAX_ERROR_LINES:
        lines = [*lines[:MAX_ERROR_LINES], f"... and {len(lines) - MAX_ERROR_LINES} more problem(s)"]
    return ConfigError("\n".join(lines))


def _suggest(word: str, choices: Any) -> str:
    return closest(word, [c for c in choices if isinstance(c, str)])


def _key_problems(mapping: dict, what: str) -> list[str]:
    """Keys that are not text (YAML ``1:`` or ``true:``): a name can only be a string."""
    return [
        f"{what}: key {short_repr(k)} ({type(k).__name__}) is not a name; write names as text (quote it)"
        for k in mapping
        if not isinstance(k, str)
    ]


# -- class_path ------------------------------------------------------------------------------------

def _base_classes() -> tuple[type, ...]:
    """Classes that are Callbacks in name only: bases meant to be subclassed."""
    from lightning.pytorch import callbacks as cb

    return (Callback, Technique, cb.BaseFinetuning, cb.Checkpoint, cb.ProgressBar, cb.BasePredictionWriter)


def _resolve_class(path: Any) -> type[Callback]:
    """The concrete Technique or Lightning Callback class ``path`` names. Nothing is called: a
    function (``tempfile:mkdtemp``) or any other object is refused after import."""
    obj = import_attribute(path, "class_path", "'package.module.ClassName'")
    expected = "a lightning_eff.Technique or a lightning.pytorch Callback class"
    if not isinstance(obj, type):
        raise ConfigError(f"{path} is a {type(obj).__name__}, not a class: class_path must name {expected} (nothing else is called)")
    if not issubclass(obj, Callback):
        raise ConfigError(f"{path} is not a lightning_eff.Technique or a lightning.pytorch Callback: class_path must name {expected}")
    if inspect.isabstract(obj) or obj in _base_classes() or (issubclass(obj, Technique) and not obj.name):
        raise ConfigError(
            f"{path} is an abstract base class; name a concrete subclass (a registered technique by 'name', "
            f"or e.g. lightning.pytorch.callbacks.ModelPruning)"
        )
    if obj.__module__.startswith("lightning_eff.") and not issubclass(obj, Technique):
        raise ConfigError(f"{path} is lightning-eff machinery, added automatically; list techniques instead")
    return obj


def _check_init_args(cls: type, options: dict[str, Any]) -> None:
    """Unknown or missing constructor arguments of a Lightning callback, before it is called."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return  # no signature to check against: the constructor itself decides
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    problems = [f"{cls.__name__}: unknown init_arg '{clip(k, 80)}'{_suggest(k, named)}; it takes: {', '.join(named)}"
                for k in options if k not in named]
    missing = [n for n in named if params[n].default is inspect.Parameter.empty and n not in options]
    if missing:
        problems.append(f"{cls.__name__}: missing required init_arg(s) {', '.join(missing)}")
    if problems:
        raise ConfigError("\n".join(problems))


# -- entries ---------------------------------------------------------------------------------------


def _technique_by_name(name: Any) -> type[Technique]:
    if not isinstance(name, str):
        raise ConfigError(f"'name' must be a registered technique name (text), got {short_repr(name)}")
    registry = get_registry()
    if name not in registry.techniques:
        known = ", ".join(sorted(registry.techniques)) or "(none installed)"
        raise ConfigError(f"unknown technique '{clip(name, 80)}'{_suggest(name, registry.techniques)}. Installed techniques: {known}")
    return registry.technique(name)


def _parse_entry(where: str, raw: Any) -> tuple[TechniqueEntry | None, list[str]]:
    if not isinstance(raw, dict):
        return None, [f"{where}: expected a mapping with 'name' and 'options', got {type(raw).__name__}"]
    problems = _key_problems(raw, where)
    unknown = sorted(k for k in raw if isinstance(k, str) and k not in ENTRY_KEYS)
    if unknown:
        problems.append(f"{where}: unknown key(s) {short_repr(unknown)}; allowed: name, options (or class_path, init_args)")
    if problems:
        return None, problems
    if ("name" in raw) == ("class_path" in raw):
        return None, [f"{where}: give exactly one of 'name' (a registered technique) or 'class_path'"]
    if "options" in raw and "init_args" in raw:
        return None, [f"{where}: give 'options' or 'init_args', not both (they are the same thing)"]
    label = "init_args" if "init_args" in raw else "options"
    options = raw.get(label)
    options = {} if options is None else options
    if not isinstance(options, dict):
        return None, [f"{where}.{label}: expected a mapping of option: value, got {type(options).__name__}"]
    problems = _key_problems(options, f"{where}.{label}")
    if problems:
        return None, problems
    try:
        cls = _technique_by_name(raw["name"]) if "name" in raw else _resolve_class(raw["class_path"])
    except ConfigError as exc:
        return None, [f"{where}{'' if 'name' in raw else '.class_path'}: {exc}"]
    entry = TechniqueEntry(where, cls, dict(options))
    try:  # validate options now so every error of the recipe is reported together
        entry.instantiate()
    except ConfigError as exc:
        return None, [f"{where}.{label}: {line}" for line in str(exc).splitlines()]
    return entry, []


# -- the trainer section ---------------------------------------------------------------------------

_Int = Annotated[int, Strict()]  # strict: true/false and "4" are refused, not read as 1 / 4
_Number = Annotated[float, Strict()]  # strict float still takes ints


class _TrainerRanges(BaseModel):
    """Ranges of the Trainer arguments a typo turns into a crash at step 1 (the rest: names only)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    accumulate_grad_batches: _Int = Field(1, ge=1)
    max_steps: _Int = Field(-1, ge=-1)
    min_steps: _Int | None = Field(None, ge=0)
    max_epochs: _Int | None = Field(None, ge=-1)
    min_epochs: _Int | None = Field(None, ge=0)
    log_every_n_steps: _Int | None = Field(None, ge=1)
    check_val_every_n_epoch: _Int | None = Field(None, ge=1)
    num_sanity_val_steps: _Int | None = Field(None, ge=-1)
    num_nodes: _Int = Field(1, ge=1)
    reload_dataloaders_every_n_epochs: _Int = Field(0, ge=0)
    gradient_clip_val: _Number | None = Field(None, ge=0)
    val_check_interval: _Number | None = Field(None, gt=0)
    limit_train_batches: _Number | None = Field(None, ge=0)
    limit_val_batches: _Number | None = Field(None, ge=0)
    limit_test_batches: _Number | None = Field(None, ge=0)
    limit_predict_batches: _Number | None = Field(None, ge=0)
    overfit_batches: _Number = Field(0.0, ge=0)


def _trainer_arguments() -> list[str]:
    import lightning.pytorch as pl

    return [n for n in inspect.signature(pl.Trainer.__init__).parameters if n != "self"]


def _trainer_problems(trainer: dict[str, Any]) -> list[str]:
    """Names checked against ``lightning.pytorch.Trainer.__init__`` and basic ranges."""
    problems = _key_problems(trainer, "trainer")
    names = _trainer_arguments()
    for key in trainer:
        if not isinstance(key, str):
            continue
        if key == "callbacks":
            problems.append("trainer.callbacks: list callbacks under 'techniques' with class_path and init_args")
        elif key not in names:
            problems.append(f"trainer: unknown Trainer argument '{clip(key, 80)}'{_suggest(key, names)}")
    try:
        _TrainerRanges(**{k: v for k, v in trainer.items() if isinstance(k, str)})
    except ValidationError as exc:
        problems += format_validation_error("trainer", exc).splitlines()
    return problems


# -- reading ---------------------------------------------------------------------------------------


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (YAML would keep the last silently) and
    nesting deeper than MAX_DEPTH (the composer recurses: 1,000 levels overflow the stack)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"values nested deeper than {MAX_DEPTH} levels (a recipe needs about 4)", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<: *defaults' may be overridden by explicit keys, by design
                key = self.construct_object(key_node)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable: SafeConstructor reports it
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"found duplicate key {short_repr(key)}; YAML would keep only the last value: remove one",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_message(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return clip(" ".join(str(exc.problem or exc.context or "").split()), 300) + where
    return clip(" ".join(str(exc).split()), 300)


def _check_size(data: Any, source: str) -> None:
    """Refuse more than MAX_VALUES values (aliases and shared references expanded, which also stops
    cycles) or nesting deeper than MAX_DEPTH, before anything walks the data recursively."""
    budget = MAX_VALUES
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise ConfigError(
                f"{source}: the recipe holds more than {MAX_VALUES} values once YAML aliases are expanded; "
                f"a recipe needs a few dozen: remove the repeated aliases (*name)"
            )
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: values nested deeper than {MAX_DEPTH} levels; a recipe needs about 4")
        if isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in value)


_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)


def _read_text(path: Path) -> str:
    """The file as text: at most MAX_RECIPE_BYTES, UTF-8 (a BOM is fine), else a ConfigError saying so."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recipe: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_RECIPE_BYTES >> 10} KiB; a recipe is a short YAML file: is this the right file?")
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise ConfigError(f"{path}: the file is {encoding} text; save it as UTF-8")
    if b"\x00" in raw:
        raise ConfigError(f"{path}: holds NUL bytes, so it is binary (or UTF-16/32) rather than a YAML recipe; save the recipe as UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save the file as UTF-8 "
            f"(an editor set to latin-1 or Windows-1252 writes such bytes)"
        ) from None


def recipe_from_dict(data: Any, name: str = "recipe", source: str = "<dict>") -> Recipe:
    _check_size(data, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a mapping with a 'techniques' list, got {type(data).__name__}")
    errors = [f"{source}: {p}" for p in _key_problems(data, "recipe")]
    errors += [
        f"{source}: unknown top-level key '{clip(k, 80)}'{_suggest(k, RECIPE_KEYS)}; allowed: {sorted(RECIPE_KEYS)}"
        for k in sorted(k for k in data if isinstance(k, str) and k not in RECIPE_KEYS)
    ]
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        errors.append(f"{source}: 'description' must be text, got {type(description).__name__}")
        description = None
    raw_entries = data.get("techniques")
    raw_entries = [] if raw_entries is None else raw_entries
    if not isinstance(raw_entries, list):
        errors.append(f"{source}: 'techniques' must be a list of entries (- name: ...), got {type(raw_entries).__name__}")
        raw_entries = []
    trainer = data.get("trainer")
    trainer = {} if trainer is None else trainer
    if not isinstance(trainer, dict):
        errors.append(f"{source}: 'trainer' must be a mapping of Trainer arguments, got {type(trainer).__name__}")
        trainer = {}
    errors += [f"{source}: {p}" for p in _trainer_problems(trainer)]
    entries = []
    for i, raw in enumerate(raw_entries):
        entry, problems = _parse_entry(f"techniques[{i}]", raw)
        errors += [f"{source}: {p}" for p in problems]
        if entry is not None:
            entries.append(entry)
    if errors:
        raise _error(errors)
    return Recipe(name=name, description=description or "", entries=entries, trainer=trainer, source=source)


def shipped_recipes() -> dict[str, Path]:
    """Recipes shipped in the package (``lightning_eff/recipes/*.yaml``), by stem."""
    folder = resources.files("lightning_eff") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def load_recipe(source: str | Path | dict[str, Any]) -> Recipe:
    """A shipped recipe by name (``quickstart``), a YAML path, or an already parsed mapping."""
    if isinstance(source, dict):
        return recipe_from_dict(source)
    if not isinstance(source, (str, Path)):
        raise ConfigError(f"a recipe is a path, a shipped recipe's name or a mapping, got {type(source).__name__}")
    path = Path(source)
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        exists = False
    if not exists:
        shipped = shipped_recipes()
        if str(source) not in shipped:
            raise ConfigError(
                f"recipe '{clip(str(source), 120)}' is neither a file nor a shipped recipe{_suggest(str(source), shipped)}; "
                f"shipped: {', '.join(sorted(shipped)) or '(none)'}"
            )
        path = shipped[str(source)]
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_message(exc)}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{path}: cannot read the YAML: {clip(str(exc), 200)}") from None
    return recipe_from_dict(data, name=path.stem, source=str(path))
