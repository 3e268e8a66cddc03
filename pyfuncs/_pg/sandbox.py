"""What routine code runs with: builtins without dynamic code and namespaces, an importer
limited to the allow-list, attribute access by name that refuses private names, the
`pyfuncs` it imports, and the helpers the inserted guards call."""

from __future__ import annotations

import linecache
import sys
import types
from typing import Any

from . import bounded, vocabulary
from . import watchdog as stopping
from .guards import compile_module

# Behind the policy check done before deploy: a routine module runs with builtins that lack
# dynamic code and namespaces, an importer limited to the allow-list, and attribute access by
# name that refuses private names. Defence in depth, like the policy itself.

# __import__ is replaced by one limited to the allow-list
REMOVED_BUILTINS = frozenset(vocabulary.FORBIDDEN_BUILTINS) | {"__loader__", "__spec__"}


# The `pyfuncs` module routine modules import: the public API for routines only (boot()
# makes it in the database; pyfuncs._sandbox makes one that records the decorators).
SHIM: types.ModuleType | None = None


def restricted_builtins(allowed: frozenset[str]) -> dict[str, Any]:
    import builtins

    real_import = builtins.__import__
    replaced = {"math": bounded.guarded_math()}
    if SHIM is not None:
        replaced["pyfuncs"] = SHIM

    def guarded_import(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        if level != 0 or name not in allowed:
            raise ImportError(f"pyfuncs: import of {name!r} is not allowed in a routine")
        return replaced.get(name) or real_import(name, globals, locals, fromlist, level)

    def public(name: object) -> str:
        if not isinstance(name, str) or name.startswith("_"):
            raise AttributeError(f"pyfuncs: attribute {name!r} is not accessible from a routine")
        return name

    restricted = {k: v for k, v in vars(builtins).items() if k not in REMOVED_BUILTINS}
    restricted.update(
        __import__=guarded_import,
        getattr=lambda obj, name, *default: getattr(obj, public(name), *default),
        hasattr=lambda obj, name: hasattr(obj, public(name)),
        setattr=lambda obj, name, value: setattr(obj, public(name), value),
        pow=bounded.checked_pow,
    )
    return restricted


# what the code guards.py inserts calls, in every routine module's globals
HELPERS = {
    "pyfuncs.guard": stopping.guard, "pyfuncs.mul": bounded.checked_mul,
    "pyfuncs.pow": bounded.checked_pow, "pyfuncs.lshift": bounded.checked_lshift,
    "pyfuncs.check_mul": bounded.check_mul, "pyfuncs.check_pow": bounded.check_pow,
    "pyfuncs.check_lshift": bounded.check_lshift,
}  # fmt: skip

# routine modules executed in this backend, by their exact source and allow-list
MODULES: dict[tuple[str, frozenset[str]], dict[str, Any]] = {}


def load_module(
    source: str, filename: str, module_name: str, allowed: frozenset[str]
) -> dict[str, Any]:
    """Execute a routine module once per backend, keyed by its exact source."""
    key = (source, allowed)
    namespace = MODULES.get(key)
    if namespace is None:
        module = types.ModuleType(module_name)
        module.__file__ = filename
        # dataclasses and typing look classes' modules up in sys.modules while they are built
        sys.modules[module_name] = module
        # so tracebacks show the routine's source lines: the file itself is not on the server
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module.__dict__.update(HELPERS)
        module.__dict__["__builtins__"] = restricted_builtins(allowed)
        exec(compile_module(source, filename), module.__dict__)
        namespace = MODULES[key] = module.__dict__
    return namespace


def _decorator(*args: Any, **_options: Any) -> Any:
    """In the database the decorators only mark; the definition was read at deploy time."""
    if len(args) == 1 and callable(args[0]) and not _options:
        return args[0]
    return lambda fn: fn


def shim(db: Any) -> types.ModuleType:
    """The `pyfuncs` routine modules import in the database: the API for routines only."""
    from .db import Rows
    from .errors import RaiseError

    module = types.ModuleType(vocabulary.SHIM_NAME)
    module.__dict__.update(
        db=db, Rows=Rows, RaiseError=RaiseError, stored_function=_decorator,
        procedure=_decorator, __all__=list(vocabulary.ROUTINE_API),
    )  # fmt: skip
    return module
