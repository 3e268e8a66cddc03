"""The gateway's protocol: auth, subscriptions with snapshots, filters, errors, heartbeats,
token expiry and refresh, rate limits, slow consumers, SSE, audit, health and metrics
(issue 4, "Gateway")."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from tests.walcapture import catch_up

from .conftest import SECRET, STUDENTS, GatewayProcess, WsClient, decode, token


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def audit(dsn: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    time.sleep(0.5)  # the gateway writes its audit in batches
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT event, role, detail FROM pyfuncs.realtime_audit ORDER BY id"
        ).fetchall()


def test_snapshot_then_changes_in_commit_order(gateway: GatewayProcess, rt_db: str) -> None:
    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            db.execute("INSERT INTO rt.notes (id, body) VALUES (1, 'one'), (2, 'two')")
            ws = await WsClient.connect(gateway.ws_url, token("manager"), header=True)
            reply = await ws.subscribe("all")
            assert reply["type"] == "subscribed"
            assert sorted(r["id"] for r in reply["rows"]) == [1, 2]
            db.execute("INSERT INTO rt.notes (id, body) VALUES (3, 'three')")
            db.execute("UPDATE rt.notes SET body = 'uno' WHERE id = 1")
            db.execute("DELETE FROM rt.notes WHERE id = 2")
            await ws.wait_for(lambda m: m.get("op") == "DELETE")
            changes = ws.changes("all")
            assert [(c["op"], c["key"]) for c in changes] == [
                ("INSERT", {"id": 3}), ("UPDATE", {"id": 1}), ("DELETE", {"id": 2})
            ]  # fmt: skip
            assert changes[1]["row"]["body"] == "uno" and changes[2]["row"] is None
            positions = [decode(rt_db, c["position"]) for c in changes]
            assert positions == sorted(positions) and len(set(positions)) == 3
            beat = await ws.wait_for(lambda m: m["type"] == "heartbeat")
            assert decode(rt_db, beat["positions"]["all"]) == positions[-1]
            await ws.send(type="unsubscribe", id="all")
            await ws.wait_for(lambda m: m["type"] == "unsubscribed")
            db.execute("INSERT INTO rt.notes (id) VALUES (4)")
            await asyncio.sleep(0.5)
            assert len(ws.changes()) == 3
            await ws.close()

    run(main())
    events = [e for e, _, _ in audit(rt_db)]
    assert events[:3] == ["connect", "subscribe", "unsubscribe"]
    assert events[-1] == "disconnect"


# what the gateway's login role needs (README, "Deploying it")
GATEWAY_GRANTS = """
GRANT SELECT ON pyfuncs.realtime_state, pyfuncs.realtime_table, pyfuncs.realtime_commit,
    pyfuncs.realtime_change TO authenticator;
