"""A routine's timeout_ms while it waits in a query.

The watchdog only looks while Python runs (Python runs its signal handler between two
bytecodes): during a query PostgreSQL runs, so a routine waiting on a lock or in `pg_sleep`
would wait past its timeout_ms. So the runtime registers a timer of its own with
PostgreSQL's timeout machinery, whose handler is the one PostgreSQL runs for a cancel
request (StatementCancelHandler). Before each query of a call with a timeout, `db` sets it
to the call's deadline, and turns it off after the query: a query still running at the
deadline is cancelled like any other, and the call stops with its timeout_ms reason.
statement_timeout keeps its own timer.
"""

from __future__ import annotations

import ctypes
import sys
from time import monotonic

from . import backstop
from . import watchdog as stopping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# TimeoutId USER_TIMEOUT (utils/timeout.h) by major version: RegisterTimeout gives the first
# free id from it
_USER_TIMEOUT = {15: 12, 16: 12}
_LONGEST = 2**31 - 1  # ms: enable_timeout_after takes an int

# the timer set to go off in ms milliseconds, and turned off, taking back a cancel it left
# pending (see give_back), and whether it went off since it was set; our timer's id (-1:
# none). boot() binds them; outside PostgreSQL, or where the layout is not known, there is
# no timer and nothing is lent
_on: Any = None
_off: Any = None
_fired: Any = None
_timer = -1
# IsInParallelMode, and statement_timeout's timer (whether it is set, when it goes off, and
# the time now), once bound
_parallel: Any = None
_statement_timer: Any = None
_STATEMENT_TIMEOUT = 3  # TimeoutId STATEMENT_TIMEOUT (utils/timeout.h)


def bind(lib: ctypes.CDLL) -> bool:
    global _on, _off, _fired, _timer, _parallel, _statement_timer
    hot = ctypes.PyDLL(lib._name)
    _parallel = hot.IsInParallelMode
    _parallel.restype = ctypes.c_bool
    # statement_timeout's timer, read around a routine's query (see lend and give_back):
    # PostgreSQL resets its indicator as it cancels
    active, finish = hot.get_timeout_active, hot.get_timeout_finish_time
    active.restype = ctypes.c_bool
    now = hot.GetCurrentTimestamp
    finish.restype = now.restype = ctypes.c_int64
    _statement_timer = active, finish, now

    indicator = hot.get_timeout_indicator  # (TimeoutId, bool reset): whether it went off
    indicator.restype = ctypes.c_bool
    option = lib.GetConfigOption
    option.restype = ctypes.c_char_p
    option.argtypes = [ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool]
    version = int(option(b"server_version_num", False, False) or 0) // 10000
    if version not in _USER_TIMEOUT or not hasattr(lib, "StatementCancelHandler"):
        return False
    register = lib.RegisterTimeout
    register.restype, register.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_void_p]
    handler = ctypes.cast(lib.StatementCancelHandler, ctypes.c_void_p).value
    timer = _timer = register(_USER_TIMEOUT[version], handler)
    # like identity's, as PyDLL functions whose arguments are all ints
    # (enable_timeout_after(TimeoutId, int ms), disable_timeout(TimeoutId, bool)), so no
    # argtypes to convert through
    enable_after, disable = hot.enable_timeout_after, hot.disable_timeout
    enable_after.restype = disable.restype = None
    cancel_pending = ctypes.c_int.in_dll(lib, "QueryCancelPending")

    def timer_on(ms: int) -> None:
        enable_after(timer, ms)

    def timer_off(keep: bool = False) -> bool:
        if not keep:
            disable(timer, 1)  # keeping whether it went off, for the test below
        fired = bool(indicator(timer, 1))
        if fired and cancel_pending.value:
            cancel_pending.value = 0
        return fired

    _on, _off, _fired = timer_on, timer_off, lambda: indicator(timer, 0)
    stopping.bookkeeping(timer_on, timer_off)
    return True


# the deadline armed for each query under way since the timer was set, outermost first
# (a routine called through SQL inside a query may have an earlier one)
_armed: list[tuple[float, int]] = []
_KEPT = 1024  # as deep as queries nest (backstop.c's MAX_LENT): deeper than routines can


def lend() -> bool | None:
    """Before a query: the timer set to the deadline of the innermost call under way with a
    timeout_ms (backstop.CLOCK[0], which its entry function keeps), if there is one, unless
    a query around this one set it to an earlier one; and statement_timeout's noted. Whether
    give_back must be called after the query; None where the query may not run (see
    may_not_run)."""
    if parallel() or len(_armed) >= _KEPT:
        return None
    at = backstop.CLOCK[0] if _on is not None else 0.0
    armed = _armed[-1][0] if _armed else 0.0
    due = _statement_due()
    if at > 0 and (armed <= 0 or at < armed):
        armed = at
        _arm(armed)
    if not _armed and armed <= 0 and not due:
        return False
    _armed.append((armed, due))
    return True


