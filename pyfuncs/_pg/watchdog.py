"""Stopping routines: the calls under way, the watchdog that stops them, sticky stops,
and what an aborted statement leaves behind."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # not signal: its enums cost 4 ms per backend
import ctypes
import gc
import itertools
import os
import sys
import time
from contextvars import Context

from . import backstop, vocabulary

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# Stock PL/Python never looks at PostgreSQL's interrupt flags while Python bytecode runs, so a
# pure-Python loop ignores statement_timeout, pg_cancel_backend and pg_terminate_backend.
#
# Every piece of a call that runs Python of the routine's runs inside an entry function of
# that routine (routines.py): loading its module, the function itself, making its result
# plain (results.py) and its exception a PostgreSQL error, each row of a set-returning
# routine and closing its generator. Each routine has entry functions of its own (ENTRIES
# knows their code). The watchdog is SIGPROF's handler: a timer of the backend's CPU time
# (ITIMER_PROF) expires every TICK of it, and Python runs the handler in the main thread
# between two bytecodes of whatever runs there (or inside C code that checks for signals,
# such as the arithmetic of very large integers). It finds the outermost entry frame on the
# stack, reads the flags the postgres executable exports and that routine's limits, and
# raises RoutineInterrupted where the routine is. A call is told from the next by its entry
# frame, which the watchdog holds on to so that no later frame can take its place; the rows
# of a set-returning routine, each made in a frame of its own, share a number, the frame's
# local `n`. So a call costs one Python frame and nothing else. Code of a routine module
# that runs outside every entry frame (a finalizer, `__del__` or a generator's `finally`,
# run by the garbage collector at some later time) is found on the stack too, and stopped:
# on cancel, terminate and statement_timeout at once, and after STRAY seconds whatever the
# limits.
#
# A stop is sticky for its call: `db` refuses further queries, and every `except` handler,
# `finally` block and `with` block of a routine module calls a guard (inserted when the
# module is compiled, see guards.py) that raises again, so no handler, retry loop or
# suppressing context manager can swallow it. The handler never calls into PostgreSQL and
# never runs a routine's code (see Watchdog._tick). A timer of CPU time costs an idle
# backend nothing, and a busy one a signal per TICK; no thread (a second thread made every
# round trip of a busy backend ~5% slower by existing, and its looks, GIL hand-offs, as much
# again). The signal restarts PostgreSQL's interrupted system calls (SA_RESTART).


class RoutineInterrupted(BaseException):
    """Raised into a routine that must stop; translated to 57014 / 57P01 when it leaves."""


# call numbers, for calls made of several entries (a set-returning routine's rows): their
# entry frames' local `n`
SEQUENCE = itertools.count(1).__next__

# the code of every routine's entry functions, by id: the Routine they enter
ENTRIES: dict[int, Any] = {}
HEADROOM = 200  # frames the runtime's held work may use beyond the recursion limit


def held(work: Callable[..., Any], *args: Any) -> Any:
    """`work(*args)`, with stops held until it ends and HEADROOM frames beyond the
    recursion limit: the runtime's work that makes what every call shares (an import, its
    classes shared and its module made safe to share: classes._Loader, boot._Then; a
    module's view: sandbox._view). A routine's call can make it run at a depth of its
    choosing, or land a stop in it: a red team cut a first import short so, and what it
    left half made went unguarded for every later call (another role's crashed). A stop
    waits while this frame runs no routine code inside it (_inside_held); code of a
    routine's that runs there (a finalizer the work sets off) is stopped as anywhere."""
    # the limit, not one held work left raised (the watchdog gives it back): raised from
    # that, held work at the limit's edge, again and again, gave a red team's routine
    # thousands of frames more
    limit = (WATCHDOG._limit if WATCHDOG is not None else 0) or sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(limit + HEADROOM)
        return work(*args)
    finally:
        try:
            sys.setrecursionlimit(limit)
        except RecursionError:  # (too deep for it now: the watchdog's next look gives it back)
            if WATCHDOG is not None and not WATCHDOG._limit:
                WATCHDOG._limit = limit


_HELD = id(held.__code__)


def _inside_held(frame: Any) -> bool:
    """Whether `frame` runs inside held work with no code of a routine's (nor an entry
    function) between them."""
    while frame is not None:
        code = id(frame.f_code)
        if code == _HELD:
            return True
        if code in ENTRIES or code in ROUTINE_CODE or code in PRODUCERS:
            return False
        frame = frame.f_back
    return False


# Entry frames the watchdog let go of. A frame that has finished holds its locals (the
# call's arguments, which the routine may have filled with objects of its own), and
# dropping the last reference to an object runs its finalizer where that happens: so the
# watchdog does not drop them inside a look, the entry functions do as they start.
GRAVE: list[Any] = []

# The runtime's own bookkeeping around a query (the deadline lent and given back, the
# identity flag set and cleared, db's code between them), by the id of its code. A stop
# raised by the watchdog lands where the code is: in the middle of these it would leave a
# lent timer or a set flag behind for the calls after. So the watchdog does not raise while
# the main thread is in one of them, and looks again a millisecond later (the stop itself
# is decided already, and db's next guard raises it too). The code objects are kept here
# too: a function the runtime replaced (by the backstop library's) would free its code, and
# the next code object made at that address was taken for bookkeeping (a routine's own,
# which then could not be stopped).
BOOKKEEPING: dict[int, Any] = {}


def bookkeeping(*functions: Any) -> None:
    """Count `functions` as the runtime's bookkeeping (see BOOKKEEPING)."""
    for function in functions:
        BOOKKEEPING[id(function.__code__)] = function.__code__


# The code objects of every routine module loaded in this backend, by id, and the namespace
# of the module each belongs to (sandbox.load_module fills it and keeps the code alive).
ROUTINE_CODE: dict[int, dict[str, Any]] = {}
# The code that yields, item by item, what routines iterate (lazy.py's producers): run
# outside every call (a finalizer that is a function of the standard library, consuming one
# of them), it runs for a routine module, and is stopped as its code would be.
PRODUCERS: set[int] = set()
# The namespace of the routine module whose call is under way (the innermost entry's
# routine's, set and given back by the entry functions: routines.py), or whose top-level
# code runs now (its first load: sandbox.load_module); None outside calls. A routine
# module's code runs only while this is its own (guards.py inserts the test).
CALLING: list[dict[str, Any] | None] = [None]

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
    __slots__ = ("call", "elapsed", "looks", "raised", "reason", "since", "sqlstate", "who")

    def __init__(
        self, call: Any, sqlstate: str, reason: str, elapsed: float | None,
        who: str | None = None,
    ) -> None:  # fmt: skip
        self.call = call  # the outermost call under way (see key); None: outside any call
        self.sqlstate, self.reason, self.elapsed = sqlstate, reason, elapsed
        self.who = who  # the routine whose limit it was, when not the one that is leaving
        self.since = time.monotonic()
        self.looks = 0  # looks that found it raised and its call still running Python
        self.raised = False  # whether it has been raised into its call

    def raising(self) -> None:
        """Before it is raised: the first time, its call may take Watchdog.UNWIND from now
        to unwind (what the C handler reads: backstop.py), not again (a routine raising it
        again and again would keep the window open)."""
        if not self.raised:
            self.raised = True
            backstop.CLOCK[2] = time.monotonic()


# Where CPython 3.11 keeps a frame's locals: the frame object's f_frame points at its data,
# whose localsplus are its slots, in the order of co_varnames (for code without cells, as
# entry functions are)
_FRAME_DATA, _SLOTS = 24, 72
_WORD = ctypes.c_void_p


def local(frame: Any, name: str, default: Any = None) -> Any:
    """Local `name` of an entry frame, read from its slot (`default` if it is unbound). Not
    `frame.f_locals`: that first brings the frame's dict of locals up to date, dropping
    what it held of a local gone since (an entry's `except ... as exc`), and that could be
    the last reference to an object of a routine's: a red team's finalizer ran inside the
    watchdog's look, where no look can stop it (round 64)."""
    try:
        index = frame.f_code.co_varnames.index(name)
    except ValueError:
        return default
    data = _WORD.from_address(id(frame) + _FRAME_DATA).value or 0
    slot = _WORD.from_address(data + _SLOTS + 8 * index).value if data else None
    return default if not slot else ctypes.cast(slot, ctypes.py_object).value


def key(frame: Any) -> Any:
    """What tells the call of an entry frame from any other: its number, or the frame."""
    return local(frame, "n", frame) if ENTRIES[id(frame.f_code)].numbered(frame) else frame


def calls(frame: Any) -> list[Any]:
    """The calls whose entry frames are on the stack from `frame` outward, outermost last."""
    found = []
    while frame is not None:
        if id(frame.f_code) in ENTRIES:
            found.append(key(frame))
        frame = frame.f_back
    return found


class Watchdog:
    # how often it looks, in CPU time of the backend: a stop takes at most TICK while Python
    # runs; a look costs a few microseconds
    TICK = 0.02
    # how long code of a routine module may run while no call is under way (a finalizer)
    STRAY = 0.1
    # how long a routine may run on after it was told to stop (swallowing its stops in the
    # finalizers one C call triggers, or stuck in one C call) before its session is ended
    # (backstop.py)
    GRACE = 1.0
    HEADROOM = 100  # frames the look may use beyond the recursion limit
    # how long a stop the watchdog raised may take to unwind (freeing what the call built:
    # a gigabyte of small objects takes seconds of C, where no look runs); backstop.c
    UNWIND = 10.0

    def __init__(self) -> None:
        lib = ctypes.CDLL(None)  # the postgres executable itself
        self._cancel = ctypes.c_int.in_dll(lib, "QueryCancelPending")
        self._die = ctypes.c_int.in_dll(lib, "ProcDiePending")
        self._timeout_indicator = lib.get_timeout_indicator
        self._timeout_indicator.argtypes = [ctypes.c_int, ctypes.c_bool]
        self._timeout_indicator.restype = ctypes.c_bool
        # whether `stop` is set, as one byte (kept by _hold): what the entry library reads
        # as each call returns (entry.c), where `stop` would be an attribute looked up
        self.stop_set = memoryview(bytearray(1))
        self.stop: Stop | None = None
        # the calls of routines with max_db_ops under way, innermost last (main thread only;
        # their generated bodies push and pop them, so counting needs no stack walk)
        self.budgets: list[Budget] = []
        # the outermost call seen last, since when, and the backend's private memory then
        # (the watchdog's only). Not a reading from before the call: the watchdog only runs
        # when Python does, so such a reading could be old and charge the call for what
        # earlier calls kept. A set-returning routine's rows are one call.
        self._call: Any = None
        self._since = 0.0
        self._base_memory = -1
        self._stray_since = 0.0  # when stray code was first seen still running
        self._nap = self.TICK  # until the next look
        self._bookkeeping = False  # whether the main thread was in BOOKKEEPING at the look
        self._looking = False
        self._watching = False  # whether a call or stray code was under way at the look
        self._wall: _WallTimer | None = None
        self._unreported = 0  # exceptions finalizers raised since the last line about them
        self._reported_at = -1.0
        self._statm = -1
        self._fatal: Any = None
        self._limit = 0  # the recursion limit a look could not give back yet, else 0
        self._tripping: Any = Watchdog._trip  # (with frames lent: start)

    def end_session(self, message: str) -> None:
        """End the session (FATAL, as PostgreSQL ends one it terminates), where something
        may have happened that no later call should run after; nothing without plpy."""
        if self._fatal is not None:
            self._fatal(message, sqlstate=vocabulary.INTERNAL_ERROR)

    def _hold(self, stop: Stop | None) -> None:
        """Make `stop` the one held (None: none), its byte with it: `stop` is read by every
        guard, so it stays a plain attribute, set here only. A look landing in between may
        hold another (its handler runs between any two bytecodes): the byte follows what is
        held when it is written, read again until the two agree."""
        self.stop = stop
        while True:
            held = self.stop is not None
            self.stop_set[0] = held
            if (self.stop is not None) is held:
                return

    def start(self, fatal: Any = None, lend: Any = None) -> None:
        """Install the handler; `fatal` (plpy.fatal) ends the session of a routine that goes
        on running GRACE after its stop; `lend(hook, frames)` (backstop.lend_frames) makes
        Python call a hook with HEADROOM frames more of the recursion limit: the handler, and
        the hooks that raise a stop a finalizer swallowed, which Python calls wherever the
        routine is, the deepest frame the limit allows included."""
        self._fatal = fatal

        def lent(hook: Any) -> Any:
            return hook if lend is None else lend(hook, self.HEADROOM)

        _signal.signal(_signal.SIGPROF, lent(self._tick))
        _signal.siginterrupt(_signal.SIGPROF, False)  # PostgreSQL's system calls restart
        _signal.setitimer(_signal.ITIMER_PROF, self.TICK, self.TICK)
        self._wall = _WallTimer.make(_signal.SIGPROF)
        sys.unraisablehook = lent(self._swallowed)
        self._tripping = lent(Watchdog._trip)
        bookkeeping(Watchdog._swallowed, Watchdog._report, Watchdog._trip, _untraced)

    def _swallowed(self, unraisable: Any) -> None:
        """sys.unraisablehook. Python reports an exception raised in a finalizer (`__del__`
        or any function a class names so, a context manager's exit when a suspended
        generator is dropped, ...) as "ignored" and carries on: a stop that lands there
        would be lost, and a routine that spends its time in finalizers it triggers would
        never see one. So the stop is not logged, and is raised again at the next line of
        the code that ran the finalizer, from a trace function set on that frame alone (a
        stopped call's `def __del__` raises at once, see guards.py). Anything else is
        reported in a line of the watchdog's (see _report)."""
        if unraisable.exc_type is not RoutineInterrupted:
            self._report(unraisable.exc_type)
            return
        stop = self.stop
        if stop is None or stop.call is None:  # stray code's stop: the next look's
            return
        try:
            frame = sys._getframe(1)  # the code that ran the finalizer
        except ValueError:  # none: the next look raises it
            return
        # not in the runtime's bookkeeping (the next look raises it), and only for the
        # call that was stopped (not one that came after a stop nothing described)
        if id(frame.f_code) in BOOKKEEPING or _inside_held(frame) or not self._applies(stop, frame):
            return
        frame.f_trace = self._tripping
        frame.f_trace_lines = True
        if sys.gettrace() is None:  # a frame's own trace runs only while one is set
            sys.settrace(_untraced)

    def _report(self, kind: Any) -> None:
        """An exception a finalizer raised, in the server's log. Python would write it as it
        is (its message, its traceback: text of the routine's choosing, in a line that can
        look like one of PostgreSQL's own), as often as finalizers raise. The watchdog
        writes one line of its own, at most once a second, with the exception's type name
        as a quoted literal (read without running code of the routine's) and how many it
        did not write."""
        self._unreported += 1
        now = time.monotonic()
        if now - self._reported_at < 1.0:
            return
        name = type.__dict__["__qualname__"].__get__(kind) if isinstance(kind, type) else "?"
        message = (
            f"pyfuncs: {self._unreported} exception(s) ignored in finalizers since the last "
            f"such line, the last of type {str.__repr__(name)[:80]}\n"
        )
        self._unreported, self._reported_at = 0, now
        try:  # noqa: SIM105  (contextlib costs every backend's boot 3 ms)
            os.write(2, message.encode("utf-8", "backslashreplace"))
        except OSError:
            pass

    @staticmethod
    def _trip(frame: Any, event: str, arg: Any) -> None:
        """The trace of a frame whose finalizer swallowed a stop: raises it there."""
        frame.f_trace = None
        if sys.gettrace() is _untraced:
            sys.settrace(None)
        raise RoutineInterrupted()

    def _tick(self, signum: int, frame: Any) -> None:
        """SIGPROF's handler: Python runs it in the main thread, between two bytecodes of
        whatever runs there (or where C code checks for signals), after the timer expired."""
        # C code that checks for signals may do so with an exception of its own set (as
        # PL/Python does while it reads an error's attributes): any call made here would
        # then fail with a SystemError in its place. So that exception is raised again,
        # as it was, for the C code to handle, and the look waits for the next tick.
        _pending_exception()
        if self._looking or frame is None:  # a tick while looking, or where no Python runs
            return  # (the timer is periodic: the next tick comes anyway)
        must_stop = False
        # A routine that runs a few frames below the recursion limit would make every call
        # of the look fail: the look gets HEADROOM frames more while it runs (given back
        # at a later tick where the routine is too deep for the limit to go back now). In
        # the deepest frame there is, Python could not call this handler at all: the
        # library lends it HEADROOM frames for its call (backstop.lend_frames), which
        # `before` counts, and gives them back as it returns.
        before = sys.getrecursionlimit()
        limit = self._limit or before
        try:
            self._looking = True
            # (more than the limit there is now, which held work may have left raised
            # while the routine runs deeper than `limit`: a look given less failed, every
            # one, and a red team's routine went on past its timeout_ms and max_memory_mb)
            sys.setrecursionlimit(max(limit, before) + self.HEADROOM)
            # No routine code may run in here: the collector's finalizers would (their
            # code would run inside the look); the look keeps no reference to anything of
            # a call's from one look to the next but its entry frame, which a call lets go
            # of (GRAVE)
            collecting = gc.isenabled()
            gc.disable()
            try:
                must_stop = self._look(frame)
            finally:
                if collecting:
                    gc.enable()
            if must_stop and self._bookkeeping:  # not now: see BOOKKEEPING (and held)
                must_stop, self._nap = False, 0.001
            elif must_stop:  # the stop is sticky: nothing to look at until it has landed
                self._nap = self.TICK
            # a look was made: the C handler leaves stopping to it (a look that fails, or
            # never comes, leaves the routine to the C handler)
            backstop.CLOCK[1] = time.monotonic()
        except Exception:  # a bug here must not end the watchdog
            pass
        finally:
            del frame
            self._looking = False
            try:
                sys.setrecursionlimit(limit)
                self._limit = 0
            except RecursionError:
                self._limit = limit
                try:  # noqa: SIM105  (contextlib costs every backend's boot 3 ms)
                    # the limit there was, not the look's headroom on top of it, which each
                    # look a routine that deep gets would add again (a red team's)
                    sys.setrecursionlimit(before)
                except RecursionError:
                    pass
            try:  # (near the recursion limit any call can fail: the periodic tick remains)
                _signal.setitimer(_signal.ITIMER_PROF, self._nap, self.TICK)
                if self._watching and self._wall is not None:
                    self._wall.arm(self._nap)
            except Exception:
                pass
        if must_stop:
            if self.stop is not None:
                self.stop.raising()
            raise RoutineInterrupted()

    def _look(self, frame: Any) -> bool:
        """Whether the code running `frame` must be stopped now."""
        now = time.monotonic()
        self._nap = self.TICK
        self._bookkeeping = id(frame.f_code) in BOOKKEEPING or _inside_held(frame)
        self._watching = False
        outer: Any = None
        inner: list[Any] = []  # entry frames inside the outermost (calls made through SQL)
        stray = False
        under_way = []  # the calls of the entry frames on the stack
        while frame is not None:
            code = id(frame.f_code)
            if code in ENTRIES:
                if outer is not None:
                    inner.append(outer)
                outer = frame
                under_way.append(key(frame))
            elif code in ROUTINE_CODE or code in PRODUCERS:
                stray = True
            frame = frame.f_back
        self._watching = outer is not None or stray
        if outer is None:
            return self._look_stray(now) if stray else self._idle()
        call, routine = key(outer), ENTRIES[id(outer.f_code)]
        # when the call began, as its entry noted (see routines.py)
        began = local(outer, "began", now) if call != self._call else now
        del outer
        self._stray_since = 0.0
        if call != self._call:
            self._switch(call, min(began, now))
        if routine.timeout is not None:  # look again at its deadline, if that comes first
            self._nap = min(self.TICK, max(0.001, self._since + routine.timeout - now + 0.001))
        within = self._inner_deadline(inner, now) if inner else None
        del inner
        stop = self.stop
        if stop is not None and stop.call == call:
            self._ignored(stop, now)
            return True
        if stop is not None and stop.call is not None and stop.call not in under_way:
            # a stop of a call that left without being described (PostgreSQL dropped the
            # generator it was raised in): it applies to nothing, and every guard would
            # walk the stack for it
            if not isinstance(stop.call, int):
                GRAVE.append(stop.call)
            self._hold(None)
            stop = None
        elapsed, who = now - self._since, None
        why = self._why(routine, elapsed)
        if why is None and within is not None and now > within[0]:
            # a routine called through SQL inside this call went past its own timeout_ms:
            # this call stops, as a query of it that failed
            due, nested = within
            limit = round(nested.timeout * 1000)
            why = vocabulary.QUERY_CANCELED, f"exceeded its limit timeout_ms={limit}"
            elapsed, who = now - due + nested.timeout, nested.qualname
        if why is None:
            return False
        if stop is not None and stop.call is not None and not isinstance(stop.call, int):
            GRAVE.append(stop.call)
        self._hold(Stop(call, why[0], why[1], elapsed, who))
        return True

    def _switch(self, call: Any, since: float) -> None:
        """The outermost call under way is another than at the last look. A set-returning
        routine's call (a number) whose rows interleave with other calls keeps the memory
        it began with (see `forget`); any other's entry frame is let go of (GRAVE)."""
        seen = self._call
        if type(seen) is int:
            if self._base_memory >= 0:
                _BASES[seen] = self._base_memory
        elif seen is not None:
            GRAVE.append(seen)
        self._call, self._since = call, since
        self._base_memory = _BASES.pop(call, -1) if type(call) is int else -1

    def _inner_deadline(self, frames: list[Any], now: float) -> tuple[float, Any] | None:
        """The earliest deadline of the calls under way inside the outermost one (routines
        called through SQL: their entry frames) that have a timeout_ms, and the routine's.
        (The backstop has the innermost's: backstop.py.)"""
        found = None
        for frame in frames:
            routine = ENTRIES[id(frame.f_code)]
            began = local(frame, "began") if routine.timeout is not None else None
            if began is not None:
                due = began + routine.timeout
                if found is None or due < found[0]:
                    found = (due, routine)
        if found is not None:  # look again at it, if that comes first
            self._nap = min(self._nap, max(0.001, found[0] - now + 0.001))
        return found

    def _ignored(self, stop: Stop, now: float) -> None:
        """A stop is raised again: the code it was raised in went on running Python (a
        finalizer swallowed it, called by a C loop that comes back to no line of the
        routine's). Once it has run GRACE of looks since (not merely GRACE since: freeing a
        gigabyte the stop's unwinding let go of takes seconds of C, where no look runs, and
        a red team saw such a stopped call's session ended), or UNWIND has passed since
        anyway (finalizers that each run a long C call give few looks), the session ends."""
        stop.looks += 1
        late = now - stop.since
        enough = stop.looks * self.TICK > self.GRACE or late > self.GRACE + self.UNWIND
        if enough and late > self.GRACE and self._fatal is not None:
            who = f"{stop.who}: " if stop.who else ""
            why = f"{who}{stop.reason} {late * 1000:.0f} ms before"
            self._fatal(f"{backstop.MESSAGE} ({why})", sqlstate=stop.sqlstate)

    def _idle(self) -> bool:
        self._stray_since = 0.0
        if self.stop is not None and self.stop.call is None:
            self._hold(None)  # the stray code has gone
        return False

    def _look_stray(self, now: float) -> bool:
        """Code of a routine module runs outside every call."""
        stop = self.stop
        if stop is not None and stop.call is None:
            self._ignored(stop, now)
            return True
        self._stray_since = self._stray_since or now
        stray_for = now - self._stray_since
        if self._die.value:
            sqlstate, reason = vocabulary.ADMIN_SHUTDOWN, TERMINATED
        elif self._cancel.value:
            sqlstate, reason = vocabulary.QUERY_CANCELED, CANCELED
        elif stray_for > self.STRAY:
            sqlstate, reason = vocabulary.QUERY_CANCELED, "ran outside any call for too long"
        else:
            return False
        if stop is not None and stop.call is not None and not isinstance(stop.call, int):
            GRAVE.append(stop.call)
        self._hold(Stop(None, sqlstate, reason, stray_for, "code of a routine module"))
        return True

    def _why(self, routine: Any, elapsed: float) -> tuple[str, str] | None:
        if self._die.value:
            return vocabulary.ADMIN_SHUTDOWN, TERMINATED
        if routine.timeout is not None and elapsed > routine.timeout:
            limit = round(routine.timeout * 1000)
            return vocabulary.QUERY_CANCELED, f"exceeded its limit timeout_ms={limit}"
        if self._cancel.value:
            return vocabulary.QUERY_CANCELED, CANCELED  # describe() tells which
        if routine.max_memory is not None:
            if self._base_memory < 0:
                self._base_memory = self._private_memory()
                return None
            grown = self._private_memory() - self._base_memory
            if grown > routine.max_memory:
                limit = routine.max_memory >> 20
                return (vocabulary.OUT_OF_MEMORY,
                        f"exceeded its limit max_memory_mb={limit} (grew by {grown >> 20} MB)")  # fmt: skip
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
        or it went past a limit), sticky like the watchdog's stops. A call stopped already
        keeps its first reason."""
        under_way = calls(sys._getframe(1))
        if not under_way:
            return
        call = under_way[-1]
        stop = self.stop
        if stop is None or stop.call != call:
            elapsed = time.monotonic() - self._since if call == self._call else None
            stop = Stop(call, sqlstate, reason, elapsed, who)
            self._hold(stop)
        stop.raising()  # (every caller raises it next)

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

    def _applies(self, stop: Stop, frame: Any) -> bool:
        under_way = calls(frame)
        if stop.call is None:
            return not under_way
        return any(call == stop.call for call in under_way)

    def stopped(self) -> bool:
        """Whether a call under way at the caller has been told to stop."""
        stop = self.stop
        return stop is not None and stop.call is not None and self._applies(stop, sys._getframe(1))

    def check(self) -> None:
        """Raise again inside a call that has been told to stop (queries, handlers), or in
        stray code that has."""
        stop = self.stop
        if stop is not None and self._applies(stop, sys._getframe(1)):
            raise RoutineInterrupted()

    def describe(self, routine: str) -> tuple[str, str]:
        """SQLSTATE and message for the stop of the call that is leaving (called from its
        generated body, outside its entry frames); forgotten unless it belongs to an outer
        call still under way (a routine called through SQL by another stopped inside it),
        which must not be able to carry on either."""
        stop = self.stop
        if stop is None or not self._applies(stop, sys._getframe(1)):
            self._hold(None)
            if sys.gettrace() is _untraced:  # a stop a finalizer swallowed, not raised again
                sys.settrace(None)
        if stop is None:
            return vocabulary.QUERY_CANCELED, f"{routine} was canceled"
        reason = stop.reason
        if reason == CANCELED:
            timed_out = self._timeout_indicator(_STATEMENT_TIMEOUT, False)
            reason = BY_STATEMENT_TIMEOUT if timed_out else BY_CANCEL_REQUEST
        who = stop.who or routine
        after = "" if stop.elapsed is None else f" (after {stop.elapsed * 1000:.0f} ms)"
        return stop.sqlstate, f"{who} {reason}{after}"


WATCHDOG: Watchdog | None = None  # this backend's (boot() starts it)
# the backend's private memory when each set-returning call under way whose rows another
# call interrupted was first seen, by its number (see Watchdog._switch)
_BASES: dict[int, int] = {}


def forget(call: int) -> None:
    """A set-returning routine's call (its number) has ended."""
    _BASES.pop(call, None)


