"""Keep the repository's top-level ``kernels/`` and ``plugins/`` folders from shadowing installed
distributions of the same name.

Those folders install as ``lightning_eff.kernels`` / ``lightning_eff.plugins`` (package-dir mapping),
but whenever the repository root is on ``sys.path`` (``python -m pytest``, ``python -c``, a notebook
started in the checkout) Python also finds them as top-level ``kernels`` / ``plugins``. transformers
5 imports the PyPI package ``kernels``; our folder used to answer instead and the import failed. Each
folder's ``__init__`` calls :func:`defer_to_installed` first: imported under its top-level name, it
puts the installed distribution in its place, or fails with an error that names the real package.

Deliberately free of heavy imports: it runs inside ``import kernels`` of third-party code.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.machinery import PathFinder


def _same_folder(entry: str, folder: str) -> bool:
    try:
        return os.path.samefile(entry or os.getcwd(), folder)
    except OSError:
        return False


def defer_to_installed(name: str, init_file: str, real_name: str) -> bool:
    """Called at the top of ``kernels/__init__.py`` and ``plugins/__init__.py`` with their ``__name__``.

    Returns False when the folder is imported as ``real_name`` (the normal case: the caller goes on).
    Under any other name, the same top-level name is looked up on ``sys.path`` without the checkout
    and that module replaces this one in ``sys.modules`` (Python's import returns whatever
    ``sys.modules`` holds after the module ran); returns True so the caller skips its own body.
    Raises ImportError when nothing else of that name is installed.
    """
    if name == real_name or "." in name:
        return False
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(init_file)))
    search = [entry for entry in sys.path if not _same_folder(entry, checkout)]
    spec = PathFinder.find_spec(name, search)
    if spec is None or spec.loader is None:
        raise ImportError(
            f"'{name}' is not installed. The folder {os.path.dirname(os.path.abspath(init_file))} is "
            f"lightning-eff's '{real_name}' and is not importable as '{name}': use 'import {real_name}'.",
            name=name,
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return True
