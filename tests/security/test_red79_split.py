"""Round 79: the split call (commit 5c4a7ec) — a routine's `call` entry function calls the
routine's function itself from bytecode, between the Entry's enter(function) and
leave(result), with failed() in its handler (routines._CALL_SPLIT, entry.c split_*), so
stops can land between the steps (after enter's, leave's and failed's CALL).

Promises attacked: every call is stoppable within its limits and stops cannot be swallowed;
a call leaves nothing behind (module in CALLING, settings level, role, search_path,
deadline, contextvars, decimal context); no crash or SystemError reaches a user. A passing
test: the promise held. Each test's docstring says what it tried."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster

from ..integration.test_entry_library import IN_USE
from .conftest import mallory_dsn, timed, value

SLACK = 0.8
GRACE = 1.0  # the backstop's, for a swallowed stop

MODULE = """
import decimal
from typing import Any

from pyfuncs import db, stored_function


def _busy(k: int) -> int:
    n = 0
    for i in range(k):
        n += i
    return n


def _spin_self(self: object) -> None:
    _busy(30_000_000)


def _slow_str(self: object) -> str:
    _busy(30_000_000)
    return "slow"


def _stubborn_str(self: object) -> str:
    while True:
        try:
            _busy(30_000_000)
        except BaseException:
            pass


def _query_del(self: object) -> None:
    db.execute("SELECT set_config('app.r79', 'finalizer', false)")


KEEP: list[Any] = []


def _prec_gen() -> Any:
    with decimal.localcontext(prec=3) as c:
        yield c


def _set_prec() -> None:
    g = _prec_gen()
    next(g)
    KEEP.append(g)  # suspended inside its `with`: the context it set stays current


def _prec_del(self: object) -> None:
    _set_prec()


def _gen_set(k: int) -> Any:
    db.execute("SELECT set_config('app.r79', 'finish', false)")
    yield k


def _gen_path(k: int) -> Any:
    db.execute("SELECT set_config('search_path', 'pg_catalog', false)")
    yield k


def _gen_prec(k: int) -> Any:
    _set_prec()
    yield k


_Fin = type("_Fin", (), {"__del__": _spin_self})
_FinDict = type("_FinDict", (dict,), {"__del__": _spin_self})
_QueryDict = type("_QueryDict", (dict,), {"__del__": _query_del})
_PrecFin = type("_PrecFin", (), {"__del__": _prec_del})
_SlowErr = type("_SlowErr", (Exception,), {"__str__": _slow_str, "__repr__": _slow_str})
_StubbornErr = type("_StubbornErr", (Exception,), {"__str__": _stubborn_str})
_FinErr = type("_FinErr", (Exception,), {"__del__": _spin_self})


class _BigList(list):
    pass


@stored_function(schema="r79")
def quick(n: int) -> int:
    return n + 1


@stored_function(schema="r79")
def state() -> str:
    third = str(decimal.Decimal(1) / decimal.Decimal(3))
    with decimal.localcontext() as c:
        prec = c.prec
    return "|".join([
        str(db.fetchval("SELECT coalesce(current_setting('app.r79', true), '')")),
        str(db.fetchval("SELECT current_user")),
        str(db.fetchval("SELECT current_setting('search_path')")),
        str(prec),
        third,
    ])


@stored_function(schema="r79", timeout_ms=100)
def spin_ret(k: int) -> int:
    return _busy(k)


@stored_function(schema="r79", timeout_ms=100)
def spin_fin(k: int) -> int:
    _busy(k)
    x = _Fin()
    return 1


@stored_function(schema="r79", timeout_ms=100)
def result_fin(k: int) -> Any:
    _busy(k)
    return _FinDict(a=1)


@stored_function(schema="r79", timeout_ms=100)
def exc_fin(k: int) -> int:
    _busy(k)
    x = _Fin()
    raise ValueError("a local with a finalizer")


@stored_function(schema="r79", timeout_ms=100)
def exc_arg_fin(k: int) -> int:
    _busy(k)
    raise ValueError(_Fin())


