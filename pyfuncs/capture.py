"""The consumer of the WAL: in 'wal' mode, it reads the database's logical replication slot
and writes the change log in batches (README "Realtime: how changes are captured"); in
'trigger' mode, it gives the transactions the triggers captured their positions once they
have committed (`pyfuncs.realtime_sequence`), a batch at a time.

It streams the slot over the replication protocol (_Stream) and hands each batch of whole
transactions to one SQL function, `pyfuncs.realtime_wal_write` (sql/schema.sql), which writes
the changes with positions taken from their commit LSNs and records the last commit it
applied, in one transaction; only then is the slot told that position. When it cannot stream
(a role without REPLICATION) or the stream cannot write something (too large, a value jsonb
refuses), it reads the slot with SQL batches instead, `pyfuncs.realtime_wal_capture`, which
do the same without leaving the server and advance the slot at the start of the next batch.
Either way a consumer killed anywhere loses nothing and repeats nothing, and two consumers at
once are merely wasteful: a lock serialises their batches. To avoid that waste one consumer
per database leads (a session advisory lock), and the others stand by.

It runs inside `pyfuncs serve` (every gateway process; one leads) and as
`pyfuncs realtime capture`, for deployments without a gateway or to catch up by hand.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import conninfo, pq
from psycopg.pq.abc import PGconn
from psycopg.rows import dict_row

from ._pg.vocabulary import CAPTURE_SKIPPED
from .config import PINNED_SEARCH_PATH, PINNED_VALUES
from .errors import ConfigError, from_psycopg
from .queries import query

log = logging.getLogger("pyfuncs.capture")
# the session advisory lock of the leading consumer ("pyfuncs1" in ASCII); advisory locks
# are per database
LEADER_KEY = 0x7079_6675_6E63_7331
LOOK_EVERY = 5.0  # seconds between looks at the WAL the slot holds
BATCH = 10_000  # rows decoded per batch (a transaction is never split)
# The consumer's session, whatever the server's or its role's defaults: it commits durably
# (the slot is advanced to what it committed, and must never get ahead of what a crash
# keeps), and no statement_timeout cuts a batch short (a batch holding a large transaction
# would be cut short every time, and capture would never get past it).
SESSION = "-c synchronous_commit=on -c statement_timeout=0"
# The streaming consumer's replication session: wal2json writes values with the output
# functions of this session, so its settings are those realtime_wal_batch pins (search_path
# too: a database's made a regclass key `widgets` here, `public.widgets` everywhere else)
STREAM_SESSION = f"{PINNED_SEARCH_PATH} {PINNED_VALUES}"
STREAM_RETRY = 60.0  # seconds of SQL batches after the slot could not be streamed
STREAM_RESTARTS = 5  # more restarts of the stream than this ...
STREAM_RESTARTS_WITHIN = 10.0  # ... within these seconds: SQL batches for STREAM_RETRY
STREAM_WRITE = 16 << 20  # bytes of rows given to one realtime_wal_write, at most ...
STREAM_TX = 64 << 20  # ... but a transaction whole: one larger is left to the SQL batches
STREAM_IDLE = 1.0  # seconds without a message after which the consumer looks around
STREAM_QUIET = 0.05  # seconds a commit without captured changes waits to be given (at most)
HEARTBEAT = 16 << 20  # WAL (bytes) past applied_lsn worth a heartbeat (realtime_wal_finish)


@dataclass(frozen=True)
class Status:
    """What `pyfuncs realtime status` shows: the mode, the slot and the WAL it holds."""

    mode: str
    slot: str
    slot_exists: bool
    wal_status: str | None  # reserved, extended, unreserved, lost (pg_replication_slots)
    retained_bytes: int | None  # WAL the slot keeps from being recycled
    lag_bytes: int | None  # WAL written after the last commit the consumer applied
    consumer_pid: int | None  # the backend of the leading consumer, if one runs
    tables: int
    unpositioned: int  # transactions captured by triggers, committed or not, without a position
    max_slot_wal_keep_size: str


def _slot_lost(exc: psycopg.Error) -> bool:
    return exc.sqlstate == "55000" and "replication slot" in str(exc)


def _held_up(exc: psycopg.Error) -> bool:
    """Another transaction kept the capture lock for 30 s (realtime_capture_lock_take)."""
    return isinstance(exc, psycopg.errors.LockNotAvailable)


class _Warnings:
    """Logs what the capture functions warn about (a new slot, transactions skipped) and
    counts the transactions skipped: such a warning is the only word of them a consumer
    gets, since the capture function's result says how many changes it wrote."""

    def __init__(self) -> None:
        self.skipped = 0

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        message = diag.message_primary or ""
        # (wal2json warns once per change of a table that lost its replica identity: those
        # are not worth a line each)
        if diag.severity_nonlocalized != "WARNING" or not message.startswith("pyfuncs:"):
            return
        if diag.sqlstate == CAPTURE_SKIPPED:
            found = re.search(r"skipped (\d+)", message)
            self.skipped += int(found.group(1)) if found else 1
            message += f" ({diag.message_hint})" if diag.message_hint else ""
        log.warning("%s", message)


