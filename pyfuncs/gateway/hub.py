"""The hub: follows the change feed and delivers each change to the subscriptions allowed
to see it.

One feed reader per gateway process reads committed changes in position order (see
pyfuncs/realtime.py). For each batch it asks PostgreSQL, once per distinct (table,
subscriber identity), which of the changed rows that identity sees now and which of its
subscriptions' filters they match (tables.visible_query); then it walks the batch in order and
sends events (each message made once and shared by the subscriptions that get it; see
clients.py for where it goes). So the cost grows with distinct identities, not connections, and delivery is
in commit order for every subscription.

A new subscription starts from a snapshot (or from the position it resumes from) and
catches up on its own, reading the feed itself, until it has reached what the hub has
read; from then on the hub delivers to it. Positions make the hand-over exact: a change is
delivered to a subscription only if it is after the subscription's position.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from ..errors import ResyncRequired, SubscriptionError
from ..queries import query
from ..realtime import Change, Position, listen, read, wake_up
from .clients import Client, Subscription
from .config import GatewayConfig
from .positions import PositionTokens
from .tables import (
    Filter,
    Filters,
    Key,
    Table,
    Visible,
    as_identity,
    check,
    describe,
    removed_keys,
    removed_later_query,
    snapshot,
    visible_query,
    visible_rows,
)

log = logging.getLogger("pyfuncs.gateway")
END = 2**63 - 1  # the change number after every change of a commit


@dataclass(eq=False)
class _Group:
    """The subscriptions of one identity on one table in a batch: one visibility query."""

    table: Table
    client: Client
    filter_sets: list[Filters] = field(default_factory=list)
    keys: set[Key] = field(default_factory=set)

    def index(self, filters: Filters) -> int:
        if filters not in self.filter_sets:
            self.filter_sets.append(filters)
        return self.filter_sets.index(filters)


_Visible = tuple[Visible, set[Key]]
_NOTHING: _Visible = ({}, set())  # what a group whose check was not needed sees (never changed)


def _removed_later_in_batch(changes: Sequence[Change], tables: dict[str, Table]) -> list[bool]:
    """For each change, whether a later change of the batch removes (deletes, re-keys or
    truncates) the row it wrote."""
    removed: dict[str, set[Key]] = defaultdict(set)
    truncated: set[str] = set()
    later = [False] * len(changes)
    for i in range(len(changes) - 1, -1, -1):
        change, name = changes[i], f"{changes[i].schema}.{changes[i].table}"
        table = tables.get(name)
        if table is None:
            continue
        if change.new is not None:
            later[i] = name in truncated or table.key_of(change.new) in removed[name]
        if change.op == "TRUNCATE":
            truncated.add(name)
        elif change.old is not None and (
            change.new is None or table.key_of(change.new) != table.key_of(change.old)
        ):
            removed[name].add(table.key_of(change.old))
    return later


@dataclass
class Metrics:
    delivered: int = 0
    changes: int = 0
    slow_consumers: int = 0
    checks: int = 0  # visibility queries: one per (table, identity) per batch
    auth_failures: int = 0
    lag: float = 0.0  # seconds from the commit of the last batch's newest change to its sending
    disconnected_at: float | None = None  # when the feed connection was lost


class Hub:
    def __init__(self, config: GatewayConfig, pool: AsyncConnectionPool[Any]) -> None:
        self.config = config
        self.pool = pool
        self.metrics = Metrics()
        self.tokens: PositionTokens  # what subscribers see of positions (set by start())
        self.position = Position()  # every live subscription has had everything up to here
        self.through = Position()  # the end of the batch being delivered (or the position)
        self.connected = False
        self._by_table: dict[str, set[Subscription]] = defaultdict(set)
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the feed ------------------------------------------------------------------------

    async def start(self) -> None:
        async with self.pool.connection() as conn:
            key = await (await conn.execute(query("realtime_position_key"))).fetchone()
            row = await (await conn.execute(query("realtime_head"))).fetchone()
        assert key is not None
        self.tokens = PositionTokens(key[0])
        self.position = self.through = Position(row[0] if row else 0, END)

    async def run(self) -> None:
        """Follow the feed forever, reconnecting when the server goes away."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.config.dsn, autocommit=True, application_name="pyfuncs-gateway-feed"
                ) as conn:
                    await listen(conn)
                    self.connected, self.metrics.disconnected_at = True, None
                    await self._follow(conn)
            except psycopg.OperationalError as exc:
                log.warning("change feed connection lost (%s); reconnecting", exc)
            except ResyncRequired as exc:
                # the gateway itself was away longer than the retention: its clients may
                # have missed pruned changes, so they must resync too
                log.error("%s", exc)
                for sub in self._subscriptions():
                    sub.client.close("resync_required", str(exc))
                await self.start()
            finally:
                if self.connected:
                    self.connected, self.metrics.disconnected_at = False, time.monotonic()
            await asyncio.sleep(self.config.retry)

    async def _follow(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            changes = await read(conn, self.position, self.config.batch)
            if changes:
                self.through = changes[-1].position
                live = [s for s in self._subscriptions() if s.live and not s.client.suspended]
                await self._deliver(changes, live)
                self.position = self.through
                self.metrics.changes += len(changes)
                now = datetime.datetime.now(datetime.UTC)
                self.metrics.lag = (now - changes[-1].committed_at).total_seconds()
            if len(changes) < self.config.batch:
                await wake_up(conn, self.config.poll)

    async def prune_forever(self) -> None:
        """Prune the change feed to its retention now and then (several gateways may: it
        is idempotent)."""
        while True:
            await asyncio.sleep(self.config.prune_every)
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(query("realtime_prune"), {"keep": None})
            except psycopg.Error as exc:
                log.warning("pruning the change feed failed: %s", exc)

    def lag_seconds(self) -> float:
        """Delivery lag: of the last batch, or the time since the feed connection was lost."""
        if self.metrics.disconnected_at is not None:
            return time.monotonic() - self.metrics.disconnected_at
        return self.metrics.lag

    # --- subscriptions -------------------------------------------------------------------

    def _subscriptions(self) -> list[Subscription]:
        return [s for subs in self._by_table.values() for s in subs]

    def subscription_count(self) -> int:
        return sum(len(s) for s in self._by_table.values())

    async def subscribe(self, client: Client, message: dict[str, Any]) -> Subscription:
        """Check and register a subscription, send its snapshot (or confirm its resume),
        and start its catch-up. SubscriptionError says what is wrong; nothing is
        registered then."""
        sub_id = message.get("id")
        if not isinstance(sub_id, str) or not 0 < len(sub_id) <= 64:
            raise SubscriptionError("bad_request", "give the subscription an `id` (1-64 chars)")
        if sub_id in client.subscriptions:
            raise SubscriptionError("duplicate", f"subscription {sub_id!r} already exists")
        raw_filters = message.get("filters") or []
        if not isinstance(raw_filters, list):
            raise SubscriptionError("bad_filter", "`filters` is a list of {column, op, value}")
        filters = tuple(Filter.parse(f) for f in raw_filters)
        since = None
        if message.get("since") is not None:
            since = self.tokens.position(message["since"])
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            head = await (await conn.execute(query("realtime_head"))).fetchone()
            await as_identity(conn, client.check_identity)
            table = await describe(conn, message.get("table"))
            columns = await check(conn, table, filters)
            rows = await snapshot(conn, table, columns, filters, self.config.max_snapshot_rows)
        start = since if since is not None else Position(head[0] if head else 0, END)
        sub = Subscription(sub_id, client, table, filters, start, seen={k for k, _ in rows})
        token = self.tokens.token(start)
        reply = {"type": "subscribed", "sub": sub_id, "table": table.qualified,
                 "key": table.key, "position": token}  # fmt: skip
        if since is None:
            data = json.dumps(reply, separators=(",", ":"))[:-1]
            rows_json = ",".join(row for _, row in rows)
            client.push_raw("subscribed", token, f'{data},"rows":[{rows_json}]}}')
        else:
            client.send("subscribed", {**reply, "resumed": True}, token)
        client.subscriptions[sub_id] = sub
        self._by_table[table.qualified].add(sub)
        self.catch_up(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.client.subscriptions.pop(sub.id, None)
        self._by_table[sub.table.qualified].discard(sub)

    def drop(self, client: Client) -> None:
        for sub in list(client.subscriptions.values()):
            self.unsubscribe(sub)

    def catch_up(self, sub: Subscription) -> None:
        sub.live = False
        task = asyncio.create_task(self._catch_up(sub))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _catch_up(self, sub: Subscription) -> None:
        while (
            not sub.live
            and sub.client.subscriptions.get(sub.id) is sub
            and sub.client.reason is None
        ):
            if sub.position >= self.through:
                sub.live = True  # no await since the check: the hub's next batch includes it
                return
            # catching up is paced by the client: read only what its outbox has room for
            # (a change may make two events), so a resuming slow reader is not cut off again
            outbox = sub.client.outbox
            room = outbox.maxsize - outbox.qsize()
            if room < min(outbox.maxsize, max(2, outbox.maxsize // 2)):
                await asyncio.sleep(0.01)
                continue
            limit = max(1, min(self.config.batch, room // 2))
            try:
                async with self.pool.connection() as conn:
                    changes = await read(conn, sub.position, limit)
                    if not changes:
                        sub.live = True
                        return
                    await self._deliver(changes, [sub], conn)
            except ResyncRequired as exc:
                sub.client.send("error", {"type": "error", "sub": sub.id,
                                          "code": "resync_required", "message": str(exc)})  # fmt: skip
                self.unsubscribe(sub)
            except psycopg.OperationalError as exc:
                log.warning("catching up %s failed (%s); retrying", sub.id, exc)
                await asyncio.sleep(self.config.retry)

    # --- delivery ------------------------------------------------------------------------

    async def _deliver(
        self, changes: Sequence[Change], subs: Sequence[Subscription],
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> None:  # fmt: skip
        """Send the events of `changes` to `subs`. Asks every visibility question first,
        then sends without awaiting: a failure sends nothing and moves no position."""
        by_table: dict[str, list[Subscription]] = defaultdict(list)
        for sub in subs:
            by_table[sub.table.qualified].append(sub)
        # each change's (old key, new key), and each table's keys of the rows written
        keys: list[tuple[Key | None, Key | None]] = []
        changed: dict[str, set[Key]] = defaultdict(set)
        for change in changes:
            name = f"{change.schema}.{change.table}"
            table = by_table[name][0].table if name in by_table else None
            old = None if table is None or change.old is None else table.key_of(change.old)
            new = None if table is None or change.new is None else table.key_of(change.new)
            keys.append((old, new))
            if new is not None:
                changed[name].add(new)
        groups: dict[tuple[str, str], _Group] = {}
        slot: dict[Subscription, tuple[_Group, int]] = {}
        for sub in subs:
            name = sub.table.qualified
            group = groups.get((name, sub.client.identity_key))
            if group is None:
                group = groups[name, sub.client.identity_key] = _Group(sub.table, sub.client)
                group.keys = changed[name]
            slot[sub] = (group, group.index(sub.filters))
        wanted = [g for g in groups.values() if g.keys]
        self.metrics.checks += len(wanted)
        after = changes[-1].position.commit
        answer: dict[_Group, _Visible] = {}
        if conn is not None:  # a catch-up, on its own connection
            answer = await self._visibility(conn, wanted, after)
        elif wanted:
            async with self.pool.connection() as conn:
                answer = await self._visibility(conn, wanted, after)
        later = _removed_later_in_batch(changes, {s.table.qualified: s.table for s in subs})
        # subscriptions that caught up past the batch's start skip what they have had
        ahead = {s for s in subs if s.position >= changes[0].position}
        for i, change in enumerate(changes):
            messages = _Messages(change, self.tokens.token(change.position))
            for sub in by_table.get(f"{change.schema}.{change.table}", ()):
                if sub in ahead and change.position <= sub.position:
                    continue
                group, index = slot[sub]
                rows, removed = answer.get(group, _NOTHING)
                self._event(sub, messages, keys[i], rows, index, None if later[i] else removed)
        last = changes[-1].position
        for sub in subs:
            sub.position = max(sub.position, last)

    async def _visibility(
        self, conn: psycopg.AsyncConnection[Any], groups: Sequence[_Group], after: int
    ) -> dict[_Group, _Visible]:
        """For every group, in one snapshot: the rows its identity sees now, and which of
        them a later commit removes. One transaction, pipelined: two round trips whatever the
        number of groups (the column privileges of each role, then every group's rows)."""
        if not groups:
            return {}
        tables = {g.table.qualified: g for g in groups}  # the groups of a table share keys
        roles = {(g.client.check_identity.role, g.table.qualified): g for g in groups}
        try:
            async with conn.pipeline(), conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                removing = {name: await conn.execute(*removed_later_query(g.table, after, g.keys))
                            for name, g in tables.items()}  # fmt: skip
                reading = {}
                for key, g in roles.items():
                    await as_identity(conn, g.client.check_identity)
                    reading[key] = await conn.execute(
                        query("realtime_readable_columns"), {"relid": g.table.relid}
                    )
                columns = {key: list((await cur.fetchall())[0][0]) for key, cur in reading.items()}
                selecting = {}
                for g in groups:
                    readable = columns[g.client.check_identity.role, g.table.qualified]
                    if all(c in readable for c in g.table.key):  # else it sees nothing
                        await as_identity(conn, g.client.check_identity)
                        selecting[g] = await conn.execute(
                            *visible_query(g.table, readable, g.keys, g.filter_sets)
                        )
                rows = {g: visible_rows(await cur.fetchall()) for g, cur in selecting.items()}
                removed = {
                    name: removed_keys(tables[name].table, tables[name].keys, await cur.fetchall())
                    for name, cur in removing.items()
                }
        except psycopg.OperationalError:
            raise  # the server went away: deliver nothing, retry the batch
        except psycopg.Error as exc:
            if len(groups) == 1:  # its role lost a privilege, or is gone: it sees nothing
                log.info("visibility check for %s failed: %s", groups[0].client.identity.role, exc)
                return {groups[0]: ({}, set())}
            # check each group on its own, so that only the failing one sees nothing
            log.info("batched visibility check failed (%s); checking one by one", exc)
            return {g: (await self._visibility(conn, [g], after))[g] for g in groups}
        return {g: (rows.get(g, {}), removed[g.table.qualified]) for g in groups}

    def _event(
        self, sub: Subscription, messages: _Messages, keys: tuple[Key | None, Key | None],
        rows: Visible, index: int, removed: set[Key] | None,
    ) -> None:  # fmt: skip
        """Send what a change (whose old and new keys are `keys`) means for `sub`.
        `removed`: keys a later commit removes (None: a later change of this batch removes
        this change's row)."""
        if messages.change.op == "TRUNCATE":
            sub.seen.clear()
            self._emit(sub, messages, None, None)
            return
        old_key, key = keys
        if old_key is not None and key != old_key and old_key in sub.seen:
            sub.seen.discard(old_key)  # deleted, or its key changed
            self._emit(sub, messages, old_key, None)
        if key is None:
            return
        found = rows.get(key)
        if found is not None and found[1][index]:
            sub.seen.add(key)
            self._emit(sub, messages, key, found[0])
        elif key in sub.seen and (found is not None or not (removed is None or key in removed)):
            # it left this subscription's view (a row that is gone because a later change
            # removes it is reported by that change, as a DELETE)
            sub.seen.discard(key)
            self._emit(sub, messages, key, None)

    def _emit(
        self, sub: Subscription, messages: _Messages, key: Key | None, row: str | None
    ) -> None:
        sub.client.push_raw("change", messages.position, messages.text(sub, key, row))
        self.metrics.delivered += 1


class _Messages:
    """The event messages of one change: the JSON of each content (key and row) is made
    once, and so is each message (content and subscription id), which many subscriptions
    then share (and the WebSocket protocol frames once, see server.py)."""

    def __init__(self, change: Change, position: str) -> None:
        self.change = change
        self.position = position  # the token subscribers get
        self._bodies: dict[tuple[Key | None, str | None], str] = {}
        self._texts: dict[tuple[str, Key | None, str | None], str] = {}

    def text(self, sub: Subscription, key: Key | None, row: str | None) -> str:
        text = self._texts.get((sub.id_json, key, row))
        if text is None:
            body = self._bodies.get((key, row))
            if body is None:
                change = self.change
                head = json.dumps(
                    {"position": self.position, "table": sub.table.qualified, "op": change.op,
                     "committed_at": change.committed_at.isoformat(),
                     "key": None if key is None else dict(zip(sub.table.key, key, strict=True))},
                    separators=(",", ":"), default=str,
                )  # fmt: skip
                body = self._bodies[key, row] = f'{head[1:-1]},"row":{row or "null"}}}'
            text = self._texts[sub.id_json, key, row] = (
                f'{{"type":"change","sub":{sub.id_json},{body}'
            )
        return text
