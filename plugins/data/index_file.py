"""Reading and writing the offline filters' files, atomically.

- an **index file** lists the kept sample indices of an input (``.json``: ``{"format", "kept", "total",
  "meta"}``; ``.npy``: the int64 indices, with the rest in ``<file>.meta.json`` beside it);
- a **scores file** (``data score``) holds one score per sample per kind (``.json``).

A file is first written under a temporary name in the same folder and renamed over the target
(``os.replace``), so an interrupted or failed command leaves no partial output.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

INDEX_FORMAT = "lightning-eff-index/1"
SCORES_FORMAT = "lightning-eff-scores/1"


class IndexFileError(ValueError):
    """An index or scores file that cannot be read or does not fit the data."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` and rename the result over ``path``; no file at ``path`` on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600: give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _finite(value: Any) -> Any:
    """Strict JSON: infinite and NaN floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_finite(payload), f, allow_nan=False)

    atomic_write(path, write)


def write_index(path: str | os.PathLike, kept: Sequence[int], total: int, meta: dict[str, Any]) -> None:
    kept = [int(i) for i in kept]
    if any(not 0 <= i < total for i in kept):
        raise ValueError(f"kept indices must lie in [0, {total})")
    if str(path).endswith(".npy"):
        import numpy as np

        _write_json(f"{path}.meta.json", {"format": INDEX_FORMAT, "total": total, "meta": meta})

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(kept, dtype=np.int64))

        atomic_write(path, write)
    else:
        _write_json(path, {"format": INDEX_FORMAT, "total": total, "kept": kept, "meta": meta})


def read_index(path: str | os.PathLike) -> tuple[list[int], int | None, dict[str, Any]]:
    """``(kept indices, total samples or None, meta)`` of an index file (.json or .npy)."""
    path = Path(path)
    if not path.is_file():
        raise IndexFileError(f"index file {str(path)!r} does not exist")
    try:
        if path.suffix == ".npy":
            import numpy as np

            kept = [int(i) for i in np.load(path, allow_pickle=False).reshape(-1)]
            side = Path(f"{path}.meta.json")
            info = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
            return kept, info.get("total"), info.get("meta", {})
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexFileError(f"index file {str(path)!r} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("kept"), list):
        raise IndexFileError(f"{str(path)!r} is not a lightning-eff index file (format {INDEX_FORMAT})")
    return [int(i) for i in data["kept"]], data.get("total"), data.get("meta", {})


def write_scores(path: str | os.PathLike, scores: dict[str, list[float]], meta: dict[str, Any]) -> None:
    total = len(next(iter(scores.values()))) if scores else 0
    clean = {k: [float(v) for v in vals] for k, vals in scores.items()}  # NaN -> null on writing
    _write_json(path, {"format": SCORES_FORMAT, "total": total, "scores": clean, "meta": meta})


def read_scores(path: str | os.PathLike) -> tuple[dict[str, list[float]], dict[str, Any]]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexFileError(f"scores file {str(path)!r} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != SCORES_FORMAT:
        raise IndexFileError(f"{str(path)!r} is not a lightning-eff scores file (format {SCORES_FORMAT})")
    scores = {k: [float("nan") if v is None else float(v) for v in vals] for k, vals in data["scores"].items()}
    return scores, data.get("meta", {})
