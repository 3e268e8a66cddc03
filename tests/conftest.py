"""Fixtures shared by every test that needs PostgreSQL.

One embedded cluster per run (started if needed), one template database migrated once per
session, and one fresh database per test cloned from it with CREATE DATABASE ... TEMPLATE,
so tests never see each other's routines or rows. Cloning takes about a quarter of a second,
a third of an average test: the next test's database is cloned in a thread while a test runs.

`make test` runs the suite on two pytest-xdist workers sharing the cluster (each with its own
template and spare), then the tests marked `exclusive` (they restart or reconfigure the whole
cluster) alone. What is cluster-wide (starting the cluster, creating roles) is done under
`cluster_lock()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.janitor import DatabaseJanitor

from pyfuncs import deploy as deploying
from pyfuncs import migrate
from pyfuncs.client import Client
from pyfuncs.embedded import SUPERUSER, Cluster

ROOT = Path(__file__).resolve().parent.parent
PGDATA = Path(os.environ.get("PYFUNCS_TEST_PGDATA", ROOT / ".pgdata")).resolve()
# "_gw0", "_gw1"... under xdist's workers, else ""
WORKER = "_" + os.environ["PYTEST_XDIST_WORKER"] if "PYTEST_XDIST_WORKER" in os.environ else ""
TEMPLATE = "pyfuncs_test_template" + WORKER


@contextlib.contextmanager
def cluster_lock() -> Iterator[None]:
    """Held while doing what is cluster-wide and not idempotent under concurrency (starting
    the cluster, CREATE ROLE if it does not exist), so that xdist's workers take turns."""
    with open(PGDATA.with_name(PGDATA.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_role(conn: psycopg.Connection[Any], name: str, options: str = "NOLOGIN") -> None:
    """CREATE ROLE name options, unless it exists (roles are the cluster's: under
    `cluster_lock()`); `conn` is autocommit."""
    with cluster_lock():
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone():
            conn.execute(
                sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(name), sql.SQL(options))
            )


@contextlib.contextmanager
def cancel_after(conn: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
    """A client's cancel request for `conn`, sent `seconds` into the block (in a thread), and
    delivered when the block is left. PostgreSQL 15's postmaster signals a cancel request's
    backend twice (its pid, then its process group); the second, late on a busy machine,
    cancels whatever statement runs by then: a next statement sent before it lands can be
    cancelled too, in plain PostgreSQL as with routines (CI saw it). libpq's cancel returns
    once the server has closed its connection, after both signals."""
    timer = threading.Timer(seconds, conn.cancel_safe)
    timer.start()
    try:
        yield
    finally:
        timer.join()


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    cluster = Cluster(PGDATA)
    with cluster_lock():
        cluster.up()
    return cluster


def _janitor(cluster: Cluster, dbname: str, **kwargs: object) -> DatabaseJanitor:
    return DatabaseJanitor(
        user=SUPERUSER, host="127.0.0.1", port=cluster.port, dbname=dbname, **kwargs
    )  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def template(cluster: Cluster) -> str:
    with cluster_lock(), psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute((ROOT / "examples" / "academy" / "roles.sql").read_text())
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute("UPDATE pg_database SET datistemplate = false WHERE datname = %s", [TEMPLATE])
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE))
        )
    _janitor(cluster, TEMPLATE, as_template=True).init()
    migrate.install(cluster.url(TEMPLATE))
    return TEMPLATE


class Databases:
    """Fresh databases cloned from the template, the next one made ahead in a thread."""

    SPARE = "t_spare" + WORKER

    def __init__(self, cluster: Cluster, template: str) -> None:
        self.cluster, self.template = cluster, template
        self._maker = ThreadPoolExecutor(1, thread_name_prefix="spare-database")
        self._spare: Future[None] | None = None

    def _clone(self, name: str) -> None:
        drop_database(self.cluster, name)
        with psycopg.connect(self.cluster.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(self.template)))  # fmt: skip

    def take(self, name: str) -> str:
        """A fresh database named `name`: the spare renamed, or cloned now if making the spare
        failed (a test restarted the cluster under it)."""
        drop_database(self.cluster, name)
        try:
            if self._spare is None:
                raise LookupError("no spare yet")
            self._spare.result()
            with psycopg.connect(self.cluster.url("postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(self.SPARE), sql.Identifier(name)))  # fmt: skip
        except (LookupError, psycopg.Error):
            self._clone(name)
        self._spare = self._maker.submit(self._clone, self.SPARE)
        return self.cluster.url(name)

    def close(self) -> None:
        if self._spare is not None:
            self._spare.exception()
        self._maker.shutdown()
        drop_database(self.cluster, self.SPARE)


@pytest.fixture(scope="session")
def databases(cluster: Cluster, template: str) -> Iterator[Databases]:
    made = Databases(cluster, template)
    yield made
    made.close()


@pytest.fixture
def dsn(databases: Databases, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for this test, with the core schema installed."""
    name = "t_" + _digest(request)[:16]
    try:
        yield databases.take(name)
    finally:
        drop_database(databases.cluster, name)


def _digest(request: pytest.FixtureRequest) -> str:
    return hashlib.sha1(request.node.nodeid.encode()).hexdigest()


def drop_database(cluster: Cluster, name: str) -> None:
    """Drop a test database, and first its replication slots (realtime capture from the WAL
    makes one), which DROP DATABASE refuses to drop by itself."""
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        for _ in range(100):
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [name],
            )
            try:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE database = %s",
                    [name],
                )
                break
            except psycopg.errors.ObjectInUse:  # its consumer is still going away
                time.sleep(0.05)
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def deployed(dsn: str, conn: psycopg.Connection[Any]) -> Iterator[Callable[[ModuleType], Client]]:
    """Deploy a routine module into this test's database and get a client for it."""
    clients: list[Client] = []

    def deploy(module: ModuleType) -> Client:
        deploying.deploy(conn, module)
        clients.append(Client(dsn))
        return clients[-1]

    yield deploy
    for client in clients:
        client.close()


@pytest.fixture
def authenticator_dsn(dsn: str) -> str:
    """The same database, logged in as the non-superuser login role."""
    return dsn.replace(f"{SUPERUSER}@", "authenticator@", 1)


@pytest.fixture
def empty_db(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of its own where pyfuncs was never installed."""
    name = f"mig_{request.node.name[:34].lower()}_{_digest(request)[:6]}"
    drop_database(cluster, name)
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield cluster.url(name)
    drop_database(cluster, name)
