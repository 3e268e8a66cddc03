"""Routines loaded in this backend: what a generated body (pyfuncs/ddl.py) calls.

Everything of a call that runs Python of the routine's runs inside one of the routine's
entry functions, where the watchdog's limits and signals reach it (see watchdog.py):
loading its module, the function itself, making its result plain (results.py) and its
exception a PostgreSQL error, each row of a set-returning routine and the closing of its
generator. What the generated body does around it (NULL checks, argument conversion) runs
no code of the routine's.
"""

from __future__ import annotations

import sys
import time
from _thread import get_ident
from contextvars import Context
from types import FunctionType

from . import backstop, deadline, errors, identity, overflow, results, sandbox, vocabulary
from . import watchdog as stopping
from .values import converter
from .watchdog import SEQUENCE, Budget, RoutineInterrupted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from types import CodeType
    from typing import Any

_DONE = object()  # no more rows


class _Unwatched:  # what entry functions ask for a stop outside PostgreSQL: never one
    stop = None
    stop_set = memoryview(bytes(1))
    check = staticmethod(lambda: None)


_UNWATCHED = _Unwatched()
# once decimal has been imported (boot.py): [decimal.setcontext, a context no call uses,
# decimal.getcontext], for the collector's callback (collecting)
ISOLATED: list[Any] = []


_COLLECTIONS: list[tuple[Any, Any]] = []  # what a collection under way put aside
COLLECTOR: list[Any] = []  # collecting, as gc.callbacks has it (boot.py)
_MAIN = get_ident()  # the backend's thread, which runs the calls


def collecting(phase: str, info: Any) -> None:
    """gc.callbacks: the collector runs finalizers (`__del__`, a suspended generator's
    close, what those call) in whatever call is under way when it runs. While it does, no
    call is under way (watchdog.CALLING: no routine's code runs, `db` and
    `decimal.localcontext()` refuse) and decimal's context is a clean one of its own: a red
    team's finalizer, a chain of the standard library's code and C's, read and raised the
    flags of the decimal context of another role's call that way."""
    if get_ident() != _MAIN:  # (the watchdog's thread: it runs no call)
        return
    if phase == "start":
        context = ISOLATED[2]() if ISOLATED else None
        _COLLECTIONS.append((stopping.CALLING[0], context))
        stopping.CALLING[0] = None
        if ISOLATED:
            ISOLATED[0](ISOLATED[1].copy())
    elif _COLLECTIONS:
        calling, context = _COLLECTIONS.pop()
        stopping.CALLING[0] = calling
        if context is not None:
            ISOLATED[0](context)


# (a stop may not land in it: one that did left no call under way for the rest of the call,
# whose own code then refused to run)
stopping.bookkeeping(collecting)


