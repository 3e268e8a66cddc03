"""The streaming WAL consumer (issue 13): the consumer reads the slot over the replication
protocol and writes through pyfuncs.realtime_wal_write. Its confirmed position follows the
log; the stream starts again with a new list when a table is enabled, disabled or renamed; a
stream ended at any moment loses and repeats nothing; what it cannot write (too large, a value
jsonb refuses) is left to the SQL batches; and only a REPLICATION role may write the log."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyfuncs import capture, realtime
from pyfuncs.embedded import Cluster
from tests.walcapture import (
    consumer,
    flushed,
    ids,
    log,
    wait_for,
)


@pytest.fixture
def wal_db(dsn: str, conn: psycopg.Connection[Any]) -> Iterator[str]:
    conn.execute("CREATE SCHEMA rt")
    conn.execute("CREATE TABLE rt.counter (id int PRIMARY KEY, n int NOT NULL, note text)")
    conn.execute("CREATE TABLE rt.other (id int PRIMARY KEY, doc json)")
    capture.set_mode(conn, "wal")
    realtime.enable(conn, "rt.counter")
    yield dsn


def walsender(dsn: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute(
            "SELECT a.pid FROM pg_replication_slots s JOIN pg_stat_activity a "
            "ON a.pid = s.active_pid WHERE s.database = current_database() "
            "AND a.backend_type = 'walsender' AND a.application_name = 'pyfuncs-capture-stream'"
        ).fetchone()
    return None if row is None else int(row[0])


def logged(dsn: str, table: str = "counter") -> list[int]:
    """The ids of a table's changes in the log, whatever consumers were told to resync."""
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT coalesce(ch.new_row, ch.old_row)->>'id' FROM pyfuncs.realtime_commit c "
            "JOIN pyfuncs.realtime_change ch USING (txid) WHERE ch.table_name = %s "
            "ORDER BY c.position, ch.id",
            [table],
        ).fetchall()
    return [int(i) for (i,) in rows]


def test_the_consumer_streams_and_confirms_only_what_the_log_holds(wal_db: str) -> None:
    with consumer(wal_db) as cap:
        wait_for(lambda: cap.streaming is True and walsender(wal_db) is not None)
        with psycopg.connect(wal_db, autocommit=True) as db:
            for i in range(200):
                db.execute("INSERT INTO rt.counter VALUES (%s, 0)", [i])
            with db.transaction():  # one transaction of several changes
                db.execute("UPDATE rt.counter SET n = n + 1 WHERE id < 50")
                db.execute("DELETE FROM rt.counter WHERE id = 199")
        flushed(wal_db)
        wait_for(lambda: len(log(wal_db)) == 251)
        changes = log(wal_db)
        assert ids(changes[:200]) == list(range(200))
        assert [c.op for c in changes[200:]] == ["UPDATE"] * 50 + ["DELETE"]
        assert len({c.position.commit for c in changes[200:]}) == 1  # one commit
        assert cap.captured == 251 and cap.streaming
        with psycopg.connect(wal_db, autocommit=True) as db:
            # the slot is told what the log holds (and, caught up, the end of the WAL sent,
            # which other databases' writes move past applied_lsn: equality was a flake)
            wait_for(lambda: db.execute(
                "SELECT s.confirmed_flush_lsn >= r.applied_lsn FROM pg_replication_slots s, "
                "pyfuncs.realtime_state r WHERE s.database = current_database()"
            ).fetchone()[0])  # fmt: skip


