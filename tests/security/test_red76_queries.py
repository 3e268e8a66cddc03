"""Red team round 76: db's queries read the watchdog's stop byte and its budgets list as the
watchdog made them (entry.c `watched`/`seen`), and the backstop reads the clock once per
query, sets the killer from the deadline timer's (or statement_timeout's) finish time and
disables its two timers together (backstop.c `guard_lend`/`guard_give_back`).

Promises attacked (README "Stopping routines"): a stopped call runs no further query;
max_db_ops fails the call at operation N+1, queries of routines it calls through SQL
counted; timeout_ms holds while a query waits; a query that catches its stop and runs on
has its session ended about GRACE + CONFIRM after the stop ("ran on for a second"); one that
did not is never ended; nothing of one call's timers reaches a later call or statement; a
nested call gets the earlier deadline and the outer its own back after.

A passing test: the promise held. Queries that must not run bump a sequence (nextval is not
rolled back with the failed statement), so a query that ran after the stop is seen."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import SUPERUSER, Cluster
from tests.conftest import cancel_after

from .test_red73_ranon import BOUND_CAUGHT, _with_ender

SLACK = 0.6

MOD = """
from collections.abc import Iterator

from pyfuncs import db, stored_function

BUMP = "SELECT nextval('red76.seq')"


def _spin() -> None:
    while True:
        pass


def _bump_fin(self: object) -> None:
    db.fetchval(BUMP)


def _bump_str(self: object) -> str:
    return str(db.fetchval(BUMP))


_Fin = type("_Fin", (), {"__del__": _bump_fin})  # not `def __del__`: no guard inserted
_Loud = type("_Loud", (Exception,), {"__str__": _bump_str})


def _gen():
    try:
        yield 1
    finally:
        db.fetchval(BUMP)


@stored_function(schema="red76", timeout_ms=100)
def after_stop(how: str) -> int:
    try:
        _spin()
    except BaseException:
        pass
    if how == "execute":
        db.execute(BUMP)
    elif how == "fetchone":
        db.fetchone(BUMP)
    elif how == "fetchval":
        db.fetchval(BUMP)
    elif how == "cursor":
        for _ in db.cursor(BUMP):
            pass
    elif how == "subtransaction":
        with db.subtransaction():
            db.fetchval(BUMP)
    elif how == "nested":
        db.fetchval("SELECT red76.bump()")
    return 1


@stored_function(schema="red76")
def bump() -> int:
    return int(db.fetchval(BUMP))


@stored_function(schema="red76", timeout_ms=100)
def fin_after_stop(how: str) -> int:
    if how == "del":
        x = _Fin()
    elif how == "generator":
        g = _gen()
        next(g)
    elif how == "many":
        xs = [_Fin() for _ in range(5)]
    elif how == "str":
        try:
            raise _Loud()
        except _Loud:
            _spin()
    _spin()
    return 1


@stored_function(schema="red76")
def caught_cancel_then_query() -> int:
    # the query is cancelled (statement_timeout or a cancel); the routine catches it
    # and queries again, swallowing every error, for a while
    try:
        db.execute("SELECT pg_sleep(3)")
    except BaseException:
        pass
    n = 0
    for _ in range(50):
        try:
            n += int(db.fetchval(BUMP))
        except BaseException:
            pass
    return n


@stored_function(schema="red76", timeout_ms=150)
def loops_queries() -> int:
    # the stop lands around one of many quick queries (each with a text of its own, so
    # each is planned first: db's bookkeeping runs between the check and the query)
    i = 0
    while True:
        i += 1
        try:
            db.fetchval(
                "SELECT setval('red76.last', (extract(epoch FROM clock_timestamp()) * 1e6)"
                f"::bigint) + {i}"
            )
        except BaseException:
            pass


@stored_function(schema="red76", max_db_ops=2)
def budget_outer(inner: int) -> int:
    try:
        return int(db.fetchval("SELECT red76.budget_inner($1)", [inner]))
    except BaseException:
        return -1


