"""Values as subscribers receive them do not depend on the settings of a session: the rows of
a snapshot and of a check (read in the gateway's sessions) are written as the change log's
(written by capture, in either mode), whatever the server, the database or a writer set for
TimeZone, IntervalStyle or lc_monetary (pyfuncs.config.VALUE_SETTINGS). A database whose
TimeZone was not UTC gave snapshot rows another offset than events (and a table keyed by a
timestamptz keys the gateway could not match with the log's); a writer's lc_monetary wrote
the log's money in its locale."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyfuncs import capture, realtime

from .conftest import GatewayProcess, WsClient, token

SCHEMA = """
CREATE TABLE rt.stamped (at timestamptz PRIMARY KEY, took interval, price money, note text);
GRANT SELECT ON rt.stamped TO manager;
INSERT INTO rt.stamped VALUES ('2026-01-02 03:04:05+00', '1 day 02:03:04', 12.5, 'first');
"""
# what capture writes: UTC, PostgreSQL's own interval style, money in the C locale
ROW = {"at": "2026-01-02T03:04:05+00:00", "took": "1 day 02:03:04", "price": "$12.50"}


# settings of the database's (its sessions', the gateway's and the consumer's among them, as
# far as they do not pin their own) and a writer's; `make setup` makes the German locale
DATABASE = (("TimeZone", "America/New_York"), ("IntervalStyle", "iso_8601"),
            ("lc_monetary", "de_DE.UTF-8"))  # fmt: skip
WRITER = (("TimeZone", "Asia/Kolkata"), ("IntervalStyle", "sql_standard"),
          ("lc_monetary", "de_DE.UTF-8"))  # fmt: skip


def _set_for_the_database(conn: psycopg.Connection[Any], dsn: str) -> None:
    try:
        conn.execute("SELECT pg_catalog.set_config('lc_monetary', 'de_DE.UTF-8', false)")
    except psycopg.errors.InvalidParameterValue:
        pytest.fail("the server has no de_DE.UTF-8 locale: run `make setup`, then restart "
                    "the embedded cluster (`pyfuncs db down`)")  # fmt: skip
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    for setting, value in DATABASE:
        conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
            sql.Identifier(str(name)), sql.Identifier(setting), sql.Literal(value)))  # fmt: skip


@pytest.mark.parametrize("mode", ["trigger", "wal"])
def test_snapshots_and_events_are_written_alike_whatever_the_sessions_say(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str, conn: psycopg.Connection[Any],
    mode: str,
) -> None:  # fmt: skip
    conn.execute(SCHEMA)
    realtime.enable(conn, "rt.stamped")
    capture.set_mode(conn, mode)
    _set_for_the_database(conn, rt_db)
    gateway = gateway_factory(heartbeat=1)

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("manager"))
        reply = await ws.subscribe("s", table="rt.stamped")
        assert reply["type"] == "subscribed", reply
        [row] = reply["rows"]
        assert {k: row[k] for k in ROW} == ROW
        # a writer of its own settings
        with psycopg.connect(rt_db, autocommit=True) as writer:
            for setting, value in WRITER:
                writer.execute("SELECT pg_catalog.set_config(%s, %s, false)", [setting, value])
            assert writer.execute("SELECT price::text FROM rt.stamped").fetchone() == ("12,50 €",)
            writer.execute("UPDATE rt.stamped SET note = 'second'")
        event = await ws.wait_for(lambda m: m.get("type") == "change")
        assert event["key"] == {"at": ROW["at"]}
        assert event["row"]["note"] == "second"
        assert {k: event["row"][k] for k in ROW} == ROW
        await asyncio.sleep(0.2)
        await ws.close()

    asyncio.run(main())
