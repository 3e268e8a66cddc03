from __future__ import annotations

import datetime
import textwrap
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from pyfuncs import DefinitionError, procedure, stored_function
from pyfuncs.definition import definition_of, routine_source


class Row(NamedTuple):
    total: int


@stored_function(schema="api", roles=["manager"], volatility="stable")
def leaderboard(top: int = 10, since: datetime.date | None = None) -> Iterator[Row]:
    """Docs."""
    yield Row(top)


@procedure(schema="api")
def enroll(student: str, course: int) -> None:
    return None


def test_decorators_keep_the_function_callable() -> None:
    assert list(leaderboard(3)) == [Row(3)]
    assert enroll("a", 1) is None


def test_definition_describes_the_routine() -> None:
    d = definition_of(leaderboard)
    assert d.qualname == "api.leaderboard"
    assert d.identity_args == "bigint, date"
    assert d.doc == "Docs."
    assert d.where.endswith("test_definition.py:18")  # the decorator line
    assert d.spec()["converters"] == ["date"]
    assert d.signature()["returns"]["columns"] == [["total", "bigint"]]
    assert definition_of(enroll).kind == "procedure" and definition_of(enroll).out_columns == ()


def test_undecorated_functions_are_refused() -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(DefinitionError, match="is not a routine"):
        definition_of(plain)


def test_routine_source_blanks_other_routines_but_keeps_line_numbers() -> None:
    source = textwrap.dedent("""\
        import x

        def helper():
            return 1

        @stored_function
        def a():
            return helper()

        @stored_function
        def b():
            return a()

        @stored_function
        def c():
            return 3
    """)
    only_a = routine_source(source, "a", {"a", "b", "c"})
    assert only_a.count("\n") == source.count("\n")
    assert "def a" in only_a and "def helper" in only_a
    assert "def b" not in only_a and "def c" not in only_a
    only_b = routine_source(source, "b", {"a", "b", "c"})
    assert "def a" in only_b  # b calls a, so a stays
    assert "def c" not in only_b
