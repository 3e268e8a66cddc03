"""Routines that fail in the ways a routine can fail."""

from __future__ import annotations

from pyfuncs import RaiseError, db, stored_function


def _check(amount: int) -> None:
    if amount < 0:
        raise ValueError(f"amount must be >= 0, got {amount}")


@stored_function(schema="err")
def nested(amount: int) -> int:
    _check(amount)
    return amount


@stored_function(schema="err")
def custom(code: str) -> int:
    raise RaiseError("not enough credit", sqlstate=code, detail="balance is 3", hint="top up")


@stored_function(schema="err")
def divide(a: int, b: int) -> int:
    return db.fetchval("SELECT $1::bigint / $2::bigint", [a, b])


@stored_function(schema="err")
def duplicate() -> int:
    db.execute("CREATE TABLE IF NOT EXISTS err.u (k int PRIMARY KEY)")
    db.execute("INSERT INTO err.u VALUES (1)")
    db.execute("INSERT INTO err.u VALUES (1)")
    return 1


@stored_function(schema="err")
def caught() -> str:
    try:
        db.execute("SELECT 1/0")
    except Exception as exc:  # an SPI error caught by the routine leaves the call usable
        return f"caught {getattr(exc, 'sqlstate', None)}"
    return "no error"
