"""Starting the runtime in a backend, once, when its first routine is called.

The SQL function `pyfuncs.boot()` reads the runtime's modules from `pyfuncs.runtime_module`
(one row per file of pyfuncs/_pg/, which `pyfuncs install` writes with its source and its
compiled code), runs this file and calls `load`: the modules become the package
`pyfuncs_pg`, served from those rows by an import finder, so they import each other as they
do outside PostgreSQL, where they are the package `pyfuncs._pg` and can be tested as plain
Python.

Generated routine bodies (pyfuncs/ddl.py) find the runtime in PL/Python's GD under the name
of the interface they were generated for. `pyfuncs.v1` is the current one; `pyfuncs.runtime`
is what bodies deployed before interfaces had versions look up. A runtime keeps serving
every interface it ever offered, so a routine version deployed long ago, made live again by a
rollback, still runs after the runtime was upgraded.
"""

from __future__ import annotations

import marshal
import sys
import types

# importlib's own parts, which every interpreter has loaded already: importlib.util and
# collections.abc cost the first call in every new connection some milliseconds of imports
from _frozen_importlib import BuiltinImporter, ModuleSpec
from _frozen_importlib_external import MAGIC_NUMBER, PathFinder

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

PACKAGE = "pyfuncs_pg"
INTERFACES = ("pyfuncs.runtime", "pyfuncs.v1")


class _Rows:
    """Serves the modules of the package `pyfuncs_pg` from their rows: the code pyfuncs
    install compiled when this Python's bytecode is the same (the MAGIC_NUMBER it stored),
    else the source. (An import finder and loader by protocol: importlib.abc would cost
    the first call in every new connection 10 ms of imports.)"""

    def __init__(self, modules: Mapping[str, Mapping[str, Any]]) -> None:
        self.modules = modules

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        package, _, module = name.rpartition(".")
        loader: Any = self  # a Loader by protocol
        if name == PACKAGE:
            return ModuleSpec(name, loader, is_package=True)
        if package == PACKAGE and module in self.modules:
            return ModuleSpec(name, loader, origin=f"pyfuncs/_pg/{module}.py")
        return None

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == PACKAGE:
            return
        exec(code_of(module.__name__.rpartition(".")[2], self.modules), module.__dict__)


class _WhenImported:
    """Runs `then(module)` as soon as the module `name` has been imported, by whoever
    imports it (a routine, PL/Python converting a numeric, the runtime), before anything
    can use it: a finder that hands the import on and wraps its loader. It stays in front
    of the other finders until `then` has run on a module imported whole: a routine's call
    can make a first import fail partway (at a depth where the recursion limit cuts it
    short, with the address space full, or by a stop landing in it), and a red team's next
    import, not watched, made time zones, flags, typing's caches and Decimal's conversions
    unguarded for every later call, and another role's crash (see _Then)."""

    def __init__(self, name: str, then: Any) -> None:
        self.name, self.then = name, then
        self.broken = False  # `then` failed partway: the module is refused from then on

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name != self.name:
            return None
        if self.broken:
            raise ImportError(
                f"pyfuncs: {name} cannot be imported in this session any more: making it "
                "safe to share failed partway (the session was short of memory); reconnect"
            )
        # (unicodedata is built into Debian's Python: not a file PathFinder finds)
        spec = BuiltinImporter.find_spec(name) or PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _Then(spec.loader, self)  # type: ignore[assignment]
        return spec


class _Then:
    """The loader of a module _WhenImported watches: its code and `then` run held
    (watchdog.held: no stop lands, and the recursion limit leaves room), so that only
    memory can make them fail. An import that fails takes with it what it made of the
    module's package (a submodule left half set up: a red team's zoneinfo._tzpath, without a
    search path, failed every later call's time zones), and the next import starts anew,
    watched; where `then` failed partway, the module is refused from then on."""

    def __init__(self, loader: Any, finder: _WhenImported) -> None:
        self.loader, self.finder = loader, finder

    def create_module(self, spec: ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        sys.modules[f"{PACKAGE}.watchdog"].held(self._run, module)
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)

    def _run(self, module: types.ModuleType) -> None:
        name, before, made = module.__name__, set(sys.modules), False
        try:
            self.loader.exec_module(module)
            made = True
            self.finder.then(module)
        except BaseException:
            self.finder.broken = made
            for key in [key for key in sys.modules if key not in before]:
                if key.startswith(name + "."):
                    del sys.modules[key]
            raise


def when_imported(name: str, then: Any) -> None:
    """`then(module)` now if `name` is imported already, else as soon as it is."""
    module = sys.modules.get(name)
    if module is not None:
        then(module)
    elif not any(isinstance(f, _WhenImported) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _WhenImported(name, then))


def _decimal_imported(module: types.ModuleType, bounded: Any, routines: Any, backstop: Any) -> None:
    """Bound Decimal's conversions, hold the context its comparisons use (backstop.c), and
    give the collector's callback a clean decimal context to run in (see bounded.py and
    routines.collecting)."""
    bounded.bound_decimal(module)
    backstop.hold_decimal_contexts(module)
    if not routines.ISOLATED:
        routines.ISOLATED[:] = [module.setcontext, module.Context(), module.getcontext]


