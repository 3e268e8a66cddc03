"""The subscription audit trail: what clients did, written to pyfuncs.realtime_audit.

Records are queued in memory and inserted in batches by one task, so a burst of connections
costs one round trip per batch, not one per event. The queue is bounded: while the database
is unreachable the oldest records beyond it are dropped and counted (`dropped`), rather than
letting the gateway's memory grow.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections import deque
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ..queries import query
from . import exact
from .clients import Client

log = logging.getLogger("pyfuncs.gateway")


class AuditLog:
    def __init__(self, pool: AsyncConnectionPool[Any], most: int = 10_000) -> None:
        self.pool = pool
        self.dropped = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._most = most
        self._wake = asyncio.Event()

    def record(
        self, event: str, connection: str, *, client: Client | None = None,
        role: str | None = None, subject: str | None = None, **detail: Any,
    ) -> None:  # fmt: skip
        if client is not None:
            role, subject = client.identity.role, client.identity.claims.get("sub")
        if len(self._pending) >= self._most:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append({
            "at": datetime.datetime.now(datetime.UTC), "event": event,
            "connection": _storable(connection), "role": _storable(role),
            "subject": _storable(subject) if isinstance(subject, str) else None,
            "detail": Jsonb(_storable(detail), exact.dumps),  # a filter's exact numbers
        })  # fmt: skip
        self._wake.set()

    async def run(self, every: float = 0.2) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()
            await asyncio.sleep(every)

    async def flush(self) -> None:
        batch, self._pending = self._pending, deque()
        if not batch:
            return
        try:
            async with self.pool.connection() as conn, conn.cursor() as cur:
                await cur.executemany(query("realtime_audit"), batch)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            # a record the table refuses must not hold up the others for ever: write them
            # one by one, and drop (and count) the ones refused
            log.warning("writing %d audit records failed (%s); writing them one by one",
                        len(batch), type(exc).__name__)  # fmt: skip
            await self._one_by_one(batch)
        except psycopg.Error as exc:
            log.warning("writing %d audit records failed (%s); will retry", len(batch), exc)
            batch.extend(self._pending)  # put them back in front of what came meanwhile
            while len(batch) > self._most:
                batch.popleft()
                self.dropped += 1
            self._pending = batch
            self._wake.set()

    async def _one_by_one(self, batch: deque[dict[str, Any]]) -> None:
        try:
            async with self.pool.connection() as conn:
                while batch:
                    try:
                        async with conn.transaction():
                            await conn.execute(query("realtime_audit"), batch[0])
                    except (psycopg.DataError, psycopg.IntegrityError):
                        self.dropped += 1
                    batch.popleft()
        except psycopg.Error as exc:
            log.warning("writing audit records failed (%s); dropped %d", type(exc).__name__,
                        len(batch))  # fmt: skip
            self.dropped += len(batch)


def _storable(value: Any) -> Any:
    """`value` as PostgreSQL's text and jsonb can hold it: clients put what they like in
    what the audit records (a table name, a filter), and a NUL or a lone surrogate would
    make the insert fail."""
    if isinstance(value, str):
        if value.isascii() and "\x00" not in value:
            return value
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode()
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(v) for v in value]
    return value
