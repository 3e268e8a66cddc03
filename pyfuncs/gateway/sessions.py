"""The gateway's two kinds of database sessions.

Subscribers' visibility is decided by PostgreSQL as the subscriber, and that runs code that
table owners wrote: RLS policies and the functions they call, a column's domain checks when
a filter value is converted, views. PostgreSQL lets such code undo `SET ROLE` (the session
user stays the gateway's login role), so whatever the login role of a session that runs as
subscribers may read, that code may read too. Hence two pools, which may log in as two roles
(README "Deploying it"):

* **feed** sessions (`PYFUNCS_GATEWAY_FEED_DSN`, default the main DSN) read the change log
  and the position key, and write the audit. They never switch to a subscriber, so no code
  of anyone else runs in them.
* **check** sessions (the main DSN) switch to subscribers. Their login role needs no grant
  on pyfuncs' tables. Every transaction in them is READ ONLY and ends with ROLLBACK, which
  reverts the settings and discards the NOTIFYs that code run in it made; session-level
  leftovers that survive a rollback (advisory locks, prepared statements) are cleared after
  it.

A new subscription's rows (read as the subscriber) and its first position (read from the
change log) must agree exactly: the feed session exports its snapshot and the check session
imports it (`SET TRANSACTION SNAPSHOT`). The transactions are begun and ended by hand, so
that in a pipeline they cost no round trip of their own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from ..config import PINNED_VALUES, pinned_options
from ..errors import ConfigError
from ..queries import query
from . import exact
from .config import GatewayConfig

log = logging.getLogger("pyfuncs.gateway")
_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
_IN_TRANSACTION = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)


async def connect(dsn: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """A session of the gateway's: every one, feed or check, has search_path pinned to
    pg_catalog from its start (a startup option, over the database's, the role's and the
    DSN's), so that no function or operator its SQL names, nor one that code run in it as a
    subscriber names without a schema, is looked up in a schema another role may create
    objects in (`public`, or one named after a token role for `"$user"`). The gateway's SQL
    names pyfuncs' objects in full, and the built-ins it calls as `pg_catalog.`."""
    conn = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, options=_options(dsn), **kwargs
    )
    await _configure(conn)
    return conn


def _options(dsn: str) -> str:
    """The pins above, and values written as capture writes the change log (PINNED_VALUES):
    a key read in a row here is the log's to the digit (a `float8` with 15 digits, with
    extra_float_digits at 0, or a timestamptz in a database's TimeZone, made them differ),
    and snapshots are written as events are, whatever the DSN, the role or the database
    set. Subscribers' filters and the RLS policies run as them see the same settings."""
    return f"{pinned_options(dsn)} {PINNED_VALUES}"


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """json and jsonb with exact numbers (exact.py): the change log's row images, whose
    keys are compared with those of rows read as subscribers."""
    set_json_loads(exact.loads, conn)


