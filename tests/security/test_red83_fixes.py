"""Round 83, part A: the three fixes of rounds 81 and 82 attacked — the Unicode errors'
messages (bounded.hold_unicode_errors), defaultdict's factory (hold_default_factories) and
date, datetime and time from a pickle's state (backstop.c's tp_new hooks, moment_check) —
by other routes to the same C code, and checked for regressions.

Promises attacked: no way out of pure computation / to the interpreter's memory (1), no
crash of the cluster (5). A passing test: the promise held."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster

from .conftest import mallory_dsn, timed, value

MODULE = '''
import datetime
from collections import defaultdict
from pyfuncs import stored_function

_KEPT = []


def _error(make):
    try:
        make()
    except UnicodeError as e:
        return str(e)
    return "no error"


class _Mine(UnicodeDecodeError):
    pass


@stored_function(schema="r83a")
def codec_messages() -> list[str]:
    """Messages of errors the codecs raise (C made them, C's __str__ formatted them before)."""
    cases = [
        lambda: b"ab\\xffcd".decode("utf-8"),
        lambda: "a\\xe9".encode("ascii"),
        lambda: "\\U0001f600x".encode("latin-1"),
        lambda: "a\\u0100".encode("cp1252"),
        lambda: b"\\x80\\x81".decode("ascii"),
        lambda: b"\\x82\\xff\\xff".decode("shift_jis"),
        lambda: b"\\xe4\\xb8".decode("utf-8"),
        lambda: b"\\x00\\xd8".decode("utf-16-le"),
        lambda: "\\ud800".encode("utf-8"),
    ]
    made = [
        UnicodeTranslateError("abc", 1, 2, "why"),
        UnicodeTranslateError("a\\u1234c", 1, 3, "why"),
        UnicodeDecodeError("enc", b"xyz", 0, 3, "r"),
        UnicodeEncodeError("enc", "x\\U00012345z", 1, 2, "r"),
        _Mine("enc", b"xyz", 1, 2, "r"),
    ]
    return [_error(c) for c in cases] + [str(e) for e in made]


@stored_function(schema="r83a")
def mutated_messages() -> list[str]:
    """Errors whose start, end and object were changed after construction to point outside
    the object, or at an object of another kind: C's __str__ read there."""
    out = []
    d = UnicodeDecodeError("x", b"ab", 0, 1, "r")
    d.start, d.end = -4096, -4095
    out.append(str(d))
    d.start, d.end = 2**40, 2**40 + 1
    out.append(str(d))
    d.start, d.end = 0, 1
    d.object = "\\u1234"  # a str in a decode error (C read it as bytes)
    out.append(str(d))
    d.object = 12345
    out.append(str(d))
    e = UnicodeEncodeError("x", "ab", 0, 1, "r")
    e.object = b"\\xff\\xfe"  # bytes in an encode error (C read them as a str)
    out.append(str(e))
    e.object = "ab"
    e.start, e.end = -1, 0
    out.append(str(e))
    t = UnicodeTranslateError("ab", 0, 1, "r")
    t.start, t.end = -8, -7
    out.append(str(t))
    m = _Mine("x", b"ab", 0, 1, "r")
    m.start, m.end = -100, -99
    out.append(str(m))
    return out


@stored_function(schema="r83a")
def mutated_raised() -> str:
    """The same error raised out of the routine: PL/Python formats it with str()."""
    d = UnicodeDecodeError("x", b"ab", 0, 1, "r")
    d.start, d.end = -4096, -4095
    raise d


@stored_function(schema="r83a")
def handlers() -> list[str]:
    """Codecs' error handlers, which read the error's members in C (from errors C made)."""
    out = [
        b"a\\xffb".decode("utf-8", "backslashreplace"),
        b"a\\xffb".decode("utf-8", "replace"),
        b"a\\xffb".decode("utf-8", "surrogateescape").encode("utf-8", "surrogateescape").hex(),
        "a\\u1234b".encode("ascii", "xmlcharrefreplace").decode(),
        "a\\u1234b".encode("ascii", "namereplace").decode(),
        "a\\u1234b".encode("latin-1", "backslashreplace").decode(),
        "a\\udcffb".encode("utf-8", "surrogateescape").hex(),
        "\\u304b\\u309a".encode("euc_jis_2004", "strict").hex(),
        ("\\u304b" * 3 + "\\U0002000b").encode("iso2022_jp_2004", "xmlcharrefreplace").hex(),
        b"\\x82\\xff\\xff".decode("shift_jis", "backslashreplace"),
        b"\\\\z\\\\x".decode("unicode_escape", "ignore"),
    ]
    return out


class _Dict(defaultdict):
    pass


class _Reprs:
    def __init__(self, holder):
        self.holder = holder

    def __repr__(self):
        self.holder.default_factory = None  # drops the factory while C formats it
        return "factory"

    def __call__(self):
        return 0


class _Init(defaultdict):
    def __init__(self, *args):
        if args and isinstance(args[-1], defaultdict):
            args[-1].default_factory = None  # the original's factory, while C copies it
        self.seen = len(args)


@stored_function(schema="r83a")
def factory_routes() -> list[str]:
    """defaultdict's other C paths that read default_factory: repr, copy, |, |=, fromkeys,
    reduce (copy.copy/deepcopy), a subclass copied whose __init__ changes the original."""
    out = []
    d = _Dict(None)
    f = _Reprs(d)
    d.default_factory = f
    del f
    out.append(repr(d))
    out.append(repr(d.default_factory))
    i = _Init(list, {"a": [1]})
    c = i.copy()
    out.append(f"{type(c) is _Init}:{c.default_factory}:{dict(c)}:{i.default_factory}")
    j = _Init(list, {"a": [1]})
    k = j | {"b": [2]}
    out.append(f"{type(k) is _Init}:{k.default_factory}:{dict(k)}")
    g = defaultdict(list, a=[1])
    g |= {"b": [2]}
    out.append(f"{g.default_factory}:{dict(g)}")
    h = defaultdict.fromkeys("ab", 0)
    out.append(f"{type(h) is defaultdict}:{h.default_factory}:{dict(h)}")
    for x in (defaultdict(list, a=[1]).copy(), dict.copy(defaultdict(list, a=[1]))):
        if isinstance(x, defaultdict):
            x["z"].append(3)
        out.append(f"{x.default_factory if isinstance(x, defaultdict) else None}:{dict(x)}")
    try:
        defaultdict(None)[(1, 2)]
    except KeyError as e:
        out.append(repr(e.args))
    return out


@stored_function(schema="r83a")
def factory_replaced_while_it_runs() -> str:
    """A factory of the routine's own that replaces default_factory (and drops itself) as it
    runs, nested: each missing key gets the value of the factory that was asked."""
    d = _Dict()
    calls = []

    class Once:
        def __call__(self):
            calls.append(1)
            d.default_factory = None
            if len(calls) < 3:
                d.default_factory = Once()
                return d[len(calls)]
            return "end"

    d.default_factory = Once()
    return f"{d[0]}|{sorted(d.items())}"


@stored_function(schema="r83a")
def moments(case: str) -> str:
    """date, datetime and time by routes other than their constructor: each value in range,
    or a clean error."""
    D, DT, T, TD, TZ = (datetime.date, datetime.datetime, datetime.time, datetime.timedelta,
                        datetime.timezone)

    class Far(datetime.tzinfo):
        def utcoffset(self, d):
            return TD(hours=23, minutes=59, microseconds=999999)

        def dst(self, d):
            return TD(hours=23, minutes=59)

        def tzname(self, d):
            return "far"

        def fromutc(self, d):
            return d

    made = {
        "iso week year 0": lambda: D.fromisoformat("0000-W01-1"),
        "iso week year 10000": lambda: D.fromisoformat("9999-W52-7"),
        "isocalendar year 10000": lambda: D.fromisocalendar(9999, 52, 7),
        "min astimezone local": lambda: DT.min.astimezone(),
        "max astimezone far": lambda: DT.max.astimezone(Far()),
        "min far to utc": lambda: DT.min.replace(tzinfo=Far()).astimezone(TZ.utc),
        "min tz to utc": lambda: DT.min.replace(tzinfo=TZ(TD(hours=23))).astimezone(TZ.utc),
        "max tz utctimetuple": lambda: DT.max.replace(tzinfo=TZ(-TD(hours=23))).utctimetuple(),
        "fromtimestamp far": lambda: DT.fromtimestamp(253402300799, Far()),
        "fromtimestamp far min": lambda: DT.fromtimestamp(-62135596800, Far()),
        "fromtimestamp tz": lambda: DT.fromtimestamp(253402300799, TZ(TD(hours=23, minutes=59))),
        "utcfromtimestamp year 0": lambda: DT.utcfromtimestamp(-62135596801),
        "date fromtimestamp": lambda: D.fromtimestamp(-62135596800 - 86400 * 400),
        "combine far": lambda: DT.combine(D.max, T.max, Far()).astimezone(TZ.utc),
        "max + 1us": lambda: DT.max + TD(microseconds=1),
        "min - 1us": lambda: D.min - TD(days=1),
        "replace year 0": lambda: D(2000, 1, 1).replace(year=0),
        "replace day 32": lambda: DT(2000, 1, 1).replace(day=32),
        "time replace": lambda: T(1).replace(minute=60),
        "fromordinal 0": lambda: D.fromordinal(0),
        "fromordinal big": lambda: D.fromordinal(3652060),
        "type of a date": lambda: type(D(2000, 1, 1))(b"\\x00\\x00\\x01\\x01"),
        "state with a tzinfo": lambda: DT(b"\\x00\\x00\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00", Far()),
        "state and keyword": lambda: DT(b"\\x00\\x00\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00", tzinfo=Far()),
        "time state with tz": lambda: T(b"\\x17\\x3c\\x00\\x00\\x00\\x00", Far()),
        "bytes subclass state": lambda: D(_State(b"\\x00\\x00\\x01\\x01")),
        "str subclass state": lambda: D(_Text("\\x00\\x00\\x01\\x01")),
        "timezone 24h": lambda: TZ(TD(hours=24)),
        "timedelta huge": lambda: TD(days=999999999, hours=24 * 10),
        "timedelta mul": lambda: TD.max * 1.0000001,
    }[case]
    try:
        got = made()
    except (ValueError, OverflowError, TypeError) as e:
        return "refused " + repr(e)[:60]
    if isinstance(got, (D, T)):
        if isinstance(got, D):
            weekday = got.weekday()
            assert 0 <= weekday <= 6 and 1 <= got.year <= 9999, got
            got.ctime()
        return "made " + got.isoformat()
    return "made " + repr(got)


class _State(bytes):
    pass


class _Text(str):
    pass
'''


@pytest.fixture
def deployed83(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster, tmp_path: Path,
               mallory_role: str) -> Any:  # fmt: skip
    (tmp_path / "r83_fixes.py").write_text(MODULE)
    deploying.deploy(conn, str(tmp_path / "r83_fixes.py"))
    conn.execute("GRANT USAGE ON SCHEMA r83a TO mallory")
    conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA r83a TO mallory")
    conn.commit()
    postmaster = cluster.postmaster_pid()
    log_size = cluster.log_file.stat().st_size
    yield dsn
    assert cluster.postmaster_pid() == postmaster, "the cluster restarted"
    with cluster.log_file.open(errors="replace") as log:
        log.seek(log_size)
        tail = log.read()
    assert "all server processes terminated" not in tail, "the cluster went through crash recovery"


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(mallory_dsn(dsn), autocommit=True)


# C's messages (CPython 3.11.2 outside the database, its own __str__)
C_MESSAGES = [
    "'utf-8' codec can't decode byte 0xff in position 2: invalid start byte",
    "'ascii' codec can't encode character '\\xe9' in position 1: ordinal not in range(128)",
    "'latin-1' codec can't encode character '\\U0001f600' in position 0: ordinal not in range(256)",
    "'charmap' codec can't encode character '\\u0100' in position 1: character maps to <undefined>",
    "'ascii' codec can't decode byte 0x80 in position 0: ordinal not in range(128)",
    "'shift_jis' codec can't decode byte 0x82 in position 0: illegal multibyte sequence",
    "'utf-8' codec can't decode bytes in position 0-1: unexpected end of data",
    "'utf-16-le' codec can't decode bytes in position 0-1: unexpected end of data",
    "'utf-8' codec can't encode character '\\ud800' in position 0: surrogates not allowed",
    "can't translate character '\\x62' in position 1: why",
    "can't translate characters in position 1-2: why",
    "'enc' codec can't decode bytes in position 0-2: r",
    "'enc' codec can't encode character '\\U00012345' in position 1: r",
    "'enc' codec can't decode byte 0x79 in position 1: r",
]


def test_unicode_error_messages_as_c_made_them(deployed83: str) -> None:
    """Errors the codecs raise (UTF-8, ASCII, Latin-1, a charmap codec, Shift-JIS, UTF-16)
    and errors made directly, a subclass's too: the same message as C's __str__."""
    with _connect(deployed83) as c:
        assert value(c, "SELECT r83a.codec_messages()") == C_MESSAGES


def test_mutated_unicode_errors_read_nothing_outside_their_object(deployed83: str) -> None:
    """start/end out of range (negative, huge) and an object of the other kind (or not a
    string at all), a subclass's too: a range message, no byte read from elsewhere."""
    with _connect(deployed83) as c:
        got = value(c, "SELECT r83a.mutated_messages()")
    assert got == [
        "'x' codec can't decode bytes in position -4096--4096: r",
        f"'x' codec can't decode bytes in position {2**40}-{2**40}: r",
        "'x' codec can't decode bytes in position 0-0: r",
        "'x' codec can't decode bytes in position 0-0: r",
        "'x' codec can't encode characters in position 0-0: r",
        "'x' codec can't encode characters in position -1--1: r",
        "can't translate characters in position -8--8: r",
        "'x' codec can't decode bytes in position -100--100: r",
    ], got


def test_a_mutated_unicode_error_raised_to_postgresql(deployed83: str) -> None:
    """The error raised out of the routine, formatted by PL/Python: the range message."""
    with _connect(deployed83) as c:
        got, _ = timed(c, "SELECT r83a.mutated_raised()")
    assert isinstance(got, psycopg.Error), got
    assert "can't decode bytes in position -4096--4096: r" in str(got), got


def test_codec_error_handlers_as_before(deployed83: str) -> None:
    """The codecs' own handlers (replace, backslashreplace, surrogateescape,
    xmlcharrefreplace, namereplace, CJK codecs, unicode_escape with ignore)."""
    with _connect(deployed83) as c:
        got = value(c, "SELECT r83a.handlers()")
    assert got[:7] == [
        "a\\xffb", "a\ufffdb", "61ff62", "a&#4660;b", "a\\N{ETHIOPIC SYLLABLE SEE}b",
        "a\\u1234b", "61ff62",
    ], got  # fmt: skip
    assert got[9] == "\\x82\\xff\\xff" or got[9].startswith("\\x82"), got
    assert got[10] == "\\z", got


def test_defaultdict_factory_routes(deployed83: str) -> None:
    """repr with a factory whose __repr__ drops itself, copy and | of a subclass whose
    __init__ changes the original's factory, |=, fromkeys, copy and deepcopy, KeyError of a
    tuple key: no crash, the values C's code gave."""
    with _connect(deployed83) as c:
        got = value(c, "SELECT r83a.factory_routes()")
    print(got)
    assert got[0] == "_Dict(factory, {})", got
    assert got[1] == "None", got
    assert got[2] == "True:None:{}:None", got
    assert got[3] == "True:None:{'b': [2]}", got
    assert got[4] == "<class 'list'>:{'a': [1], 'b': [2]}", got
    assert got[5] == "True:None:{'a': 0, 'b': 0}", got
    assert got[6] == "<class 'list'>:{'a': [1], 'z': [3]}", got
    assert got[7] == "None:{'a': [1]}", got
    assert got[8] == "((1, 2),)", got


def test_a_factory_replaced_while_it_runs(deployed83: str) -> None:
    """Nested factories, each replacing default_factory and dropping itself as it runs."""
    with _connect(deployed83) as c:
        got, _ = timed(c, "SELECT r83a.factory_replaced_while_it_runs()")
    print(got)
    assert not isinstance(got, psycopg.Error) or "crashed" not in str(got), got


MOMENT_CASES = [
    "iso week year 0", "iso week year 10000", "isocalendar year 10000", "min astimezone local",
    "max astimezone far", "min far to utc", "min tz to utc", "max tz utctimetuple",
    "fromtimestamp far", "fromtimestamp far min", "fromtimestamp tz", "utcfromtimestamp year 0",
    "date fromtimestamp", "combine far", "max + 1us", "min - 1us", "replace year 0",
    "replace day 32", "time replace", "fromordinal 0", "fromordinal big", "type of a date",
    "state with a tzinfo", "state and keyword",
    "time state with tz", "bytes subclass state", "str subclass state", "timezone 24h",
    "timedelta huge", "timedelta mul",
]  # fmt: skip

REFUSED = {
    "iso week year 0", "iso week year 10000", "isocalendar year 10000", "min astimezone local",
    "min far to utc", "min tz to utc", "max tz utctimetuple", "fromtimestamp tz",
    "utcfromtimestamp year 0", "date fromtimestamp", "max + 1us", "min - 1us",
    "replace year 0", "replace day 32", "time replace", "fromordinal 0", "fromordinal big",
    "type of a date", "state with a tzinfo", "state and keyword", "time state with tz",
    "bytes subclass state", "str subclass state", "timezone 24h", "timedelta huge",
    "timedelta mul",
}  # fmt: skip


def test_moments_by_other_routes(deployed83: str) -> None:
    """date, datetime and time made by routes other than the unpickling constructor, or by
    it through type(d)(...), a tzinfo argument, a keyword, a bytes or str subclass:
    refused cleanly where out of range, a weekday and ctime() in range otherwise."""
    with _connect(deployed83) as c:
        for case in MOMENT_CASES:
            got, _ = timed(c, "SELECT r83a.moments(%s)", [case])
            print(case, got)
            assert not isinstance(got, psycopg.Error), (case, got)
            if case in REFUSED:
                assert not got[0].startswith("made"), (case, got)
            else:
                assert got[0].startswith("made"), (case, got)
