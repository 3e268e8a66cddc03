"""The command line, as a new user meets it: every command takes --dsn before or after its
name, and answers bad input, a database it cannot reach and a missing `pyfuncs install`
with one line saying what to do, never with a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pyfuncs.cli import main
from pyfuncs.embedded import SUPERUSER, Cluster

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"
GOOD = "from pyfuncs import stored_function\n\n@stored_function\ndef one() -> int:\n    return 1\n"


@pytest.fixture
def bare(cluster: Cluster) -> Iterator[str]:
    """A database where pyfuncs was never installed."""
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS cli_bare WITH (FORCE)")
        conn.execute("CREATE DATABASE cli_bare")
    yield cluster.url("cli_bare")
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE cli_bare WITH (FORCE)"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys: pytest.CaptureFixture[str], says: str, *argv: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code != 0, (argv, out)
    assert err.startswith("pyfuncs") and err.count("\n") == 1, (argv, err)
    assert says in err, (argv, err)
    assert "Traceback" not in err + out


def test_every_command_names_an_unreachable_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "good.py"
    module.write_text(GOOD)
    monkeypatch.setenv("PYFUNCS_JWT_SECRET", "cli-test-secret-0123456789-0123456789")
    monkeypatch.setenv("PYFUNCS_JWT_ROLES", "student")
    for argv in (["install"], ["deploy", str(module)], ["rollback"], ["status"],
                 ["realtime", "enable", "public.t"], ["realtime", "prune"], ["serve"]):  # fmt: skip
        refused(capsys, "cannot connect to the database", *argv, "--dsn", UNREACHABLE)
        refused(capsys, "cannot connect to the database", "--dsn", UNREACHABLE, *argv)


def test_every_command_says_when_pyfuncs_is_not_installed(
    capsys: pytest.CaptureFixture[str], bare: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "good.py"
    module.write_text(GOOD)
    monkeypatch.setenv("PYFUNCS_JWT_SECRET", "cli-test-secret-0123456789-0123456789")
    monkeypatch.setenv("PYFUNCS_JWT_ROLES", "student")
    for argv in (["deploy", str(module)], ["rollback"], ["rollback", "public.one", "--to", "1"],
                 ["status"], ["realtime", "enable", "public.t"], ["realtime", "disable", "t"],
                 ["realtime", "prune"], ["serve"]):  # fmt: skip
        refused(capsys, "run `pyfuncs install`", *argv, "--dsn", bare)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["frob"], "invalid choice"),
        (["db", "sideways"], "invalid choice"),
        (["deploy"], "required: target"),
        (["deploy", "nope.py"], "no such file"),
        (["deploy", "no.such.module"], "cannot find module"),
        (["deploy", "not a module"], "neither a file path nor a module name"),
        (["check"], "required: target"),
        (["check", "nope.py"], "no such file"),
        (["rollback"], "no deployment in effect"),
        (["rollback", "api.one"], "--to VERSION"),
        (["rollback", "--to", "2"], "--to needs a routine"),
        (["rollback", "api.one", "--to", "two"], "not a positive whole number"),
        (["rollback", "api.nope", "--to", "1"], "no routine api.nope"),
        (["realtime", "enable"], "name the tables"),
        (["realtime", "enable", "public.nope"], "does not exist"),
        (["realtime", "enable", "not a name!"], "enabling realtime"),
        (["realtime", "prune", "public.t"], "prune takes no table names"),
        (["realtime", "prune", "--keep-days", "-1"], "0 or more"),
        (["serve"], "PYFUNCS_JWT_ROLES"),
        (["serve", "--port", "0"], "not a positive whole number"),
        (["serve", "--log-level", "loud"], "invalid choice"),
    ],
)  # fmt: skip
def test_bad_input_gets_one_line_saying_what_to_do(
    capsys: pytest.CaptureFixture[str], dsn: str, monkeypatch: pytest.MonkeyPatch,
    argv: list[str], says: str,
) -> None:  # fmt: skip
    monkeypatch.setenv("PYFUNCS_JWT_SECRET", "cli-test-secret-0123456789-0123456789")
    monkeypatch.delenv("PYFUNCS_JWT_ROLES", raising=False)
    refused(capsys, says, *argv, "--dsn", dsn)


def test_install_needs_a_superuser_and_says_so(
    capsys: pytest.CaptureFixture[str], bare: str, authenticator_dsn: str
) -> None:
    refused(capsys, "needs a superuser", "install", "--dsn",
            bare.replace(f"{SUPERUSER}@", "authenticator@", 1))  # fmt: skip


def test_dsn_before_or_after_the_command(
    capsys: pytest.CaptureFixture[str], dsn: str, tmp_path: Path
) -> None:
    module = tmp_path / "good.py"
    module.write_text(GOOD)
    assert run(capsys, "deploy", str(module), "--dsn", dsn)[0] == 0
    for argv in (["--dsn", dsn, "status"], ["status", "--dsn", dsn]):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and "public.one" in out
    # the one after the command wins over the one before it, as with any option
    assert run(capsys, "--dsn", UNREACHABLE, "status", "--dsn", dsn)[0] == 0
