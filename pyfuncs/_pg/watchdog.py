"""Stopping routines: the watchdog thread, sticky stops, and what an aborted statement leaves
behind."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # not signal: its enums cost 4 ms per backend
import _thread
import contextlib
import ctypes
import os
import sys
import time
import types
from typing import Any

from . import vocabulary

# Stock PL/Python never looks at PostgreSQL's interrupt flags while Python bytecode runs, so a
# pure-Python loop ignores statement_timeout, pg_cancel_backend and pg_terminate_backend. The
# watchdog is a thread of this backend that looks every 40 ms while Python runs
# (it needs the GIL, which the main thread hands over at its periodic switch points), reads
# the flags the postgres executable exports, and raises RoutineInterrupted in the main thread
# while a routine's frame is on its stack. The stop is sticky for that call: `db` refuses
# further queries, and every `except` handler, `finally` block and `with` block of a routine
# module calls a guard (inserted when the module is compiled, see guards.py) that raises again,
# so no handler, retry loop or suppressing context manager can swallow it. Nothing of this
# runs on the normal path except that cheap guard in handlers. The thread never calls into
# PostgreSQL and blocks every signal, so PostgreSQL's handlers keep running on the main thread.


class RoutineInterrupted(BaseException):
    """Raised into a routine that must stop; translated to 57014 / 57P01 when it leaves."""


_PAGE = os.sysconf("SC_PAGE_SIZE")
_STATEMENT_TIMEOUT = 3  # TimeoutId STATEMENT_TIMEOUT in utils/timeout.h (PostgreSQL 15)

# why a call was stopped, as its error message says it
TERMINATED = "terminated by pg_terminate_backend"
CANCELED = "canceled"  # not yet known whether by statement_timeout or a cancel request
BY_STATEMENT_TIMEOUT = "canceled: statement_timeout expired"
BY_CANCEL_REQUEST = "canceled by pg_cancel_backend or the client"


class Budget:
    """The database operations one call of a routine with max_db_ops has made."""

    __slots__ = ("most", "ops", "routine")

    def __init__(self, routine: str, most: int) -> None:
        self.routine, self.most, self.ops = routine, most, 0


class Stop:
    __slots__ = ("elapsed", "frame", "reason", "sqlstate", "who")

    def __init__(
        self, frame: types.FrameType, sqlstate: str, reason: str, elapsed: float,
        who: str | None = None,
    ) -> None:  # fmt: skip
        self.frame, self.sqlstate, self.reason, self.elapsed = frame, sqlstate, reason, elapsed
        self.who = who  # the routine whose limit it was, when not the one that is leaving


class Watchdog:
    # how often it looks: a stop takes at most TICK + the 5 ms switch interval; every look
    # costs the main thread a GIL hand-off, so a short tick slows busy backends down
    TICK = 0.04

    def __init__(self) -> None:
        lib = ctypes.CDLL(None)  # the postgres executable itself
        self._cancel = ctypes.c_int.in_dll(lib, "QueryCancelPending")
        self._die = ctypes.c_int.in_dll(lib, "ProcDiePending")
        self._timeout_indicator = lib.get_timeout_indicator
        self._timeout_indicator.argtypes = [ctypes.c_int, ctypes.c_bool]
        self._timeout_indicator.restype = ctypes.c_bool
        self._main = _thread.get_ident()
        self.routines: dict[types.CodeType, Any] = {}  # code -> its Routine
        # the outermost routine frame seen last, held so that a new call is a new object
        self._frame: types.FrameType | None = None
        self._since = 0.0
        self.stop: Stop | None = None
        # the calls of routines with max_db_ops under way, innermost last (main thread only;
        # their generated bodies push and pop them, so counting needs no stack walk)
        self.budgets: list[Budget] = []
        # memory (watchdog thread only): the level when it first saw the current call. Not
        # a reading from before the call: the thread only runs when Python does, so such a
        # reading could be old and charge the call for what earlier calls kept.
        self._statm = -1
        self._base_memory = 0

    def start(self) -> None:
        every = _signal.valid_signals()
        previous = _signal.pthread_sigmask(_signal.SIG_BLOCK, every)
        try:  # the thread inherits the blocked mask; not waiting for it to run saves 4 ms
            _thread.start_new_thread(self._run, ())
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, previous)

    def _outermost(self, frame: types.FrameType | None) -> tuple[types.FrameType, Any] | None:
        found = None
        while frame is not None:
            routine = self.routines.get(frame.f_code)
            if routine is not None:
                found = (frame, routine)
            frame = frame.f_back
        return found

    def _run(self) -> None:
        exc = ctypes.py_object(RoutineInterrupted)
        while True:
            time.sleep(self.TICK)
            hit = self._outermost(sys._current_frames().get(self._main))
            if hit is None:
                self._frame = None
                if self.stop is not None:  # the call finished just as it was stopped
                    self.stop = None
                    self._arm(None)
                continue
            top, routine = hit
            now = time.monotonic()
            if top is not self._frame:
                self._frame, self._since = top, now
                if routine.max_memory is not None:
                    self._base_memory = self._private_memory()
            if self.stop is None or self.stop.frame is not top:
                why = self._why(routine, now - self._since)
                if why is None:
                    continue
                self.stop = Stop(top, why[0], why[1], now - self._since)
            self._arm(exc)

    def _arm(self, exc: Any) -> None:
        """Raise `exc` in the main thread at its next check (None: cancel an armed one)."""
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._main), exc)

    def _why(self, routine: Any, elapsed: float) -> tuple[str, str] | None:
        if self._die.value:
            return vocabulary.ADMIN_SHUTDOWN, TERMINATED
        if self._cancel.value:
            return vocabulary.QUERY_CANCELED, CANCELED  # describe() tells which, on the main thread
        if routine.timeout is not None and elapsed > routine.timeout:
            return (
                vocabulary.QUERY_CANCELED,
                f"exceeded its limit timeout_ms={round(routine.timeout * 1000)}",
            )
        if routine.max_memory is not None:
            grown = self._private_memory() - self._base_memory
            if grown > routine.max_memory:
                limit = routine.max_memory >> 20
                return (
                    vocabulary.OUT_OF_MEMORY,
                    f"exceeded its limit max_memory_mb={limit} (grew by {grown >> 20} MB)",
                )
        return None

    def _private_memory(self) -> int:
        """Resident private memory of this backend, in bytes: what Python objects, malloc
        and palloc use, without the shared buffers a backend maps (/proc/self/statm is
        size, resident, shared, ... in pages; resident - shared is RssAnon)."""
        if self._statm < 0:
            self._statm = os.open("/proc/self/statm", os.O_RDONLY)
        fields = os.pread(self._statm, 128, 0).split()
        return (int(fields[1]) - int(fields[2])) * _PAGE

    def stop_here(self, sqlstate: str, reason: str, who: str | None = None) -> None:
        """Stop the call under way from the main thread (a query inside it was cancelled,
        or it went past a limit), sticky like the watchdog's stops."""
        hit = self._outermost(sys._getframe(1))
        if hit is not None:
            self.stop = Stop(hit[0], sqlstate, reason, time.monotonic() - self._since, who)

    def count_db_op(self) -> None:
        """Before each query, prepare or cursor fetch: refuse it for a stopped call, and
        count it against every call with max_db_ops under way (queries of routines they
        call through SQL are theirs too)."""
        if self.stop is not None:
            self.check()
        for budget in self.budgets:
            budget.ops += 1
            if budget.ops > budget.most:
                reason = f"exceeded its limit max_db_ops={budget.most} (operation {budget.ops})"
                self.stop_here(vocabulary.LIMIT_EXCEEDED, reason, budget.routine)
                raise RoutineInterrupted()

    def check(self) -> None:
        """Raise again inside a call that has been told to stop (queries, handlers)."""
        stop = self.stop
        if stop is not None and _on_stack(stop.frame, sys._getframe(1)):
            raise RoutineInterrupted()

    def describe(self, routine: str) -> tuple[str, str]:
        """SQLSTATE and message for the stop of the call that is leaving; forgotten unless it
        belongs to an outer call still under way (a routine called through SQL by another
        stopped inside it), which must not be able to carry on either."""
        stop = self.stop
        if stop is None or not _on_stack(stop.frame, sys._getframe(1)):
            self.stop = None
            self._arm(None)  # the call has left: nothing may be raised into the code around it
        if stop is None:
            return vocabulary.QUERY_CANCELED, f"{routine} was canceled"
        reason = stop.reason
        if reason == CANCELED:
            timed_out = self._timeout_indicator(_STATEMENT_TIMEOUT, False)
            reason = BY_STATEMENT_TIMEOUT if timed_out else BY_CANCEL_REQUEST
        who = stop.who or routine
        return stop.sqlstate, f"{who} {reason} (after {stop.elapsed * 1000:.0f} ms)"


