"""Fixtures for the realtime gateway: a real `pyfuncs serve` process on a free port, tokens,
and WebSocket/SSE clients that record what they receive."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import websockets

from pyfuncs import realtime
from pyfuncs.gateway import exact as exact_json
from pyfuncs.gateway.positions import PositionTokens
from tests.walcapture import catch_up

SECRET = "gateway-test-secret-0123456789-0123456789"
ROLES = "student,manager,rt_nobody,rt_doomed,rt_no_such_role"  # what tokens may name (PYFUNCS_JWT_ROLES)
STUDENTS = ("11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222")

SCHEMA = """
CREATE SCHEMA rt;
CREATE TABLE rt.notes (id int PRIMARY KEY, owner uuid, body text, secret text, n int DEFAULT 0);
ALTER TABLE rt.notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON rt.notes FOR SELECT TO student USING (owner = pyfuncs.current_user_id());
CREATE POLICY all_notes ON rt.notes FOR SELECT TO manager USING (true);
GRANT USAGE ON SCHEMA rt TO student, manager;
GRANT SELECT (id, owner, body, n) ON rt.notes TO student;
GRANT SELECT ON rt.notes TO manager;
"""


def token(role: str = "manager", sub: str | None = None, ttl: float = 3600, **claims: Any) -> str:
    payload = {"role": role, "exp": int(time.time() + ttl), **claims}
    if sub is not None:
        payload["sub"] = sub
    return jwt.encode(payload, SECRET, algorithm="HS256")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GatewayProcess:
    dsn: str
    env: dict[str, str]
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None
    plain_uvicorn: bool = False  # run the app under uvicorn's own CLI, not `pyfuncs serve`
    args: tuple[str, ...] = ()  # more command-line arguments
    log: Path | None = None  # where its output goes (default: the test's own)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/realtime"

    def start(self) -> GatewayProcess:
        env = {**os.environ, "PYFUNCS_JWT_SECRET": SECRET, "PYFUNCS_JWT_ROLES": ROLES,
               "PYFUNCS_DSN": self.dsn, **self.env}  # fmt: skip
        command = (["uvicorn", "pyfuncs.gateway.app:create_app", "--factory"] if self.plain_uvicorn
                   else ["pyfuncs.cli", "--dsn", self.dsn, "serve"])  # fmt: skip
        with contextlib.ExitStack() as files:  # the child keeps its own descriptor
            output = files.enter_context(self.log.open("ab")) if self.log else None
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *command, "--port", str(self.port),
                 "--log-level", "warning", *self.args], env=env, stdout=output, stderr=output,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the gateway exited at start"
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the gateway did not become healthy")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    async def has_read(self, changes: int) -> None:
        """Wait until the gateway's feed has read `changes` changes in all."""
        while self.metrics().get("pyfuncs_gateway_changes_total", 0) < changes:
            await asyncio.sleep(0.05)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=5).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values


def head_commit(dsn: str) -> int:
    """The position of the last commit in the change feed (0 if none), once everything
    committed so far has its position."""
    catch_up(dsn)
    with psycopg.connect(dsn) as db:
        row = db.execute("SELECT coalesce(max(position), 0) FROM pyfuncs.realtime_commit")
        return int(row.fetchone()[0])  # type: ignore[index]


@functools.cache
def _tokens(dsn: str) -> PositionTokens:
    with psycopg.connect(dsn) as db:
        row = db.execute("SELECT position_key FROM pyfuncs.realtime_state").fetchone()
    assert row is not None
    return PositionTokens(row[0])


def decode(dsn: str, token: str) -> tuple[int, int]:
    """The (commit, change) behind a position token the gateway gave (the test can read the
    key; subscribers cannot)."""
    position = _tokens(dsn).position(token)
    return position.commit, position.change


def feed(dsn: str, since: int) -> list[tuple[int, int]]:
    """The positions of every change committed after commit `since`, in feed order."""
    catch_up(dsn)
    with psycopg.connect(dsn) as db:
        return [
            tuple(r) for r in db.execute(
                "SELECT c.position, ch.id FROM pyfuncs.realtime_commit c "
                "JOIN pyfuncs.realtime_change ch USING (txid) WHERE c.position > %s "
                "ORDER BY 1, 2", [since],
            )
        ]  # fmt: skip


