"""Red team round 74: the backstop's promises on a routine's query that does not stop when
told to (README "Stopping routines"): (A) no session is ended whose query behaved, (B) a
query that catches its stop and runs on ends its session within GRACE + CONFIRM (or GRACE +
UNWIND where its stop keeps being pending). Each test PASSES where the promise holds.

Broke (fail on d32d73e): test_b_unwinding_window_then_pending_for_ten_seconds (~20.3 s: a
watchdog stop's 10 s window, then 10 s of a cancel kept pending), test_b_a_stop_landing_in_
a_nested_routines_query_caught_by_the_outer[cancel] (for ever: a cancel request that lands
at depth 2 is forgotten as the nested query leaves), test_a_a_long_error_path_through_nested_
blocks_is_not_running_on (a behaving query's ~5 s error path, interrupts not held, ends its
session as one that "caught the cancel")."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import SUPERUSER, Cluster
from tests.conftest import cancel_after

from .test_red73_ranon import BOUND_PENDING, _with_ender

MOD = """
from pyfuncs import db, stored_function

# a numeric division of ~0.5 s with no interrupt check (random(): not folded into a
# constant as the plan is made, once for the loop)
HEAVY = "length((((7 + 0 * random())::numeric ^ 130000) / (11::numeric ^ 55000))::text)"

# Phase 1: catch the call's own stop (statement_timeout / cancel) and go on. Phase 2: call
# a nested routine the watchdog stops (its own timeout_ms, a Python loop): CLOCK[2], the
# "Python unwinding" window of 10 s, opens inside the outermost query; idle (pg_sleep,
# nothing pending) until it is nearly shut. Phase 3: keep a cancel pending at every look
# (cancel ourselves, then a stretch of C with no interrupt check, caught; again) for 10 s.
UNWIND_THEN_HELD = (
    "DO $$ DECLARE phase int := 1; t timestamptz; n int; BEGIN LOOP BEGIN "
    "IF phase = 1 THEN PERFORM pg_sleep(0.05); "
    "ELSIF phase = 2 THEN PERFORM red74.spin(); "
    "ELSIF clock_timestamp() < t + interval '9.6 s' THEN PERFORM pg_sleep(0.05); "
    "ELSE PERFORM CASE WHEN pg_cancel_backend(pg_backend_pid()) THEN " + HEAVY + " END; "
    "END IF; "
    "EXCEPTION WHEN query_canceled THEN "
    "IF phase = 1 THEN phase := 2; ELSIF phase = 2 THEN phase := 3; t := clock_timestamp(); "
    "END IF; END; END LOOP; END $$")

# Phase 3 alone: the 10 s rule, as documented (a control)
HELD_ONLY = (
    "DO $$ DECLARE caught bool := false; BEGIN LOOP BEGIN "
    "IF NOT caught THEN PERFORM pg_sleep(0.05); "
    "ELSE PERFORM CASE WHEN pg_cancel_backend(pg_backend_pid()) THEN " + HEAVY + " END; "
    "END IF; "
    "EXCEPTION WHEN query_canceled THEN caught := true; END; END LOOP; END $$")

# a nested routine stopped by the watchdog every ~0.1 s, for ever (each a new stop?)
RESPIN = (
    "DO $$ DECLARE caught bool := false; BEGIN LOOP BEGIN "
    "IF caught THEN PERFORM red74.spin(); ELSE PERFORM pg_sleep(0.05); END IF; "
    "EXCEPTION WHEN query_canceled THEN caught := true; END; END LOOP; END $$")

# one short query after the other, each catching a cancel and returning within GRACE
SHORT_CATCH = ("DO $$ BEGIN PERFORM pg_sleep(0.2); "
               "EXCEPTION WHEN query_canceled THEN NULL; END $$")


@stored_function(schema="red74", timeout_ms=100)
def spin() -> int:
    n = 0
    while True:
        n += 1


@stored_function(schema="red74")
def unwind_then_held() -> str:
    db.execute(UNWIND_THEN_HELD)
    return "went on"


@stored_function(schema="red74")
def held_only() -> str:
    db.execute(HELD_ONLY)
    return "went on"


@stored_function(schema="red74")
def respin() -> str:
    db.execute(RESPIN)
    return "went on"


@stored_function(schema="red74")
def short_catches(times: int) -> int:
    for _ in range(times):
        db.execute(SHORT_CATCH)
    return times


# A: a nested routine's query catches its own deadline's cancel, runs on past GRACE (the
# killer's first look sees it), and returns (its call stops, 57014); the outer query, which
# was given no stop of its own, takes the nested call's failure and goes on sleeping
NESTED_RAN_ON = ("DO $$ BEGIN PERFORM pg_sleep(0.3); "
                 "EXCEPTION WHEN query_canceled THEN PERFORM pg_sleep(1.1); END $$")


