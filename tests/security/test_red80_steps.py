"""Round 80: the split call's steps as types (enter/leave/failed, entry.c steps[]) and a
routine's query needing 50 frames below the recursion limit (entry.c
pyfuncs_query_headroom, round 79's fix).

Promises attacked: no crash or SystemError reaches a user (PL/Python's conversions at the
recursion limit's edge by paths other than a query's int parameter); a routine cannot reach
the steps or another call's Entry to forge or end a record; every call ends exactly once,
stops land, and the session is clean afterwards. A passing test: the promise held. Each
test's docstring says what it tried."""

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
GRACE = 1.0


MODULE = '''
import decimal
from collections.abc import Iterator
from typing import Any

from pyfuncs import db, stored_function


def _busy(k: int) -> int:
    n = 0
    for i in range(k):
        n += i
    return n


def _deep_str(self: object) -> str:
    def d(n: int) -> str:
        return d(n + 1)

    return d(0)


_DeepStr = type("_DeepStr", (Exception,), {"__str__": _deep_str, "__repr__": _deep_str})


@stored_function(schema="r80")
def quick(n: int) -> int:
    return n + 1


@stored_function(schema="r80")
def state() -> str:
    with decimal.localcontext() as c:
        prec = c.prec
    return "|".join([
        str(db.fetchval("SELECT coalesce(current_setting('app.r80', true), '')")),
        str(db.fetchval("SELECT current_user")),
        str(db.fetchval("SELECT current_setting('search_path')")),
        str(prec),
    ])


@stored_function(schema="r80")
def r_float() -> float:
    return 1.5


@stored_function(schema="r80")
def r_dec() -> decimal.Decimal:
    return decimal.Decimal("1.25")


@stored_function(schema="r80")
def r_big() -> decimal.Decimal:
    return decimal.Decimal(10**60)


@stored_function(schema="r80")
def r_list() -> list[int]:
    return [1, 2, 3]


@stored_function(schema="r80")
def r_dict() -> dict[str, Any]:
    return {"a": [1, {"b": 2.5}], "c": None}


@stored_function(schema="r80")
def r_none() -> int | None:
    return None


@stored_function(schema="r80")
def r_rows(n: int) -> Iterator[int]:
    for i in range(n):
        yield i


@stored_function(schema="r80")
def r_raise(kind: str) -> int:
    if kind == "dec":
        raise ValueError(decimal.Decimal("1.5"), b"\\xff", (1, (2, [3])))
    if kind == "bigint":
        raise ValueError(10**5000)
    if kind == "deepstr":
        raise _DeepStr("deep")
    if kind == "nested":
        try:
            raise KeyError({"k": [1, 2]})
        except KeyError as inner:
            raise ValueError("outer", inner) from inner
    raise RuntimeError(kind)


@stored_function(schema="r80")
def raise_at(kind: str, depth: int) -> int:
    """Raises r_raise's exceptions uncaught from `depth` frames down."""

    def down(n: int) -> int:
        if n > 0:
            return down(n - 1)
        return r_raise(kind)

    return down(depth)


@stored_function(schema="r80")
def r_deep(depth: int) -> int:
    """Recurses `depth` frames, then queries (a nested routine at the limit's edge)."""

    def down(n: int) -> int:
        if n > 0:
            return down(n - 1)
        return int(db.fetchval("SELECT 1::bigint"))

    try:
        return down(depth)
    except RecursionError:
        return -1


@stored_function(schema="r80")
def gen_deep(depth: int) -> Iterator[int]:
    """Rows produced at depth: each row's value comes from a query at `depth` frames."""

    def down(n: int) -> int:
        if n > 0:
            return down(n - 1)
        return int(db.fetchval("SELECT 7::bigint"))

    for _ in range(3):
        try:
            yield down(depth)
        except RecursionError:
            yield -1


@stored_function(schema="r80")
def edge(how: str, depth: int) -> str:
    held = {}
    if how == "late_cursor":
        held["c"] = db.cursor("SELECT r80.r_dec() AS d FROM generate_series(1, 3)", batch=1)
    if how == "late_savepoint":
        held["s"] = db.subtransaction()

    def down(n: int) -> str:
        if n > 0:
            return down(n - 1)
        if how in ("float", "dec", "big", "list", "dict", "none"):
            return str(db.fetchval(f"SELECT r80.r_{how}()"))
        if how == "rows":
            return str(db.execute("SELECT * FROM r80.r_rows(3) r").rows if False else
                       [r["r"] for r in db.execute("SELECT * FROM r80.r_rows(3) r")])
        if how.startswith("raise_"):
            try:
                db.fetchval("SELECT r80.r_raise($1)", [how[6:]])
            except Exception as e:
                return "caught " + str(isinstance(e, Exception))
            return "no"
        if how == "sqlraise":
            try:
                db.fetchval("SELECT public.r80_raise($1)", ["odd \\u00e9 \\\\ %"])
            except Exception as e:
                return "caught " + str(isinstance(e, Exception))
            return "no"
        if how == "trigger":
            db.execute("INSERT INTO public.r80_t VALUES ($1)", [n])
            return "trigger"
        if how == "trigger_raise":
            try:
                db.execute("INSERT INTO public.r80_t VALUES ($1)", [-1])
            except Exception as e:
                return "caught " + str(isinstance(e, Exception))
            return "no"
        if how == "late_cursor":
            return str([str(r["d"]) for r in held["c"]])
        if how == "late_savepoint":
            with held["s"]:
                return "savepoint"
        if how == "savepoint_fail":
            try:
                with db.subtransaction():
                    raise ValueError("inside")
            except ValueError:
                return "savepoint"
        if how == "nested_deep":
            return str(db.fetchval("SELECT r80.r_deep(2000)"))
        if how == "nested_gen":
            return str([r["g"] for r in db.execute("SELECT * FROM r80.gen_deep(2000) g")])
        if how == "self":
            return "inner " + str(db.fetchval("SELECT r80.edge('plain', $1)", [40]))
        if how in ("deep_param", "deep_array"):
            x: Any = 1
            for _ in range(3000):
                x = [x]
            try:
                q = "SELECT $1::text" if how == "deep_param" else "SELECT $1::int[]"
                return str(db.fetchval(q, [x]))[:10]
            except RecursionError:
                raise
            except Exception as e:
                return "caught " + str(e)[:150]
        if how == "plain":
            return "plain"
        raise ValueError(how)

    try:
        return down(depth)
    except RecursionError:
        return "recursion"


@stored_function(schema="r80")
def chain(n: int, catch: int) -> int:
    """Itself through SQL n times, setting a setting at each level."""
    db.execute("SELECT set_config('app.r80', $1, false)", [str(n)])
    if n == 0:
        return 0
    if not catch:
        return int(db.fetchval("SELECT r80.chain($1, $2)", [n - 1, catch])) + 1
    try:
        return int(db.fetchval("SELECT r80.chain($1, $2)", [n - 1, catch])) + 1
    except BaseException:
        return -1


@stored_function(schema="r80")
def spin(k: int) -> int:
    return _busy(k)


@stored_function(schema="r80", timeout_ms=100)
def spin_limited(k: int) -> int:
    db.execute("SELECT set_config('app.r80', 'stopped', false)")
    return _busy(k)


@stored_function(schema="r80", timeout_ms=150)
def deep_spin(depth: int, k: int) -> int:
    """Recursion to `depth`, a setting, then a spin, at the limit's edge."""

    def down(n: int) -> int:
        if n > 0:
            return down(n - 1)
        return _busy(k)

    db.execute("SELECT set_config('app.r80', 'deep', false)")
    try:
        return down(depth)
    except RecursionError:
        return _busy(k)


@stored_function(schema="r80", timeout_ms=150)
def nest_edge(depth: int, k: int) -> int:
    """At depth, a nested call of itself that spins; catches whatever comes."""

    def down(n: int) -> int:
        if n > 0:
            return down(n - 1)
        if k < 0:
            return _busy(-k)
        return int(db.fetchval("SELECT r80.nest_edge(0, $1)", [-k]))

    db.execute("SELECT set_config('app.r80', 'nest', false)")
    try:
        return down(depth)
    except BaseException:
        return -1
'''

