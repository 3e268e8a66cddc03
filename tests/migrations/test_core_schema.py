"""`alembic upgrade head` from empty produces exactly sql/schema.sql, and downgrades cleanly."""

from __future__ import annotations

import importlib.util
import marshal
import subprocess
from typing import Any

import psycopg
from psycopg import sql

from pyfuncs import ahead, migrate
from pyfuncs.embedded import Cluster, _pg_bin
from pyfuncs.queries import read


def dump(url: str) -> str:
    out = subprocess.run(
        [str(_pg_bin() / "pg_dump"), "--schema-only", "--no-owner",
         "--exclude-table=public.pyfuncs_alembic_version", url],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    # comments and pg_dump's per-dump random \restrict keys are not part of the schema
    skip = ("--", "\\restrict", "\\unrestrict")
    return "\n".join(line for line in out.splitlines() if not line.startswith(skip))


def test_upgrade_from_empty_gives_the_declared_schema(
    empty_db: str, cluster: Cluster, request: Any
) -> None:
    migrate.upgrade(empty_db)
    declared = empty_db.rsplit("/", 1)[0] + "/" + "decl_" + empty_db.rsplit("/", 1)[1][4:]
    name = declared.rsplit("/", 1)[1]
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(declared, autocommit=True) as conn:
            conn.execute(read("schema.sql"))
        assert dump(empty_db) == dump(declared)
    finally:
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_downgrade_removes_everything_and_upgrade_again_works(empty_db: str) -> None:
    assert migrate.install(empty_db) == migrate.head_revision()
    assert migrate.install(empty_db) == migrate.head_revision()  # idempotent
    migrate.downgrade(empty_db, "base")
    assert migrate.current_revision(empty_db) is None
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regnamespace('pyfuncs')").fetchone() == (None,)
    migrate.install(empty_db)
    with psycopg.connect(empty_db) as conn:
        names = {name for (name,) in conn.execute("SELECT name FROM pyfuncs.runtime_module")}
    assert names == {p.stem for p in ahead.RUNTIME_DIR.glob("*.py")} - {"__init__"}


def test_the_runtime_runs_compiled_where_the_bytecode_matches(empty_db: str) -> None:
    """install stores each module's code compiled by this Python; a backend runs it when its
    Python's MAGIC_NUMBER is the same, and compiles the source otherwise."""
    migrate.install(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        rows = conn.execute("SELECT name, code, magic FROM pyfuncs.runtime_module")
        for name, code, magic in rows:
            assert magic == importlib.util.MAGIC_NUMBER, name
            assert marshal.loads(code).co_filename == f"pyfuncs/_pg/{name}.py"

        def boots() -> bool:
            with psycopg.connect(empty_db) as fresh:
                try:
                    fresh.execute("SELECT pyfuncs.boot()")
                except psycopg.errors.ExternalRoutineException:
                    return False
            return True

        assert boots()
        conn.execute("UPDATE pyfuncs.runtime_module SET code = '\\x00'")  # not code at all
        assert not boots()  # the code was used
        conn.execute("UPDATE pyfuncs.runtime_module SET magic = '\\x00'")  # another Python's
        assert boots()  # the source was compiled
