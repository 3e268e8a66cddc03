"""Routines that try to leave their caller's identity from SQL, by every spelling."""

from __future__ import annotations

from collections.abc import Iterator

from pyfuncs import db, stored_function

ATTEMPTS = {
    "reset_role": "RESET ROLE",
    "set_role_none": "SET ROLE NONE",
    "set_role": "SET ROLE manager",
    "set_local_role": "SET LOCAL ROLE manager",
    "set_config_role": "SELECT set_config('role', 'none', false)",
    "set_config_role_local": "SELECT set_config('role', 'manager', true)",
    "session_authorization": "SET SESSION AUTHORIZATION DEFAULT",
    "claims": "SELECT set_config('request.jwt.claims', '{\"sub\": \"someone-else\"}', true)",
    "set_claims": 'SET request.jwt.claims = \'{"sub": "someone-else"}\'',
    "search_path": "SET search_path = pg_catalog",
    "set_config_search_path": "SELECT set_config('search_path', 'pg_catalog', true)",
    "do_block": "DO $$ BEGIN PERFORM set_config('role', 'none', true); END $$",
    "function": "SELECT ident.become_authenticator()",
    "flip_role": "SELECT set_config('role', 'none', true), ident.whoami(), "
    "set_config('role', 'student', true)",
    "flip_claims": "SELECT set_config('request.jwt.claims', '{\"sub\": \"x\"}', true), "
    "set_config('request.jwt.claims', current_setting('request.jwt.claims'), true)",
    # code that runs as a query is prepared (a literal's type input: a domain's check, a
    # composite's column of that domain), before a red team's query ran at all
    "domain_check_at_prepare": "SELECT '{x}'::ident.switching[] AS t",
    "composite_at_prepare": "SELECT '(x)'::ident.switching_row AS t",
    "reset_all": "RESET ALL",  # (the claims: RESET ALL skips the flag that refuses them)
}


@stored_function(schema="ident", roles=["student"])
def attempt(name: str, swallow: bool) -> str:
    """Run one attempt; with `swallow`, catch what it raises and carry on querying."""
    try:
        db.execute(ATTEMPTS[name])
    except Exception:
        if not swallow:
            raise
    return str(db.fetchval("SELECT current_user::text || ' ' || current_setting('search_path')"))


# Work a query could leave to run after it, as the caller or as whoever the session serves
# next: PostgreSQL refuses each inside a routine's query (a security-restricted operation)
LATER = {
    "deferred_trigger": [
        "CREATE TABLE IF NOT EXISTS ident.q (a int)",
        "CREATE OR REPLACE FUNCTION ident.switch() RETURNS trigger LANGUAGE plpgsql AS "
        "$f$ BEGIN PERFORM set_config('role', 'none', false); RETURN NULL; END $f$",
        "DROP TRIGGER IF EXISTS t ON ident.q",
        "CREATE CONSTRAINT TRIGGER t AFTER INSERT ON ident.q DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION ident.switch()",
        "INSERT INTO ident.q VALUES (1)",
    ],
    "temp_table": ["CREATE TEMP TABLE IF NOT EXISTS later_t (a int)"],
    "temp_view": ["CREATE TEMP VIEW lesson AS SELECT 1 AS id"],
    "temp_domain": ["CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (VALUE <> '')"],
    "temp_type": ["CREATE TYPE pg_temp.int4 AS (a int)"],
    "listen": ["LISTEN ident_later"],
}


@stored_function(schema="ident", roles=["student"])
def later(name: str) -> str:
    for statement in LATER[name]:
        db.execute(statement)
    return "done"


@stored_function(schema="ident", roles=["student"])
def echo(text: str, number: int) -> str:
    """Its parameters bound to PostgreSQL's own types, whatever pg_temp holds."""
    return str(db.fetchval("SELECT $1 || ':' || $2", [text, number]))


@stored_function(schema="ident", roles=["student"])
def through_cursor() -> int:
    return sum(
        1 for _ in db.cursor("SELECT set_config('role', 'none', true) FROM generate_series(1, 3)")
    )


@stored_function(schema="ident", roles=["student"])
def innocent() -> str:
    return str(db.fetchval("SELECT current_user::text || ' ' || pyfuncs.jwt_claim('sub')"))


@stored_function(schema="ident", roles=["student"])
def claims_only() -> str:
    """db.claims() and nothing else: no query after it that would compare the identity."""
    return str(db.claims().get("sub"))


# Settings a query can change for the rest of the session: each ends with the call
SETTINGS = {
    "statement_timeout": "SELECT set_config('statement_timeout', '1', false)",
    "app.tenant": "SELECT set_config('app.tenant', 'evil', false)",
    "TimeZone": "SET TimeZone = 'Asia/Kathmandu'",
    "default_transaction_read_only": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "row_security": "SET row_security = off",
    "work_mem": "SET LOCAL work_mem = '77MB'",
    "extra_float_digits": "DO $$ BEGIN PERFORM set_config('extra_float_digits', '-15', false);"
    " END $$",
}
# (a custom setting a routine defined first stays defined, empty: shown as "-", as unset)
SHOWN = "SELECT coalesce(nullif(current_setting($1, true), ''), '-')"


@stored_function(schema="ident", roles=["student"])
def setting(name: str, fail: bool) -> str:
    """Change one setting, and say what the call's next query sees of it."""
    db.execute(SETTINGS[name])
    seen = str(db.fetchval(SHOWN, [name]))
    if fail:
        raise ValueError(seen)
    return seen


@stored_function(schema="ident", roles=["student"])
def setting_rows(name: str) -> Iterator[str]:
    """A set-returning routine that changes a setting for its first row: each row is made
    in an entry of its own, which undoes what it set."""
    db.execute(SETTINGS[name])
    yield str(db.fetchval(SHOWN, [name]))
    yield str(db.fetchval(SHOWN, [name]))


@stored_function(schema="ident", roles=["student"])
def setting_nested(name: str) -> str:
    """A call through SQL changes a setting; the outer call's next query sees it undone."""
    inner = db.fetchval("SELECT ident.setting($1, false)", [name])
    return f"{inner} {db.fetchval(SHOWN, [name])}"


@stored_function(schema="ident", roles=["student"])
def setting_in_savepoint(name: str, roll_back_first: bool) -> str:
    """The call's first query inside a savepoint (released, the level it opened would be
    handed to the caller's), or after one that rolled back (a red team)."""
    if roll_back_first:
        try:
            with db.subtransaction():
                db.execute("SELECT 1")
                raise ValueError("rolled back")
        except ValueError:
            pass
        db.execute(SETTINGS[name])
    else:
        with db.subtransaction():
            db.execute(SETTINGS[name])
    return str(db.fetchval(SHOWN, [name]))
