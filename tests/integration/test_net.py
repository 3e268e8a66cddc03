"""The backstop library's net (backstop.c: a query of a routine's whose subtransactions go
out of step ends its session) must not end a session that did nothing wrong: legitimate
nesting of routines, savepoints, errors, triggers, procedures and cursors (red team round
51's catalogue, none of which it ends)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster

ENDS = "this session ends so that no later call runs"


def _deploy(conn: psycopg.Connection[Any], tmp_path: Any, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    deploying.deploy(conn, str(tmp_path / f"{name}.py"))


def _log_since(cluster: Cluster, size: int) -> str:
    with cluster.log_file.open() as log:
        log.seek(size)
        return log.read()


def _alive(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


LEGIT = """
from collections.abc import Iterator

from pyfuncs import db, stored_function

TRIES: list[int] = []


@stored_function(schema="fp", roles=["student", "manager"])
def inner(mode: str) -> str:
    if mode == "savepoint_error":
        try:
            with db.subtransaction():
                db.execute("SELECT 1/0")
        except Exception as exc:
            return "inner caught " + str(exc)[:20]
        return "no error?"
    if mode == "savepoint":
        with db.subtransaction():
            return str(db.fetchval("SELECT 41 + 1"))
    if mode == "raise":
        db.execute("SELECT 1/0")
    if mode == "cursor":
        got = db.cursor("SELECT g FROM generate_series(1, 5) g", batch=2)
        return str(sum(r["g"] for r in got))
    if mode == "nested":  # one more level through SQL, with a savepoint there
        with db.subtransaction():
            return "n:" + str(db.fetchval("SELECT fp.inner('savepoint_error')"))
    return "plain"


@stored_function(schema="fp", roles=["student", "manager"])
def rows(n: int) -> Iterator[int]:
    for i in range(n):
        yield int(db.fetchval("SELECT $1::int * 10", [i]))


@stored_function(schema="fp", roles=["student", "manager"])
def outer(mode: str, how: str) -> str:
    if how == "direct":
        return str(db.fetchval("SELECT fp.inner($1)", [mode]))
    if how == "savepoint":
        with db.subtransaction():
            return str(db.fetchval("SELECT fp.inner($1)", [mode]))
    if how == "plpgsql":
        return str(db.fetchval("SELECT public.catching($1)", [mode]))
    if how == "retry":
        for attempt in range(3):
            try:
                with db.subtransaction():
                    return str(db.fetchval("SELECT fp.inner($1)", ["raise" if attempt < 2 else mode]))
            except Exception:
                continue
        return "gave up"
    if how == "srf_cursor":
        return str([r["rows"] for r in db.cursor("SELECT * FROM fp.rows(5)", batch=2)])
    if how == "srf_execute":
        return str([r["rows"] for r in db.execute("SELECT * FROM fp.rows(4)")])
    if how == "do_block":
        db.execute(
            "DO $$ BEGIN BEGIN PERFORM fp.inner('raise'); EXCEPTION WHEN others THEN "
            "PERFORM fp.inner('savepoint'); END; END $$"
        )
        return "do"
    return "?"
