"""The gateway when its database captures from the WAL (issue 13): it runs the consumer
itself, delivers in commit order as before, and shows the slot in /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pyfuncs import capture

from .conftest import GatewayProcess, WsClient, decode, token


@pytest.fixture
def wal_gateway(
    rt_db: str, conn: psycopg.Connection[Any], gateway_factory: Callable[..., GatewayProcess]
) -> GatewayProcess:
    capture.set_mode(conn, "wal")
    return gateway_factory(heartbeat=1)


def test_the_gateway_captures_from_the_wal_and_delivers_in_commit_order(
    wal_gateway: GatewayProcess, rt_db: str
) -> None:
    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            db.execute("INSERT INTO rt.notes (id, body) VALUES (1, 'one'), (2, 'two')")
            ws = await WsClient.connect(wal_gateway.ws_url, token("manager"), header=True)
            reply = await ws.subscribe("all")
            assert reply["type"] == "subscribed"
            db.execute("INSERT INTO rt.notes (id, body) VALUES (3, 'three')")
            db.execute("UPDATE rt.notes SET body = 'uno' WHERE id = 1")
            db.execute("DELETE FROM rt.notes WHERE id = 2")
            await ws.wait_for(lambda m: m.get("op") == "DELETE")
            changes = ws.changes("all")
            assert [(c["op"], c["key"]) for c in changes] == [
                ("INSERT", {"id": 3}), ("UPDATE", {"id": 1}), ("DELETE", {"id": 2})
            ]  # fmt: skip
            assert changes[1]["row"]["body"] == "uno"
            positions = [decode(rt_db, c["position"]) for c in changes]
            assert positions == sorted(positions) and len(set(positions)) == 3
            await ws.close()

    asyncio.run(asyncio.wait_for(main(), 60))
    deadline = time.monotonic() + 10
    while (metrics := wal_gateway.metrics()).get("pyfuncs_capture_slot_wal_bytes") is None:
        assert time.monotonic() < deadline, metrics
        time.sleep(0.5)
    assert metrics["pyfuncs_capture_leading"] == 1
    assert metrics["pyfuncs_capture_changes_total"] >= 3
