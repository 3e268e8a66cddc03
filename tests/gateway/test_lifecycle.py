"""Where a connection begins and ends: which origins' pages may use the gateway (CORS, the
WebSocket Origin), shutdown on SIGTERM, and the order of an unsubscription's reply and the
subscription's events."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
import websockets

from .conftest import GatewayProcess, WsClient, token

APP = "https://app.example"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def opens(url: str, origin: str | None) -> int | None:
    """None if a WebSocket from `origin` is accepted, else the handshake's HTTP status."""
    try:
        ws = await websockets.connect(url, origin=origin)  # type: ignore[arg-type]
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return None


@pytest.mark.parametrize("how", ["env", "option"])
def test_allowed_origins_get_cors_and_may_open_websockets(
    gateway_factory: Callable[..., GatewayProcess], how: str
) -> None:
    if how == "env":
        gateway = gateway_factory(allowed_origins=f"{APP}, http://other.example:8080")
    else:
        args = ("--allowed-origin", "http://other.example:8080", "--allowed-origin", APP)
        gateway = gateway_factory(args=args)
    url = gateway.url
    # the module a page on the allowed origin imports, and its preflight
    js = httpx.get(url + "/realtime.js", headers={"Origin": APP})
    assert js.status_code == 200 and js.headers["access-control-allow-origin"] == APP
    preflight = httpx.options(url + "/realtime/sse", headers={
        "Origin": APP, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, last-event-id",
    })  # fmt: skip
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == APP
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    # an EventSource's stream (token in the query string, as EventSource must)
    with httpx.stream(
        "GET", url + f"/realtime/sse?table=rt.notes&access_token={token()}",
        headers={"Origin": APP}, timeout=10,
    ) as stream:  # fmt: skip
        assert stream.status_code == 200
        assert stream.headers["access-control-allow-origin"] == APP
    # another origin: no CORS, its preflight refused, its WebSocket refused (403)
    evil = "https://evil.example"
    assert "access-control-allow-origin" not in httpx.get(
        url + "/realtime.js", headers={"Origin": evil}
    ).headers  # fmt: skip
    refused = httpx.options(url + "/realtime/sse", headers={
        "Origin": evil, "Access-Control-Request-Method": "GET",
    })  # fmt: skip
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    # operators' endpoints never get CORS
    for path in ("/metrics", "/health", "/demo"):
        assert "access-control-allow-origin" not in httpx.get(
            url + path, headers={"Origin": APP}
        ).headers  # fmt: skip

    async def main() -> None:
        assert await opens(gateway.ws_url, APP) is None
        assert await opens(gateway.ws_url, "http://other.example:8080") is None
        assert await opens(gateway.ws_url, None) is None  # not a browser: no Origin
        assert await opens(gateway.ws_url, gateway.url) is None  # the gateway's own pages
        assert await opens(gateway.ws_url, evil) == 403
        assert await opens(gateway.ws_url, "null") == 403
        ws = await WsClient.connect(gateway.ws_url, token())  # and others still work
        assert (await ws.subscribe("a"))["type"] == "subscribed"
        await ws.close()

    run(main())


def test_without_allowed_origins_there_is_no_cors_and_any_websocket(
    gateway: GatewayProcess,
) -> None:
    js = httpx.get(gateway.url + "/realtime.js", headers={"Origin": APP})
    assert js.status_code == 200 and "access-control-allow-origin" not in js.headers
    preflight = httpx.options(gateway.url + "/realtime/sse", headers={
        "Origin": APP, "Access-Control-Request-Method": "GET",
    })  # fmt: skip
    assert "access-control-allow-origin" not in preflight.headers

    async def main() -> None:
        assert await opens(gateway.ws_url, "https://any.example") is None

    run(main())


