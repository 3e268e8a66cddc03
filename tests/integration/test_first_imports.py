"""What the runtime makes for every call to share as a module is first imported, cut short
by a routine's call (round sixty): the guards boot.when_imported arms at a module's first
import in a backend (ZoneInfo's cache and subclasses, decimal's and fractions' bounds,
copy's reconstruction, dataclasses' generated methods, typing's caches, enum's flag values)
were spent by an import that failed partway (a RecursionError, by importing at a chosen
depth; a full address space), and the module imported again later, unguarded, for every
call in the backend, other roles' included; the submodules the failed import left half set
up stayed in sys.modules. Such imports, and a module's view, now run held
(watchdog.held), an import that fails leaves the guard armed and takes its package's half
made submodules with it (boot._Then). Round sixty-one: held work left the recursion limit
raised where it ran at the limit's edge, ratcheted it, and blinded the watchdog; round
sixty-two, looks that added their headroom each time."""

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
    return _subclassed()


def _subclassed() -> str:
    """Whether a routine's subclass of ZoneInfo may be made (the guard's __new__ refuses
    it with a TypeError)."""
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
    return _subclassed()


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


MODS = [
    "json",
    "statistics",
    "fractions",
    "uuid",
    "calendar",
    "heapq",
    "bisect",
    "hashlib",
    "hmac",
    "base64",
    "secrets",
    "struct",
    "unicodedata",
    "cmath",
    "numbers",
    "zoneinfo",
    "enum",
    "typing",
    "dataclasses",
    "decimal",
    "random",
    "collections",
    "datetime",
    "itertools",
    "math",
]


def _importers() -> str:
    out = []
    for m in MODS:
        out.append(f"def _imp_{m}():\n    import {m}\n    return 1\n")
    table = ", ".join(f"{m!r}: _imp_{m}" for m in MODS)
    out.append(f"_IMP = {{{table}}}\n")
    return "\n".join(out)


RATCHET = (
    """
from pyfuncs import stored_function

"""
    + _importers()
    + """

def _depth(n: int) -> int:
    try:
        return _depth(n + 1)
    except RecursionError:
        return n


def _go(n: int, mods: list, out: list, spin: bool) -> None:
    if n > 0:
        _go(n - 1, mods, out, spin)
        return
    _IMP[mods[0]]()
    _climb(mods[1:], out, spin)


def _down(n: int) -> None:
    if n > 0:
        _down(n - 1)
        return
    if GROW[0]:
        _grow()
        return
    _spin()


GROW = [False]
HOG: list = []


def _grow() -> None:
    for _ in range(600):
        HOG.append(b"x" * (1 << 20))


@stored_function(schema="r61", roles=["student", "manager"], max_memory_mb=64)
def grow_deep(count: int) -> str:
    GROW[0] = True
    HOG.clear()
    out: list = []
    _climb(MODS_LIST[:count], out, True)
    grown = len(HOG)
    HOG.clear()
    return "grew by " + str(grown) + " MB"


@stored_function(schema="r61", roles=["student", "manager"], max_memory_mb=64)
def grow_shallow() -> str:
    HOG.clear()
    _grow()
    grown = len(HOG)
    HOG.clear()
    return "grew by " + str(grown) + " MB"


def _climb(mods: list, out: list, spin: bool = False) -> None:
    # down to the deepest frame where a first import still works, import there, and again
    # from there; then (spin) run at the deepest point reached, 150 frames above its bottom
    room = _depth(0)
    out.append(room)
    for k in range(0, 40 if mods else 0):
        try:
            _go(room - k, mods, out, spin)
            return
        except RecursionError:
            out.append(-k)
    if spin:
        _down(room - 150)


@stored_function(schema="r61", roles=["student", "manager"])
def top() -> int:
    return _depth(0)


@stored_function(schema="r61", roles=["student", "manager"])
def ratchet(count: int) -> str:
    out: list = []
    _climb(MODS_LIST[:count], out)
    return " ".join(str(x) for x in out)


@stored_function(schema="r61", roles=["student", "manager"], timeout_ms=300)
def spin_deep(count: int) -> str:
    out: list = []
    _climb(MODS_LIST[:count], out, True)
    return "returned"


def _spin() -> None:
    n = 0
    while n >= 0:
        n += 1


class _Node:
    def __init__(self, child):
        self.child = child

    def __repr__(self):
        return "(" + repr(self.child) + ")"


def _nest(n: int):
    node = None
    for _ in range(n):
        node = _Node(node)
    return node


class _Step:
    def __init__(self, n, mods, out):
        self.n, self.mods, self.out = n, mods, out

    def __repr__(self):
        if self.n > 0:
            return repr(_Step(self.n - 1, self.mods, self.out))
        room = _depth(0)
        if room < 12:
            raise RecursionError("no room")
        for k in range(0, 40):
            try:
                _fine(room - k, self.mods, self.out)
                return ""
            except RecursionError:
                continue
        return ""


def _fine(n: int, mods: list, out: list) -> None:
    if n > 0:
        _fine(n - 1, mods, out)
        return
    _IMP[mods[0]]()
    _cclimb(mods[1:], out)


def _cclimb(mods: list, out: list) -> None:
    room = _depth(0)
    out.append(room)
    if not mods:
        return
    for n in range(room // 2, room // 5, -1):
        try:
            repr(_Step(n, mods, out))
            out.append(n)
            return
        except RecursionError:
            continue


@stored_function(schema="r61", roles=["student", "manager"])
def c_climb(count: int) -> str:
    out: list = []
    _cclimb(MODS_LIST[:count], out)
    return " ".join(str(x) for x in out)


@stored_function(schema="r61", roles=["student", "manager"])
def deep_repr(count: int) -> str:
    out: list = []
    _climb(MODS_LIST[:count], out)
    total = sum(x for x in out if x > 0)
    return str(total) + " " + str(len(repr(_nest(total // 2 - 100))))


MODS_LIST = """
    + repr(MODS)
    + """
"""
)


