"""Round 75: the entry library's stop check reads the watchdog's `stop_set` byte, its list
swaps and truth tests are inline, and generated bodies keep the entry in `_pf_entry`.

A passing test: the guarantee held. Each scenario says what it tried."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster

from ..integration.test_entry_library import IN_USE

SLACK = 0.6

MODULE = """
from typing import Any

from pyfuncs import stored_function

KEEP: list[Any] = []


def _spin_fin(self: object) -> None:
    n = 0
    for i in range(30_000_000):  # ~1-2 s of Python, in a finalizer
        n += i


def _spin_cb(ref: object) -> None:
    n = 0
    for i in range(30_000_000):
        n += i


_Fin = type("_Fin", (), {"__del__": _spin_fin})  # not `def __del__`: no guard inserted
_FinDict = type("_FinDict", (dict,), {"__del__": _spin_fin})
_FinList = type("_FinList", (list,), {"__del__": _spin_fin})


def _busy(k: int) -> int:
    n = 0
    for i in range(k):
        n += i
    return n


def _gen():
    try:
        yield 1
    finally:
        n = 0
        for i in range(30_000_000):
            n += i


@stored_function(schema="r75", timeout_ms=100)
def local_fin(k: int) -> int:
    _busy(k)
    x = _Fin()
    return 1


@stored_function(schema="r75")
def local_fin_unlimited(k: int) -> int:
    _busy(k)
    x = _Fin()
    return 1


@stored_function(schema="r75", timeout_ms=100)
def many_fins(k: int) -> int:
    _busy(k)
    xs = [_Fin() for _ in range(20)]
    return 1


@stored_function(schema="r75", timeout_ms=100)
def result_fin(k: int) -> Any:
    _busy(k)
    return _FinDict(a=1)


@stored_function(schema="r75", timeout_ms=100)
def result_list_fin(k: int) -> list[int]:
    _busy(k)
    return _FinList([1, 2, 3])


@stored_function(schema="r75", timeout_ms=100)
def gen_fin(k: int) -> int:
    _busy(k)
    g = _gen()
    next(g)
    return 1


@stored_function(schema="r75", timeout_ms=100)
def exc_fin(k: int) -> int:
    _busy(k)
    x = _Fin()
    raise ValueError("with a finalizer")


class _BigList(list):
    pass


@stored_function(schema="r75", timeout_ms=100)
def slow_result(n: int) -> list[int]:
    return _BigList(range(n))


@stored_function(schema="r75", timeout_ms=100)
def slow_result_dicts(n: int) -> list[dict[str, int]]:
    return _BigList({"a": i, "b": i} for i in range(n))


@stored_function(schema="r75")
def quick(n: int) -> int:
    return n + 1


@stored_function(schema="r75")
def pf_lookalike(pf_entry: int, x_pf_entry: int) -> int:
    return pf_entry * 10 + x_pf_entry
"""

REACH = """
import sys
from pyfuncs import stored_function


@stored_function(schema="r75b")
def reach(how: int) -> str:
    if how == 0:
        f = sys._getframe(1)
        return str("_pf_entry" in f.f_globals)
    if how == 1:
        try:
            raise ValueError()
        except ValueError as e:
            f = e.__traceback__.tb_frame
            while f is not None:
                if "_pf_entry" in f.f_globals:
                    f.f_globals["_pf_entry"] = len
                    return "reached"
                f = f.f_back
        return "no"
    return "?"
"""


@pytest.fixture
def r75(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Path) -> Any:
    conn.execute(IN_USE)
    (tmp_path / "r75_mod.py").write_text(textwrap.dedent(MODULE))
    deploying.deploy(conn, str(tmp_path / "r75_mod.py"))
    postmaster = cluster.postmaster_pid()
    yield dsn
    assert cluster.postmaster_pid() == postmaster, "the cluster restarted"


def _run(conn: psycopg.Connection[Any], query: str) -> tuple[Any, float]:
    start = time.monotonic()
    try:
        row = conn.execute(query).fetchone()
        out: Any = ("value", row)
    except psycopg.Error as exc:
        out = ("error", exc.sqlstate, str(exc).splitlines()[0])
    return out, time.monotonic() - start


def _stopped(conn: psycopg.Connection[Any], query: str, limit: float = 0.1) -> None:
    out, took = _run(conn, query)
    assert out[0] == "error" and out[1] == "57014", (query, out, took)
    assert took < limit + SLACK + 1.0, (query, took)  # (GRACE of a swallowed stop)
    assert conn.execute("SELECT r75.quick(1)").fetchone() == (2,)


@pytest.mark.parametrize("routine", ["local_fin", "many_fins", "gen_fin", "exc_fin"])
def test_a_stop_swallowed_by_a_finalizer_at_return_is_raised(r75: str, routine: str) -> None:
    """Finalizers that run as the function's frame ends (locals, a suspended generator,
    the exception's frame), each longer than timeout_ms: never a value."""
    with psycopg.connect(r75, autocommit=True) as conn:
        for k in (0, 100_000, 1_000_000, 3_000_000):
            _stopped(conn, f"SELECT r75.{routine}({k})")


