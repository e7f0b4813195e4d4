"""Import paths a user writes (``pkg.module:Name`` or ``pkg.module.Name``) -> the object, uncalled.

One place for what recipes (``class_path``), the bench (``--model``/``--data``) and data techniques
(``reference_class``, ``data score --model``) share: the syntax, the import, and errors that name the
fix. What kind of object is acceptable is the caller's check: a recipe is data, so nothing imported here
is ever called.
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Any

from lightning_eff.config_types import clip, short_repr
from lightning_eff.errors import ConfigError

IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*[.:][A-Za-z_]\w*")


def closest(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the nearest of ``choices``, or nothing."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def import_attribute(path: Any, option: str, example: str) -> Any:
    """The attribute ``path`` names, imported but not called.

    ``option`` names where the path came from (``class_path``, ``--model``) and ``example`` how to
    write it; every failure is a :class:`ConfigError` saying which part is wrong."""
    if not isinstance(path, str) or not IMPORT_PATH.fullmatch(path):
        raise ConfigError(f"{option} {short_repr(path)} is not a dotted path to a class; write it as {example}")
    module_name, _, attr = path.replace(":", ".").rpartition(".") if ":" not in path else path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{option}: cannot import '{path}': {clip(str(exc), 200)}; check the spelling and that the package is installed"
        ) from None
    except Exception as exc:  # noqa: BLE001 - importing runs the module's own code
        raise ConfigError(
            f"{option}: cannot import '{path}': importing {module_name} raised {type(exc).__name__}: {clip(str(exc), 200)}"
        ) from None
    try:
        return getattr(module, attr)
    except Exception:  # noqa: BLE001 - AttributeError, or a lazy module's __getattr__ failing
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(f"{option}: cannot import '{path}': module {module_name} has no '{attr}'{closest(attr, names)}") from None


def import_subclass(path: Any, base: type, option: str, example: str) -> type:
    """The class ``path`` names, which must subclass ``base``; any other object is refused uncalled."""
    obj = import_attribute(path, option, example)
    expected = f"{base.__module__}.{base.__qualname__}"
    if not (isinstance(obj, type) and issubclass(obj, base)):
        kind = f"class {obj.__qualname__}" if isinstance(obj, type) else f"a {type(obj).__name__}"
        raise ConfigError(
            f"{option}={path!r} names {kind}, not a {expected} subclass: it may only name such a class "
            "(lightning-eff builds it; it never calls other objects named in an option or a recipe)"
        )
    return obj
