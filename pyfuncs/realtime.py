"""The change feed: which tables are captured, and reading their changes in commit order.

Capture itself is SQL (sql/schema.sql, "Realtime change capture"), in one of two modes: from
the WAL, where a consumer (pyfuncs/capture.py) writes each commit's changes with its commit
LSN as position; or with triggers, which write each change of an enabled table in the writing
transaction, and the same consumer gives each committed transaction the next position, a batch
at a time. Either way positions become visible in order. A consumer of the feed follows it from
its last position; NOTIFY on `pyfuncs_realtime` only wakes it up.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from .errors import ConfigError, ResyncRequired, from_psycopg
from .queries import query

CHANNEL = "pyfuncs_realtime"
Op = Literal["INSERT", "UPDATE", "DELETE", "TRUNCATE"]
_POSITION = re.compile(r"^(\d+)\.(\d+)$")


@dataclass(frozen=True, order=True)
class Position:
    """Where a consumer is: the commit, and the change within it. `str()` gives the token
    clients keep (`"42.1337"`); `Position()` is the start of the feed."""

    commit: int = 0
    change: int = 0

    def __str__(self) -> str:
        return f"{self.commit}.{self.change}"

    @classmethod
    def parse(cls, token: str) -> Position:
        match = _POSITION.match(token.strip())
        if match is None:
            raise ConfigError(
                f"{token!r} is not a change-feed position; use the `position` of the last "
                "change you received, such as '42.1337'"
            )
        return cls(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class Change:
    """One captured change. `new` is the row after INSERT/UPDATE, `old` the row before
    UPDATE/DELETE; TRUNCATE has neither."""

    position: Position
    schema: str
    table: str
    op: Op
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    committed_at: datetime.datetime
    txid: int = 0  # the writing transaction's id


@dataclass(frozen=True)
class Snapshot:
    """Which transactions a snapshot sees (`pg_current_snapshot()`'s `xmin:xmax:xip,...`).
    A change takes its position some time after its commit (from the WAL, when the consumer
    writes it; with triggers, when the consumer's next batch gives it): a transaction that a
    subscriber's starting snapshot already shows may come after that snapshot's head, and
    must not be delivered again."""

    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, running = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in running.split(",") if x))

    def sees(self, txid: int) -> bool:
        """Whether a committed transaction's changes are in this snapshot."""
        return txid < self.xmin or (txid < self.xmax and txid not in self.running)


def enable(conn: psycopg.Connection[Any], table: str) -> None:
    """Capture every change of `table` (`name` or `schema.name`) from now on; idempotent."""
    _call(conn, "realtime_enable", f"enabling realtime on {table}", table=table)


def disable(conn: psycopg.Connection[Any], table: str) -> None:
    """Stop capturing `table`; changes already captured stay in the feed until pruned."""
    _call(conn, "realtime_disable", f"disabling realtime on {table}", table=table)


def prune(conn: psycopg.Connection[Any], keep: datetime.timedelta | None = None) -> int:
    """Delete committed changes older than `keep` (default: the configured retention);
    returns how many transactions' changes went."""
    row = _call(conn, "realtime_prune", "pruning the change feed", keep=keep)
    return int(row[0]) if row else 0


def _call(conn: psycopg.Connection[Any], name: str, what: str, **params: Any) -> Any:
    try:
        with conn.transaction():
            return conn.execute(query(name), params).fetchone()
    except psycopg.Error as exc:
        raise ConfigError(f"{what} failed, nothing was changed: {from_psycopg(exc)}") from exc


def _integer(text: str) -> int | decimal.Decimal:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts to an int (sys.get_int_max_str_digits)
        return decimal.Decimal(text)


def _wide_json(data: str | bytes) -> Any:
    """JSON whose integers too long for an int are Decimals: a writer of a captured table
    must not make every read of the feed fail (a `numeric` may have 131,072 digits)."""
    return json.loads(data, parse_int=_integer)


async def read(
    conn: psycopg.AsyncConnection[Any], after: Position, limit: int = 500, *,
    keys: bool = False,
) -> list[Change]:  # fmt: skip
    """Committed changes after `after`, in commit order, at most `limit`; raises
    ResyncRequired when some of them were pruned. One statement, so one snapshot and one
    round trip. With `keys`, `new` and `old` hold only the primary key columns of the
    change's table (what the gateway needs: sql/queries.sql, realtime_read)."""
    params = {"commit": after.commit, "change": after.change, "limit": limit, "keys": keys}
    cur = conn.cursor(row_factory=dict_row)
    try:
        rows = await (await cur.execute(query("realtime_read"), params)).fetchall()
    except ValueError:  # a row with an integer Python will not convert (over 4,300 digits)
        set_json_loads(_wide_json, cur)
        rows = await (await cur.execute(query("realtime_read"), params)).fetchall()
    pruned_through = rows[0]["pruned_through"] if rows else 0
    if after.commit < pruned_through:
        raise ResyncRequired(
            f"the change feed was pruned through position {pruned_through}.0 and this "
            f"consumer is at {after}: read the tables again, then follow from now",
            pruned_through=pruned_through,
        )
    return [
        Change(Position(r["position"], r["change"]), r["schema_name"], r["table_name"],
               r["op"], r["new_row"], r["old_row"], r["committed_at"], r["txid"])
        for r in rows if r["position"] is not None
    ]  # fmt: skip


async def listen(conn: psycopg.AsyncConnection[Any]) -> None:
    """Subscribe an autocommit connection to the commits' wake-ups."""
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))


# Any role may NOTIFY the channel: however many wake-ups arrive, a consumer reads at most
# once per this many seconds (wake-ups received meanwhile are taken together).
WAKE_UP_GAP = 0.01


async def wake_up(conn: psycopg.AsyncConnection[Any], poll: float) -> None:
    """Wait for a commit's NOTIFY on a listening connection, or `poll` seconds, whichever
    comes first, but at least WAKE_UP_GAP."""
    start = time.monotonic()
    async for _ in conn.notifies(timeout=poll, stop_after=1):
        pass
    rest = WAKE_UP_GAP - (time.monotonic() - start)
    if rest > 0:
        await asyncio.sleep(rest)


class ChangeFeed:
    """Follow the change feed from a position, reconnecting by itself:

    ```python
    async for change in ChangeFeed(dsn, since=Position.parse(saved)):
        apply(change)
        saved = str(change.position)
    ```
    Every committed change after `since` arrives once, in commit order (per row; from the
    WAL, overall too). Between batches it waits for a NOTIFY, and looks anyway every `poll` seconds
    in case a wake-up was lost while it was disconnected.
    """

    def __init__(
        self, dsn: str, *, since: Position | None = None, batch: int = 500,
        poll: float = 5.0, retry: float = 0.5,
    ) -> None:  # fmt: skip
        self.dsn, self.batch, self.poll, self.retry = dsn, batch, poll, retry
        self.position = since or Position()

    async def __aiter__(self) -> AsyncIterator[Change]:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, application_name="pyfuncs-change-feed"
                ) as conn:
                    await listen(conn)
                    while True:
                        changes = await read(conn, self.position, self.batch)
                        for change in changes:
                            self.position = change.position
                            yield change
                        if len(changes) < self.batch:
                            await wake_up(conn, self.poll)
            except psycopg.OperationalError:
                await asyncio.sleep(self.retry)  # the server went away: connect again
