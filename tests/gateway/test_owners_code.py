"""Code that table owners wrote runs in the gateway's sessions as subscribers: RLS policies,
the functions they call, domain checks when a filter value is converted (README, security
model). PostgreSQL lets that code undo SET ROLE, back to the session's login role. These
tests give it an owner who does exactly that and tries to take what that role can read, and
check what it gets: nothing of pyfuncs' own tables when the check connection logs in as a
role without grants on them (the recommended setup), and never a way out of the transaction
(NOTIFY, session settings, advisory locks) whatever the setup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.conftest import ensure_role

from .conftest import ROLES, SECRET, STUDENTS, GatewayProcess, WsClient, token

# the gateway's feed role: reads the change log and the key, writes the audit
FEED_GRANTS = """
GRANT SELECT ON pyfuncs.realtime_state, pyfuncs.realtime_commit, pyfuncs.realtime_change
    TO rt_feed;
GRANT INSERT ON pyfuncs.realtime_audit TO rt_feed;
GRANT EXECUTE ON FUNCTION pyfuncs.realtime_wal_capture(integer) TO rt_feed;
"""
# one login role for both (what README asked for before there were two)
ONE_ROLE_GRANTS = """
GRANT SELECT ON pyfuncs.realtime_state, pyfuncs.realtime_table, pyfuncs.realtime_commit,
    pyfuncs.realtime_change TO authenticator;
GRANT INSERT ON pyfuncs.realtime_audit TO authenticator;
GRANT EXECUTE ON FUNCTION pyfuncs.realtime_wal_capture(integer) TO authenticator;
"""

# mallory owns a schema (an application team's, say) and the tables and types in it
MALLORY = """
CREATE TABLE m.items (id int PRIMARY KEY, label text);
-- runs as whoever evaluates it: goes back to the session's login role, takes what it can
-- and tries every way out of the transaction it knows
CREATE FUNCTION m.peek() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    was text := current_user;
    key text;
    changes text;
BEGIN
    PERFORM set_config('role', 'none', true);   -- RESET ROLE
    BEGIN
        SELECT encode(position_key, 'hex') INTO key FROM pyfuncs.realtime_state;
    EXCEPTION WHEN insufficient_privilege THEN key := 'denied';
    END;
    BEGIN
        SELECT count(*)::text INTO changes FROM pyfuncs.realtime_change;
    EXCEPTION WHEN insufficient_privilege THEN changes := 'denied';
    END;
    PERFORM public.rt_witness(format('session=%s now=%s key=%s changes=%s',
                                     session_user, current_user, key, changes));
    PERFORM pg_notify('loot', coalesce(key, '') || ' ' || coalesce(changes, ''));
    PERFORM set_config('application_name', 'looted', false);  -- for the whole session
    PERFORM pg_advisory_lock(4242);                            -- held until unlocked
    PERFORM set_config('role', was, true);
    RETURN true;
