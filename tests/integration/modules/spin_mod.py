"""Routines that never finish on their own, in every way the issue lists."""

from __future__ import annotations

from collections.abc import Iterator

from pyfuncs import db, stored_function


@stored_function(schema="spin")
def loop() -> int:
    n = 0
    while True:
        n += 1


@stored_function(schema="spin", timeout_ms=200)
def limited() -> int:
    n = 0
    while True:
        n += 1


@stored_function(schema="spin")
def swallow_exception() -> int:
    while True:
        try:
            while True:
                pass
        except Exception:
            pass


@stored_function(schema="spin")
def swallow_base_exception() -> int:
    while True:
        try:
            while True:
                pass
        except BaseException:
            pass


@stored_function(schema="spin")
def swallow_bare() -> int:
    while True:
        try:
            while True:
                pass
        except:  # noqa: E722
            pass


@stored_function(schema="spin")
def retry_queries() -> int:
    while True:
        try:
            db.execute("SELECT pg_sleep(0.05)")
        except BaseException:
            continue


@stored_function(schema="spin")
def looping_finally() -> int:
    try:
        while True:
            pass
    finally:
        while True:
            pass


@stored_function(schema="spin")
def sleeping_query() -> int:
    return int(db.fetchval("SELECT count(*) FROM pg_sleep(30)"))


@stored_function(schema="spin")
def over_results() -> Iterator[int]:
    while True:
        for row in db.cursor("SELECT g FROM generate_series(1, 1000) g", batch=10):
            yield row["g"]


@stored_function(schema="spin")
def cleaning_rows() -> Iterator[int]:
    try:
        for row in db.cursor("SELECT g FROM generate_series(1, 1000000) g", batch=10):
            yield row["g"]
    finally:
        db.execute("SELECT 1")  # must never run while PostgreSQL aborts the statement


@stored_function(schema="spin")
def quick(x: int) -> int:
    return x * 2


@stored_function(schema="spin")
def swallow_then_spin() -> int:
    try:  # noqa: SIM105 - the pattern under test
        db.execute("SELECT pg_sleep(30)")
    except BaseException:
        pass
    while True:
        try:
            while True:
                pass
        except BaseException:
            pass


@stored_function(schema="spin", max_db_ops=3)
def chatty(writes: int) -> int:
    done = 0
    for i in range(writes):
        try:
            db.execute("INSERT INTO spin.log VALUES ($1)", [i])
            done += 1
        except BaseException:
            continue
    return done


@stored_function(schema="spin", timeout_ms=200)
def sleeping_limited() -> int:
    """timeout_ms holds while the routine waits in a query."""
    return int(db.fetchval("SELECT count(*) FROM pg_sleep(30)"))


@stored_function(schema="spin", timeout_ms=200)
def swallow_sleeping_limited() -> int:
    try:  # noqa: SIM105 - the pattern under test
        db.execute("SELECT pg_sleep(30)")
    except BaseException:
        pass
    while True:
        pass


@stored_function(schema="spin", timeout_ms=5000)
def quick_query(x: int) -> int:
    return int(db.fetchval("SELECT $1::bigint * 2", [x]))


@stored_function(schema="spin", timeout_ms=3000, max_memory_mb=1)
def querying_until_stopped() -> int:
    """Stopped, at whatever point of db's work around a query a look of the watchdog finds
    it, for its memory (its queries are lent the deadline timer, 3 s)."""
    kept = []
    while True:
        kept.append(b"x" * 4096)
        db.execute("SELECT 1")


@stored_function(schema="spin", timeout_ms=40)
def querying_until_deadline() -> int:
    """Stopped at its deadline, which the timer lent to its queries shares."""
    while True:
        db.execute("SELECT 1")


@stored_function(schema="spin", timeout_ms=30)
def brief() -> int:
    """Stopped at 30 ms, again and again (a stop caught by the caller's PL/pgSQL)."""
    n = 0
    while True:
        try:
            n += 1
        except BaseException:
            continue


def _nested(depth: int) -> tuple[object, ...]:
    deep: tuple[object, ...] = ()
    for _ in range(depth):
        deep = (deep,)
    return deep


@stored_function(schema="spin")
def overflowing() -> int:
    """Hashing a tuple nested a million deep overflows the C stack (CPython does not count
    that recursion)."""
    return hash(_nested(1_000_000))


_DEEP: list[tuple[object, ...]] = [()]


@stored_function(schema="spin", timeout_ms=200)
def overflowing_when_stopped(levels: int) -> int:
    """Nests the tuple it keeps `levels` deeper; with 0, hashes it after a long C call
    (hashing 100 million items, ~0.5 s) that its timeout_ms falls in: the stop is due when
    the overflow comes, and the overflow comes before the backstop would end the session."""
    if levels:
        deep = _DEEP[0]
        for _ in range(levels):
            deep = (deep,)
        _DEEP[0] = deep
        return 0
    outer = (tuple(range(1_000_000)),) * 100
    return hash((outer, _DEEP[0]))


