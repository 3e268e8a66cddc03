"""The change feed: durable capture, commit order, resume without loss or repeats, pruning
(issue 4, "Change capture"), whether changes are captured by triggers or from the WAL, with
a consumer running in the background (issue 13)."""

from __future__ import annotations

import asyncio
import datetime
import random
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from pyfuncs import capture, realtime
from pyfuncs.embedded import Cluster
from pyfuncs.errors import ConfigError, ResyncRequired
from pyfuncs.realtime import Change, ChangeFeed, Position
from tests.walcapture import catch_up, consumer, wait_for
from tests.walcapture import log as logged


@pytest.fixture(params=["trigger", "wal"])
def feed_db(
    dsn: str, conn: psycopg.Connection[Any], request: pytest.FixtureRequest
) -> Iterator[str]:
    conn.execute("CREATE SCHEMA rt")
    conn.execute("CREATE TABLE rt.counter (id int PRIMARY KEY, n int NOT NULL, note text)")
    if request.param == "wal":  # old rows whole, as the triggers give them
        conn.execute("ALTER TABLE rt.counter REPLICA IDENTITY FULL")
    conn.commit()
    capture.set_mode(conn, request.param)
    realtime.enable(conn, "rt.counter")
    with consumer(dsn):  # (in trigger mode, it gives what committed its positions)
        yield dsn


def mode(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return str(conn.execute("SELECT mode FROM pyfuncs.realtime_state").fetchone()[0])  # type: ignore[index]


def read_all(dsn: str, after: Position | None = None) -> list[Change]:
    start = after or Position()
    catch_up(dsn)  # (from the WAL, the log is written a little after the commit)

    async def collect() -> list[Change]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            changes: list[Change] = []
            while batch := await realtime.read(conn, changes[-1].position if changes else start):
                changes += batch
            return changes

    return asyncio.run(collect())


def follow(
    dsn: str, count: int, since: Position | None = None, timeout: float = 60
) -> list[Change]:
    """The first `count` changes a ChangeFeed delivers."""

    async def collect() -> list[Change]:
        got: list[Change] = []
        async for change in ChangeFeed(dsn, since=since, batch=7, poll=0.5):
            got.append(change)
            if len(got) == count:
                break
        return got

    return asyncio.run(asyncio.wait_for(collect(), timeout))


def test_a_later_transaction_that_commits_first_comes_first_and_nothing_is_skipped(
    feed_db: str,
) -> None:
    with psycopg.connect(feed_db) as early, psycopg.connect(feed_db) as late:
        early.execute("INSERT INTO rt.counter VALUES (1, 0)")  # writes first ...
        late.execute("INSERT INTO rt.counter VALUES (2, 0)")
        late.commit()  # ... but commits last
        seen = read_all(feed_db)
        assert [c.new["id"] for c in seen if c.new] == [2]  # the open one is not there yet
        early.commit()
    rest = read_all(feed_db, after=seen[-1].position)  # a reader resuming after `late`
    assert [c.new["id"] for c in rest if c.new] == [1]  # still sees `early`
    assert seen[-1].position < rest[0].position


def test_concurrent_writers_every_transition_once_in_commit_order(feed_db: str) -> None:
    rows, writers, rounds = 8, 6, 25
    with psycopg.connect(feed_db, autocommit=True) as conn:
        for i in range(rows):
            conn.execute("INSERT INTO rt.counter VALUES (%s, 0)", [i])
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(feed_db) as conn:
                for _ in range(rounds):
                    for row in rng.sample(range(rows), 2):  # two rows per transaction
                        conn.execute("UPDATE rt.counter SET n = n + 1 WHERE id = %s", [row])
                        time.sleep(rng.random() / 500)  # commit order != start order
                    conn.commit()
        except psycopg.errors.DeadlockDetected:
            pass  # a rolled-back transaction captures nothing, which the checks below cover
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(writers)]
    for thread in threads:
        thread.start()
    # follow the feed while the writers run; count what they committed at the end
    consumer: list[Change] = []
    done = threading.Event()

    def consume() -> None:  # reads while the writers commit, in batches of 13
        async def run() -> None:
            async with await psycopg.AsyncConnection.connect(feed_db, autocommit=True) as conn:
                position = Position()
                while not (done.is_set() and len(consumer) >= expected[0]):
                    batch = await realtime.read(conn, position, limit=13)
                    consumer.extend(batch)
                    position = batch[-1].position if batch else position
                    await asyncio.sleep(0 if batch else 0.005)

        asyncio.run(asyncio.wait_for(run(), 120))

    expected = [1 << 62]
    reader = threading.Thread(target=consume)
    reader.start()
    for thread in threads:
        thread.join()
    assert not errors
    with psycopg.connect(feed_db, autocommit=True) as conn:
        final = dict(conn.execute("SELECT id, n FROM rt.counter").fetchall())
    expected[0] = rows + sum(final.values())  # the inserts and one update per increment
    done.set()
    reader.join()

    assert len(consumer) == expected[0]
    written = [c.position.change for c in consumer]
    if mode(feed_db) == "trigger":  # (the WAL consumer writes each commit's changes at once)
        assert written != sorted(written), "no transaction committed out of write order"
    positions = [c.position for c in consumer]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    state: dict[int, int] = {}
    for change in consumer:
        assert change.new is not None
        row = change.new["id"]
        if change.op == "INSERT":
            state[row] = change.new["n"]
        else:  # every transition, in order: n goes up by one each time
            assert change.old is not None and change.old["n"] == state[row]
            assert change.new["n"] == state[row] + 1
            state[row] = change.new["n"]
    assert state == final
    assert read_all(feed_db) == consumer  # a fresh reader sees the same history