def test_enabling_disabling_and_renaming_start_the_stream_again(wal_db: str) -> None:
    with consumer(wal_db) as cap, psycopg.connect(wal_db, autocommit=True) as db:
        wait_for(lambda: cap.streaming is True and walsender(wal_db) is not None)
        first = walsender(wal_db)
        realtime.enable(db, "rt.other")
        db.execute("INSERT INTO rt.other VALUES (2, '{}')")
        flushed(wal_db)
        wait_for(lambda: logged(wal_db, "other") == [2])
        assert walsender(wal_db) not in (None, first)  # a new stream, with rt.other in it
        db.execute("ALTER TABLE rt.other RENAME TO renamed")
        db.execute("INSERT INTO rt.renamed VALUES (3, '{}')")
        db.execute("INSERT INTO rt.counter VALUES (3, 0)")
        flushed(wal_db)
        # the rename is noted as it commits (the event trigger), so the stream starts again
        # with the new name and nothing is in doubt (renames before a change are in
        # test_wal_safety)
        wait_for(lambda: logged(wal_db) == [3] and logged(wal_db, "other") == [2, 3])
        db.execute("INSERT INTO rt.renamed VALUES (4, '{}')")
        flushed(wal_db)
        wait_for(lambda: logged(wal_db, "other") == [2, 3, 4])
        assert db.execute("SELECT count(*) FROM pyfuncs.realtime_skipped").fetchone()[0] == 0
        realtime.disable(db, "rt.renamed")
        db.execute("INSERT INTO rt.renamed VALUES (5, '{}')")
        db.execute("INSERT INTO rt.counter VALUES (5, 0)")
        flushed(wal_db)
        wait_for(lambda: logged(wal_db) == [3, 5])
        assert logged(wal_db, "other") == [2, 3, 4]


def test_a_stream_ended_at_any_moment_loses_and_repeats_nothing(wal_db: str) -> None:
    stop = threading.Event()

    def end_streams() -> None:
        with psycopg.connect(wal_db, autocommit=True) as db:
            while not stop.is_set():
                if (pid := walsender(wal_db)) is not None:
                    db.execute("SELECT pg_terminate_backend(%s)", [pid])
                time.sleep(0.05)

    with consumer(wal_db) as cap:
        wait_for(lambda: cap.streaming is True)
        killer = threading.Thread(target=end_streams)
        killer.start()
        try:
            with psycopg.connect(wal_db, autocommit=True) as db:
                for i in range(1500):
                    db.execute("INSERT INTO rt.counter VALUES (%s, 0)", [i])
        finally:
            stop.set()
            killer.join()
        flushed(wal_db)
        wait_for(lambda: len(log(wal_db)) >= 1500, timeout=60)
        time.sleep(0.3)
        assert ids(log(wal_db)) == list(range(1500))


def test_what_the_stream_cannot_write_is_left_to_the_sql_batches(
    wal_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture, "STREAM_TX", 64 << 10)
    with consumer(wal_db) as cap, psycopg.connect(wal_db, autocommit=True) as db:
        realtime.enable(db, "rt.other")
        wait_for(lambda: cap.streaming is True and walsender(wal_db) is not None)
        db.execute("INSERT INTO rt.other VALUES (1, '\"\\u0000\"')")  # jsonb refuses it
        # nested too deep for the consumer's parser (the writer's json accepts it): an error
        # of class 54, which psycopg raises as OperationalError, is no lost connection
        for depth in range(20_000, 5_000, -100):  # as deep as the writer's json accepts
            with contextlib.suppress(psycopg.errors.StatementTooComplex):
                db.execute("INSERT INTO rt.other SELECT 2, (repeat('[', %s) || repeat(']', %s))"
                           "::json", [depth, depth])  # fmt: skip
                break
        db.execute("INSERT INTO rt.counter VALUES (1, 0)")
        with db.transaction():  # larger than STREAM_TX
            db.execute("INSERT INTO rt.counter SELECT g, 0, repeat('x', 1000) "
                       "FROM generate_series(2, 201) g")  # fmt: skip
        db.execute("INSERT INTO rt.counter VALUES (202, 0)")
        flushed(wal_db)
        wait_for(lambda: logged(wal_db) == list(range(1, 203)), timeout=60)
        assert logged(wal_db, "other") == []
        assert cap.skipped == 2
        assert db.execute("SELECT count(*) FROM pyfuncs.realtime_skipped").fetchone()[0] == 2
        wait_for(lambda: cap.streaming is True and walsender(wal_db) is not None)


def test_disabling_the_last_table_ends_the_stream_and_drops_the_slot(wal_db: str) -> None:
    with consumer(wal_db) as cap, psycopg.connect(wal_db, autocommit=True) as db:
        wait_for(lambda: cap.streaming is True and walsender(wal_db) is not None)
        realtime.disable(db, "rt.counter")
        assert walsender(wal_db) is None
        assert db.execute("SELECT count(*) FROM pg_replication_slots "
                          "WHERE database = current_database()").fetchone()[0] == 0  # fmt: skip
        time.sleep(0.5)  # the consumer finds nothing to capture, and makes no slot
        assert db.execute("SELECT count(*) FROM pg_replication_slots "
                          "WHERE database = current_database()").fetchone()[0] == 0  # fmt: skip