def _untraced(frame: Any, event: str, arg: Any) -> None:
    """The global trace while a frame waits to raise a swallowed stop: traces nothing else."""
    return None


# PyErr_Occurred as a function of the Python API: ctypes raises what is set when it returns
_pending_exception = ctypes.pythonapi.PyErr_Occurred
_pending_exception.restype = ctypes.c_void_p


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _ItimerSpec(ctypes.Structure):
    _fields_ = [("interval", _Timespec), ("value", _Timespec)]


class _SigEvent(ctypes.Structure):  # Linux's struct sigevent: 64 bytes
    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("rest", ctypes.c_int * 12)]  # fmt: skip


class _WallTimer:
    """A one-shot timer of the monotonic clock that sends a signal (timer_create): the
    watchdog's looks while a call is under way, TICK apart in wall time even when the
    backend gets little CPU time (the CPU-time timer would look later then, by as much as
    the machine is short of CPU). Armed only by a look that saw a call, so an idle backend
    gets at most one signal after its last call."""

    def __init__(self, timer: ctypes.c_void_p, settime: Any) -> None:
        self._timer, self._settime = timer, settime
        self._spec = _ItimerSpec()

    @classmethod
    def make(cls, signo: int) -> _WallTimer | None:
        libc = ctypes.CDLL(None)
        event = _SigEvent(None, signo, 0)  # SIGEV_SIGNAL
        timer = ctypes.c_void_p()
        if libc.timer_create(1, ctypes.byref(event), ctypes.byref(timer)) != 0:  # MONOTONIC
            return None
        settime = libc.timer_settime
        settime.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        return cls(timer, settime)

    def arm(self, seconds: float) -> None:
        whole = int(seconds)
        self._spec.value.sec, self._spec.value.nsec = whole, int((seconds - whole) * 1e9)
        self._settime(self._timer, 0, ctypes.byref(self._spec), None)


