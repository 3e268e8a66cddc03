"""The pyfuncs runtime that runs inside PostgreSQL.

This file is executed by `pyfuncs.boot()` in the backend's PL/Python interpreter (Debian's
system Python, stdlib only: nothing from the virtualenv is importable here). `pyfuncs install`
stores its source in `pyfuncs.runtime_module`.

It provides:
* a `pyfuncs` module in `sys.modules`, so routine modules keep their normal
  `from pyfuncs import stored_function, procedure, db` imports;
* `db`, the routine's handle on the database (parameterised queries with per-backend plan
  caching, cursors, subtransactions, JWT claims);
* `routine()`, which loads a deployed routine's module source once per backend for its
  generated PL/Python body (pyfuncs/ddl.py): the function to call, converters for arguments
  PL/Python hands over as text, and the translation of exceptions into PostgreSQL errors with
  an SQLSTATE and the routine's own source file:line.
"""

from __future__ import annotations
import __future__

import ast
import contextlib
import copy
import ctypes
import datetime
import decimal
import json
import linecache
import math
import os
import signal
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

# plpy is PL/Python's module; it exists only inside the backend, so it is bound by boot().
# Outside PostgreSQL this file stays importable for RaiseError and Rows (pyfuncs.local).
plpy: Any = None
_GD: dict[str, Any] = {}

# --- values ------------------------------------------------------------------------------
# PL/Python hands these types over as their text form; everything else (numbers, bool, bytea,
# arrays, jsonb through the transform) already arrives as the natural Python value.

_PARSERS: dict[str, Callable[[str], Any]] = {
    "datetime": datetime.datetime.fromisoformat,
    "date": datetime.date.fromisoformat,
    "time": datetime.time.fromisoformat,
    "uuid": uuid.UUID,
}

# type OID -> parser, for values in query results
_OID_PARSERS: dict[int, str] = {
    1114: "datetime", 1184: "datetime", 1082: "date", 1083: "time", 2950: "uuid",
    1115: "list:datetime", 1185: "list:datetime", 1182: "list:date", 1183: "list:time",
    2951: "list:uuid",
}  # fmt: skip


def _converter(kind: str | None) -> Callable[[Any], Any] | None:
    if not kind:
        return None
    if kind.startswith("list:"):
        inner = _converter(kind[5:])
        assert inner is not None

        def convert_list(value: Any) -> Any:
            if value is None:
                return None
            return [convert_list(v) if isinstance(v, list) else _none_or(inner, v) for v in value]

        return convert_list
    parse = _PARSERS[kind]
    return lambda value: _none_or(parse, value)