# The entry functions, made once per routine, each with a code object of its own
# (watchdog.ENTRIES), from code compiled once per backend (_ENTRY_CODE). `call` is what the
# body calls for a routine that returns a value (its parameters are the function's),
# `within` runs other work of a call, whose number is `n` and which began at `began` (a
# set-returning routine's first row: its timeout_ms counts from there, whatever ran between
# its rows).
# An exception leaves as a PostgreSQL error made inside the call; a stop leaves as a fresh
# RoutineInterrupted, so that nothing of the routine's travels out with it (its frames,
# their locals: what was raised in them is let go here, inside the call). `call` also drops
# the entry frames the watchdog let go of (watchdog.GRAVE), in the call's context.
# Each call runs in a contextvars.Context of its own, empty: what it sets there (decimal's
# current context, in a `with decimal.localcontext()` a generator it keeps is suspended
# in) ends with it, and decimal makes a fresh default context there as the call first
# computes. A set-returning routine's rows share one. Not a copy of the backend's context,
# which shares the objects its variables hold: decimal's context, made where PL/Python
# first converted a numeric, kept the flags every call raised (a red team's routine read
# another role's division by zero there). Always: a call that imports decimal itself would
# otherwise set it in the backend's own context, where PL/Python's other functions compute
# (a red team's precision and traps applied to another role's).
_CALL_HEAD = """
def call({params}):
    began = now()  # for the watchdog, which may first see this call up to a tick later
"""
_CALL = """\
    context = None
    try:
        context = Context()
        if grave:  # (in the call's context: what a finalizer of the routine's sets ends there)
            context.run(grave.clear)
        if owed:  # (callbacks of its weak references that came due elsewhere)
            context.run(pay, routine.namespace)
{reads}        result = context.run(function, {params})
        if watch.stop is not None:  # a stop it did not see (one a finalizer swallowed)
            watch.check()
        if type(result) is int:  # (one beyond bigint's is made a Decimal: results.plain)
            if lowest <= result < longest:
                return result
        elif type(result) in short:
            return result
        if type(result) in long and len(result) <= most:
            return result
        return context.run(finish, result)
    except RoutineInterrupted:
        stopped = True
    except BaseException as exc:  # (told in the call's context: its __str__ is the routine's)
        error = fail(exc) if context is None else context.run(fail, exc)
        stopped = False
    if stopped:
        raise RoutineInterrupted()
    raise error
"""
# Where the entry library is installed (entry.c), `call` is this: its frame holds `began`
# for the watchdog, and an Entry does the rest of _CALL's work in C ...
_CALL_IN_C = """
def call({params}):
    began = now()  # for the watchdog, which may first see this call up to a tick later
    return enter(began, {params})
"""
# ... where a clocked Entry notes `began` in this frame itself (entry.c, note_began):
# Python's clock, called from here, cost more than the rest of this frame
_CALL_CLOCKED = """
def call({params}):
    if 0:
        began = 0.0  # (unbound: the Entry's to note)
    return enter({params})
"""
# ... and where that Entry can be split (entry.c, split_enter), this frame calls the function
# itself, between the library's enter(entry, function), which returns it, and leave(entry,
# result): the function's frame then runs in this frame's evaluation, not one of its own.
# The error leaves after the handler, so that nothing of the routine's is its context
# (failed() takes the exception out of the handler).
_CALL_SPLIT = """
def call({params}):
    if 0:
        began = 0.0  # (unbound: enter() notes it)
    try:
        return leave(entry, enter(entry, function)({params}))
    except BaseException:
        error = failed(entry)
    raise error
"""
# A routine with converted parameters (values.py) reads them inside the call (see Unread)
_READ = """\
        if type({param}) is unread:
            {param} = context.run({param})
"""
_READ_ALL = """\
        args = context.run(read_all, args)
"""
_WITHIN_HEAD = """
def within(n, began, work, *args):
"""
_WITHIN = """\
    try:
        done = work(*args)
        if watch.stop is not None:
            watch.check()
        return done
    except RoutineInterrupted:
        stopped = True
    except BaseException as exc:
        error, stopped = work(fail, exc), False  # (work: the call's context's run)
    if stopped:
        raise RoutineInterrupted()
    raise error
"""
# A routine with a timeout_ms tells the backstop (backstop.py) its deadline while it runs,
# and gives the one before back as it leaves (a finally runs no code a stop could land
# before). A routine called through SQL inside another's query replaces the outer deadline
# while it runs: the outer's is the deadline timer's of that query (deadline.py), which
# cancels it, and a cancel is a stop the backstop acts on too.
_DEADLINE = """\
    prior = clock[0]
    clock[0] = {start} + timeout
    try:
{body}\
    finally:
        clock[0] = prior
"""


# Every entry makes its routine's module the one whose call is under way (watchdog.CALLING),
# undoes the settings its call's queries changed (identity.py), and gives the call it was
# entered from back its module, its own level and identity; the swaps come first, so that a
# stop landing after the undo (the watchdog raises only between bytecodes, and a store is
# not a point where it looks) leaves the outer call's level in place.
_SETTINGS = """\
    kept, kept_identity, outer = settings[0], settings[1], calling[0]
    settings[0] = 0
    try:
        calling[0] = routine.namespace
{body}\
    finally:
        calling[0] = outer
        opened, settings[0], settings[1] = settings[0], kept, kept_identity
        if opened:
            undo(opened)
"""


