"""Red team round 73: the backstop's promises on a routine's query that does not stop when
told to (README "Stopping routines"): (A) no session is ended whose query behaved, (B) a
query that catches its stop and runs on ends its session within GRACE + CONFIRM (or GRACE +
UNWIND where its stop keeps being pending). Each test PASSES where the promise holds."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster
from tests.conftest import cancel_after

from ..integration.test_ran_on import _err

MOD = """
from pyfuncs import db, stored_function

# the outer query catches every cancel and loops; inside, it calls a routine whose own short
# query is each time a new one (the backstop's innermost query, a new serial)
# (the stop is caught in the outer query itself first: one that lands in the nested routine
# stops the outer call at once, as it should)
ROTATE = ("DO $$ DECLARE caught bool := false; BEGIN LOOP BEGIN "
          "IF caught THEN PERFORM red73.hop(); ELSE PERFORM pg_sleep(0.05); END IF; "
          "EXCEPTION WHEN query_canceled THEN caught := true; END; END LOOP; END $$")


@stored_function(schema="red73")
def hop() -> int:
    db.execute("SELECT pg_sleep(0.1)")
    return 1


@stored_function(schema="red73")
def rotate() -> str:
    db.execute(ROTATE)
    return "went on"


@stored_function(schema="red73", timeout_ms=300)
def rotate_timed() -> str:
    db.execute(ROTATE)
    return "went on"


# A behaving query (it catches division_by_zero only, as many do). Its nested block gave the
# caller's temporary table a new file 2000 times (TRUNCATE, each in a block of its own);
# rolling the block back on the cancel, before the error reaches the query's own
# subtransaction, drops each file, each with a scan of the session's local buffers (the
# caller's temp_buffers: 4GB): ~2.2 s of PostgreSQL's own error path, with no cancel
# pending and the query's own subtransaction not yet aborted
SLOW_ABORT = ("DO $$ BEGIN BEGIN "
              "FOR i IN 1..2000 LOOP BEGIN TRUNCATE pg_temp.warm; "
              "EXCEPTION WHEN division_by_zero THEN NULL; END; END LOOP; "
              "PERFORM pg_sleep(20); "
              "EXCEPTION WHEN division_by_zero THEN NULL; END; END $$")


@stored_function(schema="red73")
def slow_abort() -> str:
    db.execute(SLOW_ABORT)
    return "slept"


@stored_function(schema="red73", timeout_ms=3000)
def slow_abort_timed() -> str:
    db.execute(SLOW_ABORT)
    return "slept"


# A query that catches its stop and runs on in one stretch of C code (numeric division with
# no interrupt check, ~2.5 s) past GRACE + CONFIRM, then returns to the routine's Python
CAUGHT_THEN_C = ("DO $$ BEGIN BEGIN PERFORM pg_sleep(20); "
                 "EXCEPTION WHEN query_canceled THEN "
                 "PERFORM length(((7::numeric ^ 130000) / (11::numeric ^ 55000)"
                 " + (7::numeric ^ 130001) / (11::numeric ^ 55001)"
                 " + (7::numeric ^ 130002) / (11::numeric ^ 55002)"
                 " + (7::numeric ^ 130003) / (11::numeric ^ 55003)"
                 " + (7::numeric ^ 130004) / (11::numeric ^ 55004)"
                 # (~5 s of C here: the session is ended a second or so after the stop,
                 # long before, also on a loaded machine; with half of it, ~2.6 s, a loaded
                 # CI run saw the work end first, and the stop land as a plain cancel)
                 " + (7::numeric ^ 130005) / (11::numeric ^ 55005)"
                 " + (7::numeric ^ 130006) / (11::numeric ^ 55006)"
                 " + (7::numeric ^ 130007) / (11::numeric ^ 55007)"
                 " + (7::numeric ^ 130008) / (11::numeric ^ 55008)"
                 " + (7::numeric ^ 130009) / (11::numeric ^ 55009))::text); "
                 "END; END $$")


@stored_function(schema="red73")
def caught_then_c() -> str:
    db.execute(CAUGHT_THEN_C)
    return "went on"


@stored_function(schema="red73", timeout_ms=300)
def caught_then_c_timed() -> str:
    db.execute(CAUGHT_THEN_C)
    return "went on"


# PostgreSQL's own retry on lock_timeout (README: a query may catch lock_not_available and
# try again), 1 ms waits back to back
RETRIES = ("DO $$ BEGIN SET LOCAL lock_timeout = '1ms'; LOOP BEGIN "
           "LOCK TABLE public.held; EXIT; EXCEPTION WHEN lock_not_available THEN NULL; "
           "END; END LOOP; END $$")


@stored_function(schema="red73")
def retries() -> str:
    db.execute(RETRIES)
    return "locked"


@stored_function(schema="red73", timeout_ms=150)
def retries_timed() -> str:
    db.execute(RETRIES)
    return "locked"


# catches every cancel, for ever
FOREVER = ("DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(0.05); "
           "EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$")


