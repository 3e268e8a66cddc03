"""Red team round 78: db's conversions of columns of domains (db.py `_based_on`, learnt once
per query plan and shared by every later call in the backend), the body's call path that
loops back after loading (ddl.BODY), and a clocked entry's reused `began` float (entry.c
`note_began`).

Promises attacked: a routine has the caller's rights; one call cannot affect another (other
roles in the same backend included); every call can be stopped. A passing test: the
promise held."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster

from .conftest import mallory_dsn, timed, value

U = "0b1e5a7e-3f39-4a4e-9f52-2b1c1f3b2a10"

MOD = """
import uuid
from datetime import date, datetime, time
from collections.abc import Iterator

from pyfuncs import db, procedure, stored_function


def _kind(v: object) -> str:
    if isinstance(v, list):
        return "[" + ",".join(_kind(x) for x in v) + "]"
    for name, t in (("UUID", uuid.UUID), ("datetime", datetime), ("date", date),
                    ("time", time), ("str", str)):
        if isinstance(v, t):
            return name
    return "None" if v is None else "other"


def _spin() -> None:
    while True:
        pass


@stored_function(schema="r78")
def late_kind() -> str:
    return _kind(db.fetchval("SELECT '%(u)s'::text::r78.late AS v"))


@stored_function(schema="r78")
def temp_kind() -> str:
    return _kind(db.fetchval("SELECT '%(u)s'::text::uuid AS v"))


@stored_function(schema="r78")
def dom_kinds() -> str:
    row = db.fetchone("SELECT * FROM r78.w")
    return ";".join(k + "=" + _kind(v) for k, v in row.items())


@stored_function(schema="r78", max_db_ops=1)
def dom_budget() -> str:
    return _kind(db.fetchval("SELECT a FROM r78.w"))


@stored_function(schema="r78", timeout_ms=400)
def dom_timed() -> str:
    return _kind(db.fetchval("SELECT b FROM r78.w"))


@stored_function(schema="r78")
def dom_cursor() -> str:
    return ";".join(_kind(r["a"]) + _kind(r["f"]) for r in db.cursor("SELECT a, f FROM r78.w", batch=1))


@stored_function(schema="r78", max_db_ops=3)
def dom_rows(n: int) -> Iterator[str]:
    for _ in range(n):
        yield _kind(db.fetchval("SELECT e FROM r78.w"))


@stored_function(schema="r78")
def quick() -> int:
    return 1


@stored_function(schema="r78")
def need(a: int, b: uuid.UUID, c: datetime | None = None) -> str:
    db.execute("INSERT INTO r78.log VALUES (1)")
    return _kind(b) + "," + _kind(c)


@stored_function(schema="r78", max_db_ops=1)
def once(a: int) -> int:
    db.execute("INSERT INTO r78.log VALUES ($1)", [a])
    return a


@procedure(schema="r78")
def proc(a: int) -> None:
    db.execute("INSERT INTO r78.log VALUES ($1)", [a])


@stored_function(schema="r78", max_db_ops=2)
def srf(n: int) -> Iterator[int]:
    for i in range(n):
        db.execute("INSERT INTO r78.log VALUES ($1)", [i])
        yield i


@stored_function(schema="r78", timeout_ms=100)
def spin() -> int:
    _spin()
    return 1


@stored_function(schema="r78", timeout_ms=150)
def spin_after(n: int) -> int:
    for _ in range(n):
        db.fetchval("SELECT r78.quick()")
    _spin()
    return 1


@stored_function(schema="r78", timeout_ms=200)
def rec(n: int) -> int:
    if n > 0:
        for _ in range(3):
            db.fetchval("SELECT r78.rec(0)") if n > 1 else None
        return int(db.fetchval("SELECT r78.rec($1)", [n - 1])) + 1
    return 0


@stored_function(schema="r78", timeout_ms=200)
def rec_spin(n: int) -> int:
    if n > 0:
        db.fetchval("SELECT r78.rec(1)")
        return int(db.fetchval("SELECT r78.rec_spin($1)", [n - 1])) + 1
    _spin()
    return 0