def _batch(conn: psycopg.Connection[Any], batch: int) -> tuple[int, bool]:
    try:
        row = conn.execute(query("realtime_capture_batch"), {"batch": batch}).fetchone()
    except psycopg.Error as exc:
        if not _slot_lost(exc):
            raise
        log.warning("%s; making a new slot (consumers will be told to resync)", exc)
        conn.execute(query("realtime_capture_slot"))
        return 0, False
    assert row is not None
    return int(row[0]), bool(row[1])


def capture(conn: psycopg.Connection[Any], batch: int = BATCH) -> int:
    """Apply everything the slot holds now, in batches; returns how many changes (in
    trigger mode: give the transactions committed so far their positions). `conn` must be
    in autocommit mode; its session gets synchronous_commit = on (the slot is advanced to
    its commits) and statement_timeout = 0 (see SESSION)."""
    total, done = 0, False
    warnings = _Warnings()
    conn.add_notice_handler(warnings)
    try:
        conn.execute("SET synchronous_commit = on")
        conn.execute("SET statement_timeout = 0")
        while not done:
            captured, done = _batch(conn, batch)
            total += captured
    except psycopg.Error as exc:
        raise ConfigError(f"capturing from the WAL failed: {from_psycopg(exc)}") from exc
    finally:
        conn.remove_notice_handler(warnings)
    return total


def status(conn: psycopg.Connection[Any]) -> Status:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(query("realtime_status"), {"key": LEADER_KEY}).fetchone()
    assert row is not None
    return Status(**row)


def set_mode(conn: psycopg.Connection[Any], mode: str) -> None:
    """Capture with 'wal' (logical decoding) or 'trigger'; see sql/schema.sql,
    pyfuncs.realtime_set_mode, for what a switch does."""
    try:
        with conn.transaction():
            conn.execute(query("realtime_set_mode"), {"mode": mode})
    except psycopg.Error as exc:
        raise ConfigError(
            f"switching realtime capture to {mode!r} failed, nothing was changed: "
            f"{from_psycopg(exc)}"
        ) from exc


