"""An attacker's view: a login role with no privileges beyond what PostgreSQL gives everyone
(`mallory`), in a fresh database with the core schema installed."""

from __future__ import annotations

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
    with psycopg.connect(dsn.replace(f"{SUPERUSER}@", "mallory@", 1), autocommit=True) as conn:
        yield conn


def is_superuser(conn: psycopg.Connection[Any], role: str = "mallory") -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    assert row is not None
    return bool(row[0])