def guard() -> None:
    """Called first in every handler, `finally` and after every `with` of a routine module,
    and before every query: raises again for what has been told to stop."""
    if WATCHDOG is not None and WATCHDOG.stop is not None:
        WATCHDOG.check()


# --- what an aborted statement leaves behind ---------------------------------------------
# When PostgreSQL aborts a statement while a set-returning routine's generator is suspended
# (a cancel or statement_timeout in the query consuming its rows), it drops the generator
# during its own cleanup. Finalising it then runs Python that may call back into PostgreSQL
# (a cursor's close, a `finally` that queries), which can crash the backend and, with it,
# restart the cluster. So what is left suspended at that moment is kept here instead, with
# the routine it belongs to, and closed at that routine's next set-returning call or
# cursor, inside that call (its limits apply), which may be another role's: its handlers
# and `finally` blocks run (module state they restore is restored), and every query is
# refused (db, while disposing). Never in another routine's call: what closing it sets
# off (the finalizers of what its frames hold) spent a red team's time there, past the
# victim call's timeout_ms.

# What a routine left for its next call, by id of its module state: (the module state,
# [what it left, ...]). (The entry keeps the module state alive: its id is no other's.)
if TYPE_CHECKING:
    Left = dict[int, tuple[Any, list[Any]]]