FIXTURE_SQL = """
CREATE OR REPLACE FUNCTION public.r80_raise(t text) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING MESSAGE = t, DETAIL = repeat('d', 3000), HINT = t, ERRCODE = 'P0001';
END $$;
CREATE TABLE IF NOT EXISTS public.r80_t (n int);
CREATE OR REPLACE FUNCTION public.r80_trig() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.n < 0 THEN RAISE EXCEPTION 'negative % %', NEW.n, r80.r_dec(); END IF;
  PERFORM r80.r_deep(2000);
  PERFORM r80.r_float();
  RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS r80_t_trig ON public.r80_t;
CREATE TRIGGER r80_t_trig BEFORE INSERT ON public.r80_t FOR EACH ROW
  EXECUTE FUNCTION public.r80_trig();
GRANT INSERT ON public.r80_t TO mallory;
GRANT EXECUTE ON FUNCTION public.r80_raise(text) TO mallory;
CREATE OR REPLACE FUNCTION public.r80_runtime() RETURNS text LANGUAGE plpython3u AS $$
import sys, decimal, contextvars
w = sys.modules["pyfuncs_pg.watchdog"]
i = sys.modules["pyfuncs_pg.identity"]
return "|".join(str(x) for x in (
    w.CALLING[0] is None, i.SETTINGS[0], i.SETTINGS[1] is None,
    decimal.getcontext().prec, w.WATCHDOG.stop is None, sys.gettrace() is None,
    sys.getrecursionlimit(),
))
$$;
"""


