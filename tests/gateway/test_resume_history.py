"""A resume sends one event per key, its latest change (red team round 68): a row written
while the subscriber could not see it (another student's, edited, then given to it) is not
sent once per write, which told when and how often it was written. The catch-up reads the
feed in pages of `batch` changes; a small batch makes the history of a row span pages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pyfuncs import capture
from pyfuncs.realtime import Position

from .conftest import STUDENTS, GatewayProcess, WsClient, _tokens, decode, feed, token

ME, OTHER = STUDENTS


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


class Writes:
    """Statements that each change one row of rt.notes, each its own transaction, counted
    (so a test can wait for the gateway to have read them all)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn, self.count = conn, 0

    def __call__(self, statement: str, *params: Any) -> None:
        self.conn.execute(statement, params)
        self.count += 1


def events(ws: WsClient, sub: str) -> list[tuple[str, int, str | None]]:
    """A subscription's events as (op, id, body), body None for a row that left its view."""
    return [(m["op"], m["key"]["id"], m["row"] and m["row"]["body"]) for m in ws.changes(sub)]


async def away(gateway: GatewayProcess, writes: Writes) -> str:
    """Subscribe as ME, and return its resume position once the hub has read all `writes`
    made so far (so that the catch-up of a resume, not the hub, delivers what follows)."""
    await gateway.has_read(writes.count)
    ws = await WsClient.connect(gateway.ws_url, token("student", ME))
    reply = await ws.subscribe("a")
    assert reply["type"] == "subscribed", reply
    await ws.close()
    return str(reply["position"])


async def resume(
    gateway: GatewayProcess, writes: Writes, since: str, expected: int, keys: Any = ()
) -> WsClient:  # fmt: skip
    """Resume as ME once the hub has read all `writes`, and wait for `expected` events (and
    a moment for any more)."""
    await gateway.has_read(writes.count)
    ws = await WsClient.connect(gateway.ws_url, token("student", ME))
    reply = await ws.subscribe("a", since=since, keys=list(keys))
    assert reply["type"] == "subscribed" and reply["resumed"], reply
    deadline = time.monotonic() + 10
    while len(ws.changes("a")) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    return ws


