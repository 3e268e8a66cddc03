"""An attacker's view: a login role with no privileges beyond what PostgreSQL gives everyone
(`mallory`), in a fresh database with the core schema installed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyfuncs import deploy as deploying
from pyfuncs.embedded import SUPERUSER, Cluster
from tests.conftest import ensure_role


@pytest.fixture(scope="session")
def mallory_role(cluster: Cluster) -> str:
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        ensure_role(conn, "mallory", "LOGIN")
        conn.execute("ALTER ROLE mallory NOSUPERUSER NOCREATEROLE NOCREATEDB")
    return "mallory"


@pytest.fixture
def mallory(dsn: str, mallory_role: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection as mallory (autocommit)."""
    with psycopg.connect(mallory_dsn(dsn), autocommit=True) as conn:
        yield conn


def mallory_dsn(dsn: str) -> str:
    """The same database, as mallory."""
    return dsn.replace(f"{SUPERUSER}@", "mallory@", 1)


def value(conn: psycopg.Connection[Any], query: str, params: Any = ()) -> Any:
    """The first column of `query`'s one row."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def timed(conn: psycopg.Connection[Any], query: str, params: Any = ()) -> tuple[Any, float]:
    """`query`'s first row, or the error it raised, and how long it took (seconds)."""
    began = time.monotonic()
    try:
        got: Any = conn.execute(query, params).fetchone()
    except psycopg.Error as exc:
        got = exc
    return got, time.monotonic() - began


def is_superuser(conn: psycopg.Connection[Any], role: str = "mallory") -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    assert row is not None
    return bool(row[0])


def connect_mallory(dsn: str) -> psycopg.Connection[Any]:
    """A new connection as mallory (autocommit)."""
    return psycopg.connect(mallory_dsn(dsn), autocommit=True)


@contextlib.contextmanager
def deployed_for_mallory(
    conn: psycopg.Connection[Any], cluster: Cluster, path: Path, source: str, schema: str
) -> Iterator[None]:
    """A round's routine module (`source`, written to `path`) deployed, its schema's routines
    granted to mallory; afterwards, no crash recovery of the cluster happened meanwhile."""
    path.write_text(source)
    deploying.deploy(conn, str(path))
    name = sql.Identifier(schema)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO mallory").format(name))
    conn.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {} TO mallory").format(name))
    conn.commit()
    postmaster = cluster.postmaster_pid()
    log_size = cluster.log_file.stat().st_size
    yield
    assert cluster.postmaster_pid() == postmaster, "the cluster restarted"
    with cluster.log_file.open(errors="replace") as log:
        log.seek(log_size)
        tail = log.read()
    assert "all server processes terminated" not in tail, "the cluster went through crash recovery"