def test_resume_from_a_position_misses_nothing_and_repeats_nothing(feed_db: str) -> None:
    with psycopg.connect(feed_db, autocommit=True) as conn:
        for i in range(20):
            conn.execute("INSERT INTO rt.counter VALUES (%s, %s)", [i, i])
    first = follow(feed_db, 8)
    token = str(first[-1].position)
    rest = follow(feed_db, 12, since=Position.parse(token))
    assert [c.new["id"] for c in first + rest if c.new] == list(range(20))


@pytest.mark.exclusive
def test_the_feed_reconnects_by_itself_mid_stream(feed_db: str, cluster: Cluster) -> None:
    """Its connection terminated, then PostgreSQL restarted: the same iterator goes on with
    every change once, in order."""

    def insert(ids: range) -> None:
        with psycopg.connect(feed_db, autocommit=True) as db:
            for i in ids:
                db.execute("INSERT INTO rt.counter VALUES (%s, 0)", [i])

    async def main() -> list[int]:
        changes = ChangeFeed(feed_db, batch=4, poll=0.5, retry=0.1).__aiter__()
        got = []
        insert(range(0, 10))
        got += [(await anext(changes)).new["id"] for _ in range(8)]  # mid-stream
        with psycopg.connect(feed_db, autocommit=True) as db:
            killed = db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE application_name = 'pyfuncs-change-feed'").fetchall()  # fmt: skip
        assert killed == [(True,)]
        insert(range(10, 20))
        got += [(await anext(changes)).new["id"] for _ in range(12)]
        cluster.down()
        cluster.up()
        insert(range(20, 30))
        got += [(await anext(changes)).new["id"] for _ in range(10)]
        await changes.aclose()
        return got

    assert asyncio.run(asyncio.wait_for(main(), 60)) == list(range(30))


def test_delete_truncate_and_large_rows(feed_db: str) -> None:
    big = "x" * 100_000  # far beyond NOTIFY's 8000 bytes: the feed carries rows by reference
    with psycopg.connect(feed_db, autocommit=True) as conn:
        conn.execute("INSERT INTO rt.counter VALUES (1, 0, %s)", [big])
        conn.execute("DELETE FROM rt.counter WHERE id = 1")
        conn.execute("INSERT INTO rt.counter VALUES (2, 0)")
        conn.execute("TRUNCATE rt.counter")
    changes = read_all(feed_db)
    assert [c.op for c in changes] == ["INSERT", "DELETE", "INSERT", "TRUNCATE"]
    assert changes[0].new is not None and changes[0].new["note"] == big
    assert changes[1].new is None and changes[1].old is not None and changes[1].old["id"] == 1
    assert changes[3].new is None and changes[3].old is None
    assert {(c.schema, c.table) for c in changes} == {("rt", "counter")}


