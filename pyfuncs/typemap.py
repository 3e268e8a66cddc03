"""Python type hints <-> PostgreSQL types, in two steps.

`describe(hint)` turns a hint into a plain description (JSON: dicts, lists, strings). It runs
where the routine module was executed: for `pyfuncs check` and `deploy` that is a contained
child process (pyfuncs._sandbox), so the hint objects it inspects may be hostile, and what it
says is data, not trusted. String annotations are read by `evaluate`, which knows names,
public attributes, subscripts and `|`, and nothing else.

`sql_type(description)` and `return_shape(description)` then map a description onto a fixed
vocabulary: every SQL type name that reaches DDL is one of the strings defined in this
module, chosen by lookup, never one a module supplied. `Annotated[T, "sqltype"]` overrides
the SQL type from a per-type list (`Annotated[int, "integer"]`).
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import decimal
import functools
import sys
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ForwardRef, Union, get_args, get_origin, is_typeddict

Description = dict[str, Any]
Resolve = Callable[[str], Any]

# Python type -> its name in descriptions
_PYTHON: tuple[tuple[Any, str], ...] = (
    (bool, "bool"), (int, "int"), (float, "float"), (decimal.Decimal, "Decimal"), (str, "str"),
    (bytes, "bytes"), (datetime.datetime, "datetime"), (datetime.date, "date"),
    (datetime.time, "time"), (uuid.UUID, "UUID"),
)  # fmt: skip

# name in descriptions -> SQL type, and the converter the runtime applies to the text
# PL/Python hands over for it
_SCALARS: dict[str, tuple[str, str | None]] = {
    "bool": ("boolean", None),
    "int": ("bigint", None),
    "float": ("double precision", None),
    "Decimal": ("numeric", None),
    "str": ("text", None),
    "bytes": ("bytea", None),
    "datetime": ("timestamp with time zone", "datetime"),
    "date": ("date", "date"),
    "time": ("time without time zone", "time"),
    "UUID": ("uuid", "uuid"),
}

# Annotated overrides: the SQL types each hinted Python type may be declared as
_OVERRIDES: dict[str, tuple[str, ...]] = {
    "int": ("smallint", "integer", "bigint", "numeric"),
    "float": ("real", "double precision", "numeric"),
    "str": ("text", "character varying", "citext", "name"),
    "datetime": ("timestamp with time zone", "timestamp without time zone"),
    "Decimal": ("numeric",),
}

# every SQL type name pyfuncs writes, as its own constants (arrays are these plus "[]")
SQL_TYPES: frozenset[str] = frozenset(
    {sql for sql, _ in _SCALARS.values()}
    | {sql for names in _OVERRIDES.values() for sql in names}
    | {"jsonb"}
)

_SUPPORTED = (
    "use int, float, Decimal, str, bool, bytes, datetime, date, time, UUID, dict/list "
    "(jsonb), list[T] (array), T | None, or Annotated[T, 'sqltype']"
)
_DEPTH = 8  # how deeply hints may nest


class UnsupportedType(TypeError):
    """The hint has no PostgreSQL mapping; the message says which hints are supported."""


# --- describing hints (where the module runs) -----------------------------------------------


def evaluate(text: str, namespace: Mapping[str, Any]) -> Any:
    """The value of a string annotation in `namespace`: names (then the namespace's
    builtins), public attributes, subscripts, `|`, and literals, nothing else. What a type
    expression needs, and nothing a policy check would have to look at."""
    tree = ast.parse(text.strip(), mode="eval")
    builtins = namespace.get("__builtins__", {})
    builtins = builtins if isinstance(builtins, dict) else vars(builtins)

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            if node.id in namespace:
                return namespace[node.id]
            if node.id in builtins and not node.id.startswith("_"):
                return builtins[node.id]
            raise UnsupportedType(f"unknown name {node.id!r} in the annotation {text!r}")
        if isinstance(node, ast.Attribute) and not node.attr.startswith("_"):
            return getattr(value(node.value), node.attr)
        if isinstance(node, ast.Subscript):
            return value(node.value)[value(node.slice)]
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return value(node.left) | value(node.right)
        if isinstance(node, ast.Constant) and (node.value is None or type(node.value) is str):
            return node.value
        raise UnsupportedType(f"the annotation {text!r} is not a plain type expression")

    return value(tree.body)


def _text(hint: Any) -> str:
    try:
        return repr(hint)[:120]
    except Exception:
        return "an unprintable hint"


def _unsupported(hint: Any) -> Description:
    return {"kind": "unsupported", "text": _text(hint)}


def is_row_type(hint: Any) -> bool:
    return isinstance(hint, type) and (
        dataclasses.is_dataclass(hint)
        or is_typeddict(hint)
        or (issubclass(hint, tuple) and hasattr(hint, "_fields"))
    )


def row_hints(cls: type) -> list[tuple[str, Any]]:
    """The fields of a TypedDict, dataclass or NamedTuple and their (unevaluated) hints."""
    annotations = dict(getattr(cls, "__annotations__", {}))
    if dataclasses.is_dataclass(cls):
        return [(f.name, f.type) for f in dataclasses.fields(cls)]
    if is_typeddict(cls):
        return list(annotations.items())
    return [(name, annotations.get(name, Any)) for name in cls._fields]  # type: ignore[attr-defined]


def describe(hint: Any, resolve: Resolve, depth: int = 0) -> Description:
    """A hint as a plain description (see the module docstring); never raises for a hint
    it cannot map, it says so."""
    if depth > _DEPTH:
        return {"kind": "unsupported", "text": "a hint nested too deeply"}
    if isinstance(hint, ForwardRef):
        hint = hint.__forward_arg__
    for _ in range(_DEPTH):  # "'Row'": a quoted annotation in a module whose are strings
        if type(hint) is not str:
            break
        hint = resolve(hint)
    if hint is None or hint is type(None):
        return {"kind": "none"}

    def inner(h: Any) -> Description:
        return describe(h, resolve, depth + 1)

    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        override = next((m for m in args[1:] if isinstance(m, str)), None)
        return {"kind": "annotated", "of": inner(args[0]),
                "sql": None if override is None else str.__str__(override)}  # fmt: skip
    if origin is Union or origin is types.UnionType:
        members = [a for a in args if a is not type(None)]
        if len(members) == 1 and len(args) == 2:
            return {"kind": "optional", "of": inner(members[0])}
        return {"kind": "union", "text": _text(hint)}
    for python, name in _PYTHON:
        if hint is python:
            return {"kind": "scalar", "type": name}
    if hint is dict or hint is list or hint is Any or origin is dict:
        return {"kind": "json"}
    if origin is list:
        return {"kind": "list", "of": inner(args[0] if args else Any)}
    if origin in (Iterator, Iterable, typing.Generator) or hint in (Iterator, Iterable):
        if not args:
            return {"kind": "unsupported", "text": f"{_text(hint)}: say what it yields, "
                                                  "e.g. Iterator[MyRow]"}  # fmt: skip
        return {"kind": "iterator", "of": inner(args[0])}
    if is_row_type(hint):
        # the hints of a row type's fields are read in its own module
        module = sys.modules.get(getattr(hint, "__module__", ""))
        if module is not None:
            resolve = functools.partial(evaluate, namespace=vars(module))
        fields = [[str.__str__(name), inner(h)] for name, h in row_hints(hint)]
        return {"kind": "row", "name": str.__str__(hint.__name__), "fields": fields}
    return _unsupported(hint)


# --- mapping descriptions onto the vocabulary (trusted side) --------------------------------


@dataclass(frozen=True)
class SqlType:
    sql: str  # one of SQL_TYPES, or one of them + "[]"
    python: str  # the hinted type's name in descriptions ("int", "json", "list[date]"...)
    convert: str | None = None
    nullable: bool = False

    @property
    def is_json(self) -> bool:
        return self.sql == "jsonb"

    def with_nullable(self) -> SqlType:
        return dataclasses.replace(self, nullable=True)


def _kind(d: Any) -> str:
    if not isinstance(d, dict) or type(d.get("kind")) is not str:
        raise UnsupportedType("an unreadable type description")
    return str(d["kind"])


def _said(d: Description) -> str:
    text = d.get("text")
    return text if type(text) is str else "this hint"


def sql_type(d: Any, depth: int = 0) -> SqlType:
    """The SQL type for a parameter or scalar return description."""
    if depth > _DEPTH:  # descriptions come from the child: never trust them to be shallow
        raise UnsupportedType("a hint nested too deeply")
    if _kind(d) == "optional":
        return _sql_type(d["of"], depth + 1).with_nullable()
    return _sql_type(d, depth)


def _sql_type(d: Any, depth: int = 0) -> SqlType:
    kind = _kind(d)
    if depth > _DEPTH:
        raise UnsupportedType("a hint nested too deeply")
    if kind == "annotated":
        inner = _sql_type(d.get("of"), depth + 1)
        override = d.get("sql")
        if override is None:
            return inner
        allowed = _OVERRIDES.get(inner.python, (inner.sql,))
        # the vocabulary's own string, found by comparing exact strs: never the module's
        chosen = next((a for a in allowed if type(override) is str and a == override), None)
        if chosen is None:
            raise UnsupportedType(
                f"Annotated[{inner.python}, {override!r}]: choose one of {sorted(allowed)}"
            )
        return dataclasses.replace(inner, sql=chosen)
    if kind == "scalar" and type(d.get("type")) is str and d["type"] in _SCALARS:
        sql, convert = _SCALARS[d["type"]]
        return SqlType(sql, d["type"], convert)
    if kind == "json":
        return SqlType("jsonb", "json")
    if kind == "list":
        inner = sql_type(d.get("of"), depth + 1)
        if inner.sql.endswith("[]"):  # nested lists: one multi-dimensional array
            return SqlType(inner.sql, f"list[{inner.python}]", inner.convert)
        return SqlType(inner.sql + "[]", f"list[{inner.python}]",
                       inner.convert and "list:" + inner.convert)  # fmt: skip
    if kind == "unreadable":
        raise UnsupportedType(f"the type hint cannot be resolved: {_said(d)}")
    if kind == "union":
        raise UnsupportedType(
            f"union {_said(d)} has no PostgreSQL type; only `T | None` is allowed"
        )
    raise UnsupportedType(f"{_said(d)} has no PostgreSQL type; {_SUPPORTED}")


@dataclass(frozen=True)
class ReturnShape:
    """What a routine returns: nothing, a scalar, one row, or a set of either."""

    kind: typing.Literal["void", "scalar", "row"]
    setof: bool
    scalar: SqlType | None = None
    row_name: str | None = None
    columns: tuple[tuple[str, SqlType], ...] = ()
    nullable: bool = False


def row_columns(d: Description) -> tuple[tuple[str, SqlType], ...]:
    fields = d.get("fields")
    if not isinstance(fields, list) or not fields:
        raise UnsupportedType(f"row type {d.get('name')!r} has no fields")
    columns = []
    for field in fields:
        if not (isinstance(field, list) and len(field) == 2 and type(field[0]) is str):
            raise UnsupportedType("an unreadable row type description")
        try:
            columns.append((field[0], sql_type(field[1])))
        except UnsupportedType as exc:
            raise UnsupportedType(f"field {field[0]!r} of {d.get('name')}: {exc}") from None
    return tuple(columns)


def return_shape(d: Any) -> ReturnShape:
    kind = _kind(d)
    if kind == "none":
        return ReturnShape("void", False)
    nullable = kind == "optional"
    if nullable:
        d = d["of"]
    setof = False
    # Iterator[T] is a set of T, list[Row] a set of rows (and list[scalar] an array)
    if _kind(d) == "iterator" or (_kind(d) == "list" and _kind(d.get("of")) == "row"):
        setof, d = True, d["of"]
    if _kind(d) == "row":
        name = d.get("name")
        return ReturnShape("row", setof, row_name=name if type(name) is str else None,
                           columns=row_columns(d), nullable=nullable)  # fmt: skip
    scalar = sql_type(d)
    return ReturnShape("scalar", setof, scalar=scalar.with_nullable() if nullable else scalar,
                       nullable=nullable)  # fmt: skip
