"""The trivial routine of benchmark (a)."""

from __future__ import annotations

from pyfuncs import db, stored_function


@stored_function(schema="bench", volatility="immutable", parallel="safe")
def add_one(x: int) -> int:
    return x + 1


@stored_function(schema="bench")
def spin() -> int:
    """Never returns by itself: for the stop-latency figures."""
    n = 0
    while True:
        try:
            n += 1
        except BaseException:
            continue


@stored_function(schema="bench", timeout_ms=100)
def spin_limited() -> int:
    n = 0
    while True:
        n += 1


@stored_function(schema="bench", volatility="stable")
def query_one(x: int) -> int:
    return int(db.fetchval("SELECT $1::bigint + 1", [x]))
