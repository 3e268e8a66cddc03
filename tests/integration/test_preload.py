"""The preload (pyfuncs/_pg/preload.c): PL/Python's interpreter started once, in the
postmaster, for every backend's first call. The embedded cluster lists it in
shared_preload_libraries, so the rest of the suite runs with it; here, what backends then
share and what they do not, that a session's LOAD of it changes nothing, and that pyfuncs
runs as before on a cluster without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyfuncs import deploy as deploying
from pyfuncs.cli import _preloaded, main
from pyfuncs.embedded import PRELOAD, Cluster
from tests.conftest import drop_database

from .test_embedded import root  # noqa: F401  (a cluster of its own, stopped and removed after)

LOAD = sql.SQL("LOAD {}").format(sql.Literal(PRELOAD))
SEEN = """
CREATE FUNCTION public.seen() RETURNS text LANGUAGE plpython3u AS $$
import json, random, sys, uuid
return json.dumps([hash("pyfuncs"), random.getrandbits(64), str(uuid.uuid4()),
                   sys.modules["plpy"].__name__])
$$
"""

ROUTINES = """
from pyfuncs import stored_function


@stored_function(schema="public", timeout_ms=1000)
def doubled(x: int) -> int:
    return 2 * x
"""


def _seen(url: str) -> list[Any]:
    """What a new session's first call of PL/Python sees."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT public.seen()").fetchone()
    assert row is not None
    return list(json.loads(row[0]))


def _module(tmp_path: Path) -> Path:
    path = tmp_path / "preload_routines.py"
    path.write_text(ROUTINES)
    return path


@pytest.fixture
def seen_db(empty_db: str) -> str:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
        conn.execute(SEEN)
    return empty_db


def test_the_embedded_cluster_starts_python_in_the_postmaster(
    cluster: Cluster, empty_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        row = conn.execute("SHOW shared_preload_libraries").fetchone()
    assert row == (PRELOAD,)
    assert "pyfuncs_preload: Python 3.11" in cluster.log_file.read_text()
    assert main(["install", "--dsn", empty_db]) == 0
    assert PRELOAD not in capsys.readouterr().out  # (no note: it is listed)


def test_sessions_share_the_hash_seed_but_draw_their_own_random_numbers(seen_db: str) -> None:
    first, second = _seen(seen_db), _seen(seen_db)
    # one interpreter started before the backends were forked: its hash seed is theirs
    # (README "The first call" says so); without the preload each backend draws its own
    assert first[0] == second[0]
    # random, uuid: imported, and seeded, in each backend
    assert first[1] != second[1] and first[2] != second[2]
    assert first[3] == second[3] == "plpy"


def test_a_sessions_load_of_the_library_changes_nothing(
    seen_db: str, dsn: str, tmp_path: Path
) -> None:
    with psycopg.connect(seen_db, autocommit=True) as conn:
        conn.execute(LOAD)
        row = conn.execute("SELECT public.seen()").fetchone()
        assert row is not None and json.loads(row[0])[3] == "plpy"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(LOAD)
        deploying.deploy(conn, str(_module(tmp_path)))
        assert conn.execute("SELECT public.doubled(21)").fetchone() == (42,)


@pytest.mark.exclusive  # (a second cluster: its start and install weigh on timed tests)
def test_pyfuncs_runs_on_a_cluster_without_the_preload(
    root: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = Cluster(root, preload=False)
    url = cluster.up()
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("",)
    assert main(["install", "--dsn", url]) == 0
    assert f"note: {PRELOAD} is not in shared_preload_libraries" in capsys.readouterr().out
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SEEN)
        deploying.deploy(conn, str(_module(tmp_path)))
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT public.doubled(21)").fetchone() == (42,)
    first, second = _seen(url), _seen(url)
    assert first[0] != second[0]  # each backend started Python, with a seed of its own
    assert first[1] != second[1]


@pytest.mark.parametrize(
    ("setting", "listed"),
    [("pyfuncs_preload", True), ("pg_stat_statements, pyfuncs_preload", True),
     ('"pyfuncs_preload"', True), ("$libdir/pyfuncs_preload.so", True), ("", False),
     ("pyfuncs_preload_old", False), ("pg_stat_statements", False)],
)  # fmt: skip
def test_install_reads_the_list_as_postgresql_does(setting: str, listed: bool) -> None:
    assert _preloaded(setting) is listed


ENVIRONMENT = """
CREATE FUNCTION public.environment() RETURNS text LANGUAGE plpython3u AS $$
import json, locale, os
return json.dumps([os.environ.get("LC_CTYPE"), locale.setlocale(locale.LC_CTYPE)])
$$
"""


def test_os_environ_is_the_postmasters(cluster: Cluster) -> None:
    """Found by round seventy, and documented (README "The first call"): `os` is imported as
    Python starts, in the postmaster, so `os.environ` is the postmaster's environment, not
    the backend's, in which PostgreSQL then sets LC_CTYPE and LC_COLLATE to its database's
    locale. The locale in force (what `locale` and PostgreSQL use) is the database's."""
    name = "preload_de_ctype"
    drop_database(cluster, name)
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 LC_CTYPE 'de_DE.UTF-8' "
                              "LC_COLLATE 'de_DE.UTF-8'").format(sql.Identifier(name)))  # fmt: skip
    try:
        with psycopg.connect(cluster.url(name), autocommit=True) as db:
            db.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
            db.execute(ENVIRONMENT)
            row = db.execute("SELECT public.environment()").fetchone()
        assert row is not None
        environ_ctype, in_force = json.loads(row[0])
        assert in_force == "de_DE.UTF-8"
        assert environ_ctype != in_force  # (what the postmaster had: the server's own)
    finally:
        drop_database(cluster, name)
