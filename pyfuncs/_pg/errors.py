"""Errors as PostgreSQL reports them: RaiseError for routines, and the translation of any
exception that leaves a routine into an error with an SQLSTATE and the routine's own
file:line."""

from __future__ import annotations

import sys

from . import classes, vocabulary
from .bounded import OperationTooLarge
from .watchdog import RoutineInterrupted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# PL/Python's module, bound by boot() (outside PostgreSQL RaiseError is all there is here)
plpy: Any = None


class RaiseError(Exception):
    """Raise from a routine to fail with your own SQLSTATE, detail and hint."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str = vocabulary.RAISED,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint


ERROR_TYPES: dict[str, type] = {}

# Routine modules' source lines, for their tracebacks (the files are not on the server): in
# linecache's cache, or here until something imports linecache (tokenize and re with it,
# which would cost the first call in every backend 3 ms): a traceback made here does.
_LINES: dict[str, tuple[int, None, list[str], str]] = {}


def remember_lines(filename: str, source: str) -> None:
    """Keep a routine module's source for the tracebacks that point into it."""
    _LINES[filename] = (len(source), None, source.splitlines(True), filename)
    if "linecache" in sys.modules:
        _to_linecache()


def _to_linecache() -> None:
    import linecache

    linecache.cache.update(_LINES)
    _LINES.clear()


# The attributes PL/Python reads off a plpy.Error as it reports it: each one missing leaves
# an AttributeError set while it goes on to format the message, where a check for signals
# (the watchdog's tick) raised it, and the error was reported as "unknown" (now and then).
_READ_BY_PLPYTHON = ("detail", "hint", "schema_name", "table_name", "column_name",
                     "datatype_name", "constraint_name")  # fmt: skip


def make(
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
    cls = ERROR_TYPES.get(type_name)
    if cls is None:
        namespace = {"__module__": "builtins", **dict.fromkeys(_READ_BY_PLPYTHON)}
        cls = ERROR_TYPES[type_name] = type(type_name, (plpy.Error,), namespace)
        classes.share(cls)
    err: Exception = cls(message)
    err.sqlstate = sqlstate  # type: ignore[attr-defined]
    if detail:
        err.detail = detail  # type: ignore[attr-defined]
    if hint:
        err.hint = hint  # type: ignore[attr-defined]
    return err


def text(value: object) -> str:
    """`value` as a string of the exact type str (a subclass's text, without its methods)."""
    if type(value) is not str:
        value = str(value)
    return value if type(value) is str else str.__str__(value)


def translate(routine: str, filename: str, exc: BaseException) -> Exception:
    """The PostgreSQL error for an exception from a routine, pointing at its own source line.

    Called inside the routine's call (routines.py): formatting the exception may run the
    routine's code (its __str__, properties of its own RaiseError subclass), which the
    watchdog stops like any other. What it makes holds plain strings only, which PL/Python
    reports without running any Python; an exception that cannot be formatted is reported
    by its class name."""
    try:
        return _translate(routine, filename, exc)
    except RoutineInterrupted:
        raise
    except Exception:
        return make(class_name(exc), f"{routine} raised an exception that could not be "
                    "formatted", vocabulary.ROUTINE_FAILED)  # fmt: skip


_TYPE_NAME = type.__dict__["__name__"]


def class_name(value: object) -> str:
    """The name of `value`'s class, read without its metaclass's code."""
    return text(_TYPE_NAME.__get__(type(value)))


def _deployed(name: str, filename: str) -> bool:
    """Whether code of file `name` is of a routine module deployed as `filename`."""
    if name == filename:
        return True
    serial = name[len(filename) + 1 :] if name.startswith(filename + "~") else ""
    return serial.isdigit() and serial.isascii()


def _translate(routine: str, filename: str, exc: BaseException) -> Exception:
    import traceback  # here: the error path pays for the import, not every backend's boot

    _to_linecache()

    # (the module's frames: a copy of it loaded after another got `filename~2`, and so on,
    # which linecache has its lines by, sandbox.load_module; shown as the file deployed)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _deployed(f.filename, filename)]
    for frame in frames:
        frame.filename = filename
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else routine
    trace = "".join(traceback.format_list(frames)).rstrip()
    detail: str | None = None
    hint: str | None = None
    if isinstance(exc, plpy.SPIError):
        sqlstate = getattr(exc, "sqlstate", None) or vocabulary.INTERNAL_ERROR
        message = str(exc.args[0] if exc.args else exc)
        detail, hint = getattr(exc, "detail", None), getattr(exc, "hint", None)
    elif isinstance(exc, RaiseError):
        sqlstate, message, detail, hint = exc.sqlstate, exc.message, exc.detail, exc.hint
    elif isinstance(exc, MemoryError):
        sqlstate, message = vocabulary.OUT_OF_MEMORY, f"{routine} ran out of memory"
    elif isinstance(exc, OperationTooLarge):
        sqlstate, message = vocabulary.LIMIT_EXCEEDED, f"{routine}: {exc}"
    else:
        sqlstate, message = vocabulary.ROUTINE_FAILED, str(exc)
    sqlstate = text(sqlstate)
    if len(sqlstate) != 5 or not sqlstate.isascii() or not sqlstate.isalnum():
        sqlstate = vocabulary.ROUTINE_FAILED
    traced = f"Python traceback (routine {routine}):\n{trace}" if trace else None
    detail = "\n".join(text(p) for p in (detail, traced) if p) or None
    hint = text(hint) if hint else None
    return make(class_name(exc), f"{text(message)} ({where})", sqlstate, detail, hint)
