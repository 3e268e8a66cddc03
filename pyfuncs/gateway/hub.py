"""The hub: follows the change feed and delivers each change to the subscriptions allowed
to see it.

One feed reader per gateway process reads committed changes in position order (see
pyfuncs/realtime.py). For each batch it asks PostgreSQL, once per distinct (table,
subscriber identity), which of the changed rows that identity sees now and which of its
subscriptions' filters they match (tables.visible_query); then it walks the batch in order and
sends events (each message made once and shared by the subscriptions that get it; see
clients.py for where it goes). So the cost grows with distinct identities, not
connections, and delivery is in commit order for every subscription.

A new subscription starts from a snapshot (or from the position it resumes from) and
catches up on its own, reading the feed itself (sending each key's latest change only:
delivery.latest_of_keys), until it has reached what the hub has read; from then on the hub
delivers to it. Positions make the hand-over exact: a change is delivered to a subscription
only if it is after the subscription's position.

The feed is read in the gateway's own role, on feed sessions; questions asked as subscribers
go to check sessions (sessions.py). One bad change or subscription
must not stop delivery to everyone: a change whose key cannot be read is skipped (and
logged), a subscription that cannot be served is told to resubscribe, and the feed loop
restarts after any error.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from ..capture import Capture
from ..errors import ResyncRequired, SubscriptionError
from ..queries import query
from ..realtime import Change, Position, Snapshot, listen, read, wake_up
from .clients import Client, Subscription
from .config import GatewayConfig
from .delivery import (
    NOTHING,
    Group,
    Messages,
    latest_of_keys,
    removed_later_in_batch,
    visibility,
)
from .metrics import Metrics
from .positions import PositionTokens
from .protocol import Subscribe
from .sessions import Sessions, connect
from .tables import (
    Filter,
    Filters,
    Key,
    Table,
    Visible,
    as_identity,
    check,
    describe,
    snapshot,
)

log = logging.getLogger("pyfuncs.gateway")
END = 2**63 - 1  # the change number after every change of a commit
RESTART_MAX = 30.0  # seconds, the longest wait before the feed loop restarts after errors
RESYNC = ("the change feed no longer holds the changes after your position (they are kept "
          "for a limited time): subscribe again without `since` to read the table afresh")  # fmt: skip
FAILED = ("the gateway could not deliver a change of this table to this subscription: "
          "subscribe again without `since` to read the table afresh")  # fmt: skip


class Hub:
    def __init__(self, config: GatewayConfig, sessions: Sessions) -> None:
        self.config = config
        self.sessions = sessions
        self.metrics = Metrics()
        self.tokens: PositionTokens  # what subscribers see of positions (set by start())
        self.position = Position()  # every live subscription has had everything up to here
        self.through = Position()  # the end of the batch being delivered (or the position)
        self.connected = False
        self._by_table: dict[str, set[Subscription]] = defaultdict(set)
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned: set[tuple[str, tuple[str, ...]]] = set()  # tables whose keys are gone
        self._tables: dict[Table, Table] = {}
        # set by this process's WAL consumer when it wrote changes (see _wait)
        self._captured = asyncio.Event()
        # told when the hub ends a subscription on its own (the gateway's limits count it)
        self.on_end: Callable[[Subscription], None] = lambda sub: None

    # --- the feed ------------------------------------------------------------------------

    async def start(self) -> None:
        async with self.sessions.feed.connection() as conn:
            key = await (await conn.execute(query("realtime_position_key"))).fetchone()
            row = await (await conn.execute(query("realtime_head"))).fetchone()
        assert key is not None
        self.tokens = PositionTokens(key[0])
        self.position = self.through = Position(row[0] if row else 0, END)

    async def run(self) -> None:
        """Follow the feed forever: reconnect when the server goes away, and start again
        (after a growing pause, logged) after any other error, so that no error ends
        delivery for good."""
        pause, restart = self.config.retry, False
        while True:
            try:
                if restart:
                    await self.start()
                    restart = False
                    # a subscription that went live at an older position while the feed
                    # was being restarted would now skip what lies between: resync it
                    for sub in self._subscriptions():
                        if sub.live and sub.position < self.position:
                            self._end(sub, "resync_required", RESYNC)
                async with await connect(
                    self.config.feed_dsn, application_name="pyfuncs-gateway-feed"
                ) as conn:
                    await listen(conn)
                    self.connected, self.metrics.disconnected_at = True, None
                    pause = self.config.retry
                    await self._follow(conn)
            except psycopg.OperationalError as exc:
                log.warning("change feed connection lost (%s); reconnecting", exc)
            except ResyncRequired as exc:
                # the gateway itself was away longer than the retention: its clients may
                # have missed pruned changes, so they must resync too
                log.error("%s", exc)
                for sub in self._subscriptions():
                    sub.client.close("resync_required", RESYNC)
                restart = True
                # until start() finds the new head, a subscription that comes meanwhile
                # must read the feed itself (and be told to resync if it is behind), not
                # count as caught up with a hub that is not
                self.through = Position(END, END)
            except Exception as exc:
                self.metrics.failures += 1
                pause = min(pause * 2, RESTART_MAX)
                log.error("the change feed stopped on an unexpected error (%s: %s); "
                          "starting again in %g s", type(exc).__name__, exc, pause)  # fmt: skip
            finally:
                if self.connected:
                    self.connected, self.metrics.disconnected_at = False, time.monotonic()
            await asyncio.sleep(pause)

    async def _follow(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Read the feed and deliver, one batch after the other. Positions are as read: the
        next read starts where this batch ends (`through`, which catching-up subscriptions
        wait for too). (Reading the next batch while this one was checked and sent made a
        change wait for one more batch under load: a change committed just after that read
        began waited for the batch in progress, the next, and its own.)"""
        while True:
            await self._answered(conn)
            changes = await read(conn, self.position, self.config.batch, keys=True)
            self.metrics.feed_reads += 1
            if not changes:
                await self._wait(conn)
                continue
            self.through = changes[-1].position
            live = [s for s in self._subscriptions() if s.live and not s.client.suspended]
            await self._deliver_isolated(changes, live, conn)
            self.position = self.through
            self.metrics.changes += len(changes)
            now = datetime.datetime.now(datetime.UTC)
            self.metrics.lag = (now - changes[-1].committed_at).total_seconds()

    async def _answered(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Before a read: every wake-up received so far is answered by it."""
        async for _ in conn.notifies(timeout=0):
            pass
        self._captured.clear()

    async def _wait(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Wait for new changes. When this process's consumer leads, it says when it wrote
        some (or, in trigger mode, gave them positions), and the feed is read at once: no
        NOTIFY round trip, and no WAKE_UP_GAP (only this process can set the event).
        Otherwise wait for a NOTIFY (read at most every WAKE_UP_GAP)."""
        capture = self.metrics.capture
        if capture is None or not capture.leading:
            await wake_up(conn, self.config.poll)
            return
        if not self._captured.is_set():
            # bounded: leadership may be lost, or the mode switched, meanwhile
            # (asyncio.timeout: wait_for can swallow a cancellation on Python 3.11)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.config.poll, 0.5)):
                    await self._captured.wait()

    async def capture_forever(self) -> None:
        """Take part in capture (pyfuncs/capture.py): one process per database leads, the
        others stand by."""
        self.metrics.capture = Capture(self.config.feed_dsn, on_captured=self._captured.set)
        await self.metrics.capture.run()

    async def prune_forever(self) -> None:
        """Prune the change feed to its retention now and then (several gateways may: it
        is idempotent)."""
        while True:
            await asyncio.sleep(self.config.prune_every)
            try:
                async with self.sessions.feed.connection() as conn:
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

    async def subscribe(self, client: Client, message: Subscribe) -> Subscription:
        """Check and register a subscription, send its snapshot (or confirm its resume,
        with the keys the client holds that it no longer sees), and start its catch-up.
        SubscriptionError says what is wrong; nothing is registered then."""
        sub_id = message.id
        if sub_id in client.subscriptions:
            raise SubscriptionError("duplicate", f"subscription {sub_id!r} already exists")
        filters = Filter.parse_all(message.filters)
        since = None if message.since is None else self.tokens.position(message.since)
        try:
            head, taken, table, rows = await self._snapshot(client, message.table, filters)
        except SubscriptionError:
            raise
        except psycopg.OperationalError:  # the database is away, or the pool exhausted
            raise SubscriptionError(
                "unavailable", "the gateway cannot reach the database now; subscribe again "
                "in a moment",
            ) from None  # fmt: skip
        except psycopg.Error:  # raised by the table's policies or privileges
            raise SubscriptionError(
                "forbidden", "the database refused to read this table for you; nothing was "
                "subscribed",
            ) from None  # fmt: skip
        visible = {k for k, _ in rows}
        held = None if message.keys is None else [table.key_from(k) for k in message.keys]
        start = since if since is not None else Position(head, END)
        # one Table object for equal tables: delivery looks them up in dicts for every change
        table = self._tables.setdefault(table, table)
        # a resume with `keys` holds what it named and still sees: only those can leave its
        # view (a DELETE of a row it never had is none of its business)
        seen = visible if held is None else visible.intersection(held)
        sub = Subscription(sub_id, client, table, filters, start, seen=seen,
                           taken=None if since is not None else taken)  # fmt: skip
        token = self.tokens.resume_token(start)
        reply = {"type": "subscribed", "sub": sub_id, "table": table.qualified,
                 "key": table.key, "position": token}  # fmt: skip
        if since is None:
            data = json.dumps(reply, separators=(",", ":"))[:-1]
            rows_json = ",".join(row for _, row in rows)
            client.push_raw("subscribed", token, f'{data},"rows":[{rows_json}]}}', sub_id)
        else:
            # of the keys the client holds, those it does not see now (gone, hidden, or out
            # of its filters: one answer for all, and only for keys it named); the changes
            # after `since` then follow, and only rows it sees now count as sent to it
            gone = [] if held is None else [k for k in dict.fromkeys(held) if k not in visible]
            extra = {} if held is None else {"gone": [table.key_object(k) for k in gone]}
            client.send("subscribed", {**reply, "resumed": True, **extra}, token)
        client.subscriptions[sub_id] = sub
        self._by_table[table.qualified].add(sub)
        self.catch_up(sub)
        return sub

    async def _snapshot(
        self, client: Client, name: Any, filters: Filters
    ) -> tuple[int, Snapshot, Table, list[tuple[Key, str]]]:
        """The last position committed, and the table and rows a subscriber sees in that
        same snapshot: the position read in the gateway's role, the rest as the subscriber;
        and which transactions that snapshot sees."""
        async with self.sessions.feed_snapshot() as feed:
            row = await (await feed.execute(query("realtime_export_head"))).fetchone()
            assert row is not None  # one row, always
            exported, head = row
            taken = await (await feed.execute(query("realtime_snapshot"))).fetchone()
            assert taken is not None
            async with self.sessions.as_subscribers(exported) as conn:
                await as_identity(conn, client.check_identity)
                table = await describe(conn, name)
                columns = await check(conn, table, filters)
                # whatever converting the filters ran, the rows are read as the subscriber
                await as_identity(conn, client.check_identity)
                rows = await snapshot(conn, table, columns, filters, self.config.max_snapshot_rows)
        if sum(len(row) for _, row in rows) > self.config.max_snapshot_bytes:
            raise SubscriptionError(
                "too_many_rows",
                f"the rows you see in {table.qualified} come to more than "
                f"{self.config.max_snapshot_bytes} bytes; subscribe with filters that "
                "select fewer rows",
            )
        return head, Snapshot.parse(taken[0]), table, rows

    def unsubscribe(self, sub: Subscription) -> None:
        sub.client.subscriptions.pop(sub.id, None)
        self._by_table[sub.table.qualified].discard(sub)

    def _end(self, sub: Subscription, code: str, message: str) -> None:
        """End a subscription the hub cannot go on serving, telling its client why."""
        if sub.client.subscriptions.get(sub.id) is not sub:
            return
        sub.client.send("error", {"type": "error", "sub": sub.id, "code": code,
                                  "message": message})  # fmt: skip
        self.unsubscribe(sub)
        self.on_end(sub)

    def drop(self, client: Client) -> None:
        for sub in list(client.subscriptions.values()):
            self.unsubscribe(sub)

    def catch_up(self, sub: Subscription) -> None:
        sub.live = False
        task = asyncio.create_task(self._catch_up(sub))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _catch_up(self, sub: Subscription) -> None:
        """Deliver what `sub` missed, paced by its client, until it is live. A client whose
        token expired is paused here too (the refreshed token starts catching up again:
        app._refresh): a catch-up sent on after token_expired (a red team's)."""
        while (
            not sub.live
            and sub.client.subscriptions.get(sub.id) is sub
            and sub.client.reason is None
            and not sub.client.suspended
        ):
            if sub.position >= self.through:
                sub.live = True  # no await since the check: the hub's next batch includes it
                return
            # catching up is paced by the client: read only what its outbox has room for
            # (a change may make two events), so a resuming slow reader is not cut off again
            outbox = sub.client.outbox
            room = outbox.maxsize - outbox.qsize()
            if room < min(outbox.maxsize, max(2, outbox.maxsize // 2)):
                # wait for the client to read (no polling), but not for ever
                sub.client.outbox.drained.clear()
                try:
                    async with asyncio.timeout(self.config.catch_up_wait):
                        await sub.client.outbox.drained.wait()
                except TimeoutError:
                    sub.client.close(
                        "slow_consumer",
                        f"this client read nothing for {self.config.catch_up_wait:g} s while "
                        "subscriptions caught up; reconnect and resume from your last position",
                    )  # fmt: skip
                continue
            limit = max(1, min(self.config.batch, room // 2))
            try:
                async with self.sessions.feed.connection() as conn:
                    changes = await read(conn, sub.position, limit, keys=True)
                    latest = await latest_of_keys(conn, changes, sub.table)
                if sub.client.suspended:
                    return  # (expired while it read)
                if not changes:
                    sub.live = True
                    return
                if latest:
                    await self._deliver(latest, [sub])
                if not sub.client.suspended:  # (else _deliver moved nothing either)
                    sub.position = max(sub.position, changes[-1].position)  # past the skipped
            except ResyncRequired:
                self._end(sub, "resync_required", RESYNC)
            except psycopg.OperationalError as exc:
                log.warning("catching up %s failed (%s); retrying", sub.id, exc)
                await asyncio.sleep(self.config.retry)
            except Exception as exc:
                self.metrics.failures += 1
                log.error("catching up a subscription to %s failed (%s: %s); ended it",
                          sub.table.qualified, type(exc).__name__, exc)  # fmt: skip
                self._end(sub, "resync_required", FAILED)

    # --- delivery ------------------------------------------------------------------------

    async def _deliver_isolated(
        self, changes: Sequence[Change], subs: Sequence[Subscription],
        feed: psycopg.AsyncConnection[Any] | None = None,
    ) -> None:  # fmt: skip
        """`_deliver`, but an error (other than losing the database) does not stop the
        batch for everyone: the batch is then delivered table by table, and the
        subscriptions of a table it still fails for are ended (told to resubscribe)."""
        try:
            await self._deliver(changes, subs, feed)
            return
        except psycopg.OperationalError:
            raise
        except Exception as exc:
            self.metrics.failures += 1
            log.error("delivering a batch failed (%s: %s); delivering it table by table",
                      type(exc).__name__, exc)  # fmt: skip
        by_table: dict[Table, list[Subscription]] = defaultdict(list)
        for sub in subs:
            by_table[sub.table].append(sub)
        for table, some in by_table.items():
            try:
                await self._deliver(changes, some, feed)
            except psycopg.OperationalError:
                raise
            except Exception as exc:
                log.error("delivering changes of %s failed (%s: %s); ended its %d "
                          "subscription(s)", table.qualified, type(exc).__name__, exc,
                          len(some))  # fmt: skip
                for sub in some:
                    self._end(sub, "resync_required", FAILED)

    async def _deliver(
        self, changes: Sequence[Change], subs: Sequence[Subscription],
        feed: psycopg.AsyncConnection[Any] | None = None,
    ) -> None:  # fmt: skip
        """Send the events of `changes` to `subs`. Asks every visibility question first
        (reading the change log on `feed`, the hub's own connection, else a pooled one),
        then sends without awaiting: a failure before sending sends nothing and moves no
        position; a failure while sending to one subscription ends that one only."""
        # the subscriptions of each table, and of each identity on it (one check each)
        by_table: dict[Table, list[Subscription]] = defaultdict(list)
        groups: dict[tuple[Table, str], Group] = {}
        slot: dict[Subscription, tuple[Group, int]] = {}
        for sub in subs:
            table = sub.table
            by_table[table].append(sub)
            group = groups.get((table, sub.client.identity_key))
            if group is None:
                group = groups[table, sub.client.identity_key] = Group(table, sub.client)
            slot[sub] = (group, group.index(sub.filters))
        # a table as each subscription knows it: one name may stand for versions of a table
        # (its key renamed, or dropped and created again since some subscribed)
        named: dict[tuple[str, str], list[Table]] = defaultdict(list)
        for table in by_table:
            named[table.schema, table.name].append(table)
        # each change's (old key, new key) for each version, and the keys of rows written
        keys: list[dict[Table, tuple[Key | None, Key | None]]] = []
        changed: dict[Table, set[Key]] = defaultdict(set)
        for change in changes:
            mine: dict[Table, tuple[Key | None, Key | None]] = {}
            for table in named.get((change.schema, change.table), ()):
                old = None if change.old is None else table.key_of(change.old)
                new = None if change.new is None else table.key_of(change.new)
                if (change.old is not None and old is None) or (
                    change.new is not None and new is None
                ):
                    self._key_missing(table)
                mine[table] = (old, new)
                if new is not None:
                    changed[table].add(new)
            keys.append(mine)
        for group in groups.values():
            group.keys = changed[group.table]
        wanted = [g for g in groups.values() if g.keys]
        self.metrics.checks += len(wanted)
        answer = await visibility(self.sessions, wanted, changes[-1].position.commit, feed)
        later = {table: removed_later_in_batch(changes, table) for table in by_table}
        # subscriptions that caught up past the batch's start skip what they have had
        first = changes[0].position
        plan: dict[Table, list[tuple[Subscription, int, Visible, set[Key], Position | None]]]
        plan = {table: [] for table in by_table}
        paused = {sub for sub in slot if sub.client.suspended}
        for sub, (group, index) in slot.items():
            if sub in paused:
                continue  # its token expired while the checks ran: it has these on refresh
            rows, removed = answer.get(group, NOTHING)
            ahead = sub.position if sub.position >= first else None
            plan[sub.table].append((sub, index, rows, removed, ahead))
        failed: set[Subscription] = set()
        held: set[Client] = set()  # the events of the batch go out together, per client
        try:
            for i, change in enumerate(changes):
                messages = Messages(change, self.tokens.token(change.position))
                for table, change_keys in keys[i].items():
                    gone = later[table][i]
                    for sub, index, rows, removed, ahead in plan[table]:
                        if ahead is not None and change.position <= ahead:
                            continue
                        if sub.taken is not None and sub.taken.sees(change.txid):
                            continue  # in its snapshot, though positioned after its head
                        client = sub.client
                        if client.subscriptions.get(sub.id) is not sub or sub in failed:
                            # unsubscribed (or its connection ended) while the checks ran:
                            # no event may follow its `unsubscribed` reply
                            continue
                        try:
                            if self._event(sub, messages, change_keys, rows, index,
                                           None if gone else removed):  # fmt: skip
                                held.add(client)
                        except Exception as exc:
                            self.metrics.failures += 1
                            log.error("a change of %s could not be sent (%s: %s); ended the "
                                      "subscription", table.qualified, type(exc).__name__,
                                      exc)  # fmt: skip
                            failed.add(sub)
        finally:
            for client in held:
                self.metrics.delivered += len(client.held)
                try:
                    client.release()
                except Exception as exc:  # that connection cannot be served: end it
                    self.metrics.failures += 1
                    log.error("sending changes to a client failed (%s: %s); closed it",
                              type(exc).__name__, exc)  # fmt: skip
                    client.close("resync_required", FAILED)
        for sub in failed:
            self._end(sub, "resync_required", FAILED)
        last = changes[-1].position
        for sub in subs:
            if sub not in paused:
                sub.position = max(sub.position, last)

    def _key_missing(self, table: Table) -> None:
        if (table.qualified, table.key) not in self._warned:
            self._warned.add((table.qualified, table.key))
            log.warning("changes of %s lack its primary key (%s) as its subscriptions know "
                        "it (renamed or dropped?): they are not delivered to those "
                        "subscriptions, which must subscribe again", table.qualified,
                        ", ".join(table.key))  # fmt: skip

    def _event(
        self, sub: Subscription, messages: Messages, keys: tuple[Key | None, Key | None],
        rows: Visible, index: int, removed: set[Key] | None,
    ) -> bool:  # fmt: skip
        """Hold what a change (whose old and new keys are `keys`) means for `sub` (its
        client sends it with the rest of the batch); whether there was anything.
        `removed`: keys a later commit removes (None: a later change of this batch removes
        this change's row)."""
        hold = sub.client.hold
        if messages.change.op == "TRUNCATE":
            sub.seen.clear()
            hold(messages.position, messages.text(sub, None, None))
            return True
        old_key, key = keys
        emitted = False
        if old_key is not None and key != old_key and old_key in sub.seen:
            sub.seen.discard(old_key)  # deleted, or its key changed
            hold(messages.position, messages.text(sub, old_key, None))
            emitted = True
        if key is None:
            return emitted
        found = rows.get(key)
        if found is not None and found[1][index]:
            sub.seen.add(key)
            hold(messages.position, messages.text(sub, key, found[0]))
            return True
        if key in sub.seen and (found is not None or not (removed is None or key in removed)):
            # it left this subscription's view (a row that is gone because a later change
            # removes it is reported by that change, as a DELETE)
            sub.seen.discard(key)
            hold(messages.position, messages.text(sub, key, None))
            return True
        return emitted
