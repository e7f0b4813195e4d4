"""`lightning-eff info` option tables: ranges as a reader writes them, columns aligned."""

from typing import Annotated, Literal

import annotated_types
import pytest
from pydantic import Field

from lightning_eff import Technique, TechniqueConfig
from lightning_eff.docs import option_rows, option_table, range_text


@pytest.mark.parametrize(
    ("metadata", "text"),
    [
        ([annotated_types.Ge(0.0), annotated_types.Lt(1.0)], "0 <= x < 1"),
        ([annotated_types.Gt(0.0)], "x > 0"),
        ([annotated_types.Ge(0), annotated_types.Ge(0), annotated_types.Le(2**63 - 1)], "0 <= x <= 2**63-1"),
        ([annotated_types.Ge(0), annotated_types.Gt(0)], "x > 0"),  # the tighter of two bounds
        ([annotated_types.Le(5), annotated_types.Lt(3)], "x < 3"),
        ([annotated_types.Interval(gt=1, le=4)], "1 < x <= 4"),
        ([annotated_types.MinLen(1)], "len >= 1"),
        ([], ""),
    ],
)
def test_ranges_read_as_inequalities(metadata, text):
    assert range_text(metadata) == text


class TableConfig(TechniqueConfig):
    fraction: float = Field(0.5, ge=0.0, lt=1.0, description="a fraction")
    a_much_longer_option_name: Annotated[int, Field(ge=1)] = Field(3, description="a count")
    mode: Literal["fast", "exact"] = Field("fast", description="how")


class Table(Technique):
    """For the option table."""

    name = "table"
    Config = TableConfig


def test_option_table_columns_are_aligned_under_a_header():
    lines = option_table(Table).splitlines()
    assert lines[0].split() == ["option", "type", "default", "range", "description"]
    assert "0 <= x < 1" in lines[1] and "Ge(" not in "".join(lines)
    assert "'fast' | 'exact'" in lines[3]
    # every cell starts at its column's offset in the header, after a two-space gap
    rows = option_rows(Table)
    for key, title in (("type", "type"), ("default", "default"), ("limits", "range"), ("description", "description")):
        column = lines[0].index(title)
        for line, row in zip(lines[1:], rows):
            assert line[column - 2 : column] == "  " and line[column:].startswith(row[key]), (title, line)
