"""Resuming with the keys a client holds (`keys` with `since`): the gateway says which of those
are gone or no longer visible to it, and nothing about any other key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg

from .conftest import STUDENTS, GatewayProcess, WsClient, head_commit, token


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_rows_gone_while_away_are_reported_on_resume(
    gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    me, other = STUDENTS
    for i in range(1, 6):
        conn.execute("INSERT INTO rt.notes (id, owner, n) VALUES (%s, %s, 0)", [i, me])
    conn.execute("INSERT INTO rt.notes (id, owner) VALUES (9, %s)", [other])  # not mine
    # in the feed before the snapshot (else a resume from its position gets them again:
    # README "Resuming")
    head_commit(rt_db)

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("student", me))
        snap = await ws.subscribe("a", filters=[{"column": "n", "op": "lt", "value": 10}])
        held = [{"id": row["id"]} for row in snap["rows"]]
        assert sorted(k["id"] for k in held) == [1, 2, 3, 4, 5]
        position = snap["position"]
        await ws.close()
        # while the client is away
        conn.execute("DELETE FROM rt.notes WHERE id = 1")  # deleted
        conn.execute("UPDATE rt.notes SET owner = %s WHERE id = 2", [other])  # out of its RLS
        conn.execute("UPDATE rt.notes SET n = 50 WHERE id = 3")  # out of its filter
        conn.execute("UPDATE rt.notes SET body = 'new' WHERE id = 4")  # still visible
        conn.execute("INSERT INTO rt.notes (id, owner) VALUES (6, %s)", [me])  # new
        conn.execute("UPDATE rt.notes SET id = 7 WHERE id = 5")  # re-keyed
        ws = await WsClient.connect(gateway.ws_url, token("student", me))
        # it also names a key it never held: hidden (9) and missing (10) look the same
        keys = [*held, {"id": 9}, {"id": 10}]
        reply = await ws.subscribe(
            "a", since=position, keys=keys, filters=[{"column": "n", "op": "lt", "value": 10}]
        )
        assert reply["type"] == "subscribed" and reply["resumed"], reply
        assert sorted(k["id"] for k in reply["gone"]) == [1, 2, 3, 5, 9, 10]
        assert "rows" not in reply
        # then the changes it missed that it sees now, once each, and none about gone keys
        await ws.wait_for(lambda m: m.get("key") == {"id": 7} and m["row"] is not None)
        await ws.wait_for(lambda m: m.get("key") == {"id": 6} and m["row"] is not None)
        await ws.wait_for(lambda m: m.get("key") == {"id": 4} and m["row"]["body"] == "new")
        await asyncio.sleep(0.5)
        keys_sent = sorted(m["key"]["id"] for m in ws.changes("a"))
        assert keys_sent == [4, 6, 7], ws.changes("a")
        # a client applying both ends with what it may see
        cache = {k["id"] for k in held} - {k["id"] for k in reply["gone"]}
        for change in ws.changes("a"):
            (cache.add if change["row"] else cache.discard)(change["key"]["id"])
        assert cache == {4, 6, 7}
        await ws.close()

    run(main())


def test_keys_are_bounded_and_checked(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str
) -> None:
    gateway = gateway_factory(max_resume_keys=5)

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token())
        ready = await ws.wait_for(lambda m: m["type"] == "ready")
        assert ready["limits"]["keys"] == 5
        position = (await ws.subscribe("first"))["position"]
        bad: list[tuple[dict[str, Any], str, str]] = [
            ({"since": position, "keys": [{"id": i} for i in range(6)]}, "bad_request",
             "at most 5 keys"),
            ({"keys": [{"id": 1}]}, "bad_request", "goes with `since`"),
            ({"since": position, "keys": {"id": 1}}, "bad_request", "list of primary keys"),
            ({"since": position, "keys": [1, 2]}, "bad_request", "list of primary keys"),
            ({"since": position, "keys": [{"nope": 1}]}, "bad_request", "(id)"),
            ({"since": position, "keys": [{"id": 1, "body": "x"}]}, "bad_request", "(id)"),
            ({"since": "nope", "keys": [{"id": 1}]}, "bad_position", "gave out"),
        ]  # fmt: skip
        for extra, code, says in bad:
            reply = await ws.subscribe("x", **extra)
            assert reply["type"] == "error" and reply["code"] == code, (extra, reply)
            assert says in reply["message"] and reply["sub"] == "x", (extra, reply)
            await asyncio.sleep(0.1)
        # nothing was subscribed: the id is free, and an empty list is fine
        reply = await ws.subscribe("x", since=position, keys=[])
        assert reply["type"] == "subscribed" and reply["gone"] == []
        await ws.close()

    run(main())