@pytest.fixture
def r80(
    dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Path, mallory_role: str
) -> Any:
    conn.execute(IN_USE)
    (tmp_path / "r80_mod.py").write_text(MODULE)
    deploying.deploy(conn, str(tmp_path / "r80_mod.py"))
    conn.execute("GRANT USAGE ON SCHEMA r80 TO mallory")
    conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA r80 TO mallory")
    conn.execute(FIXTURE_SQL)
    conn.commit()
    postmaster = cluster.postmaster_pid()
    log_size = cluster.log_file.stat().st_size
    yield dsn
    assert cluster.postmaster_pid() == postmaster, "the cluster restarted"
    with cluster.log_file.open(errors="replace") as log:
        log.seek(log_size)
        tail = log.read()
    assert "terminated by signal" not in tail, "a backend crashed"
    assert "all server processes terminated" not in tail, "the cluster restarted"


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(mallory_dsn(dsn), autocommit=True)


class Session:
    def __init__(self, dsn: str) -> None:
        self.conn = _connect(dsn)
        assert value(self.conn, "SELECT r80.quick(1)") == 2
        assert "split" in value(self.conn, "SELECT public.entries_in_use()")
        self.clean_state = value(self.conn, "SELECT r80.state()")
        self.clean_runtime = value(self.conn, "SELECT public.r80_runtime()")

    def unchanged(self) -> None:
        assert value(self.conn, "SELECT r80.quick(41)") == 42
        assert value(self.conn, "SELECT r80.state()") == self.clean_state
        assert value(self.conn, "SELECT public.r80_runtime()") == self.clean_runtime
        assert value(self.conn, "SELECT current_user") == "mallory"


@pytest.fixture
def session(r80: str) -> Any:
    s = Session(r80)
    yield s
    s.conn.close()


def _no_internals(exc: BaseException) -> None:
    text = str(exc)
    for word in ("SystemError", "record was lost", "without a call under way", "failed()",
                 "crashed", "terminated"):  # fmt: skip
        assert word not in text, text


# --- 1. PL/Python's conversions at the recursion limit's edge ----------------------------

