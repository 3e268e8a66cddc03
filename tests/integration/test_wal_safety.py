"""Capture from the WAL with writers and login roles one does not trust (migration 0010): what
the red team found, each tried against the real PostgreSQL. Logical messages of any size or
number are never decoded; a transaction the consumer cannot capture (a value jsonb refuses,
a change over 64 MB, a row wal2json cannot write) is skipped and consumers resync, and the
next ones are captured; the values written do not depend on the consumer's session; a table
renamed while capture lags is never delivered as another; names that look like wal2json's
escapes are matched exactly; and a capture transaction left open holds capture up for
seconds, not for good."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyfuncs import capture, realtime
from pyfuncs.embedded import Cluster
from pyfuncs.errors import ConfigError, ResyncRequired
from pyfuncs.realtime import Change, Position
from tests.conftest import ensure_role
from tests.walcapture import (
    catch_up,
    consumer,
    flushed,
    ids,
    log,
)

BIG = 300_000_000  # characters: as a jsonb string, more than its 256 MB


@pytest.fixture
def wal_db(dsn: str, conn: psycopg.Connection[Any]) -> Iterator[str]:
    conn.execute("CREATE SCHEMA rt")
    conn.execute("CREATE TABLE rt.counter (id int PRIMARY KEY, note text)")
    conn.execute("CREATE TABLE rt.other (id int PRIMARY KEY, note text)")  # not captured
    capture.set_mode(conn, "wal")
    realtime.enable(conn, "rt.counter")
    yield dsn


def logged(dsn: str) -> list[tuple[str, int]]:
    """Every change in the log, as (table, id), whatever consumers were told to resync."""
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT ch.table_name, coalesce(ch.new_row, ch.old_row)->>'id' "
            "FROM pyfuncs.realtime_commit c JOIN pyfuncs.realtime_change ch USING (txid) "
            "ORDER BY c.position, ch.id"
        ).fetchall()
    return [(str(t), int(i)) for t, i in rows]


def since_resync(dsn: str) -> list[Change]:
    """The log as a consumer that resynced last reads it."""
    while True:
        try:
            return log(dsn, after=Position(pruned_through(dsn), 0))
        except ResyncRequired:  # skipped again meanwhile
            continue


def run(dsn: str, *statements: str, params: list[Any] | None = None) -> None:
    """Each statement in a transaction of its own."""
    with psycopg.connect(dsn, autocommit=True) as db:
        for statement in statements:
            db.execute(statement, params)  # type: ignore[arg-type]


def skipped(dsn: str) -> list[tuple[int, str]]:
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT (lsn - '0/0')::bigint, reason FROM pyfuncs.realtime_skipped ORDER BY lsn"
        ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def pruned_through(dsn: str) -> int:
    with psycopg.connect(dsn) as db:
        row = db.execute("SELECT pruned_through FROM pyfuncs.realtime_state").fetchone()
    assert row is not None
    return int(row[0])


def test_logical_messages_of_a_login_role_are_never_decoded(wal_db: str, login_role: str) -> None:
    """pg_logical_emit_message is PUBLIC's: neither one larger than a jsonb string, in a
    transaction or not, nor thousands of small ones (with the prefix someone might guess)
    reach the consumer; nothing is skipped and no one resyncs."""
    run(wal_db, "INSERT INTO rt.counter VALUES (1, 'before')")
    catch_up(wal_db)
    with psycopg.connect(login_role, autocommit=True) as poke:
        poke.execute("SELECT pg_logical_emit_message(true, 'x', repeat('a', %s))", [BIG])
        poke.execute("SELECT pg_logical_emit_message(false, 'x', repeat('a', %s))", [BIG])
        poke.execute("SELECT pg_logical_emit_message(true, p, '\\x00ff'::bytea) FROM "
                     "unnest(ARRAY['pyfuncs-none', 'wal2json', '', 'pyfuncs']) p, "
                     "generate_series(1, 2000)")  # fmt: skip
        for _ in range(200):
            poke.execute("SELECT pg_logical_emit_message(false, 'pyfuncs-none', 'x')")
    run(wal_db, "INSERT INTO rt.counter VALUES (2, 'after')")
    catch_up(wal_db)
    assert ids(log(wal_db)) == [1, 2]
    assert skipped(wal_db) == [] and pruned_through(wal_db) == 0


def test_values_jsonb_refuses_skip_their_transaction_and_consumers_resync(
    wal_db: str, conn: psycopg.Connection[Any]
) -> None:
    """json accepts "\\u0000" and a lone surrogate, jsonb does not: the write commits, and
    before 0010 every later batch failed on it. Now its transaction alone is skipped (the
    consumer's count and log say so), consumers behind it are told to resync, and the log
    goes on. A json array or composite arrives as text, so it is no poison at all."""
    conn.execute("CREATE DOMAIN rt.doc AS json")
    conn.execute("CREATE TYPE rt.pair AS (j json, n int)")
    conn.execute("CREATE TABLE rt.docs (id int PRIMARY KEY, j json, d rt.doc, a json[], "
                 "p rt.pair)")  # fmt: skip
    realtime.enable(conn, "rt.docs")
    insert = (
        "INSERT INTO rt.docs (id, j, d, a, p) VALUES (%s, %s::json, %s::rt.doc, "
        "ARRAY[%s::json], CASE WHEN %s::json IS NOT NULL THEN ROW(%s::json, 1)::rt.pair END)"
    )
    nul, surrogate = '"\\u0000"', '"\\ud800"'
    rows = [
        (1, "{}", None, None, None),
        (2, nul, None, None, None),  # poison
        (3, '{"k": [1]}', "[2]", None, None),
        (4, None, nul, None, None),  # poison: a domain over json is converted as json
        (5, surrogate, None, None, None),  # poison
        (6, None, None, nul, None),
        (7, None, None, None, nul),
        (8, "[]", None, None, None),
    ]
    rows = [(i, j, d, a, p, p) for i, j, d, a, p in rows]
    with consumer(wal_db) as cap:
        with psycopg.connect(wal_db, autocommit=True) as db:
            db.execute(insert, rows[0])
            deadline = time.monotonic() + 30
            while not log(wal_db) and time.monotonic() < deadline:
                time.sleep(0.05)
            first = log(wal_db)[-1].position
            for row in rows[1:]:
                db.execute(insert, row)
        deadline = time.monotonic() + 60
        while 8 not in ids(since_resync(wal_db)):
            assert time.monotonic() < deadline, skipped(wal_db)
            time.sleep(0.1)
        assert cap.skipped == 3
    reasons = [reason for _, reason in skipped(wal_db)]
    assert len(reasons) == 3 and all("Unicode" in r or "surrogate" in r for r in reasons), reasons
    assert pruned_through(wal_db) == skipped(wal_db)[-1][0]
    with pytest.raises(ResyncRequired):
        log(wal_db, after=first)
    after = since_resync(wal_db)
    assert ids(after) == [6, 7, 8]
    assert after[0].new is not None and after[0].new["a"] == '{"\\"\\\\u0000\\""}'
    assert after[1].new is not None and after[1].new["p"] == '("""\\\\u0000""",1)'
    assert [i for _, i in logged(wal_db)] == [1, 3, 6, 7, 8]


def test_many_values_jsonb_refuses_cost_the_consumer_one_pass(wal_db: str) -> None:
    """Such values are found while the batch converts them (a json value with a \\u in it
    is tried as jsonb first), so a writer who commits many costs no more than as many
    ordinary changes: each is skipped in the same batch as its neighbours."""
    with psycopg.connect(wal_db, autocommit=True) as db:
        db.execute("ALTER TABLE rt.counter ADD COLUMN j json")
        for i in range(300):
            db.execute("INSERT INTO rt.counter (id, j) VALUES (%s, %s)",
                       [i, '"\\u0000"' if i % 2 else '"caf\\u00e9"'])  # fmt: skip
    catch_up(wal_db, options="-c track_functions=pl")
    with psycopg.connect(wal_db, autocommit=True) as db:
        calls = dict(db.execute("SELECT funcname, calls FROM pg_stat_user_functions").fetchall())
    # one batch, and not the slow path (which probes, one failed batch per transaction)
    assert calls["realtime_wal_apply"] == 1 and "realtime_wal_isolate" not in calls
    assert len(skipped(wal_db)) == 150
    assert [i for _, i in logged(wal_db)] == list(range(0, 300, 2))
    assert since_resync(wal_db) == []


def test_a_value_too_large_for_jsonb_is_skipped_and_an_uncaptured_table_costs_nothing(
    wal_db: str,
) -> None:
    """A text of 300 million characters in a captured table: its transaction is skipped (over
    64 MB); in a table that is not captured, wal2json never writes it."""
    run(wal_db, "INSERT INTO rt.counter VALUES (1, 'before')")
    catch_up(wal_db)
    run(wal_db, "INSERT INTO rt.other VALUES (1, repeat('a', %s))", params=[BIG])
    run(wal_db, "INSERT INTO rt.counter VALUES (2, 'after other')")
    catch_up(wal_db)
    assert ids(log(wal_db)) == [1, 2] and skipped(wal_db) == []
    run(wal_db, "INSERT INTO rt.counter VALUES (3, repeat('a', %s))", params=[BIG])
    run(wal_db, "INSERT INTO rt.counter VALUES (4, 'after')")
    catch_up(wal_db)
    assert [reason for _, reason in skipped(wal_db)] == ["a change of more than 64 MB"]
    assert ids(since_resync(wal_db)) == [4]
    assert [i for _, i in logged(wal_db)] == [1, 2, 4]


def test_a_row_wal2json_cannot_write_is_skipped(wal_db: str) -> None:
    """180 million control characters: wal2json escapes each as \\u0001, and its output
    passes 1 GB, so the slot itself fails to decode. The failing transaction is found and
    skipped, the ones before it are applied, and capture goes on."""
    run(wal_db, "INSERT INTO rt.counter VALUES (1, 'before')",
        "INSERT INTO rt.counter VALUES (2, repeat(chr(1), 180000000))",
        "INSERT INTO rt.counter VALUES (3, 'after')")  # fmt: skip
    catch_up(wal_db)
    [(position, reason)] = skipped(wal_db)
    assert "SQLSTATE 54000" in reason and pruned_through(wal_db) == position
    assert [i for _, i in logged(wal_db)] == [1, 3]
    assert ids(since_resync(wal_db)) == [3]  # 1 was before it, 3 after


def test_values_do_not_depend_on_the_consumer_session(
    wal_db: str, conn: psycopg.Connection[Any]
) -> None:
    """A consumer with every output setting odd writes what one with the defaults writes,
    and, for the types to_jsonb gives their text form or converts (README "What a change
    carries"), what the triggers write."""
    conn.execute("CREATE TABLE rt.kinds (id int PRIMARY KEY, ts timestamptz, t timestamp, "
                 "d date, i interval, f float8, r real, n numeric, b bytea, tm timetz, "
                 "tr tstzrange, ds date[])")  # fmt: skip
    realtime.enable(conn, "rt.kinds")
    values = ("'2024-02-03 04:05:06.789+02', '2024-02-03 04:05:06', '2024-02-03', "
              "'1 day 02:03:04', 0.1, 0.1, 1.50, '\\x00ff', '04:05:06+02', "
              "'[2024-01-01, 2024-02-01)', '{2024-01-01}'")  # fmt: skip
    odd = ("-c DateStyle=SQL,DMY -c IntervalStyle=sql_standard -c extra_float_digits=-10 "
           "-c bytea_output=escape -c TimeZone=Pacific/Chatham")  # fmt: skip

    def write_and_capture(id: int, options: str) -> None:
        run(wal_db, f"INSERT INTO rt.kinds VALUES ({id}, {values})")
        catch_up(wal_db, options=options)

    write_and_capture(1, odd)
    write_and_capture(2, "")
    capture.set_mode(conn, "trigger")
    run(wal_db, f"INSERT INTO rt.kinds VALUES (3, {values})")
    catch_up(wal_db)
    rows = {c.new.pop("id"): c.new for c in log(wal_db) if c.table == "kinds" and c.new}
    assert rows[1] == rows[2]
    same = ("ts", "t", "d", "i", "f", "r", "n", "b", "tm", "tr")
    assert {k: rows[2][k] for k in same} == {k: rows[3][k] for k in same}
    assert rows[2]["ts"] == "2024-02-03T02:05:06.789+00:00" and rows[2]["b"] == "\\x00ff"


def test_a_table_renamed_while_capture_lags_is_never_delivered_as_another(
    wal_db: str, conn: psycopg.Connection[Any]
) -> None:
    """Two captured tables swap names, and a third is renamed, with changes made before the
    consumer read them: those are skipped and consumers resync, rather than delivered as the
    other table's (or dropped without a word); what follows is captured as usual."""
    for name in ("a", "b", "c"):
        conn.execute(sql.SQL("CREATE TABLE rt.{} (id int PRIMARY KEY, note text)").format(
            sql.Identifier(name)))  # fmt: skip
        realtime.enable(conn, f"rt.{name}")
    run(wal_db, "INSERT INTO rt.a VALUES (0, 'A')")
    catch_up(wal_db)
    seen = log(wal_db)[-1].position
    run(wal_db, "INSERT INTO rt.a VALUES (1, 'A')", "INSERT INTO rt.b VALUES (1, 'B')",
        "INSERT INTO rt.c VALUES (1, 'C')")  # fmt: skip
    conn.execute("ALTER TABLE rt.a RENAME TO tmp")
    conn.execute("ALTER TABLE rt.b RENAME TO a")
    conn.execute("ALTER TABLE rt.tmp RENAME TO b")
    conn.execute("ALTER TABLE rt.c RENAME TO c2")
    run(wal_db, "INSERT INTO rt.a VALUES (2, 'B')", "INSERT INTO rt.b VALUES (2, 'A')",
        "INSERT INTO rt.c2 VALUES (2, 'C')")  # fmt: skip
    catch_up(wal_db)
    with pytest.raises(ResyncRequired):
        log(wal_db, after=seen)
    # the renames were noted as they committed (the event trigger): the changes before them
    # are skipped, those after them are not
    assert len(skipped(wal_db)) == 3 and all("renamed" in r for _, r in skipped(wal_db))
    run(wal_db, "INSERT INTO rt.a VALUES (3, 'B')", "INSERT INTO rt.b VALUES (3, 'A')",
        "INSERT INTO rt.c2 VALUES (3, 'C')")  # fmt: skip
    catch_up(wal_db)
    # each table's changes under the name it was enabled with, whatever it is called now
    assert logged(wal_db) == [("a", 0), ("b", 2), ("a", 2), ("c", 2), ("b", 3), ("a", 3), ("c", 3)]
    assert all(c.table == (c.new or {})["note"].lower() for c in since_resync(wal_db))
    catch_up(wal_db)  # everything before the renames is read: the doubt is over
    with psycopg.connect(wal_db) as db:
        assert db.execute("SELECT count(*) FROM pyfuncs.realtime_wal_doubt").fetchone() == (0,)


def batch_of(dsn: str, changes: int) -> None:
    """One SQL batch of the consumer that reads at most about `changes` changes."""
    flushed(dsn)
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("SELECT * FROM pyfuncs.realtime_wal_capture(%s)", [changes])


@pytest.mark.parametrize("leaves", ["dropped", "disabled"])
def test_a_name_another_table_takes_while_capture_lags_is_never_delivered_as_it(
    wal_db: str, conn: psycopg.Connection[Any], leaves: str
) -> None:
    """A captured table dropped (or disabled), and another created (or renamed) and enabled
    under its name, after a batch saw the first go but before it read the first's last
    changes: those are skipped and consumers resync, rather than delivered as the second's
    rows. A name that returns with its own table is not in doubt."""
    conn.execute("CREATE TABLE rt.a (id int PRIMARY KEY, note text)")
    realtime.enable(conn, "rt.a")
    catch_up(wal_db)
    run(wal_db, *[f"INSERT INTO rt.counter VALUES ({i})" for i in range(50)])
    run(wal_db, "INSERT INTO rt.a VALUES (1, 'first')")
    if leaves == "dropped":
        conn.execute("DROP TABLE rt.a")
        conn.execute("CREATE TABLE rt.a (id int PRIMARY KEY, note text)")
    else:
        realtime.disable(conn, "rt.a")
        conn.execute("ALTER TABLE rt.a RENAME TO a_old")
        conn.execute("CREATE TABLE rt.a (id int PRIMARY KEY, note text)")
    batch_of(wal_db, 10)  # sees rt.a go, and reads only some of the counter's changes
    realtime.enable(conn, "rt.a")
    run(wal_db, "INSERT INTO rt.a VALUES (2, 'second')")
    catch_up(wal_db)
    assert ("a", 1) not in logged(wal_db)
    assert [r for _, r in skipped(wal_db) if "renamed" in r]
    run(wal_db, "INSERT INTO rt.a VALUES (3, 'second')")
    catch_up(wal_db)
    # the second table's changes, all of them: it was in doubt only from when it was enabled
    assert [(c.new or {})["id"] for c in since_resync(wal_db) if c.table == "a"] == [2, 3]
    if leaves == "disabled":  # back with its own table: nothing in doubt
        realtime.disable(conn, "rt.a")
        catch_up(wal_db)
        before = len(skipped(wal_db))
        run(wal_db, "INSERT INTO rt.a VALUES (4, 'second')")
        realtime.enable(conn, "rt.a")
        run(wal_db, "INSERT INTO rt.a VALUES (5, 'second')")
        catch_up(wal_db)
        assert len(skipped(wal_db)) == before and logged(wal_db)[-1] == ("a", 5)


def test_a_partition_made_and_renamed_before_any_batch_is_not_missed(
    wal_db: str, conn: psycopg.Connection[Any]
) -> None:
    """A partition's name is noted as its DDL commits: one created, written and renamed (and
    its first name taken by another partition) before a batch ran is neither dropped without
    a word nor confused with the other: its changes under the first name are skipped and
    consumers resync."""
    conn.execute("CREATE TABLE rt.parts (id int PRIMARY KEY) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE rt.p0 PARTITION OF rt.parts FOR VALUES FROM (0) TO (10)")
    realtime.enable(conn, "rt.parts")
    catch_up(wal_db)
    seen = log(wal_db)[-1].position if log(wal_db) else Position()
    conn.execute("CREATE TABLE rt.p1 PARTITION OF rt.parts FOR VALUES FROM (10) TO (20)")
    run(wal_db, "INSERT INTO rt.parts VALUES (11)")
    conn.execute("ALTER TABLE rt.p1 RENAME TO p1x")
    conn.execute("CREATE TABLE rt.p1 PARTITION OF rt.parts FOR VALUES FROM (20) TO (30)")
    run(wal_db, "INSERT INTO rt.parts VALUES (21), (12)")
    catch_up(wal_db)
    assert [r for _, r in skipped(wal_db) if "renamed" in r]
    with pytest.raises(ResyncRequired):
        log(wal_db, after=seen)
    run(wal_db, "INSERT INTO rt.parts VALUES (13), (22)")
    catch_up(wal_db)
    assert sorted(int((c.new or {})["id"]) for c in since_resync(wal_db)) == [12, 13, 21, 22]


def test_partitions_are_captured_as_their_enabled_table_by_the_names_they_have(
    wal_db: str, conn: psycopg.Connection[Any]
) -> None:
    """wal2json is asked for the enabled tables and all their partitions, those made after
    enabling too (the list is made at each batch); a partition detached is no longer
    captured, and one renamed while capture lags makes consumers resync."""
    conn.execute("CREATE TABLE rt.parts (id int PRIMARY KEY) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE rt.p1 PARTITION OF rt.parts FOR VALUES FROM (0) TO (10) "
                 "PARTITION BY RANGE (id)")  # fmt: skip
    conn.execute("CREATE TABLE rt.p1a PARTITION OF rt.p1 FOR VALUES FROM (0) TO (5)")
    realtime.enable(conn, "rt.parts")
    conn.execute("CREATE TABLE rt.p2 PARTITION OF rt.parts FOR VALUES FROM (10) TO (20)")
    run(wal_db, "INSERT INTO rt.parts VALUES (1), (11)", "INSERT INTO rt.p2 VALUES (12)")
    catch_up(wal_db)
    assert logged(wal_db) == [("parts", 1), ("parts", 11), ("parts", 12)]
    conn.execute("ALTER TABLE rt.parts DETACH PARTITION rt.p2")
    run(wal_db, "INSERT INTO rt.p2 VALUES (13)", "INSERT INTO rt.parts VALUES (2)")
    catch_up(wal_db)
    assert logged(wal_db)[3:] == [("parts", 2)] and skipped(wal_db) == []
    run(wal_db, "INSERT INTO rt.parts VALUES (3)")
    conn.execute("ALTER TABLE rt.p1a RENAME TO p1x")
    run(wal_db, "INSERT INTO rt.parts VALUES (4)")
    catch_up(wal_db)
    # (the rename noted as it committed: only the change before it is in doubt)
    assert len(skipped(wal_db)) == 1 and logged(wal_db)[4:] == [("parts", 4)]
    run(wal_db, "INSERT INTO rt.parts VALUES (0)")
    catch_up(wal_db)
    assert logged(wal_db)[4:] == [("parts", 4), ("parts", 0)]


@pytest.mark.parametrize("schema", ["rt", "we.ird sch,ema"], ids=["plain-schema", "escaped-schema"])
def test_names_that_look_like_wal2json_escapes_are_matched_exactly(
    wal_db: str, conn: psycopg.Connection[Any], schema: str
) -> None:
    """wal2json's add-tables list splits at commas and dots, trims spaces, reads * as "all"
    and a backslash as an escape: every captured name is given escaped, and no other table
    matches it."""
    captured = ["a,b", "do.t", "sp ace", "quo'te", "back\\slash", "*", "x\\", "ünï", "ta\tb",
                "*.*", "\\,"]  # fmt: skip
    decoys = ["a", "b", "do", "t", "sp", "ace", "x", "slash", "back", "decoy", "\\"]
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    for name in captured + decoys:
        table = sql.Identifier(schema, name)
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(table))
        if name in captured:
            realtime.enable(conn, table.as_string(conn))
    with psycopg.connect(wal_db, autocommit=True) as db:
        for i, name in enumerate(captured + decoys):
            db.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(schema, name)),
                       [i])  # fmt: skip
    catch_up(wal_db)
    got = sorted((c.schema, c.table) for c in log(wal_db))
    assert got == sorted((schema, name) for name in captured) and skipped(wal_db) == []


