"""Hostile clients (issue 13): whatever a client sends, it gets a clear error or a close with a
code and a reason, never a dropped connection (1006) or a 500, and nothing changes for anyone
else: connection slots come back, the audit goes on, delivery goes on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
import websockets

from pyfuncs.errors import ConfigError
from pyfuncs.gateway.config import GatewayConfig, origins_from

from .conftest import GatewayProcess, WsClient, token


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


NESTED = "[" * 10_000 + "]" * 10_000
# after auth: (what is sent, the error code, words of its message)
MALFORMED: list[tuple[str | bytes, str, str]] = [
    (b"\x00\x01", "bad_request", "not binary"),
    ("[1, 2]", "bad_request", "JSON objects"),
    ('"subscribe"', "bad_request", "JSON objects"),
    ("5", "bad_request", "JSON objects"),
    ("null", "bad_request", "JSON objects"),
    ("{not json", "bad_request", "JSON objects"),
    (NESTED, "bad_request", "nested"),
    ('{"type": "ping", "x": ' + "[" * 20 + "]" * 20 + "}", "bad_request", "nested"),
    ('{"a": ' * 5000 + "1" + "}" * 5000, "bad_request", "nested"),
    ('{"type": "shout"}', "bad_request", "type is one of"),
    ('{"type": 5}', "bad_request", "type is one of"),
    ('{"type": "subscribe", "id": 5, "table": "rt.notes"}', "bad_request", "`id`"),
    ('{"type": "subscribe", "id": "' + "i" * 65 + '", "table": "rt.notes"}', "bad_request", "`id`"),
    ('{"type": "unsubscribe", "id": []}', "bad_request", "`id`"),
    ('{"type": "subscribe", "id": "a", "table": ["rt.notes"]}', "unknown_table", "no table"),
    ('{"type": "subscribe", "id": "a", "table": "rt.notes", "filters": "n=1"}', "bad_filter",
     "list"),
    ('{"type": "subscribe", "id": "a", "table": "rt.notes\\u0000"}', "unknown_table", "no table"),
    ('{"type": "subscribe", "id": "a", "table": "rt.\\ud800"}', "unknown_table", "no table"),
    ('{"type": "subscribe", "id": "a", "table": "a.b.c.d"}', "unknown_table", "no table"),
    ('{"type": "subscribe", "id": "a", "table": "\\"rt"}', "unknown_table", "no table"),
    ('{"type": "subscribe", "id": "a", "table": "' + "t" * 5000 + '"}', "unknown_table",
     "no table"),
    ('{"type": "unsubscribe", "id": "nope"}', "unknown_subscription", "no subscription"),
]  # fmt: skip


def test_malformed_messages_get_a_clear_error_and_the_connection_goes_on(
    gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token())
        await ws.wait_for(lambda m: m["type"] == "ready")
        for sent, code, says in MALFORMED:
            start = len(ws.messages)
            await ws.ws.send(sent)
            error = await ws.wait_for(lambda m: m["type"] == "error", start=start)
            assert error["code"] == code and says in error["message"], (sent[:60], error)
            await asyncio.sleep(0.1)  # within the message rate
        # and the connection goes on, serving
        assert (await ws.subscribe("good"))["type"] == "subscribed"
        conn.execute("INSERT INTO rt.notes (id) VALUES (1)")
        await ws.wait_for(lambda m: m["type"] == "change" and m["key"] == {"id": 1})
        await ws.close()

    run(main())
    assert gateway.metrics()["pyfuncs_gateway_failures_total"] == 0
    # the audit was not held up by what it was told (a NUL, a lone surrogate)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = [e for (e,) in conn.execute("SELECT event FROM pyfuncs.realtime_audit")]
        if "subscribe" in events and "disconnect" in events:
            break
        time.sleep(0.2)
    assert "subscribe" in events and "disconnect" in events, events


def test_an_invalid_utf8_text_frame_is_closed_with_1007(gateway: GatewayProcess) -> None:
    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token())
        await ws.wait_for(lambda m: m["type"] == "ready")
        await ws.ws.send(b'{"type": "ping", "x": "\xff\xfe"}', text=True)
        await ws._task
        assert ws.closed[0] == 1007, ws.closed

    run(main())


@pytest.mark.parametrize(
    ("first", "says"),
    [
        (b"\x00", "not binary"),
        (NESTED, "nested"),
        ("{nope", "JSON objects"),
        ('"auth"', "JSON objects"),
        ('{"type": "subscribe", "id": "a", "table": "rt.notes"}', "no token"),
        ('{"type": "auth", "token": 5}', "no token"),
    ],
)
def test_a_malformed_first_message_is_refused_with_4001_and_a_reason(
    gateway: GatewayProcess, first: str | bytes, says: str
) -> None:
    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, None)
        await ws.ws.send(first)
        await ws._task
        assert ws.closed[0] == 4001 and ws.closed[1].startswith("unauthorized:"), ws.closed
        error = ws.messages[-1]
        assert error["code"] == "unauthorized" and says in error["message"], error

    run(main())


def test_a_role_that_does_not_exist_is_refused_clearly_on_both_transports(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(max_connections_per_user=2)
    nobody = token("rt_no_such_role")

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, nobody)
        reply = await ws.subscribe("a")
        assert reply["code"] == "unauthorized" and "does not exist" in reply["message"]
        await ws.send(type="ping")
        await ws.wait_for(lambda m: m["type"] == "pong")
        await ws.close()

    run(main())
    headers = {"Authorization": f"Bearer {nobody}"}
    for _ in range(4):  # more than the per-user limit: each slot comes back
        bad = httpx.get(gateway.url + "/realtime/sse?table=rt.notes", headers=headers)
        assert bad.status_code == 401 and "does not exist" in bad.json()["message"]
    assert gateway.metrics()['pyfuncs_gateway_connections{transport="sse"}'] == 0


BAD_SSE: list[tuple[dict[str, str] | str | None, int, str]] = [
    ({"table": "rt.notes\x00"}, 400, "unknown_table"),
    ({"table": "a.b.c.d"}, 400, "unknown_table"),
    ({"table": '"rt'}, 400, "unknown_table"),
    ("table=rt.%ED%B3%BF", 400, "unknown_table"),  # not UTF-8
    ("table=rt.notes&n=eq.%FF", 400, "bad_filter"),
    ({"table": "x" * 5000}, 400, "unknown_table"),
    ({}, 400, "unknown_table"),
    ({"table": "rt.notes", "n": "eq"}, 400, "bad_filter"),
    ({"table": "rt.notes", "n": "eq.abc"}, 400, "bad_filter"),
    ({"table": "rt.notes", "nope": "eq.1"}, 400, "bad_filter"),
    ({"table": "rt.notes", "since": "12"}, 400, "bad_position"),
    ({"table": "rt.notes", "since": str(2**70)}, 400, "bad_position"),
    ({"table": "rt.notes", "since": "-1"}, 400, "bad_position"),
]


def test_bad_sse_requests_get_a_4xx_and_give_their_slot_back(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(max_connections_per_user=3)
    headers = {"Authorization": f"Bearer {token()}"}
    for _ in range(2):  # twice over: more bad requests than the per-user limit
        for params, status, code in BAD_SSE:
            url = gateway.url + "/realtime/sse"
            if isinstance(params, str):
                url, params = f"{url}?{params}", None
            bad = httpx.get(url, params=params, headers=headers)
            assert bad.status_code == status and bad.json()["code"] == code, (params, bad.text)
            assert bad.json()["message"]
    for last in ("abc", "1.5", str(2**64)):
        bad = httpx.get(
            gateway.url + "/realtime/sse?table=rt.notes",
            headers={**headers, "Last-Event-ID": last},
        )  # fmt: skip
        assert bad.status_code == 400 and bad.json()["code"] == "bad_position"
    with httpx.stream(
        "GET", gateway.url + "/realtime/sse?table=rt.notes", headers=headers, timeout=10
    ) as good:
        assert good.status_code == 200
        for line in good.iter_lines():
            if line.startswith("event:"):
                assert line == "event: subscribed"
                break
    metrics = gateway.metrics()
    assert metrics["pyfuncs_gateway_failures_total"] == 0


@pytest.mark.parametrize(
    "since",
    [12, 1.5, 2**70, -1, True, {}, [], "", "12", "1.2", str(2**64) + ".0", "A" * 43, "A" * 54],
)
def test_since_that_is_not_a_position_token_is_bad_position(
    gateway: GatewayProcess, rt_db: str, since: Any
) -> None:
    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token())
        reply = await ws.subscribe("x", since=since)
        assert reply["type"] == "error" and reply["code"] == "bad_position", reply
        assert reply["sub"] == "x"
        assert (await ws.subscribe("x"))["type"] == "subscribed"  # nothing was subscribed
        await ws.close()

    run(main())


@pytest.mark.parametrize("plain_uvicorn", [False, True])
def test_a_message_over_the_limit_closes_with_1009_and_a_reason(
    gateway_factory: Callable[..., GatewayProcess], plain_uvicorn: bool
) -> None:
    """`pyfuncs serve` has websockets refuse it without reading it all; under another server
    the gateway does (both 1009). The limit is a setting."""
    gateway = gateway_factory(plain_uvicorn=plain_uvicorn, max_message=4096)

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token())
        ready = await ws.wait_for(lambda m: m["type"] == "ready")
        assert ready["limits"]["message"] == 4096
        await ws.send(type="ping", pad="p" * 4000)  # under the limit
        await ws.wait_for(lambda m: m["type"] == "pong")
        await ws.send(type="subscribe", id="big", table="rt.notes", pad="p" * 5000)
        await ws._task
        assert ws.closed[0] == 1009 and ws.closed[1], ws.closed
        assert "message_too_big" in ws.closed[1] or "exceeds limit" in ws.closed[1]
        first = await WsClient.connect(gateway.ws_url, None)  # before auth too
        await first.send(type="auth", token=token(), pad="p" * 5000)
        await first._task
        assert first.closed[0] == 1009, first.closed

    run(main())


def test_the_default_message_limit_is_64_kib(gateway: GatewayProcess) -> None:
    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token())
        await ws.send(type="ping", pad="p" * 60_000)
        await ws.wait_for(lambda m: m["type"] == "pong")
        await ws.send(type="ping", pad="p" * 70_000)
        await ws._task
        assert ws.closed[0] == 1009, ws.closed
        huge = await websockets.connect(gateway.ws_url, max_size=None)
        await huge.send(json.dumps({"type": "auth", "token": token()}))
        await huge.recv()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await huge.send("x" * (2 << 20))
            await asyncio.wait_for(huge.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    run(main())


@pytest.mark.parametrize("value", ["0", "-5", "nan", "1.5", "many"])
def test_the_message_limit_is_a_positive_whole_number(value: str) -> None:
    with pytest.raises(ConfigError, match="PYFUNCS_GATEWAY_MAX_MESSAGE"):
        GatewayConfig.from_env("postgresql://x", None, {"PYFUNCS_GATEWAY_MAX_MESSAGE": value})  # type: ignore[arg-type]


def test_allowed_origins_are_origins() -> None:
    assert origins_from("https://a.example, http://b.example:8080") == (
        "https://a.example", "http://b.example:8080",
    )  # fmt: skip
    assert origins_from("*") == ("*",)
    assert origins_from("") == ()
    for bad in ("https://a.example/", "a.example", "*,https://a.example", "https://a/x"):
        with pytest.raises(ConfigError, match="is not an origin"):
            origins_from(bad)


def test_a_role_dropped_under_its_subscription_stops_only_its_deliveries(
    gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("CREATE ROLE rt_doomed; GRANT rt_doomed TO CURRENT_USER")
    conn.execute("GRANT USAGE ON SCHEMA rt TO rt_doomed; GRANT SELECT ON rt.notes TO rt_doomed")

    async def main() -> None:
        doomed = await WsClient.connect(gateway.ws_url, token("rt_doomed"))
        other = await WsClient.connect(gateway.ws_url, token())
        assert (await doomed.subscribe("a"))["type"] == "subscribed"
        assert (await other.subscribe("a"))["type"] == "subscribed"
        conn.execute("DROP OWNED BY rt_doomed; DROP ROLE rt_doomed")
        for i in range(3):
            conn.execute("INSERT INTO rt.notes (id) VALUES (%s)", [i])
        for i in range(3):
            await other.wait_for(lambda m, i=i: m["type"] == "change" and m["key"] == {"id": i})
        assert not [m for m in other.messages if m["type"] == "error"], other.messages
        await doomed.close()
        await other.close()

    try:
        run(main())
    finally:  # (roles are the cluster's: none is left behind by a failure)
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rt_doomed'").fetchone():
            conn.execute("DROP OWNED BY rt_doomed; DROP ROLE rt_doomed")
