"""docs/scaling-out.md's support table says what the code declares (supported_strategies,
acts_before_sharding) for every technique of the seven built-in families."""

from pathlib import Path

from cases import family_techniques

PAGE = Path(__file__).resolve().parents[2] / "docs" / "scaling-out.md"
COLUMNS = ("single_device", "ddp", "fsdp2")


def table_rows() -> dict[str, list[str]]:
    rows = {}
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 6:
            rows[cells[0].strip("`")] = cells[1:5]
    return rows


def test_table_matches_the_declarations():
    rows = table_rows()
    techniques = family_techniques()
    assert set(rows) == set(techniques), f"table vs registered: {set(rows) ^ set(techniques)}"
    for name, cls in techniques.items():
        expected = ["yes" if kind in cls.supported_strategies else "no" for kind in COLUMNS]
        expected.append("yes" if cls.acts_before_sharding else "no")
        assert rows[name] == expected, f"{name}: table says {rows[name]}, code declares {expected}"
