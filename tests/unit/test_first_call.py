"""What the runtime imports when a backend starts it: only what every routine needs. The
modules whose types it tells values apart by are looked up once they exist (imported.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "pyfuncs" / "_pg"

# Loads the runtime's modules as pyfuncs.boot() does (boot.py's finder over their rows),
# imports what boot.start imports, then runs the script's second part.
LOAD = f"""
import os, sys
rows = {{}}
for file in os.listdir({str(RUNTIME)!r}):  # no pathlib: it imports re, enum, functools
    if file.endswith(".py") and file != "__init__.py":
        with open(os.path.join({str(RUNTIME)!r}, file)) as f:
            rows[file[:-3]] = {{"source": f.read()}}
loader = {{"__name__": "pyfuncs_pg_loader"}}
exec(compile(rows["boot"]["source"], "boot.py", "exec", dont_inherit=True), loader)
sys.meta_path.insert(0, loader["_Rows"](rows))
before = set(sys.modules)
import ctypes
from pyfuncs_pg import db, deadline, errors, identity, overflow, routines, sandbox, watchdog
from pyfuncs_pg import results, values, bounded, lazy
"""

# every backend paid for these before (~25 ms of a first call's ~35): now a routine that
# needs one imports it
HEAVY = ("typing", "re", "enum", "collections", "functools", "contextlib", "importlib.util",
         "json", "uuid", "platform", "datetime", "decimal", "zoneinfo", "dataclasses", "inspect",
         "random", "secrets", "hashlib", "signal", "linecache", "tokenize", "ast", "copy",
         # the routines' modules are compiled by pyfuncs deploy: not the compiler of them, nor
         # the classes of the ast module it needs (pyfuncs/ahead.py)
         "_ast", "pyfuncs_pg.guards")  # fmt: skip


def _run(script: str) -> str:
    done = subprocess.run([sys.executable, "-I", "-S", "-c", LOAD + script],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_runtime_starts_without_the_heavy_modules() -> None:
    loaded = _run("print(' '.join(sorted(set(sys.modules) - before)))").split()
    assert not set(HEAVY) & set(loaded)


def test_types_of_modules_imported_later_are_known() -> None:
    script = """
import collections, dataclasses, datetime, decimal, uuid, zoneinfo
@dataclasses.dataclass
class Row:
    when: datetime.datetime
zone = zoneinfo.ZoneInfo("UTC") if zoneinfo.available_timezones() else datetime.timezone.utc
moment = datetime.datetime(2026, 1, 2, tzinfo=zone)
assert results.plain(decimal.Decimal("1.5")) == decimal.Decimal("1.5")
assert {decimal.Decimal, datetime.date, datetime.timedelta} <= results.INERT
assert results.plain(Row(moment)) == {"when": moment}
assert results.plain(collections.deque([uuid.UUID(int=1)])) == [str(uuid.UUID(int=1))]
assert results.size(decimal.Decimal("12.5")) == 4
assert values.simple_types()[decimal.Decimal] == "pg_catalog.numeric"
assert values.adapt_param(datetime.date(2026, 1, 2)) == ("pg_catalog.date", "2026-01-02")
assert sandbox._mutable_instances() == (decimal.Context, BaseException)
import random
assert bounded.READS["randbytes"][0]() == (random.Random,)
assert lazy.READS["elements"][0]() == (collections.Counter,)
print("ok")
"""
    assert _run(script).strip() == "ok"


def test_before_a_module_is_imported_no_value_of_it_is_inert() -> None:
    script = """
assert results.INERT == {type(None), bool, int, float, str, bytes}
assert bounded.READS["randbytes"][0]() == ()
try:
    results.plain({1, 2})
except TypeError as exc:
    assert "cannot return a set" in str(exc)
print("ok")
"""
    assert _run(script).strip() == "ok"
