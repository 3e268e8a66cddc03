"""Values crossing between PostgreSQL and routine code: arguments PL/Python hands over as
text, and query parameters and their SQL types (results: see results.py)."""

from __future__ import annotations

from _collections_abc import Mapping

from .imported import imported
from .results import MAX_DEPTH

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# PL/Python hands these types over as their text form; everything else (numbers, bool, bytea,
# arrays, jsonb through the transform) already arrives as the natural Python value.

# (imported when a routine or a query result first needs them, not in every backend's boot)
_PARSERS: dict[str, tuple[str, str, str | None]] = {
    "datetime": ("datetime", "datetime", "fromisoformat"),
    "date": ("datetime", "date", "fromisoformat"),
    "time": ("datetime", "time", "fromisoformat"),
    "uuid": ("uuid", "UUID", None),
}

# type OID -> parser, for values in query results
OID_PARSERS: dict[int, str] = {
    1114: "datetime", 1184: "datetime", 1082: "date", 1083: "time", 2950: "uuid",
    1115: "list:datetime", 1185: "list:datetime", 1182: "list:date", 1183: "list:time",
    2951: "list:uuid",
}  # fmt: skip


def converter(kind: str | None) -> Callable[[Any], Any] | None:
    if not kind:
        return None
    if kind.startswith("list:"):
        inner = converter(kind[5:])
        assert inner is not None

        def convert_list(value: Any) -> Any:
            if value is None:
                return None
            return [convert_list(v) if isinstance(v, list) else _none_or(inner, v) for v in value]

        return convert_list
    module, name, method = _PARSERS[kind]
    parse = getattr(__import__(module), name)
    if method is not None:
        parse = getattr(parse, method)
    return lambda value: _none_or(parse, value)


def _none_or(fn: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else fn(value)


# The SQL types parameters are declared as, qualified: a query of a routine's binds its
# parameters to PostgreSQL's own types, never to a type of the same name that the search
# path (where pg_temp comes first for types) would find before them.
TEXT, BOOL, INT8, FLOAT8, NUMERIC, BYTEA, JSONB = (
    f"pg_catalog.{name}" for name in ("text", "bool", "int8", "float8", "numeric", "bytea", "jsonb")
)
# Decimal joins them once decimal has been imported (before, no value can be one): see
# simple_types
SIMPLE_TYPES: dict[type, str] = {
    type(None): TEXT, bool: BOOL, int: INT8, float: FLOAT8, str: TEXT, bytes: BYTEA,
}  # fmt: skip


def simple_types() -> dict[type, str]:
    """The types of parameters PL/Python sends as they are: SIMPLE_TYPES, Decimal among
    them once a Decimal can exist."""
    if len(SIMPLE_TYPES) == 6:
        decimal = imported("decimal")
        if decimal is not None:
            SIMPLE_TYPES[decimal.Decimal] = NUMERIC
    return SIMPLE_TYPES


# PL/Python converts a query's parameters inside plpy.execute, after it began the query's
# subtransaction: a value's own methods it calls there (`str()` of an int subclass, the
# items of a sequence or mapping in jsonb) would run a routine's code inside the query. A
# red team's opened a savepoint there, which PL/Python then released as the query's
# subtransaction: the session was left restricted for good, a shared buffer pinned after
# it ended, the cluster crashed. So what is sent is made of exact built-in values, read
# without the routine's methods (C's own), before the query begins.
def adapt_param(value: Any) -> tuple[str, Any]:
    """The SQL type to declare for a query parameter, and the value PL/Python can send:
    of exact built-in types, all the way down."""
    if value is None:
        return TEXT, None
    if isinstance(value, bool):  # (bool has no subclasses)
        return BOOL, value
    if isinstance(value, int):
        return INT8, int.__int__(value)
    if isinstance(value, float):
        return FLOAT8, float.__float__(value)
    # a value of these modules' types exists only once they were imported
    decimal, datetime, uuid = imported("decimal"), imported("datetime"), imported("uuid")
    if decimal is not None and isinstance(value, decimal.Decimal):
        return NUMERIC, value if type(value) is decimal.Decimal else decimal.Decimal(value)
    if isinstance(value, str):
        return TEXT, str.__str__(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return BYTEA, bytes(memoryview(value))
    if datetime is not None:
        if isinstance(value, datetime.datetime):
            aware = datetime.datetime.utcoffset(value) is not None
            kind = "timestamptz" if aware else "timestamp"
            return f"pg_catalog.{kind}", str.__str__(datetime.datetime.isoformat(value))
        if isinstance(value, datetime.date):
            return "pg_catalog.date", str.__str__(datetime.date.isoformat(value))
        if isinstance(value, datetime.time):
            return "pg_catalog.time", str.__str__(datetime.time.isoformat(value))
    if uuid is not None and isinstance(value, uuid.UUID):
        return "pg_catalog.uuid", str.__str__(str(value))
    if isinstance(value, Mapping):
        return JSONB, _json(value, 0)
    if isinstance(value, list | tuple):
        items = [v for v in value if v is not None]
        if not items:  # like None, an empty list says nothing of its type: cast the placeholder
            return TEXT + "[]", [None] * len(value)
        if all(not isinstance(v, Mapping | list | tuple) for v in items):
            sqltype, _ = adapt_param(items[0])
            return sqltype + "[]", [adapt_param(v)[1] for v in value]
        return JSONB, _json(value, 0)
    raise TypeError(
        f"db: cannot pass a {type(value).__name__} as a query parameter; "
        "use int, float, Decimal, str, bool, bytes, datetime, date, time, UUID, dict or list"
    )


def _json(value: Any, depth: int) -> Any:
    """`value` (in a jsonb parameter) of exact built-in types: objects of str keys, arrays,
    strings, numbers, booleans and nulls."""
    if value is None or type(value) is bool:
        return value
    if depth > MAX_DEPTH:
        raise ValueError(f"db: a jsonb parameter nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        items = dict.items(value) if isinstance(value, dict) else dict(value).items()
        made = {}
        for key, item in items:
            if not isinstance(key, str):
                raise TypeError(f"db: a jsonb parameter's keys are str, not {type(key).__name__}")
            made[str.__str__(key)] = _json(item, depth + 1)
        return made
    if isinstance(value, list | tuple):
        return [_json(item, depth + 1) for item in value]
    if isinstance(value, int | float | str):
        return adapt_param(value)[1]
    decimal = imported("decimal")
    if decimal is not None and isinstance(value, decimal.Decimal):
        return adapt_param(value)[1]
    raise TypeError(
        f"db: a jsonb parameter holds no {type(value).__name__}; "
        "use dict, list, str, int, float, Decimal, bool or None"
    )