@stored_function(schema="r79", timeout_ms=100)
def exc_self_fin(k: int) -> int:
    _busy(k)
    raise _FinErr("an exception with a finalizer")


@stored_function(schema="r79", timeout_ms=100)
def exc_slow_str(k: int) -> int:
    _busy(k)
    raise _SlowErr("x")


@stored_function(schema="r79", timeout_ms=100)
def exc_stubborn_str(k: int) -> int:
    _busy(k)
    raise _StubbornErr("x")


@stored_function(schema="r79", timeout_ms=100)
def slow_finish(n: int) -> list[int]:
    return _BigList(range(n))


@stored_function(schema="r79")
def set_then_spin(k: int) -> int:
    db.execute("SELECT set_config('app.r79', 'stopped', false)")
    _set_prec()
    return _busy(k)


@stored_function(schema="r79", timeout_ms=100)
def set_then_spin_limited(k: int) -> int:
    db.execute("SELECT set_config('app.r79', 'stopped', false)")
    _set_prec()
    return _busy(k)


@stored_function(schema="r79")
def result_queries(k: int) -> Any:
    return _QueryDict(a=k)


@stored_function(schema="r79")
def finish_sets(k: int) -> list[int]:
    return _gen_set(k)  # type: ignore[return-value]


@stored_function(schema="r79")
def finish_path(k: int) -> list[int]:
    return _gen_path(k)  # type: ignore[return-value]


@stored_function(schema="r79")
def finish_prec(k: int) -> list[int]:
    return _gen_prec(k)  # type: ignore[return-value]


@stored_function(schema="r79")
def fail_after_set(k: int) -> int:
    db.execute("SELECT set_config('app.r79', 'failed', false)")
    _set_prec()
    raise ValueError("after a setting")


@stored_function(schema="r79")
def nest_set(d: int) -> str:
    db.execute("SELECT set_config('app.r79', $1, false)", [str(d)])
    inner = ""
    if d > 0:
        inner = db.fetchval("SELECT r79.nest_set($1)", [d - 1])
    mine = db.fetchval("SELECT current_setting('app.r79')")
    return f"{mine}<{inner}"


@stored_function(schema="r79")
def nest_fail(d: int) -> str:
    db.execute("SELECT set_config('app.r79', $1, false)", [str(d)])
    if d == 0:
        raise ValueError("innermost")
    try:
        db.fetchval("SELECT r79.nest_fail($1)", [d - 1])
    except Exception:
        pass
    return str(db.fetchval("SELECT current_setting('app.r79')"))


@stored_function(schema="r79", timeout_ms=150)
def nest_spin(d: int, k: int) -> int:
    if d == 0:
        return _busy(k)
    try:
        return db.fetchval("SELECT r79.nest_spin($1, $2)", [d - 1, k])
    except Exception:
        return -1


@stored_function(schema="r79")
def outer_catches(k: int) -> int:
    try:
        return db.fetchval("SELECT r79.spin_ret($1)", [k])
    except BaseException:
        return -1


@stored_function(schema="r79")
def edge(how: str, depth: int) -> str:
    def down(n: int) -> str:
        if n > 0:
            return down(n - 1)
        if how == "int":
            return str(db.fetchval("SELECT $1::bigint + 1", [n]))
        if how == "float":
            return str(db.fetchval("SELECT $1::float8", [1.5]))
        if how == "list":
            return str(db.fetchval("SELECT $1::bigint[]", [[1, 2]]))
        if how == "cursor":
            return str(list(db.cursor("SELECT g FROM generate_series(1, $1::int) g", [2])))
        if how == "savepoint":
            with db.subtransaction():
                return "savepoint"
        return str(db.fetchval("SELECT r79.quick($1)", [n]))  # a routine's int result

    try:
        return down(depth)
    except RecursionError:
        return "recursion"


@stored_function(schema="r79")
def deep(depth: int, again: int) -> str:
    def down(n: int) -> str:
        if n == 0:
            if again:
                return str(db.fetchval("SELECT r79.deep($1, 0)", [again]))
            return "bottom"
        return down(n - 1)

    try:
        return down(depth)
    except RecursionError:
        return "recursion"