def test_a_number_longer_than_python_converts_is_read_not_refused(feed_db: str) -> None:
    """A writer's value with more digits than Python makes an int of (4,300; a numeric may
    have 131,072) is read as a Decimal of that value; before, every read of the feed failed
    on it, for ever."""
    huge = "9" * 5000
    with psycopg.connect(feed_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE rt.counter ADD COLUMN amount numeric")
        conn.execute("INSERT INTO rt.counter (id, n, amount) VALUES (1, 0, %s::numeric)", [huge])
        conn.execute("INSERT INTO rt.counter (id, n) VALUES (2, 0)")
    changes = read_all(feed_db)
    assert [c.new["id"] for c in changes if c.new] == [1, 2]
    assert changes[0].new is not None and changes[0].new["amount"] == Decimal(huge)
    assert [c.new["id"] for c in follow(feed_db, 2)] == [1, 2]  # type: ignore[index]


def test_rolled_back_writes_are_not_captured(feed_db: str) -> None:
    with psycopg.connect(feed_db) as conn:
        conn.execute("INSERT INTO rt.counter VALUES (1, 0)")
        conn.rollback()
        with conn.transaction():
            conn.execute("INSERT INTO rt.counter VALUES (2, 0)")
            with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
                conn.execute("INSERT INTO rt.counter VALUES (3, 0)")
                conn.execute("INSERT INTO rt.counter VALUES (3, 0)")
    assert [c.new["id"] for c in read_all(feed_db) if c.new] == [2]


def test_pruning_tells_consumers_behind_the_window_to_resync(
    feed_db: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(feed_db, autocommit=True) as writer:
        writer.execute("INSERT INTO rt.counter VALUES (1, 0)")
        writer.execute("INSERT INTO rt.counter VALUES (2, 0)")
    before = read_all(feed_db)
    assert realtime.prune(conn, keep=datetime.timedelta(0)) == 2
    assert realtime.prune(conn, keep=datetime.timedelta(0)) == 0
    with pytest.raises(ResyncRequired, match="read the tables again") as info:
        read_all(feed_db)  # from the start: behind the window
    assert info.value.pruned_through == before[-1].position.commit
    assert read_all(feed_db, after=before[-1].position) == []  # caught up: fine
    with psycopg.connect(feed_db, autocommit=True) as writer:
        writer.execute("INSERT INTO rt.counter VALUES (3, 0)")
    assert [c.new["id"] for c in read_all(feed_db, before[-1].position) if c.new] == [3]


def test_enable_disable_and_bad_input(feed_db: str, conn: psycopg.Connection[Any]) -> None:
    realtime.enable(conn, "rt.counter")  # idempotent
    with pytest.raises(ConfigError, match=r"enabling realtime on rt\.nope failed.*does not exist"):
        realtime.enable(conn, "rt.nope")
    conn.execute("CREATE VIEW rt.v AS SELECT 1 AS x")
    conn.commit()
    with pytest.raises(ConfigError, match="is not a table"):
        realtime.enable(conn, "rt.v")
    with pytest.raises(ConfigError, match="is not a change-feed position"):
        Position.parse("yesterday")
    realtime.disable(conn, "rt.counter")
    with psycopg.connect(feed_db, autocommit=True) as writer:
        writer.execute("INSERT INTO rt.counter VALUES (1, 0)")
    assert read_all(feed_db) == []


def test_cli_enables_disables_and_prunes(
    dsn: str, conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from pyfuncs.cli import main

    conn.execute("CREATE TABLE public.notes (id int PRIMARY KEY)")
    conn.commit()
    assert main(["--dsn", dsn, "realtime", "enable", "public.notes"]) == 0
    conn.execute("INSERT INTO public.notes VALUES (1)")
    conn.commit()
    assert [c.op for c in read_all(dsn)] == ["INSERT"]
    assert main(["--dsn", dsn, "realtime", "prune", "--keep-days", "0"]) == 0
    assert "pruned the changes of 1 transaction(s)" in capsys.readouterr().out
    assert main(["--dsn", dsn, "realtime", "disable", "public.notes"]) == 0
    assert main(["--dsn", dsn, "realtime", "enable"]) == 1
    assert main(["--dsn", dsn, "realtime", "enable", "public.missing"]) == 1
    assert "does not exist" in capsys.readouterr().err


# --- trigger mode: positions given after commit (issue 13) ----------------------------------


@pytest.fixture
def trigger_db(dsn: str, conn: psycopg.Connection[Any]) -> str:
    """Trigger mode, with no consumer running: positions are given when the test says."""
    conn.execute("CREATE SCHEMA rt")
    conn.execute("CREATE TABLE rt.counter (id int PRIMARY KEY, n int NOT NULL, note text)")
    conn.execute("INSERT INTO rt.counter VALUES (1, 0), (2, 0)")
    conn.commit()
    realtime.enable(conn, "rt.counter")
    return dsn


def transitions(changes: list[Change]) -> list[tuple[int, int]]:
    return [(c.new["id"], c.new["n"]) for c in changes if c.new]


@pytest.mark.exclusive
def test_a_commit_waiting_to_be_flushed_holds_no_other_writer_up(
    trigger_db: str, conn: psycopg.Connection[Any]
) -> None:
    """Trigger mode used to give a transaction its position at commit, under a lock every
    capturing commit shared until its commit was flushed (and a NOTIFY, whose queue lock
    PostgreSQL holds as long): one slow commit held every writer up, and with fsync on,
    commits were flushed one at a time. A commit held here by a synchronous standby that
    never answers must not hold up another writer's."""
    admin = trigger_db.rsplit("/", 1)[0] + "/postgres"
    held = psycopg.connect(trigger_db, autocommit=True, options="-c synchronous_commit=on")
    local = "-c synchronous_commit=local"  # (these commits must not wait for the standby)
    with psycopg.connect(admin, autocommit=True) as root:
        root.execute("ALTER SYSTEM SET synchronous_standby_names = 'pyfuncs_nobody'")
        root.execute("SELECT pg_reload_conf()")
    update = threading.Thread(
        target=held.execute, args=["UPDATE rt.counter SET n = 1 WHERE id = 1"]
    )
    try:
        with psycopg.connect(trigger_db, autocommit=True, options=local) as db:
            time.sleep(0.5)  # (the reload reaches every backend)
            update.start()
            wait_for(lambda: db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
            ).fetchone() == (1,))  # fmt: skip
            db.execute("SET lock_timeout = '5s'")  # (the old commit step waited here)
            db.execute("UPDATE rt.counter SET n = 1 WHERE id = 2")
            # a batch (committed locally, as the writers') while the first is still held
            db.execute("SELECT pyfuncs.realtime_wal_capture(100)")
            assert transitions(logged(trigger_db)) == [(2, 1)]
    finally:
        with psycopg.connect(admin, autocommit=True) as root:
            root.execute("ALTER SYSTEM RESET synchronous_standby_names")
            root.execute("SELECT pg_reload_conf()")
        update.join()
        held.close()
    catch_up(trigger_db)
    assert transitions(read_all(trigger_db)) == [(2, 1), (1, 1)]


def test_a_writer_that_waited_for_another_comes_after_it_though_it_wrote_first(
    trigger_db: str,
) -> None:
    """Positions given after commit follow each transaction's last change: one that wrote
    first (smaller transaction id, smaller first change) but then waited for another's row
    lock committed after it, and must come after it in the feed, in the same batch."""
    with psycopg.connect(trigger_db) as first, psycopg.connect(trigger_db) as second:
        first.execute("UPDATE rt.counter SET n = n + 1 WHERE id = 1")  # writes first
        second.execute("UPDATE rt.counter SET n = n + 1 WHERE id = 2")
        waiting = threading.Thread(
            target=first.execute, args=["UPDATE rt.counter SET n = n + 1 WHERE id = 2"]
        )
        waiting.start()  # waits for second's lock on row 2
        time.sleep(0.3)
        second.commit()
        waiting.join()
        first.commit()
    catch_up(trigger_db)  # one batch gives both their positions
    changes = read_all(trigger_db)
    assert transitions(changes) == [(2, 1), (1, 1), (2, 2)]
    assert len({c.position.commit for c in changes}) == 2


def test_switching_to_wal_gives_what_the_triggers_captured_its_positions_first(
    trigger_db: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(trigger_db, autocommit=True) as db:
        db.execute("UPDATE rt.counter SET n = 1 WHERE id = 1")  # no consumer: no position yet
        assert capture.status(conn).unpositioned == 1
        capture.set_mode(conn, "wal")
        assert capture.status(conn).unpositioned == 0
        db.execute("UPDATE rt.counter SET n = 1 WHERE id = 2")
    catch_up(trigger_db)
    changes = read_all(trigger_db)
    assert transitions(changes) == [(1, 1), (2, 1)]
    assert changes[0].position < changes[1].position


def test_a_session_squatting_on_the_leaders_lock_delays_positions_by_seconds_only(
    trigger_db: str,
) -> None:
    """Any role can take the advisory lock the leading consumer holds; in trigger mode the
    consumers standing by then give positions anyway, every `standby` seconds."""
    with psycopg.connect(trigger_db, autocommit=True) as squatter:
        squatter.execute("SELECT pg_advisory_lock(%s)", [capture.LEADER_KEY])
        with consumer(trigger_db, standby=0.5) as cap, psycopg.connect(trigger_db) as db:
            db.execute("UPDATE rt.counter SET n = 1 WHERE id = 1")
            db.commit()
            wait_for(lambda: bool(logged(trigger_db)), timeout=10)
            assert not cap.leading
    assert transitions(logged(trigger_db)) == [(1, 1)]


def test_the_gateways_read_gets_keys_not_rows(feed_db: str, conn: psycopg.Connection[Any]) -> None:
    """The gateway needs only each change's key (it reads rows again as each subscriber): a
    page of changes to wide rows costs it their keys (a red team had a page of 500 large rows
    take the gateway 1.1 GB). Whole images where no table of that name has a key now."""
    conn.execute("CREATE TABLE rt.pair (a int, b text, wide text, PRIMARY KEY (b, a))")
    if mode(feed_db) == "wal":
        conn.execute("ALTER TABLE rt.pair REPLICA IDENTITY FULL")
    realtime.enable(conn, "rt.pair")
    wide = "x" * 2_000_000
    with psycopg.connect(feed_db, autocommit=True) as db:
        db.execute("INSERT INTO rt.counter VALUES (1, 0, %s)", [wide])
        db.execute("UPDATE rt.counter SET n = 1 WHERE id = 1")
        db.execute("INSERT INTO rt.pair VALUES (7, 'k', %s)", [wide])
        db.execute("DELETE FROM rt.counter")
    catch_up(feed_db)

    async def read(keys: bool) -> list[Change]:
        async with await psycopg.AsyncConnection.connect(feed_db, autocommit=True) as aconn:
            return await realtime.read(aconn, Position(), keys=keys)

    keyed = asyncio.run(read(True))
    assert [(c.table, c.op, c.new, c.old) for c in keyed] == [
        ("counter", "INSERT", {"id": 1}, None),
        ("counter", "UPDATE", {"id": 1}, {"id": 1}),
        ("pair", "INSERT", {"a": 7, "b": "k"}, None),
        ("counter", "DELETE", None, {"id": 1}),
    ]
    assert [c.position for c in keyed] == [c.position for c in asyncio.run(read(False))]
    conn.execute("DROP TABLE rt.pair")  # no key to cut to: the whole image
    pair = next(c for c in asyncio.run(read(True)) if c.table == "pair")
    assert pair.new is not None and pair.new["wide"] == wide


def test_a_deferrable_key_is_refused_where_it_would_break_commit_order(
    trigger_db: str, conn: psycopg.Connection[Any]
) -> None:
    """With a DEFERRABLE primary key an INSERT of a key another transaction is deleting waits
    only at commit, after its change was recorded, so trigger mode could give it the earlier
    position (found by a red team); and PostgreSQL takes such a key for no replica identity,
    so from the WAL its UPDATEs and DELETEs would say nothing."""
    conn.execute("CREATE TABLE rt.swap (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(ConfigError, match=r"primary key of rt\.swap is DEFERRABLE"):
        realtime.enable(conn, "rt.swap")
    capture.set_mode(conn, "wal")
    with pytest.raises(ConfigError, match="no replica identity"):
        realtime.enable(conn, "rt.swap")
    conn.execute("ALTER TABLE rt.swap REPLICA IDENTITY FULL")
    realtime.enable(conn, "rt.swap")  # from the WAL, commit order is the WAL's
    with pytest.raises(ConfigError, match="DEFERRABLE"):
        capture.set_mode(conn, "trigger")
    assert capture.status(conn).mode == "wal"


@pytest.mark.exclusive  # (making the slot waits 1 s at most: others' transactions would show)
def test_a_switch_waits_for_a_table_a_bounded_time_and_changes_nothing(
    trigger_db: str, conn: psycopg.Connection[Any], authenticator_dsn: str
) -> None:
    """A role that may not write a captured table still locks it by naming it in a PREPARE
    it keeps open; the switch, which holds capture up while it waits, gives up after
    lock_timeout (10 s at most) with a clear error, and capture goes on."""
    conn.execute("GRANT USAGE ON SCHEMA rt TO authenticator")
    with psycopg.connect(authenticator_dsn) as squatter:  # (its transaction stays open)
        squatter.execute("PREPARE p AS INSERT INTO rt.counter VALUES (9, 9)")
        conn.execute("SET lock_timeout = '1s'")
        start = time.monotonic()
        with pytest.raises(ConfigError, match=r"waited 1s for locks \(the last on rt\.counter\)"):
            capture.set_mode(conn, "wal")
        assert time.monotonic() - start < 8
        status = capture.status(conn)
        assert status.mode == "trigger" and not status.slot_exists  # the one it made is gone
    # making the slot waits for every transaction of the cluster with an id (another
    # database's here), a lock wait too
    with psycopg.connect(trigger_db.rsplit("/", 1)[0] + "/postgres") as elsewhere:
        elsewhere.execute("SELECT txid_current()")
        with pytest.raises(ConfigError, match="making the slot waited 1s"):
            capture.set_mode(conn, "wal")
    status = capture.status(conn)
    assert status.mode == "trigger" and not status.slot_exists  # (slots are not transactional)
    with psycopg.connect(trigger_db, autocommit=True) as db:
        db.execute("UPDATE rt.counter SET n = 1 WHERE id = 1")
    assert transitions(read_all(trigger_db)) == [(1, 1)]


def test_a_switch_finds_the_tables_by_their_names_now(
    trigger_db: str, conn: psycopg.Connection[Any]
) -> None:
    """A table renamed after it was enabled, and another given its old name with triggers of
    the same names: the switch alters the captured one (found by a red team)."""
    conn.execute("ALTER TABLE rt.counter RENAME TO counted")
    conn.execute("CREATE TABLE rt.counter (id int PRIMARY KEY)")
    conn.execute("CREATE FUNCTION rt.nothing() RETURNS trigger LANGUAGE plpgsql "
                 "AS $$ BEGIN RETURN NULL; END $$")  # fmt: skip
    for name in ("pyfuncs_realtime", "pyfuncs_realtime_truncate"):
        conn.execute(f"CREATE TRIGGER {name} AFTER INSERT ON rt.counter "
                     "FOR EACH ROW EXECUTE FUNCTION rt.nothing()")  # fmt: skip
    capture.set_mode(conn, "wal")
    enabled = dict(conn.execute(
        "SELECT c.relname, bool_and(t.tgenabled = 'O') FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid WHERE t.tgname LIKE 'pyfuncs_realtime%' "
        "GROUP BY c.relname"
    ).fetchall())  # fmt: skip
    assert enabled == {"counted": False, "counter": True}


def test_a_partition_with_a_deferrable_key_is_refused_too(
    trigger_db: str, conn: psycopg.Connection[Any]
) -> None:
    """A partition's primary key may be DEFERRABLE where its parent's is not (found by a red
    team): the checks look at every partition."""
    conn.execute("CREATE TABLE rt.parts (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE rt.parts_low (id int PRIMARY KEY DEFERRABLE, v text)")
    conn.execute("ALTER TABLE rt.parts ATTACH PARTITION rt.parts_low FOR VALUES FROM (0) TO (10)")
    with pytest.raises(ConfigError, match=r"primary key of rt\.parts_low is DEFERRABLE"):
        realtime.enable(conn, "rt.parts")
    capture.set_mode(conn, "wal")
    with pytest.raises(ConfigError, match=r"rt\.parts_low has no replica identity"):
        realtime.enable(conn, "rt.parts")


def test_a_switch_bounds_all_its_lock_waits_together_and_leaves_no_slot(
    trigger_db: str, conn: psycopg.Connection[Any], authenticator_dsn: str
) -> None:
    """A role holding the tables one after the other must not get the bound once per table,
    and a switch cancelled while it waits must not leave its slot behind (slots are not
    transactional; found by a red team)."""
    conn.execute("CREATE TABLE rt.second (id int PRIMARY KEY)")
    realtime.enable(conn, "rt.second")
    conn.execute("GRANT USAGE ON SCHEMA rt TO authenticator")
    first = psycopg.connect(authenticator_dsn)
    second = psycopg.connect(authenticator_dsn)
    try:
        first.execute("PREPARE p AS INSERT INTO rt.counter VALUES (9, 9)")
        second.execute("PREPARE p AS INSERT INTO rt.second VALUES (9)")
        threading.Timer(1.5, first.rollback).start()  # lets the first go after 1.5 s
        conn.execute("SET lock_timeout = '2s'")
        start = time.monotonic()
        with pytest.raises(ConfigError, match="waited 2s for locks"):
            capture.set_mode(conn, "wal")
        assert time.monotonic() - start < 3.2  # not 1.5 + 2
        assert not capture.status(conn).slot_exists
        conn.execute("SET lock_timeout = 0")
        conn.execute("SET statement_timeout = '1s'")  # a cancel, which no handler catches
        with pytest.raises(ConfigError, match="statement timeout"):
            capture.set_mode(conn, "wal")
        assert not capture.status(conn).slot_exists
    finally:
        first.close()
        second.close()
    conn.execute("SET statement_timeout = 0")
    # a slot found in trigger mode is stale: a switch to wal makes a new one
    conn.execute("SELECT pg_create_logical_replication_slot(pyfuncs.realtime_slot_name(), "
                 "'wal2json')")  # fmt: skip
    ours = "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = pyfuncs.realtime_slot_name()"
    stale = conn.execute(ours).fetchone()
    conn.execute("SELECT pg_logical_emit_message(true, 'pyfuncs-tests', 'x')")
    capture.set_mode(conn, "wal")
    assert conn.execute(ours).fetchone() > stale  # type: ignore[operator]


def test_trigger_capture_writes_values_whatever_the_writers_settings(
    trigger_db: str, conn: psycopg.Connection[Any]
) -> None:
    """A key written in a writer's TimeZone never matched the one the gateway reads (found by
    a red team): the capture trigger pins the settings values are written with."""
    conn.execute("CREATE TABLE rt.times (at timestamptz PRIMARY KEY, i interval, b bytea)")
    realtime.enable(conn, "rt.times")
    odd = ("-c TimeZone=Asia/Tokyo -c IntervalStyle=sql_standard -c bytea_output=escape "
           "-c extra_float_digits=-10 -c DateStyle=SQL,DMY")  # fmt: skip
    with psycopg.connect(trigger_db, autocommit=True, options=odd) as db:
        db.execute("INSERT INTO rt.times VALUES ('2024-01-01 09:00+09', '1 day 02:00', '\\x00ff')")
    (change,) = [c for c in read_all(trigger_db) if c.table == "times"]
    assert change.new == {"at": "2024-01-01T00:00:00+00:00", "i": "1 day 02:00:00",
                          "b": "\\x00ff"}  # fmt: skip


def test_an_identity_index_dropped_is_no_replica_identity(
    trigger_db: str, conn: psycopg.Connection[Any]
) -> None:
    """`REPLICA IDENTITY USING INDEX` and the index dropped leaves the table marked so, with no
    identity: its UPDATEs and DELETEs were silently lost from the WAL (a red team)."""
    capture.set_mode(conn, "wal")
    conn.execute("CREATE TABLE rt.ri (id int NOT NULL, v int)")
    conn.execute("CREATE UNIQUE INDEX ri_id ON rt.ri (id)")
    conn.execute("ALTER TABLE rt.ri REPLICA IDENTITY USING INDEX ri_id")
    conn.execute("DROP INDEX rt.ri_id")
    with pytest.raises(ConfigError, match=r"rt\.ri has no replica identity"):
        realtime.enable(conn, "rt.ri")


def test_a_truncate_of_one_partition_makes_consumers_resync_in_trigger_mode(
    trigger_db: str, conn: psycopg.Connection[Any]
) -> None:
    """PostgreSQL gives partitions their parent's row triggers, not its TRUNCATE trigger: a
    partition's TRUNCATE fired nothing, and clients kept its rows (a red team). Every
    partition of an enabled table has a TRUNCATE trigger of its own now, those made or
    attached after it was enabled too (an event trigger), and a transaction that truncates a
    partition but not the table makes consumers behind it resync, as in 'wal' mode; a
    TRUNCATE of the table is logged as before, its partitions' excused."""
    conn.execute("""
        CREATE TABLE rt.parted (id int PRIMARY KEY, n int) PARTITION BY RANGE (id);
        CREATE TABLE rt.low PARTITION OF rt.parted FOR VALUES FROM (0) TO (100);
    """)
    conn.commit()
    realtime.enable(conn, "rt.parted")
    with psycopg.connect(trigger_db, autocommit=True) as db:  # made and attached after
        db.execute("CREATE TABLE rt.high PARTITION OF rt.parted FOR VALUES FROM (100) TO (200)"
                   " PARTITION BY RANGE (id)")  # fmt: skip
        db.execute("CREATE TABLE rt.higher PARTITION OF rt.high FOR VALUES FROM (150) TO (200)")
        db.execute("CREATE TABLE rt.middle (id int PRIMARY KEY, n int)")
        db.execute("ALTER TABLE rt.high ATTACH PARTITION rt.middle FOR VALUES FROM (100) TO (150)")
        db.execute("SET ROLE student")  # (the event trigger runs for anyone's DDL, harmlessly)
        db.execute("CREATE TEMP TABLE elsewhere (id int)")
        db.execute("RESET ROLE")
        db.execute("INSERT INTO rt.parted VALUES (1, 0), (120, 0), (170, 0)")
    catch_up(trigger_db)
    before = read_all(trigger_db)
    assert sorted(c.new["id"] for c in before if c.new) == [1, 120, 170]
    position = before[-1].position
    for n, partition in enumerate(("rt.low", "rt.middle", "rt.higher")):
        with psycopg.connect(trigger_db, autocommit=True) as db:
            db.execute(f"TRUNCATE {partition}")
            db.execute("INSERT INTO rt.parted VALUES (%s, 0)", [10 + n])
        catch_up(trigger_db)
        with pytest.raises(ResyncRequired, match="read the tables again"):
            read_all(trigger_db, after=position)
        with psycopg.connect(trigger_db) as db:
            pruned = db.execute("SELECT pruned_through FROM pyfuncs.realtime_state").fetchone()
        assert pruned is not None
        resynced = read_all(trigger_db, after=Position(pruned[0], 0))
        assert [(c.op, c.new and c.new["id"]) for c in resynced] == [("INSERT", 10 + n)]
        position = resynced[-1].position
    with psycopg.connect(trigger_db, autocommit=True) as db:
        db.execute("TRUNCATE rt.parted")
    catch_up(trigger_db)
    whole = read_all(trigger_db, after=position)
    assert [(c.op, c.table) for c in whole] == [("TRUNCATE", "parted")]
    with psycopg.connect(trigger_db) as db:  # rows written between: not excused
        db.execute("TRUNCATE rt.parted")
        db.execute("INSERT INTO rt.parted VALUES (170, 0), (2, 0)")
        db.execute("TRUNCATE rt.low")
    catch_up(trigger_db)
    with pytest.raises(ResyncRequired, match="read the tables again"):
        read_all(trigger_db, after=whole[-1].position)
    realtime.disable(conn, "rt.parted")
    left = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'pyfuncs_realtime_partition_truncate'"
    ).fetchone()
    assert left == (0,)