GRANT INSERT ON pyfuncs.realtime_audit TO authenticator;
GRANT EXECUTE ON FUNCTION pyfuncs.realtime_wal_capture(integer) TO authenticator;
"""


def test_bad_tokens_are_refused_before_anything_is_subscribed(
    gateway: GatewayProcess, rt_db: str
) -> None:
    forever = jwt.encode({"role": "manager"}, SECRET, algorithm="HS256")  # no exp
    # roles outside the allow-list: `none` and the empty name would fall back to the login
    # role, which (like the superuser) is a member of everything
    others = [token(role) for role in ("none", "", "postgres", "authenticator", "Manager")]

    async def main() -> None:
        for tok in (None, "not-a-jwt", token(ttl=-10), token() + "x", forever, *others):
            ws = await WsClient.connect(gateway.ws_url, None)
            await ws.send(type="auth", token=tok) if tok else await ws.send(type="subscribe")
            error = await ws.wait_for(lambda m: m["type"] == "error")
            assert error["code"] == "unauthorized"
            await ws._task
            assert ws.closed[0] == 4001

    run(main())
    assert httpx.get(gateway.url + "/realtime/sse?table=rt.notes").status_code == 401
    failures = [d["reason"] for e, _, d in audit(rt_db) if e == "auth_failed"]
    assert len(failures) == 11
    assert any("expired" in f for f in failures) and any("signature" in f for f in failures)
    assert not [e for e, _, _ in audit(rt_db) if e == "subscribe"]


FILTERS = [
    ([{"column": "n", "op": "eq", "value": 2}], [2]),
    ([{"column": "n", "op": "neq", "value": 2}], [1, 3]),
    ([{"column": "n", "op": "lt", "value": 2}], [1]),
    ([{"column": "n", "op": "lte", "value": "2"}], [1, 2]),
    ([{"column": "n", "op": "gt", "value": 2}], [3]),
    ([{"column": "n", "op": "gte", "value": 2}], [2, 3]),
    ([{"column": "body", "op": "in", "value": ["a", "c"]}], [1, 3]),
    ([{"column": "n", "op": "gt", "value": 1}, {"column": "body", "op": "eq", "value": "c"}], [3]),
]


def test_filters(gateway: GatewayProcess, rt_db: str) -> None:
    """Each filter on a subscription of its own, all on one socket: the snapshot's rows and
    the changes each gets."""

    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            db.execute("INSERT INTO rt.notes (id, body, n) VALUES (1, 'a', 1), (2, 'b', 2)")
            ws = await WsClient.connect(gateway.ws_url, token())
            replies = [await ws.subscribe(f"f{i}", filters=f) for i, (f, _) in enumerate(FILTERS)]
            db.execute("INSERT INTO rt.notes (id, body, n) VALUES (3, 'c', 3)")
            db.execute("UPDATE rt.notes SET n = n + 10 WHERE id = 0")  # touches nothing
            db.execute("INSERT INTO rt.notes (id, n) VALUES (99, NULL)")  # matches no filter
            await ws.wait_for(lambda m: m["type"] == "heartbeat" and all(
                f"f{i}" in m["positions"] and decode(rt_db, m["positions"][f"f{i}"])[0] == 3
                for i in range(len(FILTERS))))  # fmt: skip
            for i, (filters, expected) in enumerate(FILTERS):
                changes = [c["key"]["id"] for c in ws.changes(f"f{i}")]
                got = sorted([r["id"] for r in replies[i]["rows"]] + changes)
                assert got == expected, filters
            await ws.close()

    run(main())


def test_a_row_that_leaves_a_filter_is_reported_without_its_data(
    gateway: GatewayProcess, rt_db: str
) -> None:
    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            db.execute("INSERT INTO rt.notes (id, n) VALUES (1, 1)")
            ws = await WsClient.connect(gateway.ws_url, token())
            await ws.subscribe("low", filters=[{"column": "n", "op": "lt", "value": 5}])
            db.execute("UPDATE rt.notes SET n = 7 WHERE id = 1")
            left = await ws.wait_for(lambda m: m["type"] == "change")
            assert (left["op"], left["key"], left["row"]) == ("UPDATE", {"id": 1}, None)
            db.execute("UPDATE rt.notes SET n = 8 WHERE id = 1")  # still out: nothing
            db.execute("UPDATE rt.notes SET n = 2 WHERE id = 1")  # back in
            await ws.wait_for(lambda m: "position" in m and decode(rt_db, m["position"])[0] == 4)
            # rows are sent as they are at delivery: never one outside the filter
            assert all(c["row"] is None or c["row"]["n"] < 5 for c in ws.changes())
            assert ws.changes()[-1]["row"]["n"] == 2
            await ws.close()

    run(main())


@pytest.mark.parametrize(
    ("request_", "code", "says"),
    [
        ({"table": "rt.nope"}, "unknown_table", "no table"),
        ({"table": "pg_catalog.pg_class"}, "not_enabled", "pyfuncs realtime enable"),
        ({"filters": [{"column": "nope", "op": "eq", "value": 1}]}, "bad_filter", "columns:"),
        ({"filters": [{"column": "n", "op": "eq", "value": "x"}]}, "bad_filter", "valid value"),
        ({"filters": [{"column": "n", "op": "like", "value": 1}]}, "bad_filter", "one of"),
        ({"filters": [{"column": "n", "op": "in", "value": 3}]}, "bad_filter", "list"),
        ({"filters": "n=1"}, "bad_filter", "list"),
        ({"since": "yesterday"}, "bad_position", "gave out"),
        ({"since": "42.1337"}, "bad_position", "gave out"),  # raw positions are not given out
        ({"since": 42}, "bad_position", "gave out"),
        ({"since": "A" * 43}, "bad_position", "gave out"),  # forged
    ],
)
def test_bad_subscriptions_get_a_clear_error_and_change_nothing(
    gateway: GatewayProcess, rt_db: str, request_: dict[str, Any], code: str, says: str
) -> None:
    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token())
        reply = await ws.subscribe("x", **{"table": "rt.notes", **request_})
        assert reply["type"] == "error" and reply["code"] == code and says in reply["message"]
        assert (await ws.subscribe("x"))["type"] == "subscribed"  # the id was not taken
        await ws.close()

    run(main())
    assert [e for e, _, _ in audit(rt_db)].count("subscribe_failed") == 1


def test_a_student_cannot_filter_on_a_column_it_may_not_read(
    gateway: GatewayProcess, rt_db: str
) -> None:
    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("student", STUDENTS[0]))
        reply = await ws.subscribe("s", filters=[{"column": "secret", "op": "eq", "value": "s"}])
        assert reply["code"] == "bad_filter"
        await ws.close()

    run(main())


def test_expiry_pauses_and_a_refreshed_token_resumes_without_loss(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str
) -> None:
    gateway = gateway_factory(expiry_grace=30, heartbeat=1)

    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            ws = await WsClient.connect(gateway.ws_url, token(ttl=2))
            await ws.subscribe("a")
            db.execute("INSERT INTO rt.notes (id) VALUES (1)")
            await ws.wait_for(lambda m: m["type"] == "change")
            expired = await ws.wait_for(lambda m: m.get("code") == "token_expired", timeout=10)
            assert "resume" in expired["message"]
            db.execute("INSERT INTO rt.notes (id) VALUES (2)")
            await asyncio.sleep(1)
            assert len(ws.changes()) == 1  # paused
            await ws.send(type="subscribe", id="b", table="rt.notes")
            refused = await ws.wait_for(lambda m: m.get("sub") == "b")
            assert refused["code"] == "token_expired"
            await ws.send(type="auth", token=token("student", STUDENTS[0]))
            other = await ws.wait_for(lambda m: m.get("code") == "unauthorized")
            assert "same user" in other["message"]
            await ws.send(type="auth", token=token(ttl=60))
            resumed = await ws.wait_for(lambda m: m["type"] == "change" and m["key"]["id"] == 2)
            assert resumed["op"] == "INSERT" and len(ws.changes()) == 2
            await ws.close()

    run(main())
    assert "token_expired" in [e for e, _, _ in audit(rt_db)]


def test_an_unrefreshed_token_ends_the_connection_with_the_reason(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(expiry_grace=1)

    async def main() -> None:
        # a token that expires in 1-2 s (exp is in whole seconds)
        ws = await WsClient.connect(gateway.ws_url, token(ttl=2))
        await ws.subscribe("a")
        await ws._task
        assert ws.closed[0] == 4003 and "token_expired" in ws.closed[1]

    run(main())


def test_rate_limits_per_user(gateway_factory: Callable[..., GatewayProcess], rt_db: str) -> None:
    gateway = gateway_factory(max_connections_per_user=2, max_subscriptions_per_user=2,
                              messages_per_second=5)  # fmt: skip

    async def main() -> None:
        alice = token("student", STUDENTS[0])
        first, second = [await WsClient.connect(gateway.ws_url, alice) for _ in range(2)]
        await first.wait_for(lambda m: m["type"] == "ready")
        await second.wait_for(lambda m: m["type"] == "ready")
        third = await WsClient.connect(gateway.ws_url, alice)
        refused = await third.wait_for(lambda m: m["type"] == "error")
        assert refused["code"] == "rate_limited"
        await third._task
        assert third.closed[0] == 4029
        bob = await WsClient.connect(gateway.ws_url, token("student", STUDENTS[1]))
        await bob.wait_for(lambda m: m["type"] == "ready")  # another user is not limited
        assert (await first.subscribe("a"))["type"] == "subscribed"
        assert (await second.subscribe("b"))["type"] == "subscribed"
        assert (await first.subscribe("c"))["code"] == "rate_limited"
        for _ in range(20):
            await bob.send(type="ping")
        await bob.wait_for(lambda m: m.get("code") == "rate_limited")
        assert 5 <= len([m for m in bob.messages if m["type"] == "pong"]) <= 12
        for c in (first, second, bob):
            await c.close()

    run(main())


def test_a_slow_consumer_is_disconnected_and_resumes_without_loss(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str
) -> None:
    gateway = gateway_factory(outbox_size=5)
    send_buffer_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    rows = (send_buffer_max + 2_000_000) // 3000  # more than the socket can hold

    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            ws = await WsClient.connect(gateway.ws_url, token(), receive_buffer=4096)
            await ws.subscribe("a")
            # it stops reading: the socket's buffers fill (the kernel lets the gateway's side
            # grow up to net.ipv4.tcp_wmem's maximum), then the gateway's outbox for it
            await ws.pause()
            db.execute("INSERT INTO rt.notes (id, body) "
                       "SELECT i, repeat('x', 3000) FROM generate_series(1, %s) i", [rows])  # fmt: skip
            deadline = time.monotonic() + 10
            while not gateway.metrics()["pyfuncs_gateway_slow_consumers_total"]:
                assert time.monotonic() < deadline, "the slow consumer was not disconnected"
                await asyncio.sleep(0.05)
            ws.resume()  # it reads what was sent before the gateway gave up, then the close
            await ws._task
            assert ws.closed[0] == 4008 and "slow_consumer" in ws.closed[1]
            got = ws.changes()
            assert len(got) < rows
            since = got[-1]["position"] if got else ws.messages[1]["position"]
            again = await WsClient.connect(gateway.ws_url, token())
            await again.subscribe("a", since=since)
            await again.wait_for(lambda m: m.get("key") == {"id": rows})
            ids = [c["key"]["id"] for c in got + again.changes()]
            assert ids == list(range(1, rows + 1))
            await again.close()

    run(main())
    reasons = [d.get("reason") for e, _, d in audit(rt_db) if e == "disconnect"]
    assert "slow_consumer" in reasons
    assert gateway.metrics()["pyfuncs_gateway_slow_consumers_total"] == 1


def test_under_another_server_every_message_takes_the_asgi_path(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str
) -> None:
    """uvicorn's own WebSocket protocol offers no `pyfuncs.write_now`: the same messages, in
    the same order, through the outbox and `await send`."""
    gateway = gateway_factory(plain_uvicorn=True)

    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            db.execute("INSERT INTO rt.notes (id) VALUES (1)")
            ws = await WsClient.connect(gateway.ws_url, token())
            snapshot = await ws.subscribe("a")
            assert [r["id"] for r in snapshot["rows"]] == [1]
            db.execute("INSERT INTO rt.notes (id) SELECT generate_series(2, 300)")
            db.execute("DELETE FROM rt.notes WHERE id = 1")
            await ws.wait_for(lambda m: m.get("op") == "DELETE")
            got = [(c["op"], c["key"]["id"]) for c in ws.changes()]
            assert got == [("INSERT", i) for i in range(2, 301)] + [("DELETE", 1)]
            await ws.close()

    run(main())


def _sse_events(response: httpx.Response, count: int) -> list[tuple[str, str, dict[str, Any]]]:
    events, fields = [], {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                events.append((fields.get("id", ""), fields["event"], json.loads(fields["data"])))
                if len(events) == count:
                    return events
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return events


def test_sse_with_filters_and_last_event_id_resume(gateway: GatewayProcess, rt_db: str) -> None:
    headers = {"Authorization": f"Bearer {token()}"}
    url = gateway.url + "/realtime/sse?table=rt.notes&n=in.(1,3)"
    with psycopg.connect(rt_db, autocommit=True) as db, httpx.Client(timeout=10) as http:
        db.execute("INSERT INTO rt.notes (id, n) VALUES (1, 1), (2, 2)")
        with http.stream("GET", url, headers=headers) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            db.execute("INSERT INTO rt.notes (id, n) VALUES (3, 3), (4, 4)")
            (_, kind, snap), (last_id, _, change) = _sse_events(response, 2)
        assert kind == "subscribed" and [r["id"] for r in snap["rows"]] == [1]
        assert change["key"] == {"id": 3} and last_id == change["position"]
        db.execute("UPDATE rt.notes SET n = 3 WHERE id = 4")
        # the resume replays the change log: with the UPDATE not captured yet, its catch-up
        # would send row 4's INSERT (with the row as it is now) and the UPDATE live after it
        catch_up(rt_db)
        with http.stream("GET", url, headers={**headers, "Last-Event-ID": last_id}) as response:
            (_, _, resumed), *rest = _sse_events(response, 2)
        assert resumed.get("resumed")
        # row 4 is in the filter now: its latest change is delivered, with the row as it is
        # now (one event per key on a resume: not its INSERT, made while out of the filter)
        assert [(c["op"], c["key"]["id"], c["row"]["n"]) for _, _, c in rest] == [
            ("UPDATE", 4, 3)
        ]  # fmt: skip
        bad = http.get(gateway.url + "/realtime/sse?table=rt.notes&nope=eq.1", headers=headers)
        assert bad.status_code == 400 and bad.json()["code"] == "bad_filter"


def test_sse_events_hold_json_values_written_over_several_lines(
    gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    """A json value keeps its text, line ends included; an SSE event's data is one line."""
    conn.execute("ALTER TABLE rt.notes ADD COLUMN j json")
    conn.commit()
    headers = {"Authorization": f"Bearer {token()}"}
    with psycopg.connect(rt_db, autocommit=True) as db, httpx.Client(timeout=10) as http:
        db.execute("INSERT INTO rt.notes (id, j) VALUES (1, E'[1,\\n\\n2]')")
        url = gateway.url + "/realtime/sse?table=rt.notes"
        with http.stream("GET", url, headers=headers) as response:
            db.execute("""INSERT INTO rt.notes (id, j) VALUES (2, E'{"a":\\r\\n1}')""")
            (_, _, snap), (_, _, change) = _sse_events(response, 2)
    assert snap["rows"][0]["j"] == [1, 2]
    assert change["row"]["j"] == {"a": 1}


