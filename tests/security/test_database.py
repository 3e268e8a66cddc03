"""What `pyfuncs install` creates, tried as a login role with no privileges (README "Security
model"): no function runs another role's code with its owner's rights, nothing lets anyone
write the change log or hold pyfuncs' locks, and every function's privileges are justified."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from pyfuncs import capture, realtime
from pyfuncs import deploy as deploying
from pyfuncs.embedded import SUPERUSER, Cluster
from tests.conftest import ensure_role

from .conftest import is_superuser

# Every function in the pyfuncs schema: (SECURITY DEFINER?, may PUBLIC execute it?,
# search_path pinned?) and why. A new function, or a change to one, fails the audit until it
# is added here with its reason.
FUNCTIONS = {
    "pyfuncs.boot()": (False, True, True,
        "runs as its caller: every routine loads the runtime through it"),
    "pyfuncs.current_user_id()": (False, True, False,
        "caller's rights; SQL-standard body, bound at creation; inlined into RLS policies"),
    "pyfuncs.jwt_claim(text)": (False, True, False,
        "caller's rights; SQL-standard body, bound at creation; inlined into RLS policies"),
    "pyfuncs.jwt_claims()": (False, True, False,
        "caller's rights; SQL-standard body, bound at creation; inlined into RLS policies"),
    "pyfuncs.set_identity(text,text)": (False, True, True,
        "caller's rights: the login role switching to a token's role, as SET ROLE would"),
    "pyfuncs.enable_realtime(regclass)": (False, True, True,
        "caller's rights: needs the owner's privileges on pyfuncs.realtime_table"),
    "pyfuncs.disable_realtime(regclass)": (False, True, True,
        "caller's rights: needs the owner's privileges on pyfuncs.realtime_table"),
    "pyfuncs.prune_realtime(interval)": (False, True, True,
        "caller's rights: needs DELETE on the change log"),
    "pyfuncs.forbid_change()": (False, False, True,
        "trigger; only its owner may attach it"),
    "pyfuncs.realtime_image(anyelement,oid)": (False, False, True,
        "called by realtime_capture only; converts with output functions, never casts"),
    "pyfuncs.realtime_capture()": (True, False, True,
        "writers need no privileges on the change log; only its owner may attach it, it "
        "checks the table is enabled and calls no cast or function another role defines"),
    "pyfuncs.realtime_partition_truncate()": (True, False, True,
        "statement trigger of a partition (trigger mode): writers need no privileges on the "
        "change log; only its owner may attach it, it records a transaction for a resync and "
        "calls no code another role defines"),
    "pyfuncs.realtime_partition_triggers(regclass)": (False, False, True,
        "puts that trigger on the partitions of an enabled table, for enable_realtime and "
        "realtime_new_partitions (the owner's rights)"),
    "pyfuncs.realtime_new_partitions()": (True, False, True,
        "event trigger (ddl_command_end) for any role's CREATE TABLE and ALTER TABLE: reads "
        "the catalog and the enabled tables, attaches only pyfuncs' partition trigger, to "
        "partitions of enabled tables; cannot be called directly"),
    "pyfuncs.realtime_sequence()": (False, False, True,
        "trigger mode's positions; for realtime_wal_batch and realtime_set_mode (the owner's "
        "rights), under the capture lock"),
    "pyfuncs.realtime_slot_name()": (False, True, True,
        "caller's rights: names this database's slot, for status queries"),
    "pyfuncs.realtime_wal_value(text,jsonb)": (False, True, False,
        "caller's rights, pure: a wal2json value as to_jsonb gives it; built-in casts only"),
    "pyfuncs.realtime_tree(regclass)": (False, True, True,
        "caller's rights: reads the catalog, for the key and identity checks"),
    "pyfuncs.realtime_check_key(regclass)": (False, True, True,
        "caller's rights: reads the catalog, raises when a primary key is DEFERRABLE"),
    "pyfuncs.realtime_check_identity(regclass)": (False, True, True,
        "caller's rights: reads the catalog, raises when a table has no replica identity"),
    "pyfuncs.realtime_set_mode(text)": (False, True, True,
        "caller's rights: needs the owner's privileges (ALTER TABLE, realtime_state)"),
    "pyfuncs.realtime_wal_slot()": (True, False, True,
        "creating a slot needs REPLICATION; makes only this database's slot"),
    "pyfuncs.realtime_wal_capture(integer)": (True, False, True,
        "reading the slot needs REPLICATION; the consumer's role needs EXECUTE only"),
    "pyfuncs.realtime_wal_drop()": (True, False, True,
        "dropping the slot needs REPLICATION; drops only this database's slot"),
    "pyfuncs.realtime_wal_batch(integer)": (False, False, True,
        "one batch, for realtime_wal_capture and realtime_set_mode (the owner's rights)"),
    "pyfuncs.realtime_wal_apply(name, pg_lsn, integer, pg_snapshot, bigint, bigint[], bigint[], "
    "text[])": (False, False, True,
        "called by realtime_wal_batch, its slow path and realtime_wal_write only"),
    "pyfuncs.realtime_wal_write(text, bigint[], bigint[], text[])": (True, False, True,
        "writes the change log as told: EXECUTE for the streaming consumer's role only, "
        "and it refuses a session user without REPLICATION"),
    "pyfuncs.realtime_wal_txid(bigint, bigint)": (False, False, False,
        "pure arithmetic; SQL-standard body, bound at creation"),
    "pyfuncs.realtime_wal_add_tables()": (False, False, True,
        "wal2json's add-tables list, for realtime_wal_apply and realtime_wal_write"),
    "pyfuncs.realtime_wal_free(name)": (False, False, True,
        "ends a walsender streaming the slot, as its caller (the owner or an admin)"),
    "pyfuncs.realtime_wal_finish(pg_lsn, pg_lsn, bigint, bigint, boolean)": (False, False, True,
        "the end of a batch: warns of skips, heartbeat, notifies the gateways"),
    "pyfuncs.realtime_wal_probe(name, pg_lsn, integer, pg_snapshot, bigint)": (False, False, True,
        "called by realtime_wal_isolate only; undoes what it tried"),
    "pyfuncs.realtime_wal_isolate(name, pg_lsn, integer, pg_snapshot, bigint, text, text, text)":
        (False, False, True, "realtime_wal_batch's slow path: finds and skips a transaction"),
    "pyfuncs.realtime_wal_tables()": (False, False, True,
        "the captured tables and partitions, for the consumer and enabling"),
    "pyfuncs.realtime_wal_names(pg_lsn)": (False, False, True,
        "called by the batches, enabling and the event trigger; writes the names it saw"),
    "pyfuncs.realtime_wal_names_stale()": (False, False, True,
        "whether the names realtime_wal_names keeps differ from the catalog's"),
    "pyfuncs.realtime_wal_names_reset()": (False, False, True,
        "called when a slot is made and when switching to wal"),
    "pyfuncs.realtime_capture_lock_take()": (False, False, True,
        "takes the capture lock, which only the owner may (deploy_lock's habit)"),
    "pyfuncs.realtime_wal_json_refusal(text)": (False, False, True,
        "called by realtime_wal_apply only; a cast to jsonb and nothing else"),
    "pyfuncs.realtime_wal_transient(text)": (False, False, True,
        "pure: which SQLSTATEs the consumer never skips a transaction for"),
}  # fmt: skip

# What PUBLIC may do with pyfuncs' tables (nothing else is granted to anyone).
TABLE_GRANTS = {
    ("runtime_module", None, "SELECT"),  # routines load the runtime as their caller
    ("routine_code", "key", "SELECT"),  # and their modules compiled ahead (the source is in
    ("routine_code", "code", "SELECT"),  # pg_proc anyway)
    ("routine", "id", "SELECT"),  # signatures, for clients calling by name
    ("routine", "schema_name", "SELECT"),
    ("routine", "name", "SELECT"),
    ("routine", "kind", "SELECT"),
    ("routine", "live_version", "SELECT"),
    ("routine_version", "routine_id", "SELECT"),
    ("routine_version", "version", "SELECT"),
    ("routine_version", "identity_args", "SELECT"),
    ("routine_version", "signature", "SELECT"),
}

AUDIT = """
SELECT p.oid::regprocedure::text, p.prosecdef, pg_get_userbyid(p.proowner),
       EXISTS (SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
               WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'),
       coalesce(p.proconfig, '{}'),
       ARRAY(SELECT pg_get_userbyid(a.grantee)
             FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
             WHERE a.grantee NOT IN (0, p.proowner))
FROM pg_proc p WHERE p.pronamespace = 'pyfuncs'::regnamespace
"""


def test_every_function_pyfuncs_installs_is_accounted_for(conn: psycopg.Connection[Any]) -> None:
    found = {row[0]: row[1:] for row in conn.execute(AUDIT)}
    assert set(found) == {k.replace(", ", ",") for k in FUNCTIONS}, "unlisted or missing"
    for name, (definer, public, pinned, _why) in FUNCTIONS.items():
        secdef, owner, public_execute, config, others = found[name.replace(", ", ",")]
        assert (secdef, public_execute) == (definer, public), name
        assert owner == "postgres" and others == [], f"{name}: owned by {owner}, granted {others}"
        paths = [c for c in config if c.startswith("search_path=")]
        assert paths == (["search_path=pg_catalog, pg_temp"] if pinned else []), name
        if secdef:
            assert not public_execute, f"{name} is SECURITY DEFINER and executable by PUBLIC"


def test_pyfuncs_tables_grant_public_only_reading_signatures_and_the_runtime(
    conn: psycopg.Connection[Any],
) -> None:
    grants = set()
    for table, column, acl in conn.execute(
        "SELECT c.relname, NULL, c.relacl FROM pg_class c "
        "WHERE c.relnamespace = 'pyfuncs'::regnamespace AND c.relacl IS NOT NULL "
        "UNION ALL SELECT c.relname, a.attname::text, a.attacl FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid WHERE c.relnamespace = 'pyfuncs'::regnamespace "
        "AND a.attacl IS NOT NULL"
    ):
        for grantee, privilege in conn.execute(
            "SELECT a.grantee, a.privilege_type FROM aclexplode(%s::aclitem[]) a "
            "JOIN pg_roles r ON true WHERE r.rolname = 'postgres' AND a.grantee <> r.oid",
            [acl],
        ):
            assert grantee == 0, f"{table}.{column}: {privilege} granted to {grantee}"
            grants.add((table, column, privilege))
    assert grants == TABLE_GRANTS


USER_TYPES = """
CREATE SCHEMA m AUTHORIZATION mallory;
SET ROLE mallory;
CREATE TABLE m.log (what text);
CREATE TYPE m.mood AS ENUM ('calm', 'evil');
CREATE FUNCTION m.become_superuser(m.mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO m.log VALUES ('ran as ' || current_user);
    EXECUTE 'ALTER ROLE mallory SUPERUSER';
    RETURN '"pwned"';
END $$;
CREATE CAST (m.mood AS json) WITH FUNCTION m.become_superuser(m.mood);
CREATE DOMAIN m.mood_domain AS m.mood;
CREATE TYPE m.pair AS (a m.mood, b int);
CREATE TYPE m.moods AS RANGE (subtype = float8);
CREATE FUNCTION m.range_to_json(m.moods) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO m.log VALUES ('range cast ran as ' || current_user);
    EXECUTE 'ALTER ROLE mallory SUPERUSER';
    RETURN '1';
END $$;
CREATE CAST (m.moods AS json) WITH FUNCTION m.range_to_json(m.moods);
CREATE DOMAIN m.positive AS int CHECK (VALUE > 0);
CREATE TABLE m.t (id int PRIMARY KEY, note text);
RESET ROLE;
"""


def test_a_capture_trigger_cannot_be_attached_to_another_table(
    conn: psycopg.Connection[Any], mallory: psycopg.Connection[Any]
) -> None:
    # the attack that made any login role superuser: a temporary table with a column whose
    # type casts to json through a function of the attacker's, and the capture trigger
    mallory.execute("CREATE TYPE pg_temp.e AS ENUM ('a')")
    mallory.execute(
        "CREATE FUNCTION pg_temp.evil(pg_temp.e) RETURNS json LANGUAGE plpgsql AS "
        "$$ BEGIN EXECUTE 'ALTER ROLE mallory SUPERUSER'; RETURN '1'; END $$"
    )
    mallory.execute("CREATE CAST (pg_temp.e AS json) WITH FUNCTION pg_temp.evil(pg_temp.e)")
    mallory.execute("CREATE TEMP TABLE t (x pg_temp.e)")
    for function in ("realtime_capture", "forbid_change"):
        for when in ("AFTER INSERT ON t FOR EACH ROW", "AFTER TRUNCATE ON t"):
            with pytest.raises(errors.InsufficientPrivilege):
                mallory.execute(f"CREATE TRIGGER x {when} EXECUTE FUNCTION pyfuncs.{function}()")
    mallory.execute("INSERT INTO t VALUES ('a')")
    assert not is_superuser(conn)
    # and were it attached (only a superuser can), it captures only enabled tables
    conn.execute("CREATE TABLE public.not_enabled (id int PRIMARY KEY)")
    conn.execute("CREATE TRIGGER x AFTER INSERT ON public.not_enabled FOR EACH ROW "
                 "EXECUTE FUNCTION pyfuncs.realtime_capture()")  # fmt: skip
    with pytest.raises(errors.InsufficientPrivilege, match="not enabled for realtime"):
        conn.execute("INSERT INTO public.not_enabled VALUES (1)")


def test_casts_of_an_enabled_tables_types_never_run_as_the_capture_owner(
    conn: psycopg.Connection[Any], mallory: psycopg.Connection[Any]
) -> None:
    """mallory owns an enabled table and the types of its columns: enum, domain over it,
    array of it, composite containing it, a range, each with a cast to json of hers."""
    conn.execute(USER_TYPES)
    realtime.enable(conn, "m.t")  # enabled while harmless, then altered by its owner
    mallory.execute(
        "ALTER TABLE m.t ADD COLUMN mood m.mood, ADD COLUMN wrapped m.mood_domain, "
        "ADD COLUMN moods m.mood[], ADD COLUMN pair m.pair, ADD COLUMN span m.moods, "
        "ADD COLUMN n m.positive"
    )
    mallory.execute(
        "INSERT INTO m.t VALUES (1, 'x', 'evil', 'evil', '{evil,calm}', '(evil,2)', '[1,2)', 5)"
    )
    mallory.execute("UPDATE m.t SET note = 'y'")
    mallory.execute("DELETE FROM m.t")
    assert not is_superuser(conn)
    assert conn.execute("SELECT count(*) FROM m.log").fetchone() == (0,)
    rows = conn.execute(
        "SELECT op, new_row, old_row FROM pyfuncs.realtime_change ORDER BY id"
    ).fetchall()
    assert [op for op, _, _ in rows] == ["INSERT", "UPDATE", "DELETE"]
    # the columns of types defined in the database arrive as their text; domains over
    # built-in types as their base type
    assert rows[0][1] == {"id": 1, "note": "x", "mood": "evil", "wrapped": "evil",
                          "moods": "{evil,calm}", "pair": "(evil,2)", "span": "[1,2)", "n": 5}  # fmt: skip
    assert rows[2][2]["note"] == "y"


def test_a_tables_changes_are_recorded_only_by_capture(
    conn: psycopg.Connection[Any], mallory: psycopg.Connection[Any]
) -> None:
    for statement in (
        "INSERT INTO pyfuncs.realtime_change (txid, schema_name, table_name, op) "
        "VALUES (pg_current_xact_id(), 'public', 'x', 'DELETE')",
        "INSERT INTO pyfuncs.realtime_commit (txid) VALUES (pg_current_xact_id())",
        "UPDATE pyfuncs.realtime_state SET pruned_through = 0",
        "SELECT pyfuncs.realtime_image(1, 0)",
        "SELECT pyfuncs.prune_realtime('0 seconds')",
        "SELECT position_key FROM pyfuncs.realtime_state",
        "SELECT * FROM pyfuncs.realtime_change",
    ):
        with pytest.raises(errors.InsufficientPrivilege):
            mallory.execute(statement)


def test_partitions_of_an_enabled_table_are_captured_under_its_name(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute("CREATE TABLE public.parts (id int PRIMARY KEY) PARTITION BY RANGE (id)")
    conn.execute(
        "CREATE TABLE public.parts_1 PARTITION OF public.parts FOR VALUES FROM (0) TO (10)"
    )
    realtime.enable(conn, "public.parts")
    conn.execute("INSERT INTO public.parts VALUES (1)")
    assert conn.execute(
        "SELECT schema_name, table_name, new_row FROM pyfuncs.realtime_change"
    ).fetchall() == [("public", "parts", {"id": 1})]


# The tables whose locks serialise pyfuncs' work, and the deployments table an earlier
# release locked (and the commit sequencer, which 0014 dropped).
LOCKED = ("pyfuncs.realtime_capture_lock", "pyfuncs.deploy_lock", "pyfuncs.deployment")


def test_pyfuncs_locks_cannot_be_held_by_another_role(
    dsn: str, conn: psycopg.Connection[Any], mallory: psycopg.Connection[Any], tmp_path: Any
) -> None:
    conn.execute("CREATE TABLE public.w (id int PRIMARY KEY, n int)")
    conn.execute("GRANT ALL ON public.w TO mallory")
    realtime.enable(conn, "public.w")
    # the advisory locks pyfuncs took before, and the tables it locks now
    mallory.execute("SELECT pg_advisory_lock(hashtext('pyfuncs.realtime')), "
                    "pg_advisory_lock(hashtext('pyfuncs.deploy'))")  # fmt: skip
    for table in LOCKED:
        for statement in (
            "LOCK TABLE {} IN ACCESS SHARE MODE",
            "LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE",
            "SELECT FROM {} FOR UPDATE",
            "COMMENT ON TABLE {} IS 'mine'",
            "ALTER TABLE {} ADD COLUMN x int",
            "CREATE INDEX ON {} ((1))",
        ):
            with mallory.transaction(), pytest.raises(errors.InsufficientPrivilege):
                mallory.execute(statement.format(table))
    # Statements only prepared lock what they name before any privilege check; they are
    # held, with whatever else mallory can take, while the work below runs.
    mallory.execute("BEGIN")
    for n, table in enumerate(LOCKED):
        mallory.execute(f"ANALYZE {table}")  # skipped with a warning, its lock let go
        for m, statement in enumerate((
            "SELECT FROM {} FOR UPDATE", "SELECT FROM {} FOR SHARE", "DELETE FROM {}",
            "INSERT INTO {} DEFAULT VALUES",
        )):  # fmt: skip
            mallory.execute(f"PREPARE p{n}_{m} AS {statement.format(table)}")
    held = mallory.execute(
        "SELECT relation::regclass::text, mode FROM pg_locks WHERE pid = pg_backend_pid() "
        "AND relation = ANY(%s::regclass[])",
        [list(LOCKED)],
    ).fetchall()
    assert ("pyfuncs.realtime_capture_lock", "RowShareLock") in held  # the attack is live
    done: list[float] = []

    def work() -> None:
        start = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SET statement_timeout = '5s'")
            other.execute("INSERT INTO public.w VALUES (1, 1)")  # a capturing commit
            capture.capture(other)  # a batch (giving it its position)
            module = tmp_path / "lockfree.py"
            module.write_text(
                "from pyfuncs import stored_function\n\n"
                "@stored_function(schema='lk')\ndef one() -> int:\n    return 1\n"
            )
            deploying.deploy(other, str(module))  # a deploy
        done.append(time.monotonic() - start)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(20)
    mallory.execute("ROLLBACK")
    assert done and done[0] < 10, "a capturing commit, a batch or a deploy waited for mallory"
    assert conn.execute("SELECT count(*) FROM pyfuncs.realtime_commit "
                        "WHERE position IS NOT NULL").fetchone() == (1,)  # fmt: skip


# Roles no token may become although a login role may be a member of them: each is, or can
# make itself, a superuser, or reads or writes what no application role should.
POWERFUL = {
    "tok_createrole": "CREATEROLE",
    "tok_replication": "REPLICATION",
    "tok_bypassrls": "BYPASSRLS",
    "tok_program": "IN ROLE pg_execute_server_program",
    "tok_readfiles": "IN ROLE pg_read_server_files",
    "tok_writefiles": "IN ROLE pg_write_server_files",
    "tok_readall": "IN ROLE pg_read_all_data",
    "tok_writeall": "IN ROLE pg_write_all_data",
    "tok_signal": "IN ROLE pg_signal_backend",  # (other roles' sessions: cancel, terminate)
    "tok_monitor": "IN ROLE pg_monitor",
    "tok_stats": "IN ROLE pg_read_all_stats",
    "tok_settings": "IN ROLE pg_read_all_settings",
    "tok_scan": "IN ROLE pg_stat_scan_tables",
    "tok_checkpoint": "IN ROLE pg_checkpoint",
    "tok_nested": "IN ROLE tok_writefiles",  # through another role
    # members of a role with such an attribute may SET ROLE to it (with or without INHERIT)
    "tok_boss": "SUPERUSER",
    "tok_under_boss": "IN ROLE tok_boss",
    "tok_under_under_boss": "IN ROLE tok_under_boss",
    "tok_under_createrole": "IN ROLE tok_createrole",
    "tok_under_replication": "IN ROLE tok_replication",
    "tok_under_bypassrls": "IN ROLE tok_bypassrls",
    "tok_noinherit_boss": "NOINHERIT IN ROLE tok_boss",
}


@pytest.fixture(scope="session")
def gatekeeper(cluster: Cluster) -> str:
    """A NOINHERIT login role that is a member of every POWERFUL role and of `student`."""
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        for role, options in POWERFUL.items():
            ensure_role(conn, role, "NOLOGIN " + options)
        ensure_role(conn, "gatekeeper", "LOGIN NOINHERIT")
        for role in (*POWERFUL, "student"):
            conn.execute(sql.SQL("GRANT {} TO gatekeeper").format(sql.Identifier(role)))
    return "gatekeeper"


def test_set_identity_refuses_what_no_token_may_become(
    dsn: str, authenticator_dsn: str, gatekeeper: str
) -> None:
    with psycopg.connect(authenticator_dsn) as conn:
        for role in ("none", "", "postgres", "authenticator", "no_such_role", "NONE", "Student"):
            with conn.transaction(), pytest.raises(errors.InvalidAuthorizationSpecification):
                conn.execute("SELECT pyfuncs.set_identity(%s, '{}')", [role])
    with psycopg.connect(dsn.replace(f"{SUPERUSER}@", "gatekeeper@", 1)) as conn:
        for role in POWERFUL:
            with conn.transaction():  # a member may become it by itself
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            with (
                conn.transaction(),
                pytest.raises(errors.InvalidAuthorizationSpecification, match="may not act as"),
            ):
                conn.execute("SELECT pyfuncs.set_identity(%s, '{}')", [role])
        with conn.transaction():
            conn.execute("SELECT pyfuncs.set_identity('student', '{\"sub\": \"s1\"}')")
            assert conn.execute("SELECT current_user, pyfuncs.jwt_claim('sub')").fetchone() == (
                "student", "s1")  # fmt: skip
    # the database's owner (a member of pg_database_owner here)
    with psycopg.connect(dsn, autocommit=True) as su:
        ensure_role(su, "tok_owner")
        su.execute(sql.SQL("ALTER DATABASE {} OWNER TO tok_owner").format(
            sql.Identifier(su.info.dbname)))  # fmt: skip
    with (
        psycopg.connect(authenticator_dsn) as conn,
        pytest.raises(errors.InvalidAuthorizationSpecification, match="may not act as"),
    ):
        conn.execute("SELECT pyfuncs.set_identity('tok_owner', '{}')")


def test_pyfuncs_and_system_tables_cannot_be_enabled(conn: psycopg.Connection[Any]) -> None:
    for table in ("pyfuncs.realtime_change", "pyfuncs.realtime_table", "pyfuncs.deployment",
                  "information_schema.sql_features", "pg_catalog.pg_class"):  # fmt: skip
        with pytest.raises(errors.InsufficientPrivilege, match="belongs to pyfuncs or"):
            conn.execute("SELECT pyfuncs.enable_realtime(%s)", [table])
    assert conn.execute("SELECT count(*) FROM pyfuncs.realtime_table").fetchone() == (0,)


def test_commit_wake_ups_carry_nothing(
    conn: psycopg.Connection[Any], mallory: psycopg.Connection[Any]
) -> None:
    """Any role may LISTEN: the wake-ups say that something committed, not its position."""
    conn.execute("CREATE TABLE public.w (id int PRIMARY KEY)")
    realtime.enable(conn, "public.w")
    mallory.execute("LISTEN pyfuncs_realtime")
    conn.execute("INSERT INTO public.w VALUES (1)")
    capture.capture(conn)  # (the batch that gives positions wakes the consumers)
    conn.execute("INSERT INTO public.w VALUES (2)")
    capture.capture(conn)
    heard = [n.payload for n in mallory.notifies(timeout=1, stop_after=2)]
    assert heard == ["", ""]


def test_helpers_are_bound_where_they_were_created(
    conn: psycopg.Connection[Any], mallory: psycopg.Connection[Any]
) -> None:
    """A caller's search_path cannot swap the functions and operators pyfuncs' helpers use."""
    conn.execute("CREATE SCHEMA m AUTHORIZATION mallory")
    mallory.execute(
        "CREATE FUNCTION m.current_setting(text, boolean) RETURNS text LANGUAGE sql "
        'AS $$ SELECT \'{"sub": "00000000-0000-0000-0000-000000000001"}\' $$'
    )
    mallory.execute("CREATE FUNCTION m.same(text, text) RETURNS boolean LANGUAGE sql "
                    "AS $$ SELECT true $$")  # fmt: skip
    mallory.execute("CREATE OPERATOR m.= (function = m.same, leftarg = text, rightarg = text)")
    mallory.execute("SET search_path = m, pg_catalog")
    mallory.execute("SELECT set_config('request.jwt.claims', '{\"sub\": \"\"}', false)")
    assert mallory.execute("SELECT pyfuncs.jwt_claims(), pyfuncs.current_user_id()").fetchone() == (
        {"sub": ""}, None)  # fmt: skip
    mallory.execute("SELECT pyfuncs.boot()")  # loads the runtime by its own name, still


CAPTURE_LOCK_HOLDERS = """
SELECT count(*) FROM pg_locks l
WHERE l.locktype = 'relation' AND l.relation = 'pyfuncs.realtime_capture_lock'::regclass
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
SLOTS = "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"


@pytest.mark.exclusive  # (what makes slots elsewhere waits for its transactions meanwhile)
@pytest.mark.parametrize(("first", "bound"), [(True, 1), (False, None)])
def test_enabling_a_table_a_login_role_holds_waits_a_bounded_time_under_the_capture_lock(
    dsn: str, conn: psycopg.Connection[Any], mallory: psycopg.Connection[Any], first: bool,
    bound: int | None,
) -> None:  # fmt: skip
    """Enabling a table in wal mode took the capture lock (making the slot), then waited for
    the table's locks (its triggers) with no bound: a login role that may not even read the
    table holds one by naming it in a PREPARE, and every table's capture waited for as long
    as it kept its transaction open (round 67's). The table is locked within the bound now
    (10 s, or the caller's shorter lock_timeout), the enabling fails saying which table, the
    capture lock is let go, and a slot it made is dropped."""
    conn.execute("CREATE TABLE public.captured (id int PRIMARY KEY)")
    conn.execute("CREATE TABLE public.next_one (id int PRIMARY KEY)")
    capture.set_mode(conn, "wal")
    if not first:
        realtime.enable(conn, "public.captured")
    mallory.execute("BEGIN")
    mallory.execute("PREPARE hold AS DELETE FROM public.next_one")  # a lock, unchecked
    try:
        with psycopg.connect(dsn, autocommit=True) as admin:
            if bound is not None:
                admin.execute(sql.SQL("SET lock_timeout = {}").format(f"{bound}s"))
            started = time.monotonic()
            with pytest.raises(psycopg.errors.LockNotAvailable, match="next_one"):
                admin.execute("SELECT pyfuncs.enable_realtime('public.next_one')")
            assert (bound or 10) <= time.monotonic() - started < (bound or 10) + 2
            assert admin.execute(CAPTURE_LOCK_HOLDERS).fetchone() == (0,)
            assert admin.execute(SLOTS).fetchone() == (0 if first else 1,)
    finally:
        mallory.execute("ROLLBACK")
    realtime.enable(conn, "public.next_one")  # and once the lock is gone, it is enabled


@pytest.mark.exclusive  # (its open transaction holds up slots made elsewhere meanwhile)
def test_making_the_slot_waits_a_bounded_time_for_a_login_roles_open_transaction(
    dsn: str, conn: psycopg.Connection[Any], mallory_role: str
) -> None:
    """Making the slot (the consumer does, for a lost one) waits for every transaction open
    in the cluster, holding the capture lock: a login role's open transaction in another
    database held it for as long as it liked (round 67's). It gives up after 10 s (or the
    caller's shorter lock_timeout), saying why, and lets the lock go."""
    conn.execute("CREATE TABLE public.captured (id int PRIMARY KEY)")
    capture.set_mode(conn, "wal")
    realtime.enable(conn, "public.captured")
    conn.execute("SELECT pg_drop_replication_slot(pyfuncs.realtime_slot_name())")  # "lost"
    elsewhere = dsn.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(elsewhere.replace(f"{SUPERUSER}@", "mallory@", 1)) as squatter:
        squatter.execute("SELECT pg_current_xact_id()")  # left open
        with psycopg.connect(dsn, autocommit=True) as admin:
            started = time.monotonic()
            with pytest.raises(psycopg.errors.LockNotAvailable, match="making the realtime slot"):
                admin.execute("SELECT pyfuncs.realtime_wal_slot()")
            assert 10 <= time.monotonic() - started < 12
            assert admin.execute(CAPTURE_LOCK_HOLDERS).fetchone() == (0,)
        squatter.rollback()
    assert conn.execute("SELECT pyfuncs.realtime_wal_slot()").fetchone() == (True,)
