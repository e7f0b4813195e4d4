"""Shared by the template tests: baking through cookiecutter's API, listing files, running pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cookiecutter.main import cookiecutter

from lightning_eff.new import templates_root


def bake(kind: str, output_dir: Path, **context: str) -> Path:
    """cookiecutter's own API on the repository's template (no lightning-eff code in between)."""
    return Path(
        cookiecutter(
            str(templates_root() / kind),
            no_input=True,
            extra_context=context,
            output_dir=str(output_dir),
            default_config={"replay_dir": str(output_dir / ".replay")},  # not ~/.cookiecutter_replay
        )
    )


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def unrendered(root: Path) -> list[str]:
    """Files still holding Jinja markup after baking."""
    markup = ("{{", "{%", "cookiecutter.")
    return [name for name in sorted(files_under(root)) if any(m in name or m in (root / name).read_text() for m in markup)]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a nested pytest or CLI run: no options leaking from this session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(extra)
    return env


def run_pytest(project: Path, *args: str, pythonpath: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """The baked project's own suite, with this environment's Python (lightning-eff importable)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning", *args],
        check=False,
        cwd=project,
        env=clean_env(PYTHONPATH=str(pythonpath)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
