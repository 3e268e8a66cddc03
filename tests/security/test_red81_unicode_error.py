"""Round 81: `UnicodeDecodeError.__str__` in Debian's CPython 3.11.2 reads the byte at
`object[start]` with no check that `start` is not negative (gh-123378, fixed upstream in
3.12.6/3.13; 3.11 got no fix). The constructor checks neither `start` nor `end`, and a
routine may build exceptions freely, so `str(UnicodeDecodeError("utf-8", b, off, off + 1,
"r"))` reads one byte of the backend's memory at `id(b) + 32 + off` for any `off < 0`:
an arbitrary read of everything below an object of the routine's, with `id()` telling
where things are.

Closed: the three Unicode errors' messages are made in Python from checked members
(bounded.hold_unicode_errors).

Promises attacked: no way out of pure computation / to the runtime's internals (1), no
call affecting another (2: a previous client's data is read), no crash of the cluster
(5). A passing test: the promise held. Each test's docstring says what it tried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs.embedded import Cluster

from .conftest import connect_mallory, deployed_for_mallory, timed, value

MODULE = '''
from pyfuncs import stored_function

_ANCHORS = [bytes([i % 251]) * 8 for i in range(4000)]


def _byte_at(b: bytes, off: int) -> int:
    text = str(UnicodeDecodeError("utf-8", b, off, off + 1, "r"))
    return int(text.split("byte 0x")[1][:2], 16)


def _read(addr: int, n: int, anchors: list[bytes]) -> bytes:
    """n bytes of the backend's memory at addr, through an anchor above it."""
    above = [a for a in anchors + _ANCHORS if id(a) + 32 > addr + n]
    if not above:
        raise ValueError("no anchor above")
    b = min(above, key=id)
    base = id(b) + 32
    return bytes([_byte_at(b, addr + k - base) for k in range(n)])


@stored_function(schema="r81")
def oob_byte(off: int) -> str:
    """The message str() of such an exception gives (what byte it 'read')."""
    return str(UnicodeDecodeError("utf-8", b"a", off, off + 1, "r"))


@stored_function(schema="r81")
def odd_error(kind: str) -> str:
    """Unicode errors whose start/end/object make their C __str__ misbehave."""
    if kind == "encode":
        e: Exception = UnicodeEncodeError("ascii", "abc", -5, -4, "r")
    elif kind == "translate":
        e = UnicodeTranslateError("abc", -5, -4, "r")
    elif kind == "decode_obj":
        e = UnicodeDecodeError("utf-8", b"abc", 0, 1, "r")
        e.object = (1, 2, 3, 4, 5, 6, 7, 8)
        e.start = 4
        e.end = 5
    elif kind == "raise":
        raise UnicodeEncodeError("ascii", "abc", -5, -4, "r")
    else:
        raise ValueError(kind)
    return str(e)


@stored_function(schema="r81")
def messages(cases: list[str]) -> list[str]:
    """str() of each Unicode error in `cases` (kind, object, start, end: ';'-separated)."""
    got = []
    for case in cases:
        kind, obj, start, end = case.split(";")
        if kind == "decode":
            e: Exception = UnicodeDecodeError("utf-8", obj.encode("latin-1"), int(start),
                                              int(end), "why")
        elif kind == "encode":
            e = UnicodeEncodeError("ascii", obj, int(start), int(end), "why")
        else:
            e = UnicodeTranslateError(obj, int(start), int(end), "why")
        got.append(str(e))
    return got


class _Big(bytes):
    def __len__(self) -> int:
        return 1 << 40


class _Moved(UnicodeDecodeError):
    start = property(lambda self: 0)


@stored_function(schema="r81")
def reread(kind: str) -> str:
    """Members changed after construction, or shadowed by a subclass, then str()."""
    e = UnicodeDecodeError("utf-8", b"abc", 0, 1, "r")
    if kind == "start":
        e.start, e.end = -40, -39
    elif kind == "past":
        e.start, e.end = 3, 4
    elif kind == "none":
        e.object = None
    elif kind == "str":
        e.object = "abc"
    elif kind == "big":
        e.object, e.start, e.end = _Big(b"x"), 100, 101
    elif kind == "subclass":
        e = _Moved("utf-8", b"abc", -24, -23, "r")
    elif kind == "encode_obj":
        e = UnicodeEncodeError("ascii", "abc", 0, 1, "r")
        e.object = bytes(8)
    return str(e)


@stored_function(schema="r81")
def type_pointer() -> bool:
    """Reads ob_type of an int of its own: 8 bytes at id(x) + 8, compared with id(int)."""
    x = 10**30
    fresh = [bytes([i % 251]) * 8 for i in range(4000)]
    return int.from_bytes(_read(id(x) + 8, 8, fresh), "little") == id(int)


@stored_function(schema="r81")
def echo(secret: str) -> int:
    """Another role's routine: its argument becomes a Python str, freed after the call."""
    kept = [secret + "|" + str(i) for i in range(50)]
    return len(kept)


