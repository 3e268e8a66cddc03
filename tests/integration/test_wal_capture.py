"""Capture from the WAL (issue 13): commit order from the WAL, a consumer killed at any point
losing and repeating nothing, PostgreSQL restarted, the slot lost (consumers resync), the
switch between modes, slot hygiene, and what a change carries under each replica identity.
The feed's own guarantees are tested in both modes by test_realtime_feed.py."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pyfuncs import capture, realtime
from pyfuncs.embedded import Cluster, _pg_bin
from pyfuncs.errors import ConfigError, ResyncRequired
from pyfuncs.realtime import Position
from tests.conftest import drop_database
from tests.walcapture import catch_up, consumer, flushed, ids, log

ROUNDS = 60  # (without the subtransaction, two runs of 30 rounds in three failed)


@pytest.fixture
def wal_db(dsn: str, conn: psycopg.Connection[Any]) -> Iterator[str]:
    conn.execute("CREATE SCHEMA rt")
    conn.execute("CREATE TABLE rt.counter (id int PRIMARY KEY, n int NOT NULL, note text)")
    conn.commit()
    capture.set_mode(conn, "wal")
    realtime.enable(conn, "rt.counter")
    yield dsn


def insert(dsn: str, rows: range, durable: bool = False) -> None:
    """(The test cluster commits asynchronously: a crash loses the last commits unless
    `durable`.)"""
    options = "-c synchronous_commit=on" if durable else ""
    with psycopg.connect(dsn, autocommit=True, options=options) as db:
        for i in rows:
            db.execute("INSERT INTO rt.counter VALUES (%s, 0)", [i])


def slot(dsn: str) -> dict[str, Any] | None:
    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute(
            "SELECT slot_name, confirmed_flush_lsn::text, wal_status FROM pg_replication_slots "
            "WHERE database = current_database()"
        ).fetchone()
    return None if row is None else {"name": row[0], "confirmed": row[1], "status": row[2]}


def test_positions_follow_commit_order_not_start_order(wal_db: str) -> None:
    with psycopg.connect(wal_db) as early, psycopg.connect(wal_db) as late:
        early.execute("INSERT INTO rt.counter VALUES (1, 0)")  # begins and writes first ...
        late.execute("INSERT INTO rt.counter VALUES (2, 0)")
        late.commit()  # ... but commits last
        catch_up(wal_db)
        seen = log(wal_db)
        assert ids(seen) == [2]  # the open one is not there, and does not hold `late` back
        early.commit()
    catch_up(wal_db)
    everything = log(wal_db)
    assert ids(everything) == [2, 1]
    assert log(wal_db, after=seen[-1].position) == everything[1:]
    with psycopg.connect(wal_db) as db:  # positions are the commits' LSNs
        lsns = db.execute(
            "SELECT position FROM pyfuncs.realtime_commit ORDER BY position"
        ).fetchall()
    assert [c.position.commit for c in everything] == [r[0] for r in lsns]
    assert everything[0].position.commit > 16 << 20  # an LSN, not a count of commits


def test_a_consumer_killed_mid_batch_loses_and_repeats_nothing(wal_db: str) -> None:
    """Its backend terminated after it wrote a batch's changes and before it recorded the
    batch (its UPDATE of realtime_state waits for a row lock the test holds): the batch is
    rolled back and read again by the next consumer, whole."""
    insert(wal_db, range(0, 50))
    catch_up(wal_db)
    insert(wal_db, range(50, 2050))
    with psycopg.connect(wal_db) as blocker:
        blocker.execute("SELECT FROM pyfuncs.realtime_state FOR UPDATE")
        done: list[BaseException | int] = []

        def run() -> None:
            try:
                with psycopg.connect(wal_db, autocommit=True) as conn:
                    done.append(capture.capture(conn))
            except BaseException as exc:
                done.append(exc)

        worker = threading.Thread(target=run)
        flushed(wal_db)
        worker.start()
        deadline = time.monotonic() + 20
        with psycopg.connect(wal_db, autocommit=True) as watcher:
            while True:  # the consumer has written the changes and waits to record the batch
                waiting = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND query LIKE '%realtime_wal_capture%'"
                ).fetchall()
                if waiting:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.02)
            watcher.execute("SELECT pg_terminate_backend(%s)", [waiting[0][0]])
        blocker.rollback()
        worker.join(10)
    assert len(done) == 1 and isinstance(done[0], ConfigError)
    assert ids(log(wal_db)) == list(range(50))  # nothing of the killed batch
    catch_up(wal_db)
    assert ids(log(wal_db)) == list(range(2050))


def test_a_consumer_killed_after_committing_does_not_repeat_its_batch(wal_db: str) -> None:
    """Killed after its batch committed and before the slot was advanced: the slot gives
    the batch again, and the next consumer skips it (applied_lsn)."""
    insert(wal_db, range(0, 10))
    catch_up(wal_db)  # applied, but the slot is advanced only by the next batch
    with psycopg.connect(wal_db) as db:
        applied = db.execute("SELECT applied_lsn::text FROM pyfuncs.realtime_state").fetchone()
        behind = db.execute(
            "SELECT confirmed_flush_lsn < %s::pg_lsn FROM pg_replication_slots "
            "WHERE database = current_database()",
            [applied[0] if applied else None],
        ).fetchone()
    assert behind == (True,)
    insert(wal_db, range(10, 20))
    catch_up(wal_db)
    assert ids(log(wal_db)) == list(range(20))


@pytest.mark.exclusive
def test_a_killed_consumer_process_and_a_crash_lose_and_repeat_nothing(
    wal_db: str, cluster: Cluster
) -> None:
    """`pyfuncs realtime capture --follow` killed with SIGKILL while writers commit, then
    PostgreSQL stopped abruptly (immediate shutdown: crash recovery) and started again."""
    import os
    import signal
    import sys

    env = {**os.environ, "PYFUNCS_DSN": wal_db}
    command = [sys.executable, "-m", "pyfuncs.cli", "realtime", "capture", "--follow"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        writer = threading.Thread(target=insert, args=(wal_db, range(0, 300)))
        writer.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)  # mid-stream, wherever it is
        proc.wait()
        writer.join()
    finally:
        if proc.poll() is None:
            proc.kill()
    with consumer(wal_db):
        insert(wal_db, range(300, 400), durable=True)
        subprocess.run(
            [str(_pg_bin() / "pg_ctl"), "stop", "-m", "immediate", "-D", str(cluster.data)]
            if os.geteuid() != 0
            else ["runuser", "-u", "postgres", "--", str(_pg_bin() / "pg_ctl"), "stop",
                  "-m", "immediate", "-D", str(cluster.data)],
            check=True, capture_output=True,
        )  # fmt: skip
        cluster.up()
        insert(wal_db, range(400, 500))
        deadline = time.monotonic() + 30
        while len(log(wal_db)) < 500 and time.monotonic() < deadline:
            time.sleep(0.1)
    catch_up(wal_db)
    assert ids(log(wal_db)) == list(range(500))


def test_a_lost_slot_is_made_again_and_consumers_resync(wal_db: str) -> None:
    insert(wal_db, range(0, 3))
    catch_up(wal_db)
    before = log(wal_db)
    with psycopg.connect(wal_db, autocommit=True) as db:
        name = db.execute("SELECT pyfuncs.realtime_slot_name()").fetchone()[0]  # type: ignore[index]
        db.execute("SELECT pg_drop_replication_slot(%s)", [name])
    insert(wal_db, range(3, 6))  # committed while there is no slot: not captured
    catch_up(wal_db)  # the consumer makes a new slot
    assert slot(wal_db) is not None
    insert(wal_db, range(6, 9))
    catch_up(wal_db)
    with pytest.raises(ResyncRequired, match="read the tables again"):
        log(wal_db, after=before[-1].position)  # was caught up, and missed 3..5
    with psycopg.connect(wal_db) as db:
        pruned = db.execute("SELECT pruned_through FROM pyfuncs.realtime_state").fetchone()[0]  # type: ignore[index]
    assert ids(log(wal_db, after=Position(pruned, 0))) == [6, 7, 8]  # after resync: fine


def test_switching_modes_loses_and_repeats_nothing(wal_db: str, conn: Any) -> None:
    """Writers commit all along while the mode switches wal -> trigger -> wal."""
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        with psycopg.connect(wal_db, autocommit=True) as db:
            i = 0
            while not stop.is_set():
                db.execute("INSERT INTO rt.counter VALUES (%s, 0)", [i])
                written.append(i)
                i += 1

    with consumer(wal_db):
        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.3)
        capture.set_mode(conn, "trigger")
        assert slot(wal_db) is None  # the switch applied what the slot held, then dropped it
        time.sleep(0.3)
        capture.set_mode(conn, "wal")
        time.sleep(0.3)
        stop.set()
        writer.join()
    catch_up(wal_db)
    changes = log(wal_db)
    assert ids(changes) == written and len(written) > 10
    positions = [c.position for c in changes]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_a_truncate_of_one_partition_makes_consumers_resync(wal_db: str, conn: Any) -> None:
    """wal2json names the partition a TRUNCATE emptied, and the consumer logged it under the
    enabled table's name: consumers dropped every partition's rows (a red team). A
    transaction that truncates partitions but not the table itself is skipped now, and
    consumers behind it resync (read the tables again); a TRUNCATE of the table is logged
    as before."""
    conn.execute("""
        CREATE TABLE rt.parted (id int PRIMARY KEY, n int) PARTITION BY RANGE (id);
        CREATE TABLE rt.low PARTITION OF rt.parted FOR VALUES FROM (0) TO (100);
        CREATE TABLE rt.high PARTITION OF rt.parted FOR VALUES FROM (100) TO (200);
    """)
    conn.commit()
    realtime.enable(conn, "rt.parted")
    with psycopg.connect(wal_db, autocommit=True) as db:
        db.execute("INSERT INTO rt.parted VALUES (1, 0), (150, 0)")
    catch_up(wal_db)
    before = log(wal_db)
    assert sorted(ids(before)) == [1, 150]
    with psycopg.connect(wal_db, autocommit=True) as db:
        db.execute("TRUNCATE rt.low")
        db.execute("INSERT INTO rt.parted VALUES (2, 0)")
    catch_up(wal_db)
    with pytest.raises(ResyncRequired, match="read the tables again"):
        log(wal_db, after=before[-1].position)
    with psycopg.connect(wal_db) as db:
        pruned = db.execute("SELECT pruned_through FROM pyfuncs.realtime_state").fetchone()[0]  # type: ignore[index]
        skipped = db.execute("SELECT reason FROM pyfuncs.realtime_skipped").fetchall()
    assert any("partition" in reason for (reason,) in skipped), skipped
    after_resync = log(wal_db, after=Position(pruned, 0))
    assert [(c.op, c.table) for c in after_resync] == [("INSERT", "parted")]
    with psycopg.connect(wal_db, autocommit=True) as db:
        db.execute("TRUNCATE rt.parted")
    catch_up(wal_db)
    whole = log(wal_db, after=after_resync[-1].position)
    assert whole and {c.op for c in whole} == {"TRUNCATE"}
    # a whole TRUNCATE does not excuse a partition's with rows written in between
    with psycopg.connect(wal_db) as db:
        db.execute("TRUNCATE rt.parted")
        db.execute("INSERT INTO rt.parted VALUES (150, 0), (2, 0)")
        db.execute("TRUNCATE rt.low")
    catch_up(wal_db)
    with pytest.raises(ResyncRequired, match="read the tables again"):
        log(wal_db, after=whole[-1].position)


def test_a_switch_to_trigger_does_not_wait_seconds_for_a_flush(wal_db: str, conn: Any) -> None:
    """The switch waits for the WAL up to its own start to be flushed, which on a cluster
    committing asynchronously (the embedded one) took 3 to 21 s: a second session commits
    synchronously while it waits now."""
    written = 0
    for _ in range(3):
        insert(wal_db, range(written, written + 2))  # asynchronous commits
        written += 2
        start = time.monotonic()
        capture.set_mode(conn, "trigger")
        assert time.monotonic() - start < 2.0
        capture.set_mode(conn, "wal")
    catch_up(wal_db)
    assert ids(log(wal_db)) == list(range(written))


def test_the_sql_switch_alone_does_not_wait_seconds_for_a_flush(wal_db: str) -> None:
    """Called by itself (no second session to commit synchronously), the SQL switch ends the
    WAL segment once it has waited 50 ms, which flushes it."""
    written = 0
    with psycopg.connect(wal_db, autocommit=True) as db:
        for _ in range(3):
            insert(wal_db, range(written, written + 2))  # asynchronous commits
            written += 2
            start = time.monotonic()
            db.execute("SELECT pyfuncs.realtime_set_mode('trigger')")
            assert time.monotonic() - start < 2.0
            db.execute("SELECT pyfuncs.realtime_set_mode('wal')")
    catch_up(wal_db)
    assert ids(log(wal_db)) == list(range(written))


def test_trigger_mode_still_captures_and_bad_modes_change_nothing(wal_db: str, conn: Any) -> None:
    capture.set_mode(conn, "trigger")
    insert(wal_db, range(0, 3))
    assert ids(log(wal_db)) == []  # captured, but without positions until a batch gives them
    catch_up(wal_db)
    assert ids(log(wal_db)) == [0, 1, 2]
    with pytest.raises(ConfigError, match="'logical' is not a capture mode"):
        capture.set_mode(conn, "logical")
    assert capture.status(conn).mode == "trigger"
    capture.set_mode(conn, "trigger")  # idempotent


def test_slots_made_at_the_same_time_in_two_databases_are_both_made(
    wal_db: str, databases: Any, cluster: Cluster
) -> None:
    """Two databases making their slot at once while a third is created and dropped: made at
    the top level of its transaction, PostgreSQL 15 failed about one slot in thirty with an
    internal error ("snapshot reference ... is not owned by resource owner"), and enabling
    realtime with it (found running this suite on two workers). Made in a subtransaction,
    all are made."""
    other = databases.take("t_slots_" + wal_db.rsplit("_", 1)[-1][:8])
    stop, failures = threading.Event(), []
    dsns = (wal_db, other)

    def churn() -> None:
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as db:
            for n in range(10_000):
                if stop.is_set():
                    return
                name = sql.Identifier(f"t_churn_{id(stop)}_{n}")
                db.execute(sql.SQL("CREATE DATABASE {}").format(name))
                db.execute(sql.SQL("DROP DATABASE {}").format(name))

    for dsn in dsns:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute("CREATE TABLE IF NOT EXISTS public.t (id int PRIMARY KEY)")
            capture.set_mode(db, "wal")
    together = threading.Barrier(2)

    def enable(dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as db:
            for _ in range(ROUNDS):
                realtime.disable(db, "public.t")
                db.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                           "WHERE database = current_database()")  # fmt: skip
                together.wait()
                try:
                    realtime.enable(db, "public.t")
                except ConfigError as exc:
                    failures.append(str(exc))

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        workers = [threading.Thread(target=enable, args=[dsn]) for dsn in dsns]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        stop.set()
        churner.join()
        drop_database(cluster, other.rsplit("/", 1)[1])
    assert failures == []


def test_status_and_slot_hygiene(wal_db: str, conn: Any) -> None:
    st = capture.status(conn)
    assert st.mode == "wal" and st.slot_exists and st.wal_status == "reserved"
    assert st.retained_bytes is not None and st.consumer_pid is None
    with consumer(wal_db) as cap:
        deadline = time.monotonic() + 10
        while not cap.leading and time.monotonic() < deadline:
            time.sleep(0.02)
        assert capture.status(conn).consumer_pid is not None
        with consumer(wal_db) as second:  # stands by
            time.sleep(0.3)
            assert cap.leading and not second.leading
    realtime.disable(conn, "rt.counter")  # the last table: the slot goes
    assert slot(wal_db) is None
    with psycopg.connect(wal_db, autocommit=True) as db:
        db.execute("CREATE TABLE rt.bare (n int)")
    with pytest.raises(ConfigError, match="no replica identity"):
        realtime.enable(conn, "rt.bare")
    assert slot(wal_db) is None and capture.status(conn).tables == 0  # nothing changed
    realtime.enable(conn, "rt.counter")
    assert slot(wal_db) is not None


def test_the_slot_follows_other_databases_wal_while_this_one_is_quiet(wal_db: str) -> None:
    """Only this database's commits show up in a batch; a heartbeat of the consumer's own
    lets applied_lsn, and the slot, move past what other databases write meanwhile."""
    insert(wal_db, range(1, 3))
    flushed(wal_db)
    catch_up(wal_db)
    with psycopg.connect(wal_db, autocommit=True) as db:
        before = db.execute("SELECT applied_lsn FROM pyfuncs.realtime_state").fetchone()[0]  # type: ignore[index]
    # 20 MB of WAL in another database (a message nobody decodes)
    with psycopg.connect(make_conninfo(wal_db, dbname="postgres"), autocommit=True) as other:
        written = other.execute(
            "SELECT pg_logical_emit_message(false, 'elsewhere', repeat('x', 20000000))"
        ).fetchone()[0]  # type: ignore[index]
    flushed(wal_db)
    # a batch finds nothing and beats, the next advances, the one after moves the slot
    for _ in range(3):
        catch_up(wal_db)
    with psycopg.connect(wal_db, autocommit=True) as db:
        applied, confirmed = db.execute(
            "SELECT (SELECT applied_lsn FROM pyfuncs.realtime_state), confirmed_flush_lsn "
            "FROM pg_replication_slots WHERE database = current_database()"
        ).fetchone()  # type: ignore[misc]
        assert db.execute("SELECT %s::pg_lsn > %s::pg_lsn", [applied, written]).fetchone()[0]  # type: ignore[index]
        assert db.execute("SELECT %s::pg_lsn >= %s::pg_lsn", [confirmed, written]).fetchone()[0]  # type: ignore[index]
        assert applied != before
    insert(wal_db, range(3, 5))  # and capture goes on as before
    flushed(wal_db)
    catch_up(wal_db)
    assert ids(log(wal_db)) == [1, 2, 3, 4]


def test_what_a_change_carries_under_each_replica_identity(wal_db: str, conn: Any) -> None:
    big = "".join(f"{i:08x}" for i in range(4000))  # TOASTed, not compressible enough
    with psycopg.connect(wal_db, autocommit=True) as db:
        db.execute("CREATE TABLE rt.full (id int PRIMARY KEY, n int, note text, "
                   "doc jsonb, at timestamptz, tags text[])")  # fmt: skip
        db.execute("ALTER TABLE rt.full REPLICA IDENTITY FULL")
    realtime.enable(conn, "rt.full")
    with psycopg.connect(wal_db, autocommit=True) as db:
        for table in ("rt.counter", "rt.full"):
            db.execute(f"INSERT INTO {table} (id, n, note) VALUES (1, 0, %s)", [big])
            db.execute(f"UPDATE {table} SET n = 1")  # the TOASTed note is unchanged
            db.execute(f"DELETE FROM {table}")
        db.execute("INSERT INTO rt.full VALUES (2, 0, 'x', '{\"a\": [1]}', "
                   "'2024-01-02 03:04:05+00', '{a,b}')")  # fmt: skip
    catch_up(wal_db)
    default, full = (
        [c for c in log(wal_db) if c.table == t] for t in ("counter", "full")
    )  # fmt: skip
    # DEFAULT (primary key): an UPDATE lacks the unchanged TOASTed column, old rows are keys
    assert default[1].new == {"id": 1, "n": 1} and default[1].old == {"id": 1}
    assert default[2].old == {"id": 1} and default[2].new is None
    # FULL: whole old rows, and the unchanged column is taken from the old row
    assert full[1].new is not None and full[1].new["note"] == big and full[1].new["n"] == 1
    assert full[1].old is not None and full[1].old["n"] == 0 and full[1].old["note"] == big
    assert full[2].old is not None and full[2].old["note"] == big
    with psycopg.connect(wal_db, autocommit=True) as db:  # values as to_jsonb gives them
        expected = db.execute("SELECT to_jsonb(f) FROM rt.full f WHERE id = 2").fetchone()
    assert expected is not None and full[3].new == expected[0]


def test_cli_mode_status_and_capture(
    dsn: str, conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from pyfuncs.cli import main

    conn.execute("CREATE TABLE public.notes (id int PRIMARY KEY)")
    conn.commit()
    assert main(["--dsn", dsn, "realtime", "mode", "wal"]) == 0
    assert main(["--dsn", dsn, "realtime", "enable", "public.notes"]) == 0
    conn.execute("INSERT INTO public.notes VALUES (1)")
    conn.commit()
    flushed(dsn)
    assert main(["--dsn", dsn, "realtime", "capture"]) == 0
    assert "captured 1 change(s)" in capsys.readouterr().out
    assert main(["--dsn", dsn, "realtime", "status"]) == 0
    out = capsys.readouterr().out
    assert "mode            wal" in out and "(reserved)" in out and "consumer alive  no" in out
    assert main(["--dsn", dsn, "realtime", "mode", "sometimes"]) == 1
    assert main(["--dsn", dsn, "realtime", "status", "public.notes"]) == 1
    assert "wal|trigger" in capsys.readouterr().err
    assert main(["--dsn", dsn, "realtime", "mode", "trigger"]) == 0
    assert capture.status(conn).mode == "trigger" and slot(dsn) is None
    conn.execute("INSERT INTO public.notes VALUES (2)")
    conn.commit()
    capsys.readouterr()
    assert main(["--dsn", dsn, "realtime", "status"]) == 0
    out = capsys.readouterr().out
    assert "no position yet 1 transaction(s)" in out and "consumer alive  no" in out
    assert main(["--dsn", dsn, "realtime", "capture"]) == 0  # gives it its position
    assert "captured 1 change(s)" in capsys.readouterr().out
    assert capture.status(conn).unpositioned == 0
