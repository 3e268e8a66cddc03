"""`pyfuncs db up/url/down`: a private cluster, idempotent, on a free port."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pyfuncs.cli import main
from pyfuncs.embedded import Cluster


@pytest.fixture
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("cluster") / "pgdata"
    yield path
    Cluster(path).down()
    home = path.resolve()
    if path.is_symlink():  # placed where the postgres OS user can reach it (pytest's dirs are 0700)
        path.unlink()
    shutil.rmtree(home, ignore_errors=True)


def test_up_is_idempotent_and_down_stops(root: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("PYFUNCS_PGDATA", str(root))
    assert main(["db", "up"]) == 0
    url = capsys.readouterr().out.strip()
    assert main(["db", "up"]) == 0
    assert capsys.readouterr().out.strip() == url
    assert main(["db", "url"]) == 0
    assert capsys.readouterr().out.strip() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("pyfuncs",)
    pid = Cluster(root).postmaster_pid()
    assert main(["db", "up"]) == 0  # running already: nothing restarts
    assert Cluster(root).postmaster_pid() == pid
    assert main(["db", "down"]) == 0
    assert not Cluster(root).is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    assert main(["db", "up"]) == 0  # and back, with its data and port
    assert capsys.readouterr().out.strip().endswith(url)


def test_dsn_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pyfuncs.config import resolve_dsn
    from pyfuncs.errors import ConfigError

    monkeypatch.setenv("PYFUNCS_PGDATA", str(tmp_path / "none"))
    monkeypatch.delenv("PYFUNCS_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigError, match="pyfuncs db up"):
        resolve_dsn()
    monkeypatch.setenv("DATABASE_URL", "postgresql://b/b")
    assert resolve_dsn() == "postgresql://b/b"
    monkeypatch.setenv("PYFUNCS_DSN", "postgresql://a/a")
    assert resolve_dsn() == "postgresql://a/a"
    assert resolve_dsn("postgresql://c/c") == "postgresql://c/c"
    assert os.environ["DATABASE_URL"] == "postgresql://b/b"
