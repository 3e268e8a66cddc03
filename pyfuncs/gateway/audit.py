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
            "connection": connection, "role": role,
            "subject": subject if isinstance(subject, str) else None, "detail": Jsonb(detail),
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
        except psycopg.Error as exc:
            log.warning("writing %d audit records failed (%s); will retry", len(batch), exc)
            batch.extend(self._pending)  # put them back in front of what came meanwhile
            while len(batch) > self._most:
                batch.popleft()
                self.dropped += 1
            self._pending = batch
            self._wake.set()