HOWS = [
    "float", "dec", "big", "list", "dict", "none", "rows",
    "raise_dec", "raise_bigint", "raise_deepstr", "raise_nested", "sqlraise",
    "trigger", "trigger_raise", "late_cursor", "late_savepoint", "savepoint_fail",
    "nested_deep", "nested_gen", "self", "deep_param", "deep_array",
]  # fmt: skip


@pytest.mark.parametrize("how", HOWS)
def test_conversions_at_the_recursion_limits_edge(session: Session, how: str) -> None:
    """At every depth near the limit: nested routines' results of each type (float,
    Decimal, huge numeric, list, dict, None, set-returning), nested routines raising
    exceptions with odd args (Decimal/bytes/nested tuples, a 5000-digit int, a __str__
    that recurses forever, a __cause__), RAISE from plpgsql with a long DETAIL, a trigger
    fired by the routine's INSERT (calling routines that recurse to the limit), a cursor
    opened shallow and read at depth, a savepoint made shallow and entered/left at depth,
    a nested routine recursing to its own limit, a set-returning routine producing rows at
    depth, the same routine nested: a value, "recursion" or a clean error; no crash."""
    c = session.conn
    seen = []
    for depth in [0, 500, *range(920, 1000, 3), 2000]:
        got, _ = timed(c, "SELECT r80.edge(%s, %s)", [how, depth])
        if isinstance(got, psycopg.Error):
            _no_internals(got)
            assert got.sqlstate not in ("XX000", "08006", "57P01"), (depth, str(got))
            seen.append(got.sqlstate)
        else:
            seen.append(got[0])
        session.unchanged()
    print(how, sorted(set(map(str, seen))))
    assert "recursion" in seen and set(seen) - {"recursion"}, seen  # the edge was crossed


# --- 2. the steps out of a routine's reach -----------------------------------------------

REACH = {
    "match": """
    try:
        raise ValueError()
    except ValueError as e:
        match e:
            case ValueError(__traceback__=tb):
                return str(tb)
    """,
    "format": """
    try:
        raise ValueError()
    except ValueError as e:
        return "{0.__traceback__.tb_frame.f_back.f_globals}".format(e)
    """,
    "getattr": """
    try:
        raise ValueError()
    except ValueError as e:
        return str(getattr(getattr(e, "__tra" + "ceback__"), "tb_frame"))
    """,
    "gen_frame": """
    def g():
        yield 1
    return str(g().gi_frame.f_back)
    """,
    "globals": """
    return str(globals().get("enter"))
    """,
    "import": """
    import sys
    return str(sys._getframe(1).f_globals.get("failed"))
    """,
    "dunder_import": """
    return str(__import__("gc").get_objects())
    """,
    "traceback": """
    import traceback
    return str([f for f, _ in traceback.walk_stack(None)])
    """,
    "functools": """
    import functools
    return str(functools.reduce(getattr, ["gi_frame"], (i for i in [1])))
    """,
}


@pytest.mark.parametrize("how", sorted(REACH))
def test_the_steps_and_entry_are_out_of_reach(
    r80: str, conn: psycopg.Connection[Any], tmp_path: Path, how: str
) -> None:
    """Module code that looks for the entry function's globals (enter, leave, failed, entry)
    through a class pattern's __traceback__, str.format's traversal, getattr with a built
    name, a generator's frame, globals(), sys._getframe, __import__('gc'), traceback's
    walk_stack, functools.reduce(getattr): refused at deploy, or reaching nothing."""
    body = "\n".join("    " + line[4:] if line.strip() else "" for line in
                     REACH[how].strip("\n").splitlines())  # fmt: skip
    src = (
        "from pyfuncs import stored_function\n\n\n"
        '@stored_function(schema="r80b")\n'
        "def reach() -> str:\n" + body + "\n"
    )
    path = tmp_path / "r80_reach.py"
    path.write_text(src)
    try:
        deploying.deploy(conn, str(path))
    except Exception:
        conn.rollback()
        return  # refused at deploy: held
    conn.execute("GRANT USAGE ON SCHEMA r80b TO mallory")
    conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA r80b TO mallory")
    conn.commit()
    with _connect(r80) as c:
        got, _ = timed(c, "SELECT r80b.reach()")
        if not isinstance(got, psycopg.Error):
            for word in ("pyfuncs.enter", "pyfuncs.leave", "pyfuncs.failed", "pyfuncs.entry"):
                assert word not in str(got[0]), got
        assert value(c, "SELECT r80.quick(1)") == 2


