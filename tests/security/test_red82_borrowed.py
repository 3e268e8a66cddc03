"""Round 82: C code of CPython 3.11.2 that trusts a value a routine controls — the class of
gh-123378 (round 81) — audited across builtins and the allowed modules. Two break:

* `defaultdict.__missing__` calls `default_factory` without holding it. A factory that is a
  bound C method (`lst.sort`) whose list is held by nothing else is freed, with its list,
  when the routine's code run inside the call (an item's `__lt__`) sets `default_factory`;
  `list.sort` then finishes by writing the list's size, item array and capacity into the
  freed memory, and reads back from it the array it frees: a routine's bytes object that
  took that memory changes (a write into freed memory, a heap address leaked), and a
  pointer of the routine's choosing is passed to `PyMem_Free` (an arbitrary free).
  (`iter(f, sentinel)`'s C iterator borrows its callable the same way; routines get it
  behind a generator, which refuses the re-entry that would clear it: held.)
* `datetime.date(bytes)` (the unpickling constructor) checks the month only: year 0 gives
  a date whose weekday is -1, and `ctime()` indexes its table of day names with it
  (`DayNames[-1]`), then `strlen`s whatever pointer it found.

Both closed: defaultdict's `__missing__` is Python's, holding the factory
(bounded.hold_default_factories); date, datetime and time made from one or two arguments
are checked field by field (backstop.c's tp_new hooks, bounded.moment_check).

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
import datetime
import struct
from collections import defaultdict
from typing import Any
from pyfuncs import stored_function

_KEPT = []  # what must never be freed in this backend (an object freed under its holder)


class _Factory(defaultdict):
    pass


def _sort_freed_under_it(pattern: bytes) -> list[bytes]:
    """defaultdict calls its factory (a bound lst.sort, the list's only holder) borrowed;
    an item's __lt__ sets default_factory: the bound method and the list are freed while
    sort runs, and bytes objects of the list's size class take the memory. Returns those
    that changed."""
    count = 4000
    big = pattern * count
    spray: list[bytes] = []
    state = {"hit": False}

    class Item:
        def __init__(self, v: int) -> None:
            self.v = v

        def __lt__(self, other: "Item") -> bool:
            if not state["hit"]:
                state["hit"] = True
                junk = [[] for _ in range(200)]  # fills the free list of lists: the
                del junk  # list's block goes back to the allocator
                holder.default_factory = None
                spray.extend([big[k * 31:(k + 1) * 31] for k in range(count)])
            return self.v < other.v

    holder = _Factory([Item(3), Item(1), Item(2)].sort)
    holder["x"]
    _KEPT.append(spray)
    return [b for b in spray if b != pattern]


@stored_function(schema="r82")
def freed_write() -> str:
    """The write into freed memory: which of the routine's bytes objects changed."""
    changed = _sort_freed_under_it(struct.pack("<qqq", 0, 0, -1) + b"SPRAYED")
    return ";".join(repr(struct.unpack("<qQq", b[:24])) for b in changed)


@stored_function(schema="r82")
def chosen_free() -> str:
    """The arbitrary free: the freed list's item pointer is one of the routine's choosing
    (a bytes object it still holds); sort frees it. A new bytes object then takes its place
    while the old one is still held."""
    victim = bytes(range(20, 51))  # 31 bytes: the same size class
    _KEPT.append(victim)
    _sort_freed_under_it(struct.pack("<qQq", 0, id(victim), -1) + b"SPRAYED")
    fresh = [bytes([7]) * 31 for _ in range(64)]
    _KEPT.append(fresh)
    same = [f for f in fresh if id(f) == id(victim)]
    return f"reused={bool(same)} victim_now={victim[:8].hex()}"


@stored_function(schema="r82")
def date_weekday(year_byte: int, day: int) -> int:
    """A date made from a pickle's state with year 0: its weekday."""
    return datetime.date(bytes([0, year_byte, 1, day])).weekday()


@stored_function(schema="r82")
def moment_state(kind: str, state: list[int], as_text: bool) -> str:
    """A date, datetime or time made from a pickle's state, as bytes or as latin-1 text."""
    raw = bytes(state)
    made = {"date": datetime.date, "datetime": datetime.datetime, "time": datetime.time}[kind](
        raw.decode("latin-1") if as_text else raw
    )
    return made.isoformat()


@stored_function(schema="r82")
def sentinel_reentry() -> str:
    """iter(f, sentinel) whose f advances the same iterator (which, in C, reaching the
    sentinel there, drops f while the outer call of it runs)."""
    box: dict[str, Any] = {}

    def f() -> Any:
        if "inside" not in box:
            box["inside"] = True
            try:
                next(box["it"])
            except ValueError as e:
                return "refused: " + str(e)
        return None

    box["it"] = iter(f, None)
    return str(next(box["it"]))


@stored_function(schema="r82")
def defaults() -> str:
    """defaultdict as routines use it, after its __missing__ is the runtime's."""
    d = defaultdict(list)
    d["a"].append(1)
    d["a"].append(2)
    c = _Factory(int)
    c["x"] += 3
    try:
        defaultdict()["k"]
        missing = "none"
    except KeyError as e:
        missing = repr(e)
    return f"{dict(d)}|{dict(c)}|{missing}|{'k' in d}"


@stored_function(schema="r82")
def date_ctime(day: int) -> str:
    """ctime() of a date of year 0 (made from a pickle's state): DayNames[weekday]."""
    return datetime.date(bytes([0, 0, 1, day])).ctime()
'''


@pytest.fixture
def r82(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Path,
        mallory_role: str) -> Any:  # fmt: skip
    with deployed_for_mallory(conn, cluster, tmp_path / "r82_mod.py", MODULE, "r82"):
        yield dsn


_connect = connect_mallory


def test_a_defaultdict_factory_is_not_freed_while_it_runs(r82: str) -> None:
    """defaultdict(lst.sort)[missing] with an item whose __lt__ sets default_factory (the
    routine's subclass of defaultdict: its instances are the module's own): no bytes object
    of the routine's changes (sort writing the freed list's size and items into it)."""
    with _connect(r82) as c:
        got, _ = timed(c, "SELECT r82.freed_write()")
        print(got)
        if isinstance(got, psycopg.Error):
            assert "crashed" not in str(got), got
            return  # refused: held
        assert got[0] == "", f"a write into freed memory changed bytes objects: {got[0]}"


def test_a_routine_cannot_free_an_object_of_its_choice(r82: str) -> None:
    """The same, with the freed memory refilled by bytes that name a pointer (one of the
    routine's bytes objects it still holds): sort passes it to PyMem_Free, and a new object
    takes the memory of one still held."""
    with _connect(r82) as c:
        got, _ = timed(c, "SELECT r82.chosen_free()")
        print(got)
        if isinstance(got, psycopg.Error):
            assert "crashed" not in str(got), got
            return
        assert got[0].startswith("reused=False"), f"an object of the routine's freed: {got[0]}"
        assert got[0].endswith("victim_now=" + bytes(range(20, 28)).hex()), got[0]


def test_a_date_of_year_zero_has_a_weekday_in_range(r82: str) -> None:
    """datetime.date(b'\\x00\\x00\\x01\\x01'): the unpickling constructor checks the month
    only; a date of year 0 has weekday -1 (the index ctime() uses)."""
    with _connect(r82) as c:
        got, _ = timed(c, "SELECT r82.date_weekday(0, 1)")
        print(got)
        assert isinstance(got, psycopg.Error) or 0 <= got[0] <= 6, got


@pytest.mark.parametrize("day", [1, 2, 3])
def test_ctime_of_a_date_of_year_zero_does_not_crash(r82: str, day: int) -> None:
    """date(bytes([0, 0, 1, day])).ctime() reads DayNames[-day] and strlen()s it: a value
    of a real day name or a clean error; the cluster carries on (checked by the fixture)
    and other sessions keep working."""
    with _connect(r82) as other:
        with _connect(r82) as c:
            got, _ = timed(c, "SELECT r82.date_ctime(%s)", [day])
            print(day, got)
        assert value(other, "SELECT 1") == 1
        if not isinstance(got, psycopg.Error):
            assert got[0][:3] in {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}, got
        else:
            assert "crashed" not in str(got), got


def test_defaultdict_as_routines_use_it(r82: str) -> None:
    """The factory's value made and stored for a missing key, a subclass's too, KeyError
    without a factory: as C's __missing__ did."""
    with _connect(r82) as c:
        assert value(c, "SELECT r82.defaults()") == "{'a': [1, 2]}|{'x': 3}|KeyError('k')|False"


@pytest.mark.parametrize(
    ("kind", "state"),
    [
        ("date", [0, 0, 1, 1]),  # year 0
        ("date", [7, 232, 2, 30]),  # 30 February 2024
        ("date", [7, 232, 1, 0]),  # day 0
        ("date", [255, 255, 12, 31]),  # year 65535
        ("datetime", [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]),  # year 0
        ("datetime", [7, 232, 1, 1, 25, 0, 0, 0, 0, 0]),  # hour 25
        ("datetime", [7, 232, 1, 1, 0, 99, 0, 0, 0, 0]),  # minute 99
        ("datetime", [7, 232, 1, 1, 0, 0, 61, 0, 0, 0]),  # second 61
        ("datetime", [7, 232, 1, 1, 0, 0, 0, 255, 255, 255]),  # microsecond 16,777,215
        ("datetime", [7, 232, 129, 40, 0, 0, 0, 0, 0, 0]),  # fold bit, day 40
        ("time", [0, 99, 0, 0, 0, 0]),  # minute 99
        ("time", [0, 0, 99, 0, 0, 0]),  # second 99
        ("time", [128, 0, 0, 255, 255, 255]),  # fold bit, microsecond too large
    ],
)
@pytest.mark.parametrize("as_text", [False, True])
def test_a_moment_from_a_state_out_of_range_is_refused(
    r82: str, kind: str, state: list[int], as_text: bool
) -> None:
    """date, datetime and time from a pickle's state (bytes, or latin-1 text) with a field
    out of range, which C does not check (only the month, a time's hour): a clean
    ValueError, never a value."""
    with _connect(r82) as c:
        got, _ = timed(c, "SELECT r82.moment_state(%s, %s, %s)", [kind, state, as_text])
        assert isinstance(got, psycopg.Error), got
        assert "ValueError" in str(got) and "crashed" not in str(got), got


@pytest.mark.parametrize(
    ("kind", "state", "expected"),
    [
        ("date", [7, 232, 2, 29], "2024-02-29"),
        ("date", [0, 1, 1, 1], "0001-01-01"),
        ("date", [39, 15, 12, 31], "9999-12-31"),
        ("datetime", [39, 15, 12, 31, 23, 59, 59, 15, 66, 63], "9999-12-31T23:59:59.999999"),
        ("datetime", [7, 232, 139, 3, 1, 30, 0, 0, 0, 0], "2024-11-03T01:30:00"),
        ("time", [23, 59, 59, 15, 66, 63], "23:59:59.999999"),
        ("time", [129, 30, 0, 0, 0, 0], "01:30:00"),
    ],
)
def test_moments_from_valid_states_as_before(
    r82: str, kind: str, state: list[int], expected: str
) -> None:
    """The same constructor with states in range (what pickle and copy give it), at the
    limits and with the fold bit: made as before."""
    with _connect(r82) as c:
        for as_text in (False, True):
            got = value(c, "SELECT r82.moment_state(%s, %s, %s)", [kind, state, as_text])
            assert got == expected, (as_text, got)


def test_a_sentinel_iterators_callable_cannot_advance_it(r82: str) -> None:
    """iter(f, sentinel) whose f calls next() on the same iterator: refused (the C iterator
    is behind a generator), so it is never made to drop f while f runs."""
    with _connect(r82) as c:
        assert value(c, "SELECT r82.sentinel_reentry()") == "refused: generator already executing"
