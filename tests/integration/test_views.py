"""What routine code can reach from the modules it may import, walked inside the database: no
module outside the allow-list, nothing of the modules that reach the OS or the interpreter,
no forbidden builtin, no list, dict or set every call shares (issue 12, "Imports")."""

from __future__ import annotations

from typing import Any

import psycopg

from pyfuncs import policy

WALK = """
DO LANGUAGE plpython3u $walk$
import builtins, sys, types
plpy.execute("SELECT pyfuncs.boot()")
sandbox = sys.modules["pyfuncs_pg.sandbox"]
views = sys.modules["pyfuncs_pg.views"]
vocabulary = sys.modules["pyfuncs_pg.vocabulary"]
allowed = frozenset(%(allowed)s)
forbidden_modules = frozenset(%(forbidden)s)
forbidden = {id(getattr(builtins, n)) for n in vocabulary.FORBIDDEN_BUILTINS if hasattr(builtins, n)}
forbidden |= {id(builtins.getattr), id(builtins.setattr), id(builtins.hasattr)}  # the real ones
findings, seen, reached = [], set(), 0
queue = [(f"{name}", sandbox._view(name, allowed), 0) for name in sorted(allowed) if name != "pyfuncs"]
while queue:
    path, obj, depth = queue.pop()
    if id(obj) in seen:
        continue
    seen.add(id(obj))
    reached += 1
    if isinstance(obj, types.ModuleType) and not isinstance(obj, views.ModuleView):
        findings.append(f"{path}: the module {obj.__name__}")
    origin = getattr(obj, "__module__", None) if isinstance(obj, type) or callable(obj) else None
    if isinstance(origin, str) and origin.partition(".")[0] in forbidden_modules:
        findings.append(f"{path}: from {origin}")
    if id(obj) in forbidden:
        findings.append(f"{path}: a forbidden builtin")
    if type(obj) in (list, dict, set, bytearray) and depth > 0:
        findings.append(f"{path}: a {type(obj).__name__} every call shares")
    if depth >= %(depth)s:
        continue
    for name in dir(obj):
        if name.startswith("_") or name in vocabulary.FRAME_ATTRIBUTES:
            continue
        try:
            value = getattr(obj, name)
        except Exception:
            continue
        queue.append((f"{path}.{name}", value, depth + 1))
if findings:
    raise Exception("\\n".join(sorted(findings)[:60]))
plpy.notice(f"reached {reached} objects")
$walk$
"""

FORBIDDEN = [
    "os", "posix", "nt", "sys", "subprocess", "socket", "ctypes", "_ctypes", "importlib", "gc",
    "inspect", "pickle", "_pickle", "marshal", "types", "threading", "_thread", "signal", "io",
    "_io", "pathlib", "shutil", "tempfile", "code", "codeop", "runpy", "pkgutil",
    "multiprocessing", "asyncio", "re", "_sre", "sre_compile", "select", "fcntl", "mmap",
    "resource", "locale", "_locale", "platform", "plpy", "pyfuncs_pg",
]  # fmt: skip


def test_nothing_reachable_from_an_allowed_module_leads_out(
    conn: psycopg.Connection[Any],
) -> None:
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    walk = WALK % {"allowed": sorted(policy.DEFAULT_ALLOWED), "forbidden": FORBIDDEN, "depth": 5}
    conn.execute(walk)
    assert notices and int(notices[-1].split()[1]) > 1000  # it did walk
