"""Text about techniques derived from their code: option tables and method-card summaries."""

from __future__ import annotations

from pathlib import Path

from pydantic_core import PydanticUndefined

from lightning_eff.technique import Technique

# Method cards live in the repository's docs/techniques/<name>.md (a source checkout or editable
# install); a wheel does not carry them, so `info` then points at the docs instead.
CARDS = Path(__file__).resolve().parent.parent / "docs" / "techniques"


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


def option_rows(cls: type[Technique]) -> list[dict[str, str]]:
    rows = []
    for name, field in cls.Config.model_fields.items():
        default = "(required)" if field.default is PydanticUndefined else repr(field.default)
        limits = ", ".join(str(m) for m in field.metadata) or ""
        rows.append(
            {"name": name, "type": _type_name(field.annotation), "default": default, "limits": limits,
             "description": field.description or ""}
        )
    return rows


def option_table(cls: type[Technique]) -> str:
    rows = option_rows(cls)
    if not rows:
        return "  (no options)"
    return "\n".join(
        f"  {r['name']:<22} {r['type']:<14} default {r['default']:<10} {r['limits']:<16} {r['description']}" for r in rows
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
