"""This family's folder is called ``peft``, like the PyPI library it builds on: the folder must never
answer ``import peft``. It is reachable as top-level ``peft`` whenever the checkout's ``plugins/``
folder is on ``sys.path`` (a script run from it); ``tests/peft`` is reachable as a namespace package
whenever ``tests/`` is (pytest's rootdir conftest puts it there)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_peft_gets_the_library_with_plugins_and_tests_folders_first_on_sys_path():
    pytest.importorskip("peft")
    code = (
        "import peft, lightning_eff.plugins.peft as ours\n"
        "from peft import LoraConfig, inject_adapter_in_model\n"
        "print(peft.__file__)\n"
        "print(ours.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "tests"), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    library, ours = (Path(line).resolve() for line in proc.stdout.strip().splitlines()[-2:])
    assert library.parent not in (ROOT / "plugins" / "peft", ROOT / "tests" / "peft"), f"'peft' came from the checkout: {library}"
    assert ours == ROOT / "plugins" / "peft" / "__init__.py"
