"""A gateway's clients (one per WebSocket or SSE connection) and their subscriptions.

A message for a client goes straight to its socket when the connection can take it at once
(`write_now`, see server.py); otherwise it waits in the client's bounded outbox, which the
connection's sender drains. A client that lets the outbox fill up is disconnected with the
reason `slow_consumer` instead of being buffered for: the gateway's memory stays bounded,
and the client resumes from its last position on any gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..auth import Identity
from ..realtime import Position, Snapshot
from . import exact
from .tables import Filters, Key, Table

# claims that differ between two tokens of the same user: left out of the identity that
# delivery checks run as, so that a user's connections share one check
_TIME_CLAIMS = ("exp", "iat", "nbf", "jti")


def delivery_identity(identity: Identity) -> Identity:
    claims = {k: v for k, v in identity.claims.items() if k not in _TIME_CLAIMS}
    return Identity(identity.role, claims)


def identity_key(identity: Identity) -> str:
    return identity.role + "\0" + json.dumps(identity.claims, sort_keys=True)


def user_of(identity: Identity) -> str:
    """Who rate limits count against: the token's subject, else its role."""
    sub = identity.claims.get("sub")
    return f"sub:{sub}" if isinstance(sub, str) and sub else f"role:{identity.role}"


@dataclass(eq=False)
class Subscription:
    """One table subscription of a client. `position` is the last change the hub has dealt
    with for it (delivered or not visible to it); `seen` holds the keys of the rows it has
    been sent, so that it can be told when one leaves its view, and only then."""

    id: str
    client: Client
    table: Table
    filters: Filters
    position: Position
    live: bool = False  # caught up: the hub delivers to it
    seen: set[Key] = field(default_factory=set)
    # the snapshot it started from: changes of transactions it saw are not sent again
    taken: Snapshot | None = None

    def __post_init__(self) -> None:
        self.id_json = json.dumps(self.id)  # as it goes into each of its events


@dataclass(frozen=True)
class Outgoing:
    """A message for a client: its kind (the SSE event name), the position it carries (the
    SSE id) if any, and its JSON text."""

    kind: str
    position: str | None
    data: str
    snapshot_of: str | None = None  # a `subscribed` snapshot: its subscription's id


class Outbox(asyncio.Queue[Outgoing]):
    """A client's outbox: bounded in messages (the queue's maxsize) and counting the
    characters of those waiting (`size`), whoever takes them out; `drained` is set when
    it is down to half its messages (a catch-up waits for that)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.size = 0
        self.drained = asyncio.Event()

    def _put(self, item: Outgoing) -> None:
        super()._put(item)
        self.size += len(item.data)

    def _get(self) -> Outgoing:
        item: Outgoing = super()._get()
        self.size -= len(item.data)
        if self.qsize() <= self.maxsize // 2:
            self.drained.set()
        return item


class Client:
    def __init__(
        self, identity: Identity, outbox_size: int, transport: str, outbox_bytes: int = 2**62
    ) -> None:
        self.id = uuid.uuid4().hex
        self.transport = transport
        self._set_identity(identity)
        self.user = user_of(identity)
        self.outbox = Outbox(outbox_size)
        self.outbox_bytes = outbox_bytes  # the most characters the outbox may hold
        # writes messages now while the connection has room; says how many it wrote (the
        # rest must wait their turn)
        self.write_now: Callable[[list[str]], int] | None = None
        # a batch's events for this client, sent together when the hub has walked it
        self.held: list[str] = []
        self.held_positions: list[str | None] = []
        self.sending = False  # the sender holds a message it took from the outbox
        self.subscriptions: dict[str, Subscription] = {}
        self.suspended = False  # its token expired; a refreshed one resumes it
        self.refreshed = asyncio.Event()  # set when a new token arrives
        self.closing = asyncio.Event()
        self._waiter: asyncio.Future[None] | None = None  # see `arrival`
        self.sent_at = time.monotonic()  # when a message was last sent (heartbeats)
        self.reason: tuple[str, str] | None = None  # (code, message) once closing
        self.abort: Callable[[], None] | None = None  # ends an SSE stream that is stuck

    def _set_identity(self, identity: Identity) -> None:
        self.identity = identity
        self.check_identity = delivery_identity(identity)  # what delivery checks run as
        self.identity_key = identity_key(self.check_identity)  # the checks it shares

    def reauthenticate(self, identity: Identity) -> None:
        self._set_identity(identity)
        self.suspended = False
        self.refreshed.set()

    def send(self, kind: str, message: dict[str, Any], position: str | None = None) -> None:
        # exact.dumps: a resume's `gone` keys may hold numbers kept exact (Decimals)
        self.push_raw(kind, position, exact.dumps(message))

    def push_raw(
        self, kind: str, position: str | None, data: str, snapshot_of: str | None = None
    ) -> None:
        """Queue a message whose JSON is already made (rows arrive as PostgreSQL's JSON)."""
        if self.held:
            self.release()  # what the hub holds came first
        if self.reason is not None:
            return
        self.sent_at = time.monotonic()
        # straight to the socket only if nothing is waiting before it: order is kept
        if self.write_now and not self.sending and self.outbox.empty() and self.write_now([data]):
            return
        self._queue(kind, position, data, snapshot_of)

    def hold(self, position: str | None, data: str) -> None:
        """A change event, sent with the others of its batch by `release` (the hub's walk of
        a batch does not await: nothing can come between)."""
        self.held.append(data)
        self.held_positions.append(position)

    def release(self) -> None:
        """Send the held events: written together when the connection has room and nothing
        waits before them, else (what did not fit) queued one by one."""
        held, positions = self.held, self.held_positions
        self.held, self.held_positions = [], []
        if self.reason is not None or not held:
            return
        self.sent_at = time.monotonic()
        done = 0
        if self.write_now and not self.sending and self.outbox.empty():
            done = self.write_now(held)
        for i in range(done, len(held)):
            if not self._queue("change", positions[i], held[i]):
                return

    def arrival(self) -> asyncio.Future[None]:
        """Done when a message is queued or the client is closing (for a reader of the
        outbox that has more than it to wait for: a future, not a task per message)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _queue(
        self, kind: str, position: str | None, data: str, snapshot_of: str | None = None
    ) -> bool:
        if self.outbox.size + len(data) > self.outbox_bytes:
            self.close(
                "slow_consumer",
                f"more than {self.outbox_bytes} bytes were waiting for this client; "
                "reconnect and resume from your last position",
            )
            return False
        try:
            self.outbox.put_nowait(Outgoing(kind, position, data, snapshot_of))
            if self._waiter is not None:
                self._wake()
            return True
        except asyncio.QueueFull:
            self.close(
                "slow_consumer",
                f"more than {self.outbox.maxsize} messages were waiting for this client; "
                "reconnect and resume from your last position",
            )
            return False

    def drop_snapshot(self, sub_id: str) -> None:
        """Free the snapshot of subscription `sub_id` if it still waits in the outbox (it
        was unsubscribed before the client read it): a client that does not read must not
        hold snapshots by subscribing and unsubscribing."""
        waiting = [self.outbox.get_nowait() for _ in range(self.outbox.qsize())]
        for message in waiting:
            if message.snapshot_of != sub_id:
                self.outbox.put_nowait(message)

    def close(self, code: str, message: str) -> None:
        if self.reason is None:
            self.reason = (code, message)
            self.closing.set()
            self.outbox.drained.set()  # a catch-up waiting for room: it is over
            self._wake()
