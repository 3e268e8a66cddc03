"""What ends the session of a routine's query that runs on past its stop (the backstop
library's second timer and its SIGINT handler: README "Stopping routines") does not end
others: a query slow to see its cancel, a plain DO block, a cancel honoured, a nested call,
a statement_timeout honoured, a lock_timeout caught and tried again (round 69's, and ours)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster
from tests.conftest import cancel_after

MOD = """
from pyfuncs import db, stored_function

# PostgreSQL's numeric division has no interrupt check: ~0.5 s of C per term in which a
# cancel waits
def division(terms: int) -> str:
    return "SELECT length((" + " + ".join(
        f"(7::numeric ^ {130000 + i}) / (11::numeric ^ {55000 + i})" for i in range(terms)
    ) + ")::text)"


@stored_function(schema="ranon", timeout_ms=200)
def timed() -> int:
    return db.fetchval(division(4))


@stored_function(schema="ranon")
def untimed() -> int:
    return db.fetchval(division(4))


@stored_function(schema="ranon")
def sleeps(s: float) -> str:
    db.execute("SELECT pg_sleep($1)", (s,))
    return "slept"


@stored_function(schema="ranon")
def retries() -> str:
    db.execute(
        "DO $$ BEGIN SET LOCAL lock_timeout = '100ms'; LOOP BEGIN "
        "LOCK TABLE public.held; EXIT; EXCEPTION WHEN lock_not_available THEN NULL; "
        "END; END LOOP; END $$"
    )
    return "locked"


@stored_function(schema="ranon")
def quick() -> int:
    return 1


@stored_function(schema="ranon")
def spin() -> int:
    n = 0
    while True:
        n += 1


@stored_function(schema="ranon")
def outer() -> int:
    return db.fetchval("SELECT ranon.spin()")
