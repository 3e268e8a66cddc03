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

from pyfuncs import capture, realtime

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


@pytest.mark.parametrize("mode", ["trigger", "wal"])
def test_keys_of_enums_and_domains_are_delivered_and_composites_refused(
    mode: str, rt_db: str, conn: psycopg.Connection[Any],
    gateway_factory: Callable[..., GatewayProcess],
) -> None:  # fmt: skip
    """A key column of a domain over a number was logged as text from the WAL (wal2json's
    form) and as a number by triggers, and the gateway reads keys as numbers: in wal mode
    none of such a table's changes was delivered (migration 0015 makes the WAL's values
    what triggers give). A composite or an array of a type defined in the database is
    logged as its text while rows carry it as JSON: subscribing is refused, saying why,
    where it used to succeed and deliver nothing."""
    conn.execute("""
        CREATE TYPE rt.pair AS (a int, b text);
        CREATE TYPE rt.mood AS ENUM ('calm', 'wild');
        CREATE DOMAIN rt.small AS int CHECK (VALUE < 100);
        CREATE DOMAIN rt.price AS numeric(6, 2);
        CREATE TABLE rt.odd (m rt.mood, s rt.small, p rt.price, n int, PRIMARY KEY (m, s, p));
        CREATE TABLE rt.pairs (p rt.pair PRIMARY KEY, n int);
        CREATE TABLE rt.moods (m rt.mood[] PRIMARY KEY, n int);
        GRANT SELECT ON rt.odd, rt.pairs, rt.moods TO manager;
        INSERT INTO rt.odd VALUES ('wild', 7, 1.50, 0);
    """)
    for table in ("rt.odd", "rt.pairs", "rt.moods"):
        realtime.enable(conn, table)
    capture.set_mode(conn, mode)
    gateway = gateway_factory(heartbeat=1)
    first, second = {"m": "wild", "s": 7, "p": 1.5}, {"m": "calm", "s": 8, "p": 2.25}

    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            ws = await WsClient.connect(gateway.ws_url, token("manager"), header=True)
            for table, column in (("rt.pairs", "p (rt.pair)"), ("rt.moods", "m (rt.mood[])")):
                refused = await ws.subscribe(table, table=table)
                assert refused["type"] == "error" and refused["code"] == "unsupported_key"
                assert column in refused["message"], refused
            reply = await ws.subscribe("odd", table="rt.odd")
            assert reply["type"] == "subscribed", reply
            assert [r["s"] for r in reply["rows"]] == [7]
            db.execute("INSERT INTO rt.odd VALUES ('calm', 8, 2.25, 0)")
            await ws.wait_for(lambda m: m.get("op") == "INSERT")
            db.execute("UPDATE rt.odd SET n = 1 WHERE s = 7")
            db.execute("DELETE FROM rt.odd WHERE s = 8")
            await ws.wait_for(lambda m: m.get("op") == "DELETE")
            assert [(c["op"], c["key"]) for c in ws.changes("odd")] == [
                ("INSERT", second), ("UPDATE", first), ("DELETE", second)
            ]  # fmt: skip
            assert ws.changes("odd")[1]["row"] == {**first, "n": 1}
            await ws.close()

    asyncio.run(asyncio.wait_for(main(), 60))
