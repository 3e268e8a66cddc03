"""Routines loaded in this backend: what a generated body (pyfuncs/ddl.py) calls."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from . import errors, sandbox, values, vocabulary
from . import watchdog as stopping
from .values import converter
from .watchdog import Budget, RoutineInterrupted


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
            namespace = sandbox.load_module(
                source, self.filename, spec["module"], frozenset(spec["allowed_modules"])
            )
            self.fn = namespace[spec["function"]]
        except Exception as exc:
            raise self.fail(exc) from None
        self.convert = {kind: self._reading(converter(kind)) for kind in spec["converters"]}
        if stopping.WATCHDOG is not None:
            stopping.WATCHDOG.routines[self.fn.__code__] = self

    def _reading(self, convert: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
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
        if (
            type(exc) in errors.ERROR_TYPES.values()
        ):  # already translated (a NULL or unreadable argument)
            return exc  # type: ignore[return-value]
        if isinstance(exc, RoutineInterrupted) and stopping.WATCHDOG is not None:
            sqlstate, message = stopping.WATCHDOG.describe(self.qualname)
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

    def _counted(self, rows: Iterable[Any], budget: Budget) -> Iterator[Any]:
        """A generator's rows, its database operations counted while it makes each one."""
        watchdog = stopping.WATCHDOG
        assert watchdog is not None
        iterator = iter(rows)
        while True:
            watchdog.budgets.append(budget)
            try:
                row = next(iterator)
            except StopIteration:
                return
            finally:
                watchdog.budgets.pop()
            yield row

    def rows(self, result: Any, budget: Budget | None = None) -> Iterator[Any]:
        """A set-returning routine's rows, within its result limits; errors while iterating
        are translated too."""
        stopping.dispose_orphans()
        rows: Iterator[Any] = iter(() if result is None else result)
        if budget is not None:
            rows = self._counted(rows, budget)
        # a loop, not `yield from`, so that closing this generator does not close `rows`
        # by itself: see watchdog.ORPHANS
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
                    size += values.size(row)
                    if size > self.max_bytes:
                        observed = f"{size} bytes by row {count}"
                        raise self._over("max_result_bytes", self.max_bytes, observed)
                yield row
        except GeneratorExit:
            if stopping.in_transaction():  # the query needs no more rows (LIMIT, say)
                close = getattr(rows, "close", None)
                if close is not None:
                    close()
            else:  # PostgreSQL is aborting the statement
                stopping.ORPHANS.append(rows)
            raise
        except BaseException as exc:
            raise self.fail(exc) from None

    def sized(self, value: Any) -> Any:
        """A single result, within max_result_bytes (the body calls this only with one)."""
        assert self.max_bytes is not None
        size = values.size(value)
        if size > self.max_bytes:
            raise self._over("max_result_bytes", self.max_bytes, f"{size} bytes")
        return value


_STOP_ERRORS = {vocabulary.QUERY_CANCELED: "QueryCanceled",
                vocabulary.PERMISSION_DENIED: "PermissionDenied",
                vocabulary.ADMIN_SHUTDOWN: "AdminShutdown",
                vocabulary.OUT_OF_MEMORY: "OutOfMemory"}  # fmt: skip


def routine(spec: Mapping[str, Any], source: str) -> Routine:
    """Load one deployed routine (once per backend and routine; the body keeps it in SD)."""
    return Routine(spec, source)
