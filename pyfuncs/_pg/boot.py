"""Starting the runtime in a backend, once, when its first routine is called.

The SQL function `pyfuncs.boot()` reads the runtime's modules from `pyfuncs.runtime_module`
(one row per file of pyfuncs/_pg/, which `pyfuncs install` writes), runs this file and calls
`load`: the modules become the package `pyfuncs_pg`, served from those rows by an import
finder, so they import each other as they do outside PostgreSQL, where they are the package
`pyfuncs._pg` and can be tested as plain Python.

Generated routine bodies (pyfuncs/ddl.py) find the runtime in PL/Python's GD under the name
of the interface they were generated for. `pyfuncs.v1` is the current one; `pyfuncs.runtime`
is what bodies deployed before interfaces had versions look up. A runtime keeps serving
every interface it ever offered, so a routine version deployed long ago, made live again by a
rollback, still runs after the runtime was upgraded.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Mapping
from typing import Any

PACKAGE = "pyfuncs_pg"
INTERFACES = ("pyfuncs.runtime", "pyfuncs.v1")


class _Rows(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the modules of the package `pyfuncs_pg` from their sources."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.sources = sources

    def find_spec(
        self, name: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, module = name.rpartition(".")
        if name == PACKAGE:
            return importlib.util.spec_from_loader(name, self, is_package=True)
        if package == PACKAGE and module in self.sources:
            return importlib.util.spec_from_loader(name, self, origin=f"pyfuncs/_pg/{module}.py")
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == PACKAGE:
            return
        name = module.__name__.rpartition(".")[2]
        code = compile(self.sources[name], f"pyfuncs/_pg/{name}.py", "exec", dont_inherit=True)
        exec(code, module.__dict__)


def load(sources: Mapping[str, str], gd: dict[str, Any]) -> None:
    """Make the runtime's modules importable from their sources and start it."""
    if not any(isinstance(f, _Rows) for f in sys.meta_path):
        sys.meta_path.insert(0, _Rows(sources))
    importlib.import_module(f"{PACKAGE}.boot").start(gd)


def start(gd: dict[str, Any]) -> None:
    """Bind PL/Python and the postgres executable to the runtime, contain C stack overflows,
    start the watchdog, and offer every interface generated bodies use."""
    import ctypes

    import plpy

    from . import db, deadline, errors, identity, overflow, routines, sandbox
    from . import watchdog as stopping

    db.plpy = errors.plpy = plpy
    postgres = ctypes.CDLL(None)  # the postgres executable itself
    overflow.contain(plpy.fatal, postgres)
    identity.bind(postgres)
    deadline.bind(postgres)
    in_transaction = postgres.IsTransactionState
    in_transaction.restype = ctypes.c_bool
    stopping.in_transaction = in_transaction
    stopping.WATCHDOG = stopping.Watchdog()
    stopping.WATCHDOG.start()
    sandbox.SHIM = sandbox.shim(db.db)
    for name in INTERFACES:
        gd[name] = routines
