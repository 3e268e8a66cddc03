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
from time import monotonic

from . import watchdog as stopping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# TimeoutId USER_TIMEOUT (utils/timeout.h) by major version: RegisterTimeout gives the first
# free id from it
_USER_TIMEOUT = {15: 12, 16: 12}
_LONGEST = 2**31 - 1  # ms: enable_timeout_after takes an int

# the postgres executable's timeout functions and our timer's id (boot() binds them; outside
# PostgreSQL, or where the layout is not known, there is no timer and nothing is lent)
_enable_after: Any = None
_disable: Any = None
_fired: Any = None
_cancel_pending: Any = None  # QueryCancelPending
_timer = -1


def bind(lib: ctypes.CDLL) -> bool:
    global _enable_after, _disable, _fired, _cancel_pending, _timer
    option = lib.GetConfigOption
    option.restype = ctypes.c_char_p
    option.argtypes = [ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool]
    version = int(option(b"server_version_num", False, False) or 0) // 10000
    if version not in _USER_TIMEOUT or not hasattr(lib, "StatementCancelHandler"):
        return False
    register = lib.RegisterTimeout
    register.restype, register.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_void_p]
    handler = ctypes.cast(lib.StatementCancelHandler, ctypes.c_void_p).value
    _timer = register(_USER_TIMEOUT[version], handler)
    # called around every query of a call with a timeout: like identity's, as PyDLL functions
    # whose arguments are all ints (enable_timeout_after(TimeoutId, int ms),
    # disable_timeout(TimeoutId, bool)), so no argtypes to convert through
    hot = ctypes.PyDLL(lib._name)
    _enable_after, _disable = hot.enable_timeout_after, hot.disable_timeout
    _enable_after.restype = _disable.restype = None
    _fired = hot.get_timeout_indicator  # (TimeoutId, bool reset): whether it went off
    _fired.restype = ctypes.c_bool
    _cancel_pending = ctypes.c_int.in_dll(lib, "QueryCancelPending")
    return True


# the query the timer is set for (queries of routines called through SQL inside it are
# covered by it) and whose deadline it is
_depth = 0
_lent: tuple[Any, float] | None = None  # (the Routine, its deadline in time.monotonic())


def lend(entry: Any) -> bool:
    """Before a query: the timer set to the deadline of the call under way (`entry` is its
    innermost entry frame), if it has a timeout_ms and no query around it has one set
    already. Whether give_back must be called after the query."""
    global _depth, _lent
    if _depth:
        _depth += 1
        return True
    if _enable_after is None:
        return False
    routine = stopping.ENTRIES[id(entry.f_code)]
    timeout, watchdog = routine.timeout, stopping.WATCHDOG
    if timeout is None or watchdog is None:
        return False
    now = monotonic()
    # when the call began, as the watchdog saw it; a call it has not seen yet began now
    at = watchdog.began(entry, now) + timeout
    # in whole milliseconds, rounded up: the timer never fires before the deadline (one
    # past it fires at once); passed as a C int, so at most ~24 days
    _enable_after(_timer, min(int((at - now) * 1000) + 1, _LONGEST))
    _lent, _depth = (routine, at), 1
    return True


def give_back() -> None:
    """After the query: the timer off, unless a query around it set it. A timer that went
    off as the query finished, too late for it to see, leaves a cancel pending that would
    cancel whatever the session runs next (the caller's statement, after it caught the
    routine's error): it is the call's deadline, which the watchdog enforces from here, so
    that cancel is taken back."""
    global _depth
    _depth -= 1
    if not _depth:
        _disable(_timer, 1)  # keeping whether it went off (enabling it again forgets)
        if _cancel_pending.value and _fired(_timer, 0):
            _cancel_pending.value = 0


def expired(exc: BaseException) -> None:
    """A query was cancelled: if by the deadline set for it, stop the call for its limit."""
    if not _depth or _lent is None or getattr(exc, "sqlstate", None) != "57014":
        return
    routine, at = _lent
    if monotonic() < at - 0.002:  # cancelled before the deadline: not by it
        return
    if stopping.WATCHDOG is not None:
        limit = round(routine.timeout * 1000)
        stopping.WATCHDOG.stop_here("57014", f"exceeded its limit timeout_ms={limit}",
                                    routine.qualname)  # fmt: skip


stopping.BOOKKEEPING.update(id(f.__code__) for f in (lend, give_back, expired))