class Sessions:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.feed: AsyncConnectionPool[Any] = AsyncConnectionPool(
            config.feed_dsn, min_size=2, max_size=config.pool_size, open=False,
            configure=_configure,
            kwargs={"autocommit": True, "application_name": "pyfuncs-gateway",
                    "options": _options(config.feed_dsn)},
        )  # fmt: skip
        # no server-side prepared statements: every transaction ends with ROLLBACK, after
        # which psycopg would deallocate them anyway, and DEALLOCATE ALL clears any that
        # code run as a subscriber prepared
        self.check: AsyncConnectionPool[Any] = AsyncConnectionPool(
            config.dsn, min_size=2, max_size=config.pool_size, open=False,
            configure=_configure,
            kwargs={"autocommit": True, "application_name": "pyfuncs-gateway-check",
                    "prepare_threshold": None, "options": _options(config.dsn)},
        )  # fmt: skip

    async def open(self) -> None:
        await self.feed.open(wait=True)
        await self.check.open(wait=True)
        warning = await verify(self.config)
        if warning:
            log.warning("%s", warning)

    async def close(self) -> None:
        await self.check.close()
        await self.feed.close()

    @contextlib.asynccontextmanager
    async def feed_snapshot(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A feed session in a read-only, repeatable-read transaction (pipelined), rolled
        back at the end: export its snapshot with the `realtime_export_head` query."""
        async with self.feed.connection() as conn, _read_only(conn, pipeline=True):
            yield conn

    @contextlib.asynccontextmanager
    async def as_subscribers(
        self, snapshot: str | None = None, *, pipeline: bool = False
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A check session in a read-only transaction (on the feed's exported `snapshot` if
        given), ready for `tables.as_identity`; rolled back at the end whatever happened,
        and cleared of what code run in it may have left."""
        async with (
            self.check.connection() as conn,
            _read_only(conn, pipeline=pipeline, snapshot=snapshot, clear=True),
        ):
            yield conn


@contextlib.asynccontextmanager
async def _read_only(
    conn: psycopg.AsyncConnection[Any], *, pipeline: bool, snapshot: str | None = None,
    clear: bool = False,
) -> AsyncIterator[None]:  # fmt: skip
    """A read-only, repeatable-read transaction that always ends with ROLLBACK; `clear`:
    then release what survives a rollback (advisory locks, prepared statements), which code
    run as a subscriber may have left. In a pipeline, BEGIN goes with the first questions and
    ROLLBACK with the pipeline's last sync."""
    try:
        async with contextlib.AsyncExitStack() as stack:
            if pipeline:
                await stack.enter_async_context(conn.pipeline())
            await conn.execute(_BEGIN)
            if snapshot is not None:
                await conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(snapshot))
            yield
            async with contextlib.AsyncExitStack() as end:
                if not pipeline:
                    await end.enter_async_context(conn.pipeline())  # one round trip
                await conn.execute("ROLLBACK")
                if clear:
                    await _clear(conn)
    finally:
        if not conn.closed and conn.info.transaction_status in _IN_TRANSACTION:
            try:  # something failed before the ROLLBACK was sent
                async with conn.pipeline():
                    await conn.execute("ROLLBACK")
                    if clear:
                        await _clear(conn)
            except psycopg.Error as exc:
                log.warning("ending a transaction failed (%s); closing its session",
                            type(exc).__name__)  # fmt: skip
                await conn.close()


async def _clear(conn: psycopg.AsyncConnection[Any]) -> None:
    """Release what code run as a subscriber may leave in a session after ROLLBACK:
    session-level advisory locks (which would stall whoever waits for them for as long as
    the pool keeps the connection) and prepared statements (psycopg prepares none here)."""
    await conn.execute("SELECT pg_catalog.pg_advisory_unlock_all()")
    await conn.execute("DEALLOCATE ALL")


async def verify(config: GatewayConfig) -> str | None:
    """ConfigError unless a check session can share a feed session's snapshot (the same
    database on the same server, the feed's role may read the change log); a warning when
    the check role may read what code run as a subscriber should not reach."""
    try:
        async with (
            await connect(config.feed_dsn) as feed,
            await connect(config.dsn) as check,
            _read_only(feed, pipeline=False),
        ):  # fmt: skip
            row = await (await feed.execute(query("realtime_export_head"))).fetchone()
            async with _read_only(check, pipeline=False, snapshot=row[0] if row else ""):
                cur = await check.execute(query("realtime_check_role"))
                login, superuser, reads_log = await cur.fetchone() or (None, None, None)
    except psycopg.Error as exc:
        problem = exc.diag.message_primary or type(exc).__name__
        raise ConfigError(
            "the gateway's check sessions (its DSN) must share snapshots with its feed "
            "sessions (PYFUNCS_GATEWAY_FEED_DSN, default the same): both name the same "
            "database on the same server, and the feed's login role reads pyfuncs' realtime "
            f"tables (README, Deploying it); {problem.splitlines()[0]}"
        ) from None
    if not (superuser or reads_log):
        return None
    return (
        f"the gateway's check connection logs in as {login}, which "
        f"{'is a superuser' if superuser else 'may read the change log or position key'}: "
        "code that table owners wrote (RLS policies, domain checks) runs in it as "
        "subscribers and could read them too. Give it a login role without grants on "
        "pyfuncs' tables and the feed a role of its own (PYFUNCS_GATEWAY_FEED_DSN; README, "
        "Deploying it)"
    )
