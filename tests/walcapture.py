"""Helpers for tests of capture from the WAL: a consumer in the background, and catching up
with everything committed so far."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import psycopg

from pyfuncs import capture, realtime
from pyfuncs.capture import Capture
from pyfuncs.realtime import Change, Position


def flushed(dsn: str) -> None:
    """Make everything in the WAL so far durable: the slot reads only flushed WAL, and the
    test cluster commits asynchronously (and flushes a record no commit follows, such as a
    row lock's, only once its page fills). A transaction that writes WAL (a logical message,
    which capture never decodes) and commits synchronously flushes the WAL up to its commit,
    so up to everything before it. (One that only has an xid commits asynchronously.)"""
    with psycopg.connect(dsn, options="-c synchronous_commit=on") as conn:  # commits at the end
        conn.execute("SELECT pg_logical_emit_message(true, 'pyfuncs-tests-flush', '')")


def catch_up(dsn: str, options: str = "") -> None:
    """Return once every transaction committed before the call is in the change log (a
    no-op in trigger mode). `options`: the capturing session's (libpq's `options`)."""
    flushed(dsn)
    with psycopg.connect(dsn, autocommit=True, options=options) as conn:
        capture.capture(conn)


@contextmanager
def consumer(dsn: str, **options: float) -> Iterator[Capture]:
    """A Capture loop running in a thread of its own while the block runs."""
    cap = Capture(dsn, **{"poll": 0.02, "standby": 0.1, "retry": 0.1, **options})  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    started = threading.Event()
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(cap.run()))
        started.set()
        with suppress(asyncio.CancelledError):
            loop.run_until_complete(task[0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait()
    try:
        yield cap
    finally:
        loop.call_soon_threadsafe(task[0].cancel)
        thread.join(10)
        loop.close()


def wait_for(what: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def log(dsn: str, after: Position | None = None) -> list[Change]:
    """The whole change log after `after`, read the way consumers read it."""

    async def collect() -> list[Change]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            changes: list[Change] = []
            start = after or Position()
            while batch := await realtime.read(conn, changes[-1].position if changes else start):
                changes += batch
            return changes

    return asyncio.run(collect())


def ids(changes: list[Change]) -> list[int]:
    return [(c.new or c.old or {}).get("id", -1) for c in changes]