def _none_or(fn: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else fn(value)


_SIMPLE_TYPES: dict[type, str] = {
    type(None): "text", bool: "boolean", int: "bigint", float: "double precision",
    decimal.Decimal: "numeric", str: "text", bytes: "bytea",
}  # fmt: skip


def _adapt_param(value: Any) -> tuple[str, Any]:
    """The SQL type to declare for a query parameter, and the value PL/Python can send."""
    if value is None:
        return "text", None
    if isinstance(value, bool):
        return "boolean", value
    if isinstance(value, int):
        return "bigint", value
    if isinstance(value, float):
        return "double precision", value
    if isinstance(value, decimal.Decimal):
        return "numeric", value
    if isinstance(value, str):
        return "text", value
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytea", bytes(value)
    if isinstance(value, datetime.datetime):
        return ("timestamptz" if value.tzinfo else "timestamp"), value.isoformat()
    if isinstance(value, datetime.date):
        return "date", value.isoformat()
    if isinstance(value, datetime.time):
        return "time", value.isoformat()
    if isinstance(value, uuid.UUID):
        return "uuid", str(value)
    if isinstance(value, Mapping):
        return "jsonb", dict(value)
    if isinstance(value, list | tuple):
        items = [v for v in value if v is not None]
        if not items:  # like None, an empty list says nothing of its type: cast the placeholder
            return "text[]", list(value)
        if all(not isinstance(v, Mapping | list | tuple) for v in items):
            sqltype, _ = _adapt_param(items[0])
            return sqltype + "[]", [_adapt_param(v)[1] for v in value]
        return "jsonb", list(value)
    raise TypeError(
        f"db: cannot pass a {type(value).__name__} as a query parameter; "
        "use int, float, Decimal, str, bool, bytes, datetime, date, time, UUID, dict or list"
    )


# --- the db handle ----------------------------------------------------------------------


class Rows(list[dict[str, Any]]):
    """Result rows as dicts, plus the number of rows a write touched (`rowcount`)."""

    rowcount: int = 0


class Queries:
    """The calls derived from `execute` and `claims`, shared with pyfuncs.local.LocalDb."""

    def execute(self, query: str, params: Sequence[Any] = (), /) -> Rows:
        raise NotImplementedError

    def claims(self) -> dict[str, Any]:
        raise NotImplementedError

    def fetchone(self, query: str, params: Sequence[Any] = (), /) -> dict[str, Any] | None:
        """The first row of `query`, or None."""
        rows = self.execute(query, params)
        return rows[0] if rows else None

    def fetchval(self, query: str, params: Sequence[Any] = (), /) -> Any:
        """The first column of the first row of `query`, or None."""
        row = self.fetchone(query, params)
        return next(iter(row.values())) if row else None

    def user_id(self) -> uuid.UUID | None:
        """The caller's `sub` claim as a UUID, or None."""
        sub = self.claims().get("sub")
        return uuid.UUID(sub) if sub else None


class _Prepared:
    """A plan, and how to convert its result columns (learnt from its first result)."""

    __slots__ = ("fixes", "plain", "plan")

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.fixes: list[tuple[str, Callable[[Any], Any]]] | None = None
        self.plain = False  # known to need no conversion

    def rows(self, result: Any) -> Any:
        fixes = self.fixes
        if fixes is None:
            try:
                names, oids = result.colnames(), result.coltypes()
            except plpy.Error:  # a utility statement or a write without RETURNING
                return result
            fixes = self.fixes = [
                (n, _converter(_OID_PARSERS[o]))  # type: ignore[misc]
                for n, o in zip(names, oids, strict=True)
                if o in _OID_PARSERS
            ]
            self.plain = not fixes
        for row in result if fixes else ():
            for name, convert in fixes:
                row[name] = convert(row[name])
        return result


def _plan_key(query: str, params: Sequence[Any]) -> tuple[Any, ...]:
    # a query's parameters are mostly one or two: build those keys without unpacking
    count = len(params)
    if count == 1:
        return (query, type(params[0]))
    if count == 2:
        return (query, type(params[0]), type(params[1]))
    return (query, *map(type, params))


class Db(Queries):
    """The database, as seen from inside a routine. Runs as the caller; RLS applies."""

    def __init__(self) -> None:
        # plans by query text and the Python types of its parameters, when PL/Python sends
        # the values as they are (the common case: one dict lookup, no conversion) ...
        self._direct: dict[tuple[Any, ...], _Prepared] = {}
        # ... and by query text and SQL types, when values have to be adapted first
        self._adapted: dict[tuple[str, tuple[str, ...]], _Prepared] = {}

    def _plan(self, query: str, params: Sequence[Any]) -> tuple[_Prepared, Sequence[Any]]:
        """The plan for `query` with these parameters' types, and the values to send."""
        key = _plan_key(query, params)
        prepared = self._direct.get(key)
        if prepared is not None:
            return prepared, params
        if all(type(v) in _SIMPLE_TYPES for v in params):
            sqltypes = [_SIMPLE_TYPES[type(v)] for v in params]
            prepared = self._direct[key] = _Prepared(plpy.prepare(query, sqltypes))
            return prepared, params
        adapted = [_adapt_param(v) for v in params]
        adapted_key = (query, tuple(t for t, _ in adapted))
        prepared = self._adapted.get(adapted_key)
        if prepared is None:
            prepared = _Prepared(plpy.prepare(query, list(adapted_key[1])))
            self._adapted[adapted_key] = prepared
        return prepared, [v for _, v in adapted]

    @staticmethod
    def _count() -> None:
        """Every database operation: refused in a stopped call, counted for max_db_ops."""
        if _disposing:
            raise RoutineInterrupted()
        watchdog = _WATCHDOG
        if watchdog is not None and (watchdog.stop is not None or watchdog.budgets):
            watchdog.count_db_op()

    def _run(self, query: str, params: Sequence[Any]) -> Any:
        # the hot path of every query: _count and the first step of _plan, inlined
        if _disposing:
            raise RoutineInterrupted()
        watchdog = _WATCHDOG
        if watchdog is not None and (watchdog.stop is not None or watchdog.budgets):
            watchdog.count_db_op()
        prepared = self._direct.get(_plan_key(query, params))
        if prepared is None:
            prepared, params = self._plan(query, params)
        try:
            result = plpy.execute(prepared.plan, params)
        except plpy.SPIError as exc:
            _interrupted(exc)
            raise
        return result if prepared.plain else prepared.rows(result)

    def execute(self, query: str, params: Sequence[Any] = (), /) -> Rows:
        """Run `query` with `$1, $2 …` bound to `params`; return the rows as dicts.

        Plans are prepared once per backend for each query text and parameter types.
        """
        result = self._run(query, params)
        rows = Rows(result)
        rows.rowcount = result.nrows()
        return rows

    def fetchone(self, query: str, params: Sequence[Any] = (), /) -> dict[str, Any] | None:
        """The first row of `query`, or None."""
        result = self._run(query, params)  # read in place: no copy for one row
        return result[0] if len(result) else None

    def fetchval(self, query: str, params: Sequence[Any] = (), /) -> Any:
        """The first column of the first row of `query`, or None."""
        result = self._run(query, params)
        if not len(result):
            return None
        for value in result[0].values():
            return value
        return None

    def cursor(
        self, query: str, params: Sequence[Any] = (), /, *, batch: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Iterate over a large result without holding it all in memory."""
        _dispose_orphans()
        self._count()
        prepared, values = self._plan(query, params)
        cur = plpy.cursor(prepared.plan, values)
        try:
            while True:
                self._count()
                try:
                    chunk = cur.fetch(batch)
                except plpy.SPIError as exc:
                    _interrupted(exc)
                    raise
                if not chunk:
                    return
                yield from prepared.rows(chunk)
        finally:
            if _in_transaction():
                with contextlib.suppress(ValueError):  # its portal went with an aborted one
                    cur.close()
            else:  # PostgreSQL is aborting: closing its portal now can crash it
                _ORPHANS.append(cur)

    def subtransaction(self) -> Any:
        """A savepoint: `with db.subtransaction(): ...` undoes its writes if the block raises."""
        return plpy.subtransaction()

    def claims(self) -> dict[str, Any]:
        """The caller's JWT claims (`request.jwt.claims`), empty without a token."""
        raw = plpy.execute("SELECT current_setting('request.jwt.claims', true) AS c")[0]["c"]
        return dict(json.loads(raw)) if raw else {}


db = Db()

# --- errors -----------------------------------------------------------------------------


class RaiseError(Exception):
    """Raise from a routine to fail with your own SQLSTATE, detail and hint."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str = "P0001",
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint


_ERROR_TYPES: dict[str, type] = {}


def _error(
    type_name: str,
    message: str,
    sqlstate: str,
    detail: str | None = None,
    hint: str | None = None,
) -> Exception:
    """A plpy.Error PostgreSQL reports as `<type_name>: <message>` with our SQLSTATE.

    PL/Python prefixes the message with the exception's module and class name, and reads
    `sqlstate`, `detail` and `hint` attributes off plpy.Error instances; a subclass named after
    the original exception and placed in `builtins` gives a clean `ValueError: ...` message.
    """
    cls = _ERROR_TYPES.get(type_name)
    if cls is None:
        cls = _ERROR_TYPES[type_name] = type(type_name, (plpy.Error,), {"__module__": "builtins"})
    err: Exception = cls(message)
    err.sqlstate = sqlstate  # type: ignore[attr-defined]
    if detail:
        err.detail = detail  # type: ignore[attr-defined]
    if hint:
        err.hint = hint  # type: ignore[attr-defined]
    return err


def _translate(routine: str, filename: str, exc: BaseException) -> Exception:
    """The PostgreSQL error for an exception from a routine, pointing at its own source line."""
    import traceback  # here: the error path pays for the import, not every backend's boot

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else routine
    trace = "".join(traceback.format_list(frames)).rstrip()
    detail: str | None = None
    hint: str | None = None
    if isinstance(exc, plpy.SPIError):
        sqlstate = getattr(exc, "sqlstate", None) or "XX000"
        message = str(exc.args[0] if exc.args else exc)
        detail, hint = getattr(exc, "detail", None), getattr(exc, "hint", None)
    elif isinstance(exc, RaiseError):
        sqlstate, message, detail, hint = exc.sqlstate, exc.message, exc.detail, exc.hint
    elif isinstance(exc, MemoryError):
        sqlstate, message = "53200", f"{routine} ran out of memory"
    elif isinstance(exc, OperationTooLarge):
        sqlstate, message = "54000", f"{routine}: {exc}"
    else:
        sqlstate, message = "PF000", str(exc)
    traced = f"Python traceback (routine {routine}):\n{trace}" if trace else None
    detail = "\n".join(p for p in (detail, traced) if p) or None
    return _error(type(exc).__name__, f"{message} ({where})", sqlstate, detail, hint)


# --- stopping ---------------------------------------------------------------------------
# Stock PL/Python never looks at PostgreSQL's interrupt flags while Python bytecode runs, so a
# pure-Python loop ignores statement_timeout, pg_cancel_backend and pg_terminate_backend. The
# watchdog is a thread of this backend that looks every 40 ms while Python runs
# (it needs the GIL, which the main thread hands over at its periodic switch points), reads
# the flags the postgres executable exports, and raises RoutineInterrupted in the main thread
# while a routine's frame is on its stack. The stop is sticky for that call: `db` refuses
# further queries, and every `except` handler, `finally` block and `with` block of a routine
# module calls a guard (inserted when the module is compiled, see _Guards) that raises again,
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
        self._main = threading.get_ident()
        self.routines: dict[types.CodeType, Routine] = {}
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
        every = signal.valid_signals()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, every)
        try:  # the thread inherits the blocked mask
            threading.Thread(target=self._run, name="pyfuncs-watchdog", daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _outermost(self, frame: types.FrameType | None) -> tuple[types.FrameType, Routine] | None:
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

    def _why(self, routine: Routine, elapsed: float) -> tuple[str, str] | None:
        if self._die.value:
            return "57P01", TERMINATED
        if self._cancel.value:
            return "57014", CANCELED  # describe() tells which, on the main thread
        if routine.timeout is not None and elapsed > routine.timeout:
            return "57014", f"exceeded its limit timeout_ms={round(routine.timeout * 1000)}"
        if routine.max_memory is not None:
            grown = self._private_memory() - self._base_memory
            if grown > routine.max_memory:
                limit = routine.max_memory >> 20
                return (
                    "53200",
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
                self.stop_here("54000", reason, budget.routine)
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
            return "57014", f"{routine} was canceled"
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


_WATCHDOG: Watchdog | None = None


def _stop_guard() -> None:
    """Called first in every handler, `finally` and after every `with` of a routine module."""
    if _disposing:
        raise RoutineInterrupted()
    if _WATCHDOG is not None and _WATCHDOG.stop is not None:
        _WATCHDOG.check()


# --- what an aborted statement leaves behind ---------------------------------------------
# When PostgreSQL aborts a statement while a set-returning routine's generator is suspended
# (a cancel or statement_timeout in the query consuming its rows), it drops the generator
# during its own cleanup. Finalising it then runs Python that may call back into PostgreSQL
# (a cursor's close, a `finally` that queries), which can crash the backend and, with it,
# restart the cluster. So what is left suspended at that moment is kept here instead, and
# closed at the next set-returning call or cursor in this backend: with every handler and
# `finally` of routine code skipped (their first statement is the guard, which raises while
# disposing) and every query refused, so none of it runs in another call's context.

_ORPHANS: list[Any] = []
_disposing = False


def _in_transaction() -> bool:
    """Whether PostgreSQL is in a transaction, not aborting one (boot() binds the real
    IsTransactionState; outside PostgreSQL there is no abort to be in)."""
    return True


def _dispose_orphans() -> None:
    global _disposing
    if not _ORPHANS:
        return
    orphans = _ORPHANS[:]
    _ORPHANS.clear()
    _disposing = True
    try:
        for orphan in orphans:
            with contextlib.suppress(BaseException):
                orphan.close()
        del orphan, orphans  # finalised here, while disposing
    finally:
        _disposing = False


class _Guards(ast.NodeTransformer):
    """Insert `pyfuncs.guard()` where routine code could swallow a RoutineInterrupted, and
    route the operators of bounded operations through their checks.

    The inserted calls name globals with a dot in them (see _ROUTINE_HELPERS): no source
    code can spell, rebind or shadow such a name, and the policy keeps routines away from
    the module's namespace, so a routine cannot replace the checks with its own.
    """

    @staticmethod
    def _guard(at: ast.AST) -> ast.stmt:
        call = ast.Expr(ast.Call(ast.Name("pyfuncs.guard", ast.Load()), [], []))
        return ast.copy_location(call, at)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        self.generic_visit(node)
        node.body.insert(0, self._guard(node.body[0]))
        return node

    def visit_Try(self, node: ast.Try | ast.TryStar) -> ast.AST:
        self.generic_visit(node)
        if node.finalbody:
            node.finalbody.insert(0, self._guard(node.finalbody[0]))
        return node

    visit_TryStar = visit_Try

    def visit_With(self, node: ast.With) -> list[ast.stmt]:
        self.generic_visit(node)
        return [node, self._guard(node)]  # a context manager's __exit__ may suppress it

    # operators whose result can dwarf their operands, and their checks (bounded operations)
    _BOUNDED: ClassVar[dict[type[ast.operator], str]] = {
        ast.Mult: "mul", ast.Pow: "pow", ast.LShift: "lshift",
    }  # fmt: skip

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        name = self._BOUNDED.get(type(node.op))
        if name is None:
            return node
        call = ast.Call(ast.Name(f"pyfuncs.{name}", ast.Load()), [node.left, node.right], [])
        return ast.copy_location(call, node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        """`t *= v` becomes `t *= pyfuncs.check_mul(t, v)`: in-place operators stay in place."""
        self.generic_visit(node)
        name = self._BOUNDED.get(type(node.op))
        if name is None:
            return node
        current = _as_load(node.target)
        check = ast.Name(f"pyfuncs.check_{name}", ast.Load())
        node.value = ast.copy_location(ast.Call(check, [current, node.value], []), node.value)
        return node


def _as_load(target: ast.expr) -> ast.expr:
    """An assignment target read instead of written (`x`, `obj.x`, `seq[i]`)."""
    read = copy.deepcopy(target)
    for node in ast.walk(read):
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Starred)):
            node.ctx = ast.Load()
    return read


# --- bounded operations -----------------------------------------------------------------
# The watchdog can only stop code that returns to the interpreter. A few operations make a
# result far larger than their operands inside one C call: `*` of a sequence or of big
# integers, `**`, `<<`, and factorial, comb and perm. In routine modules those operators go
# through the checks below (inserted by _Guards; constant expressions the compiler folds
# stay as they are) and `pow` and the math module are replaced by checked ones, so such an
# operation is refused before it starts. Other long C operations take time in proportion to
# an input that had to be built first, in code the watchdog and max_memory_mb do see.

MAX_INT_BITS = 100_000  # ~30,000 decimal digits; Python refuses to print more than 4,300
MAX_REPEAT_BYTES = 64 << 20


class OperationTooLarge(OverflowError):
    """One operation would have made a result beyond what a routine may make at once."""


def _refuse(what: str, size: float, unit: str, most: int) -> None:
    raise OperationTooLarge(
        f"{what} would make {size:,.0f} {unit}; one operation in a routine may make at most "
        f"{most:,} (build it in steps, or keep the numbers smaller)"
    )


def _repeat(seq: Any, times: Any, op: str) -> None:
    if isinstance(seq, (str, bytes, bytearray, list, tuple)) and isinstance(times, int):
        size = len(seq) * times * (8 if isinstance(seq, (list, tuple)) else 1)
        if size > MAX_REPEAT_BYTES:
            _refuse(f"{type(seq).__name__} {op} {times}", size, "bytes", MAX_REPEAT_BYTES)


def _check_mul(a: Any, b: Any) -> Any:
    """Refuse `a * b` if it would be too large; else b (for `a *= b`, which stays in place)."""
    if type(a) is int and type(b) is int:
        bits = a.bit_length() + b.bit_length()
        if bits > MAX_INT_BITS:
            _refuse("int * int", bits, "bits", MAX_INT_BITS)
    elif type(a) is not float and type(b) is not float:
        _repeat(a, b, "*")
        _repeat(b, a, "*")
    return b


def _check_pow(base: Any, exponent: Any) -> Any:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        bits = exponent * math.log2(abs(base))
        if bits > MAX_INT_BITS:
            _refuse("int ** int", bits, "bits", MAX_INT_BITS)
    return exponent


def _check_lshift(a: Any, b: Any) -> Any:
    if type(a) is int and type(b) is int and a and b > 0:
        bits = a.bit_length() + b
        if bits > MAX_INT_BITS:
            _refuse("int << int", bits, "bits", MAX_INT_BITS)
    return b


def _checked_mul(a: Any, b: Any) -> Any:
    return a * _check_mul(a, b)


def _checked_pow(base: Any, exponent: Any, mod: Any = None) -> Any:
    if mod is not None:  # modular: the result stays below mod
        return pow(base, exponent, mod)
    return base ** _check_pow(base, exponent)


def _checked_lshift(a: Any, b: Any) -> Any:
    return a << _check_lshift(a, b)


def _factorial_bits(n: Any) -> float:
    return math.lgamma(n + 1) / math.log(2) if isinstance(n, int) and n > 1 else 0.0


def _guarded_math() -> types.ModuleType:
    """The math module with factorial, comb and perm refusing results beyond MAX_INT_BITS."""

    def checked(bits: float, what: str) -> None:
        if bits > MAX_INT_BITS:
            _refuse(what, bits, "bits", MAX_INT_BITS)

    def factorial(n: int, /) -> int:
        checked(_factorial_bits(n), f"factorial({n})")
        return math.factorial(n)

    def comb(n: int, k: int, /) -> int:
        if isinstance(n, int) and isinstance(k, int) and 0 <= k <= n:
            bits = _factorial_bits(n) - _factorial_bits(k) - _factorial_bits(n - k)
            checked(bits, f"comb({n}, {k})")
        return math.comb(n, k)

    def perm(n: int, k: int | None = None, /) -> int:
        if isinstance(n, int) and isinstance(k, int) and 0 <= k <= n:
            checked(_factorial_bits(n) - _factorial_bits(n - k), f"perm({n}, {k})")
        return math.perm(n, k)

    module = types.ModuleType("math", math.__doc__)
    module.__dict__.update({k: v for k, v in vars(math).items() if not k.startswith("_")})
    module.__dict__.update(factorial=factorial, comb=comb, perm=perm)
    return module


def _compile(source: str, filename: str) -> types.CodeType:
    """A routine module compiled with the guards inserted. Its annotations are kept as
    strings (PEP 563) whether or not it says so: nothing evaluates them in the database, and
    a check reads them as type expressions only (pyfuncs.typemap.evaluate)."""
    tree = _Guards().visit(ast.parse(source, filename))
    flags = __future__.annotations.compiler_flag
    code: types.CodeType = compile(
        ast.fix_missing_locations(tree), filename, "exec", flags, dont_inherit=True
    )
    return code


def _interrupted(exc: BaseException) -> None:
    """Turn a query cancelled inside a routine into a sticky stop."""
    sqlstate = getattr(exc, "sqlstate", None)
    if _WATCHDOG is not None and sqlstate in ("57014", "57P01"):
        message = str(exc.args[0] if exc.args else exc)
        # PostgreSQL has consumed the timeout indicator by now: its message tells which
        if sqlstate == "57P01":
            reason = TERMINATED
        elif "statement timeout" in message:
            reason = BY_STATEMENT_TIMEOUT
        else:
            reason = BY_CANCEL_REQUEST
        _WATCHDOG.stop_here(sqlstate, reason)
        raise RoutineInterrupted() from None


# --- runtime guards ---------------------------------------------------------------------
# Behind the policy check done before deploy: a routine module runs with builtins that lack
# dynamic code and namespaces, an importer limited to the allow-list, and attribute access by
# name that refuses private names. Defence in depth, like the policy itself.

_REMOVED_BUILTINS = frozenset({
    "exec", "eval", "compile", "open", "globals", "vars", "locals", "breakpoint", "input",
    "help", "memoryview", "delattr", "__import__", "__loader__", "__spec__",
})  # fmt: skip


# The `pyfuncs` module routine modules import: the public API for routines only (boot()
# makes it in the database; pyfuncs._sandbox makes one that records the decorators).
_SHIM: types.ModuleType | None = None


def _restricted_builtins(allowed: frozenset[str]) -> dict[str, Any]:
    import builtins

    real_import = builtins.__import__
    replaced = {"math": _guarded_math()}
    if _SHIM is not None:
        replaced["pyfuncs"] = _SHIM

    def guarded_import(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        if level != 0 or name not in allowed:
            raise ImportError(f"pyfuncs: import of {name!r} is not allowed in a routine")
        return replaced.get(name) or real_import(name, globals, locals, fromlist, level)

    def public(name: object) -> str:
        if not isinstance(name, str) or name.startswith("_"):
            raise AttributeError(f"pyfuncs: attribute {name!r} is not accessible from a routine")
        return name

    restricted = {k: v for k, v in vars(builtins).items() if k not in _REMOVED_BUILTINS}
    restricted.update(
        __import__=guarded_import,
        getattr=lambda obj, name, *default: getattr(obj, public(name), *default),
        hasattr=lambda obj, name: hasattr(obj, public(name)),
        setattr=lambda obj, name, value: setattr(obj, public(name), value),
        pow=_checked_pow,
    )
    return restricted


# what the code _Guards inserts calls, in every routine module's globals
_ROUTINE_HELPERS = {
    "pyfuncs.guard": _stop_guard, "pyfuncs.mul": _checked_mul, "pyfuncs.pow": _checked_pow,
    "pyfuncs.lshift": _checked_lshift, "pyfuncs.check_mul": _check_mul,
    "pyfuncs.check_pow": _check_pow, "pyfuncs.check_lshift": _check_lshift,
}  # fmt: skip


def _load_module(
    source: str, filename: str, module_name: str, allowed: frozenset[str]
) -> dict[str, Any]:
    """Execute a routine module once per backend, keyed by its exact source."""
    modules: dict[tuple[str, frozenset[str]], dict[str, Any]] = _GD.setdefault(
        "pyfuncs.modules", {}
    )
    key = (source, allowed)
    namespace = modules.get(key)
    if namespace is None:
        module = types.ModuleType(module_name)
        module.__file__ = filename
        # dataclasses and typing look classes' modules up in sys.modules while they are built
        sys.modules[module_name] = module
        # so tracebacks show the routine's source lines: the file itself is not on the server
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module.__dict__.update(_ROUTINE_HELPERS)
        module.__dict__["__builtins__"] = _restricted_builtins(allowed)
        exec(_compile(source, filename), module.__dict__)
        namespace = modules[key] = module.__dict__
    return namespace


# --- routines ---------------------------------------------------------------------------


class Routine:
    """One deployed routine, loaded in this backend: what its generated body calls.

    The body (pyfuncs/ddl.py) does the per-call work inline, so a call costs what bare
    PL/Python costs plus one direct call of the user's function: `null` and the converters
    run only for the parameters that need them, `fail` and `rows` only on errors and sets.
    """

    __slots__ = (
        "convert", "filename", "fn", "max_bytes", "max_db_ops", "max_memory", "max_rows",
        "qualname", "timeout",
    )  # fmt: skip

    def __init__(self, spec: Mapping[str, Any], source: str) -> None:
        self.qualname: str = spec["routine"]
        self.filename: str = spec["file"]
        limits = spec["limits"]
        timeout_ms, memory_mb = limits["timeout_ms"], limits["max_memory_mb"]
        self.timeout: float | None = timeout_ms / 1000 if timeout_ms else None
        self.max_memory: int | None = memory_mb << 20 if memory_mb else None
        self.max_db_ops: int | None = limits["max_db_ops"]
        self.max_rows: int | None = limits["max_result_rows"]
        self.max_bytes: int | None = limits["max_result_bytes"]
        try:
            namespace = _load_module(
                source, self.filename, spec["module"], frozenset(spec["allowed_modules"])
            )
            self.fn = namespace[spec["function"]]
        except Exception as exc:
            raise self.fail(exc) from None
        self.convert = {kind: self._reading(_converter(kind)) for kind in spec["converters"]}
        if _WATCHDOG is not None:
            _WATCHDOG.routines[self.fn.__code__] = self

    def _reading(self, convert: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
        assert convert is not None

        def read(value: Any) -> Any:
            try:
                return convert(value)
            except ValueError as exc:
                raise _error(
                    "InvalidArgument", f"{self.qualname}: an argument could not be read: {exc}",
                    "22023", hint="dates and times must use DateStyle ISO",
                ) from None  # fmt: skip

        return read

    def null(self, name: str) -> Exception:
        return _error(
            "NullNotAllowed",
            f"{self.qualname}: parameter {name!r} must not be NULL",
            "22004",
            hint=f"pass a value for {name}, or declare it `| None` in {self.filename}",
        )

    def fail(self, exc: BaseException) -> Exception:
        if type(exc) in _ERROR_TYPES.values():  # already translated (a NULL or unreadable argument)
            return exc  # type: ignore[return-value]
        if isinstance(exc, RoutineInterrupted) and _WATCHDOG is not None:
            sqlstate, message = _WATCHDOG.describe(self.qualname)
            return _error(_STOP_ERRORS.get(sqlstate, "LimitExceeded"), message, sqlstate)
        return _translate(self.qualname, self.filename, exc)

    def _over(self, limit: str, value: int, observed: str) -> Exception:
        message = f"{self.qualname} exceeded its limit {limit}={value} ({observed})"
        return _error("LimitExceeded", message, "54000")

    def begin(self) -> Budget:
        """A call of a routine with max_db_ops starts (the body calls this, then end())."""
        assert _WATCHDOG is not None and self.max_db_ops is not None
        budget = Budget(self.qualname, self.max_db_ops)
        _WATCHDOG.budgets.append(budget)
        return budget

    def end(self) -> None:
        assert _WATCHDOG is not None
        _WATCHDOG.budgets.pop()

    def _counted(self, rows: Iterable[Any], budget: Budget) -> Iterator[Any]:
        """A generator's rows, its database operations counted while it makes each one."""
        assert _WATCHDOG is not None
        iterator = iter(rows)
        while True:
            _WATCHDOG.budgets.append(budget)
            try:
                row = next(iterator)
            except StopIteration:
                return
            finally:
                _WATCHDOG.budgets.pop()
            yield row

    def rows(self, result: Any, budget: Budget | None = None) -> Iterator[Any]:
        """A set-returning routine's rows, within its result limits; errors while iterating
        are translated too."""
        _dispose_orphans()
        rows: Iterator[Any] = iter(() if result is None else result)
        if budget is not None:
            rows = self._counted(rows, budget)
        # a loop, not `yield from`, so that closing this generator does not close `rows`
        # by itself: see _ORPHANS
        try:
            if self.max_rows is None and self.max_bytes is None:
                for row in rows:
                    yield row
                return
            size = 0
            for count, row in enumerate(rows, 1):
                if self.max_rows is not None and count > self.max_rows:
                    raise self._over("max_result_rows", self.max_rows, f"row {count}")
                if self.max_bytes is not None:
                    size += _size(row)
                    if size > self.max_bytes:
                        observed = f"{size} bytes by row {count}"
                        raise self._over("max_result_bytes", self.max_bytes, observed)
                yield row
        except GeneratorExit:
            if _in_transaction():  # the query needs no more rows (LIMIT, say)
                close = getattr(rows, "close", None)
                if close is not None:
                    close()
            else:  # PostgreSQL is aborting the statement
                _ORPHANS.append(rows)
            raise
        except BaseException as exc:
            raise self.fail(exc) from None

    def sized(self, value: Any) -> Any:
        """A single result, within max_result_bytes (the body calls this only with one)."""
        assert self.max_bytes is not None
        size = _size(value)
        if size > self.max_bytes:
            raise self._over("max_result_bytes", self.max_bytes, f"{size} bytes")
        return value


_STOP_ERRORS = {"57014": "QueryCanceled", "57P01": "AdminShutdown", "53200": "OutOfMemory"}


def _size(value: Any) -> int:
    """About the bytes a returned value takes in PostgreSQL: text and bytea by their length,
    rows, arrays and json by their items, any other scalar by 8."""
    kind = type(value)
    if kind is str:
        return len(value) if value.isascii() else len(value.encode())
    if kind is bytes or kind is bytearray:
        return len(value)
    if kind is dict:
        return sum(_size(k) + _size(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return sum(map(_size, value))
    if value is None:
        return 0
    if isinstance(value, decimal.Decimal):
        return len(str(value))
    if isinstance(value, Mapping):  # PL/Python row objects, user mappings
        return sum(_size(v) for v in value.values())
    if hasattr(type(value), "__dataclass_fields__"):  # a row type
        import dataclasses  # already loaded by the module that made the dataclass

        return sum(_size(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 8


def routine(spec: Mapping[str, Any], source: str) -> Routine:
    """Load one deployed routine (once per backend and routine; the body keeps it in SD)."""
    return Routine(spec, source)


# --- the `pyfuncs` module that routine sources import -----------------------------------


def _decorator(*args: Any, **_options: Any) -> Any:
    """In the database the decorators only mark; the definition was read at deploy time."""
    if len(args) == 1 and callable(args[0]) and not _options:
        return args[0]
    return lambda fn: fn


def boot(gd: dict[str, Any]) -> None:
    """Called once per backend by pyfuncs.boot()."""
    global _GD, _WATCHDOG, _SHIM, _in_transaction, plpy
    import plpy as _plpy

    _GD, plpy = gd, _plpy
    in_transaction = ctypes.CDLL(None).IsTransactionState  # the postgres executable's
    in_transaction.restype = ctypes.c_bool
    _in_transaction = in_transaction
    _WATCHDOG = Watchdog()
    _WATCHDOG.start()
    shim = types.ModuleType("pyfuncs")
    shim.__dict__.update(
        db=db,
        Rows=Rows,
        RaiseError=RaiseError,
        stored_function=_decorator,
        procedure=_decorator,
        __all__=["db", "Rows", "RaiseError", "stored_function", "procedure"],
    )
    _SHIM = shim
