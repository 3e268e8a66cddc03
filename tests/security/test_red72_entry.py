"""Round 72: the entry library (pyfuncs/_pg/entry.c) attacked.

A call's entry and a routine's queries now run in C (Entry, Queries) where the runtime's
Python (routines._CALL, db.Db._run) ran before, and the claim is that both do the same
work. Each scenario here runs the same calls in a backend that uses the library and in a
backend switched to the runtime's Python before its first call, and expects the same
outcome of each (the value, or the error's SQLSTATE and message), the backend alive after,
and nothing left behind for the next call (another role's).
"""

from __future__ import annotations

import re
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying

from ..integration.test_entry_library import IN_USE

MODULE = """
import datetime
import decimal
import enum
import uuid
from typing import Any
from typing import Iterator as typing_Iterator

from pyfuncs import db, stored_function

KEPT: list[Any] = []


class Loud(Exception):
    def __str__(self) -> str:
        return "loud " + str(db.fetchval("SELECT current_user"))


class Broken(Exception):
    def __str__(self) -> str:
        raise ValueError("no text")


class Forever(Exception):
    def __str__(self) -> str:
        n = 0
        while True:
            n += 1


class Big(enum.IntEnum):
    TOP = (1 << 63) - 1
    OVER = 1 << 63


@stored_function(schema="r72", roles=["student", "manager"])
def ints(which: int) -> int:
    values = [(1 << 63) - 1, -(1 << 63), 1 << 63, -(1 << 63) - 1, True, Big.TOP, Big.OVER, 0, -1]
    return values[which]


@stored_function(schema="r72", roles=["student", "manager"])
def texts(which: int) -> str:
    class S(str):
        pass
    return [S("sub"), "x" * 5, S("y" * 3)][which]


@stored_function(schema="r72", roles=["student", "manager"])
def raises(which: int) -> str:
    if which == 0:
        raise Loud("a")
    if which == 1:
        raise Broken("b")
    if which == 2:
        raise KeyboardInterrupt()
    if which == 3:
        raise SystemExit(3)
    if which == 4:
        raise GeneratorExit()
    if which == 5:
        raise StopIteration(5)
    if which == 6:
        return {1, 2}  # not plain: finish refuses it
    return "none"


@stored_function(schema="r72", roles=["student", "manager"], timeout_ms=300)
def loops_in_str() -> str:
    raise Forever("f")


@stored_function(schema="r72", roles=["student", "manager"])
def dated(a: datetime.date, b: uuid.UUID, c: int) -> str:
    return f"{a} {b} {c}"


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def depth(n: int) -> int:
    if n <= 0:
        return 0
    return 1 + db.fetchval("SELECT r72.depth($1)", [n - 1])

class Q(str):
    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("SELECT 1")


class Lying(list):
    def __len__(self) -> int:
        return 5

    def __iter__(self):
        return iter([1])


class Querying:
    def __iter__(self):
        KEPT.append(db.fetchval("SELECT 'inner'"))
        return iter([7])


class Raising:
    def __iter__(self):
        raise KeyError("params")


class Dropped:
    def __del__(self) -> None:
        KEPT.append(db.fetchval("SELECT current_user"))


def _fresh():
    yield Dropped()
    yield 2


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def query(which: int) -> str:
    KEPT.clear()
    if which == 0:
        got = db.fetchval(Q("SELECT 2"))
    elif which == 1:
        got = db.fetchval("SELECT $1::int", Lying([3]))
    elif which == 2:
        got = db.fetchval("SELECT $1::int", Querying())
    elif which == 3:
        got = db.fetchval("SELECT $1::int", Raising())
    elif which == 4:
        got = db.fetchval("SELECT $1::int + $2::int", _fresh())
    elif which == 5:
        got = db.fetchval("SELECT $1::int", (9,))
    elif which == 6:
        got = db.fetchval("SELECT FROM generate_series(1, 2)")
    elif which == 7:
        got = db.fetchone("SELECT FROM generate_series(1, 2)")
    elif which == 8:
        got = db.execute("SELECT 1 WHERE false").rowcount
    elif which == 9:
        got = db.fetchval("SELECT $1::numeric + 1", [decimal.Decimal("1.5")])
    elif which == 10:
        got = db.fetchval("SELECT $1::jsonb", [{"a": [1, 2]}])
    elif which == 11:
        got = db.fetchval("SELECT $1::date", [datetime.date(2020, 1, 2)])
    elif which == 12:
        got = db.fetchval("SELECT $1::uuid", [uuid.UUID(int=5)])
    elif which == 13:
        got = db.fetchval("SELECT $1::bigint", [1 << 63])
    elif which == 14:
        got = db.fetchval("SELECT $1", [None])
    elif which == 15:
        got = db.fetchval(b"SELECT 1")
    elif which == 16:
        got = db.fetchval("SELECT $1::int", 5)
    elif which == 17:
        got = db.fetchval("SELECT $1::text", "ab")
    elif which == 18:
        got = db.fetchval("SELECT 1/0")
    elif which == 19:
        got = db.execute("CREATE TEMP TABLE t72 (x int)")
    elif which == 20:
        got = db.fetchone("SELECT 1 AS a, 2 AS b")
    elif which == 21:
        got = db.execute("SELECT $1::text AS a", ["x"])[0]
    elif which == 22:
        moment = datetime.datetime(2020, 1, 2, tzinfo=datetime.timezone.utc)
        got = db.fetchval("SELECT $1::timestamptz", [moment])
    else:
        got = None
    return repr((got, KEPT))


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def becomes(how: int) -> str:
    statements = [
        "SELECT set_config('role', 'manager', false)",
        "SELECT set_config('request.jwt.claims', '{}', false)",
        "SELECT set_config('search_path', 'pg_catalog', false)",
        "SET ROLE manager",
        "SELECT pg_catalog.set_config('ROLE', 'manager', true)",
        "SET search_path = public",
        "SELECT set_config('Search_Path', 'pg_catalog', true)",
        "SET SESSION AUTHORIZATION manager",
    ]
    methods = [db.fetchval, db.fetchone, db.execute]
    try:
        methods[how % 3](statements[how // 3])
    except Exception as exc:
        return "caught " + repr(exc)[:40]
    return "changed"


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def who() -> str:
    return str(db.fetchval("SELECT current_user || ' ' || current_setting('search_path')"))


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile", max_db_ops=3)
def counted(n: int) -> int:
    total = 0
    for i in range(n):
        try:
            total += db.fetchval("SELECT 1")
        except Exception:
            total += 100
    return total


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile", max_db_ops=4)
def counted_outer(n: int) -> int:
    return db.fetchval("SELECT r72.counted($1)", [n]) + db.fetchval("SELECT 1")


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def keep_method() -> str:
    KEPT[:] = [db.fetchval]
    return "kept"


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def use_method() -> str:
    return str(KEPT[0]("SELECT current_user")) if KEPT else "none"

@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile", timeout_ms=200)
def quick(fail: bool) -> int:
    if fail:
        raise ValueError("inner")
    return 1


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile", timeout_ms=3000)
def outer_sleeps(fail: bool) -> str:
    try:
        db.fetchval("SELECT r72.quick($1)", [fail])
    except Exception as exc:
        KEPT.append(repr(exc)[:20])
    db.fetchval("SELECT pg_sleep(0.6)")
    return "slept"


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def sleeps(seconds: float) -> str:
    db.fetchval("SELECT pg_sleep($1)", [seconds])
    return "slept"


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def spins_catching() -> str:
    n = 0
    while True:
        try:
            db.fetchval("SELECT pg_sleep(0.05)")
        except Exception:
            n += 1

@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def wide(a0: datetime.date, a1: uuid.UUID, a2: datetime.date, a3: int, a4: datetime.date,
         a5: uuid.UUID, a6: datetime.date, a7: int, a8: datetime.date, a9: uuid.UUID,
         a10: datetime.date) -> str:
    if a3 < 0:
        raise ValueError(f"{a0} {a10}")
    if a3 == 0:
        return {a0}  # not plain
    return f"{a0} {a1} {a2} {a4} {a5} {a6} {a8} {a9} {a10}"

@stored_function(schema="r72", roles=["student", "manager"], max_result_bytes=100)
def sized(which: int) -> Any:
    return [(1 << 63) - 1, "x" * 50, "y" * 200, [1, 2, 3], None, 1 << 63][which]


@stored_function(schema="r72", roles=["student", "manager"], timeout_ms=150, volatility="volatile")
def slow_to_finish(n: int) -> list[dict[str, int]]:
    return [{"a": i, "b": i} for i in range(n)]


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def rows_of(n: int) -> list[int]:
    return db.fetchval("SELECT array_agg(r72.quick(false)) FROM generate_series(1, $1)", [n])


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def srf(n: int) -> typing_Iterator[int]:
    for i in range(n):
        yield db.fetchval("SELECT r72.quick(false) + $1", [i])

def _cleanup():
    try:
        yield 1
    finally:
        KEPT.append(db.fetchval("SELECT current_user"))


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def returns_generator() -> list[int]:
    KEPT.clear()
    g = _cleanup()
    next(g)
    return g


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def raises_holding_generator() -> str:
    KEPT.clear()
    g = _cleanup()
    next(g)
    raise ValueError("held")


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def kept() -> str:
    return repr(KEPT)

class Held:
    def __del__(self) -> None:
        KEPT.append(str(db.fetchval("SELECT current_user")))


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def returns_held() -> list[int]:
    KEPT.clear()
    return Held()


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def raises_holding(how: int) -> str:
    KEPT.clear()
    held = Held()
    if how == 0:
        raise ValueError("held")
    KEPT.append("x")
    return held

class Becomes(dict):
    def __del__(self) -> None:
        try:
            db.fetchval("SELECT set_config('role', 'manager', false)")
        except BaseException as exc:
            KEPT.append(repr(exc)[:60])


class BecomesQuietly(dict):
    def __del__(self) -> None:
        db.fetchval("SELECT set_config('role', 'manager', false)")


class Reads(dict):
    def __del__(self) -> None:
        with decimal.localcontext() as context:
            KEPT.append(f"{context.prec} " + " ".join(sorted(
                str(signal) for signal, up in context.flags.items() if up)))


class HeldRow(dict):
    def __del__(self) -> None:
        KEPT.append(str(db.fetchval("SELECT current_user")))


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def multi(op: int) -> Any:
    if op == 0:
        KEPT[:] = [db.fetchval]
        return "kept"
    if op == 1:
        return str(KEPT[0]("SELECT current_user")) if KEPT else "none"
    if op == 2:
        KEPT.clear()
        return Held()
    if op == 3:
        KEPT.clear()
        held = Held()
        raise ValueError("held")
    if op == 4:
        return repr([k for k in KEPT if type(k) is str])
    if op == 5:
        KEPT.clear()
        g = _cleanup()
        next(g)
        return g
    if op == 6:
        KEPT.clear()
        g = _cleanup()
        next(g)
        raise ValueError("held")
    if op == 7:
        KEPT.clear()
        return HeldRow(a=1)  # made plain (a dict) by finish: the original is let go of
    if op == 10:
        KEPT.clear()
        return Becomes(a=1)
    if op == 11:
        KEPT.clear()
        return BecomesQuietly(a=1)
    if op == 12:
        KEPT.clear()
        return Reads(a=1)
    if op == 13:
        with decimal.localcontext() as context:
            return f"{context.prec} " + " ".join(sorted(
                str(signal) for signal, up in context.flags.items() if up))
    if op == 8:  # long enough for the watchdog to see the call (and keep its entry frame)
        KEPT.clear()
        n = 0
        for i in range(3_000_000):
            n += i
        return HeldRow(a=n)
    return None

def _precise(prec: int):
    with decimal.localcontext(decimal.Context(prec=prec)):
        yield str(decimal.Decimal(1) / decimal.Decimal(7))


class Setter:
    def __del__(self) -> None:
        g = _precise(3)
        KEPT.append(next(g))
        KEPT.append(g)  # suspended inside its localcontext: the context stays set


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile")
def sets_context(how: int) -> Any:
    if how == 0:
        return Setter()  # refused: freed by the entry, inside the call, outside its Context
    if how == 1:
        setter = Setter()
        raise ValueError("freed with the exception")
    if how == 2:
        g = _precise(3)
        KEPT.append(next(g))
        KEPT.append(g)  # in the call's own Context
        return "kept"
    return repr([k for k in KEPT if type(k) is str])

@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile", timeout_ms=200)
def inner_spins() -> int:
    n = 0
    while True:
        n += 1


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile", timeout_ms=3000)
def outer_survives() -> str:
    try:
        db.fetchval("SELECT r72.inner_spins()")
    except Exception as exc:
        KEPT.append(repr(exc)[:30])
    db.fetchval("SELECT pg_sleep(0.6)")
    return "slept"

class Spins(dict):
    def __del__(self) -> None:
        n = 0
        while True:
            n += 1


class SpinsCatching(dict):
    def __del__(self) -> None:
        n = 0
        while True:
            try:
                while True:
                    n += 1
            except BaseException:
                continue


@stored_function(schema="r72", roles=["student", "manager"], volatility="volatile", timeout_ms=200)
def spins_after(how: int) -> Any:
    return [Spins, SpinsCatching][how](a=1)
"""