def test_only_a_replication_role_granted_execute_writes_the_log(
    wal_db: str, conn: psycopg.Connection[Any], login_role: str
) -> None:
    call = ("SELECT * FROM pyfuncs.realtime_wal_write('rt.counter', "
            "ARRAY[1]::bigint[], ARRAY[1]::bigint[], ARRAY['{\"action\":\"C\"}'])")  # fmt: skip
    with psycopg.connect(login_role, autocommit=True) as db:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.execute(call)
        conn.execute(
            "GRANT EXECUTE ON FUNCTION "
            "pyfuncs.realtime_wal_write(text, bigint[], bigint[], text[]) TO walpoke"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="REPLICATION"):
            db.execute(call)
    assert log(wal_db) == []


def test_transactions_larger_than_a_write_are_written_whole(
    wal_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture, "STREAM_WRITE", 8 << 10)  # a transaction below is 200 KB
    with consumer(wal_db) as cap, psycopg.connect(wal_db, autocommit=True) as db:
        wait_for(lambda: cap.streaming is True and walsender(wal_db) is not None)
        first = walsender(wal_db)
        for start in (1, 201, 401):
            with db.transaction():
                db.execute("INSERT INTO rt.counter SELECT g, 0, repeat('x', 1000) "
                           "FROM generate_series(%s::int, %s::int) g", [start, start + 199])  # fmt: skip
            db.execute("INSERT INTO rt.counter VALUES (%s, 0)", [start + 1000])
        flushed(wal_db)
        expected = [
            i for start in (1, 201, 401) for i in [*range(start, start + 200), start + 1000]
        ]
        wait_for(lambda: logged(wal_db) == expected)
        assert walsender(wal_db) == first  # all through the one stream


@pytest.mark.exclusive
def test_a_clean_shutdown_is_not_held_up_by_the_stream(wal_db: str, cluster: Cluster) -> None:
    """A walsender shutting down waits until its client's flush position reaches the end
    of what it sent; a consumer whose last transactions captured nothing must say it has
    dealt with them (red team: pg_ctl stop -m fast waited for ever)."""
    with consumer(wal_db) as cap, psycopg.connect(wal_db, autocommit=True) as db:
        wait_for(lambda: cap.streaming is True and walsender(wal_db) is not None)
        db.execute("INSERT INTO rt.counter VALUES (1, 0)")
        flushed(wal_db)  # (a transaction without captured changes comes last)
        wait_for(lambda: logged(wal_db) == [1])
        time.sleep(0.5)
        started = time.monotonic()
        cluster.down()
        assert time.monotonic() - started < 10
    cluster.up()
    with consumer(wal_db) as cap, psycopg.connect(wal_db, autocommit=True) as db:
        db.execute("INSERT INTO rt.counter VALUES (2, 0)")
        flushed(wal_db)
        wait_for(lambda: logged(wal_db) == [1, 2])


def test_transaction_ids_are_made_full_on_the_right_side_of_the_snapshot(
    conn: psycopg.Connection[Any],
) -> None:
    """A 32-bit id from the WAL is the full id within 2^31 of the snapshot's xmax, either
    side: a commit flushed but not visible yet can be at or after that xmax, and an epoch back
    it would count as visible (red team)."""
    epoch = 1 << 32
    cases = [
        (90, epoch + 100, epoch + 90),  # older, same epoch
        (105, epoch + 100, epoch + 105),  # newer than xmax: not an epoch back
        (epoch - 6, epoch + 100, epoch - 6),  # older, the epoch before
        (5, 2 * epoch - 6, 2 * epoch + 5),  # newer, the next epoch
        (700, 1000, 700),  # epoch 0
        (1001, 1000, 1001),
    ]
    for xid, top, full in cases:
        got = conn.execute("SELECT pyfuncs.realtime_wal_txid(%s, %s)::text::bigint",
                           [xid, top]).fetchone()[0]  # fmt: skip
        assert got == full, (xid, top)


