"""What the runtime makes for every call to share as a module is first imported, cut short
by a routine's call (round sixty): the guards boot.when_imported arms at a module's first
import in a backend (ZoneInfo's cache and subclasses, decimal's and fractions' bounds,
copy's reconstruction, dataclasses' generated methods, typing's caches, enum's flag values)
were spent by an import that failed partway (a RecursionError, by importing at a chosen
depth; a full address space), and the module imported again later, unguarded, for every
call in the backend, other roles' included; the submodules the failed import left half set
up stayed in sys.modules. Such imports, and a module's view, now run held
(watchdog.held), an import that fails leaves the guard armed and takes its package's half
made submodules with it (boot._Then)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster

SPOIL = '''
import datetime
from pyfuncs import stored_function


def _deep(n: int) -> str:
    if n == 0:
        import zoneinfo
        return repr(zoneinfo.ZoneInfo)
    return _deep(n - 1)


def _depth(n: int) -> int:
    try:
        return _depth(n + 1)
    except RecursionError:
        return n


class _Mixin:
    # keeps ZoneInfo's __init_subclass__ from giving the subclass a cache of its own
    def __init_subclass__(cls, **kwargs):
        pass


class _Cache:
    def get(self, key, default=None):
        return None

    def setdefault(self, key, value):
        return datetime.timedelta  # what C then writes into as if it were a ZoneInfo


@stored_function(schema="r60", roles=["student", "manager"])
def top() -> int:
    return _depth(0)


@stored_function(schema="r60", roles=["student", "manager"])
def spoil_descending() -> int:
    """zoneinfo's first import, tried from the deepest recursion down until it works."""
    top = _depth(0)
    for depth in range(top, top - 300, -1):
        try:
            _deep(depth)
            return depth
        except RecursionError:
            pass
    return -1


@stored_function(schema="r60", roles=["student", "manager"])
def attempt(depth: int) -> str:
    """zoneinfo's first import at `depth`; then: may a routine's subclass of ZoneInfo be
    made (the guard's __new__ refuses it with a TypeError)?"""
    try:
        _deep(depth)
    except RecursionError:
        pass
    import zoneinfo

    class Z(_Mixin, zoneinfo.ZoneInfo):
        pass

    try:
        Z("Europe/Paris")
    except TypeError:
        return "refused"
    except Exception as e:
        return "allowed " + repr(e)[:100]
    return "allowed"


def _fill(hog: list, leave: int) -> None:
    # fill the address space up to the cap, then free the largest chunks that fit `leave`
    for k in range(33, 11, -1):
        while True:
            try:
                hog.append(bytes(1 << k))
            except MemoryError:
                break
    freed = 0
    for i in sorted(range(len(hog)), key=lambda i: -len(hog[i])):
        if freed + len(hog[i]) <= leave:
            freed += len(hog[i])
            hog[i] = b""


@stored_function(schema="r60", roles=["student", "manager"])
def attempt_full(leave: int) -> str:
    """zoneinfo's first import with `leave` bytes of the address space left; then the same
    question as `attempt`."""
    hog: list = []
    _fill(hog, leave)
    try:
        import zoneinfo
    except MemoryError:
        pass
    hog.clear()
    import zoneinfo

    class Z(_Mixin, zoneinfo.ZoneInfo):
        pass

    try:
        Z("Europe/Paris")
    except TypeError:
        return "refused"
    except Exception as e:
        return "allowed " + repr(e)[:100]
    return "allowed"


@stored_function(schema="r60", roles=["student", "manager"])
def corrupt() -> str:
    """gh-142781: C's ZoneInfo trusts a subclass's `_weak_cache`, and writes a byte into
    what its `setdefault` returns (here the shared type datetime.timedelta)."""
    import zoneinfo

    class Z(_Mixin, zoneinfo.ZoneInfo):
        _weak_cache = _Cache()

    return repr(Z("Europe/Paris"))


@stored_function(schema="r60", roles=["student", "manager"])
def zone_offset() -> str:
    import zoneinfo
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except Exception as e:
        return "failed: " + repr(e)
    return str(datetime.datetime(2024, 7, 1, 12, tzinfo=paris).utcoffset())


@stored_function(schema="r60", roles=["student", "manager"])
def compare() -> str:
    return str(datetime.timedelta(days=1) < datetime.timedelta(days=2))
