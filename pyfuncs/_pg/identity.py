"""Who a routine's queries run as: the current role, the session authorization, the JWT claims
(`request.jwt.claims`) and search_path, kept as they were when the call began.

A routine runs with its caller's identity. SQL can change each of these (`SET ROLE`,
`RESET ROLE`, `SET SESSION AUTHORIZATION`, `set_config(...)`, in a statement, a function or
a DO block), so `db` runs every query of a routine the way PostgreSQL runs the body of a
SECURITY DEFINER function, with the flag that makes it refuse to change the role or the
session authorization (its GUC_NOT_WHILE_SEC_REST parameters) — and, at boot, pyfuncs makes
`request.jwt.claims` such a parameter too. search_path cannot be one (functions with
`SET search_path` would stop working), so it is compared before and after each query. Any of
this fails the call with 42501 before another query runs, a sticky stop like a limit's, and
what the statement did is rolled back with it.

Nor does a call leave settings behind. A query can change any of the session's settings
for the rest of the session (`SET statement_timeout`, `set_config('app.tenant', ..., false)`,
`SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY`, `SET row_security`), where the calls
after it, another role's on a pooled connection, would run with them. So a call's first
query opens a level of PostgreSQL's settings (NewGUCNestLevel, as PostgreSQL does around a
maintenance command's index expressions), and the call, as it ends, undoes every setting
changed at that level or above it (AtEOXact_GUC, as for an abort): what a routine sets lasts
until its call ends (a set-returning routine's: until the row it was set for is made). A
savepoint the routine opens (`db.subtransaction()`) opens the call's level first, if its
queries have not: a level opened inside the savepoint would be handed to the caller's when
the savepoint is released, or left behind when it is rolled back (a red team).
"""

from __future__ import annotations

import ctypes
import os

from . import watchdog as stopping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# miscadmin.h, the same in every version: what a routine's queries run with, as PostgreSQL
# runs a SECURITY DEFINER function's body (no change of role or session authorization) and
# a maintenance command's index expressions (no temporary tables or types, no deferred
# triggers, no WITH HOLD cursors: nothing that would run or be found after the query, as
# the caller or as whoever the session serves next)
SECURITY_LOCAL_USERID_CHANGE = 0x0001
SECURITY_RESTRICTED_OPERATION = 0x0002
RESTRICTED = SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION
PGC_USERSET = 6  # guc.h GucContext
CLAIMS = b"request.jwt.claims"
# guc.h flag bits by major version: (GUC_CUSTOM_PLACEHOLDER, GUC_NOT_WHILE_SEC_REST)
_FLAGS = {15: (0x0080, 0x0400), 16: (0x0200, 0x1000), 17: (0x0200, 0x1000)}

# [0] the level of PostgreSQL's settings the call under way opened at its first query, 0
# for none, and [1] the identity then (what `enter` returns): the entry functions
# (routines.py) keep the outer call's and give them back as they leave, undoing theirs
SETTINGS: list[Any] = [0, None]
_open_level: Any = None  # NewGUCNestLevel, once bound


def open_settings() -> str | None:
    """Open the call's level of settings, if its queries have not (see above); what of the
    identity changed since the call's first query, or None (as `leave`)."""
    if _open_level is None:
        return None
    return leave(enter())  # (enter opens it, and notes the call's identity)


def undo_settings(level: int) -> None:
    """AtEOXact_GUC(false, level), once bound (outside PostgreSQL, nothing to undo)."""


_search_path: Any = None
_claims: Any = None  # the claims' value now, once bound
_claims_value = ctypes.c_char_p()  # the storage of the claims parameter, once pyfuncs defines it
_claims_at: list[int | None] = [None]  # its address, once it is that storage


def enter() -> Any:
    """Before a routine's query: PostgreSQL will refuse to change the role, the session
    authorization or the claims until `leave`. Returns what `leave` needs (bind() puts the
    real one in place; outside PostgreSQL there is no identity to keep)."""
    return None


def leave(entered: Any) -> str | None:
    """After the query: the flags as they were; what the query changed, or None."""
    return None


def who() -> Any:
    """The identity in force now, to compare with another reading (bind() puts the real
    one in place; outside PostgreSQL there is none)."""
    return None


def use(guard_enter: Any, guard_leave: Any, guard_undo: Any = None) -> None:
    """The backstop library's enter, leave and undo (backstop.query_guards, given
    `SETTINGS` and `_claims_at[0]`; undo where the library has it) in place of bind's."""
    global enter, leave, undo_settings
    enter, leave = guard_enter, guard_leave
    if guard_undo is not None:
        undo_settings = guard_undo