def test_a_transaction_is_looked_up_in_the_log_only_when_it_predates_the_switch(
    wal_db: str,
) -> None:
    """Only a transaction committed before the switch to 'wal' can be in the log already
    (captured by its triggers); the lookup of every other is skipped, so that a plan kept
    from when the log was empty (realtime_wal_write plans once) cannot read the whole log
    for every change. The batch's own statistics show it: no scan of realtime_commit."""
    with psycopg.connect(wal_db, autocommit=True) as db:
        for i in range(50):
            db.execute("INSERT INTO rt.counter VALUES (%s, 0)", [i])
    flushed(wal_db)
    with psycopg.connect(wal_db) as db:  # one transaction: its own statistics
        captured = db.execute("SELECT captured FROM pyfuncs.realtime_wal_capture(1000)").fetchone()
        scans = db.execute(
            "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables "
            "WHERE relid = 'pyfuncs.realtime_commit'::regclass"
        ).fetchone()
    assert captured == (50,) and scans == (0,)
    with psycopg.connect(wal_db, autocommit=True) as db:
        db.execute("INSERT INTO rt.counter VALUES (1000, 0)")
    flushed(wal_db)
    with psycopg.connect(wal_db) as db:  # committed before the switch: looked up
        db.execute("UPDATE pyfuncs.realtime_state SET wal_since = pg_current_wal_insert_lsn()")
        captured = db.execute("SELECT captured FROM pyfuncs.realtime_wal_capture(1000)").fetchone()
        scans = db.execute(
            "SELECT idx_scan FROM pg_stat_xact_user_tables "
            "WHERE relid = 'pyfuncs.realtime_commit'::regclass"
        ).fetchone()
    assert captured == (1,) and scans is not None and scans[0] >= 1


def test_a_table_renamed_again_and_again_does_not_stall_the_others(wal_db: str) -> None:
    """Each rename changes the tables to capture, and a stream starts again for it: a table
    owner renaming in a loop kept every table's changes from being written (found by a red
    team: 1 row of 21 in 20 s). Restarting too often, the consumer lets SQL batches capture
    for a while."""
    with psycopg.connect(wal_db, autocommit=True) as db:
        db.execute("CREATE TABLE rt.churn (id int PRIMARY KEY)")
        realtime.enable(db, "rt.churn")
    stop = threading.Event()

    def rename() -> None:
        with psycopg.connect(wal_db, autocommit=True) as owner:
            n = 0
            while not stop.is_set():
                owner.execute(f"ALTER TABLE rt.churn_{n} RENAME TO churn_{n + 1}" if n else
                              "ALTER TABLE rt.churn RENAME TO churn_1")  # fmt: skip
                n += 1

    with consumer(wal_db) as cap, psycopg.connect(wal_db, autocommit=True) as db:
        wait_for(lambda: cap.streaming is True)
        renamer = threading.Thread(target=rename)
        renamer.start()
        try:
            for i in range(8):
                db.execute("INSERT INTO rt.counter VALUES (%s, 0)", [i])
                flushed(wal_db)
                time.sleep(0.5)
            wait_for(lambda: logged(wal_db) == list(range(8)), timeout=5)  # while renaming
        finally:
            stop.set()
            renamer.join()


