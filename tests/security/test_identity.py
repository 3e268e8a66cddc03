"""JWT identities: the allow-list decides which roles a token may take, and the database
refuses, whatever the configuration says, a superuser, the login role and unknown roles (the
gateway's side is in tests/gateway/test_protocol.py)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import psycopg
import pytest

from pyfuncs import PermissionDenied
from pyfuncs import deploy as deploying
from pyfuncs.auth import JwtVerifier
from pyfuncs.client import Client
from pyfuncs.errors import AuthError, IdentityRefused

from ..integration.modules import identity_mod

SECRET = "identity-test-secret-0123456789-0123456789"
# a careless allow-list: the database still refuses the last three
ROLES = ["student", "manager", "authenticator", "postgres", "ghost"]


def token(role: str, **claims: object) -> str:
    return jwt.encode({"role": role, "exp": time.time() + 60, **claims}, SECRET)


@pytest.mark.parametrize(
    ("role", "says"),
    [("authenticator", "may not act as"), ("postgres", "may not act as"),
     ("ghost", "does not exist")],
)  # fmt: skip
def test_the_database_refuses_roles_no_token_may_take(
    authenticator_dsn: str, role: str, says: str
) -> None:
    with Client(authenticator_dsn, jwt=JwtVerifier(secret=SECRET, roles=ROLES)) as client:
        with pytest.raises(IdentityRefused, match=says), client.as_user(token(role)).transaction():
            pass
        with client.as_user(token("student", sub="s")).transaction() as tx:  # the pool is fine
            assert tx.connection.execute("SELECT current_user").fetchone() == ("student",)
        with pytest.raises(AuthError, match="may not take"):
            client.as_user(token("none"))


# --- inside routines: the caller's identity for every query ---------------------------------

IDENT = """
CREATE SCHEMA ident;
CREATE FUNCTION ident.become_authenticator() RETURNS text LANGUAGE plpgsql AS
$$ BEGIN PERFORM set_config('role', 'none', true); RETURN current_user; END $$;
CREATE FUNCTION ident.whoami() RETURNS text LANGUAGE sql AS $$ SELECT current_user::text $$;
CREATE FUNCTION ident.switch_role(text) RETURNS boolean LANGUAGE plpgsql AS
$$ BEGIN PERFORM set_config('role', 'manager', false); RETURN true; END $$;
CREATE DOMAIN ident.switching AS text CHECK (ident.switch_role(VALUE));
CREATE TYPE ident.switching_row AS (a ident.switching);
GRANT USAGE ON SCHEMA ident TO student;
"""


@pytest.fixture
def ident(conn: psycopg.Connection[Any]) -> None:
    conn.execute(IDENT)
    deploying.deploy(conn, identity_mod)


@pytest.mark.parametrize("swallow", [False, True])
@pytest.mark.parametrize("attempt", sorted(identity_mod.ATTEMPTS))
def test_a_routine_cannot_leave_its_callers_identity(
    ident: None, authenticator_dsn: str, attempt: str, swallow: bool
) -> None:
    """Every spelling fails the call with 42501, even when the routine catches what its
    query raised; the caller's next call runs as itself."""
    with Client(authenticator_dsn, jwt=JwtVerifier(secret=SECRET, roles=["student"])) as client:
        student = client.as_user(token("student", sub="s1"))
        with pytest.raises(PermissionDenied, match=r"ident\.attempt tried to change its"):
            student.call("ident.attempt", name=attempt, swallow=swallow)
        assert student.call("ident.innocent") == "student s1"


