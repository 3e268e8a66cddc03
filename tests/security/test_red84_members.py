"""Round 84: C `__str__`/`__repr__` of exceptions that format members a routine can set,
where a member's own `__str__`/`__repr__` (routine code) changes the others while C formats.

Tried: OSError (and its subclasses BlockingIOError, FileNotFoundError, a routine's own)
with each of errno/strerror/filename/filename2 freeing each other member, in every order;
SyntaxError whose msg frees filename/lineno; KeyError and BaseException whose only arg's
repr/str replaces `args`. A message must never show what took a freed member's memory.

Promises attacked: no way to the interpreter's memory (1), no crash of the cluster (5). A
passing test: the promise held."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs.embedded import Cluster

from .conftest import connect_mallory, deployed_for_mallory, timed

MODULE = '''
from pyfuncs import stored_function

_KEPT = []  # what must never be freed in this backend
_NAMES = ["errno", "strerror", "filename", "filename2"]


def _set(error, name, value):
    if name == "errno":
        error.errno = value
    elif name == "strerror":
        error.strerror = value
    elif name == "filename":
        error.filename = value
    else:
        error.filename2 = value


class MyError(OSError):
    pass


def _oserror(kind, first, second):
    """`first`'s __str__/__repr__ sets `second` to None (freeing a string held by the error
    only) and refills the memory with bytes."""
    spray = []
    error = kind()
    for name in _NAMES:
        _set(error, name, "".join([name, "-", "x" * 40]))

    class Freeing:
        def __str__(self):
            _set(error, second, None)
            for i in range(200):
                spray.append(bytes([65 + i % 26]) * 72)
            return "F"

        def __repr__(self):
            return str(self)

    _set(error, first, Freeing())
    shown = str(error)
    _KEPT.append(spray)
    return shown


@stored_function(schema="r84m")
def oserror_orders() -> list[str]:
    """Every (first, second) pair for OSError and three subclasses."""
    out = []
    for kind in (OSError, BlockingIOError, FileNotFoundError, MyError):
        for first in _NAMES:
            for second in _NAMES:
                if first != second:
                    out.append(_oserror(kind, first, second))
    return out


@stored_function(schema="r84m")
def other_exceptions() -> list[str]:
    """SyntaxError's msg frees filename; KeyError's/ValueError's arg replaces args."""
    spray = []
    out = []
    error = SyntaxError("m", ("".join(["file-", "y" * 40]), 3, 1, "text"))

    class Msg:
        def __str__(self):
            error.filename = None
            error.lineno = None
            for i in range(200):
                spray.append(bytes([65 + i % 26]) * 72)
            return "M"

    error.msg = Msg()
    out.append(str(error))
    for kind in (KeyError, ValueError):
        holder = {}

        class Arg:
            def __repr__(self):
                holder["e"].args = ("".join(["z", "q" * 40]),)
                for i in range(200):
                    spray.append(bytes([65 + i % 26]) * 72)
                return "A"

            def __str__(self):
                return repr(self)

        holder["e"] = kind(Arg())
        out.append(str(holder["e"]))
        holder["e"] = kind(Arg())
        out.append(repr(holder["e"]))
    _KEPT.append(spray)
    return out
'''


@pytest.fixture
def r84m(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Path,
        mallory_role: str) -> Any:  # fmt: skip
    with deployed_for_mallory(conn, cluster, tmp_path / "r84_members.py", MODULE, "r84m"):
        yield dsn


_connect = connect_mallory


def _clean(shown: str) -> bool:
    return "AAAA" not in shown and "b'" not in shown and "\\x" not in shown


@pytest.mark.parametrize("function", ["oserror_orders", "other_exceptions"])
def test_exception_messages_format_only_their_own_members(r84m: str, function: str) -> None:
    with _connect(r84m) as c:
        got, _ = timed(c, f"SELECT r84m.{function}()")
        print(got)
        if isinstance(got, psycopg.Error):
            assert "crashed" not in str(got), got
            return
        bad = [shown for shown in got[0] if not _clean(shown)]
        assert not bad, f"a freed member formatted: {bad[:3]}"
