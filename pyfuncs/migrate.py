"""Installing and upgrading the pyfuncs core schema with Alembic.

The migrations live in migrations/ and their SQL in sql/migrations/; `install` runs
`alembic upgrade head` in one transaction and then stores the in-database runtime
(the modules of pyfuncs/_pg/) in `pyfuncs.runtime_module`, one row each.
"""

from __future__ import annotations

import importlib.util
import marshal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from alembic import command, op
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from . import ahead
from .config import connect
from .errors import MigrationError, from_psycopg
from .queries import query, read

# Alembic's record of the core schema's revision. It lives in public (where earlier releases
# put it), named with its schema so that no search_path can point Alembic elsewhere.
VERSION_TABLE = {"version_table": "pyfuncs_alembic_version", "version_table_schema": "public"}


def migrations_dir() -> Path:
    packaged = Path(__file__).parent / "_migrations"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "migrations"


def run_sql(name: str) -> None:
    """Run one file of sql/migrations/ inside the current Alembic migration."""
    # Straight to psycopg without parameters, so `%` in the SQL is not a placeholder.
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    driver.execute(read(f"migrations/{name}"))


def engine(dsn: str, *, pinned: bool = False) -> sa.Engine:
    """A SQLAlchemy engine over psycopg 3 for any DSN form psycopg accepts. pyfuncs' own
    migrations run `pinned`: search_path is pg_catalog only (config.connect), and they name
    everything else they mean."""
    opener = connect if pinned else psycopg.connect
    return sa.create_engine("postgresql+psycopg://", creator=lambda: opener(dsn),
                            poolclass=sa.NullPool)  # fmt: skip


def _check_version_table(connection: sa.Connection) -> None:
    """Refuse a version table pyfuncs did not make: whoever may create tables in public
    could otherwise leave one there whose triggers or rules run as the installer."""
    row = connection.exec_driver_sql(query("version_table_trust")).mappings().fetchone()
    if row is not None and not row["trusted"]:
        raise MigrationError(
            f"public.pyfuncs_alembic_version exists but pyfuncs did not make it (owner "
            f"{row['owner']}, {row['triggers']} trigger(s), rules: {row['rules']}); pyfuncs "
            "keeps its revision there as a plain table owned by a superuser. Find out who "
            "created it, then drop it (or fix it) and run `pyfuncs install` again"
        )


def _config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    return config


@contextmanager
def _migrating(dsn: str, what: str) -> Iterator[sa.Connection]:
    try:
        with engine(dsn, pinned=True).begin() as connection:
            yield connection
    except sa.exc.DBAPIError as exc:
        err = from_psycopg(exc.orig) if exc.orig is not None else exc
        raise MigrationError(f"{what} failed, nothing was changed: {err}") from exc


def upgrade(dsn: str, revision: str = "head") -> None:
    with _migrating(dsn, f"upgrade to {revision}") as connection:
        _check_version_table(connection)
        command.upgrade(_config(connection), revision)
        if revision == "head":
            install_runtime(connection)


def downgrade(dsn: str, revision: str = "base") -> None:
    with _migrating(dsn, f"downgrade to {revision}") as connection:
        _check_version_table(connection)
        command.downgrade(_config(connection), revision)


def current_revision(dsn: str) -> str | None:
    with engine(dsn, pinned=True).connect() as connection:
        context = MigrationContext.configure(connection, opts=dict(VERSION_TABLE))
        return context.get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory(str(migrations_dir())).get_current_head()


def install_runtime(connection: sa.Connection) -> None:
    """Store every module of the runtime (pyfuncs/_pg/) by name, and no other: its source,
    and its code compiled by this Python, which a backend whose Python has the same bytecode
    runs without compiling (the first call in a new connection is that much faster). Then
    the live routines' modules, compiled for this runtime (pyfuncs/ahead.py)."""
    runtime = {}
    for name, source in ahead.runtime_files():
        # (without docstrings and asserts, which only narrow types: 15% less to read and
        # unmarshal in every new connection)
        code = compile(source, f"pyfuncs/_pg/{name}.py", "exec", dont_inherit=True, optimize=2)
        runtime[name] = ahead.sha256(source)
        params: dict[str, Any] = {
            "name": name,
            "source": source,
            "sha256": runtime[name],
            "code": marshal.dumps(code),
            "magic": importlib.util.MAGIC_NUMBER,
        }
        connection.exec_driver_sql(query("runtime_upsert"), params)
    connection.exec_driver_sql(query("runtime_prune"), {"names": list(runtime)})
    prune = {"runtime": ahead.runtime_digest(runtime)}
    connection.exec_driver_sql(query("routine_code_prune"), prune)
    live = connection.exec_driver_sql(query("live_modules")).fetchall()
    for row in ahead.rows(live, runtime):
        connection.exec_driver_sql(query("routine_code_put"), row)


def install(dsn: str) -> str | None:
    """Install or upgrade the core schema and runtime; returns the schema revision."""
    upgrade(dsn)
    return current_revision(dsn)