def test_checks_are_batched_per_identity_not_per_connection(
    gateway: GatewayProcess, rt_db: str
) -> None:
    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            tokens = [token("manager", STUDENTS[0]), token("student", STUDENTS[0])]
            clients = [await WsClient.connect(gateway.ws_url, tokens[i % 2]) for i in range(12)]
            for i, c in enumerate(clients):
                await c.subscribe(f"s{i}", filters=[] if i < 6 else
                                  [{"column": "n", "op": "gte", "value": 0}])  # fmt: skip
            before = gateway.metrics()["pyfuncs_gateway_visibility_checks_total"]
            db.execute("INSERT INTO rt.notes (id, owner) VALUES (1, %s)", [STUDENTS[0]])
            for c in clients:
                await c.wait_for(lambda m: m["type"] == "change")
            after = gateway.metrics()["pyfuncs_gateway_visibility_checks_total"]
            assert after - before == 2  # two identities, twelve connections
            for c in clients:
                await c.close()

    run(main())


def test_health_and_metrics(gateway: GatewayProcess) -> None:
    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token())
        await ws.subscribe("a")
        health = httpx.get(gateway.url + "/health").json()
        assert health == {"status": "ok", "feed_connected": True}  # nothing about others
        metrics = gateway.metrics()
        assert metrics["pyfuncs_gateway_subscriptions"] == 1
        assert metrics['pyfuncs_gateway_connections{transport="websocket"}'] == 1
        assert metrics["pyfuncs_gateway_feed_connected"] == 1
        assert "pyfuncs_gateway_delivery_lag_seconds" in metrics
        await ws.close()

    run(main())