def _slow_finalizer(self: object) -> None:
    n = 0
    for i in range(100_000):  # milliseconds of Python in every finalizer
        n += i


class _Slow:
    def __del__(self) -> None:  # spelled so: the guard inserted first makes it raise at once
        _slow_finalizer(self)


_ByType = type("_ByType", (), {"__del__": _slow_finalizer})  # no `def __del__` to guard


@stored_function(schema="spin", timeout_ms=100)
def finalizing_by_type(rounds: int) -> int:
    """Finalizers not spelled `def __del__`, for longer than its limit; returns if never
    stopped."""
    for _ in range(rounds):
        _ByType()
    return rounds


@stored_function(schema="spin", timeout_ms=100)
def finalizing() -> int:
    """Spends its time in finalizers it triggers, where Python ignores exceptions."""
    while True:
        _Slow()


def _shared(depth: int) -> tuple[object, ...]:
    """A tuple nested by reference: hashing it is 2**depth steps of C, with no bytecode."""
    shared: tuple[object, ...] = ()
    for _ in range(depth):
        shared = (shared, shared)
    return shared


@stored_function(schema="spin", timeout_ms=200)
def stuck_in_c() -> int:
    """One C call that would run for centuries, past its timeout_ms."""
    return hash(_shared(64))


@stored_function(schema="spin")
def stuck_in_c_unlimited() -> int:
    """The same without a limit of its own (statement_timeout, cancel, terminate)."""
    return hash(_shared(64))


@stored_function(schema="spin", timeout_ms=30_000)
def long_c_call(depth: int) -> int:
    """One C call of seconds that nothing stops (depth 28: ~2 s)."""
    return hash(_shared(depth)) & 1


@stored_function(schema="spin")
def long_c_call_unlimited(depth: int) -> int:
    return hash(_shared(depth)) & 1


# made by int's own constructor: the finalizer is the only Python the C loop runs (a
# Python __init__ would be where some stops land, and raise out of the loop at once)
_Dropped = type("_Dropped", (int,), {"__del__": _slow_finalizer})


@stored_function(schema="spin", timeout_ms=100)
def finalizing_in_c(count: int) -> bool:
    """One C call (any over map, of zeros) that runs a finalizer for each item: each stop
    lands in a finalizer, and no line of the routine's comes to raise it again until the C
    call ends."""
    return any(map(_Dropped, bytes(count)))


@stored_function(schema="spin", timeout_ms=50)
def prompt(x: int) -> int:
    return x


_Forged = type("Forged\nLOG:  FORGED-4711 type", (Exception,), {})


class _Loud:
    def __del__(self) -> None:
        raise _Forged("\nLOG:  FORGED-4711 message\n" * 10)


@stored_function(schema="spin")
def loud_finalizers(count: int) -> int:
    """Finalizers that raise exceptions whose type name and message look like log lines."""
    for _ in range(count):
        _Loud()
    return count


@stored_function(schema="spin")
def printing(text: str) -> int:
    """print() writes to the backend's stdout, which is PostgreSQL's log."""
    print(text)
    return len(text)


_DEPTH = [0]


def _probe(depth: int) -> None:
    _DEPTH[0] = depth
    _probe(depth + 1)


def _sit(depth: int, target: int) -> int:
    if depth < target:
        return _sit(depth + 1, target)
    i = 0
    while True:  # a few frames below the recursion limit, swallowing what it can
        try:  # noqa: SIM105  (the handler is the point)
            i += 1
        except Exception:
            pass


@stored_function(schema="spin", timeout_ms=300)
def near_the_recursion_limit(margin: int) -> int:
    """Spins `margin` frames below the recursion limit, where every call the watchdog's look
    made failed with RecursionError, and nothing stopped it (at 0, in the deepest frame
    there is: no call can be made there, not even of the watchdog's handler)."""
    try:  # noqa: SIM105  (a with block would be one more frame to look at)
        _probe(0)
    except RecursionError:
        pass
    return _sit(0, _DEPTH[0] - margin)


_HOG: list[int] = []
_BLOCK = list(range(1 << 17))  # a MB of references


def _grow(depth: int, target: int) -> int:
    global _HOG
    if depth < target:
        return _grow(depth + 1, target)
    while True:  # no call (none can be made here): a MB more each round
        try:  # noqa: SIM105  (as above)
            _HOG += _BLOCK
        except Exception:
            pass


@stored_function(schema="spin", max_memory_mb=64, timeout_ms=5000)
def growing_at_the_recursion_limit(margin: int) -> int:
    """Grows `margin` frames below the recursion limit: with no look there, max_memory_mb
    went unread (300 MB grown under 64, red team round 62)."""
    try:  # noqa: SIM105  (as above)
        _probe(0)
    except RecursionError:
        pass
    try:
        return _grow(0, _DEPTH[0] - margin)
    finally:
        _HOG[:] = []