class Capture:
    """The consumer loop, reconnecting by itself:

    ```python
    await Capture(dsn).run()
    ```
    While it leads it reads the slot (in trigger mode, gives what committed its positions)
    at once again while a batch was full, after `busy`
    seconds while batches find changes, and, while they find none, after a pause that
    doubles up to `poll` seconds (so a change waits for the consumer about `busy` under load,
    and at most `poll` after a quiet spell); standing by, it tries to lead every `standby`
    seconds. `on_captured`, if given, is called after every batch that wrote changes (the
    gateway in the same process reads them at once, see hub.py).
    """

    def __init__(
        self, dsn: str, *, batch: int = BATCH, poll: float = 0.02, busy: float = 0.003,
        standby: float = 2.0, retry: float = 1.0, on_captured: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        self.dsn, self.batch, self.poll, self.busy, self.standby, self.retry = (
            dsn, batch, poll, busy, standby, retry)  # fmt: skip
        self.on_captured = on_captured
        self.leading = False
        self.captured = 0  # changes written to the log by this consumer
        self._warnings = _Warnings()  # transactions it skipped: .skipped
        self.failures = 0
        self.slot_wal_bytes: int | None = None  # WAL the slot holds (None: no slot)
        self.denied = False  # this role may not capture (it runs elsewhere)
        # whether it streams the slot (None: not tried yet); after a failure to, SQL batches
        # until _stream_after
        self.streaming: bool | None = None
        self._stream_after = 0.0
        self._looked = 0.0

    async def run(self) -> None:
        pause = self.retry
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    application_name="pyfuncs-capture",
                    options=SESSION,
                    client_encoding="UTF8",  # (as the stream's: the rows it writes are UTF-8)
                ) as conn:
                    conn.add_notice_handler(self._warnings)
                    await self._lead(conn)
            except psycopg.OperationalError as exc:
                # at once after a connection that led, less and less often while none does
                # (a database dropped, a server gone for good)
                pause = self.retry if self.leading else min(pause * 2, 30.0)
                log.warning("the WAL consumer lost its connection (%s); reconnecting in %g s",
                            exc, pause)  # fmt: skip
            except psycopg.errors.InsufficientPrivilege:
                self.denied = True
                log.warning(
                    "this role may not run realtime capture (which reads the WAL in wal mode, "
                    "and gives changes their positions in trigger mode), so this process leaves "
                    "it to another (pyfuncs realtime capture --follow, or a gateway whose feed "
                    "role may: GRANT EXECUTE ON FUNCTION pyfuncs.realtime_wal_capture(integer), "
                    "pyfuncs.realtime_wal_slot() TO it)"
                )
                return
            except psycopg.Error as exc:
                self.failures += 1
                pause = min(pause * 2, 30.0)
                log.error("the WAL consumer stopped on an error (%s); starting again in %g s",
                          from_psycopg(exc), pause)  # fmt: skip
            finally:
                self.leading = False
            await asyncio.sleep(pause)

    async def _lead(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            cur = await conn.execute(query("realtime_capture_lead"), {"key": LEADER_KEY})
            row = await cur.fetchone()
            if row is not None and row[0]:
                break
            await self._look(conn, fresh=True)  # (a slot made since the last look: no batch)
            if self.slot_wal_bytes is None:
                await self._stand_in(conn)
            await asyncio.sleep(self.standby)
        self.leading = True
        log.info("this process leads realtime capture")
        restarts: list[float] = []
        while True:
            if time.monotonic() >= self._stream_after:
                outcome = await self._stream(conn)
                if outcome == "restart":
                    # A stream starts again when the tables to capture changed: a table owner
                    # renaming a table again and again would keep every table's changes from
                    # being written. Restarting too often, SQL batches take over for a while
                    # (they compare the names at every batch, and go on).
                    now = time.monotonic()
                    restarts = [t for t in restarts if now - t < STREAM_RESTARTS_WITHIN] + [now]
                    if len(restarts) <= STREAM_RESTARTS:
                        continue
                    log.warning(
                        "the stream of the slot started again %d times in %g s (a table renamed "
                        "again and again?): capturing with SQL batches for %g s",
                        len(restarts), STREAM_RESTARTS_WITHIN, STREAM_RETRY,
                    )  # fmt: skip
                    restarts = []
                    self._stream_after = now + STREAM_RETRY
                if outcome == "idle":
                    # nothing to stream (trigger mode, or no table enabled): SQL batches
                    # until it is time to look again; in trigger mode they give what
                    # committed its positions
                    self._stream_after = time.monotonic() + self.standby
            # SQL batches: until they have read everything when the stream needs them (a
            # transaction too large for it, or one it could not write), for ever otherwise
            await self._poll(conn, until_done=time.monotonic() >= self._stream_after)

    async def _poll(self, conn: psycopg.AsyncConnection[Any], until_done: bool) -> None:
        pause = self.busy
        while True:
            try:
                cur = await conn.execute(query("realtime_capture_batch"), {"batch": self.batch})
                row = await cur.fetchone()
            except psycopg.Error as exc:
                if _held_up(exc):  # keeps leading, and tries again
                    log.warning("%s", from_psycopg(exc))
                    await asyncio.sleep(self.retry)
                    continue
                if not _slot_lost(exc) or isinstance(exc, psycopg.OperationalError):
                    raise
                log.warning("%s; making a new slot (consumers will be told to resync)", exc)
                await conn.execute(query("realtime_capture_slot"))
                continue
            assert row is not None
            self._captured(int(row[0]))
            await self._look(conn)
            if row[1]:  # all read
                if until_done or time.monotonic() >= self._stream_after:
                    return
                # wait a little, longer while nothing comes
                pause = self.busy if row[0] else min(pause * 2, self.poll)
                await asyncio.sleep(pause)

    async def _stand_in(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Standing by while there is no slot (trigger mode): a batch anyway, so that a
        session squatting on the leader's advisory lock (any role can take it) delays
        positions by `standby` seconds, not for ever. Batches are serialised by the capture
        lock, so one more is merely wasted when the leader is real. (With a slot, a standby
        reads nothing: its batch would end the leader's stream.)"""
        try:
            cur = await conn.execute(query("realtime_capture_batch"), {"batch": self.batch})
            row = await cur.fetchone()
        except (psycopg.OperationalError, psycopg.errors.InsufficientPrivilege):
            raise
        except psycopg.Error as exc:  # (a slot made meanwhile and lost, say: the leader's)
            log.debug("a standby batch failed: %s", exc)
            return
        assert row is not None
        self._captured(int(row[0]))

    def _captured(self, captured: int) -> None:
        self.captured += captured
        if captured and self.on_captured is not None:
            self.on_captured()

    async def _stream(self, conn: psycopg.AsyncConnection[Any]) -> str:
        """Capture from a stream of the slot (the replication protocol) until the SQL batches
        must take over ("fallback"), the stream must start again with another list of tables
        ("restart"), or there is nothing to capture ("idle")."""
        try:
            stream = await _Stream.open(self.dsn, conn)
        except _NoStream as exc:
            if self.streaming is not False:
                log.warning(
                    "the WAL consumer reads the slot with SQL batches, which is slower "
                    '(README "Realtime: how changes are captured"): %s',
                    exc,
                )
            self.streaming = False
            self._stream_after = time.monotonic() + STREAM_RETRY
            return "fallback"
        if stream is None:
            return "idle"
        self.streaming = True
        try:
            return await stream.run(conn, self._captured, self._look)
        finally:
            stream.close()

    @property
    def skipped(self) -> int:
        """Transactions this consumer could not capture and skipped (consumers resynced)."""
        return self._warnings.skipped

    async def _look(self, conn: psycopg.AsyncConnection[Any], fresh: bool = False) -> None:
        """How much WAL the slot holds, now and then (for /metrics), or now (`fresh`)."""
        if not fresh and time.monotonic() - self._looked < LOOK_EVERY:
            return
        self._looked = time.monotonic()
        row = await (await conn.execute(query("realtime_slot_wal"))).fetchone()
        self.slot_wal_bytes = None if row is None or row[0] is None else int(row[0])


class _NoStream(Exception):
    """The slot cannot be streamed: a role without REPLICATION (or the grant on
    realtime_wal_write), a database not in UTF-8, a server refusing replication connections."""


class _Tx:
    """A transaction received from the stream: its changes and commit rows as wal2json wrote
    them (LSN, transaction id, text)."""

    __slots__ = ("commit", "rows", "size", "xid")

    def __init__(self, xid: int) -> None:
        self.xid = xid
        self.rows: list[tuple[int, str]] = []
        self.size = 0
        self.commit = 0  # the commit's LSN, once received


_XID = re.compile(rb'"xid":(\d+)')


class _ReplicationFailed(Exception):
    """Starting the stream failed: the server's message and SQLSTATE (None: no connection)."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _literal(value: str) -> str:
    """A string literal of the replication protocol's grammar (repl_scanner.l: quotes
    doubled, nothing else special). Not SQL: psycopg.sql does not apply."""
    return "'" + value.replace("'", "''") + "'"


def _replicate(dsn: str, slot: str, start: int, options: dict[str, str]) -> PGconn:
    """A replication connection streaming `slot` from `start` (blocking: run in a thread)."""
    # (client_encoding pinned: the server reads the command, table names included, in it;
    # a database or role set to LATIN1 made wal2json leave a table named café out)
    info = conninfo.make_conninfo(
        dsn, replication="database", application_name="pyfuncs-capture-stream",
        options=STREAM_SESSION, client_encoding="UTF8")  # fmt: skip
    pgconn = pq.PGconn.connect(info.encode())
    if pgconn.status != pq.ConnStatus.OK:
        message = pgconn.get_error_message()
        pgconn.finish()
        raise _ReplicationFailed(message, None)
    command = "START_REPLICATION SLOT {} LOGICAL {:X}/{:X} ({})".format(
        '"' + slot.replace('"', '""') + '"', start >> 32, start & 0xFFFFFFFF,
        ", ".join(f'"{k}" {_literal(v)}' for k, v in options.items()))  # fmt: skip
    result = pgconn.exec_(command.encode())
    if result.status != pq.ExecStatus.COPY_BOTH:
        message = (result.error_message or pgconn.error_message).decode(errors="replace")
        code = result.error_field(pq.DiagnosticField.SQLSTATE)
        pgconn.finish()
        raise _ReplicationFailed(message, code.decode() if code else None)
    pgconn.nonblocking = 1
    return pgconn


_PG_EPOCH = 946_684_800  # 2000-01-01 in Unix time: the protocol's clock starts there
_XLOG_DATA = struct.Struct("!QQq")  # after b"w": data start, WAL end, send time
_KEEPALIVE = struct.Struct("!Qq?")  # after b"k": WAL end, send time, reply requested
_STATUS = struct.Struct("!cQQQq?")  # b"r", written, flushed, applied, client time, reply


class _Stream:
    """The slot read over the replication protocol, and what was received written with
    `pyfuncs.realtime_wal_write`, whole transactions at a time. The slot is told a position
    (feedback) only once the change log holds everything before it; the stream starts at
    applied_lsn, so a consumer that dies anywhere loses and repeats nothing. psycopg 3 has no
    replication API, so the stream speaks the protocol over its libpq layer (`psycopg.pq`):
    every status the server gets is one this class sent (a client library that confirms
    positions by itself, as psycopg2 does on a keepalive, could confirm past transactions
    received but not yet written). Its reads never block; the event loop wakes it when its
    socket is readable."""

    def __init__(self, pgconn: PGconn, tables: str | None, applied: int) -> None:
        self.pgconn, self.tables, self.applied = pgconn, tables, applied
        self.wal_end = 0  # the end of the WAL the server says it has sent
        self._told = (0, 0)  # (written, flushed) last told to the server
        self._told_at = 0.0

    def _send(self, told: tuple[int, int]) -> None:
        now = int((time.time() - _PG_EPOCH) * 1_000_000)
        self.pgconn.put_copy_data(_STATUS.pack(b"r", told[0], told[1], told[1], now, False))
        self.pgconn.flush()  # (a few bytes: what does not go now goes with the next)

    def _feedback(self, now: float, caught_up: bool = False) -> None:
        """Tell the server how far the change log holds the stream (flush: the slot's
        confirmed position, applied_lsn), at most every 50 ms while busy. Caught up (every
        transaction received dealt with, none begun), everything the server sent is dealt
        with: flush and write are then the end of what it sent, so that a walsender shutting
        down, which waits until the client's flush position reaches that end, can end."""
        end = self.wal_end
        told = (end, max(end, self.applied)) if caught_up else (self._told[0], self.applied)
        if told > self._told and (caught_up or now - self._told_at >= 0.05):
            try:
                self._send(told)
            except psycopg.OperationalError:  # the connection is gone: the next read says so
                return
            self._told, self._told_at = told, now

    def _read(self) -> tuple[int, bytes] | None:
        """The next change message (its LSN and wal2json's text), None when none has
        arrived. Keepalives are answered here, with what was last told (nothing more)."""
        pgconn = self.pgconn
        while True:
            size, data = pgconn.get_copy_data(1)
            if size == 0:
                pgconn.consume_input()
                size, data = pgconn.get_copy_data(1)
                if size == 0:
                    return None
            if size < 0:
                message = pgconn.get_error_message() or "the server ended the stream"
                raise psycopg.OperationalError(message)
            kind = data[0]
            if kind == 0x77:  # "w": XLogData
                start, end, _ = _XLOG_DATA.unpack_from(data, 1)
                self.wal_end = max(self.wal_end, end)
                return start, bytes(data[1 + _XLOG_DATA.size :])
            if kind == 0x6B:  # "k": a keepalive
                end, _, reply = _KEEPALIVE.unpack_from(data, 1)
                self.wal_end = max(self.wal_end, end)
                if reply:
                    self._send(self._told)
                    self._told_at = time.monotonic()

    @classmethod
    async def open(cls, dsn: str, db: psycopg.AsyncConnection[Any]) -> _Stream | None:
        """A stream from applied_lsn with the tables to capture now; None when there is
        nothing to capture."""
        row = await (await db.execute(query("realtime_capture_slot_name"))).fetchone()
        assert row is not None
        slot, encoding = row
        if encoding != "UTF8":
            raise _NoStream(f"the database's encoding is {encoding}, not UTF8")
        try:
            state = await _write(db, None, [])
        except psycopg.errors.InsufficientPrivilege as exc:
            raise _NoStream(str(exc.diag.message_primary)) from exc
        if not state.capturing:
            return None
        options = {
            "format-version": "2", "include-timestamp": "1", "include-typmod": "0",
            "include-domain-data-type": "1", "include-xids": "1",
            "add-tables": state.tables or "", "add-msg-prefixes": f"pyfuncs-{uuid.uuid4()}",
        }  # fmt: skip
        try:
            pgconn = await asyncio.to_thread(_replicate, dsn, slot, state.applied, options)
        except _ReplicationFailed as exc:
            message = str(exc).strip()
            if exc.sqlstate in ("55000", "42704"):  # the slot is lost or missing: a new one
                log.warning("%s; making a new slot (consumers will be told to resync)", message)
                await db.execute(query("realtime_capture_slot"))
                return await cls.open(dsn, db)
            # (the slot in use, or the server out of reach: the consumer starts again)
            if exc.sqlstate == "55006" or (exc.sqlstate is None and "replication" not in message
                                           and "permission" not in message):  # fmt: skip
                raise psycopg.OperationalError(f"streaming the slot failed: {message}") from exc
            raise _NoStream(message) from exc
        return cls(pgconn, state.tables, state.applied)

    def close(self) -> None:
        self.pgconn.finish()

    async def _readable(self, wait: float) -> bool:
        """Wait at most `wait` seconds for the stream's socket to be readable. The event loop
        watches it only meanwhile: watched while the consumer writes, a socket with data
        unread would wake the loop on every turn, and keep it spinning."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        fd = self.pgconn.socket
        loop.add_reader(fd, ready)
        # (asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
        # cancellation that comes as the future is done, and the consumer never stops)
        try:
            async with asyncio.timeout(wait):
                await readable
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
        return True

    async def run(
        self, db: psycopg.AsyncConnection[Any], captured: Callable[[int], None],
        look: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
    ) -> str:  # fmt: skip
        # transactions received whole and not yet written, in commit order (the stream's),
        # the first since `since`; `size`: bytes of their changes (0: commits only)
        received: list[_Tx] = []
        since = 0.0
        size = 0
        current: _Tx | None = None
        while True:
            try:
                while size < STREAM_WRITE and (message := self._read()):
                    lsn, data = message
                    action = data[11:12]
                    if action == b"B":
                        found = _XID.search(data, 0, 64)
                        current = _Tx(int(found.group(1)) if found else 0)
                    elif current is None:
                        continue
                    elif action == b"C":
                        current.commit = lsn
                        current.rows.append((lsn, data.decode()))
                        if not received:
                            since = time.monotonic()
                        received.append(current)
                        size += current.size
                        current = None
                    else:
                        current.rows.append((lsn, data.decode()))
                        current.size += len(data)
                        if current.size > STREAM_TX:
                            log.info(
                                "a transaction of more than %d MB: capturing it with SQL batches",
                                STREAM_TX >> 20,
                            )
                            return "fallback"
            except psycopg.OperationalError as exc:
                log.warning(
                    "the stream of the slot ended (%s); starting it again", str(exc).strip()
                )
                await asyncio.sleep(0.1)
                return "restart"
            # Transactions without changes of captured tables are given too: with the others,
            # every one, for a commit not yet visible (a table's rename, say, whose changes
            # under the new name this stream leaves out) must hold up those after it; alone,
            # now and then, as their commits move applied_lsn on, and the call tells whether
            # the tables to capture changed (one enabled or renamed)
            now = time.monotonic()
            give = bool(received) and (size > 0 or now - since >= STREAM_QUIET
                                       or received[-1].commit - self.applied > (1 << 20))  # fmt: skip
            heartbeat = not give and self.wal_end - self.applied > HEARTBEAT
            if not give and not heartbeat:
                self._feedback(now, caught_up=current is None and not received)
                wait = STREAM_IDLE if not received else since + STREAM_QUIET - now
                if not await self._readable(wait):
                    await look(db)
                continue
            try:
                state = await _write(db, self.tables, received if give else [])
            except psycopg.Error as exc:
                if _held_up(exc):
                    log.warning("%s", from_psycopg(exc))
                    await asyncio.sleep(1.0)
                    continue
                if db.closed or db.broken or (exc.sqlstate or "08").startswith("08"):
                    raise  # the connection is lost (the consumer connects again)
                # (SQL batches skip what is wrong with the data, and fail as this did on
                # what is wrong with the server)
                log.warning(
                    "the WAL consumer could not write what it streamed (%s); capturing "
                    "with SQL batches past it",
                    from_psycopg(exc),
                )
                return "fallback"
            if not state.capturing:
                return "idle"
            if state.tables != self.tables:
                return "restart"
            received = [tx for tx in received if tx.commit > state.processed]
            size = sum(tx.size for tx in received)
            self.applied = max(self.applied, state.applied)
            self._feedback(time.monotonic())
            captured(state.captured)
            if received:  # a commit not visible yet: in a moment
                await asyncio.sleep(0.001)
            if heartbeat:
                await asyncio.sleep(STREAM_IDLE)


@dataclass(frozen=True)
class _Written:
    applied: int  # applied_lsn, durable
    processed: int  # the last commit dealt with, written or not
    captured: int
    skipped: int
    capturing: bool
    tables: str | None


async def _write(db: psycopg.AsyncConnection[Any], tables: str | None, txs: list[_Tx]) -> _Written:
    rows = [row for tx in txs for row in tx.rows]
    xids = [tx.xid for tx in txs for _ in tx.rows]
    cur = await db.execute(query("realtime_capture_write"), {
        "tables": tables, "lsns": [lsn for lsn, _ in rows], "xids": xids,
        "datas": [data for _, data in rows]})  # fmt: skip
    row = await cur.fetchone()
    assert row is not None
    return _Written(*row)