def test_metrics_are_for_this_host_or_the_bearer_of_the_metrics_token(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """Counters tell how busy the database is: not for anyone who can reach the gateway."""
    local = gateway_factory()
    assert httpx.get(local.url + "/metrics").status_code == 200
    for header in (
        "X-Forwarded-For",
        "X-Forwarded",
        "Forwarded",
        "Via",
        "X-Real-IP",
        "Client-IP",
        "X-Original-Forwarded-For",
        "X-Envoy-External-Address",
        "X-ProxyUser-Ip",
        "True-Client-IP",
        "X-Forwarded-Host",
        "X-Remote-Addr",
    ):
        relayed = httpx.get(local.url + "/metrics", headers={header: "for=203.0.113.9"})
        assert relayed.status_code == 404, header  # a request a proxy passed on
    assert httpx.get(local.url + "/metrics", headers={"Accept": "text/plain"}).status_code == 200
    guarded = gateway_factory(metrics_token="metrics-secret")
    for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "metrics-secret"}):
        assert httpx.get(guarded.url + "/metrics", headers=header).status_code == 404
    good = httpx.get(guarded.url + "/metrics", headers={"Authorization": "Bearer metrics-secret"})
    assert good.status_code == 200 and "pyfuncs_gateway_connections" in good.text