@stored_function(schema="r79")
def keep_in_arg(xs: list[int], k: int) -> int:
    xs.append(_PrecFin())
    return _busy(k)


@stored_function(schema="r79")
def spin(k: int) -> int:
    return _busy(k)
"""

RUNTIME = """
CREATE OR REPLACE FUNCTION public.r79_runtime() RETURNS text LANGUAGE plpython3u AS $$
import sys, decimal, contextvars
w = sys.modules["pyfuncs_pg.watchdog"]
i = sys.modules["pyfuncs_pg.identity"]
b = sys.modules["pyfuncs_pg.backstop"]
return "|".join(str(x) for x in (
    w.CALLING[0] is None, i.SETTINGS[0], i.SETTINGS[1] is None,
    decimal.getcontext().prec, len(contextvars.copy_context()),
    w.WATCHDOG.stop is None, sys.gettrace() is None,
))
$$;
"""
CLEAN_RUNTIME = "True|0|True|28|{ctx}|True|True"


@pytest.fixture
def r79(
    dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Path, mallory_role: str
) -> Any:
    conn.execute(IN_USE)
    conn.execute(RUNTIME)
    (tmp_path / "r79_mod.py").write_text(MODULE)
    deploying.deploy(conn, str(tmp_path / "r79_mod.py"))
    conn.execute("GRANT USAGE ON SCHEMA r79 TO mallory")
    conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA r79 TO mallory")
    conn.commit()
    postmaster = cluster.postmaster_pid()
    yield dsn
    assert cluster.postmaster_pid() == postmaster, "the cluster restarted"


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(mallory_dsn(dsn), autocommit=True)


class Session:
    """A mallory session, with what a clean backend looks like between calls."""

    def __init__(self, dsn: str) -> None:
        self.conn = _connect(dsn)
        assert value(self.conn, "SELECT r79.quick(1)") == 2
        assert "split" in value(self.conn, "SELECT public.entries_in_use()")
        self.clean_state = value(self.conn, "SELECT r79.state()")
        self.clean_runtime = value(self.conn, "SELECT public.r79_runtime()")
        assert self.clean_runtime.startswith("True|0|True|28|"), self.clean_runtime

    def stopped(self, query: str, limit: float = 0.1, sqlstate: str = "57014") -> None:
        """`query` fails with `sqlstate` within its limit; the session is as it was."""
        got, took = timed(self.conn, query)
        assert isinstance(got, psycopg.Error), (query, got, took)
        assert got.sqlstate == sqlstate, (query, got.sqlstate, str(got), took)
        assert took < limit + SLACK + GRACE, (query, took)
        self.unchanged()

    def value_or_stop(self, query: str, limit: float = 0.1) -> Any:
        """A value only if it came within the limit, else a stop; the session as it was."""
        got, took = timed(self.conn, query)
        if isinstance(got, psycopg.Error):
            assert got.sqlstate == "57014", (query, got.sqlstate, str(got))
            assert took < limit + SLACK + GRACE, (query, took)
        else:
            assert took < limit + SLACK, (query, got, took)
        self.unchanged()
        return got

    def unchanged(self) -> None:
        assert value(self.conn, "SELECT r79.quick(41)") == 42
        assert value(self.conn, "SELECT r79.state()") == self.clean_state
        assert value(self.conn, "SELECT public.r79_runtime()") == self.clean_runtime
        assert value(self.conn, "SELECT current_user") == "mallory"
        assert value(self.conn, "SELECT coalesce(current_setting('app.r79', true), '')") == ""

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def session(r79: str) -> Any:
    s = Session(r79)
    yield s
    s.close()


def _no_internals(exc: BaseException) -> None:
    text = str(exc)
    for word in ("SystemError", "record was lost", "without a call under way", "failed()"):
        assert word not in text, text


# --- 1. stops landing at each point of the split ------------------------------------------


def test_time_sweep_of_a_plain_spin_across_the_return(session: Session) -> None:
    """spin_ret(k) with timeout_ms=100, k swept so the stop lands before the function's
    return, after it (before leave's CALL), after leave's CALL and before the frame's
    RETURN: a value only within the limit, else 57014; nothing left over."""
    for k in range(0, 4_000_000, 100_000):
        session.value_or_stop(f"SELECT r79.spin_ret({k})")


def test_time_sweep_with_a_finalizer_at_the_function_return(session: Session) -> None:
    """A local whose __del__ (set via type(), no guard) spins for seconds, freed as the
    function's frame ends inside the entry frame's evaluation: never a value, stopped."""
    for k in (0, 100_000, 500_000, 1_000_000, 2_000_000, 3_000_000):
        session.stopped(f"SELECT r79.spin_fin({k})")


@pytest.mark.parametrize("routine", ["exc_fin", "exc_arg_fin", "exc_self_fin"])
def test_an_exception_whose_frames_or_args_or_self_finalize_slowly(
    session: Session, routine: str
) -> None:
    """The exception failed() takes out of the handler holds a frame with a spinning local,
    a spinning argument, or is itself finalized slowly: released inside failed() (under
    the call's limits), or with a stop swallowed there: 57014 within the limit."""
    for k in (0, 500_000, 2_000_000):
        got, took = timed(session.conn, f"SELECT r79.{routine}({k})")
        assert isinstance(got, psycopg.Error), got
        _no_internals(got)
        assert got.sqlstate in ("57014", "XX000", "P0001", "PF001") or got.sqlstate, got
        assert took < 0.1 + SLACK + GRACE, (routine, k, took, str(got))
        session.unchanged()


@pytest.mark.parametrize("routine", ["exc_slow_str", "exc_stubborn_str"])
def test_an_exception_whose_str_spins_is_stopped_in_its_conversion(
    session: Session, routine: str
) -> None:
    """failed() converts the exception (fail: its __str__, the routine's code) in the
    call's context: a __str__ that spins, or one that swallows every stop in a loop, is
    stopped within the limit."""
    for k in (0, 1_000_000):
        session.stopped(f"SELECT r79.{routine}({k})")


def test_a_slow_result_conversion_in_leave_is_stopped(session: Session) -> None:
    """finish inside leave() (a list subclass of millions of ints): a value only within the
    limit, else stopped (or a result limit), the session as it was."""
    for n in (10_000, 300_000, 3_000_000):
        got, took = timed(session.conn, f"SELECT r79.slow_finish({n})")
        if isinstance(got, psycopg.Error):
            _no_internals(got)
            assert took < 0.1 + SLACK + GRACE, (n, took)
        else:
            assert took < 0.1 + SLACK, (n, took)
        session.unchanged()


def test_the_result_finalizer_runs_outside_the_call(session: Session) -> None:
    """The result (a dict subclass) is let go of after leave() gave everything back: its
    __del__ spins (refused: no call of its module) or queries set_config(..., false) as
    the caller outside the call: neither runs on nor leaves a setting."""
    for k in (0, 1_000_000):
        session.value_or_stop(f"SELECT r79.result_fin({k})")
    for k in range(3):
        assert value(session.conn, f"SELECT r79.result_queries({k})") == {"a": k}
        session.unchanged()


# --- 2. settings, identity, contexts ------------------------------------------------------


def test_a_stopped_call_leaves_no_settings_or_decimal_context(session: Session) -> None:
    """set_config(..., false) and decimal precision, then a spin stopped by timeout_ms, by
    statement_timeout and by pg_cancel_backend: the next call sees neither."""
    for k in (10_000_000, 30_000_000, 100_000_000):
        session.stopped(f"SELECT r79.set_then_spin_limited({k})")
    session.conn.execute("SET statement_timeout = '150ms'")
    got, took = timed(session.conn, "SELECT r79.set_then_spin(100000000)")
    session.conn.execute("RESET statement_timeout")
    assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", got
    assert took < 0.15 + SLACK + GRACE, took
    session.unchanged()
    pid = value(session.conn, "SELECT pg_backend_pid()")

    def cancel() -> None:
        time.sleep(0.3)
        with _connect(session.conn.info.dsn.replace("", "")) as other:
            other.execute("SELECT pg_cancel_backend(%s)", [pid])

    t = threading.Thread(target=cancel)
    t.start()
    session.stopped("SELECT r79.set_then_spin(100000000)", 0.3)
    t.join()


def test_a_failed_call_leaves_no_settings_or_decimal_context(session: Session) -> None:
    """set_config and decimal precision, then an exception through failed()."""
    for _ in range(3):
        got, _took = timed(session.conn, "SELECT r79.fail_after_set(0)")
        assert isinstance(got, psycopg.Error), got
        assert "after a setting" in str(got), str(got)
        session.unchanged()


def test_settings_changed_while_leave_makes_the_result_are_undone(session: Session) -> None:
    """A result that is a generator (iterated by finish inside leave()) that sets a setting,
    changes search_path, or sets decimal precision: undone as leave gives back,
    search_path refused (42501)."""
    for q in ("finish_sets", "finish_path", "finish_prec"):
        got, _ = timed(session.conn, f"SELECT r79.{q}(1)")
        if isinstance(got, psycopg.Error):  # (a generator is refused as a result)
            _no_internals(got)
        session.unchanged()


def test_another_role_after_stopped_calls_on_a_pooled_session(
    r79: str, conn: psycopg.Connection[Any]
) -> None:
    """A pooled session: mallory's calls stopped at every point of the split (SET SESSION
    AUTHORIZATION), then the superuser's call sees its own role and no setting."""
    conn.autocommit = True
    conn.execute("SELECT r79.quick(1)")
    before = value(conn, "SELECT r79.state()")
    runtime = value(conn, "SELECT public.r79_runtime()")
    for k in range(0, 3_000_000, 300_000):
        conn.execute("SET SESSION AUTHORIZATION mallory")
        for q in (f"r79.set_then_spin_limited({k})", f"r79.spin_fin({k})"):
            got, _ = timed(conn, f"SELECT {q}")
            if isinstance(got, psycopg.Error):
                _no_internals(got)
        conn.execute("RESET SESSION AUTHORIZATION")
        assert value(conn, "SELECT r79.state()") == before
        assert value(conn, "SELECT public.r79_runtime()") == runtime
        assert value(conn, "SELECT session_user") == value(conn, "SELECT current_user")
        assert value(conn, "SELECT current_user") != "mallory"


def test_a_finalizer_dropped_at_enter_runs_in_the_calls_context(session: Session) -> None:
    """A list argument the routine filled with an object whose __del__ sets decimal's
    precision; the entry frame (holding the argument) is kept by the watchdog and let go
    of (GRAVE) at a later call, then dropped by the next call's enter: the finalizer must
    not set the backend's own decimal context (where PL/Python's other functions compute,
    another role's included). (Held: PL/Python's globals keep the argument until the
    routine's next call sets them, outside every call, where the finalizer is refused.)"""
    c = session.conn
    for _ in range(3):
        c.execute("SELECT r79.keep_in_arg(ARRAY[1, 2], 3000000)")  # seen by a look
        c.execute("SELECT r79.spin(3000000)")  # a look sees another call: GRAVE
        c.execute("SELECT r79.quick(1)")  # its enter drops the frame
    runtime = value(c, "SELECT public.r79_runtime()")
    assert runtime == session.clean_runtime, runtime


# --- 3. nested calls through SQL ----------------------------------------------------------


def test_nested_calls_of_the_same_routine_keep_their_own_levels(session: Session) -> None:
    """nest_set(d): each level sets app.r79 to its depth and calls itself: each level reads
    its own value after the inner call ended (records per frame, innermost last)."""
    assert value(session.conn, "SELECT r79.nest_set(4)") == "4<3<2<1<0<"
    session.unchanged()


def test_nested_failures_caught_at_each_depth(session: Session) -> None:
    """The innermost call fails through failed(); each outer one catches the query's error
    and carries on: its own setting, no record mis-ended, nothing left."""
    for d in (1, 2, 5):
        assert value(session.conn, f"SELECT r79.nest_fail({d})") == str(d)
        session.unchanged()


def test_nested_stop_at_every_depth_is_not_swallowed(session: Session) -> None:
    """nest_spin(d, k): the innermost call spins past timeout_ms; every outer call catches
    the query's error: the stop is sticky for the whole statement (57014) within limits."""
    for d in (0, 1, 3):
        for k in (100_000_000,):
            session.stopped(f"SELECT r79.nest_spin({d}, {k})", 0.15)


def test_an_unlimited_caller_cannot_swallow_an_inner_stop(session: Session) -> None:
    """outer_catches (no timeout_ms) calls spin_ret (timeout_ms=100) and catches anything:
    a value only if the inner call came in time."""
    for k in (0, 2_000_000, 100_000_000):
        session.value_or_stop(f"SELECT r79.outer_catches({k})")


def test_calls_at_the_recursion_limit(session: Session) -> None:
    """Python recursion down to near the recursion limit, then a nested call of the same
    routine (its entry frame, enter's, the function's, leave's and failed's CALLs at the
    limit's edge): a value or a clean error, never a SystemError or a lost record, and
    the session as it was."""
    c = session.conn
    for depth in [*range(960, 1000), 2000]:
        got, _ = timed(c, f"SELECT r79.deep({depth}, {depth})")
        if isinstance(got, psycopg.Error):
            _no_internals(got)
        else:
            assert got[0] in ("bottom", "recursion"), got
        session.unchanged()


@pytest.mark.parametrize("how", ["int", "float", "list", "cursor", "savepoint", "nested"])
def test_queries_at_the_recursion_limits_edge(session: Session, how: str) -> None:
    """Found by round 79: PL/Python converts a query's parameters (and a routine's result
    inside it) with Python's C API, which refuses an int's str() at the recursion limit, and
    does not check: the backend crashed. A routine's query now needs 50 frames to spare, and
    fails with a RecursionError closer than that. Each kind of query, from every depth near
    the limit: a value or "recursion", never a crash."""
    c = session.conn
    for depth in [*range(900, 1000, 3), 2000]:
        got, _ = timed(c, "SELECT r79.edge(%s, %s)", [how, depth])
        if isinstance(got, psycopg.Error):
            _no_internals(got)
            assert "RecursionError" in str(got), got
        else:
            assert got[0] in ("recursion", "1", "1.5", "[1, 2]", "[{'g': 1}, {'g': 2}]",
                              "savepoint"), got  # fmt: skip
        session.unchanged()


# --- 4. the session's stops ---------------------------------------------------------------


def test_statement_timeout_sweep(session: Session) -> None:
    """statement_timeout at varying values against routines with finalizers and slow
    conversions: every one stopped, nothing left."""
    for ms in (20, 60, 120):
        session.conn.execute(f"SET statement_timeout = '{ms}ms'")
        for q in ("r79.set_then_spin(100000000)", "r79.exc_stubborn_str(0)"):
            got, took = timed(session.conn, f"SELECT {q}")
            assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", (q, got)
            assert took < ms / 1000 + SLACK + GRACE, (q, took)
        session.conn.execute("RESET statement_timeout")
        session.unchanged()


def test_terminate_ends_a_split_call_and_other_sessions_carry_on(r79: str) -> None:
    """pg_terminate_backend on a call spinning in an exception's __str__ (inside
    failed()): the session ends, another session's calls are unaffected."""
    victim = _connect(r79)
    victim.execute("SELECT r79.quick(1)")
    pid = value(victim, "SELECT pg_backend_pid()")

    def terminate() -> None:
        time.sleep(0.3)
        with _connect(r79) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])

    t = threading.Thread(target=terminate)
    t.start()
    got, took = timed(victim, "SELECT r79.exc_stubborn_str(100000000)")
    t.join()
    assert isinstance(got, psycopg.Error), got
    assert took < 0.3 + SLACK + GRACE + 1.0, took
    victim.close()
    s = Session(r79)
    s.unchanged()
    s.close()
