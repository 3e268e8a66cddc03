"""Round 84: decimal's borrowed current context (gh-148382) past round 83's hook.

Round 83 replaced Decimal's tp_richcompare (and that of the subclasses that existed then)
with one that holds the current context. But a class a routine makes later gets its slot
from Decimal's `__lt__`/`__eq__`… wrapper descriptors (type_new's fixup_slot_dispatchers:
an inherited slot wrapper's `d_wrapped`), which still point at C's own dec_richcompare: a
routine's `class D(decimal.Decimal): pass` compares without the hook (BREAK: the freed
context's flag write lands in a routine's bytes object, 14th byte 0x01, as in round 83).

Suggested fix: point the `d_wrapped` of Decimal's six comparison wrapper descriptors
(`__lt__` … `__ge__` in the type's dict) at the hook as well, so classes made later inherit
it (and a direct call of the wrapper goes through it); or have the class-making hook
(pyfuncs_type_new) replace the slot of a new Decimal subclass that has C's own.

Closed: the six comparison wrappers in Decimal's dict wrap the hook too, so a class made
later takes it (backstop.hold_decimal_contexts).

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


class Dec(decimal.Decimal):
    """A Decimal subclass made after the hook: its tp_richcompare comes from Decimal's
    slot wrappers, C's own dec_richcompare."""


def _attempt(make, size, count, swapped):
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
        if swapped:
            Ratio(1) > make("NaN")
        else:
            make("NaN") < Ratio(1)
        raised = "none"
    except decimal.InvalidOperation:
        raised = "InvalidOperation"
    _KEPT.append(spray)
    changed = [b.hex() for b in spray if any(b)]
    return f"{raised}|{len(changed)}|{','.join(changed[:2])}"


@stored_function(schema="r84d")
def subclass_freed(size: int, count: int) -> str:
    """gh-148382 with a Decimal subclass of the routine's as the left operand."""
    return _attempt(Dec, size, count, False)


@stored_function(schema="r84d")
def subclass_swapped(size: int, count: int) -> str:
    """The same, reached through Fraction's comparison (NotImplemented, then the
    subclass's reflected one)."""
    return _attempt(Dec, size, count, True)


@stored_function(schema="r84d")
def class_in_call_freed(size: int, count: int) -> str:
    """A Decimal subclass made in the call itself."""

    class Local(decimal.Decimal):
        pass

    return _attempt(Local, size, count, False)


@stored_function(schema="r84d")
def subclass_compares() -> str:
    """Decimal subclasses compared with Fractions as routines use them."""
    half = fractions.Fraction(1, 2)
    return f"{Dec(1) > half}|{Dec(1) == fractions.Fraction(2, 2)}|{Dec(0) < half}"
'''


@pytest.fixture
def r84d(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Path,
        mallory_role: str) -> Any:  # fmt: skip
    with deployed_for_mallory(conn, cluster, tmp_path / "r84_decimal.py", MODULE, "r84d"):
        yield dsn


_connect = connect_mallory


@pytest.mark.parametrize("function", ["subclass_freed", "subclass_swapped", "class_in_call_freed"])
def test_a_decimal_subclass_comparison_does_not_write_into_a_freed_context(
    r84d: str, function: str
) -> None:
    """A routine's Decimal subclass ('NaN') compared with a Fraction subclass whose
    `numerator` frees the current context: no bytes object of the routine's changes."""
    with _connect(r84d) as c:
        got, _ = timed(c, f"SELECT r84d.{function}(56, 64)")
        print(got)
        if isinstance(got, psycopg.Error):
            assert "crashed" not in str(got), got
            return
        _raised, changed, sample = got[0].split("|")
        assert changed == "0", f"a write into a freed decimal context changed bytes: {sample}"


def test_decimal_subclasses_compare_as_before(r84d: str) -> None:
    with _connect(r84d) as c:
        assert value(c, "SELECT r84d.subclass_compares()") == "True|True|True"