""".replace("%(u)s", U)


@pytest.fixture
def r78(
    dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Any, mallory_role: str
) -> Any:
    x = conn.execute
    x("CREATE SCHEMA IF NOT EXISTS r78")
    x("CREATE DOMAIN r78.du AS uuid")
    x("CREATE DOMAIN r78.dts AS timestamptz CHECK (VALUE IS NOT NULL)")
    x("CREATE DOMAIN r78.dd AS date")
    x("CREATE DOMAIN r78.dt AS time")
    x("CREATE DOMAIN r78.ddu AS r78.du")  # a domain of a domain
    x("CREATE DOMAIN r78.dau AS r78.du[]")  # a domain over an array of domains
    x("CREATE DOMAIN r78.dtext AS text")
    x("CREATE TYPE r78.en AS ENUM ('x')")
    x(
        "CREATE TABLE r78.w (a r78.du, b r78.dts, c r78.dd, d r78.dt, e r78.ddu, f r78.du[], "
        "g r78.dau, h r78.dtext, i r78.en, j r78.ddu[])"
    )
    x(
        f"INSERT INTO r78.w VALUES ('{U}', '2024-01-02 03:04:05+00', '2024-01-02', '03:04:05', "
        f"'{U}', ARRAY['{U}']::r78.du[], ARRAY['{U}']::r78.du[], 't', 'x', "
        f"ARRAY[ARRAY['{U}']]::r78.ddu[])"
    )
    x("CREATE TABLE r78.log (x int)")
    conn.commit()
    (tmp_path / "r78_mod.py").write_text(MOD)
    deploying.deploy(conn, str(tmp_path / "r78_mod.py"))
    x("GRANT USAGE ON SCHEMA r78 TO mallory")
    x("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA r78 TO mallory")
    x("GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA r78 TO mallory")
    x("GRANT SELECT, INSERT, DELETE ON ALL TABLES IN SCHEMA r78 TO mallory")
    conn.commit()
    postmaster = cluster.postmaster_pid()
    yield dsn
    assert cluster.postmaster_pid() == postmaster


def _after_a_dropped_type(c: psycopg.Connection[Any], q: str) -> Any:
    """What `q` gives once a type a shared plan was made with is gone: PostgreSQL keeps
    the plan and fails it (42704); the runtime lets every plan go then, so one call fails
    and the next is planned again (README, Known limits)."""
    try:
        return value(c, q)
    except psycopg.errors.UndefinedObject:
        return value(c, q)


ALL = "a=UUID;b=datetime;c=date;d=time;e=UUID;f=[UUID];g=[UUID];h=str;i=str;j=[[UUID]]"


# --- 1. columns of domains ---------------------------------------------------------------


def test_domains_convert_as_their_base_types(r78: str) -> None:
    with psycopg.connect(mallory_dsn(r78), autocommit=True) as m:
        for _ in range(3):
            assert value(m, "SELECT r78.dom_kinds()") == ALL
        assert value(m, "SELECT r78.dom_cursor()") == "UUID[UUID]"
        assert [r[0] for r in m.execute("SELECT r78.dom_rows(2)")] == ["UUID", "UUID"]


def test_an_old_snapshot_does_not_poison_later_calls(
    r78: str, conn: psycopg.Connection[Any]
) -> None:
    # a call whose transaction's snapshot predates the domain (a migration committed after
    # it began) must not leave what later calls in the backend (another role's too) learn
    with psycopg.connect(mallory_dsn(r78)) as m:
        m.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        m.execute("SELECT 1")
        conn.execute("CREATE DOMAIN r78.late AS uuid")
        conn.commit()
        first = value(m, "SELECT r78.late_kind()")
        m.commit()
        later = [value(m, "SELECT r78.late_kind()") for _ in range(2)]
        m.commit()
    assert later == ["UUID", "UUID"], (first, later)


def test_an_old_snapshot_does_not_poison_another_roles_call(
    r78: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(r78) as c:
        c.execute("SET SESSION AUTHORIZATION mallory")
        c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        c.execute("SELECT 1")
        conn.execute("CREATE DOMAIN r78.late AS uuid")
        conn.commit()
        value(c, "SELECT r78.late_kind()")
        c.commit()
        c.execute("RESET SESSION AUTHORIZATION")
        c.commit()
        assert value(c, "SELECT r78.late_kind()") == "UUID"


def test_a_temporary_type_named_uuid_reaches_no_other_call(r78: str) -> None:
    with psycopg.connect(r78, autocommit=True) as c:
        assert value(c, "SELECT r78.temp_kind()") == "UUID"
        c.execute("SET ROLE mallory")
        c.execute("CREATE DOMAIN pg_temp.uuid AS text")
        mine = value(c, "SELECT r78.temp_kind()")
        assert mine == "str"  # her own type: not a uuid
        c.execute(
            "CREATE OR REPLACE FUNCTION pg_temp.unnest(oid[]) RETURNS SETOF oid "
            "LANGUAGE sql AS 'SELECT 2950::oid'"
        )
        assert value(c, "SELECT r78.dom_kinds()") == ALL
        c.execute("DROP DOMAIN pg_temp.uuid")
        c.execute("RESET ROLE")
        assert _after_a_dropped_type(c, "SELECT r78.temp_kind()") == "UUID"
        assert value(c, "SELECT r78.temp_kind()") == "UUID"
        assert value(c, "SELECT r78.dom_kinds()") == ALL


def test_the_lookup_is_not_counted_in_max_db_ops(r78: str) -> None:
    # the first call in a backend asks pg_type: its budget of one query still holds
    with psycopg.connect(mallory_dsn(r78), autocommit=True) as m:
        assert value(m, "SELECT r78.dom_budget()") == "UUID"
        assert value(m, "SELECT r78.dom_budget()") == "UUID"


def test_statement_timeout_in_the_lookup_leaves_nothing_learnt(r78: str) -> None:
    with psycopg.connect(mallory_dsn(r78), autocommit=True) as m:
        value(m, "SELECT r78.quick()")  # booted
        failed = 0
        for _ in range(8):
            try:
                m.execute("SET statement_timeout = 1")
                m.execute("SELECT r78.dom_kinds()").fetchone()
            except psycopg.Error:
                failed += 1
            m.execute("RESET statement_timeout")
        assert value(m, "SELECT r78.dom_kinds()") == ALL


def test_a_stop_in_the_lookup_stops_and_leaves_nothing_learnt(
    r78: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(mallory_dsn(r78), autocommit=True) as m:
        value(m, "SELECT r78.quick()")  # booted, the lookup's plan not yet prepared
        lock = psycopg.connect(r78)
        lock.execute("LOCK TABLE pg_catalog.pg_type IN ACCESS EXCLUSIVE MODE")
        try:
            got, took = timed(m, "SELECT r78.dom_timed()")
        finally:
            lock.rollback()
            lock.close()
        assert isinstance(got, psycopg.Error), got
        assert took < 3.0
        assert value(m, "SELECT r78.dom_timed()") == "datetime"
        assert value(m, "SELECT r78.dom_kinds()") == ALL


def test_cancel_in_the_lookup(r78: str, conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(mallory_dsn(r78), autocommit=True) as m:
        pid = value(m, "SELECT pg_backend_pid()")
        value(m, "SELECT r78.quick()")
        lock = psycopg.connect(r78)
        lock.execute("LOCK TABLE pg_catalog.pg_type IN ACCESS EXCLUSIVE MODE")
        # (a cancel request, not pg_cancel_backend: parsing that waits for pg_type too)
        if pid:
            t = threading.Timer(0.3, m.cancel)
            t.start()
            try:
                got, _ = timed(m, "SELECT r78.dom_kinds()")
            finally:
                t.join()
                lock.rollback()
                lock.close()
        assert isinstance(got, psycopg.errors.QueryCanceled), got
        assert value(m, "SELECT r78.dom_kinds()") == ALL


def test_a_domain_dropped_and_made_again(r78: str, conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(mallory_dsn(r78), autocommit=True) as m:
        conn.execute("CREATE DOMAIN r78.late AS uuid")
        conn.commit()
        assert value(m, "SELECT r78.late_kind()") == "UUID"
        conn.execute("DROP DOMAIN r78.late")
        conn.execute("CREATE DOMAIN r78.late AS text")
        conn.commit()
        # (PostgreSQL keeps the shared plan with the dropped type: it failed every later
        # call in the backend, "type with OID ... does not exist"; now one)
        assert _after_a_dropped_type(m, "SELECT r78.late_kind()") == "str"
        assert value(m, "SELECT r78.late_kind()") == "str"
        conn.execute("DROP DOMAIN r78.late")
        conn.execute("CREATE DOMAIN r78.late AS uuid")
        conn.commit()
        assert _after_a_dropped_type(m, "SELECT r78.late_kind()") == "UUID"
        assert value(m, "SELECT r78.late_kind()") == "UUID"


# --- 2. the body's loop ------------------------------------------------------------------


def test_first_calls_run_once(r78: str, conn: psycopg.Connection[Any]) -> None:
    def count() -> int:
        n = value(conn, "SELECT count(*) FROM r78.log")
        conn.commit()
        return int(n)

    for first in ("null", "need", "once", "proc", "srf"):
        conn.execute("DELETE FROM r78.log")
        conn.commit()
        with psycopg.connect(mallory_dsn(r78), autocommit=True) as m:
            if first == "null":
                with pytest.raises(psycopg.Error):
                    m.execute("SELECT r78.need(NULL, %s::uuid)", [U])
                assert count() == 0
            elif first == "need":
                assert value(m, "SELECT r78.need(1, %s::uuid)", [U]) == "UUID,None"
                assert count() == 1
            elif first == "once":
                assert value(m, "SELECT r78.once(7)") == 7
                assert count() == 1
            elif first == "proc":
                m.execute("CALL r78.proc(3)")
                assert count() == 1
            else:
                assert [r[0] for r in m.execute("SELECT r78.srf(2)")] == [0, 1]
                assert count() == 2
                with pytest.raises(psycopg.Error):
                    m.execute("SELECT r78.srf(3)").fetchall()
            # and the second call
            assert value(m, "SELECT r78.need(1, %s::uuid, now())", [U]) == "UUID,datetime"


def test_a_failed_first_load_leaves_the_next_call_whole(r78: str) -> None:
    with psycopg.connect(mallory_dsn(r78), autocommit=True) as m:
        m.execute("SET max_parallel_workers_per_gather = 2")
        m.execute("SET parallel_setup_cost = 0")
        m.execute("SET parallel_tuple_cost = 0")
        m.execute("SET min_parallel_table_scan_size = 0")
        with contextlib.suppress(psycopg.Error):
            m.execute("SELECT r78.quick() FROM r78.w").fetchall()
        m.execute("RESET ALL")
        assert value(m, "SELECT r78.quick()") == 1
        assert value(m, "SELECT r78.once(2)") == 2


def test_a_stop_while_loading(r78: str) -> None:
    # timeout_ms does not cover the loading; statement_timeout does: stop it there, then call
    with psycopg.connect(mallory_dsn(r78), autocommit=True) as m:
        for ms in (1, 2, 5, 10, 20):
            with psycopg.connect(mallory_dsn(r78), autocommit=True) as f:
                f.execute(f"SET statement_timeout = {ms}")
                with contextlib.suppress(psycopg.Error):
                    f.execute("SELECT r78.once(1)").fetchone()
                f.execute("RESET statement_timeout")
                got, took = timed(f, "SELECT r78.spin()")
                assert isinstance(got, psycopg.Error) and took < 3.0
                assert value(f, "SELECT r78.once(5)") == 5
        assert value(m, "SELECT r78.quick()") == 1


# --- 3. the reused began -----------------------------------------------------------------


def test_timeout_holds_after_many_calls(r78: str) -> None:
    with psycopg.connect(mallory_dsn(r78), autocommit=True) as m:
        for _ in range(300):
            value(m, "SELECT r78.quick()")
        for n in (0, 50, 300):
            got, took = timed(m, "SELECT r78.spin_after(%s)", [n])
            assert isinstance(got, psycopg.Error), got
            assert took < 2.0
        time.sleep(0.3)  # an idle gap: a stale began would make the next spin stop at once
        got, took = timed(m, "SELECT r78.spin()")
        assert isinstance(got, psycopg.Error) and 0.08 < took < 2.0, took


def test_nested_calls_keep_their_own_began(r78: str) -> None:
    with psycopg.connect(mallory_dsn(r78), autocommit=True) as m:
        for _ in range(20):
            assert value(m, "SELECT r78.rec(4)") == 4
        got, took = timed(m, "SELECT r78.rec_spin(3)")
        assert isinstance(got, psycopg.Error) and 0.15 < took < 2.0, (got, took)
        assert value(m, "SELECT r78.rec(2)") == 2
