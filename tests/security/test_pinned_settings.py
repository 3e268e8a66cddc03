"""Settings no pin covered (red team, round seventy): a writer's quote_all_identifiers, the
WAL stream's search_path, and a subscriber's RLS policy that sets them in a check shared by
other subscribers each made the text of a key differ between the change log and the rows the
gateway reads, and events were lost or told as rows leaving the view. Now every one is pinned
(pyfuncs.config.VALUE_SETTINGS, migration 0022, and again after each switch to a
subscriber: gateway/tables.as_identity)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyfuncs import capture, realtime
from pyfuncs.config import SEARCH_PATH, VALUE_SETTINGS
from pyfuncs.embedded import SUPERUSER
from tests.conftest import ensure_role
from tests.gateway.conftest import (  # noqa: F401  (fixtures)
    GatewayProcess,
    WsClient,
    gateway_factory,
    rt_db,
    token,
)

# ---------------------------------------------------------------------------------------
# Pinned values: settings no pin covers
# ---------------------------------------------------------------------------------------

BY_ROLE = """
CREATE TABLE rt.by_role (who regrole PRIMARY KEY, note text);
GRANT SELECT ON rt.by_role TO manager;
GRANT USAGE ON SCHEMA rt TO PUBLIC;
GRANT SELECT, INSERT, UPDATE ON rt.by_role TO PUBLIC;
INSERT INTO rt.by_role VALUES ('manager', 'first');
"""


def _writer_dsn(dsn: str, role: str) -> str:
    return dsn.replace(f"{SUPERUSER}@", f"{role}@", 1)


async def _an_update_arrives(
    gateway: GatewayProcess, writer_dsn: str, table: str, key: str, value: str,
    prepare: Callable[[psycopg.Connection[Any]], None] = lambda writer: None,
) -> None:  # fmt: skip
    """A manager subscribed to rt.`table` (one row, keyed by `key` = `value`) receives the
    UPDATE of that row made by a writer whose session `prepare` set up."""
    ws = await WsClient.connect(gateway.ws_url, token("manager"))
    reply = await ws.subscribe("s", table=f"rt.{table}")
    assert reply["type"] == "subscribed", reply
    assert [r[key] for r in reply["rows"]] == [value]
    with psycopg.connect(writer_dsn, autocommit=True) as writer:
        prepare(writer)
        writer.execute(sql.SQL("UPDATE {} SET note = 'second'").format(sql.Identifier("rt", table)))
    event = await ws.wait_for(lambda m: m.get("type") == "change", timeout=8)
    assert event["key"] == {key: value}
    assert event["row"]["note"] == "second"
    await ws.close()


@pytest.mark.parametrize("mode", ["trigger", "wal"])
def test_writer_quote_all_identifiers_makes_its_changes_vanish(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str,  # noqa: F811
    conn: psycopg.Connection[Any], mode: str,
) -> None:  # fmt: skip
    """A LOGIN role that may write an enabled table sets quote_all_identifiers (any session
    may) and writes a table keyed by a reg* type (built-in, so realtime serves it): reg*
    values are written with every identifier quoted then. realtime_capture did not pin it,
    so the change log's key was `"manager"` where the gateway read `manager`, and no
    subscriber got the writer's changes. (In wal mode the consumer's session writes values:
    it held.)"""
    ensure_role(conn, "rt_quoting_writer", "LOGIN")
    conn.execute(BY_ROLE)
    realtime.enable(conn, "rt.by_role")
    capture.set_mode(conn, mode)
    gateway = gateway_factory(heartbeat=1)

    def quoting(writer: psycopg.Connection[Any]) -> None:
        writer.execute("SET quote_all_identifiers = on")
        assert writer.execute("SELECT 'manager'::regrole::text").fetchone() == ('"manager"',)

    asyncio.run(_an_update_arrives(
        gateway, _writer_dsn(rt_db, "rt_quoting_writer"), "by_role", "who", "manager", quoting
    ))  # fmt: skip


REGCLASS_KEYED = """
CREATE TABLE public.widgets (id int PRIMARY KEY);
CREATE TABLE rt.per_table (rel regclass PRIMARY KEY, note text);
GRANT SELECT ON rt.per_table TO manager;
INSERT INTO rt.per_table VALUES ('public.widgets', 'first');
"""


@pytest.mark.parametrize("mode", ["trigger", "wal"])
def test_search_path_of_the_database_and_regclass_keys(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str,  # noqa: F811
    conn: psycopg.Connection[Any], mode: str,
) -> None:  # fmt: skip
    """A table keyed by regclass whose values name tables of a schema on the database's
    search_path: the gateway's sessions and realtime_capture / realtime_wal_batch pin
    search_path to pg_catalog and write `public.widgets`; the WAL consumer's replication
    session pinned none, and wal2json wrote `widgets`: the change matched no row the gateway
    reads and the event was lost. The stream's session pins search_path too now."""
    conn.execute(REGCLASS_KEYED)
    realtime.enable(conn, "rt.per_table")
    capture.set_mode(conn, mode)
    name = psycopg.conninfo.conninfo_to_dict(rt_db)["dbname"]
    conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = public, rt").format(
        sql.Identifier(str(name))))  # fmt: skip
    gateway = gateway_factory(heartbeat=1)

    asyncio.run(_an_update_arrives(gateway, rt_db, "per_table", "rel", "public.widgets"))


