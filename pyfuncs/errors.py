"""One exception hierarchy for everything pyfuncs raises.

Errors that come back from the database carry their SQLSTATE; `from_sqlstate` maps a code to
the most specific class registered for it (registration through `__init_subclass__(code=...)`,
the way psycopg.errors does it), so callers catch meaning, not driver classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ._pg import vocabulary


class PyfuncsError(Exception):
    """Base class of every pyfuncs error."""


class ConfigError(PyfuncsError):
    """The configuration (DSN, key, option) is missing or malformed."""


class ClusterError(PyfuncsError):
    """The embedded PostgreSQL cluster could not be set up, started or stopped."""


class DefinitionError(PyfuncsError):
    """A routine definition is invalid. Raised before anything is installed."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class DeployError(PyfuncsError):
    """A deploy or rollback failed; the transaction was rolled back and nothing changed."""


class MigrationError(PyfuncsError):
    """Installing, upgrading or downgrading the core schema failed; nothing was changed."""


class ResyncRequired(PyfuncsError):
    """A change-feed consumer is behind the retention window: changes it has not seen were
    pruned. Read the current state of the tables again, then follow the feed from now."""

    def __init__(self, message: str, *, pruned_through: int) -> None:
        self.pruned_through = pruned_through
        super().__init__(message)


class AuthError(PyfuncsError):
    """A JWT is invalid, expired, not yet valid, for another audience or wrongly signed."""


class ArgumentError(PyfuncsError):
    """The arguments of a call do not match the routine's signature (checked client-side)."""


_BY_CODE: dict[str, type[DatabaseError]] = {}


class DatabaseError(PyfuncsError):
    """An error reported by PostgreSQL, from a routine or around it.

    `sqlstate`, `detail` and `hint` come straight from the server; for an exception raised in a
    routine body, the message ends with the routine's source file:line.
    """

    code: ClassVar[str | None] = None

    def __init_subclass__(cls, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
            _BY_CODE[code] = cls

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate or self.code
        self.detail = detail
        self.hint = hint


class RoutineFailed(DatabaseError, code=vocabulary.ROUTINE_FAILED):
    """A routine raised an exception that it did not map to an SQLSTATE itself."""


class ImmutableVersion(DatabaseError, code=vocabulary.IMMUTABLE_VERSION):
    """Something tried to change a deployed version in the catalog."""


class RuntimeMissing(DatabaseError, code=vocabulary.RUNTIME_MISSING):
    """The in-database runtime is not installed; run `pyfuncs install`."""


class RaisedError(DatabaseError, code=vocabulary.RAISED):
    """A routine raised `pyfuncs.RaiseError` (or plpgsql RAISE EXCEPTION)."""


class InvalidArgument(DatabaseError, code=vocabulary.INVALID_ARGUMENT):
    """An argument value was rejected by the routine before its body ran."""


class NullNotAllowed(DatabaseError, code=vocabulary.NULL_NOT_ALLOWED):
    """NULL was passed for a parameter that is not Optional."""


class PermissionDenied(DatabaseError, code=vocabulary.PERMISSION_DENIED):
    """The caller lacks a privilege (EXECUTE on the routine, or a table privilege or policy)."""


class IdentityRefused(DatabaseError, code=vocabulary.IDENTITY_REFUSED):
    """The identity a call was to run as may not be used: its role does not exist, is a
    superuser, or is the login role itself (pyfuncs.set_identity)."""


class UndefinedRoutine(DatabaseError, code="42883"):
    """No routine matches the name and argument types."""


class UniqueViolation(DatabaseError, code="23505"):
    """A write broke a unique constraint."""


class ForeignKeyViolation(DatabaseError, code="23503"):
    """A write broke a foreign key."""


class CheckViolation(DatabaseError, code="23514"):
    """A write broke a check constraint."""


class SerializationFailure(DatabaseError, code="40001"):
    """A serializable transaction could not be serialized; safe to retry."""


class DeadlockDetected(DatabaseError, code="40P01"):
    """The transaction was chosen as a deadlock victim; safe to retry."""


class QueryCanceled(DatabaseError, code=vocabulary.QUERY_CANCELED):
    """The statement was cancelled (statement_timeout, pg_cancel_backend or a routine limit)."""


class AdminShutdown(DatabaseError, code=vocabulary.ADMIN_SHUTDOWN):
    """The session was terminated (pg_terminate_backend) while a routine ran."""


class LimitExceeded(DatabaseError, code=vocabulary.LIMIT_EXCEEDED):
    """A routine went past max_db_ops, max_result_rows or max_result_bytes, or one of its
    operations would have made a result too large to make at once."""


class OutOfMemory(DatabaseError, code=vocabulary.OUT_OF_MEMORY):
    """A routine went past max_memory_mb, or the server ran out of memory."""


RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def from_sqlstate(
    sqlstate: str | None,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
) -> DatabaseError:
    """Build the most specific `DatabaseError` for an SQLSTATE."""
    cls = _BY_CODE.get(sqlstate or "", DatabaseError)
    return cls(message, sqlstate=sqlstate, detail=detail, hint=hint)


def printable(text: str) -> str:
    """Text someone else chose (a module, a child process, a path), safe to print: every
    character that is not printable (newlines, terminal escapes, bidi controls, line
    separators) is written as its escape, so it can neither start a line nor hide one."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def capped(lines: Sequence[str], most: int, what: str, width: int = 500) -> list[str]:
    """At most `most` of `lines`, each cut at `width` characters, then one that says how many
    more `what` there were: a report stays readable (and CI's log small) however many
    problems a module has."""
    shown = [line if len(line) <= width else line[: width - 3] + "..." for line in lines[:most]]
    if len(lines) > most:
        shown.append(f"... and {len(lines) - most} more {what}")
    return shown


def one_line(text: str) -> str:
    """A message that may span lines (libpq's do) as one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def from_psycopg(exc: Exception) -> PyfuncsError:
    """Translate a psycopg error; the one place driver errors become pyfuncs errors."""
    import psycopg

    if not isinstance(exc, psycopg.Error):
        return PyfuncsError(one_line(str(exc)))
    diag = exc.diag
    message = diag.message_primary or one_line(str(exc))
    return from_sqlstate(exc.sqlstate, message, detail=diag.message_detail, hint=diag.message_hint)


class SubscriptionError(PyfuncsError):
    """A realtime client asked for something the gateway refuses: `code` is the protocol's
    error code (README "Realtime: the gateway"), the message says what to do."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)
