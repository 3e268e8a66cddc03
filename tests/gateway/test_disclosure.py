"""What the gateway lets slip, and to whom: positions (the database's commit count and when
others commit), whether objects a subscriber may not see exist, tokens in its logs, its
counters to whoever a proxy relays."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import websockets

from .conftest import STUDENTS, GatewayProcess, WsClient, decode, head_commit, token


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_resync_required_says_what_to_do_and_no_position(
    gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("student", STUDENTS[0]))
        old = (await ws.subscribe("a"))["position"]
        await ws.close()
        conn.execute("CREATE TABLE rt.private (id int PRIMARY KEY)")  # not the student's
        conn.execute("SELECT pyfuncs.enable_realtime('rt.private')")
        for i in range(5):
            conn.execute("INSERT INTO rt.private VALUES (%s)", [i])
        head_commit(rt_db)  # (positions given: only those can be pruned)
        # the gateway has read them (else it is the one behind what is pruned, and closes
        # every connection with 4010)
        await gateway.has_read(5)
        conn.execute("SELECT pyfuncs.prune_realtime('0 seconds')")
        ws = await WsClient.connect(gateway.ws_url, token("student", STUDENTS[0]))
        assert (await ws.subscribe("b", since=old)).get("resumed")
        reply = await ws.wait_for(lambda m: m["type"] == "error")
        assert reply["code"] == "resync_required" and reply["sub"] == "b", reply
        assert "without `since`" in reply["message"]
        assert not re.search(r"\d", reply["message"]), reply["message"]  # no position
        await ws.close()

    run(main())


def test_resume_points_never_compare_equal(
    gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    """`subscribed` and heartbeat positions are sealed afresh each time: a subscriber cannot
    tell from them whether anyone committed anything (in tables it cannot read) meanwhile;
    each still resumes from where it stands."""

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("student", STUDENTS[0]))
        probes = []
        for i in range(4):  # nothing is committed between the probes
            probes.append((await ws.subscribe(f"p{i}"))["position"])
            await ws.send(type="unsubscribe", id=f"p{i}")
        assert len(set(probes)) == 4
        assert len({decode(rt_db, p) for p in probes}) == 1  # the same point, four tokens
        await ws.subscribe("s")
        beats = []
        for _ in range(2):
            start = len(ws.messages)
            beats.append(
                (await ws.wait_for(lambda m: m["type"] == "heartbeat", start=start))["positions"][
                    "s"
                ]
            )
        assert beats[0] != beats[1] and decode(rt_db, beats[0]) == decode(rt_db, beats[1])
        conn.execute("INSERT INTO rt.notes (id, owner) VALUES (1, %s)", [STUDENTS[0]])
        await ws.wait_for(lambda m: m["type"] == "change")
        again = await WsClient.connect(gateway.ws_url, token("student", STUDENTS[0]))
        resumed = await again.subscribe("s", since=probes[0])
        assert resumed.get("resumed")
        change = await again.wait_for(lambda m: m["type"] == "change")
        assert change["position"] == ws.changes()[0]["position"]  # a change's token is one
        for c in (ws, again):
            await c.close()

    run(main())


def test_filters_on_types_that_look_objects_up_are_refused(
    gateway: GatewayProcess, conn: psycopg.Connection[Any]
) -> None:
    """A regclass value is converted by looking the table up: `eq rt.hidden` would tell a
    subscriber whether a table it may not read exists. Refused for every such type, and for
    a type that holds one (arrays, domains, composites, ranges)."""
    conn.execute("CREATE TABLE rt.hidden (id int PRIMARY KEY)")
    conn.execute("CREATE TYPE rt.pair AS (what regclass, n int)")
    conn.execute("CREATE DOMAIN rt.tablename AS regclass")
    conn.execute(
        "CREATE TABLE rt.refs (id int PRIMARY KEY, target regclass, ns regnamespace, "
        "owners regrole[], named rt.tablename, pair rt.pair, acl aclitem, fn regprocedure, "
        "label text)"
    )
    conn.execute("GRANT SELECT ON rt.refs TO manager")
    conn.execute("SELECT pyfuncs.enable_realtime('rt.refs')")

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("manager"))
        for column, value in [("target", "rt.hidden"), ("target", "rt.nosuch"),
                              ("ns", "pg_toast"), ("owners", "{student}"),
                              ("named", "rt.hidden"), ("pair", "(rt.hidden,1)"),
                              ("acl", "student=r/postgres"), ("fn", "now()")]:  # fmt: skip
            reply = await ws.subscribe(
                "r", table="rt.refs", filters=[{"column": column, "op": "eq", "value": value}]
            )
            assert reply["code"] == "bad_filter", (column, value, reply)
            assert "names database objects" in reply["message"]
        ok = await ws.subscribe(
            "r", table="rt.refs", filters=[{"column": "label", "op": "eq", "value": "x"}]
        )
        assert ok["type"] == "subscribed"
        await ws.close()

    run(main())


SECRET_HEADER = "eyJhbGciOiJIUzI1NiJ9"  # a JWT's first part, as a marker


@pytest.mark.parametrize(
    "args",
    [("--log-level", "info"), ("--access-log", "--log-level", "debug"), ("--log-level", "trace")],
)
def test_tokens_in_urls_never_reach_the_log(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Whatever the log level, and whether the token is valid or not: the query strings of
    WebSocket handshakes and SSE requests are left out of every log line."""
    log = tmp_path / "gateway.log"
    gateway = gateway_factory(args=args, log=log)
    secret = token()
    bogus = SECRET_HEADER + ".LEAKED-IF-LOGGED.x"

    async def main() -> None:
        for tok in (secret, bogus):
            url = f"{gateway.ws_url}?access_token={tok}"
            async with websockets.connect(url) as ws:
                await ws.send(json.dumps({"type": "auth", "token": secret}))
                await ws.recv()

    run(main())
    for tok in (secret, bogus):
        url = f"{gateway.url}/realtime/sse?table=rt.notes&access_token={tok}"
        with httpx.stream("GET", url, timeout=10) as response:
            if response.status_code == 200:
                next(response.iter_lines())
    gateway.stop()
    text = log.read_text()
    assert "LEAKED-IF-LOGGED" not in text and secret.split(".")[2] not in text
    assert secret.split(".")[1] not in text
    assert "WebSocket /realtime?[query]" in text  # the handshake is logged, its query not


@pytest.mark.parametrize(
    "header",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.7;proto=https"},
        {"X-Real-IP": "203.0.113.7"},
        {"Via": "1.1 proxy"},
        {"X-Forwarded-Host": "metrics.example"},
        {"True-Client-IP": "203.0.113.7"},
    ],
)
def test_metrics_are_not_for_requests_a_proxy_relayed(
    gateway: GatewayProcess, header: dict[str, str]
) -> None:
    assert httpx.get(gateway.url + "/metrics").status_code == 200
    assert httpx.get(gateway.url + "/metrics", headers=header).status_code == 404