END $$;
ALTER TABLE m.items ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON m.items FOR SELECT USING (m.peek());
INSERT INTO m.items VALUES (1, 'hello');
-- a table that only looks enabled: a trigger of mallory's own, named as pyfuncs names its
-- own, and a domain whose CHECK runs m.peek() when a filter value is converted
CREATE DOMAIN m.d AS int CHECK (m.peek());
CREATE TABLE m.fake (id int PRIMARY KEY, v m.d);
CREATE FUNCTION m.noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER pyfuncs_realtime AFTER INSERT ON m.fake FOR EACH ROW EXECUTE FUNCTION m.noop();
-- a domain whose CHECK puts what it found into its error message
CREATE FUNCTION m.shout(v int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'MALLORY-WAS-HERE %', v;
END $$;
CREATE DOMAIN m.loud AS int CHECK (m.shout(VALUE));
CREATE TABLE m.typed (id int PRIMARY KEY, v m.loud);
GRANT USAGE ON SCHEMA m TO student;
GRANT SELECT ON m.items, m.fake, m.typed TO student;
"""


@pytest.fixture
def witness(conn: psycopg.Connection[Any]) -> Iterator[Path]:
    """A file anything running in the database may append a line to: a channel out that no
    transaction's end undoes (PostgreSQL offers several, timing among them), standing for
    whatever code of table owners could use."""
    where = Path(tempfile.mkdtemp(prefix="pyfuncs-witness-"))
    os.chmod(where, 0o777)  # the server runs as another OS user
    seen = where / "seen"
    body = f"with open({str(seen)!r}, 'a') as f:\n    f.write(what + '\\n')\n"
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION public.rt_witness(what text) RETURNS void "
            "LANGUAGE plpython3u SECURITY DEFINER AS {}"
        ).format(sql.Literal(body))
    )
    try:
        yield seen
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def roles(rt_db: str, conn: psycopg.Connection[Any]) -> None:
    """The feed's login role, and mallory's (cluster-wide, like the academy's roles)."""
    ensure_role(conn, "rt_mallory")
    ensure_role(conn, "rt_feed", "LOGIN")


@pytest.fixture
def mallory(roles: None, conn: psycopg.Connection[Any], witness: Path) -> Path:
    """mallory's schema and tables; the administrator enabled m.items and m.typed (tables
    of an application team), not m.fake."""
    conn.execute("CREATE SCHEMA m AUTHORIZATION rt_mallory")
    conn.execute("SET ROLE rt_mallory")
    conn.execute(MALLORY)
    conn.execute("RESET ROLE")
    conn.execute("SELECT pyfuncs.enable_realtime('m.items'), pyfuncs.enable_realtime('m.typed')")
    return witness


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@contextlib.contextmanager
def listening(dsn: str) -> Iterator[list[str]]:
    """What arrives on the channel mallory NOTIFYs, while the block runs (and a moment after)."""
    got: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("LISTEN loot")
        yield got
        got.extend(n.payload for n in db.notifies(timeout=1.0))


def leftovers(dsn: str) -> list[tuple[Any, ...]]:
    """What the gateway's sessions kept: a session-level setting or an advisory lock."""
    with psycopg.connect(dsn) as db:
        return db.execute(
            "SELECT 'application_name', application_name FROM pg_stat_activity "
            "WHERE application_name = 'looted' "
            "UNION ALL SELECT 'advisory lock', objid::text FROM pg_locks "
            "WHERE locktype = 'advisory' AND objid = 4242"
        ).fetchall()


def as_role(dsn: str, role: str) -> str:
    return dsn.replace("postgres@", f"{role}@", 1)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def attack(gateway: GatewayProcess, rt_db: str) -> dict[str, Any]:
    """A student subscribes to mallory's enabled table, receives a change of it, and tries
    the table that only looks enabled and the noisy domain."""
    ws = await WsClient.connect(gateway.ws_url, token("student", STUDENTS[0]))
    replies = {"items": await ws.subscribe("items", table="m.items")}
    with psycopg.connect(rt_db, autocommit=True) as db:
        db.execute("INSERT INTO m.items VALUES (2, 'again')")
    replies["change"] = await ws.wait_for(lambda m: m["type"] == "change")
    replies["fake"] = await ws.subscribe(
        "fake", table="m.fake", filters=[{"column": "v", "op": "eq", "value": 1}]
    )
    replies["typed"] = await ws.subscribe(
        "typed", table="m.typed", filters=[{"column": "v", "op": "eq", "value": 1}]
    )
    await ws.close()
    return replies


def test_with_a_check_role_without_grants_owners_code_reaches_nothing_of_pyfuncs(
    rt_db: str, conn: psycopg.Connection[Any], mallory: Path, tmp_path: Path
) -> None:
    """The recommended setup: the feed logs in as its own role; the check connection as the
    authenticator, which has no grant on pyfuncs' tables."""
    conn.execute(FEED_GRANTS)
    log = tmp_path / "gateway.log"
    settings = {"PYFUNCS_GATEWAY_FEED_DSN": as_role(rt_db, "rt_feed")}
    gateway = GatewayProcess(as_role(rt_db, "authenticator"), settings, log=log).start()
    try:
        with listening(rt_db) as loot:
            replies = run(attack(gateway, rt_db))
        after = leftovers(rt_db)
        audited = conn.execute("SELECT count(*) FROM pyfuncs.realtime_audit").fetchone()
    finally:
        gateway.stop()
    assert replies["items"]["type"] == "subscribed"
    assert [r["id"] for r in replies["items"]["rows"]] == [1]
    assert replies["change"]["key"] == {"id": 2}  # the gateway works without those grants
    seen = lines(mallory)
    assert seen, "m.peek() never ran: the test tests nothing"
    assert all(line.startswith("session=authenticator now=authenticator") for line in seen)
    assert all("key=denied changes=denied" in line for line in seen), seen
    assert loot == [] and after == []
    assert audited is not None and audited[0] > 0  # the feed role writes the audit
    assert "may read the change log" not in log.read_text()  # no warning: nothing to warn of


def test_a_table_is_enabled_by_pyfuncs_capture_not_by_a_trigger_name(
    gateway: GatewayProcess, mallory: Path
) -> None:
    """m.fake has a trigger named pyfuncs_realtime: not_enabled, and converting the filter
    (which would run its domain's CHECK) is not even tried."""

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("student", STUDENTS[0]))
        reply = await ws.subscribe(
            "fake", table="m.fake", filters=[{"column": "v", "op": "eq", "value": 1}]
        )
        assert reply["code"] == "not_enabled", reply
        await ws.close()

    run(main())
    assert lines(mallory) == []


def test_a_refused_filter_value_does_not_carry_postgresqls_message(
    gateway: GatewayProcess, mallory: Path
) -> None:
    """A domain's CHECK may put anything in its error (what it read, as shown above): the
    subscriber is told which value its column's type refused, not what the type said."""

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("student", STUDENTS[0]))
        for filters in (
            [{"column": "v", "op": "eq", "value": 1}],
            [{"column": "v", "op": "in", "value": [1, 2]}],
        ):
            reply = await ws.subscribe("typed", table="m.typed", filters=filters)
            assert reply["code"] == "bad_filter", reply
            assert "MALLORY" not in reply["message"] and "refused" in reply["message"]
        await ws.close()

    run(main())


