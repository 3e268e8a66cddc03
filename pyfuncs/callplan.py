"""Turning `call(routine, *args, **kwargs)` into one SQL statement, and its rows into results.

I/O-free, shared by the sync and async clients and the SQLAlchemy helper. Arguments are bound
to parameter names and checked before anything is sent: an unknown name, a missing required
argument or a value of the wrong type is an ArgumentError naming the parameter.
"""

from __future__ import annotations

import datetime
import decimal
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from .ddl import routine_ident
from .definition import definition_of, options_of
from .errors import ArgumentError
from .typemap import SQL_TYPES, is_row_type

# SQL type -> the Python types a client may pass for it (bool is never an int here).
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "boolean": (bool,),
    "smallint": (int,), "integer": (int,), "bigint": (int,),
    "real": (int, float), "double precision": (int, float),
    "numeric": (int, decimal.Decimal),
    "text": (str,), "character varying": (str,), "citext": (str,), "name": (str,),
    "bytea": (bytes, bytearray, memoryview),
    "timestamp with time zone": (datetime.datetime,),
    "timestamp without time zone": (datetime.datetime,),
    "date": (datetime.date,),
    "time without time zone": (datetime.time,),
    "uuid": (uuid.UUID,),
}  # fmt: skip


@dataclass(frozen=True)
class ParamInfo:
    name: str
    sql: str
    nullable: bool
    has_default: bool


@dataclass(frozen=True)
class Signature:
    """What a client needs to call a routine: from its Python definition or the catalog."""

    schema: str
    name: str
    kind: str
    params: tuple[ParamInfo, ...]
    returns: Mapping[str, Any]
    out: tuple[str, ...]
    row_type: type | None = None

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.name}"

    @classmethod
    def from_json(
        cls, schema: str, name: str, sig: Mapping[str, Any], row_type: type | None = None
    ) -> Signature:
        params = tuple(
            ParamInfo(p["name"], p["type"], p["nullable"], p["has_default"]) for p in sig["params"]
        )
        for p in params:  # composed into each call's SQL: only the vocabulary's type names
            if p.sql.removesuffix("[]") not in SQL_TYPES:
                raise ArgumentError(f"{schema}.{name}: parameter {p.name!r} has the unknown "
                                    f"type {p.sql!r}; redeploy it")  # fmt: skip
        return cls(
            schema=schema,
            name=name,
            kind=sig["kind"],
            params=params,
            returns=sig["returns"],
            out=tuple(sig["out"]),
            row_type=row_type,
        )


def signature_of(routine: Callable[..., Any]) -> Signature:
    """The signature of a decorated Python function the application imported (validated
    like a deploy would), with the row class its results are built as."""
    if options_of(routine) is None:
        raise ArgumentError(f"{routine!r} is not a pyfuncs routine; pass a decorated function "
                            "or a routine name")  # fmt: skip
    d = definition_of(routine)
    return Signature.from_json(d.schema, d.name, d.signature(), _row_class(routine))


def _row_class(routine: Callable[..., Any]) -> type | None:
    """The TypedDict, dataclass or NamedTuple a routine returns (one, optional, or a set)."""
    hint = typing.get_type_hints(routine).get("return")
    while typing.get_origin(hint) in (typing.Union, types.UnionType, list, Iterator, Iterable):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if args else None
    return hint if is_row_type(hint) else None


def _accepts(sqltype: str, value: Any) -> bool:
    if sqltype.endswith("[]"):
        item = sqltype[:-2]
        return isinstance(value, list | tuple) and all(
            v is None or _accepts(sqltype if isinstance(v, list) else item, v) for v in value
        )
    if sqltype == "jsonb":
        return True
    expected = _ACCEPTS.get(sqltype)
    if expected is None:
        return True  # a type we do not know client-side: the server will check it
    if isinstance(value, bool) and bool not in expected:
        return False
    if sqltype == "date" and isinstance(value, datetime.datetime):
        return False
    return isinstance(value, expected)


