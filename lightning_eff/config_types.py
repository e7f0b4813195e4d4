"""Option types shared by every technique's Config, so a rule is written once.

- :data:`Patterns`: a sequence of name patterns; a single string is one pattern (not its characters);
- :data:`Seed`: a random seed that fits the 64-bit generators of torch and numpy;
- :func:`short_repr` / :func:`clip`: a value or a message for an error, never longer than a line.

:class:`~lightning_eff.technique.TechniqueConfig` adds the rules that need no type of their own:
non-finite floats and ``true``/``false`` where a number is expected are refused for every option.
"""

from __future__ import annotations

import reprlib
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

#: the longest a value is echoed in an error message (a recipe may hold megabytes)
REPR_LIMIT = 80

_repr = reprlib.Repr()
_repr.maxstring = REPR_LIMIT
_repr.maxother = REPR_LIMIT
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters, nested containers elided (``[...]``)."""
    try:
        text = _repr.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = 400) -> str:
    """``text`` cut to ``limit`` characters (messages built from user input stay readable)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_or_many(value: Any) -> Any:
    # tuple("head") would be ('h', 'e', 'a', 'd'): a lone string is one pattern.
    if isinstance(value, str):
        return (value,)
    if value is None:
        raise ValueError("expected a list of patterns, got None; write [] (or ()) for none")
    if not isinstance(value, (list, tuple)):  # not a set either: the order of blocks matters
        raise ValueError(f"expected a list of patterns (strings), got a {type(value).__name__}")
    return tuple(value)


#: glob / 're:' patterns or names: ``"head"`` and ``["head"]`` both mean one pattern
Patterns = Annotated[tuple[str, ...], BeforeValidator(_one_or_many)]

#: seeds are handed to torch.Generator.manual_seed and numpy, which take at most 64 bits
SEED_MAX = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
