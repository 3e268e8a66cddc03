"""Delivering a batch of changes: which rows each subscriber identity sees (asked on a check
session, see sessions.py) and which a later commit removes (read from the change log on a
feed session), and the event messages (made once, shared by every subscription that gets
them). The hub (hub.py) walks the batch."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..errors import SubscriptionError
from ..queries import query
from ..realtime import Change
from . import exact
from .clients import Client, Subscription
from .sessions import Sessions
from .tables import (
    Filters,
    Key,
    Table,
    Visible,
    as_identity,
    changed_later_query,
    removed_keys,
    removed_later_query,
    visible_query,
    visible_rows,
)

log = logging.getLogger("pyfuncs.gateway")


@dataclass(eq=False)
class Group:
    """The subscriptions of one identity on one table in a batch: one visibility query."""

    table: Table
    client: Client
    filter_sets: list[Filters] = field(default_factory=list)
    keys: set[Key] = field(default_factory=set)

    def index(self, filters: Filters) -> int:
        if filters not in self.filter_sets:
            self.filter_sets.append(filters)
        return self.filter_sets.index(filters)


Answer = tuple[Visible, set[Key]]
NOTHING: Answer = ({}, set())  # what a group whose check was not needed sees (never changed)


def removed_later_in_batch(
    changes: Sequence[Change], table: Table, *, or_written: bool = False
) -> list[bool]:
    """For each change of `table`, whether a later change of the batch removes (deletes,
    re-keys or truncates) the row it wrote; `or_written`: or writes its key again."""
    removed: set[Key] = set()
    truncated = False
    later = [False] * len(changes)
    for i in range(len(changes) - 1, -1, -1):
        change = changes[i]
        if (change.schema, change.table) != (table.schema, table.name):
            continue
        new = None if change.new is None else table.key_of(change.new)
        if change.new is not None:
            later[i] = truncated or (new is not None and new in removed)
            if or_written and new is not None:
                removed.add(new)
        if change.op == "TRUNCATE":
            truncated = True
        elif change.old is not None:
            old = table.key_of(change.old)
            if old is not None and (change.new is None or new != old):
                removed.add(old)
    return later


# how many changes of the log (of any table, in as many commits) after a catch-up's page
# are asked whether they write a key of the page again (latest_of_keys): the page's cost,
# whatever the length of the catch-up and the size of the commits after it
LOOKAHEAD = 10_000


async def latest_of_keys(
    conn: psycopg.AsyncConnection[Any], changes: Sequence[Change], table: Table
) -> list[Change]:
    """What a catch-up sends of a page of `changes`: those of `table`, one per key, its
    latest. Each change is checked against what the subscriber sees now, so every write of
    a row it sees now would be sent, those made while it could not see the row too (another
    user's row, edited, then given to it): when and how often it was written. A write of a
    key that a later change writes or removes (later in the page, or among the next
    LOOKAHEAD changes of the change log, in as many commits, asked on `conn`, a feed
    session) is skipped:
    that change is delivered in its place, by this catch-up or live, and the skip holds for
    a catch-up cut short and resumed too (it comes after any position this one gave). A
    re-key so skipped is kept as the removal of its old key, which a client holding that
    row must be told of."""
    mine = [c for c in changes if (c.schema, c.table) == (table.schema, table.name)]
    later = removed_later_in_batch(mine, table, or_written=True)
    written = {i: key for i, change in enumerate(mine)
               if change.new is not None and not later[i]
               and (key := table.key_of(change.new)) is not None}  # fmt: skip
    if written:
        end = mine[-1].position
        keys = list(written.values())
        asked = changed_later_query(table, end.commit, end.change, keys, LOOKAHEAD)
        cur = await conn.execute(*asked)
        changed = {keys[i - 1] for (i,) in await cur.fetchall()}
        for i, key in written.items():
            later[i] = key in changed
    kept = []
    for change, overwritten in zip(mine, later, strict=True):
        if not overwritten:
            kept.append(change)
            continue
        old = None if change.old is None else table.key_of(change.old)
        new = None if change.new is None else table.key_of(change.new)
        if old is not None and old != new:
            kept.append(dataclasses.replace(change, new=None))  # a re-key: its removal only
    return kept


async def visibility(
    sessions: Sessions, groups: Sequence[Group], after: int,
    feed: psycopg.AsyncConnection[Any] | None = None,
) -> dict[Group, Answer]:  # fmt: skip
    """For every group: the rows its identity sees now (asked as that identity, on a check
    session), and which of them a commit after position `after` removes (read from the
    change log in the gateway's own role, on `feed` or a pooled feed session). Both are asked
    at once: they need not agree. A row the check finds gone, removed by a commit the log
    does not show yet (not yet captured, or after the log was read), is reported as having
    left the view, and that commit's DELETE then finds nothing to report; either way the
    client ends with the rows that exist. Pipelined: two round trips on the check session
    whatever the number of groups (the column privileges of each role, then every group's
    rows), and one on the feed session."""
    if not groups:
        return {}
    tables = {g.table: g for g in groups}  # the groups of a table share keys
    removing = asyncio.create_task(_removed(sessions, tables, after, feed))
    try:
        rows = await _visible(sessions, groups)
    except BaseException:
        removing.cancel()
        await asyncio.gather(removing, return_exceptions=True)
        raise
    removed = await removing
    return {g: (rows.get(g, {}), removed[g.table]) for g in groups}


async def _removed(
    sessions: Sessions, tables: dict[Table, Group], after: int,
    feed: psycopg.AsyncConnection[Any] | None,
) -> dict[Table, set[Key]]:  # fmt: skip
    """Of each table's keys (its groups'), those a commit after position `after` removes."""
    async with contextlib.AsyncExitStack() as stack:
        conn: psycopg.AsyncConnection[Any] = (
            feed
            if feed is not None
            else await stack.enter_async_context(sessions.feed.connection())
        )
        await stack.enter_async_context(conn.pipeline())
        removing = {table: await conn.execute(*removed_later_query(table, after, g.keys))
                    for table, g in tables.items()}  # fmt: skip
        return {
            table: removed_keys(table, tables[table].keys, await cur.fetchall())
            for table, cur in removing.items()
        }


async def _visible(sessions: Sessions, groups: Sequence[Group]) -> dict[Group, Visible]:
    """The rows each group's identity sees now; a group whose check fails (its role lost a
    privilege, or its table's policy raised) sees nothing."""
    roles = {(g.client.check_identity.role, g.table): g for g in groups}
    try:
        async with sessions.as_subscribers(pipeline=True) as conn:
            reading = {}
            for key, g in roles.items():
                await as_identity(conn, g.client.check_identity)
                reading[key] = await conn.execute(
                    query("realtime_readable_columns"), {"relid": g.table.relid}
                )
            columns = {key: list((await cur.fetchall())[0][0]) for key, cur in reading.items()}
            selecting = {}
            for g in groups:
                readable = columns[g.client.check_identity.role, g.table]
                if all(c in readable for c in g.table.key):  # else it sees nothing
                    await as_identity(conn, g.client.check_identity)
                    selecting[g] = await conn.execute(
                        *visible_query(g.table, readable, g.keys, g.filter_sets)
                    )
            return {g: visible_rows(await cur.fetchall()) for g, cur in selecting.items()}
    except (psycopg.Error, SubscriptionError) as exc:
        # the server went away: deliver nothing, retry the batch. But PostgreSQL's class 28
        # (a role refused: dropped, or made powerful, since it subscribed), which psycopg
        # counts as operational too, is about one identity: it must not stop the feed
        if isinstance(exc, psycopg.OperationalError) and not isinstance(
            exc, psycopg.errors.InvalidAuthorizationSpecification
        ):
            raise
        if len(groups) == 1:
            log.info("visibility check of %s for %s failed: %s", groups[0].table.qualified,
                     groups[0].client.identity.role, type(exc).__name__)  # fmt: skip
            return {}
        # check each group on its own, so that only the failing one sees nothing
        log.info("batched visibility check failed (%s); checking one by one",
                 type(exc).__name__)  # fmt: skip
        answer: dict[Group, Visible] = {}
        for g in groups:
            answer.update(await _visible(sessions, [g]))
        return answer


class Messages:
    """The event messages of one change: the JSON of each content (key and row) is made
    once, and so is each message (content and subscription id), which many subscriptions
    then share (and the WebSocket protocol frames once, see server.py)."""

    def __init__(self, change: Change, position: str) -> None:
        self.change = change
        self.position = position  # the token subscribers get
        # by the key's column names too: subscriptions may know a table before and after
        # its key was renamed
        self._bodies: dict[tuple[tuple[str, ...], Key | None, str | None], str] = {}
        self._texts: dict[tuple[str, tuple[str, ...], Key | None, str | None], str] = {}

    def text(self, sub: Subscription, key: Key | None, row: str | None) -> str:
        names = sub.table.key
        text = self._texts.get((sub.id_json, names, key, row))
        if text is None:
            body = self._bodies.get((names, key, row))
            if body is None:
                change = self.change
                # exact.dumps: a key may hold numbers kept exact (Decimals, see exact.py)
                head = exact.dumps(
                    {"position": self.position, "table": sub.table.qualified, "op": change.op,
                     "committed_at": change.committed_at.isoformat(),
                     "key": None if key is None else sub.table.key_object(key)},
                )  # fmt: skip
                body = self._bodies[names, key, row] = f'{head[1:-1]},"row":{row or "null"}}}'
            text = self._texts[sub.id_json, names, key, row] = (
                f'{{"type":"change","sub":{sub.id_json},{body}'
            )
        return text