def test_tokens_never_reach_the_log(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """EventSource clients send their token in the query string: the access log is off by
    default, and with --access-log it leaves query strings out."""
    for args in (("--log-level", "info"), ("--access-log", "--log-level", "info")):
        log = tmp_path / f"gateway{len(args)}.log"
        gateway = gateway_factory(args=args, log=log)
        secret = token()
        url = f"{gateway.url}/realtime/sse?table=rt.notes&access_token={secret}"
        with httpx.stream("GET", url, timeout=10) as response:
            assert response.status_code == 200
            next(response.iter_lines())
        assert httpx.get(url.replace(secret, secret[:-4] + "AAAA")).status_code == 401
        gateway.stop()
        text = log.read_text()
        assert secret.split(".")[2] not in text and secret.split(".")[1] not in text
        assert ("GET /realtime/sse?[query] HTTP/1.1" in text) == ("--access-log" in args)


@pytest.mark.parametrize("level", ["debug", "trace"])
def test_tokens_never_reach_the_log_at_any_level(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path, level: str
) -> None:
    """At debug, websockets logs every request header (`< authorization: Bearer ...`) and
    every frame (`< TEXT '{"type": "auth", "token": ...}'`); at trace, uvicorn logs ASGI
    scopes with their headers and query strings. None of a token may be in the log."""
    log = tmp_path / "gateway.log"
    gateway = gateway_factory(args=("--log-level", level, "--access-log"), log=log)
    tokens = [token(sub=f"user-{n}") for n in range(4)]

    async def main() -> None:
        header = await WsClient.connect(gateway.ws_url, tokens[0], header=True)
        await header.wait_for(lambda m: m["type"] == "ready")
        await header.send(type="auth", token=tokens[1])  # a refresh
        await header.send(type="ping")
        await header.wait_for(lambda m: m["type"] == "pong")
        await header.close()
        message = await WsClient.connect(gateway.ws_url, tokens[2])
        await message.wait_for(lambda m: m["type"] == "ready")
        await message.close()

    run(main())
    url = f"{gateway.url}/realtime/sse?table=rt.notes&access_token={tokens[3]}"
    with httpx.stream("GET", url, headers={"Cookie": f"sb={tokens[3]}"}, timeout=10) as response:
        assert response.status_code == 200
        next(response.iter_lines())
    gateway.stop()
    text = log.read_text()
    for secret in tokens:
        header, claims, signature = secret.split(".")
        for piece in (claims[:16], claims[-12:], signature[:12], signature[-12:]):
            assert piece not in text, (piece, level)
        assert header not in text
    assert "< authorization: [redacted]" in text or "authorization', b'[redacted]" in text


def test_a_refresh_with_a_malformed_token_is_refused_and_keeps_the_connection(
    gateway: GatewayProcess,
) -> None:
    """A lone surrogate (JSON "\\ud800") in a refreshed token: `unauthorized`, like any
    malformed token, not a failure that ends the connection with 1011."""

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token())
        await ws.wait_for(lambda m: m["type"] == "ready")
        for bad in ("\ud800", token() + "\udcff", "é.é.é"):
            start = len(ws.messages)
            await ws.send(type="auth", token=bad)
            refused = await ws.wait_for(lambda m: m["type"] == "error", start=start)
            assert refused["code"] == "unauthorized" and "malformed" in refused["message"]
        await ws.send(type="ping")
        await ws.wait_for(lambda m: m["type"] == "pong")
        assert ws.closed is None
        await ws.close()

    run(main())
    assert gateway.metrics()["pyfuncs_gateway_failures_total"] == 0


