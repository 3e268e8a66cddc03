"""Create the academy on a database: schema with RLS, seeded data, deployed routines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pyfuncs import deploy as deploying
from pyfuncs import migrate
from pyfuncs.embedded import Cluster

HERE = Path(__file__).parent
ROUTINES = str(HERE / "routines.py")
# the seed's deterministic ids: md5('person' || n)::uuid, managers are n = 1..20
MANAGER_SQL = "SELECT md5('person' || %s)::uuid"


def build(conn: psycopg.Connection[Any], *, students: int = 50_000) -> dict[str, float]:
    """Create and seed the academy, deploy its routines; returns seconds per step."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    conn.execute((HERE / "schema.sql").read_text())
    timings["schema"] = time.perf_counter() - start
    start = time.perf_counter()
    conn.execute("SELECT set_config('seed.students', %s, false)", [str(students)])
    conn.execute((HERE / "seed.sql").read_text())
    # a freshly loaded database gets statistics and a visibility map (index-only scans)
    conn.execute("VACUUM ANALYZE")
    timings["seed"] = time.perf_counter() - start
    start = time.perf_counter()
    deploying.deploy(conn, ROUTINES)
    timings["deploy"] = time.perf_counter() - start
    return timings


def person_id(conn: psycopg.Connection[Any], n: int) -> Any:
    """Seeded person n: managers are 1..20, students 21 and up."""
    row = conn.execute(MANAGER_SQL, [str(n)]).fetchone()
    assert row is not None
    return row[0]


def fresh_database(cluster: Cluster, name: str) -> str:
    """(Re)create database `name` on the cluster with the academy's roles and the pyfuncs
    core schema; returns its URL (as the superuser)."""
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute((HERE / "roles.sql").read_text())
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = cluster.url(name)
    migrate.install(url)
    return url