def test_held_work_at_the_recursion_limit_leaves_the_limit_raised_for_later_calls(
    conn: psycopg.Connection[Any], tmp_path: Any, dsn: str
) -> None:
    """Round sixty-one: watchdog.held raises the recursion limit by HEADROOM and gives it
    back after; where the held frame itself sits at the limit (a first import of a view,
    `import json` at the deepest frame that still works), giving it back fails ("too low
    at the current depth"), and the limit stayed raised. Held work raised it again from
    there: each first import at the new bottom added 200 frames (25 allowed modules,
    +5000). It is raised from the limit now, not from one held work left raised."""
    _deploy(conn, tmp_path, RATCHET, "r61_ratchet")
    with psycopg.connect(dsn, autocommit=True) as pooled:
        top = pooled.execute("SELECT r61.top()").fetchone()
        assert top is not None
        steps = pooled.execute("SELECT r61.ratchet(25)").fetchone()
        assert steps is not None
        # each positive number: the frames left below the frame that measured it, after a
        # descent to that depth; their sum is (about) the depth the call reached
        reached = sum(int(x) for x in steps[0].split() if int(x) > 0)
        assert reached <= top[0] + 200 + 50, (
            f"one call reached depth ~{reached} with a limit of ~{top[0]} "
            f"(HEADROOM is 200): {steps[0]}"
        )
        # (and the next call in the backend, a student's, may still have it, until the
        # watchdog's next look: seen once as top() = 5993 in place of 993)