# --- 3. calls that never end or end twice ------------------------------------------------


def _stopped_or_value(s: Session, query: str, limit: float) -> Any:
    got, took = timed(s.conn, query)
    if isinstance(got, psycopg.Error):
        _no_internals(got)
        assert got.sqlstate == "57014", (query, got.sqlstate, str(got))
        assert took < limit + SLACK + GRACE, (query, took)
    else:
        assert took < limit + SLACK, (query, got, took)
    s.unchanged()
    assert value(s.conn, "SELECT coalesce(current_setting('app.r80', true), '')") == ""
    return got


def test_time_sweep_at_the_recursion_limits_edge(session: Session) -> None:
    """deep_spin(depth, k), timeout_ms=150: a setting, recursion to near the limit (or past
    it: caught), then a spin of k swept so the stop lands in the spin, as the function
    returns, after leave's CALL, at the limit's edge: a value within the limit or 57014,
    the setting undone, the session as it was."""
    for depth in (900, 960, 975, 985, 990, 995, 2000):
        for k in (0, 200_000, 1_000_000, 1_500_000, 2_000_000, 100_000_000):
            _stopped_or_value(session, f"SELECT r80.deep_spin({depth}, {k})", 0.15)


def test_nested_same_routine_at_the_edge_cannot_swallow_a_stop(session: Session) -> None:
    """nest_edge(depth, k): at depth, a nested call of the same routine spins past its
    timeout_ms; the outer one catches BaseException: the stop stays the statement's (a
    value only within the limit), records of both calls end, nothing left."""
    for depth in (0, 500, 900, 930, 940, 945, 950, 955, 960, 980, 2000):
        for k in (1_000, 100_000_000):
            got = _stopped_or_value(session, f"SELECT r80.nest_edge({depth}, {k})", 0.15)
            if k == 100_000_000 and not isinstance(got, psycopg.Error):
                assert got[0] == -1, got  # (a refused query: RecursionError, caught)


def test_statement_timeout_and_cancel_at_the_edge(session: Session) -> None:
    """statement_timeout and pg_cancel_backend landing in a spin 10 frames from the limit
    (deep_spin with no stop of its own but the statement's): 57014, nothing left."""
    c = session.conn
    for ms in (30, 80, 200):
        c.execute(f"SET statement_timeout = '{ms}ms'")
        got, took = timed(c, "SELECT r80.nest_edge(985, -100000000)")
        c.execute("RESET statement_timeout")
        assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", got
        session.unchanged()
    pid = value(c, "SELECT pg_backend_pid()")

    def cancel() -> None:
        time.sleep(0.3)
        with _connect(c.info.dsn) as other:
            other.execute("SELECT pg_cancel_backend(%s)", [pid])

    t = threading.Thread(target=cancel)
    t.start()
    got, took = timed(c, "SELECT r80.edge('nested_deep', 0), r80.spin(300000000)")
    t.join()
    assert isinstance(got, psycopg.Error) and got.sqlstate == "57014", got
    assert took < 0.3 + SLACK + GRACE, took
    session.unchanged()


