"""What routine code sees of the modules it may import: read-only views that hold only their
public names.

An allowed module holds other modules as ordinary attributes (`uuid.os`, `json.decoder.re`,
`dataclasses.sys`), and a few of its public functions change state every call in the backend
shares (`random.seed`, `decimal.getcontext().prec = 1`, `calendar.setfirstweekday`), reach
the operating system (`uuid.getnode` runs programs), change the process's locale
(`calendar.different_locale`) or evaluate strings as code with the real builtins
(`typing.get_type_hints`). A routine importing a module gets a view instead: its names from
the module's own public list (`__all__`, or its public names when it has none), less the
modules among them (an allowed submodule is a view of its own), less `LEFT_OUT`; no other
attribute, and nothing can be assigned to it. `tests/integration/test_views.py` walks every
view inside the database and proves what is reachable from them.
"""

from __future__ import annotations

import sys
import types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

# names of allowed modules that routines do not get, and why
LEFT_OUT: dict[str, dict[str, str]] = {
    "random": {name: "changes the random state every call shares"
               for name in ("seed", "setstate", "getstate")},
    "decimal": {name: "the context every call shares; use decimal.localcontext()"
                for name in ("getcontext", "setcontext", "DefaultContext", "BasicContext",
                             "ExtendedContext")},
    "calendar": {
        "setfirstweekday": "changes what every call gets", "c": "an instance every call shares",
        "mdays": "a list every call shares", "different_locale": "changes the process's locale",
        "LocaleTextCalendar": "changes the process's locale",
        "LocaleHTMLCalendar": "changes the process's locale", "main": "reads sys.argv",
        "HTMLCalendar": "its class attributes are lists every call shares",
    },
    "__future__": {"all_feature_names": "a list every call shares"},
    "hashlib": {**{name: "a set every call shares"
                   for name in ("algorithms_available", "algorithms_guaranteed")},
                "file_digest": "hashes a file object's whole buffer in one call"},
    "enum": {"property": "a descriptor class from the types module",
             "global_enum": "writes members into the namespace of the module an enum names"},
    "typing": {"get_type_hints": "evaluates strings as code",
               "ForwardRef": "evaluates strings as code",
               "get_overloads": "reads a registry every call shares",
               "clear_overloads": "empties a registry every call shares"},
    "zoneinfo": {"reset_tzpath": "changes where every call's time zones are read from"},
    "uuid": {"getnode": "may run programs", "uuid1": "may run programs"},
    "base64": {"main": "reads files and sys.argv", "test": "reads files"},
    "datetime": {"datetime_CAPI": "a C capsule"},
}  # fmt: skip


def _dataclass_transform(**_: Any) -> Any:
    return lambda given: given


def _typing(function: Any, name: str) -> Any:
    """`function`, named as the typing function it stands in for."""
    function.__module__, function.__name__, function.__qualname__ = "typing", name, name
    return function


def _overload(given: Any) -> Any:
    """typing.overload without its registry, which every call shares: keyed by what the
    function says its module is (a red team's `__getattribute__` said an object of its
    own, which compared itself with the keys of other modules' calls, there), and read only
    by get_overloads, which routines do not get."""
    return sys.modules["typing"]._overload_dummy


# names routines get a stand-in for, and why: typing's markers set an attribute on whatever
# they are given (`__final__`, `__no_type_check__`, `__dataclass_transform__`), a function
# or class every call shares too; only static type checkers need them, so a routine's
# decorators return what they are given, unmarked; and typing.overload keeps what it is
# given (above)
STAND_INS: dict[str, dict[str, Any]] = {
    "typing": {"final": _typing(lambda given: given, "final"),
               "no_type_check": _typing(lambda given: given, "no_type_check"),
               # (typing's calls typing's own no_type_check on what the decorator makes)
               "no_type_check_decorator": _typing(lambda given: given,
                                                  "no_type_check_decorator"),
               "dataclass_transform": _typing(_dataclass_transform, "dataclass_transform"),
               "overload": _typing(_overload, "overload")},
}  # fmt: skip


class ModuleView(types.ModuleType):
    """A read-only view of a module: its public names, nothing to assign to."""

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"pyfuncs: module {self} is read-only in a routine")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"pyfuncs: module {self} is read-only in a routine")


def public_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
    return [n for n in names if not n.startswith("_") and hasattr(module, n)]


def view(name: str, allowed: frozenset[str], module: types.ModuleType | None = None) -> ModuleView:
    """A view of the allowed module `name` (or of `module`, a stand-in for it)."""
    if module is None:
        __import__(name)  # (not importlib.import_module: importlib costs every backend 0.3 ms)
        module = sys.modules[name]
    real = module
    left_out, stand_ins = LEFT_OUT.get(name, {}), STAND_INS.get(name, {})
    namespace: dict[str, Any] = {}
    for attribute in public_names(real):
        value = stand_ins.get(attribute) or getattr(real, attribute)
        if attribute not in left_out and not isinstance(value, types.ModuleType):
            namespace[attribute] = value
    for child in allowed:  # its allowed submodules, as views of their own
        package, _, attribute = child.rpartition(".")
        if package == name:
            namespace[attribute] = view(child, allowed)
    # no real module has a space in its name: `from json import decoder` cannot fall back on
    # sys.modules["json.decoder"] (CPython's import_from looks there by __name__)
    result = ModuleView(f"{name} (view)", getattr(real, "__doc__", None))
    types.ModuleType.__setattr__(result, "__all__", tuple(namespace))
    for attribute, value in namespace.items():
        types.ModuleType.__setattr__(result, attribute, value)
    return result