"""


@pytest.fixture
def ranon(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Any) -> Any:
    (tmp_path / "ranon_mod.py").write_text(MOD)
    deploying.deploy(conn, str(tmp_path / "ranon_mod.py"))
    postmaster = cluster.postmaster_pid()
    yield dsn
    assert cluster.postmaster_pid() == postmaster


def _err(c: psycopg.Connection[Any], q: str, p: Any = ()) -> tuple[psycopg.Error | None, float]:
    t = time.monotonic()
    try:
        c.execute(q, p)
    except psycopg.Error as exc:
        return exc, time.monotonic() - t
    return None, time.monotonic() - t


@pytest.mark.parametrize("how", ["timeout_ms", "statement_timeout", "cancel"])
def test_a_query_slow_to_see_its_cancel_is_not_a_query_that_caught_it(
    ranon: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """A routine's query in C code that checks no interrupt for 2 s (numeric division) is
    stopped by PostgreSQL as it returns, with a cancel (it catches nothing): the session
    goes on. The first end, set a second after the stop, took it for a query that caught
    its cancel and ended the session (round 69's): a cancel still pending is not caught."""
    direct_took = time.monotonic()
    conn.execute("SELECT ranon.untimed()")
    direct_took = time.monotonic() - direct_took
    assert direct_took > 1.5, f"the division took only {direct_took:.2f} s here"
    with psycopg.connect(ranon, autocommit=True) as c:
        c.execute("SELECT ranon.quick()")
        routine = "ranon.timed()" if how == "timeout_ms" else "ranon.untimed()"
        if how == "statement_timeout":
            c.execute("SET statement_timeout = '200ms'")
        with cancel_after(c, 0.2) if how == "cancel" else contextlib.nullcontext():
            err, took = _err(c, f"SELECT {routine}")
        assert err is not None
        alive = not (c.closed or c.broken)
        assert alive and err.sqlstate == "57014", (err.sqlstate, str(err), took)


FLOOD = """
CREATE FUNCTION pg_temp.flood(pid int, after float, seconds float) RETURNS int
LANGUAGE plpython3u AS $$
import os, signal, time
time.sleep(after)
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    try:
        os.kill(pid, signal.SIGPROF)
    except ProcessLookupError:  # (the session ended)
        break
    sent += 1
    gap = time.monotonic() + 20e-6
    while time.monotonic() < gap:
        pass
return sent
$$"""


def test_a_query_ending_on_its_cancel_as_the_backstop_looks_is_not_one_that_ran_on(
    ranon: str, conn: psycopg.Connection[Any]
) -> None:
    """Between PostgreSQL raising the cancel a query was slow to see (it is no longer
    pending) and the runtime noting the stop, the query is on its way out, not running on:
    a look of the backstop's there took it for a query that caught its cancel and ended the
    session (seen once in 50 under load). Here the backstop looks every 20 us (SIGPROF, as
    the watchdog's timer sends it), from past GRACE after the cancel until the call ends."""
    conn.execute(FLOOD)
    with psycopg.connect(ranon, autocommit=True) as c:
        c.execute("SELECT ranon.quick()")
        pid = c.info.backend_pid
        sent: list[int] = []
        flood = threading.Thread(
            target=lambda: sent.append(
                conn.execute("SELECT pg_temp.flood(%s, 1.3, 3.0)", [pid]).fetchone()[0]
            )
        )
        flood.start()
        with cancel_after(c, 0.1):
            err, took = _err(c, "SELECT ranon.untimed()")
        flood.join()
        assert took > 1.5, f"the division took only {took:.2f} s here"
        assert sent and sent[0] > 1000, sent
        assert err is not None and err.sqlstate == "57014", (err and err.sqlstate, str(err), took)
        assert not (c.closed or c.broken)
        assert c.execute("SELECT ranon.quick()").fetchone() == (1,)


def test_plain_do_block_catching_cancel_in_a_booted_session_runs_on(ranon: str) -> None:
    """No routine's query under way: a cancel behaves as in PostgreSQL."""
    with psycopg.connect(ranon, autocommit=True) as c:
        c.execute("SELECT ranon.quick()")
        with cancel_after(c, 0.3):
            err, took = _err(
                c,
                "DO $$ DECLARE t timestamptz := clock_timestamp(); BEGIN "
                "WHILE clock_timestamp() < t + interval '2.5 s' LOOP BEGIN "
                "PERFORM pg_sleep(0.05); EXCEPTION WHEN query_canceled THEN NULL; "
                "END; END LOOP; END $$",
            )
        assert err is None and took >= 2.4
        assert c.execute("SELECT ranon.quick()").fetchone() == (1,)


def test_a_cancel_honoured_leaves_nothing_for_the_next_call(ranon: str) -> None:
    with psycopg.connect(ranon, autocommit=True) as c:
        with cancel_after(c, 0.3):
            err, _ = _err(c, "SELECT ranon.sleeps(3)")
        assert err is not None and err.sqlstate == "57014"
        # the next call's query runs past the cancel timer's GRACE: not killed
        assert c.execute("SELECT ranon.sleeps(2)").fetchone() == ("slept",)
        # and in a transaction block, cancelled then rolled back, then again
        c.execute("BEGIN")
        with cancel_after(c, 0.3):
            err, _ = _err(c, "SELECT ranon.sleeps(3)")
        assert err is not None
        c.execute("ROLLBACK")
        assert c.execute("SELECT ranon.sleeps(1.5)").fetchone() == ("slept",)


def test_a_cancel_of_a_nested_routine_leaves_the_session(ranon: str) -> None:
    with psycopg.connect(ranon, autocommit=True) as c:
        with cancel_after(c, 0.3):
            err, took = _err(c, "SELECT ranon.outer()")
        assert err is not None and err.sqlstate == "57014" and took < 1.5, (str(err), took)
        assert not (c.closed or c.broken)
        assert c.execute("SELECT ranon.sleeps(1.5)").fetchone() == ("slept",)


def test_a_statement_timeout_honoured_leaves_nothing_in_a_transaction(ranon: str) -> None:
    """statement_timeout stops a routine's query; the killer it armed must not fire later."""
    with psycopg.connect(ranon, autocommit=True) as c:
        c.execute("SET statement_timeout = '300ms'")
        err, _ = _err(c, "SELECT ranon.sleeps(3)")
        assert err is not None and err.sqlstate == "57014"
        c.execute("SET statement_timeout = '5s'")
        c.execute("BEGIN")
        assert c.execute("SELECT ranon.sleeps(0.1)").fetchone() == ("slept",)
        time.sleep(6.5)  # past the killer's time for that statement, idle in the block
        assert c.execute("SELECT 1").fetchone() == (1,)
        c.execute("COMMIT")


def test_a_lock_timeout_a_routines_query_catches_and_tries_again_is_not_a_stop(
    ranon: str, conn: psycopg.Connection[Any]
) -> None:
    """lock_timeout cancels with a SIGINT of PostgreSQL's own, as a cancel request does; a
    query that catches lock_not_available and tries again, as PostgreSQL means it to, runs
    on (a cancel request the same query caught would end the session)."""
    conn.execute("CREATE TABLE public.held (id int)")
    with psycopg.connect(ranon) as holder:
        holder.execute("LOCK TABLE public.held")
        with psycopg.connect(ranon, autocommit=True) as c:
            threading.Timer(2.5, holder.rollback).start()
            err, took = _err(c, "SELECT ranon.retries()")
    assert err is None and took >= 2.4, (err, took)