def feed_but_superseded(
    dsn: str, since: int, applied: list[tuple[int, int]]
) -> list[tuple[int, int]]:  # fmt: skip
    """What a subscriber of rt.notes since commit `since` that applied `applied` must have
    applied: every change once, in feed order, except that a change it did not apply may be
    a write of a key that a later change writes or removes (a resume sends each key's
    latest change only: README "Resuming")."""
    catch_up(dsn)
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT c.position, ch.id, ch.new_row->'id', ch.old_row->'id' "
            "FROM pyfuncs.realtime_commit c JOIN pyfuncs.realtime_change ch USING (txid) "
            "WHERE c.position > %s ORDER BY 1, 2", [since],
        ).fetchall()  # fmt: skip
    got, later, expected = set(applied), set(), []
    for commit, change, new, old in reversed(rows):
        if (commit, change) in got or new is None or new not in later:
            expected.append((commit, change))
        later.update(k for k in (new, old) if k is not None)
    return expected[::-1]


def notes(dsn: str) -> dict[int, dict[str, Any]]:
    """rt.notes as the superuser sees it: id -> the row as JSON."""
    with psycopg.connect(dsn) as db:
        return {r[0]: r[1] for r in db.execute("SELECT id, to_jsonb(t) FROM rt.notes t")}


def burst(dsn: str, writers: int = 4, each: int = 60) -> threading.Thread:
    """Concurrent writers inserting and updating rows, in the background."""

    def writer(w: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as db:
            for i in range(each):
                row = w * 1000 + i
                db.execute("INSERT INTO rt.notes (id, n) VALUES (%s, 0)", [row])
                db.execute("UPDATE rt.notes SET n = n + 1 WHERE id = %s", [w * 1000 + i // 2])
                time.sleep(0.003)

    def all_writers() -> None:
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    thread = threading.Thread(target=all_writers)
    thread.start()
    return thread


@pytest.fixture
def rt_db(dsn: str, conn: psycopg.Connection[Any]) -> str:
    conn.execute(SCHEMA)
    realtime.enable(conn, "rt.notes")
    return dsn


@pytest.fixture
def gateway_factory(rt_db: str) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(
        plain_uvicorn: bool = False, args: tuple[str, ...] = (), log: Path | None = None,
        **settings: Any,
    ) -> GatewayProcess:  # fmt: skip
        env = {f"PYFUNCS_GATEWAY_{k.upper()}": str(v) for k, v in settings.items()}
        process = GatewayProcess(rt_db, env, plain_uvicorn=plain_uvicorn, args=args, log=log)
        started.append(process.start())
        return started[-1]

    yield start
    for g in started:
        g.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayProcess]) -> GatewayProcess:
    return gateway_factory(heartbeat=1)


class WsClient:
    """A WebSocket client that records every message it receives."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        # how messages are parsed: `exact` keeps numbers with a fraction exact (Decimal)
        self.loads: Callable[[str], Any] = json.loads
        self._task = asyncio.create_task(self._read())
        self.closed: Any = None

    @classmethod
    async def connect(
        cls, url: str, tok: str | None, header: bool = False, receive_buffer: int | None = None,
        exact: bool = False,
    ) -> WsClient:  # fmt: skip
        """`receive_buffer`: a small socket buffer (bytes), for a client that stops reading
        to be noticed soon; `exact`: numbers are parsed as the gateway parses keys
        (pyfuncs/gateway/exact.py: with a fraction, or too long for an int, as Decimals)."""
        headers = {"Authorization": f"Bearer {tok}"} if header and tok else None
        sock = None
        if receive_buffer is not None:
            where = urllib.parse.urlsplit(url)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.connect((where.hostname, where.port))
        ws = await websockets.connect(url, additional_headers=headers, sock=sock)
        client = cls(ws)
        if exact:
            client.loads = exact_json.loads
        if tok is not None and not header:
            await client.send(type="auth", token=tok)
        return client

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.messages.append(self.loads(raw))
        except websockets.ConnectionClosed:
            pass
        self.closed = self.ws.close_code, self.ws.close_reason

    async def pause(self) -> None:
        """Stop reading (what arrives waits in the socket's buffers)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def resume(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def send(self, **message: Any) -> None:
        await self.ws.send(exact_json.dumps(message, (", ", ": ")))

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10, start: int = 0
    ) -> dict[str, Any]:
        """The first message from index `start` on that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages[start:]:
                if predicate(m):
                    return m
            if self.closed is not None:
                raise AssertionError(f"closed {self.closed} before: {self.messages[-5:]}")
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out; last messages: {self.messages[-5:]}")

    async def subscribe(self, sub: str, table: str = "rt.notes", **extra: Any) -> dict[str, Any]:
        start = len(self.messages)
        await self.send(type="subscribe", id=sub, table=table, **extra)
        return await self.wait_for(
            lambda m: m.get("sub") == sub and m["type"] in ("subscribed", "error"), start=start
        )

    def changes(self, sub: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages
                if m["type"] == "change" and (sub is None or m["sub"] == sub)]  # fmt: skip

    async def close(self) -> None:
        await self.ws.close()
        await self._task