def test_another_role_after_edge_calls_on_a_pooled_session(
    r80: str, conn: psycopg.Connection[Any]
) -> None:
    """A pooled session: mallory's calls at the recursion limit's edge, stopped and failing
    (SET SESSION AUTHORIZATION), then the superuser's: its own role, no setting, the
    runtime's state and recursion limit as before."""
    conn.autocommit = True
    conn.execute("SELECT r80.quick(1)")
    before = value(conn, "SELECT r80.state()")
    runtime = value(conn, "SELECT public.r80_runtime()")
    for depth in (960, 985, 995):
        conn.execute("SET SESSION AUTHORIZATION mallory")
        for q in (
            f"r80.deep_spin({depth}, 100000000)", f"r80.nest_edge({depth}, 100000000)",
            f"r80.edge('raise_deepstr', {depth})", f"r80.edge('trigger', {depth})",
            f"r80.edge('late_savepoint', {depth})",
        ):  # fmt: skip
            got, _ = timed(conn, f"SELECT {q}")
            if isinstance(got, psycopg.Error):
                _no_internals(got)
        conn.execute("RESET SESSION AUTHORIZATION")
        assert value(conn, "SELECT r80.state()") == before
        assert value(conn, "SELECT public.r80_runtime()") == runtime
        assert value(conn, "SELECT current_user") != "mallory"


def test_fine_sweep_of_nested_stops_at_the_deepest_nested_call(session: Session) -> None:
    """nest_edge at the deepest depths where its nested call is still allowed (a query 50
    frames from the limit), the inner spin swept across its timeout_ms so the stop lands
    before, at and after the inner call's leave, and in the outer's handler: a value only
    within the limit, the stop never swallowed, both calls' settings undone."""
    allowed = [
        d for d in range(925, 960)
        if value(session.conn, f"SELECT r80.nest_edge({d}, 1)") != -1
    ]  # fmt: skip
    assert allowed, "no depth allows the nested call"
    deepest = max(allowed)
    for depth in (deepest - 1, deepest, deepest + 1):
        for k in range(2_000_000, 7_000_000, 1_000_000):
            got = _stopped_or_value(session, f"SELECT r80.nest_edge({depth}, {k})", 0.15)
            if not isinstance(got, psycopg.Error) and depth <= deepest:
                assert got[0] != -1 or depth == deepest + 1, (depth, k, got)


@pytest.mark.parametrize("stack", ["100kB", "300kB", "2MB"])
def test_postgres_stack_depth_errors_in_nested_calls(
    r80: str, conn: psycopg.Connection[Any], stack: str
) -> None:
    """A routine calling itself through SQL until PostgreSQL's max_stack_depth (set low by
    the pooler's superuser) or Python's recursion limit refuses: errors raised inside PL/Python's
    queries at every level, caught at each level or not; then the same session's calls, as
    mallory and as the superuser, see no setting, no module left calling, and work."""
    conn.autocommit = True
    conn.execute("SELECT r80.quick(1)")
    before = value(conn, "SELECT r80.state()")
    runtime = value(conn, "SELECT public.r80_runtime()")
    conn.execute(f"SET max_stack_depth = '{stack}'")
    conn.execute("SET SESSION AUTHORIZATION mallory")
    for catch in (0, 1):
        for n in (5, 30, 200):
            got, _ = timed(conn, f"SELECT r80.chain({n}, {catch})")
            if isinstance(got, psycopg.Error):
                _no_internals(got)  # (a nested routine's error is XX000's SPIError)
            assert value(conn, "SELECT r80.quick(1)") == 2
            assert value(conn, "SELECT coalesce(current_setting('app.r80', true), '')") == ""
    conn.execute("RESET SESSION AUTHORIZATION")
    conn.execute("RESET max_stack_depth")
    assert value(conn, "SELECT r80.state()") == before
    assert value(conn, "SELECT public.r80_runtime()") == runtime


@pytest.mark.parametrize("kind", ["dec", "bigint", "deepstr", "nested", "plain"])
def test_odd_exceptions_raised_uncaught_from_the_limits_edge(session: Session, kind: str) -> None:
    """An exception with odd args (Decimal/bytes/tuples, a 5000-digit int, a __str__ that
    recurses forever, a chained one) raised uncaught from every depth near the limit and
    past it: failed() and PL/Python convert it with the traceback's frames: a clean error,
    no crash, nothing left."""
    for depth in [0, *range(978, 1000, 4), 2000]:
        got, _ = timed(session.conn, "SELECT r80.raise_at(%s, %s)", [kind, depth])
        assert isinstance(got, psycopg.Error), got
        _no_internals(got)
        session.unchanged()
