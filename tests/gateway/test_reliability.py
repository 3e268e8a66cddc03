"""The gateway under failure: killed mid-burst, PostgreSQL restarted under it, its LISTEN
connection dropped, clients resuming on another gateway process (issue 4, "Reliability")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from pyfuncs.embedded import Cluster

from .conftest import (
    GatewayProcess,
    WsClient,
    burst,
    decode,
    feed_but_superseded,
    head_commit,
    notes,
    token,
)


class Follower:
    """A subscriber that keeps a cache and its last position, and resumes on any gateway."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.cache: dict[int, dict[str, Any]] = {}
        self.positions: list[tuple[int, int]] = []
        self.last: str | None = None
        self.ws: WsClient | None = None

    async def connect(self, gateway: GatewayProcess) -> None:
        await self.close()
        self.ws = await WsClient.connect(gateway.ws_url, token())
        reply = await self.ws.subscribe("s", since=self.last)
        assert reply["type"] == "subscribed", reply
        if self.last is None:
            self.cache = {r["id"]: r for r in reply["rows"]}
            self.last = reply["position"]
        self._applied = 0

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    def apply(self) -> None:
        assert self.ws is not None
        for change in self.ws.changes()[self._applied :]:
            self._applied += 1
            position = decode(self.dsn, change["position"])
            assert not self.positions or position > self.positions[-1], "out of order"
            self.positions.append(position)  # type: ignore[arg-type]
            if change["row"] is None:
                self.cache.pop(change["key"]["id"], None)
            else:
                self.cache[change["key"]["id"]] = change["row"]
            self.last = change["position"]


def final_check(dsn: str, followers: list[Follower], since: int) -> None:
    state = {k: v["n"] for k, v in notes(dsn).items()}
    for f in followers:
        assert {k: v["n"] for k, v in f.cache.items()} == state  # exactly the committed state
        # every change once, in commit order (but writes a resume's catch-up skipped)
        assert f.positions == feed_but_superseded(dsn, since, f.positions)


async def caught_up(followers: list[Follower], dsn: str, timeout: float = 60) -> None:
    head = head_commit(dsn)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in followers:
            f.apply()
        if all(f.positions and f.positions[-1][0] >= head for f in followers):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("followers did not catch up")


def test_gateway_killed_mid_burst_then_restarted(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str
) -> None:
    first = gateway_factory()
    start = head_commit(rt_db)

    async def main() -> None:
        followers = [Follower(rt_db) for _ in range(3)]
        for f in followers:
            await f.connect(first)
        writing = burst(rt_db)
        await asyncio.sleep(0.4)
        first.kill()  # mid-burst
        for f in followers:
            f.apply()
        assert all(f.positions for f in followers), "nothing arrived before the kill"
        second = gateway_factory()  # a new process (another port): clients resume there
        for f in followers:
            await f.connect(second)
        writing.join()
        await caught_up(followers, rt_db)
        final_check(rt_db, followers, start)
        for f in followers:
            await f.close()

    asyncio.run(asyncio.wait_for(main(), 120))


@pytest.mark.exclusive
def test_postgres_restarted_and_listen_connection_dropped(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str, cluster: Cluster
) -> None:
    gateway = gateway_factory(retry=0.2, poll=1)
    start = head_commit(rt_db)

    async def main() -> None:
        follower = Follower(rt_db)
        await follower.connect(gateway)
        with psycopg.connect(rt_db, autocommit=True) as db:
            db.execute("INSERT INTO rt.notes (id) VALUES (1)")
            # the LISTEN connection dropped under the gateway
            db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name = 'pyfuncs-gateway-feed'")  # fmt: skip
            db.execute("INSERT INTO rt.notes (id) VALUES (2)")
        await caught_up([follower], rt_db)
        cluster.down()  # PostgreSQL restarted under it (fast shutdown, then start)
        await asyncio.sleep(0.5)
        assert httpx.get(gateway.url + "/health").status_code == 503
        cluster.up()
        with psycopg.connect(rt_db, autocommit=True) as db:
            for i in range(3, 20):
                db.execute("INSERT INTO rt.notes (id) VALUES (%s)", [i])
        await caught_up([follower], rt_db)
        assert httpx.get(gateway.url + "/health").status_code == 200
        final_check(rt_db, [follower], start)
        assert follower.ws is not None and follower.ws.closed is None  # same connection
        await follower.close()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_a_client_resumes_on_another_gateway_process(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str
) -> None:
    one, two = gateway_factory(), gateway_factory()
    start = head_commit(rt_db)

    async def main() -> None:
        follower = Follower(rt_db)
        await follower.connect(one)
        with psycopg.connect(rt_db, autocommit=True) as db:
            for i in range(10):
                db.execute("INSERT INTO rt.notes (id) VALUES (%s)", [i])
            await caught_up([follower], rt_db)
            await follower.close()
            for i in range(10, 20):  # while it is away
                db.execute("INSERT INTO rt.notes (id) VALUES (%s)", [i])
            await follower.connect(two)
            db.execute("UPDATE rt.notes SET n = 5 WHERE id < 15")
        await caught_up([follower], rt_db)
        final_check(rt_db, [follower], start)
        await follower.close()

    asyncio.run(asyncio.wait_for(main(), 120))
