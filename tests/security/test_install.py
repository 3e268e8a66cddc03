"""`pyfuncs install` and every other command run as a superuser in a database where others
may have created objects: a database owner (who may set the database's search_path and, under
PostgreSQL 15's defaults, create in public) or anyone with CREATE on a schema. Nothing they
created may run as the superuser (README "Security model")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyfuncs import deploy as deploying
from pyfuncs import migrate
from pyfuncs.cli import main
from pyfuncs.embedded import SUPERUSER
from pyfuncs.errors import MigrationError

from .conftest import is_superuser

# Functions of the names pyfuncs' migrations, queries and commands call, each of which makes
# mallory a superuser when a superuser runs it (and notes that it ran).
DECOYS = {
    "gen_random_uuid()": ("uuid", "pg_catalog.gen_random_uuid()"),
    "uuid_send(u uuid)": ("bytea", "pg_catalog.uuid_send(u)"),
    "sha256(b bytea)": ("bytea", "'\\x00'::bytea"),
    "to_regclass(t text)": ("regclass", "pg_catalog.to_regclass(t)"),
    "unnest(a text[])": ("SETOF text", "SELECT pg_catalog.unnest(a)"),
    "now()": ("timestamptz", "pg_catalog.now()"),
    "current_setting(t text)": ("text", "pg_catalog.current_setting(t)"),
    "set_config(a text, b text, c boolean)": ("text", "pg_catalog.set_config(a, b, c)"),
    "quote_ident(t text)": ("text", "pg_catalog.quote_ident(t)"),
}


def _decoy(signature: str, returns: str, result: str) -> sql.Composed:
    body = result if result.startswith("SELECT") else f"RETURN {result};"
    if returns.startswith("SETOF"):
        body = f"RETURN QUERY {result};"
    return sql.SQL(
        "CREATE FUNCTION evil.{signature} RETURNS {returns} LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO evil.ran VALUES ({name}); "
        "IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN "
        "ALTER ROLE mallory SUPERUSER; END IF; {body} END $$"
    ).format(signature=sql.SQL(signature), returns=sql.SQL(returns),
             name=sql.Literal(signature), body=sql.SQL(body))  # fmt: skip


@pytest.fixture
def planted(empty_db: str, mallory_role: str) -> str:
    """An empty database whose owner is mallory, as PostgreSQL 15 lets a database owner be."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        name = empty_db.rsplit("/", 1)[1]
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO mallory").format(sql.Identifier(name)))
        conn.execute("ALTER SCHEMA public OWNER TO mallory")
    return empty_db


def _as_mallory(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn.replace(f"{SUPERUSER}@", "mallory@", 1), autocommit=True)


def test_a_version_table_someone_else_made_is_refused(planted: str) -> None:
    with _as_mallory(planted) as mallory:
        mallory.execute("CREATE TABLE public.pyfuncs_alembic_version (version_num text)")
        mallory.execute(
            "CREATE FUNCTION public.grab() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN ALTER ROLE mallory SUPERUSER; RETURN NEW; END $$"
        )
        mallory.execute(
            "CREATE TRIGGER grab BEFORE INSERT OR UPDATE ON public.pyfuncs_alembic_version "
            "FOR EACH ROW EXECUTE FUNCTION public.grab()"
        )
    with pytest.raises(MigrationError, match=r"pyfuncs did not make it \(owner mallory"):
        migrate.install(planted)
    with psycopg.connect(planted) as conn:
        assert not is_superuser(conn)
        assert conn.execute("SELECT to_regnamespace('pyfuncs')").fetchone() == (None,)


def test_nothing_on_the_databases_search_path_runs_as_the_installer(
    planted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _as_mallory(planted) as mallory:
        mallory.execute("CREATE SCHEMA evil")
        mallory.execute("CREATE TABLE evil.ran (what text)")
        mallory.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC")
        mallory.execute("GRANT INSERT ON evil.ran TO PUBLIC")
        for signature, (returns, result) in DECOYS.items():
            mallory.execute(_decoy(signature, returns, result))
        name = planted.rsplit("/", 1)[1]
        mallory.execute(sql.SQL("ALTER DATABASE {} SET search_path = evil, pg_catalog, public")
                        .format(sql.Identifier(name)))  # fmt: skip
    module = tmp_path / "plain.py"
    module.write_text("from pyfuncs import stored_function\n\n"
                      "@stored_function(schema='app', roles=['student'])\n"
                      "def one(n: int) -> int:\n    return n\n")  # fmt: skip

    migrate.install(planted)
    with psycopg.connect(planted, autocommit=True) as conn:  # the database's search_path
        deploying.deploy(conn, str(module))
        deploying.switch_version(conn, "app.one", 1)
        deploying.rollback(conn)
        assert conn.execute("SHOW search_path").fetchone() == ("evil, pg_catalog, public",)
    for argv in (["status"], ["deploy", str(module)], ["rollback"],
                 ["realtime", "prune"], ["install"]):  # fmt: skip
        assert main(["--dsn", planted, *argv]) == 0, capsys.readouterr()

    with psycopg.connect(planted) as conn:
        assert conn.execute("SELECT * FROM evil.ran").fetchall() == []
        assert not is_superuser(conn)
        key = conn.execute("SELECT position_key FROM pyfuncs.realtime_state").fetchone()
        assert key is not None and len(key[0]) == 32 and key[0] != bytes(32)

    # the decoys do work where a session does not pin its search_path
    with psycopg.connect(planted, autocommit=True) as conn:
        conn.execute("SELECT now()")
        assert conn.execute("SELECT * FROM evil.ran").fetchall() == [("now()",)]
        assert is_superuser(conn)
        conn.execute("ALTER ROLE mallory NOSUPERUSER")
