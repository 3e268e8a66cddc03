"""Regression tests for the red team's findings (memory, shutdown, anonymous floods, resume
disclosure, rate limits, catch-up, audit, numbers, Origin)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import websockets

from pyfuncs.auth import Identity
from pyfuncs.errors import SubscriptionError
from pyfuncs.gateway import protocol
from pyfuncs.gateway.clients import Client
from pyfuncs.gateway.config import GatewayConfig
from pyfuncs.gateway.origins import Origins
from pyfuncs.gateway.ratelimit import RateLimits

from .conftest import STUDENTS, GatewayProcess, WsClient, head_commit, token


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


def _send_buffer_max() -> int:
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


async def _stalled_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


# --- units: no gateway process --------------------------------------------------------


def test_the_outbox_is_bounded_in_bytes_and_a_queued_snapshot_is_freed() -> None:
    async def main() -> None:
        client = Client(Identity("student", {"sub": "u"}), 100, "websocket", 1000)
        client.push_raw("subscribed", None, "x" * 600, "s1")
        client.push_raw("pong", None, "p" * 10)
        assert client.outbox.size == 610
        client.drop_snapshot("s1")  # unsubscribed before the client read it
        assert client.outbox.size == 10 and client.outbox.qsize() == 1
        client.push_raw("subscribed", None, "y" * 900, "s2")
        assert client.reason is None
        client.push_raw("change", None, "z" * 200)  # past 1000 characters waiting
        assert client.reason is not None and client.reason[0] == "slow_consumer"
        assert "bytes" in client.reason[1]

    asyncio.run(main())


def test_a_users_message_rate_outlives_its_connections() -> None:
    config = GatewayConfig("", None, messages_per_second=20)  # type: ignore[arg-type]
    limits = RateLimits(config)
    answered = 0
    for _ in range(5):  # reconnect after each burst: no fresh bucket
        try:
            limits.connect("sub:u")
        except SubscriptionError as exc:  # connecting counts as a message too
            assert exc.code == "rate_limited"
            continue
        for _ in range(40):
            try:
                limits.message("sub:u")
                answered += 1
            except SubscriptionError as exc:
                assert exc.code == "rate_limited"
        limits.disconnect("sub:u", 0, 0)
    assert answered <= 45
    # memory: the buckets of users gone, once full again, are forgotten
    limits = RateLimits(GatewayConfig("", None, messages_per_second=1e6))  # type: ignore[arg-type]
    for i in range(1000):
        limits.connect(f"sub:{i}")
        limits.disconnect(f"sub:{i}", 0, 0)
    assert len(limits._buckets) <= 100


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1E309"])
def test_numbers_out_of_range_are_bad_requests(number: str) -> None:
    text = '{"type":"subscribe","id":"a","since":"x","keys":[{"id":' + number + "}]}"
    with pytest.raises(SubscriptionError) as error:
        protocol.decode(text, 65536)
    assert error.value.code == "bad_request"
    assert protocol.decode('{"a": 1e308}', 100) == {"a": Decimal("1e308")}  # exactly
    # an exponent beyond Decimal's is refused too (a double would have made it 0)
    with pytest.raises(SubscriptionError) as error:
        protocol.decode('{"a": 1e-99999999999999999999}', 100)
    assert error.value.code == "bad_request"


def test_the_own_origin_rule_compares_scheme_host_and_port() -> None:
    origins = Origins(("https://app.example",))
    headers = {"host": "gw.example:8000"}
    assert origins.websocket_allowed("https://app.example", headers)
    assert origins.websocket_allowed("http://gw.example:8000", headers, "http")
    assert not origins.websocket_allowed("https://gw.example:8000", headers, "http")
    assert not origins.websocket_allowed("ftp://gw.example:8000", headers, "http")
    assert origins.websocket_allowed("https://gw.example:8000", headers, "https")
    assert not origins.websocket_allowed("http://gw.example", headers, "http")


# --- against a gateway ------------------------------------------------------------------


def test_a_snapshot_is_capped_in_bytes_and_subscribe_unsubscribe_holds_no_memory(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    outbox = 1_000_000
    gateway = gateway_factory(outbox_bytes=outbox, max_snapshot_bytes=200_000,
                              messages_per_second=200, heartbeat=60)  # fmt: skip
    me, other = STUDENTS
    conn.execute("INSERT INTO rt.notes (id, owner, body) SELECT i, %s, repeat('x', 1000) "
                 "FROM generate_series(1, 150) i", [me])  # fmt: skip
    conn.execute("INSERT INTO rt.notes (id, owner, body) SELECT i, %s, repeat('x', 1000) "
                 "FROM generate_series(151, 300) i", [other])  # fmt: skip

    async def main() -> None:
        manager = await WsClient.connect(gateway.ws_url, token())
        refused = await manager.subscribe("all")  # 300 rows of 1 KB: over 200 KB
        assert refused["type"] == "error" and refused["code"] == "too_many_rows"
        assert "bytes" in refused["message"]
        await manager.close()

        sock = await _stalled_socket(gateway.port)
        ws = await websockets.connect(gateway.ws_url, sock=sock, max_size=None, max_queue=1)
        await ws.send(json.dumps({"type": "auth", "token": token("student", me)}))
        await ws.recv()  # ready; it reads nothing more
        # ~160 KB snapshots, unsubscribed at once: each is freed, the client stays
        for i in range(150):
            await ws.send(json.dumps({"type": "subscribe", "id": f"s{i}", "table": "rt.notes"}))
            await ws.send(json.dumps({"type": "unsubscribe", "id": f"s{i}"}))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        assert gateway.metrics()["pyfuncs_gateway_slow_consumers_total"] == 0
        # held subscriptions: past the socket's buffers and the outbox's bytes it is cut off
        for i in range(min(90, (_send_buffer_max() + 2 * outbox) // 150_000 + 5)):
            await ws.send(json.dumps({"type": "subscribe", "id": f"h{i}", "table": "rt.notes"}))
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 10
        while not gateway.metrics()["pyfuncs_gateway_slow_consumers_total"]:
            assert time.monotonic() < deadline, "the slow consumer was not disconnected"
            await asyncio.sleep(0.1)
        ws.transport.abort()

    run(main())


def test_sigterm_ends_a_stalled_event_stream_after_a_short_grace(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    size = _send_buffer_max() + 3_000_000
    rows = min(10_000, size // 1000)
    gateway = gateway_factory(shutdown_grace=1, max_snapshot_bytes=64 * 2**20,
                              max_snapshot_rows=10_000)  # fmt: skip
    me = STUDENTS[0]
    conn.execute("INSERT INTO rt.notes (id, owner, body) SELECT i, %s, repeat('x', %s) "
                 "FROM generate_series(1, %s) i", [me, size // rows, rows])  # fmt: skip

    async def main() -> None:
        sock = await _stalled_socket(gateway.port)
        sock.sendall(("GET /realtime/sse?table=rt.notes HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {token('student', me)}\r\n\r\n").encode())  # fmt: skip
        await asyncio.sleep(1.5)  # the snapshot event fills the buffers; nothing is read
        assert gateway.proc is not None
        started = time.monotonic()
        gateway.proc.terminate()
        while gateway.proc.poll() is None:
            assert time.monotonic() - started < 10, "a stalled SSE reader kept the gateway up"
            await asyncio.sleep(0.1)
        sock.close()

    run(main())


def test_anonymous_connections_are_limited_and_auth_failures_audited_at_a_bounded_rate(
    gateway_factory: Callable[..., GatewayProcess],
    rt_db: str,
    conn: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    log = tmp_path / "gateway.log"
    gateway = gateway_factory(max_pending_per_peer=4, auth_timeout=1, log=log,
                              auth_failures_audited=0.5,
                              allowed_origins="https://app.example")  # fmt: skip

    async def main() -> None:
        idle = [await websockets.connect(gateway.ws_url) for _ in range(4)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(gateway.ws_url)
        assert refused.value.response.status_code == 403
        # a client with a token in its header is not held back by them
        ok = await WsClient.connect(gateway.ws_url, token(), header=True)
        await ok.wait_for(lambda m: m["type"] == "ready")
        await ok.close()
        # the auth timeout ends the anonymous ones (1 s here; 3 s by default)
        for ws in idle:
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 3)
            assert ws.close_code == 4001
        # anyone can fail to authenticate: counted, audited at a bounded rate
        for _ in range(40):
            async with websockets.connect(gateway.ws_url) as ws:
                await ws.send('{"type": "auth", "token": "not a token"}')
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        await ws.recv()
        # a refused Origin is audited too (as auth_failed, which the table takes), with
        # the count of failures not audited before it
        await asyncio.sleep(2.2)
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(gateway.ws_url, origin="https://evil.example")  # type: ignore[arg-type]

    started = time.monotonic()
    run(main())
    assert "ERROR" not in log.read_text()
    time.sleep(0.6)  # the audit is written in batches
    elapsed = time.monotonic() - started
    metrics = gateway.metrics()
    assert metrics["pyfuncs_gateway_auth_failures_total"] >= 42
    assert metrics["pyfuncs_gateway_audit_dropped_total"] == 0
    audited = conn.execute("SELECT detail FROM pyfuncs.realtime_audit "
                           "WHERE event = 'auth_failed' ORDER BY at").fetchall()  # fmt: skip
    assert 1 <= len(audited) <= 15 + elapsed / 2 + 1
    last = audited[-1][0]
    assert "origin not allowed" in last["reason"] and last["unaudited_before"] > 0


def test_a_resume_with_keys_learns_nothing_of_hidden_rows_history(
    gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    me, other = STUDENTS

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("student", me))
        pos = (await ws.subscribe("a"))["position"]
        await ws.close()
        conn.execute("INSERT INTO rt.notes (id, owner, body) VALUES (500, %s, 'theirs')", [other])
        conn.execute("DELETE FROM rt.notes WHERE id = 500")
        conn.execute("INSERT INTO rt.notes (id, owner, body) VALUES (777, %s, 'theirs')", [other])
        conn.execute("UPDATE rt.notes SET n = n + 1 WHERE id = 777")
        conn.execute("UPDATE rt.notes SET id = 778 WHERE id = 777")
        conn.execute("INSERT INTO rt.notes (id, owner, body) VALUES (500, %s, 'mine')", [me])
        conn.execute("INSERT INTO rt.notes (id, owner, body) VALUES (777, %s, 'mine')", [me])
        head_commit(rt_db)  # all of it in the feed while the client is away ...
        await gateway.has_read(7)  # ... and read by the gateway (so one catch-up page)
        ws = await WsClient.connect(gateway.ws_url, token("student", me))
        reply = await ws.subscribe("a", since=pos, keys=[])
        assert reply["type"] == "subscribed" and reply["gone"] == []
        await ws.wait_for(lambda m: m.get("key") == {"id": 777} and m.get("row") is not None)
        await asyncio.sleep(0.5)
        events = [(m["op"], m["key"]["id"], m["row"] and m["row"]["body"]) for m in ws.changes()]
        assert events == [("INSERT", 500, "mine"), ("INSERT", 777, "mine")]
        await ws.close()

    run(main())


def test_catch_up_for_a_client_that_does_not_read_gives_up(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    gateway = gateway_factory(outbox_size=20, catch_up_wait=1, max_snapshot_bytes=64 * 2**20,
                              heartbeat=60)  # fmt: skip
    size = _send_buffer_max() + 3_000_000
    rows = min(10_000, size // 1000)

    async def main() -> None:
        sock = await _stalled_socket(gateway.port)
        ws = await websockets.connect(gateway.ws_url, sock=sock, max_size=None, max_queue=1)
        try:
            await ws.send(json.dumps({"type": "auth", "token": token()}))
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "id": "first", "table": "rt.notes"}))
            pos = json.loads(await ws.recv())["position"]
            await ws.send(json.dumps({"type": "unsubscribe", "id": "first"}))
            await ws.recv()
            conn.execute("INSERT INTO rt.notes (id, body) SELECT i, repeat('x', %s) "
                         "FROM generate_series(1, %s) i", [size // rows, rows])  # fmt: skip
            # it stops reading: a big snapshot clogs the socket, pongs fill half the outbox
            await ws.send(json.dumps({"type": "subscribe", "id": "big", "table": "rt.notes"}))
            await asyncio.sleep(1)
            for _ in range(12):
                await ws.send('{"type": "ping"}')
            await ws.send(json.dumps({"type": "subscribe", "id": "r", "table": "rt.notes",
                                      "since": pos}))  # fmt: skip
            # until the socket's buffers are full, the client still takes messages (a few
            # seconds of snapshot on a slow machine); after that, catch_up_wait
            deadline = time.monotonic() + 40
            while not gateway.metrics()["pyfuncs_gateway_slow_consumers_total"]:
                assert time.monotonic() < deadline, "catch-up waited for ever"
                await asyncio.sleep(0.1)
        finally:
            ws.transport.abort()

    run(main())


def test_unsubscribe_is_answered_while_the_token_is_expired(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str
) -> None:
    gateway = gateway_factory(expiry_grace=30)

    async def main() -> None:
        # a token that expires in 1-2 s (exp is in whole seconds)
        ws = await WsClient.connect(gateway.ws_url, token(ttl=2))
        await ws.subscribe("a")
        await ws.wait_for(lambda m: m.get("code") == "token_expired", timeout=10)
        await ws.send(type="unsubscribe", id="a")
        reply = await ws.wait_for(lambda m: m.get("sub") == "a" and m["type"] != "subscribed")
        assert reply["type"] == "unsubscribed"
        await ws.send(type="ping")
        refused = await ws.wait_for(lambda m: m.get("code") == "token_expired" and
                                    "refreshed" in m["message"])  # fmt: skip
        assert refused["type"] == "error"
        await ws.close()

    run(main())


def test_the_visibility_statement_cache_is_small() -> None:
    from pyfuncs.gateway import tables

    table = tables.Table(1, "rt", "notes", ("id",))
    none = tables.Filter.parse_all([])
    tables._cached_visible.cache_clear()
    tables._visible_statement(table, ("id",), (none,) * (tables.CACHED_FILTER_SETS + 1))
    assert tables._cached_visible.cache_info().currsize == 0  # large: composed each time
    for i in range(300):
        tables._visible_statement(table, ("id", f"c{i}"), (none,))
    assert tables._cached_visible.cache_info().currsize <= 256


def test_a_catch_up_is_paused_while_the_token_is_expired(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    """A resume still catching up went on sending changes after `token_expired`, for as long
    as the catch-up lasted (its client paces it: up to the grace). It pauses now, as the
    live path does, and the refreshed token takes it on from where it paused (round 68's;
    batch=2 only makes the catch-up long here)."""
    me, _ = STUDENTS
    gateway = gateway_factory(batch=2, expiry_grace=30, heartbeat=60)

    async def main() -> None:
        first = await WsClient.connect(gateway.ws_url, token("student", me))
        pos = (await first.subscribe("a"))["position"]
        await first.close()
        conn.execute("INSERT INTO rt.notes (id, owner, body) SELECT i, %s, 'x' "
                     "FROM generate_series(1, 2000) i", [me])  # fmt: skip
        head_commit(rt_db)
        await gateway.has_read(2000)
        ws = await WsClient.connect(gateway.ws_url, token("student", me, ttl=3))
        assert (await ws.subscribe("b", since=pos))["type"] == "subscribed"
        expired = await ws.wait_for(lambda m: m.get("code") == "token_expired", timeout=10)
        at = ws.messages.index(expired)
        await asyncio.sleep(1.5)
        assert not [m for m in ws.messages[at + 1 :] if m["type"] == "change"]
        await ws.send(type="auth", token=token("student", me))
        await ws.wait_for(lambda m: len(ws.changes()) == 2000, timeout=30)
        assert sorted(c["key"]["id"] for c in ws.changes()) == list(range(1, 2001))
        await ws.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def _closed_by_the_server(s: socket.socket, within: float) -> bool:
    """Whether the server closed `s` (what it answered first is read past)."""
    s.settimeout(within)
    try:
        while s.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_that_send_no_request_are_closed_and_bounded_per_peer(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """uvicorn gave a connection that never sent a byte no timeout and counted it toward its
    limit: enough idle sockets from one address made every plain HTTP request (the event
    stream, /health) a 503 for as long as they stayed open (round 68's). A connection now
    has header_timeout to send its headers (trickling them does not help), and one address
    max_unsent_per_peer connections waiting for theirs; the others are closed at once."""
    gateway = gateway_factory(header_timeout=2, max_unsent_per_peer=16)
    idle = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(100)]
    trickle = socket.create_connection(("127.0.0.1", gateway.port))
    try:
        time.sleep(0.5)
        assert sum(_closed_by_the_server(s, 0.05) for s in idle) >= 100 - 16
        # another address is served at once (this one is at its limit meanwhile)
        other = ("127.0.0.2", 0)
        with socket.create_connection(("127.0.0.1", gateway.port), source_address=other) as health:
            health.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            assert health.recv(100).startswith(b"HTTP/1.1 200")
        trickle.sendall(b"GET /health HTTP/1.1\r\n")
        for _ in range(6):  # a byte of a header every half second: past the 2 s
            time.sleep(0.5)
            with contextlib.suppress(OSError):
                trickle.sendall(b"x")
        assert all(_closed_by_the_server(s, 0.5) for s in [*idle, trickle])
    finally:
        for s in [*idle, trickle]:
            s.close()


def test_a_users_filters_are_bounded_in_all(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """One student's 100 subscriptions of 16 `in` filters of 100 values each (each within
    the bounds of a subscription) made every other subscriber's deliveries 15 times slower:
    each value is converted for every row of every batch, in the query all deliveries wait
    for (round 68's). A user's subscriptions filter on MAX_FILTER_VALUES_PER_USER values in
    all (1,000; 250 here); an unsubscribe or a closed connection gives them back."""
    me, _ = STUDENTS
    gateway = gateway_factory(max_filter_values_per_user=250)
    hundred = [{"column": "id", "op": "in", "value": list(range(100))}]

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("student", me))
        for sub in ("a", "b"):
            assert (await ws.subscribe(sub, filters=hundred))["type"] == "subscribed"
        refused = await ws.subscribe("c", filters=hundred)
        assert refused["code"] == "rate_limited" and "more than 250 values" in refused["message"]
        assert (await ws.subscribe("d", filters=hundred[0:0]))["type"] == "subscribed"
        await ws.send(type="unsubscribe", id="a")
        await ws.wait_for(lambda m: m["type"] == "unsubscribed")
        assert (await ws.subscribe("c", filters=hundred))["type"] == "subscribed"
        await ws.close()
        again = await WsClient.connect(gateway.ws_url, token("student", me))
        for sub in ("a", "b"):  # (the closed connection's were given back)
            assert (await again.subscribe(sub, filters=hundred))["type"] == "subscribed"
        await again.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def _health_from(port: int, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=3) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        try:
            return s.recv(100)
        except OSError as exc:
            return repr(exc).encode()


def test_connections_refused_past_the_peer_bound_are_not_counted_for_ever(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """A connection refused for being past max_unsent_per_peer was counted and never given
    back: past the bound, the address was locked out for good (behind a proxy: everyone).
    Round 69's."""
    gateway = gateway_factory(header_timeout=30, max_unsent_per_peer=4)
    source = "127.0.0.3"
    idle = [
        socket.create_connection(("127.0.0.1", gateway.port), source_address=(source, 0))
        for _ in range(12)
    ]
    time.sleep(0.5)
    for s in idle:
        s.close()
    time.sleep(0.5)
    for _ in range(3):
        assert _health_from(gateway.port, source).startswith(b"HTTP/1.1 200")


def test_a_request_body_trickled_after_its_headers_is_timed_out_and_counted(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """The bound stopped at the headers: a request announcing a body and sending a byte of
    it every half second held its connection for ever, uncounted per address (round 69's).
    The request must arrive whole within header_timeout, and counts until it has."""
    gateway = gateway_factory(header_timeout=1, max_unsent_per_peer=2)
    trickling = []
    for _ in range(6):
        s = socket.create_connection(("127.0.0.1", gateway.port), source_address=("127.0.0.5", 0))
        with contextlib.suppress(OSError):  # (past the bound: closed at once)
            s.sendall(b"POST /health HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        trickling.append(s)
    try:
        for _ in range(6):  # 3 s: three times the timeout
            time.sleep(0.5)
            for s in trickling:
                with contextlib.suppress(OSError):
                    s.sendall(b"x")
        assert all(_closed_by_the_server(s, 0.5) for s in trickling)
    finally:
        for s in trickling:
            s.close()
