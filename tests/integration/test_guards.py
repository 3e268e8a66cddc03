"""Runtime guards behind the policy check: what a loaded routine module's builtins allow."""

from __future__ import annotations

from typing import Any

import psycopg

from .modules import errors_mod

INSPECT = """
DO LANGUAGE plpython3u $$
import sys
namespace = next(iter(sys.modules["pyfuncs_pg.sandbox"].MODULES.values()))
b = namespace["__builtins__"]
missing = [n for n in ("exec", "eval", "compile", "open", "globals", "vars", "locals") if n in b]
assert not missing, missing
try:
    b["__import__"]("os")
except ImportError as exc:
    assert "import of 'os' is not allowed" in str(exc)
else:
    raise AssertionError("os was importable")
assert b["__import__"]("math").floor(2.5) == 2
for attempt in (lambda: b["getattr"]((), "__class__"), lambda: b["hasattr"](1, "_x"),
                lambda: b["setattr"](namespace, "_y", 1)):
    try:
        attempt()
    except AttributeError as exc:
        assert str(exc).startswith("pyfuncs: "), exc
    else:
        raise AssertionError("a private attribute was reachable")
assert b["getattr"](1.5, "real") == 1.5
$$
"""


def test_loaded_modules_run_with_restricted_builtins(deployed: Any, dsn: str) -> None:
    deployed(errors_mod)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT err.nested(2)").fetchone() == (2,)  # loads the module
        conn.execute(INSPECT)  # same session, same GD: raises if a guard is missing
