"""Red team round 50: a routine's own code inside its own query, and PL/Python's raw
subtransaction object.

Tests that FAIL demonstrate a break that still exists (they assert the promised behaviour)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster


def _deploy(conn: psycopg.Connection[Any], tmp_path: Any, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    deploying.deploy(conn, str(tmp_path / f"{name}.py"))


def _log_since(cluster: Cluster, size: int) -> str:
    with cluster.log_file.open() as log:
        log.seek(size)
        return log.read()


# --- 1. The params container itself is the routine's object, read inside the query -----

PARAMS = """
from pyfuncs import db, stored_function

SEEN: list[str] = []


class Params:
    def __init__(self, value: object) -> None:
        self.value, self.reads = value, 0

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> object:
        if i != 0:
            raise IndexError(i)
        self.reads += 1
        try:
            db.fetchval("SELECT 1")
            SEEN.append(f"read {self.reads}: before the query")
        except PermissionError as exc:
            SEEN.append(f"read {self.reads}: " + str(exc)[:60])
        return self.value


@stored_function(schema="seq", roles=["student", "manager"])
def send(warm: bool) -> str:
    SEEN.clear()
    if warm:
        db.fetchval("SELECT $1", ["warm"])  # the plan, kept in _DIRECT
    got = db.fetchval("SELECT $1", Params("x"))
    return f"{got} seen={SEEN}"