IN_PYTHON = (
    IN_USE
    + """
CREATE OR REPLACE FUNCTION public.seventh() RETURNS text LANGUAGE plpython3u AS $$
import decimal
return str(decimal.Decimal(1) / decimal.Decimal(7))
$$;
CREATE OR REPLACE FUNCTION public.divides(x numeric) RETURNS text LANGUAGE plpython3u AS $$
import decimal
try:
    return str(decimal.Decimal(1) / x)
except decimal.DivisionByZero:
    return "by zero"
$$;
CREATE OR REPLACE FUNCTION public.runtime_state() RETURNS text LANGUAGE plpython3u AS $$
import sys
watchdog, db = sys.modules["pyfuncs_pg.watchdog"], sys.modules["pyfuncs_pg.db"]
identity, backstop = sys.modules["pyfuncs_pg.identity"], sys.modules["pyfuncs_pg.backstop"]
return repr((watchdog.CALLING[0] is None, identity.SETTINGS[0], db._QUERYING[0],
             backstop.CLOCK[0], watchdog.WATCHDOG.stop is None if watchdog.WATCHDOG else None))
$$;
"""
)


def _outcome(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    try:
        row = conn.execute(query, params).fetchone()
        return ("value", row[0] if row else None)
    except psycopg.Error as exc:
        # (whether a stop says how long after the call began depends on whether the
        # watchdog had looked at the call yet: timing, not the entry)
        first = re.sub(r" \(after \d+ ms\)", "", str(exc).split("\n")[0])
        message = re.sub(r"\d+ ms", "N ms", first)
        return ("error", exc.sqlstate, message)


@pytest.fixture
def r72(conn: psycopg.Connection[Any], tmp_path: Path, dsn: str) -> str:
    conn.execute(IN_PYTHON)
    (tmp_path / "r72_mod.py").write_text(textwrap.dedent(MODULE))
    deploying.deploy(conn, str(tmp_path / "r72_mod.py"))
    return dsn


def _both(
    dsn: str, queries: list[Any], role: str | None = "student"
) -> tuple[list[Any], list[Any]]:
    """The outcomes of `queries` in a backend with the library and in one without."""
    got = []
    for python in (False, True):
        with psycopg.connect(dsn, autocommit=True) as conn:
            if python:
                assert conn.execute("SELECT public.python_entries()").fetchone() == ("python",)
            else:
                conn.execute("SELECT pyfuncs.boot()")
            if role:
                conn.execute(f"SET ROLE {role}")
            outcomes = [_outcome(conn, *((q,) if isinstance(q, str) else q)) for q in queries]
            conn.execute("RESET ROLE")
            in_use = conn.execute("SELECT public.entries_in_use()").fetchone()
            assert in_use is not None
            assert in_use[0].startswith("function" if python else "queries"), in_use
            outcomes.append(("state", conn.execute("SELECT public.runtime_state()").fetchone()))
            got.append(outcomes)
    return got[0], got[1]


def test_results_at_bigints_bounds_are_the_same(r72: str) -> None:
    c, p = _both(r72, [f"SELECT r72.ints({i})" for i in range(9)])
    assert c == p
    assert c[0] == ("value", (1 << 63) - 1) and c[1] == ("value", -(1 << 63))


def test_text_results_are_the_same(r72: str) -> None:
    c, p = _both(r72, [f"SELECT r72.texts({i})" for i in range(3)])
    assert c == p


def test_exceptions_leave_the_same(r72: str) -> None:
    c, p = _both(r72, [f"SELECT r72.raises({i})" for i in range(8)] + ["SELECT r72.loops_in_str()"])
    assert c == p


def test_converted_arguments_read_the_same(r72: str) -> None:
    queries = [
        "SELECT r72.dated('2020-01-02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 3)",
        "SELECT r72.dated('20200102', 'zz', 3)",
        "SELECT r72.dated('infinity', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 3)",
    ]
    c, p = _both(r72, queries)
    assert c == p


def test_recursion_through_sql_ends_the_same(r72: str) -> None:
    """Recursion through SQL ends in an error at the recursion limit with either entry
    (at a different depth: the C entry uses fewer frames), not a crash; the backend goes on."""
    c, p = _both(r72, ["SELECT r72.depth(10)", "SELECT r72.depth(100000)", "SELECT r72.depth(3)"])
    assert c[0] == p[0] == ("value", 10) and c[2] == p[2] == ("value", 3)
    assert c[1][:2] == p[1][:2] == ("error", "XX000")
    assert c[3] == p[3]


def test_queries_of_every_kind_are_the_same(r72: str) -> None:
    c, p = _both(r72, [f"SELECT r72.query({i})" for i in range(24)])
    for one, other in zip(c, p, strict=True):
        assert one == other


@pytest.mark.parametrize("how", range(24))
def test_identity_changes_fail_with_42501(r72: str, how: int) -> None:
    c, p = _both(r72, [f"SELECT r72.becomes({how})", "SELECT r72.who()"])
    assert c == p
    assert c[0][:2] == ("error", "42501"), c[0]
    assert c[1][1].startswith("student "), c[1]


def test_max_db_ops_counts_the_same(r72: str) -> None:
    c, p = _both(
        r72,
        [
            "SELECT r72.counted(3)",
            "SELECT r72.counted(4)",
            "SELECT r72.counted_outer(2)",
            "SELECT r72.counted_outer(3)",
            "SELECT r72.counted(1)",
        ],
    )
    assert c == p
    assert c[0] == ("value", 3) and c[1][:2] == ("error", "54000"), c
    assert c[2] == ("value", 3) and c[3][:2] == ("error", "54000"), c


def test_a_kept_method_queries_as_the_caller_of_the_call_it_is_used_in(r72: str) -> None:
    queries = ["SELECT r72.multi(0)", "RESET ROLE", "SET ROLE manager", "SELECT r72.multi(1)"]
    c, p = _both(r72, queries)
    assert c == p
    assert c[3] == ("value", "manager"), c


def test_a_nested_calls_deadline_is_given_back(r72: str) -> None:
    c, p = _both(
        r72,
        [
            "SELECT r72.outer_sleeps(false)",
            "SELECT r72.outer_sleeps(true)",
            "SELECT r72.outer_survives()",
        ],
    )
    assert c == p
    assert c[0] == ("value", "slept") and c[1] == ("value", "slept"), c


def _cancel_later(dsn: str, pid: int, after: float, how: str = "pg_cancel_backend") -> None:
    def cancel() -> None:
        time.sleep(after)
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute(f"SELECT {how}(%s)", [pid])

    threading.Thread(target=cancel, daemon=True).start()


@pytest.mark.parametrize("python", [False, True])
@pytest.mark.parametrize("routine", ["sleeps(5)", "spins_catching()"])
def test_a_cancel_stops_a_call_and_leaves_nothing(r72: str, python: bool, routine: str) -> None:
    with psycopg.connect(r72, autocommit=True) as conn:
        conn.execute("SELECT public.python_entries()" if python else "SELECT pyfuncs.boot()")
        conn.execute("SET ROLE student")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        _cancel_later(r72, pid, 0.5)
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"SELECT r72.{routine}")
        assert time.monotonic() - started < 2.5
        conn.execute("SET statement_timeout = 300")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"SELECT r72.{routine}")
        assert time.monotonic() - started < 2.5
        conn.execute("SET statement_timeout = 0")
        assert conn.execute("SELECT r72.who()").fetchone()[0].startswith("student ")  # type: ignore[index]
        conn.execute("RESET ROLE")
        assert conn.execute("SELECT public.runtime_state()").fetchone() == (
            "(True, 0, None, 0.0, True)",
        )


