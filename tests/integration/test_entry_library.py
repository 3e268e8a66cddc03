"""The entry library (pyfuncs_entry.so, entry.c) in a backend: it is what runs a call's entry
and a routine's queries where it is installed, and where it is not, the runtime's Python
does the same work (tested by switching a backend to it before its first call)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying

MODULE = """
from pyfuncs import db, stored_function

@stored_function(schema="fast", timeout_ms=300)
def add(x: int) -> int:
    return x + 1

@stored_function(schema="fast")
def big(x: int) -> int:
    return x << 62

class Text(str):
    pass

@stored_function(schema="fast")
def text(n: int) -> str:
    return "x" * n if n else Text("made plain")

@stored_function(schema="fast")
def fails(x: int) -> int:
    return 10 // x

@stored_function(schema="fast", volatility="stable")
def queried(x: int) -> str:
    value = db.fetchval("SELECT $1::bigint * 2", [x])
    row = db.fetchone("SELECT $1::bigint AS v, 'b' AS w", [x])
    rows = db.execute("SELECT g FROM generate_series(1, $1::int) g", [x])
    none = db.fetchone("SELECT 1 WHERE false")
    empty = db.fetchval("SELECT 1 WHERE false")
    return f"{value} {row} {[r['g'] for r in rows]} {rows.rowcount} {none} {empty}"

@stored_function(schema="fast", volatility="volatile")
def becomes(role: str) -> str:
    db.execute("SELECT set_config('role', $1, false)", [role])
    return db.fetchval("SELECT current_user")

@stored_function(schema="fast", timeout_ms=200)
def spins() -> int:
    n = 0
    while True:
        try:
            n += 1
        except BaseException:
            continue

@stored_function(schema="fast", timeout_ms=200, volatility="volatile")
def sleeps() -> int:
    return db.fetchval("SELECT 1 FROM pg_sleep(5)")

from datetime import date

@stored_function(schema="fast")
def day(d: date) -> int:
    return d.day
"""

# which does the work in this backend: the library's objects, or the runtime's Python
IN_USE = """
CREATE OR REPLACE FUNCTION public.entries_in_use() RETURNS text LANGUAGE plpython3u AS $$
import sys
watchdog, db = sys.modules["pyfuncs_pg.watchdog"], sys.modules["pyfuncs_pg.db"]
def kind(names):  # the Entry's type; "split": the entry frame calls the function itself
    return "split" if "leave" in names else type(names.get("enter")).__name__
calls = {kind(r.fn.__globals__) for r in watchdog.ENTRIES.values()
         if not r.fn.__name__.startswith("_")}
return f"{type(db._query).__name__} {sorted(calls)}"
$$;
CREATE OR REPLACE FUNCTION public.python_entries() RETURNS text LANGUAGE plpython3u AS $$
import sys
plpy.execute("SELECT pyfuncs.boot()")
backstop, db = sys.modules["pyfuncs_pg.backstop"], sys.modules["pyfuncs_pg.db"]
backstop._makers[:] = []  # routines loaded from now on get the Python entry
db._query = db.Db._run
return "python"
$$;
"""

CALLS = [
    ("SELECT fast.add(41)", 42),
    ("SELECT fast.big(1)", 1 << 62),
    ("SELECT fast.text(3)", "xxx"),
    ("SELECT fast.text(0)", "made plain"),  # (not kept as it is: finished inside the call)
    ("SELECT fast.queried(3)", "6 {'v': 3, 'w': 'b'} [1, 2, 3] 3 None None"),
    ("SELECT fast.day('2026-12-04')", 4),  # (converted: an Entry reads it, not split)
]


@pytest.fixture
def fast(conn: psycopg.Connection[Any], tmp_path: Path) -> psycopg.Connection[Any]:
    conn.execute(IN_USE)
    (tmp_path / "fast_mod.py").write_text(textwrap.dedent(MODULE))
    deploying.deploy(conn, str(tmp_path / "fast_mod.py"))
    return conn


def _behaves(conn: psycopg.Connection[Any]) -> None:
    """What a call does, whichever does the work."""
    for query, expected in CALLS:
        assert conn.execute(query).fetchone() == (expected,), query
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        conn.execute("SELECT fast.big(4)")  # beyond bigint: made a Decimal, refused there
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT fast.fails(0)")
    assert "division or modulo by zero (fast_mod.py:21 in fails)" in str(info.value)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT fast.becomes('pg_monitor')")
    for query in ("SELECT fast.spins()", "SELECT fast.sleeps()"):
        started = time.monotonic()
        with pytest.raises(psycopg.Error) as info:
            conn.execute(query)
        assert "timeout_ms=200" in str(info.value), info.value
        assert time.monotonic() - started < 1.5
    assert conn.execute("SELECT fast.add(1)").fetchone() == (2,)  # the backend carries on


def test_the_library_runs_entries_and_queries(fast: psycopg.Connection[Any], dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _behaves(conn)
        assert conn.execute("SELECT public.entries_in_use()").fetchone() == (
            "queries ['entry', 'split']",
        )


def test_the_runtimes_python_does_the_same_work(fast: psycopg.Connection[Any], dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT public.python_entries()").fetchone() == ("python",)
        _behaves(conn)
        assert conn.execute("SELECT public.entries_in_use()").fetchone() == (
            "function ['NoneType']",
        )
