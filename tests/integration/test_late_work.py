"""Every call is stoppable from its first byte of Python to its last: the conversion of its
result and of its exception, the closing of its generator, and C functions consuming lazy
inputs (issue 12, "Every call stoppable")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster

from .modules import late_mod

SLACK = 0.5  # generous for a shared 2-core machine; `make bench` reports the figure itself


@pytest.fixture
def late(dsn: str, cluster: Cluster) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn) as conn:
        deploying.deploy(conn, late_mod)
        conn.commit()
    postmaster = cluster.postmaster_pid()
    with psycopg.connect(dsn, autocommit=True) as session:
        yield session
    assert cluster.postmaster_pid() == postmaster, "the cluster restarted"


def stopped(conn: psycopg.Connection[Any], query: str, routine: str, limit: int = 200) -> None:
    start = time.monotonic()
    with pytest.raises(psycopg.Error) as info:
        conn.execute(query)
    took = time.monotonic() - start
    assert info.value.sqlstate == "57014", info.value
    assert f"{routine} exceeded its limit timeout_ms={limit}" in str(info.value)
    assert took < limit / 1000 + SLACK
    assert conn.execute("SELECT late.small(1)").fetchone() == (499500 + 45,)  # session is fine


@pytest.mark.parametrize(
    "query",
    [
        "SELECT late.exception_text()",
        "SELECT late.mapping_result()",
        "SELECT late.dataclass_result()",
        "SELECT late.zone_result()",
        "SELECT count(*) FROM late.iterator_rows()",
        "SELECT * FROM late.closing_rows() LIMIT 1",
    ],
)
def test_code_run_on_what_a_routine_returns_or_raises_is_stopped(
    late: psycopg.Connection[Any], query: str
) -> None:
    routine = query.split("late.")[1].split("(")[0]
    stopped(late, query, f"late.{routine}")


@pytest.mark.parametrize("case", sorted(late_mod.LAZY))
def test_c_functions_over_lazy_inputs_are_stopped(late: psycopg.Connection[Any], case: str) -> None:
    stopped(late, f"SELECT late.consume('{case}')", "late.consume")


@pytest.mark.parametrize(
    ("case", "result"), [(1, 499545), (2, 19), (3, 7), (4, 10**12 + 1 + 4), (5, 5)]
)
def test_the_same_tools_on_small_inputs_work(
    late: psycopg.Connection[Any], case: int, result: int
) -> None:
    assert late.execute("SELECT late.small(%s)", [case]).fetchone() == (result,)


POWMOD = """
import decimal
from decimal import Decimal

from pyfuncs import stored_function

HUGE = Decimal("1e100000000")  # one digit of coefficient; 100,000,001 as an integer


@stored_function(schema="powmod", roles=["student"], timeout_ms=500)
def run(how: str) -> str:
    if how == "pow":
        return str(pow(Decimal(3), HUGE, Decimal(7)))
    if how == "pow of an int":
        return str(pow(3, HUGE, Decimal(7)))
    if how == "context":
        return str(decimal.Context().power(Decimal(3), HUGE, Decimal(7)))
    if how == "modulus":
        return str(decimal.Context().power(Decimal(3), Decimal(5), modulo=HUGE))
    # small ones, as before
    return " ".join([str(pow(Decimal(3), Decimal(200), Decimal(7))), str(pow(3, Decimal(200), 7)),
                     str(decimal.Context().power(3, Decimal(10**999), Decimal(10**6 + 3)))])
"""


@pytest.mark.parametrize("how", ["pow", "pow of an int", "context", "modulus"])
def test_a_decimal_modular_power_is_refused_before_it_starts(
    conn: psycopg.Connection[Any], tmp_path: Any, cluster: Cluster, how: str
) -> None:
    """Round 47b: a Decimal modular power was bounded by its operands' coefficient digits,
    and Decimal("1e100000000") has one: pow(Decimal(3), Decimal("1e100000000"), Decimal(7))
    ran in one C call of libmpdec until the backstop ended the session. Its operands (the
    modulus too) are sized as the integers libmpdec makes of them, in every spelling, and
    the power is refused at once (a LIMIT_EXCEEDED the routine could catch); the session
    goes on, and small modular powers work."""
    (tmp_path / "powmod.py").write_text(POWMOD)
    deploying.deploy(conn, str(tmp_path / "powmod.py"))
    postmaster = cluster.postmaster_pid()
    conn.execute("SET ROLE student")
    start = time.monotonic()
    with pytest.raises(psycopg.Error, match="100,000,001-digit number") as info:
        conn.execute("SELECT powmod.run(%s)", [how])
    assert info.value.sqlstate == "54000", info.value
    assert time.monotonic() - start < SLACK
    assert conn.execute("SELECT powmod.run('small')").fetchone() == ("2 2 260542",)
    assert cluster.postmaster_pid() == postmaster, "the cluster restarted"
