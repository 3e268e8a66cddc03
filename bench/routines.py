"""The routines of benchmarks (a) and (c). Those of (a) run under limits, as they would in
production: the watchdog's (timeout_ms, max_memory_mb) everywhere, max_db_ops in one."""

from __future__ import annotations

from pyfuncs import db, stored_function

LIMITS = {"timeout_ms": 10_000, "max_memory_mb": 256}


@stored_function(schema="bench", volatility="immutable", parallel="safe", **LIMITS)
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


@stored_function(schema="bench", volatility="stable", **LIMITS)
def query_one(x: int) -> int:
    return db.fetchval("SELECT $1::bigint + 1", [x])


@stored_function(schema="bench", volatility="stable", max_db_ops=10, **LIMITS)
def query_one_counted(x: int) -> int:
    return db.fetchval("SELECT $1::bigint + 1", [x])