def test_a_capture_transaction_left_open_holds_capture_up_for_seconds(
    wal_db: str, cluster: Cluster, conn: psycopg.Connection[Any]
) -> None:
    """A consumer role that calls the capture function in a transaction and leaves it open
    keeps the capture lock. Idle, its session is ended after 10 s (the capture function gave
    it that timeout, or its own if shorter: 2 s here), and the batch waiting behind it goes
    on; busy, the batch behind it gives up after 30 s (2 s here) with an error that names
    it, and the loop tries again."""
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as db:
        ensure_role(db, "walfeed", "LOGIN")
    conn.execute("GRANT EXECUTE ON FUNCTION pyfuncs.realtime_wal_capture(integer), "
                 "pyfuncs.realtime_wal_slot() TO walfeed")  # fmt: skip
    # (the capture lock's wait, as the function sets it: 30 s)
    conn.execute("ALTER FUNCTION pyfuncs.realtime_capture_lock_take() SET lock_timeout = '2s'")
    conn.commit()
    feed = wal_db.replace("postgres@", "walfeed@", 1)
    with psycopg.connect(feed) as unbounded:  # (no timeout of its own: it is given 10 s)
        unbounded.execute("SELECT * FROM pyfuncs.realtime_wal_capture()")
        assert unbounded.execute("SHOW idle_in_transaction_session_timeout").fetchone() == (
            "10s",
        )  # fmt: skip
    run(wal_db, "INSERT INTO rt.counter VALUES (1, 'x')")
    idle = psycopg.connect(feed, options="-c idle_in_transaction_session_timeout=2s")
    idle.execute("SELECT * FROM pyfuncs.realtime_wal_capture()")  # (its 2 s kept)
    started = time.monotonic()
    run(wal_db, "INSERT INTO rt.counter VALUES (2, 'y')")
    catch_up(wal_db)  # waits for the lock, which the server takes back at 2 s
    assert 1.5 < time.monotonic() - started < 10 and ids(log(wal_db)) == [1, 2]
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
        idle.execute("SELECT 1")
    idle.close()

    busy = psycopg.connect(feed)
    busy.execute("SELECT * FROM pyfuncs.realtime_wal_capture()")

    def sleep() -> None:
        with pytest.raises(psycopg.errors.QueryCanceled):
            busy.execute("SELECT pg_sleep(60)")

    sleeper = threading.Thread(target=sleep)
    sleeper.start()
    pid = busy.info.backend_pid
    try:
        with pytest.raises(ConfigError, match=rf"held up: backend {pid} \(role walfeed, active"):
            catch_up(wal_db)
    finally:
        conn.execute("SELECT pg_cancel_backend(%s)", [pid])
        sleeper.join()
        busy.close()
    catch_up(wal_db)


