"""The query that tells which keys a later change removed from a subscriber's view
(realtime_removed_later, delivery._removed_later): a DELETE, an UPDATE of a key column or a
TRUNCATE of the table, after the position given, of exactly the keys asked for (equal, not
contained: an array or a jsonb key contains a shorter one), looked up hashed."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyfuncs import realtime
from pyfuncs.gateway.tables import Table, removed_keys, removed_later_query

TABLES = """
CREATE TABLE rt.tagged (k int[] PRIMARY KEY, v text);
CREATE TABLE rt.shaped (k jsonb PRIMARY KEY, v text);
CREATE TABLE rt.pairs (a int, b text, v text, PRIMARY KEY (a, b));
"""


def _table(conn: psycopg.Connection[Any], name: str, key: tuple[str, ...]) -> Table:
    relid = conn.execute("SELECT %s::regclass::oid", [f"rt.{name}"]).fetchone()[0]  # type: ignore[index]
    return Table(relid, "rt", name, key)


def _position(conn: psycopg.Connection[Any]) -> int:
    """The position of the last change committed (trigger mode's given now)."""
    conn.execute("SELECT pyfuncs.realtime_sequence()")
    return conn.execute("SELECT max(position) FROM pyfuncs.realtime_commit").fetchone()[0]  # type: ignore[index]


def _removed(conn: psycopg.Connection[Any], table: Table, after: int, keys: set[Any]) -> set[Any]:
    _position(conn)
    with conn.cursor() as cur:
        cur.execute(*removed_later_query(table, after, keys))
        return removed_keys(table, keys, cur.fetchall())


@pytest.fixture
def tables(rt_db: str, conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute(TABLES)
    for name in ("tagged", "shaped", "pairs"):
        realtime.enable(conn, f"rt.{name}")
    return conn


def test_deletes_re_keys_and_truncates_remove_exactly_the_keys_asked_for(
    tables: psycopg.Connection[Any],
) -> None:
    conn = tables
    pairs = _table(conn, "pairs", ("a", "b"))
    conn.execute("INSERT INTO rt.pairs SELECT i, 'x' || i, 'v' FROM generate_series(1, 6) i")
    after = _position(conn)
    conn.execute("DELETE FROM rt.pairs WHERE a = 1")
    conn.execute("UPDATE rt.pairs SET b = 'moved' WHERE a = 2")  # re-keyed
    conn.execute("UPDATE rt.pairs SET v = 'w' WHERE a = 3")  # the key stays
    conn.execute("DELETE FROM rt.pairs WHERE a = 4")  # not asked for
    asked = {(1, "x1"), (2, "x2"), (3, "x3"), (5, "x5"), (1, "x2")}
    assert _removed(conn, pairs, after, asked) == {(1, "x1"), (2, "x2")}
    # only what came after the position counts
    assert _removed(conn, pairs, _position(conn), asked) == set()
    conn.execute("TRUNCATE rt.pairs")
    assert _removed(conn, pairs, after, asked) == asked


@pytest.mark.parametrize(
    ("name", "kept", "gone"),
    [("tagged", "{1,2}", "{1,2,3}"), ("shaped", '{"a": 1}', '{"a": 1, "b": 2}')],
)
def test_a_key_that_contains_another_is_not_that_key(
    tables: psycopg.Connection[Any], name: str, kept: str, gone: str
) -> None:
    """Deleting the row keyed [1,2,3] does not remove the one keyed [1,2] (nor {"a":1,"b":2}
    the one keyed {"a":1}): the first version of the query tested containment."""
    conn = tables
    table = _table(conn, name, ("k",))
    statement = sql.SQL("INSERT INTO {} (k, v) VALUES (%s, 'a'), (%s, 'b')").format(
        sql.Identifier("rt", name)
    )
    conn.execute(statement, [kept, gone])
    key = conn.execute(
        sql.SQL("SELECT to_jsonb(k) FROM {} WHERE v = 'a'").format(sql.Identifier("rt", name))
    ).fetchone()[0]  # type: ignore[index]
    mine = {table.key_from({"k": key})}
    after = _position(conn)
    conn.execute(sql.SQL("DELETE FROM {} WHERE v = 'b'").format(sql.Identifier("rt", name)))
    assert _removed(conn, table, after, mine) == set()
    conn.execute(sql.SQL("DELETE FROM {} WHERE v = 'a'").format(sql.Identifier("rt", name)))
    assert _removed(conn, table, after, mine) == mine


def test_the_keys_are_looked_up_hashed(tables: psycopg.Connection[Any]) -> None:
    """Each later change's key is looked up among the keys asked for, not compared with each
    (a busy table's later changes, times the keys of a batch)."""
    conn = tables
    pairs = _table(conn, "pairs", ("a", "b"))
    conn.execute("INSERT INTO rt.pairs SELECT i, 'x', 'v' FROM generate_series(1, 2000) i")
    after = _position(conn)
    conn.execute("DELETE FROM rt.pairs")
    keys = {(i, "x") for i in range(1, 2001, 2)}
    statement, params = removed_later_query(pairs, after, keys)
    explain = sql.SQL("EXPLAIN (FORMAT JSON) {}").format(sql.SQL(statement))  # type: ignore[arg-type]
    (plan,) = conn.execute(explain, params).fetchone()  # type: ignore[misc]
    assert "hashed SubPlan" in json.dumps(plan)
    assert _removed(conn, pairs, after, keys) == keys
