"""Errors reach SQL and Python callers with an SQLSTATE, a message and the source file:line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs import errors
from pyfuncs.client import Client

from .modules import errors_mod as m

MODULE = "tests/integration/modules/errors_mod.py"


def _line(text: str) -> int:
    lines = Path(MODULE).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


@pytest.fixture
def client(deployed: Any) -> Client:
    return deployed(m)


def test_python_exception_points_at_the_raising_line(client: Client) -> None:
    with pytest.raises(errors.RoutineFailed) as info:
        client.call(m.nested, -1)
    err = info.value
    assert err.sqlstate == "PF000"
    line = _line('raise ValueError(f"amount must be')
    assert str(err) == f"ValueError: amount must be >= 0, got -1 ({MODULE}:{line} in _check)"
    assert err.detail is not None
    assert f'File "{MODULE}", line {_line("_check(amount)")}, in nested' in err.detail
    assert "raise ValueError" in err.detail  # the source line itself is shown


def test_sql_clients_see_the_same(client: Client, conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT err.nested(-5)")
    assert info.value.sqlstate == "PF000"
    assert info.value.diag.message_primary is not None
    assert f"({MODULE}:" in info.value.diag.message_primary


def test_raise_error_carries_its_own_sqlstate_detail_and_hint(client: Client) -> None:
    with pytest.raises(errors.RaisedError) as info:
        client.call(m.custom, "P0001")
    assert info.value.detail is not None and info.value.detail.startswith("balance is 3")
    assert info.value.hint == "top up"
    with pytest.raises(errors.CheckViolation):
        client.call(m.custom, "23514")


def test_database_errors_keep_their_sqlstate(client: Client) -> None:
    with pytest.raises(errors.DatabaseError) as info:
        client.call(m.divide, 1, 0)
    assert info.value.sqlstate == "22012"
    assert f"({MODULE}:{_line('SELECT $1::bigint / $2::bigint')} in divide)" in str(info.value)
    with pytest.raises(errors.UniqueViolation):
        client.call(m.duplicate)


def test_a_caught_query_error_does_not_poison_the_call(client: Client) -> None:
    assert client.call(m.caught) == "caught 22012"


def test_null_for_a_required_parameter_is_rejected_by_name(
    conn: psycopg.Connection[Any], client: Client
) -> None:
    with pytest.raises(psycopg.errors.NullValueNotAllowed) as info:
        conn.execute("SELECT err.nested(NULL)")
    assert "parameter 'amount' must not be NULL" in str(info.value)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "missing required argument 'amount'"),
        ((), {"amont": 1}, "has no parameter 'amont'"),
        (("1",), {}, "parameter 'amount' expects bigint, got str"),
        ((True,), {}, "parameter 'amount' expects bigint, got bool"),
        ((None,), {}, "parameter 'amount' must not be None"),
        ((1, 2), {}, "takes 1 arguments, 2 given"),
        ((1,), {"amount": 2}, "parameter 'amount' is given twice"),
    ],
)
def test_bad_arguments_are_rejected_before_anything_runs(
    client: Client, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(errors.ArgumentError, match=message):
        client.call(m.nested, *args, **kwargs)


def test_calling_an_unknown_routine_by_name(client: Client) -> None:
    with pytest.raises(errors.ArgumentError, match=r"no routine named 'err\.nope' is deployed"):
        client.call("err.nope")
    assert client.call("err.nested", amount=3) == 3


def test_every_routine_of_a_module_points_at_its_line(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    """Each routine loads its own copy of the module in a backend (its source without the
    routines it does not use), under a file name of its own after the first (`file~2`, so
    that tracebacks show each copy's lines): errors name the file as deployed, whichever
    routine of the module ran first in the backend."""
    line = _line('raise ValueError(f"amount must be')
    for first in ("SELECT err.custom('P0001')", "SELECT err.divide(1, 0)"):
        with psycopg.connect(conn.info.dsn, autocommit=True) as fresh:
            with pytest.raises(psycopg.Error):
                fresh.execute(first)
            with pytest.raises(psycopg.Error) as info:
                fresh.execute("SELECT err.nested(-1)")
        assert f"({MODULE}:{line} in _check)" in str(info.value.diag.message_primary)
        assert f'File "{MODULE}", line {line}, in _check' in str(info.value.diag.message_detail)