# --- the second red team -----------------------------------------------------------------


@pytest.fixture
def writer(cluster: Cluster, wal_db: str, conn: psycopg.Connection[Any]) -> str:
    """rt.part (captured, partitioned) and rt.docs (captured, a json column), which the role
    walwriter may write; nothing else."""
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as db:
        ensure_role(db, "walwriter", "LOGIN")
    conn.execute("GRANT USAGE ON SCHEMA rt TO walwriter")
    conn.execute("CREATE TABLE rt.part (id int, k int, PRIMARY KEY (id, k)) PARTITION BY LIST (k)")
    conn.execute("CREATE TABLE rt.part1 PARTITION OF rt.part FOR VALUES IN (1)")
    conn.execute("CREATE TABLE rt.docs (id int PRIMARY KEY, j json)")
    conn.execute("GRANT SELECT, INSERT, UPDATE ON rt.part, rt.docs TO walwriter")
    conn.commit()
    for table in ("rt.part", "rt.docs"):
        realtime.enable(conn, table)
    return wal_db.replace("postgres@", "walwriter@", 1)


@pytest.mark.parametrize(
    "hold",
    ["LOCK TABLE rt.part IN ACCESS EXCLUSIVE MODE", "LOCK TABLE rt.part IN SHARE MODE",
     "UPDATE rt.part SET id = id"],
)  # fmt: skip
def test_a_writer_holding_a_lock_on_a_partitioned_table_holds_no_one_else_up(
    wal_db: str, writer: str, hold: str
) -> None:
    """LOCK TABLE on a partitioned table reaches its partitions, with no privilege on them;
    batches list partitions without taking locks, so another writer's change is captured
    while the lock is held."""
    with psycopg.connect(writer) as attacker:  # its transaction left open, holding the lock
        attacker.execute("SET idle_in_transaction_session_timeout = 0")
        attacker.execute(hold)
        with psycopg.connect(wal_db, autocommit=True) as db:
            db.execute("INSERT INTO rt.counter VALUES (1, 'someone else')")
        result: list[BaseException | None] = []

        def consume() -> None:
            try:
                catch_up(wal_db, options="-c statement_timeout=10s")
                result.append(None)
            except BaseException as exc:  # (reported by the assertion)
                result.append(exc)

        thread = threading.Thread(target=consume)
        thread.start()
        thread.join(20)
        attacker.rollback()
        thread.join(20)
    assert result == [None], f"capture was held up by a writer's lock: {result}"
    assert ("counter", 1) in logged(wal_db)