@stored_function(schema="r81", timeout_ms=20000)
def scan(marker: str, span: int) -> str:
    """Scans `span` bytes below each anchor for the marker; returns what follows it."""
    m = marker.encode()
    found = []
    seen = set()
    for b in sorted(_ANCHORS, key=id, reverse=True)[:: max(1, len(_ANCHORS) // 64)]:
        base = id(b) + 32
        off = -1
        while off > -span:
            a = base + off
            if a in seen:
                break
            seen.add(a)
            if _byte_at(b, off) == m[0]:
                got = bytes([_byte_at(b, off + k) for k in range(len(m))])
                if got == m:
                    tail = bytes([_byte_at(b, off + len(m) + k) for k in range(20)])
                    if tail[:4].isalnum():  # not the marker this call was given
                        return (got + tail).decode("ascii", "replace")
            off -= 1
    return ""
'''


@pytest.fixture
def r81(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Path,
        mallory_role: str) -> Any:  # fmt: skip
    with deployed_for_mallory(conn, cluster, tmp_path / "r81_mod.py", MODULE, "r81"):
        yield dsn


_connect = connect_mallory


def test_a_unicode_decode_errors_str_reads_no_byte_outside_its_object(r81: str) -> None:
    """str(UnicodeDecodeError('utf-8', b'a', -16, -15, 'r')): the message names a byte that
    is not in b'a' (one below its data), or the construction/str is refused."""
    with _connect(r81) as c:
        got, _ = timed(c, "SELECT r81.oob_byte(-16)")
        print(got)
        if isinstance(got, psycopg.Error):
            return  # refused: held
        assert got[0] == "'utf-8' codec can't decode bytes in position -16--16: r", got


def test_a_routine_cannot_read_its_backends_memory(r81: str) -> None:
    """The read primitive: 8 bytes at id(x) + 8 of an int of the routine's own are its
    type pointer, id(int): a routine reading the backend's memory at an address of its
    choosing (the runtime's objects, PostgreSQL's memory, anything below an anchor)."""
    with _connect(r81) as c:
        got, _ = timed(c, "SELECT r81.type_pointer()")
        print(got)
        assert isinstance(got, psycopg.Error) or got[0] is not True, "arbitrary read"


def test_a_routine_cannot_read_a_previous_clients_argument(
    r81: str, conn: psycopg.Connection[Any]
) -> None:
    """A pooled session: the superuser calls a routine with a secret argument; then, as
    mallory (SET SESSION AUTHORIZATION), a routine scans the memory below its objects for
    the secret's prefix and returns what follows it."""
    conn.autocommit = True
    secret = "TOPSECRET-" + "k3y0f4n0th3rr0l3"
    assert value(conn, "SELECT r81.echo(%s)", [secret]) == 50
    conn.execute("SET SESSION AUTHORIZATION mallory")
    got, took = timed(conn, "SELECT r81.scan('TOPSECRET-', 1000000)")
    conn.execute("RESET SESSION AUTHORIZATION")
    print(got, took)
    leaked = not isinstance(got, psycopg.Error) and "k3y0f4n0" in got[0]
    assert not leaked, f"another client's secret read: {got!r}"


@pytest.mark.parametrize("off", [-(1 << 40), -(1 << 44)])
def test_a_fault_from_an_out_of_bounds_read_ends_only_the_session(r81: str, off: int) -> None:
    """The same read far below any mapping (SIGSEGV in the backend): the session may end,
    the cluster must not go through crash recovery (checked by the fixture), and other
    sessions keep working."""
    with _connect(r81) as other:
        assert value(other, "SELECT 1") == 1
        with _connect(r81) as c:
            got, _ = timed(c, "SELECT r81.oob_byte(%s)", [off])
            print(got)
        assert value(other, "SELECT 1") == 1


def test_unicode_error_messages_are_pythons_for_every_error_python_makes(r81: str) -> None:
    """The messages routines get for errors with start and end inside the object are the
    ones CPython's C __str__ makes (here the test's own interpreter): one item shown, a
    range, and each kind of character (\\x, \\u, \\U)."""
    cases = []
    for kind, text in (("decode", "ab\xff\x80c"), ("encode", "a\xe9\u20ac\U0001f600"),
                       ("translate", "a\xe9\u20ac\U0001f600")):  # fmt: skip
        for start in range(len(text)):
            for end in range(start, len(text) + 2):
                cases.append(f"{kind};{text};{start};{end}")
    expected = []
    for case in cases:
        kind, obj, start, end = case.split(";")
        if kind == "decode":
            e: Exception = UnicodeDecodeError("utf-8", obj.encode("latin-1"), int(start),
                                              int(end), "why")  # fmt: skip
        elif kind == "encode":
            e = UnicodeEncodeError("ascii", obj, int(start), int(end), "why")
        else:
            e = UnicodeTranslateError(obj, int(start), int(end), "why")
        expected.append(str(e))
    with _connect(r81) as c:
        assert value(c, "SELECT r81.messages(%s)", [cases]) == expected


@pytest.mark.parametrize("kind", ["start", "past", "none", "str", "big", "subclass", "encode_obj"])
def test_unicode_errors_changed_after_construction_read_nothing_outside(
    r81: str, kind: str
) -> None:
    """start, end and object set after construction (below the object, past it, None, a
    str, a bytes subclass claiming a huge length), a subclass shadowing start (running
    __init__ again is refused by the policy's check): the message shows no byte but the object's own."""
    with _connect(r81) as c:
        got, _ = timed(c, "SELECT r81.reread(%s)", [kind])
        assert not isinstance(got, psycopg.Error), got
        text = got[0]
        assert "byte 0x" not in text or "byte 0x61 " in text, text
        assert "character '" not in text, text


@pytest.mark.parametrize("kind", ["encode", "translate", "decode_obj", "raise"])
def test_odd_unicode_errors_give_a_clean_error(r81: str, kind: str) -> None:
    """UnicodeEncodeError/UnicodeTranslateError with a negative start (PyUnicode_ReadChar
    fails and __str__ returns a result with an exception set), a UnicodeDecodeError whose
    `object` was set to a tuple (read as bytes), str()'d or raised uncaught: a value or a
    clean error, no SystemError text or crash (promises 5, 6)."""
    with _connect(r81) as c:
        got, _ = timed(c, "SELECT r81.odd_error(%s)", [kind])
        print(kind, got)
        text = str(got)
        assert "SystemError" not in text and "exception set" not in text, text
        assert value(c, "SELECT 1") == 1