ORPHANS: Left = {}  # generators and cursors
disposing = False


def leave(store: Left, module: Any, item: Any) -> None:
    """Keep `item` in `store` for the next call of the routine whose module state it is."""
    store.setdefault(id(module), (module, []))[1].append(item)


def _taken(store: Left, module: Any) -> list[Any]:
    kept = store.pop(id(module), None)
    return [] if kept is None else kept[1]


def in_transaction() -> bool:
    """Whether PostgreSQL is in a transaction, not aborting one (boot() binds the real
    IsTransactionState; outside PostgreSQL there is no abort to be in)."""
    return True


def from_the_call() -> bool:
    """Whether the nearest code of a routine module's on the stack is that of the module
    whose call is under way (CALLING): what its caller does, it does for that call, and not
    for code that runs in it unasked (a finalizer that is a function of C or the standard
    library, C consuming a lazy iterator a routine made in another call)."""
    frame: Any = sys._getframe(2)
    owners, calling = ROUTINE_CODE, CALLING[0]
    while frame is not None:
        owner = owners.get(id(frame.f_code))
        if owner is not None:
            return owner is calling
        frame = frame.f_back
    return False


def dispose_orphans(module: Any) -> None:
    """Close what the routine whose module state is `module` left suspended (ORPHANS)."""
    orphans = _taken(ORPHANS, module)
    if orphans:
        close_apart(orphans)


