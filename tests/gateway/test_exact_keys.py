"""Keys that a double cannot tell apart: `bigint` beyond 2^53 and `numeric` beyond a double's
precision (and `float8`, whose digits the change log and the rows the gateway reads must
share). Changes of one such row reach subscribers as that row only, and a resume names
exactly the row that went. (The browser client's side: test_browser.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from pyfuncs import capture, realtime

from .conftest import GatewayProcess, WsClient, token

# two keys each, as SQL writes them, that one double holds (float8: two doubles whose 15
# digits are the same, `0.1 + 0.2` and `0.3`)
KEYS = {
    "bigint": ("9007199254740993", "9007199254740992"),
    "numeric": ("0.10000000000000000001", "0.1"),
    "float8": ("0.30000000000000004", "0.3"),
}


def make_table(conn: psycopg.Connection[Any], kind: str) -> tuple[str, str]:
    """rt.k keyed by `kind`, holding its two keys (n = 0), enabled; the database's sessions
    write doubles with 15 digits (the gateway's must not: the change log has all of them)."""
    conn.execute(f"CREATE TABLE rt.k (id {kind} PRIMARY KEY, n int NOT NULL DEFAULT 0)")
    conn.execute("GRANT SELECT ON rt.k TO manager")
    a, b = KEYS[kind]
    conn.execute(f"INSERT INTO rt.k (id) VALUES (%s::text::{kind}), (%s::text::{kind})", [a, b])
    realtime.enable(conn, "rt.k")
    name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    conn.execute(f'ALTER DATABASE "{name}" SET extra_float_digits = 0')
    return a, b


def exact(text: str) -> Any:
    """A key's value as the test's client reads it (numbers with a fraction as Decimals)."""
    return Decimal(text) if "." in text else int(text)


@pytest.mark.parametrize("mode", ["trigger", "wal"])
@pytest.mark.parametrize("kind", list(KEYS))
def test_keys_a_double_cannot_tell_apart_are_told_apart(
    kind: str, mode: str, rt_db: str, conn: psycopg.Connection[Any],
    gateway_factory: Callable[..., GatewayProcess],
) -> None:  # fmt: skip
    a, b = make_table(conn, kind)
    capture.set_mode(conn, mode)
    gateway = gateway_factory(heartbeat=1)
    key_a, key_b = {"id": exact(a)}, {"id": exact(b)}
    where = f"WHERE id = %s::text::{kind}"

    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            ws = await WsClient.connect(gateway.ws_url, token("manager"), exact=True)
            snap = await ws.subscribe("k", table="rt.k")
            assert snap["type"] == "subscribed", snap
            assert sorted(snap["rows"], key=str) == sorted(
                [{**key_a, "n": 0}, {**key_b, "n": 0}], key=str
            )
            # an update and a delete of one reach the subscriber as that row only
            db.execute(f"UPDATE rt.k SET n = 1 {where}", [a])
            db.execute(f"DELETE FROM rt.k {where}", [b])
            await ws.wait_for(lambda m: m.get("op") == "DELETE")
            await asyncio.sleep(0.3)
            events = [(c["op"], c["key"], c["row"]) for c in ws.changes("k")]
            assert events == [("UPDATE", key_a, {**key_a, "n": 1}), ("DELETE", key_b, None)]
            # it comes back; the client goes away holding both, and meanwhile it goes again
            # (and its neighbour changes)
            db.execute(f"INSERT INTO rt.k (id) VALUES (%s::text::{kind})", [b])
            back = await ws.wait_for(lambda m: m.get("op") == "INSERT")
            assert back["key"] == key_b
            await ws.close()
            db.execute(f"DELETE FROM rt.k {where}", [b])
            db.execute(f"UPDATE rt.k SET n = 2 {where}", [a])
            ws = await WsClient.connect(gateway.ws_url, token("manager"), exact=True)
            reply = await ws.subscribe(
                "k", table="rt.k", since=back["position"], keys=[key_a, key_b]
            )
            assert reply["type"] == "subscribed" and reply["gone"] == [key_b], reply
            await ws.wait_for(lambda m: m.get("op") == "UPDATE")
            await asyncio.sleep(0.3)
            events = [(c["op"], c["key"], c["row"]) for c in ws.changes("k")]
            assert events == [("UPDATE", key_a, {**key_a, "n": 2})]  # nothing of the gone one
            await ws.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_key_longer_than_python_converts_holds_no_one_up(
    rt_db: str, conn: psycopg.Connection[Any], gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """A numeric key of 5,000 digits (Python converts at most 4,300 to an int): its change is
    delivered with every digit, and the changes after it too (a read of the change log that
    failed on it would have been tried again for ever, holding every subscriber up)."""
    conn.execute("CREATE TABLE rt.k (id numeric PRIMARY KEY, n int NOT NULL DEFAULT 0)")
    conn.execute("GRANT SELECT ON rt.k TO manager")
    realtime.enable(conn, "rt.k")
    gateway = gateway_factory(heartbeat=1)
    huge = "9" * 5000

    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            ws = await WsClient.connect(gateway.ws_url, token("manager"), exact=True)
            assert (await ws.subscribe("k", table="rt.k"))["type"] == "subscribed"
            db.execute("INSERT INTO rt.k (id) VALUES (%s::numeric)", [huge])
            db.execute("INSERT INTO rt.k (id) VALUES (1)")
            await ws.wait_for(lambda m: m.get("op") == "INSERT" and m["key"] == {"id": 1})
            assert [c["key"]["id"] for c in ws.changes("k")] == [Decimal(huge), 1]
            await ws.close()

    asyncio.run(asyncio.wait_for(main(), 60))