def _on_stack(wanted: types.FrameType, frame: types.FrameType | None) -> bool:
    while frame is not None:
        if frame is wanted:
            return True
        frame = frame.f_back
    return False


WATCHDOG: Watchdog | None = None  # this backend's (boot() starts it)


def guard() -> None:
    """Called first in every handler, `finally` and after every `with` of a routine module."""
    if disposing:
        raise RoutineInterrupted()
    if WATCHDOG is not None and WATCHDOG.stop is not None:
        WATCHDOG.check()


# --- what an aborted statement leaves behind ---------------------------------------------
# When PostgreSQL aborts a statement while a set-returning routine's generator is suspended
# (a cancel or statement_timeout in the query consuming its rows), it drops the generator
# during its own cleanup. Finalising it then runs Python that may call back into PostgreSQL
# (a cursor's close, a `finally` that queries), which can crash the backend and, with it,
# restart the cluster. So what is left suspended at that moment is kept here instead, and
# closed at the next set-returning call or cursor in this backend: with every handler and
# `finally` of routine code skipped (their first statement is the guard, which raises while
# disposing) and every query refused, so none of it runs in another call's context.

ORPHANS: list[Any] = []
disposing = False


def in_transaction() -> bool:
    """Whether PostgreSQL is in a transaction, not aborting one (boot() binds the real
    IsTransactionState; outside PostgreSQL there is no abort to be in)."""
    return True


def dispose_orphans() -> None:
    global disposing
    if not ORPHANS:
        return
    orphans = ORPHANS[:]
    ORPHANS.clear()
    disposing = True
    try:
        for orphan in orphans:
            with contextlib.suppress(BaseException):
                orphan.close()
        del orphan, orphans  # finalised here, while disposing
    finally:
        disposing = False


def interrupted(exc: BaseException) -> None:
    """Turn a query cancelled inside a routine into a sticky stop."""
    sqlstate = getattr(exc, "sqlstate", None)
    if WATCHDOG is not None and sqlstate in (vocabulary.QUERY_CANCELED, vocabulary.ADMIN_SHUTDOWN):
        message = str(exc.args[0] if exc.args else exc)
        # PostgreSQL has consumed the timeout indicator by now: its message tells which
        if sqlstate == vocabulary.ADMIN_SHUTDOWN:
            reason = TERMINATED
        elif "statement timeout" in message:
            reason = BY_STATEMENT_TIMEOUT
        else:
            reason = BY_CANCEL_REQUEST
        WATCHDOG.stop_here(sqlstate, reason)
        raise RoutineInterrupted() from None