def test_with_one_login_role_nothing_leaves_the_transaction(
    rt_db: str, conn: psycopg.Connection[Any], mallory: Path, tmp_path: Path
) -> None:
    """One login role with the grants the feed needs: code run as a subscriber can read what
    that role reads (the gateway says so when it starts, and README asks for two roles), but
    every transaction it runs in is rolled back and cleared: its NOTIFY is never sent, its
    session settings and advisory locks do not outlive it."""
    conn.execute(ONE_ROLE_GRANTS)
    log = tmp_path / "gateway.log"
    gateway = GatewayProcess(as_role(rt_db, "authenticator"), {}, log=log).start()
    try:
        with listening(rt_db) as loot:
            replies = run(attack(gateway, rt_db))
        after = leftovers(rt_db)
    finally:
        gateway.stop()
    assert replies["items"]["type"] == "subscribed" and replies["change"]["key"] == {"id": 2}
    seen = lines(mallory)
    assert seen and all("key=denied" not in line for line in seen)  # what two roles prevent
    assert loot == [] and after == []
    assert "check connection logs in as authenticator, which may read the change log" in (
        log.read_text()
    )


def test_the_feed_stopping_on_an_error_is_logged_and_started_again(
    rt_db: str, conn: psycopg.Connection[Any], roles: None, tmp_path: Path
) -> None:
    """An administrator's mistake (the feed role loses its grant): the hub logs the error,
    /health says so, and once the grant is back, delivery resumes where it stopped."""
    conn.execute(FEED_GRANTS)
    log = tmp_path / "gateway.log"
    settings = {"PYFUNCS_GATEWAY_FEED_DSN": as_role(rt_db, "rt_feed"),
                "PYFUNCS_GATEWAY_RETRY": "0.2", "PYFUNCS_GATEWAY_POLL": "0.5"}  # fmt: skip
    gateway = GatewayProcess(as_role(rt_db, "authenticator"), settings, log=log).start()

    async def main() -> None:
        ws = await WsClient.connect(gateway.ws_url, token("manager"))
        await ws.subscribe("n")
        conn.execute("REVOKE SELECT ON pyfuncs.realtime_change FROM rt_feed")
        conn.execute("INSERT INTO rt.notes (id) VALUES (1)")
        deadline = asyncio.get_running_loop().time() + 10
        while httpx.get(gateway.url + "/health").status_code != 503:
            assert asyncio.get_running_loop().time() < deadline, "the hub did not notice"
            await asyncio.sleep(0.1)
        conn.execute("GRANT SELECT ON pyfuncs.realtime_change TO rt_feed")
        conn.execute("INSERT INTO rt.notes (id) VALUES (2)")
        await ws.wait_for(lambda m: m.get("key") == {"id": 2}, timeout=30)
        assert [c["key"]["id"] for c in ws.changes()] == [1, 2]  # nothing lost
        assert httpx.get(gateway.url + "/health").status_code == 200
        await ws.close()

    try:
        run(main())
    finally:
        gateway.stop()
    text = log.read_text()
    assert "the change feed stopped on an unexpected error (InsufficientPrivilege" in text
    assert "Traceback" not in text