def test_json_numbers_jsonb_cannot_hold_cost_one_pass(wal_db: str, writer: str) -> None:
    """json takes numbers numeric cannot hold (1e200000, 1e-200000, a run of 200,000 digits);
    like escapes, they are found while the batch converts them, not by a failed batch and a
    search per transaction."""
    numbers = ["1e200000", "-1E-200000", "1" * 200_000, '{"a": [1e+131073]}']
    with psycopg.connect(writer, autocommit=True) as attacker, \
            psycopg.connect(wal_db, autocommit=True) as other:  # fmt: skip
        for i in range(20):
            attacker.execute("INSERT INTO rt.docs VALUES (%s, %s)", [i, numbers[i % len(numbers)]])
            other.execute("INSERT INTO rt.counter VALUES (%s, 'x')", [i])
    with psycopg.connect(wal_db, autocommit=True) as db:
        db.execute("SELECT pg_stat_reset()")
    catch_up(wal_db, options="-c track_functions=pl")
    with psycopg.connect(wal_db, autocommit=True) as db:
        calls = dict(db.execute("SELECT funcname, calls FROM pg_stat_user_functions").fetchall())
        skipped = db.execute("SELECT count(*) FROM pyfuncs.realtime_skipped").fetchone()
    assert "realtime_wal_isolate" not in calls, calls
    assert skipped == (20,)
    assert [i for t, i in logged(wal_db) if t == "counter"] == list(range(20))


