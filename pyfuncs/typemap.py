"""Python type hints <-> PostgreSQL types.

`sql_type(hint)` describes how a parameter or return value crosses into PostgreSQL: the SQL
type in the signature, the converter the in-database runtime applies to values PL/Python hands
over as text (dates, times, UUIDs), and whether NULL is allowed. `Annotated[T, "sqltype"]`
overrides the SQL type (`Annotated[int, "integer"]`).
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import types
import typing
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, Union, get_args, get_origin, is_typeddict

_SCALARS: dict[Any, tuple[str, str | None]] = {
    bool: ("boolean", None),
    int: ("bigint", None),
    float: ("double precision", None),
    decimal.Decimal: ("numeric", None),
    str: ("text", None),
    bytes: ("bytea", None),
    datetime.datetime: ("timestamp with time zone", "datetime"),
    datetime.date: ("date", "date"),
    datetime.time: ("time without time zone", "time"),
    uuid.UUID: ("uuid", "uuid"),
}

# Annotated overrides: the SQL types a hinted Python type may be declared as.
_OVERRIDES: dict[Any, frozenset[str]] = {
    int: frozenset({"smallint", "integer", "bigint", "numeric"}),
    float: frozenset({"real", "double precision", "numeric"}),
    str: frozenset({"text", "character varying", "citext", "name"}),
    datetime.datetime: frozenset({"timestamp with time zone", "timestamp without time zone"}),
    decimal.Decimal: frozenset({"numeric"}),
}


class UnsupportedType(TypeError):
    """The hint has no PostgreSQL mapping; the message says which hints are supported."""


@dataclass(frozen=True)
class SqlType:
    sql: str
    python: Any
    convert: str | None = None
    nullable: bool = False

    def with_nullable(self) -> SqlType:
        return dataclasses.replace(self, nullable=True)


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        members = [a for a in get_args(hint) if a is not type(None)]
        if len(members) == 1 and len(get_args(hint)) == 2:
            return members[0], True
        raise UnsupportedType(f"union {hint!r} has no PostgreSQL type; only `T | None` is allowed")
    return hint, False


def is_json(hint: Any) -> bool:
    return hint in (dict, list, Any) or get_origin(hint) is dict


def sql_type(hint: Any) -> SqlType:
    """The SQL type for a parameter or scalar return hint."""
    hint, nullable = _unwrap_optional(hint)
    result = _sql_type(hint)
    return result.with_nullable() if nullable else result


def _sql_type(hint: Any) -> SqlType:
    if get_origin(hint) is Annotated:
        base, *meta = get_args(hint)
        override = next((m for m in meta if isinstance(m, str)), None)
        inner = _sql_type(base)
        if override is None:
            return inner
        allowed = _OVERRIDES.get(base, frozenset({inner.sql}))
        if override not in allowed:
            raise UnsupportedType(
                f"Annotated[{getattr(base, '__name__', base)}, {override!r}]: "
                f"choose one of {sorted(allowed)}"
            )
        return dataclasses.replace(inner, sql=override)
    if hint in _SCALARS:
        sql, convert = _SCALARS[hint]
        return SqlType(sql, hint, convert)
    if is_json(hint):
        return SqlType("jsonb", hint)
    if get_origin(hint) is list:
        (item,) = get_args(hint) or (Any,)
        inner = sql_type(item)
        if inner.sql.endswith("[]"):
            return SqlType(inner.sql, hint, inner.convert)  # nested lists: one multi-dim array
        return SqlType(inner.sql + "[]", hint, inner.convert and "list:" + inner.convert)
    raise UnsupportedType(
        f"{hint!r} has no PostgreSQL type; use int, float, Decimal, str, bool, bytes, datetime, "
        "date, time, UUID, dict/list (jsonb), list[T] (array), T | None, or Annotated[T, 'sqltype']"
    )


# --- row types --------------------------------------------------------------------------


def is_row_type(hint: Any) -> bool:
    return isinstance(hint, type) and (
        dataclasses.is_dataclass(hint)
        or is_typeddict(hint)
        or (issubclass(hint, tuple) and hasattr(hint, "_fields"))
    )


def row_fields(cls: type) -> list[tuple[str, SqlType]]:
    """The columns of a TypedDict, dataclass or NamedTuple, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls)]
    elif is_typeddict(cls):
        names = list(hints)
    else:
        names = list(typing.cast(type[NamedTuple], cls)._fields)
    if not names:
        raise UnsupportedType(f"row type {cls.__name__} has no fields")
    return [(name, sql_type(hints[name])) for name in names]


@dataclass(frozen=True)
class ReturnShape:
    """What a routine returns: nothing, a scalar, one row, or a set of either."""

    kind: typing.Literal["void", "scalar", "row"]
    setof: bool
    scalar: SqlType | None = None
    row_type: type | None = None
    columns: tuple[tuple[str, SqlType], ...] = ()
    nullable: bool = False


def return_shape(hint: Any) -> ReturnShape:
    if hint is None or hint is type(None):
        return ReturnShape("void", False)
    hint, nullable = _unwrap_optional(hint)
    origin = get_origin(hint)
    setof = origin in (Iterator, Iterable, typing.Generator, list) or hint in (Iterator, Iterable)
    if setof and origin is list:
        (item,) = get_args(hint) or (Any,)
        # list[scalar] is an array value; list[Row] is a set of rows
        setof = is_row_type(item)
    if setof:
        args = get_args(hint)
        if not args:
            raise UnsupportedType(f"{hint!r}: say what it yields, e.g. Iterator[MyRow]")
        item = args[0]
    else:
        item = hint
    if is_row_type(item):
        columns = tuple(row_fields(item))
        return ReturnShape("row", setof, row_type=item, columns=columns, nullable=nullable)
    scalar = sql_type(item)
    return ReturnShape("scalar", setof, scalar=scalar.with_nullable() if nullable else scalar,
                       nullable=nullable)  # fmt: skip