"""

CATCHING = """
CREATE FUNCTION public.catching(mode text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  BEGIN
    PERFORM fp.inner('raise');
  EXCEPTION WHEN division_by_zero THEN NULL;
  END;
  RETURN 'caught then ' || fp.inner(mode);
END $$;
GRANT EXECUTE ON FUNCTION public.catching(text) TO PUBLIC;
"""

MODES = ["plain", "savepoint", "savepoint_error", "cursor", "nested"]
HOWS = ["direct", "savepoint", "plpgsql", "retry"]


@pytest.fixture
def legit(conn: psycopg.Connection[Any], tmp_path: Any) -> psycopg.Connection[Any]:
    _deploy(conn, tmp_path, "fp_mod", LEGIT)
    conn.execute(CATCHING)
    return conn


def test_legitimate_nested_workloads_keep_their_session(
    legit: psycopg.Connection[Any], cluster: Cluster
) -> None:
    """Nested routine calls through SQL inside a routine's query, savepoints inside the
    nested calls, errors caught and retried, PL/pgSQL exception blocks, set-returning
    routines read through cursors: none of these may end the session (a false positive of
    the net would be a denial of service for every pooled client)."""
    size = cluster.log_file.stat().st_size
    legit.execute("SET ROLE student")
    failures = []
    for how in HOWS:
        for mode in MODES:
            try:
                legit.execute("SELECT fp.outer(%s, %s)", [mode, how]).fetchone()
            except psycopg.OperationalError as exc:
                failures.append((how, mode, str(exc)[:200]))
                break
            except psycopg.Error as exc:
                failures.append((how, mode, "error: " + str(exc)[:200]))
    for how in ["srf_cursor", "srf_execute", "do_block"]:
        try:
            legit.execute("SELECT fp.outer('plain', %s)", [how]).fetchone()
        except psycopg.Error as exc:
            failures.append((how, "", str(exc)[:200]))
    log = _log_since(cluster, size)
    assert not failures, failures
    assert ENDS not in log


SQL_SIDE = """
CREATE TABLE public.owned (v int);
GRANT ALL ON public.owned TO student;
CREATE FUNCTION public.owned_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  BEGIN
    PERFORM fp.inner('raise');
  EXCEPTION WHEN others THEN NULL;
  END;
  PERFORM fp.inner('savepoint_error');
  RETURN NEW;
END $$;
CREATE TRIGGER owned_before BEFORE INSERT ON public.owned
  FOR EACH ROW EXECUTE FUNCTION public.owned_trigger();
CREATE CONSTRAINT TRIGGER owned_deferred AFTER INSERT ON public.owned
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.owned_trigger();
CREATE DOMAIN public.checked AS text CHECK (fp.inner('savepoint') IS NOT NULL);
CREATE PROCEDURE public.committing() LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  PERFORM fp.inner('savepoint');
  COMMIT;
  PERFORM fp.outer('savepoint_error', 'savepoint');
  ROLLBACK;
  FOR r IN SELECT fp.outer('nested', 'direct') AS x FROM generate_series(1, 3) LOOP
    COMMIT;
  END LOOP;
  FOR r IN SELECT * FROM fp.rows(3) LOOP
    ROLLBACK;
  END LOOP;
END $$;
GRANT EXECUTE ON PROCEDURE public.committing() TO student;
"""

WORKLOADS = [
    ("trigger", "SELECT fp.outer('plain', 'direct'); INSERT INTO public.owned VALUES (1)"),
    ("domain literal", "SELECT 'x'::public.checked"),
    ("procedure with COMMIT/ROLLBACK", "CALL public.committing()"),
    (
        "cursor WITH HOLD",
        "BEGIN; DECLARE h CURSOR WITH HOLD FOR SELECT fp.outer('nested', "
        "'savepoint') FROM generate_series(1, 3); FETCH 1 FROM h; COMMIT; FETCH 2 FROM h; "
        "CLOSE h",
    ),
    (
        "srf cursor in a transaction",
        "BEGIN; DECLARE c CURSOR FOR SELECT * FROM fp.rows(5); "
        "FETCH 2 FROM c; SAVEPOINT a; FETCH 1 FROM c; ROLLBACK TO a; FETCH 1 FROM c; COMMIT",
    ),
    (
        "srf with limit in a routine's query",
        "SELECT fp.outer('plain', 'srf_execute') FROM generate_series(1, 2)",
    ),
]


def test_legitimate_sql_around_routines_keeps_its_session(
    legit: psycopg.Connection[Any], cluster: Cluster
) -> None:
    """Triggers, deferred triggers, domain checks, procedures with COMMIT and ROLLBACK
    between routine calls, WITH HOLD cursors over routines, cursors over set-returning
    routines across savepoints: none may end the session."""
    legit.execute(SQL_SIDE)
    size = cluster.log_file.stat().st_size
    legit.execute("SET ROLE student")
    failures = []
    for name, statement in WORKLOADS:
        try:
            legit.execute(statement)
        except psycopg.Error as exc:
            failures.append((name, str(exc)[:300]))
            if not _alive(legit):
                break
            legit.execute("ROLLBACK")
    log = _log_since(cluster, size)
    assert not failures, failures
    assert ENDS not in log
