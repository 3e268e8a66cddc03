"""pyfuncs: typed Python functions as versioned PL/Python routines in PostgreSQL."""

from .definition import procedure, stored_function
from .errors import (
    ArgumentError,
    AuthError,
    DatabaseError,
    DefinitionError,
    DeployError,
    PermissionDenied,
    PyfuncsError,
    RaisedError,
    RoutineFailed,
)
from .local import RaiseError, Rows, db

__all__ = [
    "ArgumentError",
    "AuthError",
    "DatabaseError",
    "DefinitionError",
    "DeployError",
    "PermissionDenied",
    "PyfuncsError",
    "RaiseError",
    "RaisedError",
    "RoutineFailed",
    "Rows",
    "db",
    "procedure",
    "stored_function",
]
