"""The consumer of the WAL: in 'wal' mode, it reads the database's logical replication slot
and writes the change log in batches (README "Realtime: how changes are captured").

The work is one SQL function, `pyfuncs.realtime_wal_capture` (sql/schema.sql), so a batch
never leaves the server: it decodes, writes the changes with positions taken from their
commit LSNs and records the last commit it applied, in one transaction; the slot is
advanced to that commit at the start of the next batch, once it is durable. A consumer
killed anywhere therefore loses nothing and repeats nothing, and two consumers at once are
merely wasteful: a lock serialises their batches. To avoid that waste one consumer per
database leads (a session advisory lock), and the others stand by.

It runs inside `pyfuncs serve` (every gateway process; one leads) and as
`pyfuncs realtime capture`, for deployments without a gateway or to catch up by hand.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ._pg.vocabulary import CAPTURE_SKIPPED
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
    """Apply everything the slot holds now, in batches; returns how many changes. A
    no-op in trigger mode. `conn` must be in autocommit mode; its session gets
    synchronous_commit = on (the slot is advanced to its commits) and statement_timeout = 0
    (see SESSION)."""
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
    While it leads it reads the slot at once again while a batch was full, after `busy`
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
                ) as conn:
                    conn.add_notice_handler(self._warnings)
                    await self._lead(conn)
                    pause = self.retry
            except psycopg.OperationalError as exc:
                log.warning("the WAL consumer lost its connection (%s); reconnecting", exc)
            except psycopg.errors.InsufficientPrivilege:
                self.denied = True
                log.warning(
                    "this role may not capture from the WAL, so this process leaves capture "
                    "to another (pyfuncs realtime capture --follow, or a gateway whose feed "
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
            await self._look(conn)
            await asyncio.sleep(self.standby)
        self.leading = True
        log.info("this process leads realtime capture from the WAL")
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
            captured = int(row[0])
            self.captured += captured
            if captured and self.on_captured is not None:
                self.on_captured()
            await self._look(conn)
            if row[1]:  # all read: wait a little, longer while nothing comes
                pause = self.busy if captured else min(pause * 2, self.poll)
                await asyncio.sleep(pause)

    @property
    def skipped(self) -> int:
        """Transactions this consumer could not capture and skipped (consumers resynced)."""
        return self._warnings.skipped

    async def _look(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """How much WAL the slot holds, now and then (for /metrics)."""
        if time.monotonic() - self._looked < LOOK_EVERY:
            return
        self._looked = time.monotonic()
        row = await (await conn.execute(query("realtime_slot_wal"))).fetchone()
        self.slot_wal_bytes = None if row is None or row[0] is None else int(row[0])
