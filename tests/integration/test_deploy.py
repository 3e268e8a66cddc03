"""Deploys are atomic, versioned, immutable, reversible, and validated before they start."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs import DefinitionError, DeployError, errors
from pyfuncs import deploy as deploying
from pyfuncs.cli import main
from pyfuncs.collect import collect
from tests.conftest import ensure_role

HEADER = "from pyfuncs import stored_function, procedure, db\n\n"


def write(path: Path, body: str) -> str:
    path.write_text(HEADER + textwrap.dedent(body))
    return str(path)


def call(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


V1 = """
@stored_function(schema="dep", roles=["student"])
def greet(name: str) -> str:
    return "hello " + name

@stored_function(schema="dep")
def answer() -> int:
    return 42
"""
V2 = V1.replace('"hello "', '"hi "')


def test_versions_unchanged_restore_and_rollback(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    mod = tmp_path / "dep_a.py"
    first = deploying.deploy(conn, write(mod, V1))
    assert [(c.routine, c.action, c.version) for c in first.changes] == [
        ("dep.greet", "created", 1), ("dep.answer", "created", 1)]  # fmt: skip
    assert call(conn, "SELECT dep.greet('ann')") == "hello ann"

    again = deploying.deploy(conn, str(mod))
    assert not again.changed and again.deployment_id is None

    second = deploying.deploy(conn, write(mod, V2))
    assert [(c.routine, c.action, c.version) for c in second.changes] == [
        ("dep.greet", "updated", 2), ("dep.answer", "unchanged", 1)]  # fmt: skip
    assert call(conn, "SELECT dep.greet('ann')") == "hi ann"

    # a version records what it is, and never changes
    row = conn.execute(
        """SELECT v.version, v.sha256, v.deployed_by, v.source_file, v.identity_args
           FROM pyfuncs.routine_version v JOIN pyfuncs.routine r ON r.id = v.routine_id
           WHERE r.name = 'greet' ORDER BY v.version"""
    ).fetchall()
    assert [(r[0], len(r[1]), r[2], r[4]) for r in row] == [
        (1, 64, "postgres", "text"),
        (2, 64, "postgres", "text"),
    ]
    with pytest.raises(psycopg.Error) as info:
        conn.execute("UPDATE pyfuncs.routine_version SET source = 'x'")
    assert info.value.sqlstate == "PF001"

    # undo the last deployment: greet goes back to v1
    undone = deploying.rollback(conn)
    assert [(c.routine, c.action, c.version) for c in undone.changes] == [
        ("dep.greet", "restored", 1)
    ]
    assert call(conn, "SELECT dep.greet('ann')") == "hello ann"

    # redeploying v2's source reuses version 2 instead of copying it
    third = deploying.deploy(conn, write(mod, V2))
    assert (third.changes[0].action, third.changes[0].version) == ("restored", 2)

    # switching one routine by version
    deploying.switch_version(conn, "dep.greet", 1)
    assert call(conn, "SELECT dep.greet('x')") == "hello x"

    # undoing the very first deployment drops what it created
    deploying.rollback(conn)  # the switch
    deploying.rollback(conn)  # third
    deploying.rollback(conn)  # first (second was already rolled back)
    assert call(conn, "SELECT count(*) FROM pg_proc WHERE proname IN ('greet', 'answer')") == 0
    with pytest.raises(DeployError, match="no deployment in effect"):
        deploying.rollback(conn)


def test_signature_change_replaces_the_function(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    mod = tmp_path / "dep_b.py"
    deploying.deploy(conn, write(mod, V1))
    changed = V1.replace(
        "def greet(name: str) -> str:", "def greet(name: str, times: int = 1) -> str:"
    )
    changed = changed.replace('return "hello " + name', 'return "hello " * times + name')
    deploying.deploy(conn, write(mod, changed))
    assert call(conn, "SELECT dep.greet('a', 2)") == "hello hello a"
    assert call(conn, "SELECT count(*) FROM pg_proc WHERE proname = 'greet'") == 1
    deploying.rollback(conn)
    assert call(conn, "SELECT pg_get_function_arguments('dep.greet'::regproc)") == "name text"


def test_execute_is_granted_only_to_declared_roles(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    deploying.deploy(conn, write(tmp_path / "dep_c.py", V1))
    acl = call(conn, "SELECT proacl::text FROM pg_proc WHERE proname = 'greet'")
    assert "student=X/postgres" in acl and "=X/" not in acl.replace("student=X", "").replace(
        "postgres=X", ""
    )
    assert call(conn, "SELECT prosecdef FROM pg_proc WHERE proname = 'greet'") is False
    conn.execute("SET ROLE manager")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT dep.greet('x')")
    conn.execute("RESET ROLE")
    conn.execute("SET ROLE student")
    assert call(conn, "SELECT dep.greet('x')") == "hello x"


def test_a_failing_deploy_changes_nothing(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    mod = write(
        tmp_path / "dep_d.py",
        V1
        + """