def bind(lib: ctypes.CDLL) -> None:
    """Keep the identity through the postgres executable (`lib`) from now on."""
    global _search_path, _claims, enter, leave, who, _open_level, undo_settings
    # (PyDLL functions whose arguments are ints: see _through; neither raises an error)
    hot = ctypes.PyDLL(lib._name)
    _open_level, undo = hot.NewGUCNestLevel, hot.AtEOXact_GUC
    _open_level.restype, undo.restype = ctypes.c_int, None
    undo_settings = lambda level: undo(False, level)  # noqa: E731
    variables = _variables(lib)
    enter, leave, user = _through(lib) if variables is None else _directly(*variables)
    stopping.bookkeeping(enter, leave, _changed, open_settings)
    _search_path = ctypes.c_char_p.in_dll(lib, "namespace_search_path")
    if _protect_claims(lib) == "defined":  # its storage is ours: read without a call
        _claims = lambda: _claims_value.value  # noqa: E731
        _claims_at[0] = ctypes.addressof(_claims_value)
    else:
        option = lib.GetConfigOption
        option.restype = ctypes.c_char_p
        option.argtypes = [ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool]
        _claims = lambda: option(CLAIMS, True, False)  # noqa: E731
    who = lambda: (user(), _search_path.value, _claims())  # noqa: E731


# The flag goes on before every query of a routine's and comes off after it, so this is the
# cost of each query's guard. miscinit.c keeps the current user and the flags in two static
# ints, which GetUserIdAndSecContext and SetUserIdAndSecContext only load and store. On
# x86-64 those two functions are a fixed pair of RIP-relative moves each, which name the two
# ints' addresses: then entering and leaving are five loads and stores (~30 ns each) instead
# of three foreign calls (~300 ns each, more with cold caches). The addresses are used only
# if both functions name the same two, the kernel can read them, and what is stored through
# the functions is seen through the addresses and back (so they are the variables, which are
# writable); anywhere else the two functions are called.
_ENDBR64 = b"\xf3\x0f\x1e\xfa"  # where built with control-flow protection
# each function's bytes around its two 4-byte operands
_GET = (b"\x8b\x05", b"\x89\x07\x8b\x05", b"\x89\x06\xc3")  # mov eax,[u]; mov [rdi],eax ...
_SET = (b"\x89\x3d", b"\x89\x35", b"\xc3")  # mov [u],edi; mov [c],esi; ret


def _variables(lib: ctypes.CDLL) -> tuple[Any, Any] | None:
    """CurrentUserId and SecurityRestrictionContext themselves, or None (see above)."""
    get, put = lib.GetUserIdAndSecContext, lib.SetUserIdAndSecContext
    get.restype = put.restype = None
    get.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_int)]
    put.argtypes = [ctypes.c_uint, ctypes.c_int]
    named = {_operands(get, _GET), _operands(put, _SET)}
    if len(named) != 1 or None in named:
        return None
    ((user_at, context_at),) = named  # type: ignore[misc]
    if not _readable(user_at, context_at):
        return None
    user, context = ctypes.c_uint.from_address(user_at), ctypes.c_int.from_address(context_at)
    seen_user, seen_context = ctypes.c_uint(), ctypes.c_int()
    get(ctypes.byref(seen_user), ctypes.byref(seen_context))
    was = seen_user.value, seen_context.value
    if (user.value, context.value) != was:
        return None
    put(was[0], was[1] | SECURITY_LOCAL_USERID_CHANGE)
    flagged = context.value
    context.value = was[1]
    get(ctypes.byref(seen_user), ctypes.byref(seen_context))
    put(*was)
    if flagged != was[1] | SECURITY_LOCAL_USERID_CHANGE or seen_context.value != was[1]:
        return None
    return user, context


def _operands(function: Any, shape: tuple[bytes, ...]) -> tuple[int, int] | None:
    """The addresses the two RIP-relative operands of `function` name, if its code is
    `shape` (the bytes around them), else None."""
    start = ctypes.cast(function, ctypes.c_void_p).value or 0
    code = ctypes.string_at(start, 21)  # the longest shape, with endbr64
    at = len(_ENDBR64) if code.startswith(_ENDBR64) else 0
    found: list[int] = []
    for part in shape:
        if code[at : at + len(part)] != part:
            return None
        at += len(part)
        if len(found) < 2:  # an operand counts from the end of its instruction: its own end
            found.append(start + at + 4 + int.from_bytes(code[at : at + 4], "little", signed=True))
            at += 4
    return found[0], found[1]


def _readable(*addresses: int) -> bool:
    """Whether each int at `addresses` can be read, asked of the kernel (/proc/self/mem
    answers an error where reading it directly would fault)."""
    try:
        memory = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return False
    try:
        return all(len(os.pread(memory, 4, address)) == 4 for address in addresses)
    except OSError:
        return False
    finally:
        os.close(memory)


