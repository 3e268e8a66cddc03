"""An attacker's view: a login role with no privileges beyond what PostgreSQL gives everyone
(`mallory`), in a fresh database with the core schema installed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

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