def test_a_routine_below_a_raised_limit_blinds_the_watchdog(
    conn: psycopg.Connection[Any], tmp_path: Any, dsn: str, cluster: Cluster
) -> None:
    """Round sixty-one: with the limit left raised by held work (above), a routine running
    deeper than the limit the watchdog would give back made every look fail (the look set
    the limit below the depth: a RecursionError its `except Exception` swallowed), and no
    stop was raised: a loop with timeout_ms=300 ran until the backstop library ended the
    session (without it, nothing would have stopped it). A look now raises the limit
    there is."""
    _deploy(conn, tmp_path, RATCHET, "r61_ratchet")
    postmaster = cluster.postmaster_pid()
    with psycopg.connect(dsn, autocommit=True) as pooled:
        with pytest.raises(psycopg.errors.QueryCanceled) as stopped:
            pooled.execute("SELECT r61.spin_deep(3)")
        assert "exceeded its limit timeout_ms=300" in str(stopped.value), str(stopped.value)
        assert pooled.execute("SELECT 1").fetchone() == (1,)  # the session carries on
    assert cluster.postmaster_pid() == postmaster


DC = """
import dataclasses
import typing
from pyfuncs import stored_function


def _keep(cls):
    return cls


@dataclasses.dataclass
class Base:
    x: int = 1


def _try(make) -> str:
    try:
        made = make()
        return "ok:" + str(type(made))[:60]
    except Exception as e:
        return "refused:" + repr(e)[:160]


def _inner():
    @dataclasses.dataclass
    class Inner:
        a: int = 1
    return Inner()


def _frozen():
    @dataclasses.dataclass(frozen=True)
    class F:
        a: int = 1
    return F()


def _slots():
    @dataclasses.dataclass(slots=True)
    class S:
        a: int = 1
    return S()


def _sub():
    @dataclasses.dataclass
    class Sub(Base):
        y: int = 2
    return Sub()


def _decorated():
    @dataclasses.dataclass
    @_keep
    class D:
        a: int = 1
    return D()


def _make():
    P = dataclasses.make_dataclass("P", [("x", int)])
    return P(1)


def _replace():
    return dataclasses.replace(Base(), x=5)


def _asdict():
    return dataclasses.asdict(Base())


def _fields():
    return [f.name for f in dataclasses.fields(Base)]


def _named():
    class NT(typing.NamedTuple):
        a: int
    return NT(1)


def _order():
    @dataclasses.dataclass(order=True, eq=True, unsafe_hash=True)
    class O:
        a: int = 1
    return sorted([O(2), O(1)])


def _kw():
    @dataclasses.dataclass(kw_only=True, match_args=False, repr=False)
    class K:
        a: int = 1
    return K(a=3).a


def _factory():
    @dataclasses.dataclass
    class Fa:
        a: list = dataclasses.field(default_factory=list)
    return Fa()


def _generic():
    T = typing.TypeVar("T")

    @dataclasses.dataclass
    class G(typing.Generic[T]):
        a: int = 1
    return G()


def _dc_sub_in_func():
    @dataclasses.dataclass
    class A:
        a: int = 1

    @dataclasses.dataclass(frozen=True)
    class B:
        b: int = 2

    @dataclasses.dataclass
    class C(A):
        c: int = 3
    return C()


@stored_function(schema="r61dc", roles=["student", "manager"])
def probe() -> str:
    out = []
    for i, f in enumerate((_inner, _frozen, _slots, _sub, _decorated, _make, _replace, _asdict,
              _fields, _named, _order, _kw, _factory, _generic, _dc_sub_in_func)):
        out.append(str(i) + "=" + _try(f))
    return chr(10).join(out)
"""


def test_a_routine_below_a_raised_limit_escapes_max_memory_mb(
    conn: psycopg.Connection[Any], tmp_path: Any, dsn: str
) -> None:
    """The same blind watchdog did not enforce max_memory_mb either (only its looks read the
    backend's memory; the backstop library knows only deadlines and cancels): a routine
    with max_memory_mb=64 grew by 600 MB and returned."""
    _deploy(conn, tmp_path, RATCHET, "r61_ratchet")
    with (
        psycopg.connect(dsn, autocommit=True) as pooled,
        pytest.raises(psycopg.errors.OutOfMemory),
    ):  # the control: stopped
        pooled.execute("SELECT r61.grow_shallow()")
    with psycopg.connect(dsn, autocommit=True) as pooled:
        try:
            answer = pooled.execute("SELECT r61.grow_deep(3)").fetchone()
        except psycopg.Error as error:
            answer = (f"{error.sqlstate} {error}",)
        assert answer is not None and answer[0].startswith("53200"), answer