def close_apart(items: list[Any]) -> None:
    """Close each of `items` (suspended generators, cursors), emptying the list, with every
    query refused (db, while disposing): for what an aborted statement left, and for the
    generator of a call whose statement needs no more rows. PostgreSQL closes that one
    from its executor's cleanup, where no PL/Python function runs, and a query there is
    an error PostgreSQL raises through Python's own frames (a longjmp past the
    interpreter)."""
    global disposing
    disposing = True
    try:
        for item in items:
            try:  # noqa: SIM105  (contextlib costs every backend's boot 3 ms)
                # in a context of its own: what its code sets there as it closes (C's
                # decimal.localcontext gives back a context) is not the call's under way
                Context().run(item.close)
            except BaseException:
                pass
        item = None
        items.clear()  # (what they hold is finalised here, while disposing)
    finally:
        disposing = False


# (a stop a finalizer swallowed there may not be raised between its steps: one that was
# left `disposing` on, and every later call in the backend failed)
bookkeeping(dispose_orphans, close_apart)


# --- weak references' callbacks -----------------------------------------------------------
# Python runs a weak reference's callback as the object it refers to is freed, wherever
# that is: in another routine's call (a cache letting go of it), or while the collector
# runs. A callback a routine's code gives a reference (or the standard library's code does
# for it: a WeakValueDictionary's) runs only in that routine's calls (backstop.c has every
# one pass through owned_callback); freed elsewhere, it is kept here and run at the start
# of the routine's next call, inside it. A red team's callback hashed a key of its own
# choosing, for as long as it liked, in another role's call.