def test_serve_refuses_a_feed_role_it_cannot_work_with_in_one_line(rt_db: str, roles: None) -> None:
    """rt_feed without its grants: `pyfuncs serve` says so and stops, before any worker."""
    env = {**os.environ, "PYFUNCS_JWT_SECRET": SECRET, "PYFUNCS_JWT_ROLES": ROLES,
           "PYFUNCS_GATEWAY_FEED_DSN": as_role(rt_db, "rt_feed")}  # fmt: skip
    command = [sys.executable, "-m", "pyfuncs.cli", "--dsn", as_role(rt_db, "authenticator"),
               "serve", "--port", "1"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "PYFUNCS_GATEWAY_FEED_DSN" in result.stderr
    assert "GRANT SELECT ON pyfuncs.realtime_state, pyfuncs.realtime_commit" in result.stderr


# Functions that beat the built-ins the gateway's queries call, by a better argument match
# (pg_catalog comes first only for identical signatures), planted by a role that may create
# in public (the database's owner, or anyone with PostgreSQL 14's defaults) and in a schema
# named after a token role (which "$user" on the default search_path finds first).
HIJACKS = """
CREATE FUNCTION {schema}.unnest(v int2vector) RETURNS SETOF smallint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.rt_witness(format('{schema}.unnest ran as %s', current_user));
    RETURN QUERY SELECT x::smallint FROM pg_catalog.unnest(v::int2[]) x;
END $$;
CREATE FUNCTION {schema}.to_jsonb(r record) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.rt_witness(format('{schema}.to_jsonb ran as %s', current_user));
    RETURN pg_catalog.to_jsonb(r);
END $$;
CREATE FUNCTION {schema}.jsonb_build_array(v integer) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.rt_witness(format('{schema}.jsonb_build_array ran as %s', current_user));
    RETURN pg_catalog.jsonb_build_array(v);
END $$;
CREATE FUNCTION {schema}.jsonb_array_elements(v jsonb) RETURNS SETOF jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.rt_witness(format('{schema}.jsonb_array_elements ran as %s', current_user));
    RETURN QUERY SELECT * FROM pg_catalog.jsonb_array_elements(v);
END $$;
"""


def test_nothing_on_the_default_search_path_runs_in_the_gateways_sessions(
    rt_db: str, conn: psycopg.Connection[Any], roles: None, witness: Path, tmp_path: Path
) -> None:
    """rt_mallory (no superuser, no grant on rt.notes) plants look-alikes of the functions the
    gateway's queries call, in public and in a schema named `student`: none of them runs,
    whoever subscribes, while subscriptions, filters and changes work as ever."""
    conn.execute(FEED_GRANTS)
    conn.execute("GRANT CREATE ON SCHEMA public TO rt_mallory")
    conn.execute("CREATE SCHEMA student AUTHORIZATION rt_mallory")
    conn.execute("SET ROLE rt_mallory")
    for schema in ("public", "student"):
        conn.execute(HIJACKS.replace("{schema}", schema))
    conn.execute("GRANT USAGE ON SCHEMA student TO PUBLIC")
    conn.execute("RESET ROLE")
    conn.execute("INSERT INTO rt.notes (id, owner, body) VALUES (1, %s, 'mine')", [STUDENTS[0]])
    # the look-alikes do win where the search_path is not pinned
    with psycopg.connect(as_role(rt_db, "authenticator"), autocommit=True) as plain:
        plain.execute("SET ROLE student")
        plain.execute("SELECT count(*) FROM unnest('1 2'::int2vector)")
    assert lines(witness) == ["student.unnest ran as student"]
    witness.unlink()
    settings = {"PYFUNCS_GATEWAY_FEED_DSN": as_role(rt_db, "rt_feed")}
    gateway = GatewayProcess(as_role(rt_db, "authenticator"), settings,
                             log=tmp_path / "gateway.log").start()  # fmt: skip

    async def main() -> None:
        for role, sub in (("student", STUDENTS[0]), ("manager", None)):
            ws = await WsClient.connect(gateway.ws_url, token(role, sub))
            plain = await ws.subscribe("all")
            assert plain["type"] == "subscribed" and [r["id"] for r in plain["rows"]] == [1]
            filtered = await ws.subscribe(
                "in", filters=[{"column": "id", "op": "in", "value": [1, 2]}]
            )
            assert filtered["type"] == "subscribed", filtered
            with psycopg.connect(rt_db, autocommit=True) as db:
                db.execute("UPDATE rt.notes SET n = n + 1 WHERE id = 1")
            await ws.wait_for(lambda m: m["type"] == "change" and m["sub"] == "in")
            await ws.close()

    try:
        run(main())
    finally:
        gateway.stop()
    assert lines(witness) == []