@stored_function(schema="red76")
def budget_inner(n: int) -> int:
    for _ in range(n):
        try:
            db.fetchval(BUMP)
        except BaseException:
            pass
    return n


@stored_function(schema="red76", max_db_ops=2)
def budget_rows(n: int) -> Iterator[int]:
    for i in range(n):
        try:
            db.fetchval(BUMP)
        except BaseException:
            pass
        yield i


@stored_function(schema="red76", max_db_ops=3)
def budget_cursor(n: int) -> int:
    k = 0
    try:
        for _ in db.cursor("SELECT nextval('red76.seq') FROM generate_series(1, $1)", [n],
                           batch=1):
            k += 1
    except BaseException:
        pass
    try:
        db.fetchval(BUMP)
    except BaseException:
        pass
    return k


@stored_function(schema="red76", max_db_ops=1)
def budget_nested_rows(n: int) -> int:
    # a set-returning routine called through SQL: its rows' queries are ours too
    try:
        return int(db.fetchval("SELECT count(*) FROM red76.bump_rows($1)", [n]))
    except BaseException:
        return -1


@stored_function(schema="red76")
def bump_rows(n: int) -> Iterator[int]:
    for _ in range(n):
        yield int(db.fetchval(BUMP))


@stored_function(schema="red76", timeout_ms=100)
def inner_quick() -> int:
    db.execute("SELECT pg_sleep(0.02)")
    return 1


@stored_function(schema="red76", timeout_ms=5000)
def inner_long_sleep() -> int:
    db.execute("SELECT pg_sleep(5)")
    return 1


@stored_function(schema="red76", timeout_ms=100)
def inner_sleeps_past() -> int:
    db.execute("SELECT pg_sleep(2)")
    return 1


@stored_function(schema="red76", timeout_ms=400)
def outer_after_nested(how: str) -> int:
    if how == "short":
        db.execute("SELECT red76.inner_quick(), pg_sleep(5)")
    else:
        db.execute("SELECT red76.inner_long_sleep()")
    return 1


@stored_function(schema="red76")
def untimed_sleeps(s: float) -> str:
    db.execute("SELECT pg_sleep($1)", (s,))
    return "slept"


@stored_function(schema="red76", timeout_ms=200)
def timed_nearly(s: float) -> str:
    db.execute("SELECT pg_sleep($1)", (s,))
    return "slept"


# runs on for ever past its stop, catching every cancel
RUNS_ON = (
    "DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(0.05); "
    "EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$"
)
# a nested routine first (its own earlier deadline lends the timer, then gives it back)
NESTED_THEN_RUNS_ON = (
    "DO $$ BEGIN PERFORM red76.inner_quick(); LOOP BEGIN PERFORM pg_sleep(0.05); "
    "EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$"
)
# a nested routine's query stopped by its own deadline, its failure caught, then a plain
# sleep that catches nothing
NESTED_STOPPED_THEN_SLEEP = (
    "DO $$ BEGIN BEGIN PERFORM red76.inner_sleeps_past(); "
    "EXCEPTION WHEN query_canceled THEN NULL; END; PERFORM pg_sleep(2); END $$"
)
# SET LOCAL statement_timeout = 0 inside the query, then a long sleep
UNSET = "DO $$ BEGIN SET LOCAL statement_timeout = 0; PERFORM pg_sleep(4); END $$"


@stored_function(schema="red76", timeout_ms=400)
def runs_on_timed() -> str:
    db.execute(RUNS_ON)
    return "went on"


@stored_function(schema="red76")
def runs_on() -> str:
    db.execute(RUNS_ON)
    return "went on"


@stored_function(schema="red76", timeout_ms=5000)
def runs_on_long_limit() -> str:
    db.execute(RUNS_ON)
    return "went on"


@stored_function(schema="red76", timeout_ms=400)
def nested_then_runs_on() -> str:
    db.execute(NESTED_THEN_RUNS_ON)
    return "went on"


@stored_function(schema="red76")
def nested_stopped_then_sleep() -> str:
    db.execute(NESTED_STOPPED_THEN_SLEEP)
    return "slept"