def _wide(d: str, u: str, last: str, n: int) -> str:
    return (
        f"SELECT r72.wide('{d}', '{u}', '{d}', {n}, '{d}', '{u}', '{d}', 0, '{d}', '{u}', '{last}')"
    )


def test_many_converted_arguments_read_the_same(r72: str) -> None:
    u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    queries = [
        _wide("2020-01-02", u, "2021-01-01", 1),
        _wide("2020-01-02", u, "2021-01-01", -1),
        _wide("2020-01-02", u, "2021-01-01", 0),
        _wide("2020-01-02", u, "infinity", 1),  # the last of eleven cannot be read
        _wide("infinity", u, "2021-01-01", 1),
        _wide("2020-01-02", u, "2021-01-01", 1),
    ]
    c, p = _both(r72, queries)
    assert c == p
    assert c[0][0] == "value", c


def test_sized_results_and_stops_while_finishing_are_the_same(r72: str) -> None:
    queries = [f"SELECT r72.sized({i})" for i in range(6)] + [
        "SELECT r72.slow_to_finish(3)",
        "SELECT length(r72.slow_to_finish(2000000)::text)",
        "SELECT r72.rows_of(3)",
        "SELECT array_agg(x) FROM r72.srf(3) x",
        "SELECT r72.srf(2), r72.quick(false)",
    ]
    c, p = _both(r72, queries)
    assert c == p