def test_any_origin(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gateway = gateway_factory(allowed_origins="*")
    js = httpx.get(gateway.url + "/realtime.js", headers={"Origin": "https://x.example"})
    assert js.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("plain_uvicorn", [False, True])
def test_sigterm_ends_open_streams_and_closes_websockets_with_1001(
    gateway_factory: Callable[..., GatewayProcess], plain_uvicorn: bool
) -> None:
    gateway = gateway_factory(plain_uvicorn=plain_uvicorn)
    lines: list[str] = []

    async def read_sse() -> None:
        headers = {"Authorization": f"Bearer {token()}"}
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", gateway.url + "/realtime/sse?table=rt.notes",
                          headers=headers) as stream,
        ):  # fmt: skip
            async for line in stream.aiter_lines():
                lines.append(line)

    async def main() -> None:
        sse = asyncio.create_task(read_sse())
        ws = await WsClient.connect(gateway.ws_url, token())
        assert (await ws.subscribe("a"))["type"] == "subscribed"
        while "event: subscribed" not in lines:
            await asyncio.sleep(0.05)
        assert gateway.proc is not None
        started = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(gateway.proc.wait, 10)
        took = time.monotonic() - started
        # (uvicorn raises the signal again once it has shut down: the status says SIGTERM)
        assert code in (0, -signal.SIGTERM) and took < 5, (code, took)
        await ws._task
        assert ws.closed[0] == 1001 and ws.closed[1].startswith("shutdown:"), ws.closed
        await asyncio.wait_for(sse, 5)  # the stream ended
        assert "event: error" in lines
        error = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))
        assert error["code"] == "shutdown", error

    run(main())


SLOW = """
CREATE TABLE rt.slow (id int PRIMARY KEY, n int);
ALTER TABLE rt.slow ENABLE ROW LEVEL SECURITY;
CREATE FUNCTION rt.slowly() RETURNS boolean LANGUAGE sql VOLATILE
    AS 'SELECT pg_catalog.pg_sleep(0.4) IS NOT NULL';
CREATE POLICY slowly ON rt.slow FOR SELECT TO manager USING (rt.slowly());
GRANT SELECT ON rt.slow TO manager;
"""


def test_no_event_follows_the_unsubscribed_reply(
    gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    """The visibility check of a change takes 0.4 s here (a slow policy): the client
    unsubscribes while it runs. No event for that id comes after the `unsubscribed`, and a
    subscription made again under the same id gets only what follows its own `subscribed`."""
    conn.execute(SLOW)
    conn.execute("SELECT pyfuncs.enable_realtime('rt.slow')")

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token())
        assert (await ws.subscribe("a", table="rt.slow"))["type"] == "subscribed"
        assert (await ws.subscribe("b", table="rt.slow"))["type"] == "subscribed"
        conn.execute("INSERT INTO rt.slow VALUES (1, 0)")
        await asyncio.sleep(0.15)  # the hub is checking the change now
        await ws.send(type="unsubscribe", id="a")
        await ws.wait_for(lambda m: m["type"] == "change" and m["sub"] == "b")
        await asyncio.sleep(0.5)
        kinds = [m["type"] for m in ws.messages if m.get("sub") == "a"]
        assert kinds[-1] == "unsubscribed", ws.messages
        assert "change" not in kinds[kinds.index("unsubscribed") :]
        await ws.close()

    run(main())


def test_every_error_about_a_subscription_carries_its_id(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str
) -> None:
    gateway = gateway_factory(messages_per_second=1, max_subscriptions_per_user=1)

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token())
        for i in range(4):  # a burst of 2 is allowed, then the message rate refuses
            await ws.send(type="subscribe", id=f"s{i}", table="rt.notes")
        await asyncio.sleep(1)
        errors = [m for m in ws.messages if m["type"] == "error"]
        assert {e["code"] for e in errors} == {"rate_limited"}, errors
        assert sorted(e["sub"] for e in errors) == ["s1", "s2", "s3"], errors
        await ws.close()

    run(main())
