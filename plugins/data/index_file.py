"""Reading and writing the offline filters' files, atomically, and checking them when read back.

- an **index file** lists the kept sample indices of an input (``.json``: ``{"format", "kept", "total",
  "meta"}``; ``.npy``: the int64 indices, with the rest in ``<file>.meta.json`` beside it);
- a **scores file** (``data score``) holds one score per sample per kind (``.json``).

A file is first written under a temporary name in the same folder and renamed over the target
(``os.replace``), so an interrupted or failed command leaves no partial output, no temporary file
and no folder it created. A ``.npy`` and its sidecar are two renames: the sidecar records the
length and SHA-256 of the ``.npy`` it describes, so a pair left mismatched by a crash between the
renames (or edited by hand) is refused when read, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

INDEX_FORMAT = "lightning-eff-index/1"
SCORES_FORMAT = "lightning-eff-scores/1"


class IndexFileError(ValueError):
    """An index or scores file that cannot be read or does not fit the data."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the metadata of an ``.npy`` index lives."""
    return Path(f"{os.fspath(path)}.meta.json")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` and rename the result over ``path``; on failure no file at
    ``path``, no temporary file, and no folder this call created is left behind."""
    path = Path(path)
    missing = []  # folders this call creates, deepest first
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600: give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if missing and not path.exists():  # failed: take back the folders made for it
            for created in missing:
                try:
                    created.rmdir()
                except OSError:
                    break


def _finite(value: Any) -> Any:
    """Strict JSON: infinite and NaN floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(_finite(payload), allow_nan=False).encode("utf-8")


def _write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    data = _json_bytes(payload)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def check_indices(kept: Any, total: int | None, source: str) -> list[int]:
    """``kept`` as a list of distinct ints in ``[0, total)``; anything else is an :class:`IndexFileError`
    naming the first bad entry (strings, floats, bools, duplicates, negatives)."""
    out: list[int] = []
    seen: set[int] = set()
    for position, value in enumerate(kept):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy ints are Integral
            raise IndexFileError(
                f"{source}: entry {position} of the kept indices is {_short(value)} ({type(value).__name__}); "
                f"indices are whole numbers: rewrite the file with lightning-eff data dedup|filter"
            )
        index = int(value)
        if index < 0 or (total is not None and index >= total):
            bound = f"[0, {total})" if total is not None else "0 and up"
            raise IndexFileError(f"{source}: index {index} (entry {position}) lies outside {bound}")
        if index in seen:
            raise IndexFileError(f"{source}: index {index} appears twice (entry {position}); each sample is kept once")
        seen.add(index)
        out.append(index)
    return out


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_total(total: Any, source: str) -> int:
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise IndexFileError(f"{source}: 'total' is {_short(total)}, not a sample count; rewrite the file with lightning-eff data")
    return total


def _check_meta(meta: Any, source: str) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise IndexFileError(f"{source}: 'meta' is a {type(meta).__name__}, not a mapping")
    return meta


def write_index(path: str | os.PathLike, kept: Sequence[int], total: int, meta: dict[str, Any]) -> None:
    kept = check_indices(list(kept), total, str(path))
    if str(path).endswith(".npy"):
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, np.asarray(kept, dtype=np.int64))
        array = buffer.getvalue()
        side = {"format": INDEX_FORMAT, "total": total, "meta": meta,
                "npy": {"count": len(kept), "bytes": len(array), "sha256": hashlib.sha256(array).hexdigest()}}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(array)

        # Two renames cannot be one atomic step: the sidecar names the .npy's hash, so a pair left
        # mismatched by a crash in between is refused by read_index rather than used.
        atomic_write(path, write)
        _write_json(sidecar_path(path), side)
    else:
        _write_json(path, {"format": INDEX_FORMAT, "total": total, "kept": kept, "meta": meta})


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise IndexFileError(f"{what} {str(path)!r} does not exist") from None
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        raise IndexFileError(f"{what} {str(path)!r} is unreadable: {_short(str(exc))}") from None


def _read_npy(path: Path) -> tuple[list[int], int, dict[str, Any]]:
    import numpy as np

    source = repr(str(path))
    side_path = sidecar_path(path)
    if not side_path.is_file():
        raise IndexFileError(
            f"index file {source} has no sidecar {side_path.name} (total and metadata): it was not written by "
            f"lightning-eff data, or the sidecar was lost; rerun the command, or write a .json index"
        )
    info = _load_json(side_path, "index sidecar")
    if not isinstance(info, dict) or info.get("format") != INDEX_FORMAT:
        raise IndexFileError(f"{str(side_path)!r} is not a lightning-eff index sidecar (format {INDEX_FORMAT})")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IndexFileError(f"index file {source} is unreadable: {exc.strerror or exc}") from None
    recorded = info.get("npy")
    if recorded is not None and (
        not isinstance(recorded, dict)
        or recorded.get("bytes") != len(raw)
        or recorded.get("sha256") != hashlib.sha256(raw).hexdigest()
    ):
        raise IndexFileError(
            f"index file {source} does not match its sidecar {side_path.name} (a write was interrupted, or one of "
            f"the pair was replaced): rerun the command that wrote them"
        )
    import io

    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise IndexFileError(f"index file {source} is not a readable .npy array: {exc}") from None
    if array.ndim != 1:
        raise IndexFileError(f"index file {source} holds a {array.ndim}-D array of shape {array.shape}; an index is 1-D")
    if array.dtype.kind not in "iu":
        raise IndexFileError(f"index file {source} holds {array.dtype} values; indices are integers (int64)")
    total = _check_total(info.get("total"), source)
    return check_indices(array.tolist(), total, source), total, _check_meta(info.get("meta"), source)


def read_index(path: str | os.PathLike) -> tuple[list[int], int | None, dict[str, Any]]:
    """``(kept indices, total samples, meta)`` of an index file (.json or .npy), checked: distinct
    whole numbers in ``[0, total)``, a matching sidecar for ``.npy``."""
    path = Path(path)
    if not path.is_file():
        raise IndexFileError(f"index file {str(path)!r} does not exist")
    if path.suffix == ".npy":
        return _read_npy(path)
    data = _load_json(path, "index file")
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("kept"), list):
        raise IndexFileError(f"{str(path)!r} is not a lightning-eff index file (format {INDEX_FORMAT})")
    source = repr(str(path))
    total = _check_total(data.get("total"), source)
    return check_indices(data["kept"], total, source), total, _check_meta(data.get("meta"), source)


def write_scores(path: str | os.PathLike, scores: dict[str, list[float]], meta: dict[str, Any]) -> None:
    total = len(next(iter(scores.values()))) if scores else 0
    clean = {k: [float(v) for v in vals] for k, vals in scores.items()}  # NaN -> null on writing
    _write_json(path, {"format": SCORES_FORMAT, "total": total, "scores": clean, "meta": meta})


def read_scores(path: str | os.PathLike) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """``({kind: scores}, meta)`` of a scores file, checked: numbers or null (NaN), one per sample."""
    path = Path(path)
    data = _load_json(path, "scores file")
    if not isinstance(data, dict) or data.get("format") != SCORES_FORMAT:
        raise IndexFileError(f"{str(path)!r} is not a lightning-eff scores file (format {SCORES_FORMAT})")
    source = repr(str(path))
    table = data.get("scores")
    if not isinstance(table, dict) or not table:
        raise IndexFileError(f"{source}: 'scores' must map each kind (perplexity, ifd...) to a list of scores")
    total = _check_total(data.get("total"), source)
    scores = {}
    for kind, values in table.items():
        if not isinstance(values, list):
            raise IndexFileError(f"{source}: scores '{kind}' are a {type(values).__name__}, not a list")
        if len(values) != total:
            raise IndexFileError(f"{source}: {len(values)} '{kind}' scores for {total} samples; rerun lightning-eff data score")
        for i, v in enumerate(values):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise IndexFileError(f"{source}: '{kind}' score {i} is {_short(v)} ({type(v).__name__}); scores are numbers or null")
        scores[kind] = [math.nan if v is None else float(v) for v in values]
    return scores, _check_meta(data.get("meta"), source)