'''


def _deploy(conn: psycopg.Connection[Any], tmp_path: Any, source: str, name: str) -> None:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    deploying.deploy(conn, str(path))


@pytest.fixture
def spoil(conn: psycopg.Connection[Any], tmp_path: Any) -> psycopg.Connection[Any]:
    _deploy(conn, tmp_path, SPOIL, "r60_spoil")
    return conn


def test_a_failed_first_import_leaves_half_a_module_for_every_later_call(
    spoil: psycopg.Connection[Any], dsn: str
) -> None:
    """One call of the red team's (as the deployer, say) makes zoneinfo's first import fail
    half-way; then a student's call in the same backend cannot read any time zone (zoneinfo's
    `_tzpath` stays in sys.modules half-initialised, with no search path)."""
    with psycopg.connect(dsn, autocommit=True) as fresh:  # a backend where all is well
        fresh.execute("SET ROLE student")
        assert fresh.execute("SELECT r60.zone_offset()").fetchone() == ("2:00:00",)
    with psycopg.connect(dsn, autocommit=True) as pooled:
        pooled.execute("SELECT r60.spoil_descending()")
        pooled.execute("SET ROLE student")
        assert pooled.execute("SELECT r60.zone_offset()").fetchone() == ("2:00:00",)


def test_a_failed_first_import_disarms_the_zoneinfo_guard_and_another_roles_call_crashes(
    spoil: psycopg.Connection[Any], dsn: str, cluster: Cluster
) -> None:
    """The guard that refuses ZoneInfo subclasses (gh-142781) is armed by the first import of
    zoneinfo; a first import cut short at the right depth spends it. Then the red team's
    subclass makes C write into the shared `timedelta` type, and another role's next
    `timedelta < timedelta` in that backend crashes (SIGSEGV; the backstop ends the
    session; without pyfuncs_backstop.so the cluster restarts)."""
    postmaster = cluster.postmaster_pid()
    top = spoil.execute("SELECT r60.top()").fetchone()
    assert top is not None
    disarmed: tuple[int, str] | None = None
    for depth in range(top[0] - 80, top[0] + 1):  # a fresh backend for each depth
        with psycopg.connect(dsn, autocommit=True) as pooled:
            answer = pooled.execute("SELECT r60.attempt(%s)", [depth]).fetchone()
            assert answer is not None
            if answer[0] == "refused":
                continue
            disarmed = (depth, answer[0])
            # the same backend, as a pool would hand it on: the red team's call, then a
            # student's
            pooled.execute("SELECT r60.corrupt()")
            pooled.execute("SET ROLE student")
            try:
                seen = pooled.execute("SELECT r60.compare()").fetchone()
            except psycopg.Error as error:
                seen = ("crashed: " + str(error).splitlines()[0],)
            assert seen == ("True",), (disarmed, seen)
            break
    assert disarmed is None, f"the ZoneInfo guard was never armed in that backend: {disarmed}"
    assert cluster.postmaster_pid() == postmaster, "the cluster restarted"


def test_a_first_import_failing_for_memory_leaves_its_guard_armed(
    spoil: psycopg.Connection[Any], dsn: str
) -> None:
    """The same first import made to fail by a full address space, at several points of
    it: the guard is armed all the same once the import works."""
    for leave in (0, 1 << 16, 1 << 18, 1 << 20, 1 << 21, 1 << 22, 1 << 23):
        with psycopg.connect(dsn, autocommit=True) as pooled:
            got = pooled.execute("SELECT r60.attempt_full(%s)", [leave]).fetchone()
            assert got == ("refused",), (leave, got)


MORE = """
from pyfuncs import stored_function


def _depth(n: int) -> int:
    try:
        return _depth(n + 1)
    except RecursionError:
        return n


def _deep_enum(n: int) -> None:
    if n == 0:
        import enum
        return
    _deep_enum(n - 1)


def _deep_typing(n: int) -> None:
    if n == 0:
        import typing
        return
    _deep_typing(n - 1)


def _deep_decimal(n: int) -> None:
    if n == 0:
        import decimal
        return
    _deep_decimal(n - 1)


DEEP = {"enum": _deep_enum, "typing": _deep_typing, "decimal": _deep_decimal}


@stored_function(schema="r60more", roles=["student", "manager"])
def spoil(which: str) -> int:
    top = _depth(0)
    for depth in range(top, top - 300, -1):
        try:
            DEEP[which](depth)
            return depth
        except RecursionError:
            pass
    return -1


class Sly(int):
    pass


@stored_function(schema="r60more", roles=["student", "manager"])
def plant_flag() -> str:
    import enum
    return str(enum.IntFlag(Sly(0)).value)


@stored_function(schema="r60more", roles=["student", "manager"])
def flag_value_kind() -> str:
    import enum
    return "int" if type(enum.IntFlag(0).value) is int else "other"


class Eq:
    def __eq__(self, other):
        return True

    def __hash__(self):
        return hash(int)


KEPT = []


@stored_function(schema="r60more", roles=["student", "manager"])
def plant_typing() -> str:
    import typing
    KEPT.append(typing.Optional[Eq()])
    return str(typing.Optional[Eq] is typing.Optional[Eq])


@stored_function(schema="r60more", roles=["student", "manager"])
def optional_int() -> str:
    import typing
    try:
        return str(typing.Optional[int] == typing.Union[int, None])
    except Exception as e:
        return "failed: " + repr(e)[:150]


@stored_function(schema="r60more", roles=["student", "manager"], timeout_ms=500)
def unbounded_decimal() -> str:
    import decimal
    try:
        return str(int(decimal.Decimal("1e100000000")).bit_length())
    except Exception as e:
        return "refused: " + repr(e)[:60]
"""


@pytest.fixture
def more(conn: psycopg.Connection[Any], tmp_path: Any) -> psycopg.Connection[Any]:
    _deploy(conn, tmp_path, MORE, "r60_more")
    return conn


def test_a_failed_first_import_of_enum_lets_a_flag_keep_a_routines_value_for_others(
    more: psycopg.Connection[Any], dsn: str
) -> None:
    """Round 43's attack again, once enum's first import was cut short: the red team's int
    subclass is kept in the shared IntFlag's map of values, and a manager's `IntFlag(0)`
    in the same backend gets a member whose value is the red team's object."""
    with psycopg.connect(dsn, autocommit=True) as pooled:
        pooled.execute("SET ROLE student")
        pooled.execute("SELECT r60more.spoil('enum')")
        pooled.execute("SELECT r60more.plant_flag()")
        pooled.execute("RESET ROLE")
        pooled.execute("SET ROLE manager")
        assert pooled.execute("SELECT r60more.flag_value_kind()").fetchone() == ("int",)


def test_a_failed_first_import_of_typing_lets_its_caches_keep_a_routines_objects(
    more: psycopg.Connection[Any], dsn: str
) -> None:
    """typing's caches were to key by identity and keep nothing of a routine's (round 35):
    with typing's first import cut short they key by equality again, a routine's object
    that says it equals int is kept in the cache every call shares, and a manager's
    `typing.Optional[int]` in the same backend compares with it (the red team's `__eq__`
    runs there, and is refused: the manager's call fails)."""
    with psycopg.connect(dsn, autocommit=True) as pooled:
        pooled.execute("SET ROLE student")
        pooled.execute("SELECT r60more.spoil('typing')")
        kept = pooled.execute("SELECT r60more.plant_typing()").fetchone()
        pooled.execute("RESET ROLE")
        pooled.execute("SET ROLE manager")
        seen = pooled.execute("SELECT r60more.optional_int()").fetchone()
        assert (kept, seen) == (("False",), ("True",)), (kept, seen)


def test_a_failed_first_import_of_decimal_unbounds_its_conversions(
    more: psycopg.Connection[Any], dsn: str, cluster: Cluster
) -> None:
    """decimal's conversions are bounded before they start (Limits) by a guard armed at
    decimal's first import; cut short, `int(Decimal('1e100000000'))` runs in one C call
    past timeout_ms until the backstop ends the session."""
    postmaster = cluster.postmaster_pid()
    with psycopg.connect(dsn, autocommit=True) as pooled:
        pooled.execute("SELECT r60more.spoil('decimal')")
        try:
            answer = pooled.execute("SELECT r60more.unbounded_decimal()").fetchone()
        except psycopg.Error as error:
            answer = ("session ended: " + str(error).splitlines()[0],)
        assert answer is not None and answer[0].startswith("refused: "), answer
    assert cluster.postmaster_pid() == postmaster


MARKS = """
import calendar
import dataclasses
import json
import typing

from pyfuncs import stored_function


@stored_function(schema="r60marks", roles=["student"])
def mark() -> str:
    out = []
    for shared in (json.dumps, typing.AnyStr, calendar.month_name):
        try:
            dataclasses.dataclass(shared)
            out.append("made")
        except Exception as e:
            out.append("refused")
    return " ".join(out)
"""


def test_dataclass_of_a_shared_object_marks_nothing(
    conn: psycopg.Connection[Any], tmp_path: Any, dsn: str
) -> None:
    """dataclasses.dataclass given a shared instance (not a class) sets
    `__dataclass_params__` on it before it fails at `cls.__mro__`: typing.AnyStr and
    calendar.month_name, every call's, kept the mark for the backend (LOW: no routine can
    read a dunder; seen here from PL/Python as the superuser). Only a class of the
    routine's own is taken now."""
    _deploy(conn, tmp_path, MARKS, "r60_marks")
    conn.execute(
        "CREATE FUNCTION public.r60_marked() RETURNS text LANGUAGE plpython3u AS $$\n"
        "import json, typing, calendar\n"
        "return ' '.join(str(hasattr(o, '__dataclass_params__')) for o in "
        "(json.dumps, typing.AnyStr, calendar.month_name))\n$$"
    )
    with psycopg.connect(dsn, autocommit=True) as pooled:
        pooled.execute("SET ROLE student")
        pooled.execute("SELECT r60marks.mark()")
        pooled.execute("RESET ROLE")
        assert pooled.execute("SELECT public.r60_marked()").fetchone() == ("False False False",)
