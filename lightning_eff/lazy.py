"""Public names of a package imported on first use (PEP 562).

The plugin packages are imported to discover their hooks (``lightning-eff --help`` lists the commands
they add); importing their techniques, and with them Lightning (about 5 s on a 2-core machine), waits
until a technique is actually needed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose name ``N`` lives in submodule ``exports[N]``
    (relative to the package, e.g. ``".gradual"``)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *exports})

    return __getattr__, __dir__
