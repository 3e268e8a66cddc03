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
"""

from __future__ import annotations

import ctypes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SECURITY_LOCAL_USERID_CHANGE = 0x0001  # miscadmin.h, the same in every version
PGC_USERSET = 6  # guc.h GucContext
CLAIMS = b"request.jwt.claims"
# guc.h flag bits by major version: (GUC_CUSTOM_PLACEHOLDER, GUC_NOT_WHILE_SEC_REST)
_FLAGS = {15: (0x0080, 0x0400), 16: (0x0200, 0x1000), 17: (0x0200, 0x1000)}

# outside PostgreSQL there is no identity to keep: boot() binds the real ones
_get_context: Any = None
_set_context: Any = None
_search_path: Any = None
_claims: Any = None  # read and compared only where PostgreSQL could not be made to refuse
_user = ctypes.c_uint()
_context = ctypes.c_int()
_user_ref, _context_ref = ctypes.byref(_user), ctypes.byref(_context)  # made once: per query
_claims_value = ctypes.c_char_p()  # the storage of the claims parameter, once pyfuncs defines it


def bind(lib: ctypes.CDLL) -> None:
    """Keep the identity through the postgres executable (`lib`) from now on."""
    global _get_context, _set_context, _search_path, _claims
    _get_context, _set_context = lib.GetUserIdAndSecContext, lib.SetUserIdAndSecContext
    _get_context.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_int)]
    _get_context.restype = _set_context.restype = None
    _set_context.argtypes = [ctypes.c_uint, ctypes.c_int]
    _search_path = ctypes.c_char_p.in_dll(lib, "namespace_search_path")
    if not _protect_claims(lib):
        option = lib.GetConfigOption
        option.restype = ctypes.c_char_p
        option.argtypes = [ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool]
        _claims = lambda: option(CLAIMS, True, False)  # noqa: E731


def _protect_claims(lib: ctypes.CDLL) -> bool:
    """Make request.jwt.claims a parameter PostgreSQL refuses to change while a routine's
    query runs (as it refuses role). False where that cannot be done safely."""
    option = lib.GetConfigOption
    option.restype = ctypes.c_char_p
    option.argtypes = [ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool]
    version = int(option(b"server_version_num", False, False) or 0) // 10000
    if version not in _FLAGS or not hasattr(lib, "GetConfigOptionFlags"):
        return False
    placeholder, not_while_sec_rest = _FLAGS[version]
    flags = lib.GetConfigOptionFlags
    flags.restype = ctypes.c_int
    flags.argtypes = [ctypes.c_char_p, ctypes.c_bool]
    if not flags(b"role", False) & not_while_sec_rest:  # not the layout this expects
        return False
    current = flags(CLAIMS, True)  # 0 when it was never set in this session
    if current & not_while_sec_rest:
        return True  # done already (a runtime booted earlier in this backend)
    if current and not current & placeholder:
        return False  # something else defined it
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
    return True


def enter() -> Any:
    """Before a routine's query: PostgreSQL will refuse to change the role, the session
    authorization or the claims until `leave`. Returns what `leave` needs."""
    if _get_context is None:
        return None
    _get_context(_user_ref, _context_ref)
    user, context = _user.value, _context.value
    _set_context(user, context | SECURITY_LOCAL_USERID_CHANGE)
    return (user, context, _search_path.value, _claims and _claims())


def leave(entered: Any) -> str | None:
    """After the query: the context as it was; what changed, or None."""
    if entered is None:
        return None
    user, context, search_path, claims = entered
    _set_context(user, context)
    if _search_path.value != search_path:
        return "search_path"
    if _claims is not None and _claims() != claims:
        return "request.jwt.claims"
    return None


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