@stored_function(schema="dep")
def clash() -> int:
    return 1
""",
    )
    # the third routine's DDL fails: a function of that name already returns another type
    conn.execute(
        "CREATE SCHEMA dep; CREATE FUNCTION dep.clash() RETURNS text LANGUAGE sql AS 'select 1::text'"
    )
    with pytest.raises(DeployError, match="nothing was changed"):
        deploying.deploy(conn, mod)
    assert call(conn, "SELECT count(*) FROM pyfuncs.routine_version") == 0
    assert call(conn, "SELECT count(*) FROM pg_proc WHERE proname IN ('greet', 'answer')") == 0


def test_missing_roles_are_reported_before_anything_changes(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    mod = write(tmp_path / "dep_e.py", V1.replace('roles=["student"]', 'roles=["nobody_here"]'))
    with pytest.raises(DeployError, match=r"dep_e.py:\d+: dep.greet grants EXECUTE to nobody_here"):
        deploying.deploy(conn, mod)
    assert call(conn, "SELECT count(*) FROM pyfuncs.routine") == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "@stored_function\ndef f(x) -> int:\n    return 1\n",
            "parameter 'x' has no type annotation",
        ),
        ("@stored_function\ndef f(x: int):\n    return 1\n", "the return type is not annotated"),
        ("@stored_function\ndef f(x: set[int]) -> int:\n    return 1\n", "has no PostgreSQL type"),
        (
            "@stored_function\ndef f(x: int | str) -> int:\n    return 1\n",
            "only `T | None` is allowed",
        ),
        (
            "@stored_function(schema='Bad-Name')\ndef f() -> int:\n    return 1\n",
            "schema 'Bad-Name' is not a valid name",
        ),
        (
            "@stored_function(security='definer')\ndef f() -> int:\n    return 1\n",
            "security='definer' is refused",
        ),
        ("@stored_function\ndef f(*args: int) -> int:\n    return 1\n", "no PostgreSQL equivalent"),
        ("@stored_function\ndef f(args: int) -> int:\n    return 1\n", "reserved by PL/Python"),
        # names the generated body uses: such a parameter broke the routine
        ("@stored_function\ndef f(SD: int) -> int:\n    return 1\n", "reserved by PL/Python"),
        ("@stored_function\ndef f(map: int) -> int:\n    return 1\n", "reserved by PL/Python"),
        ("@stored_function\ndef f(dict: int) -> int:\n    return 1\n", "reserved by PL/Python"),
        # (the body's first call catches NameError: as an int parameter, it failed for good)
        (
            "@stored_function\ndef f(NameError: int) -> int:\n    return 1\n",
            "reserved by PL/Python",
        ),
        ("@stored_function\ndef f(a: int = 1, *, b: int) -> int:\n    return 1\n", "needs one too"),
        (
            "@stored_function\ndef f(a: int = None) -> int:\n    return 1\n",
            "default None needs an Optional type",
        ),
        ("@stored_function\ndef f() -> Missing:\n    return 1\n", "type hint cannot be resolved"),
        ("@stored_function\nasync def f() -> int:\n    return 1\n", "async code: routines run"),
        ("@procedure\ndef f() -> list[Row]:\n    return []\n", "a procedure cannot return a set"),
        (
            "@procedure\ndef f(a: int = 1) -> int:\n    return a\n",
            "cannot have parameters with defaults",
        ),
        ("@stored_function\ndef f() -> int\n    return 1\n", "syntax error"),
        ("@stored_function\ndef f() -> int:\n    return 1\nx = 1 / 0\n", "ZeroDivisionError"),
    ],
)
def test_invalid_definitions_are_reported_with_file_and_line(
    conn: psycopg.Connection[Any], tmp_path: Path, body: str, message: str
) -> None:
    prelude = "from __future__ import annotations\nfrom typing import NamedTuple\n"
    prelude += "class Row(NamedTuple):\n    a: int\n"
    mod = tmp_path / f"bad_{abs(hash(body))}.py"
    mod.write_text(prelude + HEADER + body)
    with pytest.raises(DefinitionError, match=message) as info:
        deploying.deploy(conn, str(mod))
    # the decorator is on line 7; syntax and import errors are reported where they are
    expected = {"syntax error": 8, "ZeroDivisionError": 10}.get(message, 7)
    assert re.search(rf"{mod.name}:{expected}\b", str(info.value))
    assert call(conn, "SELECT count(*) FROM pyfuncs.routine") == 0


def test_deploy_notifies_postgrest_to_reload(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgrst")
        deploying.deploy(conn, write(tmp_path / "dep_f.py", V1))
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("pgrst", "reload schema")]
        deploying.deploy(conn, write(tmp_path / "dep_f.py", V2), notify=False)
        assert list(listener.notifies(timeout=0.5)) == []


def test_a_full_notify_queue_skips_the_reload_notice_and_says_so(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Any role can fill the NOTIFY queue (LISTEN, stay idle in a transaction, NOTIFY until
    it is full: half of it is 4 GB, too much for a test, so its usage is what the test sets),
    and a NOTIFY into a full queue fails the COMMIT: deploys, rollbacks and switches skip
    theirs from half full, and say so."""
    mod = write(tmp_path / "dep_q.py", V1)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgrst")
        assert deploying._queue_usage(conn) < deploying.NOTIFY_QUEUE_LIMIT  # the real one
        monkeypatch.setattr(deploying, "_queue_usage", lambda conn: 0.5)
        assert main(["--dsn", dsn, "deploy", mod, "--label", "q1"]) == 0
        out, err = capsys.readouterr()
        assert "created  dep.greet  v1" in out
        assert err.count("\n") == 1 and err.startswith("pyfuncs: warning: NOTIFY pgrst"), err
        assert "queue is 50% full" in err
        result = deploying.deploy(conn, write(tmp_path / "dep_q.py", V2))
        assert result.changed and "was not sent" in result.warnings[0]
        assert deploying.switch_version(conn, "dep.greet", 1).warnings
        assert main(["--dsn", dsn, "rollback"]) == 0
        assert "pyfuncs: warning: NOTIFY pgrst" in capsys.readouterr().err
        assert list(listener.notifies(timeout=0.5)) == []  # none sent
        monkeypatch.undo()
        result = deploying.deploy(conn, write(tmp_path / "dep_q.py", V1))  # the switch undone
        assert result.changed and result.warnings == ()
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("pgrst", "reload schema")]


