"""A routine that tries to change what other calls in the same backend run, by every route
it has, and routines that check nothing changed."""

from __future__ import annotations

import calendar
import collections
import collections.abc
import dataclasses
import datetime
import decimal
import itertools
import json
import math
import random
import struct
import typing
import uuid
import zoneinfo
from decimal import Decimal

from pyfuncs import RaiseError, Rows, db, stored_function


def _json_dumps() -> None:
    json.dumps = lambda *args, **kwargs: "pwned"


def _json_class() -> None:
    json.JSONEncoder.item_separator = ";"


def _setattr_view() -> None:
    json.loads = len


def _db_handle() -> None:
    db.execute = lambda *args: "pwned"


def _db_class() -> None:
    type(db).fetchval = lambda *args: "pwned"


def _rows_class() -> None:
    Rows.rowcount = 99


def _raise_error_class() -> None:
    RaiseError.sqlstate = "XX000"


def _register() -> None:
    collections.abc.Mapping.register(str)


def _register_by_name() -> None:
    collections.abc.Sequence.register(dict)


def _seed() -> None:
    random.seed(1)


def _decimal_context() -> None:
    decimal.getcontext().prec = 2


def _first_weekday() -> None:
    calendar.setfirstweekday(3)


def _math_constant() -> None:
    math.pi = 3


def _sentinel() -> None:
    dataclasses.MISSING.hijacked = True


def _uuid_class() -> None:
    uuid.UUID.hex = property(lambda self: "pwned")


def _format_walk() -> None:
    template = "{0." + "__class__}"
    template.format(1)


def _str_format_walk() -> None:
    str.format("{0.gi_frame}", (x for x in ()))


# the standard library's code sets attributes of the classes it is given (round 19): shared
# classes are immutable, whoever sets them
def _dataclass_rows() -> None:
    dataclasses.dataclass(Rows)


def _dataclass_user_dict() -> None:
    dataclasses.dataclass(collections.UserDict)


def _dataclass_encoder() -> None:
    dataclasses.dataclass(frozen=True)(json.JSONEncoder)


def _dataclass_raise_error() -> None:
    dataclasses.dataclass(frozen=True)(RaiseError)


def _runtime_checkable() -> None:
    typing.runtime_checkable(typing.Protocol)


class _Closable(typing.Protocol):
    def close(self) -> None: ...


def _protocol_check() -> str:
    try:
        return str(isinstance(1, _Closable))
    except TypeError:
        return "unchecked"


ATTEMPTS = {
    "json_dumps": _json_dumps, "json_class": _json_class, "setattr_view": _setattr_view,
    "db_handle": _db_handle, "db_class": _db_class, "rows_class": _rows_class,
    "raise_error_class": _raise_error_class, "register": _register,
    "register_by_name": _register_by_name, "seed": _seed, "decimal_context": _decimal_context,
    "first_weekday": _first_weekday, "math_constant": _math_constant, "sentinel": _sentinel,
    "uuid_class": _uuid_class, "format_walk": _format_walk, "str_format_walk": _str_format_walk,
    "dataclass_rows": _dataclass_rows, "dataclass_user_dict": _dataclass_user_dict,
    "dataclass_encoder": _dataclass_encoder, "dataclass_raise_error": _dataclass_raise_error,
    "runtime_checkable": _runtime_checkable,
}  # fmt: skip


@stored_function(schema="cont")
def contaminate(attempt: str) -> str:
    try:
        ATTEMPTS[attempt]()
    except (AttributeError, TypeError) as exc:
        return f"refused: {exc}"
    return "done"


@stored_function(schema="cont", roles=["student"])
def draws(n: int) -> list[int]:
    """random's module-level draws: from this module's own generator (random_mod's are
    another's)."""
    return [random.getrandbits(32) for _ in range(n)]


@stored_function(schema="cont", roles=["student"])
def observe() -> str:
    """What other calls rely on, as every call should find it."""
    with decimal.localcontext() as ctx:  # a routine's own copy may be changed
        ctx.prec = 5
        third = str(Decimal(1) / Decimal(3))
    return " ".join([
        json.dumps({"a": [1, 2]}), str(isinstance("x", collections.abc.Mapping)),
        str(Decimal(1) / Decimal(7))[:8], str(calendar.firstweekday()), str(round(math.pi, 2)),
        str(db.fetchval("SELECT 1")), third, uuid.UUID(int=1).hex[-4:],
        str(len(db.execute("SELECT 1 AS x UNION ALL SELECT 2"))),
        str(collections.UserDict() == collections.UserDict({1: 2})),
        json.dumps({"b": 1}, separators=(",", ":")), _protocol_check(),
        RaiseError("no", sqlstate="22023").sqlstate,
    ])  # fmt: skip


class _Format(str):
    """A format that says it is any format, hashed as "<I" (a red team's)."""

    def __hash__(self) -> int:
        return hash("<I")

    def __eq__(self, other: object) -> bool:
        return True


_ARMED: list[bool] = []


class _DayFirst(str):
    """A date format hashed as "%Y-%m-%d" that says it is any format (a red team's)."""

    def __hash__(self) -> int:
        return hash("%Y-%m-%d")

    def __eq__(self, other: object) -> bool:
        return True


class _ZoneKey(str):
    """A zone key honest while it is planted, then equal to any key."""

    def __hash__(self) -> int:
        return hash(str(self))

    def __eq__(self, other: object) -> bool:
        return True if _ARMED else str(self) == str(other)


class _Quiet:
    def __init_subclass__(cls, **kwargs: object) -> None:
        """Keeps ZoneInfo's own from giving a subclass a cache of its own (a red team's)."""


class _ForeignZone(_Quiet, zoneinfo.ZoneInfo):
    """A zone of this module's whose offset is its own: into the cache other calls read?"""

    def utcoffset(self, dt: object) -> datetime.timedelta:
        return datetime.timedelta(hours=14)


_KEPT: list[object] = []


@stored_function(schema="cont")
def plant_caches() -> str:
    """Keys of this module's classes into the caches every call shares: struct's formats
    (filled past its 100 first, so that C empties it), ZoneInfo's zones and strptime's
    patterns (past its 5 first; asked by the routine, and by C from itertools' code)."""
    for i in range(101):
        struct.calcsize(str(i) + "x")
    struct.calcsize(_Format("<Q"))
    struct.unpack(_Format("<Q"), bytes(8))
    zoneinfo.ZoneInfo(_ZoneKey("Pacific/Kiritimati"))
    try:
        _KEPT.append(_ForeignZone("Europe/Paris"))
    except TypeError as exc:  # (ZoneInfo may not be subclassed in the database)
        _KEPT.append(exc)
    for i in range(6):
        datetime.datetime.strptime("1" + "x" * i, "%d" + "x" * i)
    datetime.datetime.strptime("2024-01-02", _DayFirst("%Y-%d-%m"))
    pairs = [("2024-01-02", _DayFirst("%Y-%d-%m"))]
    list(itertools.starmap(datetime.datetime.strptime, pairs))
    _ARMED.append(True)
    return "planted"


@stored_function(schema="cont", roles=["student"])
def cached() -> str:
    """What another role's call gets from those caches."""
    offset = zoneinfo.ZoneInfo("Europe/Paris").utcoffset(datetime.datetime(2026, 1, 1))
    day = datetime.datetime.strptime("2024-01-02", "%Y-%m-%d")
    return f"{len(struct.pack('<I', 5))} {struct.calcsize('<I')} {offset} {day:%m %d}"
