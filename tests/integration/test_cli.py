"""The command line, as a new user meets it: every command takes --dsn before or after its
name, and answers bad input, a database it cannot reach and a missing `pyfuncs install`
with one line saying what to do, never with a traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        (["rollback", "api.one", "--to", "two"], "not a version number"),
        (["rollback", "api.nope", "--to", "1"], "no routine api.nope"),
        (["realtime", "enable"], "name the tables"),
        (["realtime", "enable", "public.nope"], "does not exist"),
        (["realtime", "enable", "not a name!"], "enabling realtime"),
        (["realtime", "prune", "public.t"], "prune takes no table names"),
        (["realtime", "prune", "--keep-days", "-1"], "from 0 to 36500"),
        (["serve"], "PYFUNCS_JWT_ROLES"),
        (["serve", "--port", "0"], "from 1 to 65535"),
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


def test_install_says_when_a_library_is_missing_on_the_server(
    capsys: pytest.CaptureFixture[str], bare: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "install", "--dsn", bare)  # `make setup` built it
    assert code == 0 and "runtime installed" in out and "is not in /" not in out
    monkeypatch.setattr("pyfuncs.cli.BACKSTOP_LIBRARY", "pyfuncs_absent.so")
    code, out, _ = run(capsys, "install", "--dsn", bare)
    assert code == 0 and "pyfuncs_absent.so is not in /" in out and "make backstop" in out
    assert "make entry" not in out
    monkeypatch.setattr("pyfuncs.cli.ENTRY_LIBRARY", "pyfuncs_gone.so")
    code, out, _ = run(capsys, "install", "--dsn", bare)
    assert "pyfuncs_gone.so is not in /" in out and "make entry" in out


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


NOT_DAYS = ["nan", "inf", "-inf", "1e9", "1e308", "1.5", "-1", "36501", "99999999999999999999",
            "", " ", "٣", "0x10", "+3", "1_0"]  # fmt: skip
NOT_PORTS = ["99999", "65536", "0", "-1", "nan", "1e3", "80.0", "８０"]  # noqa: RUF001
NOT_VERSIONS = ["0", "nan", "1e3", "2147483648", "-2", "1.0"]


@pytest.mark.parametrize(
    "argv",
    [
        *(["realtime", "prune", "--keep-days", days] for days in NOT_DAYS),
        *(["serve", "--port", port] for port in NOT_PORTS),
        *(["serve", "--workers", workers] for workers in ["0", "65", "1000000", "nan"]),
        *(["rollback", "api.one", "--to", version] for version in NOT_VERSIONS),
        ["rollback", "api.one\nx", "--to", "1"],
        ["rollback", "a.b.c", "--to", "1"],
        ["rollback", "API.One", "--to", "1"],
        ["rollback", "--label", "x\n::error::forged"],
        ["rollback", "--label", "x" * 201],
        ["rollback", "--label", ""],
        ["serve", "--host", ""],
        ["serve", "--host", "local\nhost"],
    ],
    ids=repr,
)
def test_every_argument_is_validated_by_its_type(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    """`--keep-days nan` was a traceback, `--port 99999` listened on 34463: every number is
    a whole number in a range, every name a name, every label printable, before anything is
    done (the database named here cannot even be reached)."""
    monkeypatch.setenv("PYFUNCS_JWT_SECRET", "cli-test-secret-0123456789-0123456789")
    monkeypatch.setenv("PYFUNCS_JWT_ROLES", "student")
    code, out, err = run(capsys, *argv, "--dsn", UNREACHABLE)
    assert code == 2 and out == "", (argv, out)
    assert err.startswith("pyfuncs ") and err.count("\n") == 1, (argv, err)
    assert "cannot connect" not in err and "Traceback" not in err


def test_valid_numbers_pass(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    for days in ("0", "3", " 7 ", "36500"):
        code, out, err = run(capsys, "realtime", "prune", "--keep-days", days, "--dsn", dsn)
        assert code == 0 and out.startswith("pruned the changes of 0"), (days, err)


@pytest.mark.parametrize(
    "source",
    [
        "x = a" + ".b" * 400,
        "x = 1" + " + 1" * 1000,
        "x = " + "-" * 100_000 + "1",
        "x = " + "(" * 300 + ")" * 300,
        "x = " + "lambda: " * 400 + "1",
        "x = " + "[" * 150 + "]" * 150,
        "x = a" + "[0]" * 400,
        "x = f" + "()" * 400,
        "x = " + "not " * 5000 + "1",
        "".join(f"{' ' * i}if x:\n" for i in range(120)) + " " * 120 + "pass",
    ],
    ids=["attributes", "sum", "unary", "parentheses", "lambdas", "lists", "subscripts", "calls",
         "not", "blocks"],
)  # fmt: skip
def test_deep_nesting_is_a_clear_refusal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, source: str
) -> None:
    """`x = a.b.b…` 400 levels deep was `unexpected error: RecursionError`."""
    module = tmp_path / "deep.py"
    module.write_text(GOOD + source + "\n")
    code, out, err = run(capsys, "check", str(module))
    assert code == 1 and out == ""
    assert err.startswith("pyfuncs: ") and "deep.py" in err, err
    assert "unexpected error" not in err and "Traceback" not in err
    assert any(says in err for says in ("too deep", "too deeply", "syntax error")), err


def test_serve_as_a_role_without_the_gateways_grants_says_which(
    capsys: pytest.CaptureFixture[str],
    dsn: str,
    authenticator_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It passed the install check (the role may not read the version table), then failed in
    the gateway's startup with a traceback."""
    monkeypatch.setenv("PYFUNCS_JWT_SECRET", "cli-test-secret-0123456789-0123456789")
    monkeypatch.setenv("PYFUNCS_JWT_ROLES", "student")
    grants = ('GRANT SELECT ON pyfuncs.realtime_state, '
              'pyfuncs.realtime_commit, pyfuncs.realtime_change TO "authenticator"; '
              'GRANT INSERT ON pyfuncs.realtime_audit TO "authenticator"')  # fmt: skip
    refused(capsys, grants, "serve", "--dsn", authenticator_dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:  # what README says it needs is enough
        conn.execute(grants.replace('"authenticator"', "authenticator"))
    with socket.socket() as taken:  # and then it gets as far as the address
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        refused(capsys, "cannot listen on", "serve", "--port", port, "--dsn", authenticator_dsn)


@pytest.mark.parametrize("host", ["no-such-host.invalid", "256.1.1.1", "::99999"])
def test_serve_on_an_address_it_cannot_listen_on(
    capsys: pytest.CaptureFixture[str], dsn: str, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.setenv("PYFUNCS_JWT_SECRET", "cli-test-secret-0123456789-0123456789")
    monkeypatch.setenv("PYFUNCS_JWT_ROLES", "student")
    refused(capsys, "is not an address to listen on", "serve", "--host", host, "--dsn", dsn)


def test_serve_on_a_port_in_use(
    capsys: pytest.CaptureFixture[str], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYFUNCS_JWT_SECRET", "cli-test-secret-0123456789-0123456789")
    monkeypatch.setenv("PYFUNCS_JWT_ROLES", "student")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        refused(capsys, f"cannot listen on 127.0.0.1:{port}", "serve", "--port", port,
                "--dsn", dsn)  # fmt: skip


@pytest.mark.parametrize(
    "table",
    ["pyfuncs.realtime_change", '"pyfuncs".realtime_change', "PYFUNCS.REALTIME_CHANGE",
     "pyfuncs.realtime_commit", "pyfuncs.routine", "pg_catalog.pg_class", "PG_CATALOG.pg_class",
     "information_schema.sql_features"],
)  # fmt: skip
def test_realtime_never_captures_system_tables(
    capsys: pytest.CaptureFixture[str], dsn: str, conn: psycopg.Connection[Any], table: str
) -> None:
    """Enabling pyfuncs.realtime_change made every later capture recurse into itself."""
    refused(capsys, "realtime captures application tables only", "realtime", "enable", table,
            "--dsn", dsn)  # fmt: skip
    assert conn.execute("SELECT count(*) FROM pyfuncs.realtime_table").fetchone() == (0,)


def test_db_with_a_file_where_the_cluster_lives(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pgdata").write_text("not a directory")
    monkeypatch.setenv("PYFUNCS_PGDATA", str(tmp_path / "pgdata"))
    for action in ("up", "url"):
        refused(capsys, "the embedded cluster cannot be used", "db", action)


def test_text_that_is_not_utf8_gets_one_line(
    capsys: pytest.CaptureFixture[str], dsn: str, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Bytes that are not UTF-8 reach Python as lone surrogates: `unexpected error:
    UnicodeEncodeError` once something encoded them; a NUL byte in a module was reported at
    position `None:0`."""
    refused(capsys, "is not a table name", "realtime", "enable", "rt.notes\udcff", "--dsn", dsn)
    monkeypatch.setenv("PYFUNCS_JWT_ROLES", "student")
    monkeypatch.setenv("PYFUNCS_JWT_SECRET", "\udcff" * 40)
    refused(capsys, "PYFUNCS_JWT_SECRET is not UTF-8 text", "serve", "--dsn", dsn)
    monkeypatch.setenv("PYFUNCS_JWT_SECRET", "cli-test-secret-0123456789-0123456789")
    monkeypatch.setenv("PYFUNCS_JWT_ROLES", "student\udcff")
    refused(capsys, "PYFUNCS_JWT_ROLES is not UTF-8 text", "serve", "--dsn", dsn)
    monkeypatch.setenv("PYFUNCS_JWT_ROLES", "student")
    monkeypatch.setenv("PYFUNCS_GATEWAY_METRICS_TOKEN", "\udcff")
    refused(capsys, "PYFUNCS_GATEWAY_METRICS_TOKEN is not UTF-8 text", "serve", "--dsn", dsn)
    refused(capsys, "the DSN given by --dsn is not UTF-8 text", "status", "--dsn", dsn + "\udcff")
    monkeypatch.setenv("PYFUNCS_DSN", dsn + "\udcff")
    refused(capsys, "the DSN given by PYFUNCS_DSN is not UTF-8 text", "status")
    module = tmp_path / "nul.py"
    module.write_bytes(b"x = 1\x00\n")
    code, out, err = run(capsys, "check", str(module))
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"pyfuncs: {module}: ") and "null bytes" in err, err
    assert "None" not in err
