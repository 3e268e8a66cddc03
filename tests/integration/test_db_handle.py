"""`db` inside a routine, and the same routine run as plain Python against a connection."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import psycopg
import pytest

from pyfuncs import local
from pyfuncs.client import Client
from pyfuncs.errors import ConfigError

from .modules import db_mod as m

DAY = datetime.date(2024, 2, 28)
IDENT = uuid.UUID(int=9)


@pytest.fixture
def client(deployed: Any, conn: psycopg.Connection[Any]) -> Client:
    conn.execute("CREATE SCHEMA dbh; CREATE TABLE dbh.items (v int CHECK (v >= 0))")
    return deployed(m)


def test_cursor_streams_large_results(client: Client) -> None:
    assert client.call(m.big_sum, 10_000) == 10_000 * 10_001 // 2


def test_subtransactions_roll_back_alone(client: Client) -> None:
    assert client.call(m.keep_good, [3, -1, 5, -7, 1]) == [1, 3, 5]
    assert client.call(m.touch, 3) == 2


def test_query_results_arrive_as_python_types(client: Client) -> None:
    result = client.call(m.typed_values, DAY, IDENT, {"k": [1, 2]})
    assert result == {"next": "2024-02-29", "ident_is_uuid": True, "k": [1, 2],
                      "ts_is_datetime": True, "one": 1, "missing": None}  # fmt: skip


def test_claims_inside_a_routine(client: Client) -> None:
    assert client.call(m.whoami) == {"claims": {}, "user": None}
    with client.transaction() as tx:
        tx.connection.execute("SELECT set_config('request.jwt.claims', %s, true)",
                              [f'{{"sub": "{IDENT}", "role": "x"}}'])  # fmt: skip
        assert tx.call(m.whoami) == {"claims": {"sub": str(IDENT), "role": "x"}, "user": str(IDENT)}


def test_set_returning_routine_over_a_query(client: Client) -> None:
    assert client.call(m.evens, 7) == [2, 4, 6]


def test_the_same_routines_run_outside_postgres(client: Client, dsn: str) -> None:
    """Unit-testing a routine: call the Python function with `db` bound to a connection."""
    with psycopg.connect(dsn, autocommit=True) as conn, local.using(conn):
        assert m.big_sum(10_000) == client.call(m.big_sum, 10_000)
        assert m.typed_values(DAY, IDENT, {"k": [1, 2]}) == client.call(
            m.typed_values, DAY, IDENT, {"k": [1, 2]}
        )
        assert list(m.evens(7)) == [2, 4, 6]
        conn.execute("DELETE FROM dbh.items")
        assert m.keep_good([2, -2, 4]) == [2, 4]


def test_db_outside_postgres_without_a_connection_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"pyfuncs\.local\.using"):
        m.big_sum(3)
