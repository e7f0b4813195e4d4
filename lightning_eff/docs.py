"""Text about techniques derived from their code: option tables and method-card summaries."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic_core import PydanticUndefined

from lightning_eff.technique import Technique

# Method cards live in the repository's docs/techniques/<name>.md (a source checkout or editable
# install); a wheel does not carry them, so `info` then points at the docs instead.
CARDS = Path(__file__).resolve().parent.parent / "docs" / "techniques"


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(value) for value in typing.get_args(annotation))
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


def _number(value: Any) -> str:
    # 2**63-1 (a seed that must fit int64) reads better than its 19 digits.
    if isinstance(value, int) and value > 2**20 and (value + 1) & value == 0:
        return f"2**{value.bit_length()}-1"
    return format(value, "g") if isinstance(value, float) else repr(value)


def range_text(metadata: list[Any]) -> str:
    """Pydantic constraints as a reader writes them: ``[Ge(ge=0), Lt(lt=1.0)]`` -> ``0 <= x < 1.0``.

    Repeated bounds (a field type and its Field both constraining) keep the tightest; other
    constraints (lengths, multiples) follow in their own words."""
    low: tuple[Any, bool] | None = None  # (value, strict)
    high: tuple[Any, bool] | None = None
    others: list[str] = []
    for m in metadata:
        bounds = [(getattr(m, "ge", None), False), (getattr(m, "gt", None), True)]
        for value, strict in bounds:
            if value is not None and (low is None or (value, strict) > low):
                low = (value, strict)
        for value, strict in ((getattr(m, "le", None), False), (getattr(m, "lt", None), True)):
            if value is not None and (high is None or (value, not strict) < (high[0], not high[1])):
                high = (value, strict)
        if isinstance(m, annotated_types.MinLen):
            others.append(f"len >= {m.min_length}")
        elif isinstance(m, annotated_types.MaxLen):
            others.append(f"len <= {m.max_length}")
        elif isinstance(m, annotated_types.MultipleOf):
            others.append(f"multiple of {_number(m.multiple_of)}")
        elif not any(hasattr(m, bound) for bound in ("ge", "gt", "le", "lt")):
            others.append(str(m))
    parts = []
    if low and high:
        parts.append(f"{_number(low[0])} {'<' if low[1] else '<='} x {'<' if high[1] else '<='} {_number(high[0])}")
    elif low:
        parts.append(f"x {'>' if low[1] else '>='} {_number(low[0])}")
    elif high:
        parts.append(f"x {'<' if high[1] else '<='} {_number(high[0])}")
    return ", ".join(parts + others)


def option_rows(cls: type[Technique]) -> list[dict[str, str]]:
    rows = []
    for name, field in cls.Config.model_fields.items():
        default = "(required)" if field.default is PydanticUndefined else repr(field.default)
        rows.append(
            {"name": name, "type": _type_name(field.annotation), "default": default,
             "limits": range_text(field.metadata), "description": field.description or ""}
        )
    return rows


COLUMNS = (("name", "option"), ("type", "type"), ("default", "default"), ("limits", "range"))


def option_table(cls: type[Technique]) -> str:
    """One aligned row per option under a header: each column as wide as its widest cell."""
    rows = option_rows(cls)
    if not rows:
        return "  (no options)"
    header = {key: title for key, title in COLUMNS} | {"description": "description"}
    widths = {key: max(len(r[key]) for r in [header, *rows]) for key, _ in COLUMNS}
    return "\n".join(
        "  " + "  ".join(r[key].ljust(widths[key]) for key, _ in COLUMNS) + "  " + r["description"]
        for r in [header, *rows]
    )


def method_card_path(name: str) -> Path:
    return CARDS / f"{name.replace('_', '-')}.md"


def method_card_summary(name: str) -> str | None:
    """The card's first paragraph after its title, or None when there is no card."""
    path = method_card_path(name)
    if not path.exists():
        return None
    paragraphs = [p.strip() for p in path.read_text().split("\n\n") if p.strip() and not p.lstrip().startswith("#")]
    return f"{paragraphs[0] if paragraphs else ''}\n  (full card: {path})"
