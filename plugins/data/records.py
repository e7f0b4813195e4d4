"""Reading the offline filters' input: JSON Lines, one object per line, with a text field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """The input file cannot be used; the message says where and why."""


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file (blank lines skipped). Raises :class:`InputError` on a line that is
    not a JSON object, on undecodable bytes, and on a file without records."""
    path = Path(path)
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}: line {number} is not valid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(record, dict):
                    raise InputError(f"{path}: line {number} is a JSON {type(record).__name__}, not an object")
                records.append(record)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not records:
        raise InputError(f"{path}: the file holds no records (empty input)")
    return records


def field_values(records: list[dict[str, Any]], field: str, path: str | Path = "input") -> list[str]:
    """The string ``field`` of every record; a missing or non-string value is an :class:`InputError`."""
    values = []
    for number, record in enumerate(records, 1):
        value = record.get(field)
        if not isinstance(value, str):
            found = "missing" if value is None else f"a {type(value).__name__}"
            keys = ", ".join(sorted(record)) or "none"
            raise InputError(f"{path}: record {number} has no text field '{field}' ({found}; its keys: {keys})")
        values.append(value)
    return values