def last_change(dsn: str) -> tuple[int, int]:
    """The position of the last change in the change log."""
    with psycopg.connect(dsn) as db:
        row = db.execute(
            "SELECT c.position, ch.id FROM pyfuncs.realtime_commit c "
            "JOIN pyfuncs.realtime_change ch USING (txid) ORDER BY 1 DESC, 2 DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.parametrize("mode", ["trigger", "wal"])
def test_a_row_edited_while_hidden_then_given_to_me_is_sent_once(
    mode: str, rt_db: str, conn: psycopg.Connection[Any],
    gateway_factory: Callable[..., GatewayProcess],
) -> None:  # fmt: skip
    capture.set_mode(conn, mode)
    gateway = gateway_factory(heartbeat=1, batch=2)
    write = Writes(conn)

    async def main() -> None:
        since = await away(gateway, write)
        write("INSERT INTO rt.notes (id, owner, body) VALUES (42, %s, 'v0')", OTHER)
        for v in range(1, 6):  # edited over three pages of the catch-up
            write("UPDATE rt.notes SET body = %s WHERE id = 42", f"v{v}")
        write("UPDATE rt.notes SET owner = %s WHERE id = 42", ME)
        ws = await resume(gateway, write, since, 1, keys=[])
        assert events(ws, "a") == [("UPDATE", 42, "v5")]
        # the reassignment's event: when the row became mine, not when it was written
        (event,) = ws.changes("a")
        assert decode(rt_db, event["position"]) == last_change(rt_db)
        assert event["row"]["owner"] == ME
        await ws.close()

    run(main())


def test_a_catch_up_cut_short_anywhere_and_resumed_misses_nothing(
    rt_db: str, conn: psycopg.Connection[Any], gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """A client that goes away mid-catch-up resumes from the last position it had: an
    event's, or a heartbeat's, which may lie past writes the catch-up skipped. From any
    position of the feed, a resume sends what the whole resume sends after it."""
    gateway = gateway_factory(heartbeat=1, batch=2)
    write = Writes(conn)
    write("INSERT INTO rt.notes (id, owner, body) VALUES (1, %s, 'm0')", ME)

    async def main() -> None:
        since = await away(gateway, write)
        write("INSERT INTO rt.notes (id, owner, body) VALUES (42, %s, 'v0')", OTHER)
        for v in range(1, 5):
            write("UPDATE rt.notes SET body = %s WHERE id = 1", f"m{v}")
            write("UPDATE rt.notes SET body = %s WHERE id = 42", f"v{v}")
        write("UPDATE rt.notes SET owner = %s WHERE id = 42", ME)
        write("UPDATE rt.notes SET body = 'm5' WHERE id = 1")
        ws = await resume(gateway, write, since, 2)
        whole = ws.changes("a")
        assert events(ws, "a") == [("UPDATE", 42, "v4"), ("UPDATE", 1, "m5")]
        await ws.close()
        # a resume point for every position of the feed since then, as a heartbeat gives
        tokens = _tokens(rt_db)
        cuts = feed(rt_db, decode(rt_db, since)[0])
        ws = await WsClient.connect(gateway.ws_url, token("student", ME))
        for i, cut in enumerate(cuts):
            reply = await ws.subscribe(f"r{i}", since=tokens.resume_token(Position(*cut)))
            assert reply["type"] == "subscribed", reply
        await asyncio.sleep(1)
        for i, cut in enumerate(cuts):
            after = [m for m in whole if decode(rt_db, m["position"]) > cut]
            got = ws.changes(f"r{i}")
            assert [(m["position"], m["op"], m["row"]) for m in got] == [
                (m["position"], m["op"], m["row"]) for m in after
            ], (cut, got)  # fmt: skip
        await ws.close()

    run(main())


def test_interleaved_keys_and_re_keys_each_send_their_latest_change(
    rt_db: str, conn: psycopg.Connection[Any], gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """Several hidden rows edited in turn, one re-keyed while hidden, and a row I hold
    re-keyed while its old key is taken again: each key's latest change, in feed order; a
    re-key that a later change of its new key overwrites is still the removal of the row I
    held; nothing of the row that stays hidden."""
    gateway = gateway_factory(heartbeat=1, batch=2)
    write = Writes(conn)
    write("INSERT INTO rt.notes (id, owner, body) VALUES (47, %s, 'e0')", ME)

    async def main() -> None:
        since = await away(gateway, write)
        for i, name in ((41, "a"), (42, "b"), (43, "c"), (45, "d")):
            write(
                "INSERT INTO rt.notes (id, owner, body) VALUES (%s, %s, %s)", i, OTHER, f"{name}0"
            )
        for v in range(1, 4):
            for i, name in ((41, "a"), (42, "b"), (43, "c"), (45, "d")):
                write("UPDATE rt.notes SET body = %s WHERE id = %s", f"{name}{v}", i)
        write("UPDATE rt.notes SET id = 46 WHERE id = 45")
        write("UPDATE rt.notes SET body = 'd4' WHERE id = 46")
        write("UPDATE rt.notes SET id = 48 WHERE id = 47")
        write("UPDATE rt.notes SET body = 'e1' WHERE id = 48")
        write("INSERT INTO rt.notes (id, owner, body) VALUES (47, %s, 'f0')", ME)
        for i in (41, 43, 46):
            write("UPDATE rt.notes SET owner = %s WHERE id = %s", ME, i)
        write("UPDATE rt.notes SET body = 'c4' WHERE id = 43")
        ws = await resume(gateway, write, since, 6, keys=[{"id": 47}])
        assert events(ws, "a") == [
            ("UPDATE", 47, None), ("UPDATE", 48, "e1"), ("INSERT", 47, "f0"),
            ("UPDATE", 41, "a3"), ("UPDATE", 46, "d4"), ("UPDATE", 43, "c4"),
        ]  # fmt: skip
        await ws.close()

    run(main())