def test_what_an_error_holds_is_finalized_the_same(r72: str) -> None:
    """Objects let go of with a routine's exception (its frames' locals: an object with a
    finalizer, a suspended generator) are finalized alike by both entries (holds)."""
    queries = []
    for op in (3, 6):
        queries += [f"SELECT r72.multi({op})", "SELECT r72.multi(4)", "SELECT r72.multi(4)"]
    c, p = _both(r72, queries)
    assert c == p


@pytest.mark.parametrize(
    "op",
    [2, 5, 7, 10, 12],
    ids=["refused", "refused-generator", "made-plain", "changes-role", "reads-decimal"],
)
def test_a_results_finalizer_runs_where_the_python_entry_runs_it(r72: str, op: int) -> None:
    """Round 72 (fixed): the C entry let go of the routine's result object inside the call
    (as finish made it plain, or refused it), with CALLING still the routine's module; the
    Python entry keeps it in its frame's local `result` until after its `finally` gave
    CALLING back, where the module guard refuses its finalizer. So a result's finalizer (a
    dict subclass made plain, a refused object) ran the routine's code, and queried as the
    caller, only where the library is installed: a call that succeeds in Python (op 10)
    failed with 42501 in C. Now the C entry holds the result, the arguments it read and
    the call's context until it has given everything back, as the frame does."""
    queries = [f"SELECT r72.multi({op})", "SELECT r72.multi(4)", "SELECT r72.multi(4)"]
    c, p = _both(r72, queries)
    assert c == p


@pytest.mark.parametrize("how", [0, 1], ids=["spins", "spins-catching-stops"])
def test_a_results_finalizer_that_would_spin_runs_outside_the_call(r72: str, how: int) -> None:
    """The result (a dict subclass whose finalizer spins, catching its stops or not) is let
    go of after the call gave everything back, as the Python entry's frame lets go of it:
    its finalizer is code of the routine's module outside any call, refused before its
    first statement, and the call returns at once, with either entry."""
    queries = [f"SELECT r72.spins_after({how}) IS NOT NULL", "SELECT r72.multi(4)"]
    c, p = _both(r72, queries)
    assert c == p
    with psycopg.connect(r72, autocommit=True) as conn:
        conn.execute("SELECT pyfuncs.boot()")
        conn.execute("SET ROLE student")
        started = time.monotonic()
        assert conn.execute("SELECT r72.spins_after(%s) IS NOT NULL", [how]).fetchone() == (True,)
        assert time.monotonic() - started < 1.0