OWED: Left = {}  # (callback, reference) pairs
SHARING = [0]  # imports (classes.sharing) under way: what they make is every call's


def owned_callback(callback: Any) -> Any:
    """The callback a weak reference made now gets in place of `callback`."""
    owner = CALLING[0]
    if owner is None or SHARING[0]:  # (the runtime's own, or an import's: every call's)
        return callback

    def owed(reference: Any) -> None:
        if CALLING[0] is owner:
            callback(reference)
            return
        leave(OWED, owner, (callback, reference))

    return owed


def pay(module: Any) -> None:
    """Run the callbacks kept for the routine whose module state is `module` (OWED)."""
    for callback, reference in _taken(OWED, module):
        try:  # noqa: SIM105  (contextlib costs every backend's boot 3 ms)
            callback(reference)
        except Exception:  # (as Python ignores what a callback raises)
            pass


def interrupted(exc: BaseException) -> None:
    """Turn a query cancelled inside a routine into a sticky stop. (Only a cancel: PostgreSQL
    ends a terminated session with a FATAL error, which no code sees, so a 57P01 a query
    raises is SQL's own, RAISE ... USING ERRCODE in a trigger say, and the routine's to
    handle. SQL can raise 57014 too, which is taken for a cancel: it cannot be told apart.)"""
    if WATCHDOG is not None and getattr(exc, "sqlstate", None) == vocabulary.QUERY_CANCELED:
        message = str(exc.args[0] if exc.args else exc)
        # PostgreSQL has consumed the timeout indicator by now: its message tells which
        reason = BY_STATEMENT_TIMEOUT if "statement timeout" in message else BY_CANCEL_REQUEST
        WATCHDOG.stop_here(vocabulary.QUERY_CANCELED, reason)
        raise RoutineInterrupted() from None
