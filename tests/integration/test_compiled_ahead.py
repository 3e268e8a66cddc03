"""Routine modules compiled ahead of their first call (pyfuncs/ahead.py): a backend loads the
code `pyfuncs deploy` stored for its runtime and Python, and compiles the module itself
where there is none; callers cannot write or misdirect it."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs import ahead, migrate
from pyfuncs import deploy as deploying

FIRST = """
from pyfuncs import stored_function

@stored_function(schema="ahead")
def first(x: int) -> str:
    return "first " + str(x)
"""
SECOND = FIRST.replace("first", "second")

# what the backend has loaded: the runtime's compiler of routine modules, or not
LOADED = """
CREATE FUNCTION public.compiled_here() RETURNS boolean LANGUAGE plpython3u AS $$
import sys
return "pyfuncs_pg.guards" in sys.modules
$$;
"""


@pytest.fixture
def modules(conn: psycopg.Connection[Any], tmp_path: Path) -> psycopg.Connection[Any]:
    conn.execute(LOADED)
    for name, text in (("ahead_first.py", FIRST), ("ahead_second.py", SECOND)):
        (tmp_path / name).write_text(textwrap.dedent(text))
        deploying.deploy(conn, str(tmp_path / name))
    return conn


def _first_call(dsn: str, query: str = "SELECT ahead.first(1)", **options: Any) -> tuple[Any, bool]:
    """A routine's first call in a new connection, and whether that backend compiled it."""
    with psycopg.connect(dsn, autocommit=True, **options) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        compiled = conn.execute("SELECT public.compiled_here()").fetchone()
        assert compiled is not None
        return row[0], compiled[0]