def _in_finalizer(self: object) -> None:  # a finalizer not spelled `def __del__`
    global _HOG
    while _GROWING[0]:  # (no call: it runs in the deepest frame there is)
        _HOG += _BLOCK
    i = 0
    while True:
        i += 1


_Looping = type("_Looping", (), {"__del__": _in_finalizer})
_GROWING = [False]


def _drop_looping(depth: int, target: int, box: list[object]) -> int:
    if depth < target:
        return _drop_looping(depth + 1, target, box)
    while True:  # one frame above the deepest: the finalizer runs in the deepest
        box[0] = _Looping()


def _finalizer_at_the_edge(margin: int, growing: bool) -> int:
    _GROWING[0] = growing
    try:  # noqa: SIM105  (as above)
        _probe(0)
    except RecursionError:
        pass
    try:
        return _drop_looping(0, _DEPTH[0] - 1 - margin, [None])
    finally:
        _HOG[:] = []


@stored_function(schema="spin", timeout_ms=300)
def looping_finalizer_at_the_recursion_limit(margin: int) -> int:
    """A finalizer that loops in the deepest frame there is (less `margin`): the stop the
    watchdog raises there is swallowed, and the hooks that raise it again at the next line
    of the routine's (sys.unraisablehook, a frame's trace) could not be called there (round
    64: the session ended a GRACE later)."""
    return _finalizer_at_the_edge(margin, False)


@stored_function(schema="spin", max_memory_mb=64, timeout_ms=30000)
def growing_finalizer_at_the_recursion_limit(margin: int) -> int:
    """The same, growing by a MB a round (round 64: 1.4 GB under 64)."""
    return _finalizer_at_the_edge(margin, True)


@stored_function(schema="spin")
def recursion_depth() -> int:
    """How deep a call may recurse from its routine's frame."""
    try:  # noqa: SIM105  (as above)
        _probe(0)
    except RecursionError:
        pass
    return _DEPTH[0]


class _Bottom:
    def __eq__(self, other: object) -> bool:
        return True


def _lists(n: int, leaf: object) -> object:
    for _ in range(n):
        leaf = [leaf]
    return leaf


def _compare(a: object, b: object) -> bool:
    return a == b


@stored_function(schema="spin", timeout_ms=300)
def comparing_at_the_recursion_limit(deeper: int) -> int:
    """Compares nested lists (C recursion, which checks for no signal) down to one level
    above the deepest a comparison may go, long C work there, then `deeper` levels more and
    Python code at the bottom: reached only if the limit was raised meanwhile (round 63: a
    first fix raised it in the C handler for SIGPROF, the comparison went on past the limit,
    and setting the limit back there aborted the process)."""
    low, high = 1, 4000  # how deep a comparison may go from here: low may, high may not
    while high - low > 1:
        middle = (low + high) // 2
        try:
            _compare(_lists(middle, [1]), _lists(middle, [1]))
            low = middle
        except RecursionError:
            high = middle
    a, b = (_lists(low - 2, ["ab" * (low * 100)] * 400 + [_lists(deeper, _Bottom())])
            for _ in range(2))  # fmt: skip
    while True:
        try:  # noqa: SIM105  (as above)
            _compare(a, b)
        except RecursionError:
            pass


@stored_function(schema="spin")
def outer_calling(inner: str) -> int:
    """Calls a routine through SQL."""
    return int(db.fetchval(f"SELECT spin.{inner}()"))


@stored_function(schema="spin", timeout_ms=100)
def inner_building() -> int:
    """Seconds of Python past its own timeout_ms, then a C call of seconds: called through
    SQL by a routine without a limit."""
    data = [(i * 7919) % 1_000_003 for i in range(3_000_000)]
    data.sort()
    return len(data)


@stored_function(schema="spin", timeout_ms=200)
def stuck_in_memcmp() -> int:
    """Equal large objects compared over a list of references: nearly all the time in the
    C library's memcmp (30 s), where the C handler waited for an instruction of Python's."""
    a, b = bytes(64 << 20), bytes(64 << 20)
    return ([a] * 20_000).count(b)


@stored_function(schema="spin")
def named_rows(rows: int) -> int:
    """A parameter named like the runtime's `rows`: the routine was taken for a set-returning
    one, and returned a Pending's repr (a red team)."""
    return rows + 1


@stored_function(schema="spin", timeout_ms=200)
def hashing_by_reference() -> int:
    """A hash object's update mapped over references to one large buffer: OpenSSL's code for
    as long as the list lasts, where the backstop does not reach (a red team); the update
    is a method of pyfuncs' now, and each call is a bytecode where the stop lands."""
    import hashlib

    digest = hashlib.sha256()
    return len(list(map(digest.update, [bytes(60 << 20)] * 10_000)))
