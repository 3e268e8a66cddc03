"""Standard modules the runtime tells values apart by, looked up rather than imported.

Importing decimal, datetime, uuid, zoneinfo, dataclasses, collections and random in every
backend cost each new connection's first call several milliseconds. Where the runtime only
asks whether a value is of one of their types, it needs them only once a value of that type
can exist, and none can before its module (or the C module its types come from) was
imported: by a routine's import, by PL/Python (a numeric argument is a Decimal) or by the
runtime itself. So it asks `imported`, which gives the module from then on, and None before.
"""

from __future__ import annotations

import sys
from types import ModuleType

# the C modules whose types a module exports (a type can exist once they are imported)
_PARTS = {"decimal": ("_decimal",), "datetime": ("_datetime",), "zoneinfo": ("_zoneinfo",)}


def imported(name: str) -> ModuleType | None:
    """The standard module `name` once it (or its C part) has been imported; else None."""
    modules = sys.modules
    module: ModuleType | None = modules.get(name)
    if module is None and any(part in modules for part in _PARTS.get(name, ())):
        module = __import__(name)
    return module