@stored_function(schema="red73")
def forever() -> str:
    db.execute(FOREVER)
    return "went on"


@stored_function(schema="red73", timeout_ms=100)
def spin() -> int:
    n = 0
    while True:
        n += 1


@stored_function(schema="red73")
def chatty(n: int) -> int:
    total = 0
    for i in range(n):
        total += db.fetchval("SELECT $1::int FROM pg_sleep(0.0005)", (i,))
    return total


@stored_function(schema="red73")
def quick() -> int:
    return 1
"""

# how long a query that catches its stop may run on (GRACE + CONFIRM, and slack), and how
# long we let it before ending it ourselves
BOUND_CAUGHT = 1.0 + 0.25 + 1.0
BOUND_PENDING = 1.0 + 10.0 + 1.0 + 1.0
GIVE_UP = 28.0


@pytest.fixture
def red(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Any) -> Any:
    (tmp_path / "red73_mod.py").write_text(MOD)
    deploying.deploy(conn, str(tmp_path / "red73_mod.py"))
    postmaster = cluster.postmaster_pid()
    yield dsn
    assert cluster.postmaster_pid() == postmaster


def _with_ender(
    conn: psycopg.Connection[Any], c: psycopg.Connection[Any], q: str, after: float = GIVE_UP
) -> tuple[psycopg.Error | None, float]:
    """Run q on c; terminate c's backend ourselves `after` seconds in (the escape's end)."""
    pid = c.info.backend_pid
    ender = threading.Timer(after, conn.execute, ["SELECT pg_terminate_backend(%s)", [pid]])
    ender.start()
    try:
        return _err(c, q)
    finally:
        ender.cancel()


@pytest.mark.parametrize("how", ["statement_timeout", "cancel", "timeout_ms"])
def test_b_rotating_innermost_query_does_not_escape(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """B: the routine's query catches its stop and runs on for ever, but spends its time in
    a nested routine's short queries (pg_sleep(0.1)), a new one each 0.1 s: two looks
    CONFIRM apart never see the same innermost query."""
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SELECT red73.quick()")
        routine = "red73.rotate_timed()" if how == "timeout_ms" else "red73.rotate()"
        if how == "statement_timeout":
            c.execute("SET statement_timeout = '300ms'")
        elif how == "cancel":
            threading.Timer(0.3, c.cancel_safe).start()
        err, took = _with_ender(conn, c, f"SELECT {routine}")
        assert err is not None
        assert took < 0.3 + BOUND_CAUGHT, (how, err.sqlstate, str(err), round(took, 2))
        assert err.sqlstate == "57014", (err.sqlstate, str(err))
        if how != "timeout_ms":  # (there the nested call is stopped, and the outer with it)
            assert "ran on for a second" in str(err), str(err)


@pytest.mark.parametrize("how", ["statement_timeout", "cancel", "timeout_ms"])
def test_a_slow_rollback_of_a_nested_block_is_not_running_on(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """A: the routine's query catches nothing of its stop: PostgreSQL takes the cancel in
    pg_sleep and, before the error reaches the query's own subtransaction, rolls back the
    query's nested block (EXCEPTION WHEN division_by_zero), which takes ~2.5 s. The call
    must fail with its stop and the session go on."""
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SET temp_buffers = '4GB'")  # (before the session's first temp table)
        c.execute("CREATE TEMP TABLE warm (a int)")
        c.execute("INSERT INTO warm VALUES (1)")  # (the local buffers are made)
        c.execute("SELECT red73.quick()")
        routine = "red73.slow_abort_timed()" if how == "timeout_ms" else "red73.slow_abort()"
        if how == "statement_timeout":
            c.execute("SET statement_timeout = '3000ms'")
        with cancel_after(c, 3.0) if how == "cancel" else contextlib.nullcontext():
            err, took = _with_ender(conn, c, f"SELECT {routine}")
        assert err is not None
        try:
            c.execute("RESET statement_timeout")
            after = c.execute("SELECT red73.quick()").fetchone()
        except psycopg.Error as exc:
            after = exc
        assert err.sqlstate == "57014" and after == (1,), (
            err.sqlstate,
            str(err).splitlines()[0],
            round(took, 2),
            repr(after),
        )


@pytest.mark.parametrize("how", ["statement_timeout", "cancel", "timeout_ms"])
def test_b_the_error_of_a_session_ended_says_why(
    red: str, conn: psycopg.Connection[Any], cluster: Cluster, how: str
) -> None:
    """B (the error): a query that caught its stop and ran on (in one long stretch of C past
    GRACE + CONFIRM) is ended, as promised; the client must get 57014 with the backstop's
    explanation, not a 'terminated by pg_terminate_backend' nobody sent."""
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SELECT red73.quick()")
        routine = "red73.caught_then_c_timed()" if how == "timeout_ms" else "red73.caught_then_c()"
        if how == "statement_timeout":
            c.execute("SET statement_timeout = '300ms'")
        elif how == "cancel":
            threading.Timer(0.3, c.cancel_safe).start()
        err, took = _with_ender(conn, c, f"SELECT {routine}")
        assert err is not None
        ended = c.closed or c.broken or c.info.transaction_status.name == "UNKNOWN"
        first = str(err).splitlines()[0]
        assert err.sqlstate == "57014" and "ran on for a second" in first, (
            err.sqlstate,
            first,
            round(took, 2),
            ended,
        )


@pytest.mark.parametrize("how", ["statement_timeout", "timeout_ms"])
def test_a_stop_turned_into_lock_not_available_by_postgresql(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """A (a race of PostgreSQL's): a stop (statement_timeout, or timeout_ms's timer) that
    goes off in the same SIGALRM as a lock_timeout is raised as lock_not_available (the lock
    timeout's indicator wins in ProcessInterrupts), which a retry loop catches, as
    PostgreSQL means it to, and goes on past its stop. Such a query counts as one that
    caught its stop (README "Stopping routines": the backstop cannot tell the two apart):
    tried 8 times (~1 in 6 calls here), each call fails with its stop (57014), and a session
    that ends says why, within GRACE + UNWIND and a look (each retry aborts a subtransaction:
    a look takes that for an error on its way up); none is ended any other way."""
    conn.execute("CREATE TABLE public.held (id int)")
    wrong = []
    with psycopg.connect(red) as holder:
        holder.execute("LOCK TABLE public.held")
        for _ in range(8):
            with psycopg.connect(red, autocommit=True) as c:
                routine = "red73.retries_timed()" if how == "timeout_ms" else "red73.retries()"
                if how == "statement_timeout":
                    c.execute("SET statement_timeout = '150ms'")
                err, took = _with_ender(conn, c, f"SELECT {routine}", after=BOUND_PENDING)
                ended = c.closed or c.broken
                said = "ran on for a second" in str(err) or "did not see its stop" in str(err)
                if err is None or err.sqlstate != "57014" or (ended and not said):
                    wrong.append((err and err.sqlstate, str(err).splitlines()[0], round(took, 2)))
    assert not wrong, wrong


def test_b_a_stop_of_an_earlier_call_gives_a_later_query_ten_seconds(
    red: str, conn: psycopg.Connection[Any]
) -> None:
    """B: CLOCK[2] (when the watchdog first raised a stop) is never cleared: a call stopped
    by the watchdog (a Python loop past its timeout_ms) leaves ten seconds in which every
    routine's query of the session is taken for 'Python unwinding', so a later call's query
    that catches its stop runs on until then, not GRACE + CONFIRM."""
    with psycopg.connect(red, autocommit=True) as c:
        err, _ = _err(c, "SELECT red73.spin()")
        assert err is not None and err.sqlstate == "57014"
        c.execute("SET statement_timeout = '300ms'")
        err, took = _with_ender(conn, c, "SELECT red73.forever()")
        assert err is not None
        assert took < 0.3 + BOUND_CAUGHT, (err.sqlstate, str(err).splitlines()[0], round(took, 2))


def test_a_cancels_flooding_a_session_of_short_queries_never_end_it(
    red: str, conn: psycopg.Connection[Any]
) -> None:
    """A: another session cancels this one every ~2 ms for 8 s while it runs calls of many
    short queries, in and out of a transaction block: each call may fail with 57014, the
    session must never end."""
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SELECT red73.quick()")
        pid = c.info.backend_pid
        conn.execute(
            "CREATE FUNCTION pg_temp.pester(pid int, seconds float) RETURNS void "
            "LANGUAGE plpgsql AS $$ DECLARE until timestamptz := clock_timestamp() + "
            "seconds * interval '1 s'; BEGIN WHILE clock_timestamp() < until "
            "AND pg_cancel_backend(pid) LOOP PERFORM pg_sleep(0.002); END LOOP; END $$"
        )
        sender = threading.Thread(
            target=lambda: conn.execute("SELECT pg_temp.pester(%s, 8)", [pid])
        )
        sender.start()
        end, failures, calls = time.monotonic() + 8.5, 0, 0
        problem = None
        while time.monotonic() < end:
            calls += 1
            try:
                if calls % 3 == 0:
                    with c.transaction():
                        c.execute("SAVEPOINT s")
                        c.execute("SELECT red73.chatty(200)")
                else:
                    c.execute("SELECT red73.chatty(200)")
            except psycopg.Error as exc:
                failures += 1
                if c.closed or c.broken or exc.sqlstate != "57014":
                    problem = (exc.sqlstate, str(exc).splitlines()[0], calls)
                    break
                # a cancel can land on the ROLLBACK that ends the block, as in PostgreSQL
                # without routines: the transaction stays open, aborted (seen once)
                while c.info.transaction_status == TransactionStatus.INERROR:
                    with contextlib.suppress(psycopg.errors.QueryCanceled):
                        c.rollback()
        sender.join()
        assert problem is None, (problem, failures, calls)
