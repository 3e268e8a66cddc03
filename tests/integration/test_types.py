"""Every supported type crosses into a routine as its hinted Python type and back, NULLs too."""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.client import Client

from .modules import types_mod as m

UTC = datetime.UTC
SAMPLE: dict[str, Any] = {
    "i": 2**40,
    "small": 7,
    "f": 1.5,
    "n": Decimal("12345.678"),
    "s": "héllo 'quoted'",
    "b": True,
    "by": b"\x00\xffbin",
    "ts": datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC),
    "d": datetime.date(1999, 12, 31),
    "t": datetime.time(13, 14, 15, 500000),
    "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "j": {"a": [1, 2, {"b": None}], "c": "x"},
    "ints": [1, 2, 3],
    "dates": [datetime.date(2020, 1, 1), datetime.date(2021, 6, 30)],
    "uuids": [uuid.UUID(int=1), uuid.UUID(int=2)],
}


@pytest.fixture
def client(deployed: Any) -> Client:
    return deployed(m)


def test_every_type_round_trips_through_the_client(client: Client) -> None:
    result = client.call(m.everything, **{f"p_{k}": v for k, v in SAMPLE.items()})
    assert isinstance(result, m.Everything)
    assert result == m.Everything(**SAMPLE)


def test_every_type_round_trips_from_sql(client: Client, conn: psycopg.Connection[Any]) -> None:
    names = list(SAMPLE)
    row = conn.execute(
        "SELECT * FROM rt.everything("
        + ", ".join(f"p_{n} => %s" for n in names).replace("p_j => %s", "p_j => %s::jsonb")
        + ")",
        [psycopg.types.json.Jsonb(SAMPLE[n]) if n == "j" else SAMPLE[n] for n in names],
    ).fetchone()
    assert row is not None
    assert dict(zip(names, row, strict=True)) == SAMPLE


def test_nulls_round_trip(client: Client) -> None:
    assert client.call(m.maybe) == {"i": None, "s": None, "d": None, "u": None, "j": None,
                                    "ints": None}  # fmt: skip
    full = client.call(m.maybe, p_i=1, p_s="s", p_d=datetime.date(2020, 1, 2),
                       p_u=uuid.UUID(int=5), p_j={"k": 1}, p_ints=[1, None, 3])  # fmt: skip
    assert full == {"i": 1, "s": "s", "d": datetime.date(2020, 1, 2), "u": uuid.UUID(int=5),
                    "j": {"k": 1}, "ints": [1, None, 3]}  # fmt: skip


def test_scalar_returns(client: Client) -> None:
    assert client.call(m.next_day, datetime.date(2024, 2, 28)) == datetime.date(2024, 2, 29)
    ts = datetime.datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert client.call(m.shift, ts) == ts + datetime.timedelta(hours=1)
    assert client.call(m.shift, ts, hours=0.5) == ts + datetime.timedelta(minutes=30)
    assert client.call(m.new_uuid) == uuid.UUID(int=42)
    assert client.call(m.merge, {"x": 1}) == {"x": 1, "default": True}
    assert client.call(m.reverse_bytes, b"abc") == b"cba"
    assert client.call(m.total, [Decimal("1.10"), Decimal("2.20")]) == Decimal("3.30")
    assert client.call(m.nothing, 1) is None


def test_sets(client: Client, conn: psycopg.Connection[Any]) -> None:
    assert client.call(m.countdown, 3) == [3, 2, 1]
    assert client.call(m.pairs, 2, prefix="q") == [m.Pair(0, "q0"), m.Pair(1, "q1")]
    assert client.call(m.countdown, 0) == []
    rows = conn.execute("SELECT n, label FROM rt.pairs(3) ORDER BY n DESC").fetchall()
    assert rows == [(2, "p2"), (1, "p1"), (0, "p0")]


def test_signature_options_and_comment(client: Client, conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        """SELECT p.provolatile, p.proisstrict, p.proparallel, p.prosecdef,
                  pg_get_function_arguments(p.oid), obj_description(p.oid, 'pg_proc')
           FROM pg_proc p WHERE p.oid = 'rt.next_day'::regproc"""
    ).fetchone()
    assert row == ("i", True, "s", False, "d date", None)
    doc = conn.execute("SELECT obj_description('rt.everything'::regproc, 'pg_proc')").fetchone()
    assert doc == ("Returns its arguments after checking each arrived as its hinted Python type.",)
    args = conn.execute("SELECT pg_get_function_arguments('rt.merge'::regproc)").fetchone()
    assert args == ("""a jsonb, b jsonb DEFAULT '{"default": true}'::jsonb""",)


def test_named_arguments_and_defaults_from_sql(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    assert conn.execute("SELECT rt.shift(hours => 2, ts => '2024-01-01T00:00:00Z')").fetchone() == (
        datetime.datetime(2024, 1, 1, 2, tzinfo=UTC),
    )
    assert conn.execute("SELECT count(*) FROM rt.pairs(count => 4)").fetchone() == (4,)


ONE_FIELD = """
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, TypedDict

from pyfuncs import procedure, stored_function


class One(NamedTuple):
    total: int


@dataclass
class Solo:
    name: str


class Single(TypedDict):
    n: int


@stored_function(schema="one")
def one_tuple(x: int) -> One:
    return One(x + 1)


@stored_function(schema="one")
def one_dataclass(s: str) -> Solo | None:
    return None if s == "" else Solo(s)


@stored_function(schema="one")
def one_dict(x: int) -> Single:
    return {"n": x}


@stored_function(schema="one")
def one_set(x: int) -> Iterator[One]:
    yield One(x)
    yield One(x + 1)


@procedure(schema="one")
def one_procedure(x: int) -> One:
    return One(x * 2)
"""


def test_a_row_type_with_a_single_field(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    """One OUT parameter makes PostgreSQL type the function by that column, not as a
    record: such a routine could not be deployed ("function result type must be bigint")."""
    module = tmp_path / "one_field.py"
    module.write_text(ONE_FIELD)
    deploying.deploy(conn, str(module))
    assert conn.execute("SELECT * FROM one.one_tuple(1)").fetchall() == [(2,)]
    assert conn.execute("SELECT total FROM one.one_tuple(1)").fetchone() == (2,)
    assert conn.execute("SELECT one.one_dataclass('x'), one.one_dataclass('')").fetchone() == (
        "x", None)  # fmt: skip
    assert conn.execute("SELECT n FROM one.one_dict(7)").fetchone() == (7,)
    assert conn.execute("SELECT * FROM one.one_set(5)").fetchall() == [(5,), (6,)]
    assert conn.execute("CALL one.one_procedure(4, NULL)").fetchone() == (8,)
    with Client(dsn) as client:
        assert client.call("one.one_tuple", x=1) == {"total": 2}
        assert client.call("one.one_dataclass", s="") is None
        assert client.call("one.one_procedure", x=3) == {"total": 6}
