"""What moved between the lock (constraints.txt) and the packages installed in this interpreter.

``make upgrade-check`` runs it in a venv holding the newest versions pyproject.toml allows, then the
test suite: together they say which upgrade breaks what before ``make lock`` moves the lock.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s;#]+).*", line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def drift(lock: dict[str, str], now: dict[str, str]) -> list[tuple[str, str, str]]:
    """(package, locked, installed) for every package whose version differs or that one side lacks."""
    names = sorted((set(lock) | set(now)) - {"lightning-eff", "pip", "setuptools", "wheel"})
    return [(n, lock.get(n, "-"), now.get(n, "-")) for n in names if lock.get(n) != now.get(n, "").split("+")[0]]


def main(argv: list[str]) -> int:
    lock_path = Path(argv[0] if argv else "constraints.txt")
    rows = drift(read_lock(lock_path), installed())
    if not rows:
        print(f"no drift: the newest allowed versions are the ones in {lock_path}")
        return 0
    width = max(len(r[0]) for r in rows)
    print(f"{len(rows)} package(s) differ from {lock_path} (locked -> newest allowed):")
    for name, old, new in rows:
        print(f"  {name:<{width}}  {old} -> {new}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
