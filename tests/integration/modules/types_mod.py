"""Routines that take and return every supported type, checking the types they receive."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, NamedTuple, TypedDict

from pyfuncs import stored_function


@dataclass
class Everything:
    i: int
    small: Annotated[int, "integer"]
    f: float
    n: Decimal
    s: str
    b: bool
    by: bytes
    ts: datetime.datetime
    d: datetime.date
    t: datetime.time
    u: uuid.UUID
    j: dict[str, Any]
    ints: list[int]
    dates: list[datetime.date]
    uuids: list[uuid.UUID]


class MaybeRow(TypedDict):
    i: int | None
    s: str | None
    d: datetime.date | None
    u: uuid.UUID | None
    j: dict[str, Any] | None
    ints: list[int] | None


class Pair(NamedTuple):
    n: int
    label: str


_EXPECTED = {
    "i": int, "small": int, "f": float, "n": Decimal, "s": str, "b": bool, "by": bytes,
    "ts": datetime.datetime, "d": datetime.date, "t": datetime.time, "u": uuid.UUID, "j": dict,
    "ints": list, "dates": list, "uuids": list,
}  # fmt: skip


@stored_function(schema="rt")
def everything(
    p_i: int,
    p_small: Annotated[int, "integer"],
    p_f: float,
    p_n: Decimal,
    p_s: str,
    p_b: bool,
    p_by: bytes,
    p_ts: datetime.datetime,
    p_d: datetime.date,
    p_t: datetime.time,
    p_u: uuid.UUID,
    p_j: dict[str, Any],
    p_ints: list[int],
    p_dates: list[datetime.date],
    p_uuids: list[uuid.UUID],
) -> Everything:
    """Returns its arguments after checking each arrived as its hinted Python type."""
    values = dict(zip(_EXPECTED, (p_i, p_small, p_f, p_n, p_s, p_b, p_by, p_ts, p_d, p_t, p_u,
                                  p_j, p_ints, p_dates, p_uuids), strict=True))  # fmt: skip
    for name, expected in _EXPECTED.items():
        if type(values[name]) is not expected:
            raise TypeError(f"{name} arrived as {type(values[name])!r}")
    if not all(type(x) is datetime.date for x in p_dates):
        raise TypeError("dates items are not dates")
    if not all(type(x) is uuid.UUID for x in p_uuids):
        raise TypeError("uuids items are not UUIDs")
    return Everything(**values)


@stored_function(schema="rt")
def maybe(
    p_i: int | None = None,
    p_s: str | None = None,
    p_d: datetime.date | None = None,
    p_u: uuid.UUID | None = None,
    p_j: dict[str, Any] | None = None,
    p_ints: list[int] | None = None,
) -> MaybeRow:
    return MaybeRow(i=p_i, s=p_s, d=p_d, u=p_u, j=p_j, ints=p_ints)


@stored_function(schema="rt", volatility="immutable", strict=True, parallel="safe")
def next_day(d: datetime.date) -> datetime.date:
    return d + datetime.timedelta(days=1)


@stored_function(schema="rt")
def shift(ts: datetime.datetime, hours: float = 1.0) -> datetime.datetime:
    return ts + datetime.timedelta(hours=hours)


@stored_function(schema="rt")
def new_uuid(seed: uuid.UUID | None = None) -> uuid.UUID:
    return seed or uuid.UUID(int=42)


@stored_function(schema="rt")
def merge(a: dict[str, Any], b: dict[str, Any] = {"default": True}) -> dict[str, Any]:  # noqa: B006
    return {**b, **a}


@stored_function(schema="rt")
def reverse_bytes(data: bytes) -> bytes:
    return data[::-1]


@stored_function(schema="rt")
def total(amounts: list[Decimal]) -> Decimal:
    return sum(amounts, Decimal(0))


@stored_function(schema="rt")
def countdown(n: int) -> Iterator[int]:
    yield from range(n, 0, -1)


@stored_function(schema="rt")
def pairs(count: int, prefix: str = "p") -> Iterator[Pair]:
    for k in range(count):
        yield Pair(k, f"{prefix}{k}")


@stored_function(schema="rt")
def nothing(x: int) -> None:
    return None