def test_dataclass_takes_a_routines_own_classes(
    conn: psycopg.Connection[Any], tmp_path: Any, dsn: str
) -> None:
    """No false refusal by round sixty's dataclass() (made_by): classes made in functions,
    frozen, slots, subclasses of the module's dataclasses, decorated ones, make_dataclass,
    replace/asdict/fields, NamedTuple, Generic (round sixty-one's)."""
    _deploy(conn, tmp_path, DC, "r61_dc")
    with psycopg.connect(dsn, autocommit=True) as pooled:
        pooled.execute("SET ROLE student")
        answer = pooled.execute("SELECT r61dc.probe()").fetchone()
    assert answer is not None and "refused" not in answer[0], answer[0]


EDGE_MODS = ["json", "fractions", "uuid", "heapq"]

CLIMB = (
    """
from pyfuncs import stored_function

"""
    + "\n".join(f"def _imp_{m}():\n    import {m}\n    return 1\n" for m in EDGE_MODS)
    + "\n_IMP = {"
    + ", ".join(f"{m!r}: _imp_{m}" for m in EDGE_MODS)
    + "}\n"
    + """

def _depth(n: int) -> int:
    try:
        return _depth(n + 1)
    except RecursionError:
        return n


def _spin() -> None:
    n = 0
    while n < 20000000:
        n += 1


def _below(n: int, out: list) -> None:
    if n > 0:
        _below(n - 1, out)
        return
    _spin()  # deeper than the limit held work could not give back: every look raises it
    out.append(_depth(0))


def _go(n: int, mod: str, out: list) -> None:
    if n > 0:
        _go(n - 1, mod, out)
        return
    _IMP[mod]()  # held work at the limit's edge: its limit is left to the watchdog
    out.append(n)
    _below(60, out)


@stored_function(schema="r62c", roles=["student", "manager"])
def top() -> int:
    return _depth(0)


@stored_function(schema="r62c", roles=["student", "manager"])
def climb(mod: str) -> str:
    room = _depth(0)
    out: list = [room]
    for k in range(0, 40):
        try:
            _go(room - k, mod, out)
            return " ".join(str(x) for x in out)
        except RecursionError:
            pass
    return "none " + str(room)
"""
)


def test_looks_raise_the_limit_while_a_routine_runs_below_the_one_left_to_them(
    conn: psycopg.Connection[Any], tmp_path: Any, dsn: str
) -> None:
    """Round sixty-two: held work at the limit's edge leaves the true limit to the watchdog
    (Watchdog._limit); a look raised the limit there is by HEADROOM and, where the routine
    was deeper than `_limit`, could not give it back: each look left it 100 frames higher
    (a routine spinning there reached 5,000 frames past a limit of 993). A look gives back
    the limit there was before it."""
    _deploy(conn, tmp_path, CLIMB, "r62_climb")
    with psycopg.connect(dsn, autocommit=True) as pooled:
        top = pooled.execute("SELECT r62c.top()").fetchone()
        assert top is not None
    seen = []
    for mod in EDGE_MODS:
        with psycopg.connect(dsn, autocommit=True) as pooled:
            answer = pooled.execute("SELECT r62c.climb(%s)", [mod]).fetchone()
            assert answer is not None
            seen.append(answer[0])
            parts = answer[0].split()
            if parts[0] == "none" or len(parts) < 2:
                continue
            room = int(parts[0])
            measured = int(parts[-1])
            reached = room + 60 + measured
            pooled.execute("SET ROLE student")  # the next call in the backend, another role's
            after = pooled.execute("SELECT r62c.top()").fetchone()
            seen.append(f"then top()={after}")
            assert reached <= top[0] + 200 + 100 + 50, (mod, top[0], seen, reached)
    assert seen