# Entry functions' code by source, compiled once per backend: a routine's entries differ
# from another's with the same limits and arity only in what their names are bound to.
_ENTRY_CODE: dict[str, CodeType] = {}


def _indented(body: str) -> str:
    return "".join("    " + line if line.strip() else line for line in body.splitlines(True))


def _entry_source(head: str, body: str, timeout: float | None, start: str) -> str:
    """An entry function's source: `start` is the expression for when the call began."""
    if timeout is not None:
        body = _DEADLINE.format(body=_indented(body), start=start)
    return head + _SETTINGS.format(body=_indented(body))


def _declared(spec: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The checks of a routine's result (definition.Definition._declared); routines
    deployed before them name only the texts refused where an array or a row is declared."""
    declared = spec.get("declared")
    if declared is None and (legacy := spec.get("no_text")) is not None:
        columns = [[index, name, ["items"]] for index, name in legacy["columns"]]
        declared = {"returns": legacy["returns"], "value": ["row"], "columns": columns}
    return declared


_CONTAINERS = {list, tuple, dict}
# what str() makes text of with repr(): PL/Python converts a value to any type but boolean,
# bytea and jsonb (and jsonb an object's key) by str() of it
_REPRS = {tuple, dict, bytes, bytearray}
_ITEMS = "which PostgreSQL would read as one item per character: return a list (or a row) of values"
_TEXT = (
    "which PostgreSQL would make text with repr(), after the call: return a value of the "
    "declared type"
)
_BYTES = (
    "and jsonb would make each of its bytes a number, after the call: return a str (base64, "
    "say) or a list of ints"
)
_KEY = "which jsonb would make text with repr(), after the call: use str keys"


def _refused(value: Any, checks: list[str], where: str) -> str | None:
    """Why PostgreSQL would convert `value` (plain), `where` it is, for long after the
    call, declared as `checks` say (see definition.conversion); or None. An array's other
    checks than "items" are its items', under the lists that are its dimensions."""
    kind = type(value)
    found: tuple[str, str] | None = None
    if "row" in checks or "items" in checks:
        if kind in results.TEXTS:
            found = f"a {kind.__name__}", _ITEMS
        elif "items" in checks and (kind is list or kind is tuple):
            found = _item_refused(value, checks)
    elif "text" in checks and (kind in _REPRS or kind is list):
        found = f"a {kind.__name__}", _TEXT
    elif "json" in checks:
        found = _json_refused(value)
    return None if found is None else f"{found[0]} where {where} is declared, {found[1]}"


def _levels(items: Any) -> Iterator[Any]:
    """An array's levels (plain): `items` and every list under it, the lists PostgreSQL
    takes as its dimensions; what else a level holds is an item."""
    pending = [items]
    while pending:
        level = pending.pop()
        yield level
        pending.extend(item for item in level if type(item) is list)


def _item_refused(items: Any, checks: list[str]) -> tuple[str, str] | None:
    """What among an array's items PostgreSQL would convert for long, and why; or None."""
    text, json = "text" in checks, "json" in checks
    for level in _levels(items) if text or json else ():
        kinds = set(map(type, level))
        if kinds.isdisjoint(_REPRS):
            continue
        if text:
            return f"a {min(k.__name__ for k in kinds & _REPRS)} as an item", _TEXT
        for item in level:
            if type(item) in _REPRS and (found := _json_refused(item)) is not None:
                return found
    return None


def _json_refused(value: Any) -> tuple[str, str] | None:
    """A byte string anywhere in a plain jsonb value, or a key jsonb reads with repr(),
    and why; or None. (Each container's items are looked at in C, and only containers are
    taken further.)"""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return f"a {kind.__name__}", _BYTES
    pending = [value] if kind in _CONTAINERS else []
    while pending:
        item = pending.pop()
        if type(item) is dict:
            keys = set(map(type, item)) & _REPRS
            if keys:
                return (
                    f"a {min(k.__name__ for k in keys)} as an object's key in a {kind.__name__}",
                    _KEY,
                )
            item = item.values()
        kinds = set(map(type, item))
        if bytes in kinds or bytearray in kinds:
            return f"a {kind.__name__} holding a byte string", _BYTES
        if not kinds.isdisjoint(_CONTAINERS):
            pending.extend(v for v in item if type(v) in _CONTAINERS)
    return None


def _documents(value: Any, checks: list[str]) -> int:
    """How many jsonb documents PostgreSQL makes of a plain value declared jsonb[]: its
    items (see _levels; 0 for any other type)."""
    if "items" not in checks or "json" not in checks or type(value) not in (list, tuple):
        return 0
    return sum(len(level) - list(map(type, level)).count(list) for level in _levels(value))


class Routine:
    """One deployed routine, loaded in this backend: what its generated body calls.

    The body (pyfuncs/ddl.py) does the per-call work inline and calls `fn`: for a routine
    that returns a value, its entry function `call`, which costs one Python frame and a
    clock reading on top of the user's function; for a set-returning one, a Pending, which
    `rows` makes the rows of. `null` and the converters run only for the parameters that
    need them, `fail` only on errors.
    """

    __slots__ = (
        "convert", "declared", "filename", "fn", "function", "last", "max_bytes",
        "max_db_ops", "max_memory", "max_rows", "namespace", "numbers", "qualname", "timeout",
        "within",
    )  # fmt: skip

    def __init__(self, spec: Mapping[str, Any], source: str, srf: bool = False) -> None:
        self.qualname: str = spec["routine"]
        self.filename: str = spec["file"]
        limits = spec["limits"]
        timeout_ms, memory_mb = limits["timeout_ms"], limits["max_memory_mb"]
        self.timeout: float | None = timeout_ms / 1000 if timeout_ms else None
        self.max_memory: int | None = memory_mb << 20 if memory_mb else None
        self.max_db_ops: int | None = limits["max_db_ops"]
        self.max_rows: int | None = limits["max_result_rows"]
        self.max_bytes: int | None = limits["max_result_bytes"]
        self.convert = {kind: self._unread(kind) for kind in spec["converters"]}
        self.declared: Mapping[str, Any] | None = _declared(spec)
        # whether PostgreSQL reads the result's texts and floats as numerics (results.size;
        # routines deployed before definition.reads_numbers count them so)
        self.numbers: bool = self.declared is None or self.declared.get("numbers", True)
        self.last: Pending | None = None  # what `fn` gave the body last (see rows)
        self.within: Callable[..., Any] = self._entry(
            _entry_source(_WITHIN_HEAD, _WITHIN, self.timeout, "began"), "within", self._names()
        )
        # the module's top-level code runs in a call of this routine: stoppable too, and a
        # stop there fails as the call's would (the body loads outside the call's `try`)
        self.namespace: dict[str, Any] = {}
        stopped = False
        try:
            self.namespace = self.within(
                SEQUENCE(), time.monotonic(), Context().run, sandbox.load_module, source,
                self.filename, spec["module"], frozenset(spec["allowed_modules"]),
            )  # fmt: skip
        except RoutineInterrupted:
            stopped = True
        if stopped:  # (raised here, not in the handler: nothing of the load travels with it)
            raise self.fail(RoutineInterrupted())
        self.function: Callable[..., Any] = self.namespace[spec["function"]]
        code = getattr(self.function, "__code__", None)
        arity = code.co_argcount if code is not None and not code.co_flags & 0x0C else -1
        params = ", ".join(f"a{i}" for i in range(arity)) if arity >= 0 else "*args"
        reads = "" if not self.convert else _READ_ALL if arity < 0 else "".join(
            _READ.format(param=f"a{i}") for i in range(arity)
        )  # fmt: skip
        names = self._names(function=self.function, namespace=self.namespace)
        enter, clocked = (None, False) if srf else backstop.entry(names)
        if enter is not None and clocked and not self.convert and hasattr(enter, "leave"):
            source = _CALL_SPLIT.format(params=params)
            names = {"entry": enter, "enter": enter.enter, "leave": enter.leave,
                     "failed": enter.failed, "function": self.function}  # fmt: skip
        elif enter is not None:  # (the entry library: _CALL's work in C)
            source = (_CALL_CLOCKED if clocked else _CALL_IN_C).format(params=params)
            names = {"enter": enter} if clocked else {"now": time.monotonic, "enter": enter}
        else:
            body = _CALL.format(params=params, reads=reads)
            source = _entry_source(_CALL_HEAD, body, self.timeout, "began").format(params=params)
        call = self._entry(source, "call", names)
        call.__name__ = call.__qualname__ = getattr(self.function, "__name__", "call")
        self.fn: Callable[..., Any] = self._pending if srf else call

    def _names(self, **names: Any) -> dict[str, Any]:
        """What this routine's entry functions are bound to (entry.c's config too)."""
        sized = self.max_bytes is not None
        watch = stopping.WATCHDOG or _UNWATCHED
        return {
            "grave": stopping.GRAVE, "owed": stopping.OWED, "pay": stopping.pay,
            # with max_result_bytes, every result goes to finish, to be sized in the call
            "short": () if sized else results.SHORT,
            "longest": 0 if sized else results.LONGEST,
            "lowest": 0 if sized else -results.LONGEST,  # (not -longest: an int made per call)
            # (a text _refuse could refuse, or one counted past the most, goes to finish)
            "long": () if sized else self._long(),
            "most": results.MAX_CONVERTED // results.WIDEST,
            "unread": Unread, "read_all": read_all,
            "finish": self._finish,
            "fail": self.fail, "RoutineInterrupted": RoutineInterrupted,
            "Context": Context, "now": time.monotonic,
            "watch": watch, "stop_set": watch.stop_set,  # (entry.c reads the byte)
            "clock": backstop.CLOCK,
            "settings": identity.SETTINGS, "undo": identity.undo_settings,
            "calling": stopping.CALLING, "routine": self,
            "timeout": self.timeout, **names,
        }  # fmt: skip

    def _entry(self, source: str, name: str, namespace: dict[str, Any]) -> Callable[..., Any]:
        """One entry function of this routine's, with a code object of its own."""
        code = _ENTRY_CODE.get(source)
        if code is None:
            # exec of the text, not compile(): compile() first makes the classes of the ast
            # module, 2 ms of every backend's first call that nothing else needs (the
            # routine's module was compiled by pyfuncs deploy, pyfuncs/ahead.py)
            made: dict[str, Any] = {}
            exec(source, made)
            code = _ENTRY_CODE[source] = made[name].__code__
        # (a code of its own: the file name tracebacks show, and the key of ENTRIES)
        entry: Callable[..., Any] = FunctionType(
            code.replace(co_filename=f"<pyfuncs: {self.qualname}>"), namespace, name
        )
        stopping.ENTRIES[id(entry.__code__)] = self  # kept alive by this routine
        return entry

    def numbered(self, frame: Any) -> bool:
        """Whether an entry frame of this routine's tells its call by its number, `n`."""
        return frame.f_code is self.within.__code__

    def _finish(self, result: Any) -> Any:
        """A result not of an exact built-in type, made plain inside the call, and its
        size within max_result_bytes."""
        result = self._made(result)
        if self.max_bytes is not None:
            made = results.size(result, self.numbers)
            if made > self.max_bytes:
                raise self._over("max_result_bytes", self.max_bytes, f"{made} bytes")
        return result

    def _made(self, value: Any) -> Any:
        """A result or a row made plain, refused where PostgreSQL would convert it for
        long after the call (unless max_result_bytes bounds it)."""
        value = results.plain(value)
        if self.declared is not None:
            self._refuse(value)
        if self.max_bytes is None and results.converted() > results.MAX_CONVERTED:
            raise self._too_much()
        overflow.room_for(results.converted())
        return value

    def _long(self) -> set[type]:
        """The text types a result may be returned as, as they are (the entry function's
        fast path): those _refuse does not refuse for the value."""
        checks = () if self.declared is None else self.declared["value"]
        if "items" in checks or "row" in checks:
            return set()
        return {str} if "json" in checks or "text" in checks else results.LONG

    def _refuse(self, value: Any) -> None:
        """Refuse a plain result, or row, that PostgreSQL would convert as it is declared for
        long after the call (definition.conversion): the value itself, and the columns of a
        row. And count the documents of a jsonb[] (results.DOCUMENT each)."""
        assert self.declared is not None
        checks = self.declared["value"]
        why = _refused(value, checks, self.declared["returns"])
        documents = _documents(value, checks)
        if why is None and type(value) in (dict, list, tuple):
            for index, name, checks in self.declared["columns"]:
                if type(value) is dict:
                    if name not in value:
                        continue
                    item = value[name]
                elif index < len(value):
                    item = value[index]
                else:
                    continue
                why = _refused(item, checks, f"its column {name}")
                if why is not None:
                    break
                documents += _documents(item, checks)
        if why is not None:
            raise TypeError(f"pyfuncs: {self.qualname} returned {why}")
        results.count(documents * results.DOCUMENT)

    def _too_much(self) -> Exception:
        """A result (or row) that PostgreSQL would take too long to convert after the call,
        where no stop reaches it (see results.MAX_CONVERTED)."""
        return errors.make(
            "LimitExceeded",
            f"{self.qualname} returned more than PostgreSQL may convert after the call, "
            f"where no limit applies: {results.converted()} characters, digits and items "
            f"(an item counts {results.ITEM}), at most {results.MAX_CONVERTED}",
            vocabulary.LIMIT_EXCEEDED,
            hint="return less, or set max_result_bytes to bound the result yourself",
        )

    def sized(self, value: Any) -> Any:
        """What the body of a routine with max_result_bytes hands its result to (bodies of
        every version do): the entry function sized it inside the call already, so it is
        returned as it is. (Sized here, after the call, where no stop reaches, a text of
        16 M characters took 3.6 s past timeout_ms and statement_timeout: a red team's.)"""
        return value

    def _unread(self, kind: str) -> Callable[[Any], Any]:
        """What the body converts a parameter of type `kind` with: an Unread, for the
        entry function to read inside the call (None stays None)."""
        read = self._reading(kind)
        return lambda value: None if value is None else Unread(read, value)

    def _reading(self, kind: str) -> Callable[[Any], Any]:
        convert = converter(kind)
        assert convert is not None

        def read(value: Any) -> Any:
            try:
                return convert(value)
            except ValueError as exc:
                raise errors.make(
                    "InvalidArgument", f"{self.qualname}: an argument could not be read: {exc}",
                    vocabulary.INVALID_ARGUMENT, hint="dates and times must use DateStyle ISO",
                ) from None  # fmt: skip

        return read

    def null(self, name: str) -> Exception:
        return errors.make(
            "NullNotAllowed",
            f"{self.qualname}: parameter {name!r} must not be NULL",
            vocabulary.NULL_NOT_ALLOWED,
            hint=f"pass a value for {name}, or declare it `| None` in {self.filename}",
        )

    def fail(self, exc: BaseException) -> Exception:
        """The PostgreSQL error for what left the routine (inside the call, by the entry
        functions; by the body for what reaches it: an error made already, or a stop)."""
        if type(exc) in errors.ERROR_TYPES.values():  # translated already
            return exc  # type: ignore[return-value]
        watchdog = stopping.WATCHDOG
        # a stopped call fails with its stop, whatever replaced it on the way out (an
        # `__exit__` that raised an error of its own while the stop passed through it)
        if isinstance(exc, RoutineInterrupted) or (watchdog is not None and watchdog.stopped()):
            if watchdog is None:
                sqlstate, message = vocabulary.QUERY_CANCELED, f"{self.qualname} was canceled"
            else:
                sqlstate, message = watchdog.describe(self.qualname)
            return errors.make(_STOP_ERRORS.get(sqlstate, "LimitExceeded"), message, sqlstate)
        return errors.translate(self.qualname, self.filename, exc)

    def _over(self, limit: str, value: int, observed: str) -> Exception:
        message = f"{self.qualname} exceeded its limit {limit}={value} ({observed})"
        return errors.make("LimitExceeded", message, vocabulary.LIMIT_EXCEEDED)

    def begin(self) -> Budget:
        """A call of a routine with max_db_ops starts (the body calls this, then end())."""
        assert stopping.WATCHDOG is not None and self.max_db_ops is not None
        budget = Budget(self.qualname, self.max_db_ops)
        stopping.WATCHDOG.budgets.append(budget)
        return budget

    def end(self) -> None:
        assert stopping.WATCHDOG is not None
        stopping.WATCHDOG.budgets.pop()

    # --- set-returning routines --------------------------------------------------------

    def _pending(self, *args: Any) -> Pending:
        """What the body gets for a set-returning routine: its rows, not yet made. The
        body hands it to `rows` next, maybe mapped (see there)."""
        pending = self.last = Pending(self.function, args)
        return pending

    def rows(self, result: Any, budget: Budget | None = None) -> Iterator[Any]:
        """A set-returning routine's rows, each made (the routine's code for it, made
        plain, within the result limits) inside the routine's call, which lasts from the
        first row to the last, with the identity in force at the first. The body passes
        what `fn` returned (a Pending), or, for a row type of one column, a map of it that
        reads the column."""
        pending, self.last = self.last, None
        source: Iterator[Any] = iter(() if result is None else result)
        call, began = SEQUENCE(), time.monotonic()  # the call's number, its start
        run = Context().run  # and its context: one for all its rows
        caller = stopping.CALLING[0]  # the module whose call asks for the rows, if any
        who = identity.who()
        count = size = 0
        # a loop, not `yield from`, so that closing this generator does not close `rows`
        # by itself: see watchdog.ORPHANS
        try:
            if stopping.ORPHANS or stopping.OWED:  # (in the call: its limits apply)
                self.within(call, began, run, _settle, self.namespace)
            while True:
                if count and identity.who() != who:
                    raise self._moved()
                row, made = self.within(call, began, run, self._row, source, budget)
                if row is _DONE:
                    return
                count += 1
                if self.max_rows is not None and count > self.max_rows:
                    raise self._over("max_result_rows", self.max_rows, f"row {count}")
                if self.max_bytes is not None:
                    size += made
                    if size > self.max_bytes:
                        observed = f"{size} bytes by row {count}"
                        raise self._over("max_result_bytes", self.max_bytes, observed)
                yield row
        except RoutineInterrupted:  # stopped: the call is over, so it is told here
            error = self.fail(RoutineInterrupted())
        except GeneratorExit:
            if pending is not None:
                # the query needs no more rows (LIMIT, say): closed now if what asked for
                # them is still what runs; else in the routine's next call (a red team's
                # portal, closed as the collector freed it in another role's call, had its
                # routine's `finally` run there); nor while PostgreSQL is aborting. Its
                # `finally` runs without queries either way (see watchdog.close_apart)
                if stopping.in_transaction() and stopping.CALLING[0] is caller:
                    self.within(call, began, run, stopping.close_apart, [pending])
                else:
                    stopping.leave(stopping.ORPHANS, self.namespace, pending)
            raise
        finally:
            stopping.forget(call)
        raise error

    def _moved(self) -> Exception:
        """The rows of a call are asked for as another role, or with another search_path or
        claims, than its first: a cursor fetched after `SET ROLE`, or persisted at the
        `COMMIT` of a transaction that changed roles (`WITH HOLD`)."""
        return errors.make(
            "PermissionDenied",
            f"{self.qualname}: the rest of its rows were asked for with another role, "
            "search_path or request.jwt.claims than its first: a call runs with one identity",
            vocabulary.PERMISSION_DENIED,
            hint="fetch a set-returning routine's rows as the role that began the call",
        )

    def _row(self, source: Iterator[Any], budget: Budget | None) -> tuple[Any, int]:
        """The next row (inside the call: see rows) and its size, or _DONE."""
        watchdog = stopping.WATCHDOG
        if budget is not None and watchdog is not None:
            watchdog.budgets.append(budget)
            try:
                row = next(source, _DONE)
            finally:
                watchdog.budgets.pop()
        else:
            row = next(source, _DONE)
        if row is _DONE:
            return row, 0
        if not results.kept(row):
            row = self._made(row)
        return row, (results.size(row, self.numbers) if self.max_bytes is not None else 0)


class Unread:
    """A parameter's value as PL/Python hands it over (text), with the converter that reads
    it (values.py): the body makes one, and the entry function reads it inside the call,
    under its limits. (Read in the body, before the call began, a LOGIN role's uuid[] of
    4 million items took 9 s past statement_timeout, cancel and terminate: a red team's.)"""

    __slots__ = ("read", "value")

    def __init__(self, read: Callable[[Any], Any], value: Any) -> None:
        self.read, self.value = read, value

    def __call__(self) -> Any:
        return self.read(self.value)


def read_all(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Arguments with every Unread read (inside the call)."""
    return tuple(arg() if type(arg) is Unread else arg for arg in args)


def _settle(module: Any) -> None:
    """What a set-returning routine's earlier calls left: see watchdog.ORPHANS and OWED."""
    stopping.dispose_orphans(module)
    stopping.pay(module)


class Pending:
    """A set-returning routine's rows before the first is asked for: PostgreSQL iterates
    this (through `Routine.rows`, inside the call), and the routine's function runs then."""

    __slots__ = ("args", "function", "iterator")

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.function, self.args = function, args
        self.iterator: Iterator[Any] | None = None

    def __bool__(self) -> bool:  # the body's `fn(...) or ()` must not ask the routine
        return True

    def __iter__(self) -> Pending:
        return self

    def __next__(self) -> Any:
        iterator = self.iterator
        if iterator is None:
            made: Iterable[Any] | None = self.function(*read_all(self.args))
            iterator = self.iterator = iter(() if made is None else made)
        return next(iterator)

    def close(self) -> None:
        close = getattr(self.iterator, "close", None)
        self.iterator = None
        if close is not None:
            close()


_STOP_ERRORS = {vocabulary.QUERY_CANCELED: "QueryCanceled",
                vocabulary.PERMISSION_DENIED: "PermissionDenied",
                vocabulary.ADMIN_SHUTDOWN: "AdminShutdown",
                vocabulary.OUT_OF_MEMORY: "OutOfMemory"}  # fmt: skip


def routine(spec: Mapping[str, Any], source: str) -> Routine:
    """Load one deployed routine (once per backend and routine; the body keeps it in SD).

    Whether it returns a set is read from the body that calls this: a set-returning body
    hands what `fn` returns to `rows` (every version of pyfuncs/ddl.py's template does)."""
    if deadline.parallel():  # (loading it queries: see deadline.may_not_run)
        raise errors.make("ParallelOperation", str(deadline.may_not_run().args[0]),
                          vocabulary.INVALID_TRANSACTION_STATE)  # fmt: skip
    return Routine(spec, source, srf=_hands_to_rows(sys._getframe(1).f_code))


def _hands_to_rows(body: Any) -> bool:
    """Whether a generated body reads the attribute `rows` (`SD['pf'].rows(...)`), not only
    a global of that name: a parameter named `rows` (PL/Python makes parameters globals)
    made every routine that had one set-returning, and its result a Pending's repr."""
    names = body.co_names
    if "rows" not in names:
        return False
    import opcode

    wanted, raw, extended = names.index("rows"), body.co_code, 0
    attributes = {opcode.opmap["LOAD_ATTR"], opcode.opmap.get("LOAD_METHOD", -1)}
    shift = 1 if sys.version_info >= (3, 12) else 0  # (3.12's LOAD_ATTR: index << 1 | flag)
    for i in range(0, len(raw), 2):
        op, arg = raw[i], raw[i + 1] | extended
        extended = arg << 8 if op == opcode.EXTENDED_ARG else 0
        if op in attributes and arg >> shift == wanted:
            return True
    return False