def _adapt(sqltype: str, value: Any) -> Any:
    if sqltype in ("jsonb", "jsonb[]") and value is not None:
        return [Jsonb(v) for v in value] if sqltype == "jsonb[]" else Jsonb(value)
    return value


def bind(sig: Signature, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Map positional and keyword arguments to parameter names, checking each one."""
    names = [p.name for p in sig.params]
    if len(args) > len(names):
        raise ArgumentError(f"{sig.qualname} takes {len(names)} arguments, {len(args)} given")
    bound = dict(zip(names, args, strict=False))  # fewer args than names is fine
    for key, value in kwargs.items():
        if key not in names:
            raise ArgumentError(
                f"{sig.qualname} has no parameter {key!r}; its parameters are {', '.join(names) or 'none'}"
            )
        if key in bound:
            raise ArgumentError(f"{sig.qualname}: parameter {key!r} is given twice")
        bound[key] = value
    for p in sig.params:
        if p.name not in bound:
            if not p.has_default:
                raise ArgumentError(
                    f"{sig.qualname}: missing required argument {p.name!r} ({p.sql})"
                )
            continue
        value = bound[p.name]
        if value is None:
            if not p.nullable:
                raise ArgumentError(f"{sig.qualname}: parameter {p.name!r} must not be None")
        elif not _accepts(p.sql, value):
            raise ArgumentError(
                f"{sig.qualname}: parameter {p.name!r} expects {p.sql}, "
                f"got {type(value).__name__} {value!r:.60}"
            )
    return bound


@dataclass(frozen=True)
class CallPlan:
    """One statement and how to read its result."""

    statement: sql.Composed
    params: list[Any]
    read: Callable[[list[dict[str, Any]]], Any]


def plan(sig: Signature, args: Sequence[Any], kwargs: Mapping[str, Any]) -> CallPlan:
    bound = bind(sig, args, kwargs)
    types = {p.name: p.sql for p in sig.params}
    pieces = [
        sql.SQL("{} => {}::{}").format(sql.Identifier(n), sql.Placeholder(), sql.SQL(types[n]))
        for n in bound
    ]
    params = [_adapt(types[n], v) for n, v in bound.items()]
    ident = routine_ident(sig.schema, sig.name)
    returns = sig.returns
    if sig.kind == "procedure":
        pieces += [sql.SQL("{} => NULL").format(sql.Identifier(n)) for n in sig.out]
        statement = sql.SQL("CALL {}({})").format(ident, sql.SQL(", ").join(pieces))
    elif returns["kind"] == "row" or returns["setof"]:
        statement = sql.SQL("SELECT * FROM {}({})").format(ident, sql.SQL(", ").join(pieces))
    else:
        statement = sql.SQL("SELECT {}({}) AS result").format(ident, sql.SQL(", ").join(pieces))
    return CallPlan(statement, params, _reader(sig))


def _reader(sig: Signature) -> Callable[[list[dict[str, Any]]], Any]:
    returns, row_type = sig.returns, sig.row_type

    def make_row(row: dict[str, Any]) -> Any:
        return row_type(**row) if row_type is not None else row

    if sig.kind == "procedure":
        if not sig.out:
            return lambda rows: None
        if returns["kind"] == "row":
            return lambda rows: make_row(rows[0])
        return lambda rows: rows[0]["result"]
    if returns["kind"] == "void":
        return lambda rows: None
    if returns["kind"] == "row":
        if returns["setof"]:
            return lambda rows: [make_row(r) for r in rows]
        if returns.get("nullable"):
            # `-> Row | None`: a routine returning None gives a row of NULLs
            return lambda rows: (
                make_row(rows[0]) if any(v is not None for v in rows[0].values()) else None
            )
        return lambda rows: make_row(rows[0])
    if returns["setof"]:
        return lambda rows: [next(iter(r.values())) for r in rows]
    return lambda rows: rows[0]["result"]