def test_nor_through_a_cursor_or_as_a_superuser(ident: None, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:  # the deployer, trying a routine
        for statement in ("SELECT ident.through_cursor()",
                          "SELECT ident.attempt('session_authorization', true)"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="tried to change"):
                conn.execute(statement)
        assert conn.execute("SELECT current_user, session_user").fetchone() == (
            "postgres", "postgres")  # fmt: skip


@pytest.mark.parametrize("name", sorted(identity_mod.LATER))
def test_a_routine_cannot_leave_work_for_after_its_query(ident: None, dsn: str, name: str) -> None:
    """Deferred triggers, temporary tables, views and types, LISTEN: refused by PostgreSQL
    inside a routine's query, so nothing of the routine's runs at commit or is found by the
    session's next queries (another role's, in a pool). As the deployer, to be sure the
    refusal is not a missing privilege."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="security-restricted"):
            conn.execute("SELECT ident.later(%s)", [name])
        assert conn.execute(
            "SELECT current_user, count(*) FILTER (WHERE n.nspname LIKE 'pg_temp%%') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        ).fetchone() == ("postgres", 0)
        assert conn.execute(
            "SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname LIKE 'pg_temp%%'"
        ).fetchone() == (0,)


def test_a_routines_parameters_are_not_bound_to_temporary_types(ident: None, dsn: str) -> None:
    """A session's temporary types come first in its search path for types: made outside
    any routine (a pooled session's earlier user), a `pg_temp.text` whose check records
    what it sees would capture every routine's text parameters. db declares them as
    pg_catalog's."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.seen (v text)")
        conn.execute(
            "CREATE FUNCTION public.capture(v pg_catalog.text) RETURNS bool LANGUAGE sql "
            "AS $$ INSERT INTO public.seen VALUES (v) RETURNING true $$"
        )
        conn.execute("CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (public.capture(VALUE))")
        conn.execute("CREATE DOMAIN pg_temp.int8 AS pg_catalog.int8 CHECK (VALUE < 0)")
        assert conn.execute("SELECT ident.echo('s3cret', 7)").fetchone() == ("s3cret:7",)
        assert conn.execute("SELECT count(*) FROM public.seen").fetchone() == (0,)


GUARD = """
CREATE FUNCTION ident.guard(way text) RETURNS text LANGUAGE plpython3u AS $$
import ctypes, sys
plpy.execute("SELECT pyfuncs.boot()")
identity = sys.modules["pyfuncs_pg.identity"]
postgres = ctypes.CDLL(None)
if way == "variables":  # PostgreSQL's variables, found in its machine code
    identity.enter, identity.leave, _ = identity._directly(*identity._variables(postgres))
elif way == "functions":  # PostgreSQL's functions, as where the variables are not found
    identity.enter, identity.leave, _ = identity._through(postgres)
return type(identity.enter).__name__
$$;
"""


@pytest.mark.parametrize(
    ("way", "kind"),
    [("library", "builtin_function_or_method"), ("variables", "function"),
     ("functions", "function")],
)  # fmt: skip
def test_the_guard_holds_in_c_on_the_variables_and_through_the_functions(
    ident: None, dsn: str, way: str, kind: str
) -> None:
    """The flag is set by the backstop library's C (backstop.query_guards) where it is
    installed; else, on x86-64, on PostgreSQL's variables directly (found in its machine
    code and checked); elsewhere through its functions. Each refuses every attempt."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(GUARD)
        assert conn.execute("SELECT ident.guard(%s)", [way]).fetchone() == (kind,)
        for name in sorted(set(identity_mod.ATTEMPTS) - {"reset_all"}):  # (RESET ALL changes
            # nothing of a session with the default settings and no claims)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="tried to change"):
                conn.execute("SELECT ident.attempt(%s, true)", [name])
            # the caller's next call runs as itself (`innocent` is NULL without a `sub` claim)
            assert conn.execute(
                "SELECT current_user, session_user, current_setting('search_path'), "
                "ident.innocent()"
            ).fetchone() == ("postgres", "postgres", '"$user", public', "None")
        # and the flag is off again once the routine has left: the session may change role
        conn.execute("SET ROLE student")
        assert conn.execute("SELECT current_user").fetchone() == ("student",)


def test_a_token_with_a_lone_surrogate_is_an_auth_error(authenticator_dsn: str) -> None:
    with Client(authenticator_dsn, jwt=JwtVerifier(secret=SECRET, roles=ROLES)) as client:
        with pytest.raises(AuthError, match="malformed"):
            client.as_user("\ud800")
        with pytest.raises(AuthError, match="malformed"):
            client.as_user(token("student") + "\udcff")


SHOWN = identity_mod.SHOWN.replace("$1", "%s")


@pytest.mark.parametrize("name", sorted(identity_mod.SETTINGS))
def test_settings_a_routine_changes_end_with_its_call(ident: None, dsn: str, name: str) -> None:
    """A plain SET lasts for the session in PostgreSQL: made by a routine, the next caller of
    a pooled session (another role) would run with it. The call sees it; its caller does
    not, whether the call returns or fails, makes rows, is called through SQL or opens
    savepoints, and what the caller had set stays."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET application_name = 'caller'")  # the caller's own: kept
        before = conn.execute(SHOWN, [name]).fetchone()
        with conn.transaction():
            conn.execute("SET LOCAL ROLE student")
            seen = conn.execute("SELECT ident.setting(%s, false)", [name]).fetchone()
            assert seen is not None and before is not None and seen[0] != before[0]
            assert conn.execute(SHOWN, [name]).fetchone() == before
        with pytest.raises(psycopg.Error, match="ValueError"):
            conn.execute("SELECT ident.setting(%s, true)", [name])
        assert conn.execute(SHOWN, [name]).fetchone() == before
        rows = conn.execute("SELECT * FROM ident.setting_rows(%s)", [name]).fetchall()
        assert rows == [seen, before]
        assert conn.execute(SHOWN, [name]).fetchone() == before
        nested = conn.execute("SELECT ident.setting_nested(%s)", [name]).fetchone()
        assert nested == (f"{seen[0]} {before[0]}",)
        for roll_back_first in (False, True):
            with conn.transaction():
                assert (
                    conn.execute(
                        "SELECT ident.setting_in_savepoint(%s, %s)", [name, roll_back_first]
                    ).fetchone()
                    == seen
                )
                assert conn.execute(SHOWN, [name]).fetchone() == before
            assert conn.execute(SHOWN, [name]).fetchone() == before
        assert conn.execute(SHOWN, ["application_name"]).fetchone() == ("caller",)


SHADOW = """
CREATE SCHEMA shadow;
CREATE FUNCTION shadow.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql AS
$$ BEGIN PERFORM set_config('role', 'manager', false);
   RETURN '{"sub": "forged"}'; END $$;
GRANT USAGE ON SCHEMA shadow TO PUBLIC;
"""


def test_the_claims_are_read_without_sql(ident: None, dsn: str) -> None:
    """db.claims() ran a query resolved through the session's search_path, outside the
    flag: a `current_setting` of a schema listed before pg_catalog changed the role and
    forged the claims (a red team's). The claims are read from the setting itself."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SHADOW)
        conn.execute("SELECT set_config('request.jwt.claims', '{\"sub\": \"s1\"}', false)")
        conn.execute("SET search_path = shadow, pg_catalog, public")
        conn.execute("SET ROLE student")
        assert conn.execute("SELECT ident.claims_only()").fetchone() == ("s1",)
        assert conn.execute("SELECT current_user").fetchone() == ("student",)


ROWS = """
from collections.abc import Iterator

from pyfuncs import db, stored_function


@stored_function(schema="rowsid", roles=["student", "manager"])
def who(n: int) -> Iterator[str]:
    for _ in range(n):
        yield str(db.fetchval("SELECT current_user"))
"""
BETWEEN = {
    "role": "RESET ROLE; SET ROLE manager",
    "session_authorization": "RESET ROLE; SET SESSION AUTHORIZATION manager",
    "search_path": "SET search_path = rowsid, public",
    "claims": "SELECT set_config('request.jwt.claims', '{\"sub\": \"other\"}', false)",
}


@pytest.mark.parametrize("between", sorted(BETWEEN))
@pytest.mark.parametrize("hold", [False, True])
def test_a_set_returning_calls_rows_are_made_with_the_identity_of_its_first(
    conn: psycopg.Connection[Any], tmp_path: Any, between: str, hold: bool
) -> None:
    """A set-returning routine's rows are one call, with one identity. A cursor over one,
    fetched after the session changed role (or search_path, or claims), made the rest of
    its rows as the new identity; and a WITH HOLD cursor's rows, left unfetched, are made
    at COMMIT as whoever commits (a red team's, in a transaction that changed roles). The
    rows after a change fail with 42501; a cursor fetched as one identity is unaffected."""
    (tmp_path / "rowsid_mod.py").write_text(ROWS)
    deploying.deploy(conn, str(tmp_path / "rowsid_mod.py"))
    conn.execute("BEGIN")
    conn.execute("SET ROLE student")
    if hold:
        conn.execute("DECLARE same CURSOR WITH HOLD FOR SELECT rowsid.who(3)")
        conn.execute("DECLARE c CURSOR WITH HOLD FOR SELECT rowsid.who(3)")
    else:
        conn.execute("DECLARE same CURSOR FOR SELECT rowsid.who(3)")
        conn.execute("DECLARE c CURSOR FOR SELECT rowsid.who(3)")
    assert conn.execute("FETCH 1 FROM c").fetchall() == [("student",)]
    assert conn.execute("FETCH ALL FROM same").fetchall() == [("student",)] * 3
    conn.execute(BETWEEN[between])
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="another role, search_path"):
        if hold:
            conn.execute("COMMIT")  # (the rest of its rows are made now)
        else:
            conn.execute("FETCH 1 FROM c")
    conn.execute("ROLLBACK")
    conn.execute("RESET SESSION AUTHORIZATION")
    conn.execute("RESET ROLE")
    assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
