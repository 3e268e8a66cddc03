"""The gateway when its database captures from the WAL (issue 13): it runs the consumer
itself, delivers in commit order as before, and shows the slot in /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
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
    assert metrics["pyfuncs_capture_streaming"] == 1  # the gateway streams the slot
    assert metrics["pyfuncs_capture_changes_total"] >= 3


def test_a_transaction_the_consumer_cannot_capture_makes_subscribers_resync(
    wal_gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    """A json value jsonb refuses, committed to a subscribed table (migration 0010): the
    consumer in the gateway skips its transaction and counts it, the subscriber is told to
    resync (the gateway closes with 4010, as when changes were pruned: nothing is lost to it
    silently), and the changes after it flow on."""
    conn.execute("ALTER TABLE rt.notes ADD COLUMN doc json")

    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            ws = await WsClient.connect(wal_gateway.ws_url, token("manager"), header=True)
            assert (await ws.subscribe("all"))["type"] == "subscribed"
            db.execute("INSERT INTO rt.notes (id, body) VALUES (1, 'one')")
            await ws.wait_for(lambda m: m.get("type") == "change")
            db.execute("INSERT INTO rt.notes (id, doc) VALUES (2, %s)", ['"\\u0000"'])
            db.execute("INSERT INTO rt.notes (id, body) VALUES (3, 'three')")
            deadline = time.monotonic() + 30
            while ws.closed is None:  # the gateway's feed itself must read the tables again
                assert time.monotonic() < deadline, ws.messages
                await asyncio.sleep(0.05)
            assert ws.closed[0] == 4010 and "resync_required" in ws.closed[1], ws.closed
            assert [c["key"] for c in ws.changes("all")] == [{"id": 1}]
            while not httpx.get(wal_gateway.url + "/health").json()["feed_connected"]:
                await asyncio.sleep(0.05)  # the feed starts again from the new head
            ws = await WsClient.connect(wal_gateway.ws_url, token("manager"), header=True)
            again = await ws.subscribe("again")  # a fresh snapshot, the row jsonb refuses too
            assert again["type"] == "subscribed", again
            assert sorted(r["id"] for r in again["rows"]) == [1, 2, 3]
            assert next(r["doc"] for r in again["rows"] if r["id"] == 2) == "\x00"
            db.execute("INSERT INTO rt.notes (id, body) VALUES (4, 'four')")
            change = await ws.wait_for(lambda m: m["type"] == "change" and m["sub"] == "again")
            assert change["key"] == {"id": 4}
            await ws.close()

    asyncio.run(asyncio.wait_for(main(), 60))
    assert wal_gateway.metrics()["pyfuncs_capture_skipped_total"] == 1