"""


@pytest.mark.parametrize("warm", [True, False])
def test_a_routines_params_sequence_is_not_read_inside_its_own_query(
    conn: psycopg.Connection[Any], tmp_path: Any, warm: bool
) -> None:
    """Round 49 promised that no code of a routine's runs inside its query to read a
    parameter. But db.execute hands the routine's own params object to plpy.execute
    (Db._run's _DIRECT path, and Db._plan when every item is of a simple type), and
    PL/Python reads it with PySequence_GetItem inside the query's subtransaction: the
    container's __getitem__ runs inside the query (db is refused there, nothing else is)."""
    _deploy(conn, tmp_path, "seq_mod", PARAMS)
    conn.execute("SET ROLE student")
    got = conn.execute("SELECT seq.send(%s)", [warm]).fetchone()
    assert got is not None
    assert "inside its own call" not in got[0], got[0]


# --- 2. `with db.subtransaction() as s` hands out PL/Python's raw subtransaction ---------

RAW = """
from pyfuncs import db, stored_function


@stored_function(schema="raw", roles=["student", "manager"])
def unnest() -> str:
    outcome = "?"
    try:
        with db.subtransaction() as x:
            with db.subtransaction():
                try:
                    x.exit(None, None, None)  # PL/Python's alias of __exit__
                    outcome = "x's raw exit released the inner savepoint's subtransaction"
                except Exception as exc:
                    outcome = "refused: " + str(exc)[:80]
    except (RuntimeError, ValueError):
        pass
    return outcome
"""


def test_a_savepoints_raw_object_cannot_end_a_subtransaction_not_its_own(
    conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """Savepoint.__exit__ leaves a savepoint only where it is the subtransaction under way
    (round 45). But Savepoint.__enter__ returns what PL/Python's __enter__ returns: the raw
    PLySubtransaction object itself, whose `exit` (and `enter`) aliases need no dunder
    name. Its exit releases, or rolls back, whatever subtransaction is current and pops
    the head of PL/Python's list, whoever's it is (it checks only started/exited)."""
    _deploy(conn, tmp_path, "raw_mod", RAW)
    conn.execute("SET ROLE student")
    got = conn.execute("SELECT raw.unnest()").fetchone()
    assert got is not None and got[0].startswith("refused"), got


NESTED = """
from pyfuncs import db, stored_function

KEPT: list[object] = []
HELD: list[object] = []


def holder():
    with db.subtransaction():
        yield 1


@stored_function(schema="rawr", roles=["student", "manager"])
def r(step: str) -> str:
    if step == "prep":  # a raw object PL/Python counts as entered and not exited
        try:
            with db.subtransaction() as x:
                with db.subtransaction() as y:
                    KEPT.append(y)
                    x.exit(None, None, None)
        except (RuntimeError, ValueError):
            pass
        return "prepped"
    if step == "outer":
        with db.subtransaction():
            try:
                got = db.fetchval("SELECT rawr.r('inner')")  # the same routine, nested
            except Exception as exc:
                got = "caught " + str(exc)[:80]
        return "outer: " + str(got)
    # inner: inside the outer call's query. Release the query's own subtransaction (and
    # pop the outer savepoint's entry), then begin one that the query's end takes for its
    # own: the outer query ends in the subtransaction id it began in, and the net is quiet
    KEPT.pop().exit(None, None, None)
    kept = holder()
    next(kept)
    HELD.append(kept)
    return "inner done"
"""

OUT_OF_STEP = (
    "left non-empty SPI stack", "reference leak", "SPI_finish failed",
    "not connected to SPI", "SPI_ERROR_UNCONNECTED",
)  # fmt: skip


@pytest.mark.parametrize("via", ["direct", "plpgsql"])
def test_a_nested_calls_raw_exit_leaves_no_session_out_of_step(
    conn: psycopg.Connection[Any], tmp_path: Any, cluster: Cluster, via: str
) -> None:
    """With the raw object, a call nested in its own routine's query (through SQL) releases
    the outer query's subtransaction and begins another that PL/Python then ends as the
    query's: the nested call's SPI connection is dropped with the released subtransaction
    ("subtransaction left non-empty SPI stack"), its SPI_finish then finishes the OUTER
    call's connection (or the calling PL/pgSQL function's: SPI_ERROR_UNCONNECTED there),
    the outer savepoint's entry is popped by the wrong exit, which makes current a memory
    context SPI_finish deleted; plan and snapshot references leak. The net (guard_leave)
    compares subtransaction ids only, and the outer query ends in the id it began in: the
    session is not ended, and serves its next statements. Promised: a query whose
    subtransactions went out of step ends its session (or cannot happen)."""
    _deploy(conn, tmp_path, "rawr_mod", NESTED)
    conn.execute(
        "CREATE FUNCTION public.wrap() RETURNS text LANGUAGE plpgsql AS $$ "
        "DECLARE got text; n int; BEGIN got := rawr.r('outer'); "
        "SELECT count(*) INTO n FROM pg_class; RETURN got || ' n=' || n; END $$"
    )
    conn.execute("GRANT EXECUTE ON FUNCTION public.wrap() TO student")
    started = cluster.postmaster_pid()
    size = cluster.log_file.stat().st_size
    conn.execute("SET ROLE student")
    assert conn.execute("SELECT rawr.r('prep')").fetchone() == ("prepped",)
    with pytest.raises(psycopg.Error):
        conn.execute("SELECT public.wrap()" if via == "plpgsql" else "SELECT rawr.r('outer')")
    try:
        conn.execute("SELECT 1")
        ended = False
    except psycopg.OperationalError:
        ended = True
    log = _log_since(cluster, size)
    assert cluster.postmaster_pid() == started, "the cluster restarted"
    assert "terminated by signal" not in log
    seen = [m for m in OUT_OF_STEP if m in log]
    assert ended or not seen, f"the session went on after {seen}"


# --- 3. Contained: the same raw exit inside the routine's own query ----------------------

INSIDE = """
from pyfuncs import db, stored_function

KEPT: list[object] = []


class Params:
    def __init__(self) -> None:
        self.reads = 0

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> object:
        if i != 0:
            raise IndexError(i)
        self.reads += 1
        if self.reads == 2 and KEPT:  # inside plpy.execute: the query's subtransaction
            KEPT.pop().exit(None, None, None)
        return "x"


@stored_function(schema="rawx", roles=["student", "manager"])
def inside() -> str:
    db.fetchval("SELECT $1", ["warm"])
    with db.subtransaction() as s:
        KEPT.append(s)
        return str(db.fetchval("SELECT $1", Params()))
"""


def test_a_raw_exit_inside_its_own_query_ends_only_its_session(
    conn: psycopg.Connection[Any], tmp_path: Any, cluster: Cluster
) -> None:
    """(Passes: the net holds here.) The params container's __getitem__ runs inside the
    query (test 1) and ends the query's subtransaction through the raw object (test 2):
    the query ends in another subtransaction, the net ends the session, the cluster goes
    on."""
    _deploy(conn, tmp_path, "rawx_mod", INSIDE)
    started = cluster.postmaster_pid()
    conn.execute("SET ROLE student")
    with pytest.raises(psycopg.Error):
        conn.execute("SELECT rawx.inside()")
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    assert cluster.postmaster_pid() == started
