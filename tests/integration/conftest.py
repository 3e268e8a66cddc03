"""Fixtures shared by the integration tests."""

from __future__ import annotations

import psycopg
import pytest

from pyfuncs.embedded import Cluster


@pytest.fixture
def login_role(cluster: Cluster, dsn: str) -> str:
    """A plain LOGIN role: no privilege on anything of pyfuncs' or of the tables."""
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as db:
        db.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'walpoke')"
                   " THEN CREATE ROLE walpoke LOGIN; END IF; END $$")  # fmt: skip
    return dsn.replace("postgres@", "walpoke@", 1)