def _directly(user: Any, context: Any) -> tuple[Any, Any, Any]:
    def enter() -> Any:
        # (what leave needs is made first: an allocation that fails after the flag is set
        # would leave it set)
        were = user.value, context.value
        entered = (*were, _search_path.value, _claims())
        if not SETTINGS[0]:  # (open_settings, inline: this runs before every query)
            SETTINGS[0], SETTINGS[1] = _open_level(), entered
        context.value = were[1] | RESTRICTED
        return entered

    def leave(entered: Any) -> str | None:
        user.value, context.value = entered[0], entered[1]
        return _changed(entered)

    return enter, leave, lambda: user.value


def _through(lib: ctypes.CDLL) -> tuple[Any, Any, Any]:
    # as PyDLL functions (the GIL kept for two stores) without argtypes (ints and byref pass
    # as they are), a call costs a third of a CDLL call with argtypes
    hot = ctypes.PyDLL(lib._name)
    get, put = hot.GetUserIdAndSecContext, hot.SetUserIdAndSecContext
    get.restype = put.restype = None
    user, context = ctypes.c_uint(), ctypes.c_int()
    refs = ctypes.byref(user), ctypes.byref(context)

    def enter() -> Any:
        get(*refs)
        were = user.value, context.value
        entered = (*were, _search_path.value, _claims())  # first: see _directly
        if not SETTINGS[0]:
            SETTINGS[0], SETTINGS[1] = _open_level(), entered
        put(were[0], were[1] | RESTRICTED)
        return entered

    def leave(entered: Any) -> str | None:
        put(entered[0], entered[1])
        return _changed(entered)

    def current_user() -> int:
        get(*refs)
        return user.value

    return enter, leave, current_user


def _changed(entered: Any) -> str | None:
    """What of the identity is not what it was at the call's first query: changed by this
    query where PostgreSQL could not be made to refuse (search_path; the claims by `RESET
    ALL`, which skips the flag), or by anything between two queries (a domain's check that
    ran as a query was prepared did, before prepares were made inside the flag: a red
    team's)."""
    call = SETTINGS[1]
    if entered[0] != call[0]:
        return "role"
    if _search_path.value != call[2]:
        return "search_path"
    return "request.jwt.claims" if _claims() != call[3] else None


def _protect_claims(lib: ctypes.CDLL) -> str | None:
    """Make request.jwt.claims a parameter PostgreSQL refuses to change while a routine's
    query runs (as it refuses role): "defined" (its storage _claims_value), "done" (by a
    runtime booted earlier in this backend), or None where that cannot be done safely."""
    option = lib.GetConfigOption
    option.restype = ctypes.c_char_p
    option.argtypes = [ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool]
    version = int(option(b"server_version_num", False, False) or 0) // 10000
    if version not in _FLAGS or not hasattr(lib, "GetConfigOptionFlags"):
        return None
    placeholder, not_while_sec_rest = _FLAGS[version]
    flags = lib.GetConfigOptionFlags
    flags.restype = ctypes.c_int
    flags.argtypes = [ctypes.c_char_p, ctypes.c_bool]
    if not flags(b"role", False) & not_while_sec_rest:  # not the layout this expects
        return None
    current = flags(CLAIMS, True)  # 0 when it was never set in this session
    if current & not_while_sec_rest:
        return "done"  # (by a runtime booted earlier in this backend)
    if current and not current & placeholder:
        return None  # something else defined it
    define = lib.DefineCustomStringVariable
    define.restype = None
    define.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p),
        ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p,
    ]  # fmt: skip
    # a placeholder keeps its value: PostgreSQL applies it to the variable it becomes
    define(CLAIMS, b"JWT claims of the request (PostgREST's setting; pyfuncs keeps it fixed "
           b"while a routine's query runs)", None, ctypes.byref(_claims_value), b"",
           PGC_USERSET, not_while_sec_rest, None, None, None)  # fmt: skip
    return "defined"


def claims() -> str:
    """The caller's JWT claims as text, read from PostgreSQL's setting without SQL (a query
    for them would resolve `current_setting` through the session's search_path); "" for
    none, and outside PostgreSQL."""
    raw = _claims() if _claims is not None else None
    return raw.decode() if raw else ""


def refused(exc: BaseException) -> str | None:
    """What a failed query tried to change, if PostgreSQL refused it for `enter`'s flag."""
    message = str(exc.args[0] if exc.args else exc)
    if getattr(exc, "sqlstate", None) == "42501" and "security-definer function" in message:
        name = message.split('"')[1] if message.count('"') >= 2 else "identity"
        return "session authorization" if name == "session_authorization" else name
    return None


def message(what: str) -> str:
    return (
        f"tried to change its {what} in a query: a routine runs with its caller's role, "
        "session, claims and search_path, and may not change them"
    )