def test_the_gateway_refuses_them_with_a_clear_error_and_keeps_the_connection(
    rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    """The gateway logged in as the authenticator, as in production (README, Deploying it),
    with a careless allow-list: the database still refuses all but the first role."""
    conn.execute(GATEWAY_GRANTS)
    roles = "manager,authenticator,postgres,ghost"
    authenticator = rt_db.replace("postgres@", "authenticator@", 1)
    gateway = GatewayProcess(authenticator, {"PYFUNCS_JWT_ROLES": roles}).start()
    try:

        async def main() -> None:
            ws = await WsClient.connect(gateway.ws_url, token("manager"))
            reply = await ws.subscribe("s")
            assert reply["type"] == "subscribed", reply
            await ws.close()
            for role in ("authenticator", "postgres", "ghost"):
                ws = await WsClient.connect(gateway.ws_url, token(role))
                reply = await ws.subscribe("s")
                assert reply["code"] == "unauthorized" and reply["sub"] == "s", reply
                await ws.send(type="ping")
                await ws.wait_for(lambda m: m["type"] == "pong")
                await ws.close()

        run(main())
    finally:
        gateway.stop()


def test_positions_say_nothing_of_the_changes_a_subscriber_was_not_shown(
    gateway: GatewayProcess, rt_db: str
) -> None:
    """The feed's positions count every change in the database; what subscribers get are
    opaque tokens, the same for everyone who receives a change."""

    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            student = await WsClient.connect(gateway.ws_url, token("student", sub=STUDENTS[0]))
            manager = await WsClient.connect(gateway.ws_url, token("manager", sub="m"))
            await student.subscribe("s")
            await manager.subscribe("m")
            db.execute("INSERT INTO rt.notes (id, owner) VALUES (1, %s)", [STUDENTS[0]])
            for i in range(2, 22):  # changes the student may not see
                db.execute("INSERT INTO rt.notes (id, owner) VALUES (%s, %s)", [i, STUDENTS[1]])
            db.execute("INSERT INTO rt.notes (id, owner) VALUES (99, %s)", [STUDENTS[0]])
            await student.wait_for(lambda m: m.get("key") == {"id": 99})
            await manager.wait_for(lambda m: m.get("key") == {"id": 99})
            seen = [c["position"] for c in student.changes()]
            assert len(seen) == 2 and all(len(p) == 43 and "." not in p for p in seen)
            by_key = {c["key"]["id"]: c["position"] for c in manager.changes()}
            assert seen == [by_key[1], by_key[99]]  # one change, one token, for everyone
            first, last = (decode(rt_db, p) for p in seen)
            assert last[0] - first[0] == 21  # what the tokens hide from the student
            await student.close()
            await manager.close()

    run(main())
