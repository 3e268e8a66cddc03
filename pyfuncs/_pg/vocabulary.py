"""The words pyfuncs shares with its in-database runtime, defined once.

SQLSTATE codes, the builtins routine code does not get, the attributes that lead from an
object to frames and code, and pyfuncs' API for routines. The policy check, the client's
error classes and the runtime all import them from here (standard library only: this module
is loaded inside PostgreSQL too).
"""

from __future__ import annotations

# SQLSTATEs of errors raised by routines and the runtime
ROUTINE_FAILED = "PF000"  # an unhandled Python exception in a routine
IMMUTABLE_VERSION = "PF001"  # something tried to change a deployed version
RUNTIME_MISSING = "PF002"  # the runtime is not installed, or too old for a routine
CAPTURE_SKIPPED = "01PF0"  # a warning: the WAL consumer skipped transactions (consumers resync)
RAISED = "P0001"  # RaiseError, as plpgsql's RAISE
NULL_NOT_ALLOWED = "22004"
INVALID_ARGUMENT = "22023"
INVALID_TRANSACTION_STATE = "25000"  # PostgreSQL's, for a parallel operation
IDENTITY_REFUSED = "28000"
PERMISSION_DENIED = "42501"
UNDEFINED_OBJECT = "42704"  # PostgreSQL's: a type (of a plan kept, say) that does not exist
OUT_OF_MEMORY = "53200"
LIMIT_EXCEEDED = "54000"
QUERY_CANCELED = "57014"
ADMIN_SHUTDOWN = "57P01"
INTERNAL_ERROR = "XX000"

# builtins a routine module does not get, and why (the runtime leaves them out; the policy
# refuses their names)
FORBIDDEN_BUILTINS = {
    "exec": "runs code built at run time", "eval": "runs code built at run time",
    "compile": "builds code", "open": "opens files", "globals": "exposes module globals",
    "vars": "exposes namespaces", "locals": "exposes namespaces", "__import__": "imports anything",
    "breakpoint": "starts a debugger", "input": "reads the server's stdin",
    "help": "starts the help system", "memoryview": "exposes raw memory",
    "delattr": "changes objects by name",
    "bytearray": "has C methods that trust its buffer while they call back into the routine's "
                 "code (memory-safety bugs of CPython 3.11.2); use bytes",
}  # fmt: skip


def reserved_module_name(name: str) -> bool:
    """Whether a routine module may not be called `name`: the runtime loads it under its
    name, where a module of the standard library or of pyfuncs (which the runtime itself
    imports) would be shadowed."""
    import sys

    top = name.partition(".")[0]
    return top in sys.stdlib_module_names or top in ("pyfuncs", "pyfuncs_pg", "plpy")


# attributes that lead from an object to frames, code or globals
FRAME_ATTRIBUTES = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame",
    "ag_code", "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "tb_frame", "tb_next",
    "co_code", "co_consts", "func_globals", "func_code",
})  # fmt: skip


def others_private(name: str) -> bool:
    """Whether `name` is spelled as another class's private state: its private attribute
    (`_UserList__cast`, what Python makes of `self.__cast` inside UserList: that class's
    code trusts what it finds there, and UserList's `==` calls it with the other operand;
    a routine's own code cannot write `self.__x`, the policy refuses names that begin with
    two underscores), or abc's state of an abstract class (`_abc_impl`, whose registry C
    trusts: a red team gave its class under Mapping another class's, and decided every
    role's isinstance)."""
    return (
        name[:1] == "_" and name[1:2] != "_" and "__" in name[2:] and not name.endswith("__")
    ) or name.startswith("_abc_")


# what a routine module may use of pyfuncs (the `pyfuncs` it imports has nothing else)
ROUTINE_API = ("stored_function", "procedure", "db", "RaiseError", "Rows")
# that module's __name__: no real module has a colon in its name, so `from pyfuncs import x`
# cannot fall back on a module sys.modules holds as "pyfuncs.x" (CPython's import_from does)
SHIM_NAME = "pyfuncs:routines"


def compiled_key(magic: bytes, runtime: dict[str, str], filename: str, source: str) -> str:
    """What a routine module's code compiled ahead of its first call was compiled from
    (pyfuncs.routine_code is keyed by its sha256): Python's bytecode (its magic number), the
    runtime whose guards it has (its modules' sha256, by name), the file name the code
    carries and the module's source. `pyfuncs deploy` writes the code, the runtime reads it."""
    modules = ",".join(f"{name}:{sha256}" for name, sha256 in sorted(runtime.items()))
    # (the file name's length first: no file name and source run into another pair's)
    return f"{magic.hex()}\n{modules}\n{len(filename)}:{filename}\n{source}"