def test_timing_sweep_of_stops_around_the_return(r75: str) -> None:
    """The function spins for varying times before returning with a slow finalizer, so the
    stop lands before, during and after its return."""
    with psycopg.connect(r75, autocommit=True) as conn:
        for k in range(0, 6_000_000, 250_000):
            _stopped(conn, f"SELECT r75.local_fin({k})")
        in_use = conn.execute("SELECT public.entries_in_use()").fetchone()
        assert in_use is not None and "split" in in_use[0], in_use  # the C entry ran


@pytest.mark.parametrize("routine", ["result_fin", "result_list_fin"])
def test_a_finalizer_of_the_result_or_a_weakref_callback_is_stopped(r75: str, routine: str) -> None:
    """The result's own finalizer (let go of after the call's work) and a weak reference's
    callback: neither runs on past the limit, and the session carries on."""
    with psycopg.connect(r75, autocommit=True) as conn:
        for k in (0, 1_000_000):
            out, took = _run(conn, f"SELECT r75.{routine}({k})")
            assert took < 0.1 + SLACK + 1.0, (out, took)
            if out[0] == "value":  # a value only if no stop was due while it ran
                assert took < 0.1 + SLACK, (out, took)
            else:
                assert out[1] == "57014", out
            assert conn.execute("SELECT r75.quick(1)").fetchone() == (2,)


@pytest.mark.parametrize("routine", ["slow_result", "slow_result_dicts"])
def test_a_slow_conversion_of_the_result_is_stopped(r75: str, routine: str) -> None:
    with psycopg.connect(r75, autocommit=True) as conn:
        for n in (10_000, 200_000, 2_000_000):
            out, took = _run(conn, f"SELECT r75.{routine}({n})")
            if out[0] == "value":
                assert took < 0.1 + SLACK, (n, took)
            else:
                assert out[1] in ("57014", "54000", "PF001", "22023") or out[1], out
                assert took < 0.1 + SLACK + 1.0, (n, out, took)
            assert conn.execute("SELECT r75.quick(1)").fetchone() == (2,)


def test_statement_timeout_and_cancel_reach_a_finalizer_at_return(r75: str) -> None:
    with psycopg.connect(r75, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '150ms'")
        _stopped(conn, "SELECT r75.local_fin_unlimited(0)", 0.15)
        conn.execute("RESET statement_timeout")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]

        def cancel() -> None:
            time.sleep(0.2)
            with psycopg.connect(r75, autocommit=True) as other:
                other.execute("SELECT pg_cancel_backend(%s)", [pid])

        t = threading.Thread(target=cancel)
        t.start()
        _stopped(conn, "SELECT r75.local_fin_unlimited(0)", 0.2)
        t.join()


def test_a_stopped_call_does_not_leave_its_stop_for_the_next(r75: str) -> None:
    """After calls stopped in finalizers, the byte and the attribute agree: the next calls
    (many, quick) are not stopped by a stale byte."""
    with psycopg.connect(r75, autocommit=True) as conn:
        for _ in range(5):
            _stopped(conn, "SELECT r75.local_fin(0)")
            for i in range(200):
                assert conn.execute("SELECT r75.quick(%s)", [i]).fetchone() == (i + 1,)


def test_parameters_reserved_for_the_body(
    r75: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    for name in ("_pf_entry", "_pf_fn", "_pf", "_pf_error", "\uff3fpf_entry"):
        source = (
            f"from pyfuncs import stored_function\n\n"
            f"@stored_function(schema='r75c')\n"
            f"def f({name}: int) -> int:\n    return {name}\n"
        )
        path = tmp_path / "r75c_mod.py"
        path.write_text(source, encoding="utf-8")
        with pytest.raises(Exception) as info:
            deploying.deploy(conn, str(path))
        assert "reserved" in str(info.value) or "_pf" in str(info.value), (name, info.value)
    with psycopg.connect(r75, autocommit=True) as other:
        assert other.execute("SELECT r75.pf_lookalike(1, 2)").fetchone() == (12,)
        assert other.execute("SELECT r75.pf_lookalike(3, 4)").fetchone() == (34,)
        with pytest.raises(psycopg.Error):
            other.execute("SELECT r75.quick(_pf_entry => 1)")
        assert other.execute("SELECT r75.quick(n => 1)").fetchone() == (2,)


def test_routine_code_cannot_reach_the_procedure_globals(
    r75: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    path = tmp_path / "r75b_mod.py"
    path.write_text(REACH)
    try:
        deploying.deploy(conn, str(path))
    except Exception:
        return  # refused at deploy: held
    with psycopg.connect(r75, autocommit=True) as other:
        for how in (0, 1):
            out, _ = _run(other, f"SELECT r75b.reach({how})")
            assert out != ("value", ("reached",)) and out != ("value", ("True",)), out
        assert other.execute("SELECT r75.quick(1)").fetchone() == (2,)
