from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, NamedTuple, Optional, TypedDict

import pytest

from pyfuncs import typemap
from pyfuncs.typemap import ReturnShape, SqlType, UnsupportedType


def sql_type(hint: Any) -> SqlType:
    return typemap.sql_type(typemap.describe(hint, lambda t: typemap.evaluate(t, globals())))


def return_shape(hint: Any) -> ReturnShape:
    return typemap.return_shape(typemap.describe(hint, lambda t: typemap.evaluate(t, globals())))


@pytest.mark.parametrize(
    ("hint", "sql", "convert", "nullable"),
    [
        (int, "bigint", None, False),
        (float, "double precision", None, False),
        (Decimal, "numeric", None, False),
        (str, "text", None, False),
        (bool, "boolean", None, False),
        (bytes, "bytea", None, False),
        (datetime.datetime, "timestamp with time zone", "datetime", False),
        (datetime.date, "date", "date", False),
        (datetime.time, "time without time zone", "time", False),
        (uuid.UUID, "uuid", "uuid", False),
        (dict, "jsonb", None, False),
        (dict[str, Any], "jsonb", None, False),
        (list, "jsonb", None, False),
        (list[int], "bigint[]", None, False),
        (list[datetime.date], "date[]", "list:date", False),
        (list[list[uuid.UUID]], "uuid[]", "list:uuid", False),
        (int | None, "bigint", None, True),
        (Optional[str], "text", None, True),  # noqa: UP045 - the spelling under test
        (Annotated[int, "integer"], "integer", None, False),
        (
            Annotated[datetime.datetime, "timestamp without time zone"],
            "timestamp without time zone",
            "datetime",
            False,
        ),
    ],
)
def test_sql_types(hint: Any, sql: str, convert: str | None, nullable: bool) -> None:
    t = sql_type(hint)
    assert (t.sql, t.convert, t.nullable) == (sql, convert, nullable)


@pytest.mark.parametrize("hint", [set[int], int | str, complex, Annotated[int, "text"], object])
def test_unsupported_types_say_what_is_supported(hint: Any) -> None:
    with pytest.raises(UnsupportedType):
        sql_type(hint)


@dataclass
class DC:
    a: int
    b: datetime.date | None


class NT(NamedTuple):
    x: str


class TD(TypedDict):
    y: float


def test_return_shapes() -> None:
    assert return_shape(None).kind == "void"
    assert return_shape(int).kind == "scalar" and not return_shape(int).setof
    assert return_shape(Iterator[int]).setof
    assert return_shape(list[int]).scalar is not None and not return_shape(list[int]).setof
    shape = return_shape(DC)
    assert shape.kind == "row" and [(n, t.sql) for n, t in shape.columns] == [
        ("a", "bigint"),
        ("b", "date"),
    ]
    assert return_shape(list[NT]).setof and return_shape(list[NT]).row_name == "NT"
    assert return_shape(Iterator[TD]).columns[0][0] == "y"
    assert return_shape(DC | None).nullable


def test_type_names_come_from_the_vocabulary_never_from_the_hint() -> None:
    """A str that claims to equal every type name is still not one: descriptions carry its
    characters, and the mapping compares exact strings and returns its own."""

    def evil() -> type:  # typing caches Annotated[] by equality: a class for each use
        return type("S", (str,), {"__eq__": lambda a, b: True, "__hash__": lambda a: id(a)})

    with pytest.raises(UnsupportedType, match="choose one of"):
        sql_type(Annotated[int, evil()("integer); DROP TABLE t; --")])
    chosen = sql_type(Annotated[int, evil()("integer")]).sql
    assert type(chosen) is str and chosen == "integer"
    assert all(type(t) is str for t in typemap.SQL_TYPES)