def _codes(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pyfuncs.routine_code").fetchone()
    assert row is not None
    return int(row[0])


def test_a_backend_loads_the_code_deploy_compiled(dsn: str, modules: Any) -> None:
    assert _codes(modules) == 2  # one per module
    assert _first_call(dsn) == ("first 1", False)
    assert _first_call(dsn, "SELECT ahead.second(2)") == ("second 2", False)


TWO = """
from pyfuncs import stored_function

def _shared(x: int) -> int:
    return x * 10

@stored_function(schema="ahead")
def one(x: int) -> int:
    return _shared(x) + 1

@stored_function(schema="ahead")
def two(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return _shared(x) + 2
"""


def test_every_routine_of_a_module_loads_its_code_compiled_ahead(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    """Each routine embeds its own copy of its module; the second copy a backend loads
    (named `ahead_two.py~2` there) is given its code compiled ahead under that name, not
    compiled again, and its errors still point at the deployed file and line."""
    conn.execute(LOADED)
    (tmp_path / "ahead_two.py").write_text(textwrap.dedent(TWO))
    deploying.deploy(conn, str(tmp_path / "ahead_two.py"))
    assert _codes(conn) == 2  # one per routine's copy
    for first, second in (("one", "two"), ("two", "one")):
        with psycopg.connect(dsn, autocommit=True) as fresh:
            assert fresh.execute(f"SELECT ahead.{first}(1)").fetchone() is not None
            assert fresh.execute(f"SELECT ahead.{second}(2)").fetchone() is not None
            assert fresh.execute("SELECT public.compiled_here()").fetchone() == (False,)
            with pytest.raises(psycopg.Error) as info:
                fresh.execute("SELECT ahead.two(-1)")
            line = textwrap.dedent(TWO).splitlines().index('        raise ValueError("negative")')
            assert f"ahead_two.py:{line + 1} in two" in str(info.value.diag.message_primary)
            assert 'raise ValueError("negative")' in str(info.value.diag.message_detail)


def test_without_code_for_its_runtime_the_backend_compiles_the_module(
    dsn: str, modules: psycopg.Connection[Any]
) -> None:
    # another runtime installed since (its sha256 differ): the code is not its
    modules.execute("UPDATE pyfuncs.runtime_module SET sha256 = 'other' WHERE name = 'guards'")
    assert _first_call(dsn) == ("first 1", True)
    modules.execute("DELETE FROM pyfuncs.routine_code")
    assert _first_call(dsn) == ("first 1", True)


def test_install_compiles_the_live_modules_for_its_runtime(
    dsn: str, modules: psycopg.Connection[Any]
) -> None:
    modules.execute("DELETE FROM pyfuncs.routine_code")
    modules.execute(
        "INSERT INTO pyfuncs.routine_code (key, runtime, code) VALUES ('stale', 'other', '')"
    )
    migrate.install(dsn)
    keys = {row[0] for row in modules.execute("SELECT key FROM pyfuncs.routine_code")}
    assert len(keys) == 2 and "stale" not in keys  # another runtime's code is pruned
    assert _first_call(dsn) == ("first 1", False)


def test_deploy_stores_no_code_for_a_runtime_it_does_not_ship(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    conn.execute("UPDATE pyfuncs.runtime_module SET sha256 = 'other' WHERE name = 'db'")
    (tmp_path / "ahead_first.py").write_text(textwrap.dedent(FIRST))
    deploying.deploy(conn, str(tmp_path / "ahead_first.py"))
    assert _codes(conn) == 0


def test_the_key_covers_python_runtime_file_and_source() -> None:
    runtime = ahead.runtime_hashes()
    row = ahead.compiled("m.py", "x = 1\n", runtime)
    assert row is not None
    others = [
        ahead.compiled("n.py", "x = 1\n", runtime),
        ahead.compiled("m.py", "x = 2\n", runtime),
        ahead.compiled("m.py", "x = 1\n", runtime | {"guards": "other"}),
    ]
    assert all(o is not None and o["key"] != row["key"] for o in others)
    # a file name and source that run into another pair's (a red team's note)
    split = [
        ahead.compiled("m.py\nx = 1", "\n", runtime),
        ahead.compiled("m.py", "x = 1\n\n", runtime),
    ]
    assert split[0] is not None and split[1] is not None and split[0]["key"] != split[1]["key"]
    assert ahead.compiled("m.py", "def (:\n", runtime) is None  # the backend will say why


def test_callers_cannot_write_compiled_code(
    authenticator_dsn: str, modules: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(authenticator_dsn, autocommit=True) as caller:
        for statement in (
            "INSERT INTO pyfuncs.routine_code (key, runtime, code) VALUES ('k', 'r', '')",
            "UPDATE pyfuncs.routine_code SET code = ''",
            "DELETE FROM pyfuncs.routine_code",
            "TRUNCATE pyfuncs.routine_code",
            "BEGIN; LOCK TABLE pyfuncs.routine_code IN ACCESS EXCLUSIVE MODE",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                caller.execute(statement)
            caller.execute("ROLLBACK")
    assert _codes(modules) == 2


def test_a_callers_search_path_does_not_choose_the_code(
    dsn: str, authenticator_dsn: str, modules: psycopg.Connection[Any]
) -> None:
    """The lookup runs as the caller, with the caller's search_path: an `=` of text that
    says yes to everything, found before pg_catalog's, would hand one module another's
    code. Every name the lookup uses is qualified."""
    modules.execute(
        """
        CREATE SCHEMA evil;
        CREATE FUNCTION evil.anything(text, text) RETURNS boolean
            LANGUAGE sql IMMUTABLE AS 'SELECT true';
        CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.anything);
        CREATE TYPE evil.text AS (x int);
        GRANT USAGE ON SCHEMA evil, ahead TO PUBLIC;
        GRANT EXECUTE ON FUNCTION ahead.first(bigint), ahead.second(bigint) TO PUBLIC;
        """
    )
    path = {"options": "-c search_path=evil,pg_catalog,public"}
    for query, expected in (("SELECT ahead.second(2)", "second 2"),
                            ("SELECT ahead.first(1)", "first 1")):  # fmt: skip
        with psycopg.connect(authenticator_dsn, autocommit=True, **path) as caller:
            row = caller.execute(query).fetchone()
            assert row == (expected,)
    assert _first_call(dsn, **path) == ("first 1", False)