def code_of(name: str, modules: Mapping[str, Mapping[str, Any]]) -> types.CodeType:
    row = modules[name]
    if row.get("magic") == MAGIC_NUMBER and row.get("code") is not None:
        code = marshal.loads(row["code"])
        assert isinstance(code, types.CodeType)
        return code
    return compile(row["source"], f"pyfuncs/_pg/{name}.py", "exec", dont_inherit=True)


def load(modules: Mapping[str, Mapping[str, Any]], gd: dict[str, Any]) -> None:
    """Make the runtime's modules importable from their rows and start it."""
    if not any(isinstance(f, _Rows) for f in sys.meta_path):
        sys.meta_path.insert(0, _Rows(modules))
    __import__(f"{PACKAGE}.boot")
    sys.modules[f"{PACKAGE}.boot"].start(gd, modules)


def start(gd: dict[str, Any], modules: Mapping[str, Mapping[str, Any]]) -> None:
    """Bind PL/Python and the postgres executable to the runtime, contain C stack overflows,
    start the watchdog, and offer every interface generated bodies use. `modules` are the
    runtime's rows: their sha256 (which boot() reads since 0018) are part of the key of
    routine modules compiled ahead (sandbox._compiled)."""
    import ctypes

    import plpy

    from . import backstop, bounded, db, deadline, errors, identity, overflow, routines, sandbox
    from . import watchdog as stopping
    from .classes import install as hold_classes

    db.plpy = errors.plpy = plpy
    # the backend's stdout and stderr are PostgreSQL's log: print() and Python's own reports
    # (warnings, exceptions ignored) write nothing there (the watchdog writes what it must)
    sys.stdout = sys.stderr = None
    postgres = ctypes.CDLL(None)  # the postgres executable itself
    overflow.contain(plpy.fatal, postgres)
    overflow.cap_address_space()
    identity.bind(postgres)
    deadline.bind(postgres)
    in_transaction = postgres.IsTransactionState
    in_transaction.restype = ctypes.c_bool
    stopping.in_transaction = in_transaction
    backstop.load(postgres)
    stopping.WATCHDOG = stopping.Watchdog()
    stopping.WATCHDOG.start(plpy.fatal, backstop.lend_frames)
    # (in front of the watchdog's handler)
    # (and in front of overflow's for faults, on the alternate stack it made)
    backstop.install(
        stopping.Watchdog.GRACE, stopping.Watchdog.UNWIND, overflow.STACK, overflow.MESSAGE
    )
    db.bind(postgres, backstop.local_transaction())
    guards = backstop.query_guards(identity.SETTINGS, identity._claims_at[0], deadline._timer)
    if guards is not None:  # (a library built before begin, end and undo has five)
        identity.use(*guards[:2], *guards[7:])
        deadline.use(*guards[2:5])
        if len(guards) > 5:
            db.use(*guards[5:7])
    db.use_runner(backstop.queries)
    backstop.keep_finalizers_apart()
    if backstop.keep_generators():  # (a stop waits until its question is answered)
        stopping.bookkeeping(backstop._may_run_finalized)
    backstop.own_weakref_callbacks(stopping.owned_callback)
    sandbox.API = lambda module: sandbox.shim(db.Db(module))
    if all(row.get("sha256") for row in modules.values()):
        sandbox.RUNTIME = {name: row["sha256"] for name, row in modules.items()}
        sandbox.READ_AHEAD = db.compiled_ahead
    sandbox.contain_abcs()
    bounded.hold_list_items()
    bounded.hold_set_additions()
    bounded.hold_struct_formats()
    bounded.hold_dict_tables()
    bounded.hold_unicode_errors()
    bounded.hold_os_error_members()
    when_imported("decimal", lambda module: _decimal_imported(module, bounded, routines, backstop))
    when_imported("collections", bounded.hold_default_factories)
    when_imported("fractions", bounded.bound_fractions)
    when_imported("datetime", lambda module: backstop.check_moments(bounded.moment_check(module)))
    when_imported("zoneinfo", bounded.hold_zones)
    when_imported("_strptime", bounded.hold_strptime)
    when_imported("enum", bounded.hold_flag_values)
    when_imported("copy", sandbox.contain_copies)
    when_imported("dataclasses", sandbox.contain_generated)
    when_imported("typing", sandbox.contain_typing)
    when_imported("unicodedata", bounded.hold_unicodedata)
    import gc  # (imported already, by the interpreter)

    if not routines.COLLECTOR:  # (with frames lent, as the watchdog's hooks)
        routines.COLLECTOR.append(
            backstop.lend_frames(routines.collecting, stopping.Watchdog.HEADROOM)
        )
        gc.callbacks.append(routines.COLLECTOR[0])
    hold_classes()  # (last: its import finder goes in front of the others)
    for name in INTERFACES:
        gd[name] = routines