@stored_function(schema="red76")
def unsets() -> str:
    db.execute(UNSET)
    return "slept"


@stored_function(schema="red76")
def nested_then_runs_on_untimed() -> str:
    db.execute(NESTED_THEN_RUNS_ON)
    return "went on"


@stored_function(schema="red76", timeout_ms=200)
def outer_stopped_in_inner() -> int:
    try:
        db.fetchval("SELECT red76.inner_swallows()")
    except BaseException:
        pass
    try:
        db.fetchval(BUMP)
    except BaseException:
        pass
    return 1


@stored_function(schema="red76")
def inner_swallows() -> int:
    try:
        _spin()
    except BaseException:
        pass
    try:
        db.fetchval(BUMP)
    except BaseException:
        pass
    return 1


@stored_function(schema="red76")
def fin_control() -> int:
    x = _Fin()
    del x
    g = _gen()
    next(g)
    del g
    return 1


@stored_function(schema="red76")
def quick() -> int:
    return 1
"""


@pytest.fixture
def red(
    dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Any, mallory_role: str
) -> Any:
    conn.execute("CREATE SCHEMA IF NOT EXISTS red76")
    conn.execute("CREATE SEQUENCE IF NOT EXISTS red76.seq")
    conn.execute("CREATE SEQUENCE IF NOT EXISTS red76.last")
    conn.commit()
    (tmp_path / "red76_mod.py").write_text(MOD)
    deploying.deploy(conn, str(tmp_path / "red76_mod.py"))
    conn.execute("GRANT USAGE ON SCHEMA red76 TO mallory")
    conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA red76 TO mallory")
    conn.execute("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA red76 TO mallory")
    conn.commit()
    postmaster = cluster.postmaster_pid()
    yield dsn.replace(f"{SUPERUSER}@", "mallory@", 1)
    assert cluster.postmaster_pid() == postmaster


def _bumps(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM red76.seq"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _first(err: psycopg.Error | None) -> str:
    return str(err).splitlines()[0] if err is not None else "-"


def _run(c: psycopg.Connection[Any], q: str, p: Any = ()) -> tuple[Any, float]:
    """(the error, or the first row; seconds taken)"""
    t = time.monotonic()
    try:
        row = c.execute(q, p).fetchone()
    except psycopg.Error as exc:
        return exc, time.monotonic() - t
    return row, time.monotonic() - t


# --- a stopped call runs no further query -----------------------------------------------


@pytest.mark.parametrize(
    "how", ["execute", "fetchone", "fetchval", "cursor", "subtransaction", "nested"]
)
def test_a_query_after_a_swallowed_stop_is_refused(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """The watchdog's stop lands in a spin the routine wraps in `except BaseException:
    pass`; each spelling of a query after it must be refused (the stop byte read)."""
    with psycopg.connect(red, autocommit=True) as c:
        got, _ = _run(c, "SELECT red76.after_stop(%s)", [how])
    assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", got
    assert "timeout_ms=100" in _first(got), _first(got)
    assert _bumps(conn) == 0, f"{how}: a query of the stopped call ran"


@pytest.mark.parametrize("how", ["del", "generator", "many", "str"])
def test_a_finalizer_of_a_stopped_call_runs_no_query(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """What unwinding from the stop sets off (a type()-made `__del__`, a dropped
    generator's `finally`, several `__del__`s, an exception's `__str__` in the
    stop's context) queries: refused."""
    with psycopg.connect(red, autocommit=True) as c:
        got, _ = _run(c, "SELECT red76.fin_after_stop(%s)", [how])
        after, _ = _run(c, "SELECT red76.quick()")
    assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", got
    assert after == (1,), after
    assert _bumps(conn) == 0, f"{how}: a finalizer's query ran after the stop"


@pytest.mark.parametrize("how", ["statement_timeout", "cancel"])
def test_a_caught_query_cancel_refuses_every_later_query(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """The routine's query is cancelled (statement_timeout, a client's cancel), the
    routine catches it and tries 50 more queries: none runs (stop_here holds the byte)."""
    with psycopg.connect(red, autocommit=True) as c:
        if how == "statement_timeout":
            c.execute("SET statement_timeout = '300ms'")
        with cancel_after(c, 0.3) if how == "cancel" else contextlib.nullcontext():
            got, took = _run(c, "SELECT red76.caught_cancel_then_query()")
    assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", got
    assert took < 0.3 + SLACK, took
    assert _bumps(conn) == 0


def test_no_query_starts_well_after_the_deadline(red: str, conn: psycopg.Connection[Any]) -> None:
    """A routine issues quick queries, each planned anew, catching every error, until its
    timeout_ms=150 stops it: the last query to run (it stamps the time in a sequence,
    which no rollback undoes) started within a few ms of the deadline; five calls."""
    worst = 0.0
    with psycopg.connect(red, autocommit=True) as c:
        for _ in range(5):
            start = c.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
            assert start is not None
            got, _ = _run(c, "SELECT red76.loops_queries()")
            assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", got
            row = conn.execute("SELECT last_value FROM red76.last").fetchone()
            assert row is not None
            late = row[0] / 1e6 - float(start[0]) - 0.15
            worst = max(worst, late)
    print("\nOBS worst query start past the deadline (s):", round(worst, 4))
    assert worst < 0.05, worst


# --- max_db_ops -----------------------------------------------------------------------


@pytest.mark.parametrize("inner", [1, 2, 5])
def test_max_db_ops_counts_a_nested_routines_queries(
    red: str, conn: psycopg.Connection[Any], inner: int
) -> None:
    """max_db_ops=2: op 1 calls the inner routine through SQL, whose queries are ops 2, 3,
    ...: at most one of them runs, swallowed errors or not."""
    with psycopg.connect(red, autocommit=True) as c:
        got, _ = _run(c, "SELECT red76.budget_outer(%s)", [inner])
    if inner == 1:
        assert got == (1,), got
        assert _bumps(conn) == 1
    else:
        assert isinstance(got, psycopg.Error) and got.sqlstate == "54000", got
        assert "budget_outer exceeded its limit max_db_ops=2 (operation 3)" in str(got)
        assert _bumps(conn) == 1, _bumps(conn)


def test_max_db_ops_counts_a_set_returning_routines_rows(
    red: str, conn: psycopg.Connection[Any]
) -> None:
    """Each row's query counts; the third is refused, whatever the rows in between, and
    with another call's rows of the same routine in the same select list (each its own
    budget: 2 + 2 queries at most)."""
    with psycopg.connect(red, autocommit=True) as c:
        got, _ = _run(c, "SELECT count(*) FROM red76.budget_rows(5)")
        assert isinstance(got, psycopg.Error) and got.sqlstate == "54000", got
        assert _bumps(conn) == 2, _bumps(conn)
        got, _ = _run(c, "SELECT red76.budget_rows(5), red76.budget_rows(5)")
        assert isinstance(got, psycopg.Error) and got.sqlstate == "54000", got
    assert _bumps(conn) - 2 <= 4, _bumps(conn)


def test_max_db_ops_counts_cursor_fetches(red: str, conn: psycopg.Connection[Any]) -> None:
    """max_db_ops=3, a cursor of batch 1: declare + 2 fetches, then refused (and the query
    after, swallowing the error, refused too)."""
    with psycopg.connect(red, autocommit=True) as c:
        got, _ = _run(c, "SELECT red76.budget_cursor(10)")
    assert isinstance(got, psycopg.Error) and got.sqlstate == "54000", got
    assert _bumps(conn) <= 2, _bumps(conn)


@pytest.mark.parametrize("n", [1, 3])
def test_max_db_ops_counts_a_nested_set_returning_routines_rows(
    red: str, conn: psycopg.Connection[Any], n: int
) -> None:
    """max_db_ops=1 spent by the query calling a set-returning routine: none of its rows'
    queries runs."""
    with psycopg.connect(red, autocommit=True) as c:
        got, _ = _run(c, "SELECT red76.budget_nested_rows(%s)", [n])
    assert isinstance(got, psycopg.Error) and got.sqlstate == "54000", got
    assert _bumps(conn) == 0, _bumps(conn)


# --- timers: nested deadlines ---------------------------------------------------------


@pytest.mark.parametrize("how", ["short", "long"])
def test_the_outer_deadline_holds_after_and_over_a_nested_call(red: str, how: str) -> None:
    """Outer timeout_ms=400: its query calls an inner routine with an earlier deadline
    (100 ms, returning at once) then sleeps 5 s, or one with a later deadline (5 s) that
    sleeps: the outer's deadline cancels it at ~400 ms, with the outer's limit."""
    with psycopg.connect(red, autocommit=True) as c:
        got, took = _run(c, "SELECT red76.outer_after_nested(%s)", [how])
        after, _ = _run(c, "SELECT red76.untimed_sleeps(1.2)")
    assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", got
    assert "outer_after_nested exceeded its limit timeout_ms=400" in _first(got), _first(got)
    assert took < 0.4 + SLACK, took
    assert after == ("slept",), after


def test_nothing_of_a_call_timers_reaches_the_next_statement(
    red: str, conn: psycopg.Connection[Any]
) -> None:
    """A call whose query returns just before its deadline (timeout_ms=200, sleeping 190
    to 199 ms), then an untimed call sleeping 1.5 s (past where the earlier call's killer
    would go off), ten times: the later one is never cancelled nor killed."""
    with psycopg.connect(red, autocommit=True) as c:
        for i in range(10):
            first, _ = _run(c, "SELECT red76.timed_nearly(%s)", [0.19 + i * 0.001])
            assert first == ("slept",) or (
                isinstance(first, psycopg.Error) and first.sqlstate == "57014"
            ), first
            after, _ = _run(c, "SELECT red76.untimed_sleeps(0.3)")
            assert after == ("slept",), (i, after)
        after, _ = _run(c, "SELECT red76.untimed_sleeps(1.5)")
        assert after == ("slept",), after


def test_a_transaction_block_after_a_stopped_call_goes_on(red: str) -> None:
    """Inside BEGIN: a call stopped by its timeout_ms (caught by a savepoint), then an
    untimed call sleeping past where its killer would be: not cancelled, not killed."""
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("BEGIN")
        c.execute("SAVEPOINT s")
        got, _ = _run(c, "SELECT red76.timed_nearly(2)")
        assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", got
        c.execute("ROLLBACK TO SAVEPOINT s")
        after, _ = _run(c, "SELECT red76.untimed_sleeps(1.6)")
        assert after == ("slept",), after
        c.execute("COMMIT")


def test_a_nested_calls_stop_caught_leaves_no_killer_for_the_outer_sleep(
    red: str, conn: psycopg.Connection[Any]
) -> None:
    """The outer (untimed, statement_timeout 30 s) query calls an inner routine stopped by
    its own timeout_ms (100 ms), catches the failure, then sleeps 2 s catching nothing:
    its session is not ended (no query of its caught its own stop: the inner's killer
    must be given back to the outer's, 31 s off). The call fails with the sticky stop."""
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SET statement_timeout = '30s'")
        err, took = _with_ender(conn, c, "SELECT red76.nested_stopped_then_sleep()")
        ended = c.closed or c.broken
        print("\nOBS", err and err.sqlstate, _first(err), round(took, 2), ended)
        assert not ended, (_first(err), round(took, 2))
        if err is not None:
            assert err.sqlstate == "57014", _first(err)
        after, _ = _run(c, "SELECT red76.quick()")
        assert after == (1,), after


# --- timers: the killer ---------------------------------------------------------------


@pytest.mark.parametrize(
    "how", ["timeout_ms", "statement_timeout_shorter", "statement_timeout_longer", "cancel"]
)
def test_a_query_running_on_past_its_stop_ends_the_session_in_time(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """The routine's query catches every cancel and runs on for ever: the killer (set from
    the timer's finish time, or statement_timeout's) ends the session about GRACE +
    CONFIRM after the first stop, saying it ran on."""
    routine, stop = {
        "timeout_ms": ("runs_on_timed", 0.4),
        "statement_timeout_shorter": ("runs_on_long_limit", 0.3),
        "statement_timeout_longer": ("runs_on_timed", 0.4),
        "cancel": ("runs_on", 0.3),
    }[how]
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SELECT red76.quick()")
        if how == "statement_timeout_shorter":
            c.execute("SET statement_timeout = '300ms'")
        elif how == "statement_timeout_longer":
            c.execute("SET statement_timeout = '5s'")
        elif how == "cancel":
            threading.Timer(0.3, c.cancel_safe).start()
        err, took = _with_ender(conn, c, f"SELECT red76.{routine}()")
    print("\nOBS", err and err.sqlstate, _first(err), round(took, 2))
    assert err is not None and err.sqlstate == "57014", err
    assert "ran on for a second" in _first(err), _first(err)
    assert stop + 1.0 <= took < stop + BOUND_CAUGHT, round(took, 2)


@pytest.mark.parametrize("how", ["timeout_ms", "statement_timeout"])
def test_the_killer_is_given_back_to_the_outer_after_a_nested_call(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """The outer's stop at 400 ms (its timeout_ms, or statement_timeout on an untimed
    routine): its query first calls a routine with an earlier deadline (100 ms: its lend
    sets the killer from that timer, to ~1.1 s), which returns; then runs on past the
    outer's stop catching every cancel: ended about 0.4 + GRACE + CONFIRM in, not at
    ~1.1 s (a killer left at the inner's time) nor never."""
    routine = "nested_then_runs_on" if how == "timeout_ms" else "nested_then_runs_on_untimed"
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SELECT red76.quick()")
        if how == "statement_timeout":
            c.execute("SET statement_timeout = '400ms'")
        err, took = _with_ender(conn, c, f"SELECT red76.{routine}()")
    print("\nOBS", err and err.sqlstate, _first(err), round(took, 2))
    assert err is not None and err.sqlstate == "57014", err
    assert "ran on for a second" in _first(err), _first(err)
    assert 0.4 + 1.0 <= took < 0.4 + BOUND_CAUGHT, round(took, 2)


def test_set_local_statement_timeout_inside_the_query_does_not_lift_it(red: str) -> None:
    """statement_timeout 300 ms; the routine's query sets it to 0 (SET LOCAL) then sleeps 4 s:
    still cancelled at ~300 ms, and the session's setting is its own after."""
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SET statement_timeout = '300ms'")
        got, took = _run(c, "SELECT red76.unsets()")
        assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", got
        assert took < 0.3 + SLACK, took
        setting = c.execute("SHOW statement_timeout").fetchone()
        assert setting == ("300ms",), setting


def test_an_outer_calls_stop_refuses_the_inner_and_outer_queries_after(
    red: str, conn: psycopg.Connection[Any]
) -> None:
    """The outer (timeout_ms=200) is stopped while an untimed routine it calls through SQL
    spins: the inner swallows the stop and queries, the outer swallows the failure and
    queries: neither query runs; and the next call of the session queries as usual."""
    with psycopg.connect(red, autocommit=True) as c:
        got, took = _run(c, "SELECT red76.outer_stopped_in_inner()")
        assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", got
        assert took < 0.2 + SLACK, took
        assert _bumps(conn) == 0, _bumps(conn)
        after, _ = _run(c, "SELECT red76.bump()")
        assert after == (1,), after


def test_control_the_finalizers_query_when_no_stop(red: str, conn: psycopg.Connection[Any]) -> None:
    """Control: with no stop, the same finalizer and generator `finally` do query (so the
    sequence sees a query that runs)."""
    with psycopg.connect(red, autocommit=True) as c:
        got, _ = _run(c, "SELECT red76.fin_control()")
    assert got == (1,), got
    assert _bumps(conn) == 2, _bumps(conn)
