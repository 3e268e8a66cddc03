"""What a routine hands to PostgreSQL, made plain while its call is still under way.

PL/Python turns a function's result into a datum after the function has returned: it calls
`str()`, `bool()`, `bytes()`, iterates, takes lengths, reads items and attributes. For an
object of a class the routine defined, each of those runs the routine's own code, where no
call is under way any more: a `__str__` that loops there could only be ended by SIGKILL.
So every result is made plain first, inside the call: values of exact built-in types,
which PL/Python converts without running any Python.

* `None`, `bool`, `int`, `float`, `str`, `bytes`, `Decimal`, `date`, `timedelta`, `UUID`,
  and `datetime`/`time` with no time zone or a built-in one, are kept as they are.
* `list`, `tuple` and `dict` are rebuilt from plain items (a dict's keys too).
* Rows: a dataclass instance becomes a dict of its fields; a NamedTuple a dict of its
  fields where it is the result or a row (so a single column can be read by name), a tuple
  inside other values. Another Mapping becomes a dict; a deque or range a list.
* A subclass of a built-in type becomes its base value, read without its own methods (a
  `str` subclass's text, an IntEnum member's int), so its size is counted as what it is.
* A `datetime` or `time` whose tzinfo is the routine's own keeps its UTC offset, as a
  built-in time zone.
* Anything else (a set, a generator, an object of the routine's own class) is refused with
  a TypeError saying what to return instead; so is data nested deeper than MAX_DEPTH, or
  data that contains itself.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import uuid
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any

from . import lazy
from .bounded import OperationTooLarge

MAX_DEPTH = 200  # PostgreSQL's arrays have at most 6 dimensions; JSON this deep is rare

# kept as they are: PL/Python converts them without running Python of the routine's
INERT: frozenset[type] = frozenset({
    type(None), bool, int, float, str, bytes, decimal.Decimal, datetime.date,
    datetime.timedelta, uuid.UUID,
})  # fmt: skip
_ZONES: frozenset[type] = frozenset({datetime.timezone, zoneinfo.ZoneInfo})
_TIMES = (datetime.datetime, datetime.time)


class ResultTooDeep(OperationTooLarge):
    """A result nested deeper than a routine may return (or containing itself)."""


def plain(value: Any, row: bool = True) -> Any:
    """`value` as values of exact built-in types (see the module's docstring). `row`: it is
    a function's result or one row of a set-returning function's."""
    if type(value) in INERT:
        return value
    return _plain(value, 0, row)


def _plain(value: Any, depth: int, row: bool) -> Any:
    kind = type(value)
    if kind in INERT:
        return value
    if depth >= MAX_DEPTH:
        raise ResultTooDeep(
            f"the result is nested deeper than {MAX_DEPTH} levels, or contains itself"
        )
    inner = depth + 1
    if kind is list or kind is tuple:
        if set(map(type, value)) <= INERT:
            return list(value) if kind is list else value
        items = [_plain(item, inner, False) for item in value]
        return items if kind is list else tuple(items)
    if kind is dict:
        return {_plain(k, inner, False): _plain(v, inner, False) for k, v in value.items()}
    if kind in _TIMES:
        return _moment(value, kind)
    if kind is bytearray:
        return bytearray(value)
    return _other(value, kind, inner, row)


def _other(value: Any, kind: type, depth: int, row: bool) -> Any:
    """Everything that is not of an exact built-in type (rarer: a function of its own)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), depth, False)
                for f in dataclasses.fields(value)}  # fmt: skip
    if isinstance(value, tuple):
        items = [_plain(item, depth, False) for item in tuple.__iter__(value)]
        fields = getattr(kind, "_fields", None)
        if (  # a NamedTuple row
            row and type(fields) is tuple and len(fields) == len(items)
            and all(type(name) is str for name in fields)
        ):  # fmt: skip
            return dict(zip(fields, items, strict=True))
        return tuple(items)
    for base, copy in _BASES:
        if isinstance(value, base):
            return _plain(copy(value), depth - 1, row)
    if isinstance(value, list):
        return [_plain(item, depth, False) for item in list.__iter__(value)]
    if isinstance(value, dict):
        return {_plain(k, depth, False): _plain(v, depth, False) for k, v in dict.items(value)}
    if isinstance(value, Mapping):
        return {_plain(k, depth, False): _plain(v, depth, False) for k, v in value.items()}
    if isinstance(value, (range, lazy.range, collections.deque)):
        return [_plain(item, depth, False) for item in value]
    what = "a set" if isinstance(value, (set, frozenset)) else f"a {kind.__name__}"
    if isinstance(value, Sequence) or hasattr(value, "__next__"):
        what += " (declare the routine as returning Iterator[...] for rows, or return a list)"
    raise TypeError(
        f"pyfuncs: a routine cannot return {what}: return None, bool, int, float, str, bytes, "
        "Decimal, a date or time, UUID, list, tuple, dict, or a dataclass or NamedTuple row"
    )


def _moment(value: Any, kind: type) -> Any:
    """A datetime or time whose time zone converts without the routine's code."""
    zone = value.tzinfo
    if zone is None or type(zone) in _ZONES:
        return value
    offset = value.utcoffset()  # the routine's tzinfo, asked now, inside the call
    return value.replace(tzinfo=None if offset is None else datetime.timezone(offset))


def _copy_moment(value: Any) -> Any:
    made: datetime.datetime | datetime.time
    if isinstance(value, datetime.datetime):
        made = datetime.datetime(value.year, value.month, value.day, value.hour, value.minute,
                                 value.second, value.microsecond, value.tzinfo, fold=value.fold)  # fmt: skip
    elif isinstance(value, datetime.time):
        made = datetime.time(value.hour, value.minute, value.second, value.microsecond,
                             value.tzinfo, fold=value.fold)  # fmt: skip
    else:
        return datetime.date(value.year, value.month, value.day)
    return _moment(made, type(made))


# subclasses of built-in types, and their base values read without the subclass's methods
_BASES: tuple[tuple[type, Any], ...] = (
    (str, str.__str__), (bytes, bytes.__bytes__), (int, int.__index__),
    (float, float.__float__), (bytearray, bytearray.copy), (decimal.Decimal, decimal.Decimal),
    (datetime.date, _copy_moment), (datetime.time, _copy_moment),
    (datetime.timedelta, lambda v: datetime.timedelta(v.days, v.seconds, v.microseconds)),
    (uuid.UUID, lambda v: uuid.UUID(int=v.int)),
)  # fmt: skip


def size(value: Any) -> int:
    """About the bytes a plain value takes in PostgreSQL: text and bytea by their length,
    rows, arrays and json by their items, any other scalar by 8."""
    kind = type(value)
    if kind is str:
        return len(value) if value.isascii() else len(value.encode())
    if kind is bytes or kind is bytearray:
        return len(value)
    if kind is dict:
        return sum(size(k) + size(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return sum(map(size, value))
    if value is None:
        return 0
    if kind is decimal.Decimal:
        return len(str(value))
    return 8