def _statement_due() -> int:
    """When statement_timeout's timer goes off, if it is set, else 0 (PostgreSQL's time)."""
    if _statement_timer is None:
        return 0
    active, finish, _ = _statement_timer
    return finish(_STATEMENT_TIMEOUT) if active(_STATEMENT_TIMEOUT) else 0


def _arm(deadline: float) -> None:
    # in whole milliseconds, rounded up: the timer never fires before the deadline (one
    # past it fires at once); passed as a C int, so at most ~24 days
    _on(min(int((deadline - monotonic()) * 1000) + 1, _LONGEST))


def give_back() -> bool | int:
    """After the query: a timer that went off as the query finished, too late for it to
    see, leaves a cancel pending that would cancel whatever the session runs next (the
    caller's statement, after it caught the routine's error): it is the call's deadline,
    which the caller stops the call for (see went_on), so that cancel is taken back. Then
    the timer is set again to the deadline of the query around this one, or turned off.
    Whether the query went on past a stop it caught: True where the timer went off while
    it ran, 2 where statement_timeout's did (PostgreSQL resets that one's indicator as it
    cancels: its timer is off, and was due), else False."""
    inner, due = _armed.pop()
    fired = False
    if _on is not None:
        outer = _armed[-1][0] if _armed else 0.0
        fired = _off(keep=outer > 0)
        if outer > 0 and outer > inner:
            _arm(outer)
    if fired:
        return True
    if due and _statement_timer is not None:
        active, _, now = _statement_timer
        if not active(_STATEMENT_TIMEOUT) and now() >= due:
            return 2
    return False


def depth() -> int:
    """How many queries are under way with the timer lent."""
    return len(_armed)


def use(guard_lend: Any, guard_give_back: Any, guard_depth: Any) -> None:
    """The backstop library's lend, give_back and depth (backstop.query_guards, given
    `_timer`) in place of this module's."""
    global lend, give_back, depth
    PYTHON[:] = [lend, give_back, depth]  # (kept: a test uses them in a backend again)
    lend, give_back, depth = guard_lend, guard_give_back, guard_depth


PYTHON: list[Any] = []  # this module's lend, give_back and depth, once use() replaced them


def parallel() -> bool:
    """Whether PostgreSQL is in a parallel operation (see may_not_run)."""
    return _parallel is not None and bool(_parallel())


def may_not_run() -> Exception:
    """The error for a query lend refused: in a parallel operation, PostgreSQL refuses the
    subtransaction PL/Python begins for each query with an error thrown through the
    interpreter's frames, which left every later call in the backend to crash (a red
    team's); or nested deeper than the deadlines are kept."""
    if parallel():
        return RuntimeError(
            "pyfuncs: a routine cannot query during a parallel operation (PL/Python's "
            "queries need a subtransaction): call it from a query that is not run in "
            "parallel, or mark the function that calls it PARALLEL UNSAFE"
        )
    return RecursionError("pyfuncs: routines' queries nest too deeply")


def expired(exc: BaseException | None = None) -> None:
    """A query was cancelled (before give_back), or went on after the timer cancelled it
    (`exc` None: a handler in it caught the cancel): if by the timer, stop the call for
    the limit of the call under way whose deadline it was, the earliest (see lend)."""
    if exc is not None and (
        getattr(exc, "sqlstate", None) != "57014" or _fired is None or not _fired()
    ):
        return
    frame: Any = sys._getframe(1)
    due: Any = None
    while frame is not None:
        routine = stopping.ENTRIES.get(id(frame.f_code))
        if routine is not None and routine.timeout is not None:
            at = stopping.local(frame, "began", 0.0) + routine.timeout
            if due is None or at < due[0]:
                due = at, routine
        frame = frame.f_back
    if due is not None and stopping.WATCHDOG is not None:
        routine = due[1]
        limit = round(routine.timeout * 1000)
        stopping.WATCHDOG.stop_here("57014", f"exceeded its limit timeout_ms={limit}",
                                    routine.qualname)  # fmt: skip
    if exc is None:
        raise stopping.RoutineInterrupted()


def went_on(fired: bool | int) -> None:
    """After a query that returned past a stop it caught (give_back's answer): stop the
    call now (a PL/pgSQL handler for query_canceled in a DO block a red team's routine ran
    went on past its deadline and its statement_timeout)."""
    if fired == 2:
        stopping.interrupted(_Canceled("canceling statement due to statement timeout"))
    else:
        expired()


class _Canceled(Exception):
    sqlstate = "57014"


stopping.bookkeeping(lend, _arm, give_back, depth, expired)