POLICY_SETS = """
CREATE TABLE rt.stamped (at timestamptz PRIMARY KEY, note text);
GRANT SELECT ON rt.stamped TO student, manager;
INSERT INTO rt.stamped VALUES ('2026-01-02 03:04:05+00', 'first');
-- a table owner's policy on its own table, which runs as each subscriber in the gateway's
-- check sessions: it changes a pinned setting for the rest of the transaction
CREATE FUNCTION rt.sneaky() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('TimeZone', 'Asia/Kolkata', false);
    PERFORM pg_catalog.set_config('quote_all_identifiers', 'on', false);
    RETURN true;
END $$;
CREATE POLICY sneaky ON rt.notes AS RESTRICTIVE FOR SELECT TO manager USING (rt.sneaky());
"""


def test_a_policy_changing_settings_reaches_other_checks(
    gateway_factory: Callable[..., GatewayProcess], rt_db: str,  # noqa: F811
    conn: psycopg.Connection[Any],
) -> None:  # fmt: skip
    """The owner of one enabled table writes an RLS policy that calls set_config('TimeZone',
    ..., false) (and quote_all_identifiers). The gateway checks every group of a batch in
    one transaction of one check session (delivery._visible), so the next group's rows (of
    another table, for the same or another identity) were read in the changed TimeZone: a
    timestamptz key read `2026-01-02T08:34:05+05:30`, not the log's `...+00:00`, and both
    subscribers were told the row had left their view. as_identity sets the pinned settings
    again for each group. (The ROLLBACK at the end of a check restored them for the next
    checks: that held.)"""
    conn.execute(POLICY_SETS)
    realtime.enable(conn, "rt.stamped")
    gateway = gateway_factory(heartbeat=1)

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("manager"))
        assert (await ws.subscribe("n", table="rt.notes"))["type"] == "subscribed"
        reply = await ws.subscribe("s", table="rt.stamped")
        assert reply["type"] == "subscribed", reply
        assert [r["at"] for r in reply["rows"]] == ["2026-01-02T03:04:05+00:00"]
        student = token("student", sub="11111111-1111-1111-1111-111111111111")
        other = await WsClient.connect(gateway.ws_url, student)
        assert (await other.subscribe("s2", table="rt.stamped"))["type"] == "subscribed"
        with psycopg.connect(rt_db) as writer:  # one transaction: one batch, two tables
            writer.execute("INSERT INTO rt.notes (id, owner, body) VALUES (70, NULL, 'x')")
            writer.execute("UPDATE rt.stamped SET note = 'second'")
        got = await ws.wait_for(lambda m: m.get("type") == "change" and m["sub"] == "s",
                                timeout=8)  # fmt: skip
        got2 = await other.wait_for(lambda m: m.get("type") == "change", timeout=8)
        # the row exists, unchanged in its key, and both may read it; with the policy's
        # TimeZone in force the check read its key as 08:34:05+05:30 and reported the row
        # as gone from the view (row: None), to the manager and to the student alike
        assert (got["row"], got2["row"]) == (
            {"at": "2026-01-02T03:04:05+00:00", "note": "second"},
            {"at": "2026-01-02T03:04:05+00:00", "note": "second"},
        )
        await ws.close()
        await other.close()

    asyncio.run(main())


def test_capture_pins_every_value_setting_the_gateway_pins(conn: psycopg.Connection[Any]) -> None:
    """The settings live twice, as SET clauses of the capture functions (sql/schema.sql) and
    as config.VALUE_SETTINGS (the gateway's sessions, the WAL stream): they must agree."""
    for function in ("pyfuncs.realtime_capture()", "pyfuncs.realtime_wal_batch(integer)"):
        row = conn.execute(
            "SELECT proconfig FROM pg_proc WHERE oid = %s::regprocedure", [function]
        ).fetchone()
        assert row is not None
        pinned = dict(item.split("=", 1) for item in row[0])
        for name, value in {"search_path": SEARCH_PATH, **VALUE_SETTINGS}.items():
            assert pinned[name].replace(" ", "") == value, (function, name)