@stored_function(schema="red74", timeout_ms=200)
def inner_ran_on() -> str:
    db.execute(NESTED_RAN_ON)
    return "returned"


OUTER_GOES_ON = ("DO $$ BEGIN BEGIN PERFORM red74.inner_ran_on(); "
                 "EXCEPTION WHEN query_canceled THEN NULL; END; PERFORM pg_sleep(12); END $$")


@stored_function(schema="red74")
def outer_goes_on() -> str:
    db.execute(OUTER_GOES_ON)
    return "slept"


# the outer query spends its time in a nested routine's query (pg_sleep(0.5)), so a cancel
# request lands there (the nested query's depth); it catches the nested call's 57014 and
# sleeps on for ever, calling no routine (no Python runs)
NESTED_CATCH = (
    "DO $$ DECLARE caught bool := false; BEGIN "
    "WHILE NOT caught LOOP BEGIN PERFORM red74.hop(); "
    "EXCEPTION WHEN query_canceled THEN caught := true; END; END LOOP; "
    "LOOP PERFORM pg_sleep(0.05); END LOOP; END $$")


@stored_function(schema="red74")
def hop() -> int:
    db.execute("SELECT pg_sleep(0.5)")
    return 1


@stored_function(schema="red74")
def nested_catch() -> str:
    db.execute(NESTED_CATCH)
    return "went on"


@stored_function(schema="red74", timeout_ms=300)
def nested_catch_timed() -> str:
    db.execute(NESTED_CATCH)
    return "went on"


@stored_function(schema="red74")
def deep(n: int) -> int:
    return db.fetchval("SELECT public.deep_rec($1::int)", (n,))


@stored_function(schema="red74")
def quick() -> int:
    return 1
