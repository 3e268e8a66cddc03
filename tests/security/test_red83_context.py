"""Round 83: decimal's C code takes the current context borrowed (`CURRENT_CONTEXT`: a
reference from the context variable, dropped at once) and uses it after running code of the
routine's (CPython gh-148382, open upstream). A Decimal compared with a Rational reads the
Rational's `numerator` and `denominator` in between; a `numerator` property that closes a
generator suspended inside `with decimal.localcontext()` makes the outer context current
again and frees the local one, which C then records the comparison's InvalidOperation in
(`ctx->status |= status`, after reading `ctx->traps`): a write into freed memory, which a
routine's bytes object took (its 14th byte became 0x01).

Closed: Decimal's tp_richcompare holds the current context around a comparison with an
operand other than a Decimal, int, bool or float (backstop.c pyfuncs_decimal_compare).

Promises attacked: no way out of pure computation / to the interpreter's memory (1), no
crash of the cluster (5). A passing test: the promise held."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs.embedded import Cluster

from .conftest import connect_mallory, deployed_for_mallory, timed, value

MODULE = '''
import decimal
import fractions
from pyfuncs import stored_function

_KEPT = []  # what must never be freed in this backend


def _holding():
    with decimal.localcontext():
        yield


@stored_function(schema="r83")
def context_freed(size: int, count: int) -> str:
    """Decimal's comparison with a Rational takes the current context borrowed
    (CURRENT_CONTEXT), then reads the Rational's `numerator`: a property that closes a
    generator suspended inside `with decimal.localcontext()` gives the outer context back
    and frees the local one, which was current; C then records the comparison's
    InvalidOperation in the freed context (`ctx->status |= status`). Returns the routine's
    bytes objects that took that memory and changed."""
    gen = _holding()
    next(gen)  # a localcontext current, held by its manager in the generator only
    spray = []

    class Ratio(fractions.Fraction):
        @property
        def numerator(self):
            gen.close()
            spray.extend([bytes(size) for _ in range(count)])
            return 1

    try:
        decimal.Decimal("NaN") < Ratio(1)
        raised = "none"
    except decimal.InvalidOperation:
        raised = "InvalidOperation"
    _KEPT.append(spray)
    changed = [b.hex() for b in spray if any(b)]
    return f"{raised}|{len(changed)}|{','.join(changed[:2])}"


@stored_function(schema="r83")
def decimal_compares() -> str:
    """Decimal compared with Fractions as routines use it."""
    one = decimal.Decimal(1)
    half = fractions.Fraction(1, 2)
    with decimal.localcontext() as c:
        c.prec = 5
        inside = str(decimal.Decimal(1) / 3)
    try:
        decimal.Decimal("NaN") < half
        nan = "none"
    except decimal.InvalidOperation:
        nan = "InvalidOperation"
    return f"{one > half}|{one == fractions.Fraction(2, 2)}|{inside}|{nan}"
'''


@pytest.fixture
def r83(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Path,
        mallory_role: str) -> Any:  # fmt: skip
    with deployed_for_mallory(conn, cluster, tmp_path / "r83_context.py", MODULE, "r83"):
        yield dsn


_connect = connect_mallory


def test_a_decimal_comparison_does_not_write_into_a_freed_context(r83: str) -> None:
    """Decimal('NaN') < a Fraction subclass whose `numerator` frees the current context (a
    localcontext entered in a suspended generator, closed there): no bytes object of the
    routine's changes (C's `ctx->status |= InvalidOperation` into the freed context)."""
    with _connect(r83) as c:
        got, _ = timed(c, "SELECT r83.context_freed(56, 64)")
        print(got)
        if isinstance(got, psycopg.Error):
            assert "crashed" not in str(got), got
            return  # refused: held
        _raised, changed, sample = got[0].split("|")
        assert changed == "0", f"a write into a freed decimal context changed bytes: {sample}"


def test_decimal_compares_with_fractions_as_before(r83: str) -> None:
    with _connect(r83) as c:
        assert value(c, "SELECT r83.decimal_compares()") == "True|True|0.33333|InvalidOperation"
