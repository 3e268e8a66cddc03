"""Fixtures shared by the integration tests."""

from __future__ import annotations

import psycopg
import pytest

from pyfuncs.embedded import Cluster
from tests.conftest import ensure_role


@pytest.fixture
def login_role(cluster: Cluster, dsn: str) -> str:
    """A plain LOGIN role: no privilege on anything of pyfuncs' or of the tables."""
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as db:
        ensure_role(db, "walpoke", "LOGIN")
    return dsn.replace("postgres@", "walpoke@", 1)