def test_cli_deploy_status_rollback(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = write(tmp_path / "dep_g.py", V1)
    assert main(["--dsn", dsn, "check", mod]) == 0
    assert main(["--dsn", dsn, "deploy", mod, "--label", "r1"]) == 0
    assert main(["--dsn", dsn, "status"]) == 0
    out = capsys.readouterr().out
    assert "created  dep.greet  v1" in out
    assert "dep.greet" in out.splitlines()[-2] + out.splitlines()[-1]
    assert main(["--dsn", dsn, "rollback", "--label", "r1"]) == 0
    assert "dropped  dep.greet" in capsys.readouterr().out
    assert main(["--dsn", dsn, "deploy", str(tmp_path / "missing.py")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_runtime_missing_is_a_clear_error(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    deploying.deploy(conn, write(tmp_path / "dep_h.py", V1))
    conn.execute("DELETE FROM pyfuncs.runtime_module")
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT dep.answer()")
    assert info.value.sqlstate == "PF002"
    assert errors.from_psycopg(info.value).__class__ is errors.RuntimeMissing


DATA = Path(__file__).parent / "data"


def test_versions_deployed_by_an_older_pyfuncs_run_on_this_runtime(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    """Bodies keep the interface version they were generated for, and the runtime keeps
    serving every version: deploy, upgrade the runtime, roll back to the old version, call."""
    deploying.deploy(conn, str(DATA / "gold_routines.py"))  # today's bodies: v1
    old = (DATA / "v0_routines.sql").read_text()
    routine_id = call(conn, "SELECT id FROM pyfuncs.routine WHERE name = 'add'")
    ddl_v0 = old[old.index('CREATE OR REPLACE FUNCTION "gold"."add"') :].split(";\nCREATE")[0]
    conn.execute(  # the version an older pyfuncs recorded, as a rollback finds it
        "INSERT INTO pyfuncs.routine_version (routine_id, version, sha256, identity_args, "
        "signature, source, source_file, source_line, ddl) SELECT routine_id, 9, 'v0', "
        "identity_args, signature, source, source_file, source_line, %s "
        "FROM pyfuncs.routine_version WHERE routine_id = %s AND version = 1",
        [ddl_v0, routine_id],
    )
    conn.execute("SELECT pyfuncs.boot()")  # this backend runs the runtime installed now
    deploying.switch_version(conn, "gold.add", 9)
    assert 'GD["pyfuncs.runtime"]' in call(conn, "SELECT prosrc FROM pg_proc WHERE proname = 'add'")
    assert call(conn, "SELECT gold.add(2)") == 3
    assert call(conn, "SELECT sum(x) FROM gold.upto(4) x") == 6  # a v1 body, same backend
    conn.execute(old)  # every routine as the older pyfuncs made it
    with psycopg.connect(dsn, autocommit=True) as fresh:  # a backend the v0 body boots
        assert call(fresh, "SELECT gold.add(40, 2)") == 42
        assert call(fresh, "SELECT count(*) FROM gold.upto(5)") == 5
        with pytest.raises(psycopg.errors.QueryCanceled):  # and it is stopped as ever
            fresh.execute("SET statement_timeout = 100")
            fresh.execute("SELECT count(*) FROM gold.upto(1000000000)")


# --- a deploy replaces only what pyfuncs made ----------------------------------------------

CLASH = """
@stored_function(schema="api2")
def f(x: int) -> int:
    return -1
"""
FOREIGN = {
    "a plain SQL function": "CREATE FUNCTION api2.f(x bigint) RETURNS bigint LANGUAGE sql "
    "AS 'SELECT 42'",
    "other names, another result": "CREATE FUNCTION api2.f(y int8) RETURNS text LANGUAGE sql "
    "AS 'SELECT 42::text'",
    "OUT parameters": "CREATE FUNCTION api2.f(x bigint, OUT a int, OUT b int) LANGUAGE sql "
    "AS 'SELECT 4, 2'",
    "a procedure": "CREATE PROCEDURE api2.f(x bigint) LANGUAGE sql AS 'SELECT 42'",
    "plpgsql, quoted": 'CREATE FUNCTION "api2"."f"(bigint) RETURNS bigint LANGUAGE plpgsql '
    "AS 'BEGIN RETURN 42; END'",
}


def foreign_prosrc(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT oid::regprocedure::text, prosrc FROM pg_proc WHERE pronamespace = 'api2'::regnamespace"
    ).fetchall()


@pytest.mark.parametrize("spelling", ["def f", "name='f'"])
@pytest.mark.parametrize("existing", sorted(FOREIGN))
def test_a_deploy_never_replaces_a_routine_it_did_not_make(
    conn: psycopg.Connection[Any], tmp_path: Path, existing: str, spelling: str
) -> None:
    """CREATE OR REPLACE silently took over a function of the same signature (and a rollback
    then dropped it): the application's own `api2.f(bigint)`, or pyfuncs.set_identity."""
    conn.execute("CREATE SCHEMA api2")
    conn.execute(FOREIGN[existing])
    before = foreign_prosrc(conn)
    body = (
        CLASH
        if spelling == "def f"
        else CLASH.replace("schema=", "name='f', schema=").replace("def f(", "def other(")
    )
    mod = write(tmp_path / "clash.py", body)
    with pytest.raises(DeployError, match=r"clash.py:\d+: api2.f\(bigint\): a (function|procedure)"
                       " with this signature already exists and pyfuncs did not deploy it"):  # fmt: skip
        deploying.deploy(conn, mod)
    assert foreign_prosrc(conn) == before
    assert call(conn, "SELECT count(*) FROM pyfuncs.routine") == 0
    with pytest.raises(DeployError, match="no deployment in effect"):
        deploying.rollback(conn)
    assert foreign_prosrc(conn) == before


def test_a_clash_is_one_line_from_the_cli(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn.execute("CREATE SCHEMA api2")
    conn.execute(FOREIGN["a plain SQL function"])
    assert main(["deploy", write(tmp_path / "clash.py", CLASH), "--dsn", dsn]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "drop the existing one first" in err
    assert call(conn, "SELECT api2.f(1)") == 42


def test_what_pyfuncs_dropped_and_someone_made_again_is_not_taken_back(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    mod = write(tmp_path / "clash.py", CLASH)
    deploying.deploy(conn, mod)
    deploying.rollback(conn)  # dropped: the catalog keeps version 1
    conn.execute(FOREIGN["a plain SQL function"])
    for attempt in (lambda: deploying.switch_version(conn, "api2.f", 1),
                    lambda: deploying.deploy(conn, mod)):  # fmt: skip
        with pytest.raises(DeployError, match="already exists and pyfuncs did not deploy it"):
            attempt()
        assert call(conn, "SELECT api2.f(1)") == 42


def routine_state(conn: psycopg.Connection[Any]) -> Any:
    return conn.execute(
        "SELECT pg_get_userbyid(p.proowner), l.lanname, p.proacl::text[], p.prosrc "
        "FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
        "WHERE p.oid = 'api2.f(bigint)'::regprocedure"
    ).fetchone()


@pytest.mark.parametrize("later", ["deploy", "signature change", "rollback", "switch"])
def test_what_the_schema_owner_made_again_under_the_same_signature_is_not_taken_over(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], later: str,
) -> None:  # fmt: skip
    """The schema's owner (not a superuser) drops pyfuncs' live routine and makes its own:
    CREATE OR REPLACE kept that role as the owner of the next version, with its grants, and
    a rollback dropped its routine. Refused, in one line, with nothing changed."""
    ensure_role(conn, "api2_owner")
    conn.execute("CREATE SCHEMA api2 AUTHORIZATION api2_owner")
    mod = tmp_path / "clash.py"
    deploying.deploy(conn, write(mod, CLASH))
    deploying.deploy(conn, write(mod, CLASH.replace("-1", "-2")))
    conn.execute("SET ROLE api2_owner")
    conn.execute("DROP FUNCTION api2.f(bigint)")
    conn.execute(FOREIGN["a plain SQL function"])
    conn.execute("GRANT EXECUTE ON FUNCTION api2.f(bigint) TO student")
    conn.execute("RESET ROLE")
    before = routine_state(conn), call(conn, "SELECT live_version FROM pyfuncs.routine")
    argv = {
        "deploy": ["deploy", write(mod, CLASH.replace("-2", "-3"))],
        "signature change": ["deploy", write(mod, CLASH.replace("x: int", "x: str"))],
        "rollback": ["rollback"],
        "switch": ["rollback", "api2.f", "--to", "1"],
    }[later]
    assert main([*argv, "--dsn", dsn]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "api2.f(bigint): the routine in the database is not the one pyfuncs deployed" in err
    assert "its owner is api2_owner, its language sql" in err
    assert (routine_state(conn), call(conn, "SELECT live_version FROM pyfuncs.routine")) == before
    assert call(conn, "SELECT api2.f(1)") == 42
    # dropped, it is simply made again, by and for pyfuncs
    conn.execute("DROP FUNCTION api2.f(bigint)")
    deploying.deploy(conn, write(mod, CLASH.replace("-2", "-3")))
    owner, language, acl, _ = routine_state(conn)
    assert (owner, language) == ("postgres", "plpython3u") and not any(
        "student" in a for a in acl or [])  # fmt: skip


def test_a_signature_change_does_not_take_over_another_overload(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Its own old signature is dropped and the new one created: one that someone else
    made is in the way."""
    mod = tmp_path / "clash.py"
    deploying.deploy(conn, write(mod, CLASH))
    conn.execute("CREATE FUNCTION api2.f(x text) RETURNS bigint LANGUAGE sql AS 'SELECT 42'")
    with pytest.raises(DeployError, match=r"api2.f\(text\): a function with this signature"):
        deploying.deploy(conn, write(mod, CLASH.replace("x: int", "x: str")))
    assert call(conn, "SELECT api2.f(1)") == -1 and call(conn, "SELECT api2.f('a')") == 42
    # its own routine, redeployed with changes, is replaced as before
    assert deploying.deploy(conn, write(mod, CLASH.replace("-1", "-2"))).changes[0].action == (
        "updated")  # fmt: skip
    assert call(conn, "SELECT api2.f(1)") == -2


RESERVED = ["pyfuncs", "pg_catalog", "information_schema", "pg_toast", "pg_temp", "pg_temp_1",
            "pg_mine"]  # fmt: skip


def identity_source(conn: psycopg.Connection[Any]) -> Any:
    return call(conn, "SELECT md5(prosrc) FROM pg_proc WHERE oid = 'pyfuncs.set_identity'::regproc")


@pytest.mark.parametrize("schema", RESERVED)
def test_reserved_schemas_are_refused_at_deploy_time_too(
    conn: psycopg.Connection[Any], tmp_path: Path, schema: str
) -> None:
    """Definitions made some other way than by `collect` (which refuses them) are refused
    before the database is touched."""
    before = identity_source(conn)
    (good,) = collect(write(tmp_path / "hijack.py", """
        @stored_function(schema="api", roles=["writer"])
        def set_identity(role: str, claims: str) -> None:
            db.execute("SELECT set_config('role', $1, true)", [role])
    """))  # fmt: skip
    hijack = dataclasses.replace(good, options=dataclasses.replace(good.options, schema=schema))
    with pytest.raises(DeployError, match=f"the schema '{schema}' is reserved"):
        deploying.deploy_collected(conn, [hijack], target="hijack")
    assert identity_source(conn) == before
    assert call(conn, "SELECT count(*) FROM pyfuncs.routine") == 0


def test_versions_recorded_in_a_reserved_schema_are_neither_made_nor_dropped(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """What an older pyfuncs recorded there (a deploy that replaced pyfuncs.set_identity):
    switching to it or rolling it back would change pyfuncs' own functions."""
    before = identity_source(conn)
    deploying.deploy(conn, write(tmp_path / "old.py", """
        @stored_function(schema="api")
        def set_identity(role: str, claims: str) -> None:
            return None
    """))  # fmt: skip
    conn.execute("UPDATE pyfuncs.routine SET schema_name = 'pyfuncs'")  # as it was recorded
    for attempt in (lambda: deploying.rollback(conn),
                    lambda: deploying.switch_version(conn, "pyfuncs.set_identity", 1)):  # fmt: skip
        with pytest.raises(DeployError, match="the schema 'pyfuncs' is reserved"):
            attempt()
        assert identity_source(conn) == before


def test_the_red_teams_module_is_refused_from_the_cli(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = identity_source(conn)
    mod = write(tmp_path / "hijack.py", """
        @stored_function(schema="pyfuncs", roles=["writer"])
        def set_identity(role: str, claims: str) -> None:
            db.execute("SELECT set_config('role', $1, true)", [role])
    """)  # fmt: skip
    for command in ("check", "deploy"):
        assert main([command, mod, "--dsn", dsn]) == 1
        assert "schema 'pyfuncs' is reserved" in capsys.readouterr().err
    assert identity_source(conn) == before


def test_the_catalog_names_no_path_of_the_deployers_machine(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """PUBLIC may read pg_proc and the versions' source_file: a module outside the working
    directory is named there by its file name alone."""
    module = tmp_path / "secret_place" / "placed.py"
    module.parent.mkdir()
    module.write_text("from pyfuncs import stored_function\n\n"
                      "@stored_function(schema='app')\ndef placed() -> int:\n    return 1\n")  # fmt: skip
    deploying.deploy(conn, str(module))
    row = conn.execute(
        "SELECT v.source_file, p.prosrc FROM pyfuncs.routine_version v, pg_proc p "
        "WHERE p.oid = 'app.placed'::regproc"
    ).fetchone()
    assert row is not None and row[0] == "placed.py"
    assert "placed.py:3" in row[1] and "secret_place" not in row[1]
    assert conn.execute("SELECT app.placed()").fetchone() == (1,)
