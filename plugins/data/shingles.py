"""Text normalisation, exact-duplicate keys and shingles for near-duplicate detection: pure functions."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, lower case, every run of whitespace one space, no leading/trailing space.

    Two texts that differ only in case, spacing or Unicode compatibility forms normalise alike."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_key(text: str, normalize: bool = True) -> str:
    """SHA-256 of the (normalised) text: equal keys are exact duplicates."""
    return hashlib.sha256((normalize_text(text) if normalize else text).encode("utf-8")).hexdigest()


def word_shingles(text: str, n: int = 5) -> set[str]:
    """The set of ``n``-word windows of the normalised text (the whole text when it has fewer words)."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    words = normalize_text(text).split(" ")
    if len(words) <= n:
        return {" ".join(words)} if words != [""] else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def char_shingles(text: str, k: int = 5) -> set[str]:
    """The set of ``k``-character windows of the normalised text (the whole text when shorter)."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    norm = normalize_text(text)
    if len(norm) <= k:
        return {norm} if norm else set()
    return {norm[i : i + k] for i in range(len(norm) - k + 1)}


def shingles(text: str, unit: str = "word", n: int = 5) -> set[str]:
    if unit == "word":
        return word_shingles(text, n)
    if unit == "char":
        return char_shingles(text, n)
    raise ValueError(f"unit={unit!r} must be 'word' or 'char'")


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard similarity of two shingle sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