def test_a_statement_timeout_of_the_consumers_role_does_not_stop_capture(wal_db: str) -> None:
    """A batch holding a large transaction takes longer than a statement_timeout its role may
    have; the consumer's session sets none, so capture gets past it."""
    with psycopg.connect(wal_db, autocommit=True) as db:
        database = sql.Identifier(db.info.dbname)
        db.execute(sql.SQL("ALTER ROLE postgres IN DATABASE {} SET statement_timeout = '50ms'")
                   .format(database))  # fmt: skip
        try:
            db.execute("INSERT INTO rt.counter SELECT g, repeat(md5(g::text), 20000) "
                       "FROM generate_series(1, 300) g")  # fmt: skip
            catch_up(wal_db)
        finally:
            db.execute(sql.SQL("ALTER ROLE postgres IN DATABASE {} RESET statement_timeout")
                       .format(database))  # fmt: skip
    assert len([t for t, _ in logged(wal_db) if t == "counter"]) == 300


def test_a_table_that_only_inherits_from_a_captured_one_is_not_captured_as_it(
    wal_db: str, conn: psycopg.Connection[Any]
) -> None:
    """Partitions are captured as their enabled table; a table that merely INHERITS from one
    is a table of its own (its owner's rows), as in trigger mode."""
    conn.execute("CREATE TABLE rt.heir (extra int) INHERITS (rt.counter)")
    conn.commit()
    with psycopg.connect(wal_db, autocommit=True) as db:
        db.execute("INSERT INTO rt.heir VALUES (1, 'inherited', 0)")
        db.execute("INSERT INTO rt.counter VALUES (2, 'own')")
    catch_up(wal_db)
    assert logged(wal_db) == [("counter", 2)]