@pytest.mark.exclusive
def test_a_role_without_replication_captures_with_sql_batches_until_it_may_stream(
    wal_db: str, conn: psycopg.Connection[Any], login_role: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The grants of README "Privileges" without REPLICATION: the consumer says it cannot
    stream, captures with SQL batches, and tries to stream again later (here after 0.5 s),
    which works once the role has REPLICATION."""
    conn.execute(
        "GRANT EXECUTE ON FUNCTION pyfuncs.realtime_wal_capture(integer), "
        "pyfuncs.realtime_wal_slot(), "
        "pyfuncs.realtime_wal_write(text, bigint[], bigint[], text[]) TO walpoke"
    )
    monkeypatch.setattr(capture, "STREAM_RETRY", 0.5)
    admin = wal_db.rsplit("/", 1)[0] + "/postgres"
    try:
        with consumer(login_role) as cap, psycopg.connect(wal_db, autocommit=True) as db:
            wait_for(lambda: cap.streaming is False and cap.leading)
            db.execute("INSERT INTO rt.counter VALUES (1, 0)")
            flushed(wal_db)
            wait_for(lambda: logged(wal_db) == [1])
            assert walsender(wal_db) is None
            with psycopg.connect(admin, autocommit=True) as root:
                root.execute("ALTER ROLE walpoke REPLICATION")
            wait_for(lambda: cap.streaming is True and walsender(wal_db) is not None)
            db.execute("INSERT INTO rt.counter VALUES (2, 0)")
            flushed(wal_db)
            wait_for(lambda: logged(wal_db) == [1, 2])
    finally:
        with psycopg.connect(admin, autocommit=True) as root:
            root.execute("ALTER ROLE walpoke NOREPLICATION")


@pytest.mark.exclusive
def test_a_commit_not_yet_visible_holds_up_the_stream_even_without_captured_changes(
    wal_db: str, conn: psycopg.Connection[Any]
) -> None:
    """A schema's rename whose commit is in the WAL but not yet visible (here: waiting for a
    synchronous standby that does not exist, after its commit record is flushed), a change
    under the old name that wal2json names with the new one (so the stream leaves it out),
    and a change of another table after both: the stream gave only the last, and applied_lsn
    passed the lost change silently (found by a red team). Every commit the stream received
    is given now, so the rename's holds the others up until it is visible, and the change
    under a name in doubt is skipped with a resync, as with SQL batches."""
    conn.execute("CREATE SCHEMA rtx")
    conn.execute("CREATE TABLE rtx.t (id int PRIMARY KEY)")
    realtime.enable(conn, "rtx.t")
    admin = wal_db.rsplit("/", 1)[0] + "/postgres"
    local = "-c synchronous_commit=local"  # (these commits must not wait for the standby)
    with consumer(wal_db) as cap, psycopg.connect(wal_db, autocommit=True, options=local) as db:
        wait_for(lambda: cap.streaming is True and walsender(wal_db) is not None)
        renamer = psycopg.connect(wal_db, autocommit=True, options="-c synchronous_commit=on")
        with psycopg.connect(admin, autocommit=True) as root:
            root.execute("ALTER SYSTEM SET synchronous_standby_names = 'pyfuncs_nobody'")
            root.execute("SELECT pg_reload_conf()")
        rename = threading.Thread(target=renamer.execute, args=["ALTER SCHEMA rtx RENAME TO rty"])
        try:
            time.sleep(0.5)
            rename.start()
            wait_for(lambda: db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
            ).fetchone() == (1,))  # fmt: skip
            db.execute("INSERT INTO rtx.t VALUES (1)")  # the old name still resolves
            db.execute("INSERT INTO rt.counter VALUES (2, 0)")
            db.execute("SELECT pg_logical_emit_message(true, 'pyfuncs-tests-flush', '')")
            time.sleep(1)  # the stream has it all; the rename is not visible
            assert logged(wal_db) == []
        finally:
            with psycopg.connect(admin, autocommit=True) as root:
                root.execute("ALTER SYSTEM RESET synchronous_standby_names")
                root.execute("SELECT pg_reload_conf()")
            if rename.is_alive():
                rename.join()
            renamer.close()
        wait_for(lambda: logged(wal_db) == [2])
        skipped = db.execute("SELECT count(*) FROM pyfuncs.realtime_skipped").fetchone()
        assert skipped == (1,)  # the change under the old name: skipped, consumers resync


def test_the_stream_is_in_utf8_whatever_the_database_or_role_sets(
    wal_db: str, conn: psycopg.Connection[Any]
) -> None:
    """The server reads the stream's command (the tables to decode, by name) in the
    connection's client_encoding: a database (or the consumer's role) set to LATIN1 made
    wal2json leave out a table named café, and its changes were lost (found by a red team)."""
    conn.execute('CREATE TABLE rt."café" (id int PRIMARY KEY)')
    realtime.enable(conn, 'rt."café"')
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET client_encoding = 'LATIN1'").format(
            sql.Identifier(conn.info.dbname)
        )
    )
    with consumer(wal_db) as cap, psycopg.connect(wal_db, autocommit=True) as db:
        wait_for(lambda: cap.streaming is True and walsender(wal_db) is not None)
        for i in range(3):
            db.execute('INSERT INTO rt."café" VALUES (%s)', [i])
        flushed(wal_db)
        wait_for(lambda: logged(wal_db, "café") == [0, 1, 2])