"""


@pytest.fixture
def red(
    dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Any, mallory_role: str
) -> Any:
    (tmp_path / "red74_mod.py").write_text(MOD)
    deploying.deploy(conn, str(tmp_path / "red74_mod.py"))
    conn.execute("GRANT USAGE ON SCHEMA red74 TO mallory")
    conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA red74 TO mallory")
    postmaster = cluster.postmaster_pid()
    yield dsn.replace(f"{SUPERUSER}@", "mallory@", 1)
    assert cluster.postmaster_pid() == postmaster


def _first(err: psycopg.Error | None) -> str:
    return str(err).splitlines()[0] if err is not None else "-"


def _stopped(red: str, conn: psycopg.Connection[Any], how: str, query: str) -> Any:
    """`query` run as mallory, stopped after 0.3 s (`how`: statement_timeout, a cancel
    request, or its own timeout_ms), with the ender at hand: (its error, seconds taken)."""
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SELECT red74.quick()")
        if how == "statement_timeout":
            c.execute("SET statement_timeout = '300ms'")
        elif how == "cancel":
            threading.Timer(0.3, c.cancel_safe).start()
        err, took = _with_ender(conn, c, query)
    print("\nOBS", err and err.sqlstate, _first(err), round(took, 2))
    return err, took


@pytest.mark.parametrize("how", ["statement_timeout", "cancel"])
def test_b_unwinding_window_then_pending_for_ten_seconds(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """B: the query catches its stop, then spends UNWIND in a window a nested routine's
    watchdog stop opened (looks: not running on, not pending), then keeps a cancel of its
    own pending at every look for another 10 s: GRACE + UNWIND + a look at most?"""
    err, took = _stopped(red, conn, how, "SELECT red74.unwind_then_held()")
    assert err is not None
    assert took < 0.3 + BOUND_PENDING, (err.sqlstate, _first(err), round(took, 2))


@pytest.mark.parametrize("how", ["statement_timeout", "cancel"])
def test_b_pending_alone_ends_within_eleven_seconds(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """B (control): the held phase alone ends the session by the 10 s rule."""
    err, took = _stopped(red, conn, how, "SELECT red74.held_only()")
    assert err is not None
    assert took < 0.3 + BOUND_PENDING, (err.sqlstate, _first(err), round(took, 2))


@pytest.mark.parametrize("how", ["statement_timeout", "cancel"])
def test_b_a_nested_routine_stopped_again_and_again(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """B: the query catches its stop and calls, for ever, a nested routine the watchdog
    stops each time (its timeout_ms): does each stop reopen the 10 s window?"""
    err, took = _stopped(red, conn, how, "SELECT red74.respin()")
    assert err is not None
    assert took < 0.3 + BOUND_PENDING, (err.sqlstate, _first(err), round(took, 2))


def test_b_documented_a_cancel_request_a_short_query_catches_is_consumed(
    red: str, conn: psycopg.Connection[Any]
) -> None:
    """B (documented, README "a cancel request the query catches is consumed there"): the
    client cancels once; the routine's query under way catches it and returns within GRACE,
    and the routine goes on with its next query, to its end (15 s). Not a break of the
    promise as written (no query ran on for a second); it PASSES on the documented
    behaviour: the call completes and the session lives."""
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SELECT red74.quick()")
        threading.Timer(0.5, c.cancel_safe).start()
        err, took = _with_ender(conn, c, "SELECT red74.short_catches(75)")
        print("\nOBS", err and err.sqlstate, _first(err), round(took, 2))
        assert err is None and not c.closed and took > 14, (
            err and err.sqlstate,
            _first(err),
            round(took, 2),
        )


@pytest.mark.parametrize("how", ["none", "statement_timeout"])
def test_a_outer_query_going_on_after_a_nested_call_stopped(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """A (borderline): the nested routine's query caught its own deadline and ran on into
    the killer's first look (since = ~1.2 s), then returned before the confirming look; its
    call stopped (57014), which the outer query caught (WHEN query_canceled: it is a stop,
    of the outer call too, sticky) and slept on (12 s), with no stop of its own. Observed:
    the nested stop's 10 s window (CLOCK[2]) keeps it until ~11.2 s, then the next look finds
    it running and, with the stale `since` of 1.2 s, ends the session at once (~11.5 s).
    Judged not a false kill (the outer query caught a 57014 and went on): PASSES where the
    session lives or its end says it ran on."""
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SELECT red74.quick()")
        if how == "statement_timeout":
            c.execute("SET statement_timeout = '30s'")  # (an outer stop far off)
        err, took = _with_ender(conn, c, "SELECT red74.outer_goes_on()")
        ended = c.closed or c.broken
        print("\nOBS", err and err.sqlstate, _first(err), round(took, 2), ended)
        assert err is not None and err.sqlstate == "57014"
        assert not ended or "ran on for a second" in _first(err), (_first(err), round(took, 2))


@pytest.mark.parametrize("how", ["cancel", "statement_timeout", "timeout_ms"])
def test_b_a_stop_landing_in_a_nested_routines_query_caught_by_the_outer(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """B: the stop lands while a routine called through SQL inside the routine's query has
    its own query under way (depth 2); the nested call fails with 57014, which the outer
    query catches, then it sleeps on for ever. The session must end within GRACE + CONFIRM
    (or GRACE + UNWIND: the nested call's stop gives Python 10 s) and a look."""
    routine = "red74.nested_catch_timed()" if how == "timeout_ms" else "red74.nested_catch()"
    err, took = _stopped(red, conn, how, f"SELECT {routine}")
    assert err is not None
    assert took < 0.3 + BOUND_PENDING, (err.sqlstate, _first(err), round(took, 2))


# A recursive PL/pgSQL function, a block with a handler for division_by_zero (not the
# stop) at each level, whose recursive query's text is 100 kB (a literal): the error a stop
# raises at the bottom carries the context of every level ("SQL statement ..."), which
# PL/pgSQL copies (CopyErrorData, then ReThrowError) at each level on the way up: 250
# levels, ~25 MB copied ~500 times, ~5 s of PostgreSQL's own error path, interrupts not
# held, no cancel pending, the query's own subtransaction not yet aborted
DEEP = (
    "CREATE FUNCTION public.deep_rec(n int) RETURNS int LANGUAGE plpgsql AS $f$ BEGIN BEGIN "
    "IF n > 0 THEN PERFORM public.deep_rec(n - 1) FROM (SELECT 1) s WHERE length('"
    + "x"
    * 100000
    + "') > 0; ELSE PERFORM pg_sleep(30); END IF; "
    "EXCEPTION WHEN division_by_zero THEN RETURN -1; END; RETURN 0; END $f$"
)


@pytest.mark.parametrize("how", ["statement_timeout", "cancel"])
def test_a_a_long_error_path_through_nested_blocks_is_not_running_on(
    red: str, conn: psycopg.Connection[Any], how: str
) -> None:
    """A: the routine's query catches nothing of its stop; PostgreSQL takes it at once (in
    pg_sleep) and spends ~5 s carrying the error up 250 levels of nested blocks. The call
    must fail with its stop (57014) and the session go on."""
    conn.execute(DEEP)
    with psycopg.connect(red, autocommit=True) as c:
        c.execute("SELECT red74.quick()")
        if how == "statement_timeout":
            c.execute("SET statement_timeout = '300ms'")
        with cancel_after(c, 0.3) if how == "cancel" else contextlib.nullcontext():
            err, took = _with_ender(conn, c, "SELECT red74.deep(250)")
        try:
            after: Any = c.execute("SELECT red74.quick()").fetchone()
        except psycopg.Error as exc:
            after = exc
        ended = c.closed or c.broken or after != (1,)
        print("\nAFTER", repr(after)[:300])
        print("\nOBS", err and err.sqlstate, _first(err)[:200], round(took, 2), ended)
        assert err is not None and err.sqlstate == "57014"
        assert not ended, (_first(err)[:200], round(took, 2))
