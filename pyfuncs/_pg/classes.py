"""Classes: which ones a routine's class may derive from, and which ones nobody may change.

Two flags of type objects, which CPython checks in C however it is asked, kept for the whole
backend once the runtime has started:

* **No metaclasses, no subclasses of date, datetime and time** (Py_TPFLAGS_BASETYPE off).
  A metaclass answers for its classes whatever C asks of them: `cls(...)` (its `__call__`),
  their attributes (`__getattribute__`), their hash and equality inside the caches of
  shared abstract classes, isinstance and issubclass of shared ABCs; and datetime's C code
  makes a value of a subclass with `cls(...)` (`fromtimestamp`, `combine`, `replace`,
  `astimezone`, arithmetic) and writes through what that returns as a datetime. Red teams
  used both, to run one module's code in other roles' calls and to make C write into an
  object of another type (the shared int 7 became 6). C refuses a base without the flag
  however a class is made (a class statement, `type(name, bases, namespace)`,
  `types.new_class`, a metaclass's `__new__`), so the flag is off on `type` and every type
  derived from it, and on date and time (datetime derives from date) and theirs.
* **Classes every call shares are immutable** (Py_TPFLAGS_IMMUTABLETYPE on). A routine's
  own code may set attributes only of what its module made (sandbox.writable), but the
  standard library's code sets attributes of whatever class it is given:
  `dataclasses.dataclass(Rows)` gave pyfuncs' Rows a new `__init__` and `__eq__`, and every
  later `db.execute` in the backend, any role's, returned no rows (a red team's);
  `typing.runtime_checkable(typing.Protocol)`, `dataclass(collections.UserDict)` likewise.
  With the flag on, Python refuses to set or delete an attribute of the class, whoever
  asks. Shared classes are those that exist when the runtime starts, those an import makes
  and those the runtime makes for routines later (stand-ins of modules, error classes):
  all but a routine's own.

An import finder in front of the others makes the classes an import makes shared ones
when it ends. A few modules of the standard library make metaclasses (enum's, typing's,
ast's) or set attributes of other modules' classes (ast's of _ast's) as they are imported,
which a routine's import may do during a call: their imports run in a window (`window`),
in which the flags are given back. Meanwhile a routine's code could run only in a
finalizer something the import sets off: the collector is off, a profile function takes
the flags away again while any frame of a routine's code runs, and when the window closes
a new type of the withheld kinds that is not one of the imported modules' own, by name,
ends the session (a finalizer can run only the standard library's code, which the profile
function does not see: a red team's made a metaclass through copy's reconstruction).
"""

from __future__ import annotations

import gc
import sys
import types

from . import backstop, vocabulary
from . import watchdog as stopping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

BASETYPE = 1 << 10  # Py_TPFLAGS_BASETYPE
IMMUTABLE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE
HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made at run time (the others are C's)

# the types withheld as bases, by id: (the type, its tp_flags field as a ctypes c_ulong);
# and the classes made immutable, by id
WITHHELD: dict[int, tuple[type, Any]] = {}
SHARED: dict[int, type] = {}

_SUBCLASSES = type.__dict__["__subclasses__"]
_MRO = type.__dict__["__mro__"].__get__
_FLAGS = type.__dict__["__flags__"].__get__
_FLAGS_AT: list[int] = []  # the offset of tp_flags in a type object


def _flags_at() -> int:
    """The offset of tp_flags in a type object, found by its value (type.__flags__)."""
    if not _FLAGS_AT:
        import ctypes

        for offset in range(16, 400, 8):
            if ctypes.c_ulong.from_address(id(type) + offset).value == _FLAGS(type):
                _FLAGS_AT.append(offset)
                break
        else:
            raise RuntimeError("pyfuncs: the layout of type objects is not the expected one")
    return _FLAGS_AT[0]


def flags(kind: type) -> Any:
    """The tp_flags field of a type object, to read and write."""
    import ctypes

    return ctypes.c_ulong.from_address(id(kind) + _flags_at())


def _roots() -> Iterator[type]:
    yield type
    datetime = sys.modules.get("_datetime") or sys.modules.get("datetime")
    if datetime is not None:
        yield from (datetime.date, datetime.time)  # (datetime derives from date)


def _every_class(root: type = object) -> dict[int, type]:
    found: dict[int, type] = {}
    pending = [root]
    while pending:
        kind = pending.pop()
        if id(kind) not in found:
            found[id(kind)] = kind
            pending.extend(_SUBCLASSES(kind))
    return found


def withhold() -> None:
    """Take BASETYPE from every type of the kinds there is now."""
    for root in _roots():
        for key, kind in _every_class(root).items():
            if key not in WITHHELD and _FLAGS(kind) & BASETYPE:
                WITHHELD[key] = (kind, flags(kind))
    for _, field in WITHHELD.values():
        field.value &= ~BASETYPE


def _give_back() -> None:
    for _, field in WITHHELD.values():
        field.value |= BASETYPE


# the shared classes a window thaws: ast's code sets attributes of _ast's classes (named
# ast's) as it is imported; no other module of WINDOWED changes a class it did not make
_THAWED: list[Any] = []


def _freeze() -> None:
    for field in _THAWED:
        field.value |= IMMUTABLE


def _thaw() -> None:
    for field in _THAWED:
        field.value &= ~IMMUTABLE


def share(*classes: type) -> None:
    """Make classes every call shares immutable (the ones C made are already), but
    weakref.finalize, whose own code keeps its state in class attributes (no routine
    reaches it: weakref is not an allowed module, and none of theirs hands one out)."""
    finalize = _finalize()
    mutable = [
        kind for kind in classes
        if _FLAGS(kind) & (HEAPTYPE | IMMUTABLE) == HEAPTYPE and kind is not finalize
    ]  # fmt: skip
    if not backstop.set_flags(mutable, _flags_at(), IMMUTABLE):
        for kind in mutable:
            flags(kind).value |= IMMUTABLE
    for kind in mutable:
        SHARED[id(kind)] = kind  # (held: its id is not reused)


def refused(base: Any) -> str | None:
    """Why a class of a routine's may not derive from `base`, or None if it may: by what it
    is (C refuses it anyway, where the flag is off)."""
    if not isinstance(base, type):
        return None
    mro = _MRO(base)
    if not any(root in mro for root in _roots()):
        return None
    if type in mro:
        return (
            "a routine may not define metaclasses: C code and every call's isinstance of "
            "shared abstract classes trust what a metaclass answers for its classes"
        )
    return (
        "datetime's C code makes values of a subclass with cls(...) and writes through what "
        "that returns (hold a datetime in an attribute instead)"
    )


_ROUTINE_FRAMES = [0]  # frames of a routine's code running in a window


def _close() -> None:
    withhold()
    _freeze()


def _open() -> None:
    _give_back()
    _thaw()


def _watch(frame: Any, event: str, arg: Any) -> None:
    """The profile hook while a window is open: closes it while code of a routine's runs
    (a finalizer), and opens it again when that code returns. (backstop.c has the same in
    C, about three times cheaper: this one serves where that library is not installed.)"""
    if event == "call":
        if id(frame.f_code) in stopping.ROUTINE_CODE:
            _ROUTINE_FRAMES[0] += 1
            if _ROUTINE_FRAMES[0] == 1:
                _close()
    elif event == "return" and _ROUTINE_FRAMES[0] and id(frame.f_code) in stopping.ROUTINE_CODE:
        _ROUTINE_FRAMES[0] -= 1
        if _ROUTINE_FRAMES[0] == 0:
            _open()


class sharing:
    """Code of the standard library's or the runtime's that makes classes every call will
    share (an import, a view's stand-in): the classes made meanwhile are shared ones after."""

    def __enter__(self) -> None:
        if stopping.SHARING[0] == 0:
            self.before = _classes()  # (held: no id is reused until it ends)
        stopping.SHARING[0] += 1
        _SHARING_FRAMES.append(sys._getframe(1))

    def __exit__(self, *exc: object) -> None:
        _SHARING_FRAMES.pop()
        stopping.SHARING[0] -= 1
        if stopping.SHARING[0] == 0:
            before = self.before
            del self.before
            share(*_made_since(*before))
            withhold()  # (an import of datetime, say: its types are withheld from now on)


def _finalize() -> Any:
    return getattr(sys.modules.get("weakref"), "finalize", None)


def _classes() -> tuple[dict[int, type], dict[int, type]]:
    """Every class every call shares there is now, and the unshared ones found deriving
    from them, not gone into: a routine's classes cost `sharing` a step for each one it
    derived from a shared class, not one for each it made (a red team's routine kept
    120,000 classes under 60 of its own, and every first import after, another role's
    included, walked them all, twice, with stops held: 1.3 s, and a stop due meanwhile
    ended the session)."""
    shared: dict[int, type] = {}
    unshared: dict[int, type] = {}
    pending: list[type] = [object]
    finalize = _finalize()
    while pending:
        kind = pending.pop()
        key = id(kind)
        if key in shared or key in unshared:
            continue
        # (no call shares a mutable class made at run time, a routine's or one made for
        # it, but weakref.finalize: see share)
        if _FLAGS(kind) & (HEAPTYPE | IMMUTABLE) == HEAPTYPE and kind is not finalize:
            unshared[key] = kind
        else:
            shared[key] = kind
            pending.extend(_SUBCLASSES(kind))
    return shared, unshared


def _made_since(shared: dict[int, type], unshared: dict[int, type]) -> list[type]:
    """The classes made since _classes() found these: what derives from a shared class, or
    from one made since (no code that makes shared classes derives one from a routine's)."""
    made: list[type] = []
    seen: set[int] = set()
    pending: list[type] = [object]
    while pending:
        kind = pending.pop()
        key = id(kind)
        if key in seen or key in unshared:
            continue
        seen.add(key)
        if key not in shared:
            made.append(kind)
        pending.extend(_SUBCLASSES(kind))
    return made


# the modules of the standard library that define metaclasses (enum's, typing's, ast's) or
# set attributes of other modules' classes (ast's of _ast's) as they are imported: only
# their imports open a window
WINDOWED = frozenset({"enum", "typing", "ast", "_py_abc"})
_SHARING_FRAMES: list[Any] = []  # the frames that entered them (an import's, a view's)
_WINDOWS: list[Any] = []  # the modules imported in the window open, outermost first
_WINDOW_DEPTH = [0]


def _kinds() -> dict[int, type]:
    """Every type of the kinds withheld as bases there is now."""
    return {key: kind for root in _roots() for key, kind in _every_class(root).items()}


class window:
    """The import of a module of WINDOWED: the flags are given back while its code runs,
    the collector is off, and a profile function closes the window again while any code
    of a routine's runs (a finalizer the import set off). When the outermost window closes,
    every new type of the withheld kinds must be one the modules imported in it define, by
    name: anything else was made by something the import set off, a routine's finalizer
    running only the standard library's code (a red team's made a metaclass through copy's
    reconstruction that way), and the session ends."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __enter__(self) -> None:
        if _WINDOW_DEPTH[0] == 0:
            self.collecting, self.profile = gc.isenabled(), sys.getprofile()
            gc.disable()
            self.before = _kinds()
            _THAWED[:] = [flags(kind) for kind in SHARED.values()
                          if self.module.__name__ == "ast" and _MODULE(kind) == "ast"]  # fmt: skip
            _ROUTINE_FRAMES[0] = 0
            self.python = not backstop.window_profile(stopping.ROUTINE_CODE, _close, _open)
            if self.python:
                sys.setprofile(_watch)
            _open()
        _WINDOWS.append(self.module)
        _WINDOW_DEPTH[0] += 1

    def __exit__(self, *exc: object) -> None:
        _WINDOW_DEPTH[0] -= 1
        if _WINDOW_DEPTH[0]:  # (an import inside the window: it closes with the outermost)
            return
        # Python drops a profile function of Python that raised (one called where the stack
        # was nearly full, say): code of a routine's may have run with the window open (C's
        # cannot be dropped that way)
        dropped = self.python and sys.getprofile() is not _watch
        sys.setprofile(self.profile)
        _close()
        _THAWED.clear()
        names = {module.__name__: module for module in _WINDOWS}
        _WINDOWS.clear()
        before = self.before
        del self.before
        foreign = [kind for key, kind in _kinds().items()
                   if key not in before and not _defined(kind, names)]  # fmt: skip
        if self.collecting:
            gc.enable()
        if (dropped or foreign) and stopping.WATCHDOG is not None:
            stopping.WATCHDOG.end_session(
                "pyfuncs: the runtime lost sight of a routine's code while a module was "
                "imported; this session ends so that no other is affected"
            )


_MODULE = type.__dict__["__module__"].__get__
_QUALNAME = type.__dict__["__qualname__"].__get__


def _defined(kind: type, modules: dict[str, Any]) -> bool:
    """Whether `kind` is one of the imported modules' own, by the name it has there."""
    module = modules.get(_MODULE(kind))
    return module is not None and vars(module).get(_QUALNAME(kind)) is kind


class _Importing:
    """The import finder in front of the others: hands each import on to them, and runs
    the module's code in a window (see the module's docstring)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader:
    """A loader that runs the one it wraps sharing the classes it makes, in a window for
    the modules of WINDOWED."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # get_source, resource readers, ...
        return getattr(self.loader, name)

    # (each held: stopping.held, so that a routine's call cannot cut it short between
    # making classes and sharing them)

    def create_module(self, spec: Any) -> Any:  # (an extension module makes its types here)
        create = getattr(self.loader, "create_module", None)
        if create is None:
            return None
        return stopping.held(_shared, create, spec)

    def exec_module(self, module: Any) -> None:
        stopping.held(self._exec, module)

    def _exec(self, module: Any) -> None:
        with sharing():
            if module.__name__ not in WINDOWED:
                self.loader.exec_module(module)
                return
            with window(module):
                self.loader.exec_module(module)


def _shared(make: Any, *args: Any) -> Any:
    with sharing():
        return make(*args)


# Special methods. C calls a class's special methods (`__eq__`, `__hash__`, `__iter__`,
# `__del__`...) wherever its objects are: in another role's call, when a cache every call
# shares compares one of them with what that call looks up. A routine's own code refuses
# to run outside its module's calls (guards.py), but a special method may be something
# else: a C function or a bound method (`"__eq__": items.append`, a generator's `send`), or
# a function of the standard library (`collections.Counter.update`), which would run there
# unchecked and keep what it is given (a red team's `db.execute` queried as another role
# from there). So while a routine's code is making a class or setting one's attribute, each
# special method must be the routine module's own function (or a classmethod, staticmethod
# or property of ones), what the standard library code making the class made for it
# (namedtuple's, dataclasses'), what the class has from a base under that name anyway
# (enum's, C's), or data; checked in C's type slots (backstop.c), however the class is
# made or set (_made_here).

# C's methods (a slot's wrapper, a method, a classmethod) and C's attributes (computed,
# or a slot of __slots__) as they sit in a class's dict
_C_METHODS = (type(object.__init__), type(list.append), type(dict.__dict__["fromkeys"]))
_C_ATTRIBUTES = (type(type.__dict__["__name__"]), type(type.__dict__["__basicsize__"]))
_FUNCTION = types.FunctionType
_BUILTIN = types.BuiltinFunctionType
# C's methods a class may have under another name: what enum gives an enum of a C type
_ALIASES = {("__str__", "__repr__"), ("__repr__", "__str__")}
_RUNTIME = (__name__.rpartition(".")[0] + ".",)  # pyfuncs_pg. in the database


_DICT = type.__dict__["__dict__"].__get__


def _made_here(function: Any, key: str, mro: Any, made: set[int]) -> bool:
    """Whether `function` may be the special method `key` of a class deriving from `mro`:
    the routine module's own (its code, or code the standard library compiled into its
    globals: dataclasses' methods), compiled by the standard library from text it wrote
    (namedtuple's `__new__`, dataclasses' methods and its wrapper of `__repr__`: no routine
    can read such a function off a class), defined by
    the code making the class as it runs (`made`: the code nested in the frames between it
    and the routine's, namedtuple's `__repr__`), a base's own under that name (enum gives an
    enum Enum's `__new__`), or one of the few the standard library gives its classes. Not
    any function of a module whose code is on the stack: a red team had C's `map` make a
    class inside `collections.Counter(...)`, with `Counter.total` as its `__del__`."""
    code = function.__code__
    wrapped = getattr(function, "__wrapped__", None)  # (dataclasses' repr, by functools.wraps)
    if (
        function.__globals__ is stopping.CALLING[0]
        or code.co_filename == "<string>"
        or (type(wrapped) is _FUNCTION and wrapped.__code__.co_filename == "<string>")
        or id(code) in made
        or (key, function) in _given()
    ):
        return True
    for base in mro:
        found = _DICT(base).get(key) if isinstance(base, type) else None
        if found is function or getattr(found, "__func__", None) is function:
            return True
    return False


def _given() -> set[tuple[str, Any]]:
    """The functions of modules the standard library gives a class it is given (a
    dataclass with slots its state, a protocol its __init__), once those are imported."""
    given = set()
    for module, pairs in (
        ("dataclasses", (("__getstate__", "_dataclass_getstate"),
                         ("__setstate__", "_dataclass_setstate"))),
        ("typing", (("__init__", "_no_init_or_replace_init"),)),
    ):  # fmt: skip
        found = sys.modules.get(module)
        for key, name in pairs if found is not None else ():
            given.add((key, getattr(found, name, None)))
    return given


def _plain(key: str, value: Any, mro: Any, made: set[int]) -> bool:
    kind = type(value)
    if kind is _FUNCTION:
        return _made_here(value, key, mro, made)
    if kind is classmethod or kind is staticmethod:
        inner = value.__func__
        if type(inner) is _FUNCTION:
            return _made_here(inner, key, mro, made)
        return key == "__class_getitem__" and isinstance(inner, type)  # (GenericAlias)
    if kind is property:
        parts = (value.fget, value.fset, value.fdel)
        return all(
            f is None or (type(f) is _FUNCTION and _made_here(f, key, mro, made)) for f in parts
        )
    if key in ("__dict__", "__weakref__") and kind in _C_ATTRIBUTES:
        return True  # (another class's: dataclasses' slots=True makes the class again)
    if kind in _C_METHODS or kind in _C_ATTRIBUTES:  # C's, under its name, of object or a base
        owner: Any = getattr(value, "__objclass__", object)
        name = getattr(value, "__name__", None)
        return (name == key or (key, name) in _ALIASES) and (
            owner is object or any(isinstance(b, type) and issubclass(b, owner) for b in mro)
        )
    if kind is _BUILTIN:  # a C type's own __new__ (object.__new__: enum keeps its members')
        made_by = getattr(value, "__self__", None)
        return (
            key in ("__new__", "__new_member__")
            and value.__name__ == "__new__"
            and (isinstance(made_by, type))
        )
    if callable(value) or hasattr(kind, "__get__"):
        return False
    if key != "__slots__":
        return True  # data: None (`__hash__ = None`), names, a docstring, dataclass fields
    names = [value] if kind is str else list(value) if kind in (tuple, list, dict) else None
    return names is not None and all(
        type(n) is str and (n in ("__dict__", "__weakref__") or not n.startswith("__"))
        for n in names
    )


def _routines_frames() -> tuple[set[int], str] | None:
    """If a routine's code is making the class: the code nested in the frames between the
    check and the nearest frame of a routine's (but the runtime's), which those frames may
    have made functions of as they ran, and the name of that routine's module; else None:
    no routine's code is on the stack, or code that makes shared classes (an import, a
    view's stand-ins: `sharing`) is nearer, the standard library's or the runtime's own
    work."""
    made: set[int] = set()
    frame: Any = sys._getframe(2)
    routine_code, sharing = stopping.ROUTINE_CODE, _SHARING_FRAMES
    while frame is not None:
        code = frame.f_code
        if id(code) in routine_code:
            return made, str(routine_code[id(code)].get("__name__", ""))
        if sharing and any(frame is f for f in sharing):
            return None
        # (not the runtime's: its functions a routine holds — the decorators, `getattr` —
        # are not the class's, and the runtime's own classes are made in `sharing`)
        if not str(frame.f_globals.get("__name__", "")).startswith(_RUNTIME):
            made.update(id(c) for c in code.co_consts if type(c) is type(code))
        frame = frame.f_back
    return None


def _refuse(key: str, value: Any) -> None:
    raise TypeError(
        f"pyfuncs: the special method {key!r} of a routine's class may be only a function of "
        f"its module's (a def, a lambda, or a classmethod, staticmethod or property of one), "
        f"not a {type(value).__name__}: C calls special methods wherever the object is, "
        "another role's call among them"
    )


def check_made(args: Any) -> None:
    """type's tp_new, before it makes a class of (name, bases, namespace)."""
    if type(args) is not tuple or len(args) != 3 or not isinstance(args[2], dict):
        return  # type(x), or what type refuses anyway
    if type(args[0]) is not str and isinstance(args[0], str) and _routines_frames() is not None:
        _named("__name__", args[0])
    found: Any = None
    mro: Any = ()
    for key, value in dict.items(args[2]):
        if not isinstance(key, str):
            continue
        if found is None:
            found = _routines_frames()
            if found is None:
                return
            bases = args[1] if type(args[1]) is tuple else ()
            mro = tuple(k for b in bases if isinstance(b, type) for k in _MRO(b))
        _check(str.__str__(key), value, mro, *found)
    # a class under a dataclass has its fields (or says it has, by a dict of its own)
    own = dict.get(args[2], FIELDS)
    if found is None:  # (an empty namespace: `type(name, bases, {})`)
        bases = args[1] if type(args[1]) is tuple else ()
        mro = tuple(k for b in bases if isinstance(b, type) for k in _MRO(b))
        inherited = inherited_fields(mro)
        found = _routines_frames() if inherited else None
    else:
        inherited = inherited_fields(mro)
    if found is not None:
        names = [*(() if own is None else fields_of(own)), *inherited]
        check_fields(names, mro, found[1], repr(args[0]))


def check_set(cls: Any, key: Any, value: Any) -> None:
    """type's tp_setattro, before it sets an attribute of class `cls`."""
    if not isinstance(key, str):
        return
    found = _routines_frames()
    if found is not None:
        key = str.__str__(key)
        _check(key, value, _MRO(cls), *found, own=cls)
        if key == FIELDS:  # (dataclasses' own, as it ends making a dataclass)
            check_fields(fields_of(value), _MRO(cls), found[1], repr(_NAME(cls)))


def _check(key: str, value: Any, bases: Any, made: set[int], module: str, own: Any = None) -> None:
    """One attribute a routine's code gives class `own` (or the class being made), whose
    MRO (or its bases' MROs) is `bases`: special methods must be its own (_plain); what
    names the class (its name, module, qualified name and docstring) must be plain text
    (typing's protocol check compared a red team's `__name__`, a str subclass, in another
    role's isinstance); and no
    base's private attributes may be set (`_UserList__cast`: UserList's `==` calls it with
    the other operand, and a red team's was C's `list.append` of its own, which kept
    another module's key from the call that compared them)."""
    if key in ("__module__", "__qualname__", "__doc__", "__name__"):
        if not _names(key, value, module):
            _named(key, value)
    elif key.startswith("__") and key.endswith("__"):
        if not _plain(key, value, bases, made):
            _refuse(key, value)
    elif "__" in key[1:] and key.startswith("_"):
        private = key.partition("__")[0]
        if any(
            isinstance(b, type) and b is not own and private == "_" + _NAME(b).lstrip("_")
            for b in bases
        ):
            raise TypeError(
                f"pyfuncs: a routine's class may not set {key!r}, a private attribute of the "
                "class it derives from: that class's code trusts what it finds there"
            )


FIELDS = "__dataclass_fields__"


def inherited_fields(mro: Any) -> list[Any]:
    """The names of the dataclass fields the classes of `mro` have (as dataclasses finds
    them: each class's own `__dataclass_fields__`)."""
    names: list[Any] = []
    for kind in mro:
        own = _DICT(kind).get(FIELDS) if isinstance(kind, type) else None
        if own is not None:
            names.extend(fields_of(own))
    return names


def fields_of(fields: Any) -> list[Any]:
    """The names a class's `__dataclass_fields__` gives its fields: its keys and the
    names of its Fields, which must be a plain dict of dataclasses' own Field objects
    (what dataclasses makes; anything else, a property or a Field subclass whose `name`
    answers as it likes, could name one field to a check and another to dataclasses)."""
    field = getattr(sys.modules.get("dataclasses"), "Field", None)
    if type(fields) is not dict or any(type(f) is not field for f in dict.values(fields)):
        raise TypeError(
            "pyfuncs: a class's dataclass fields must be a plain dict of dataclasses' Field "
            "objects, as dataclasses makes them"
        )
    name = _DICT(field)["name"].__get__ if fields else None
    return [*fields, *(name(f) for f in dict.values(fields))]  # type: ignore[misc]


def check_fields(names: Any, mro: Any, module: str, what: str) -> None:
    """Refuse dataclass fields named `names` of the class `what` whose MRO holds the classes
    of `mro`, for routine module `module`. dataclasses reads a field by its name with the
    real getattr, past the runtime's checked reads (sandbox.READS): a field's default with
    getattr(cls, name) as the class is made (an inherited one: deque's raw `index`, whose
    use-after-free a red team reached), and each field of an object in `replace`, `asdict`,
    `astuple` and the `__eq__`, `__repr__`, `__hash__` and ordering it makes (a data
    descriptor of a base wins over the object's own dict: `decimal.Context.flags`, C's
    SignalDict, which outlived its context and wrote into freed memory). So no field may
    be named as an attribute of any class of the MRO its module did not make (whichever
    class would answer first: a later subclass can change that), nor as a frame's or code's
    attribute, another class's private one (`_UserList__cast`), abc's state or the
    interpreter's or enum's machinery. A class of the MRO with a `__getattribute__` or
    `__getattr__` of its own answers any name (decimal.Context serves `flags` so, from no
    dict): none of its names may be a field's."""
    answering = [
        k for k in mro
        if isinstance(k, type) and k is not object and k is not type  # (the lookup itself)
        and not made_by(k, module) and _answers(k)
    ]  # fmt: skip
    for name in names:
        if type(name) is not str or _machinery(name):
            why = "is not a plain name (the interpreter's and enum's are __x__ and _x_)"
        elif name in vocabulary.FRAME_ATTRIBUTES:
            why = "is the name of an attribute that leads to frames or code"
        elif vocabulary.others_private(name):
            why = "is spelled as a class's private attribute (_Class__x) or abc's (_abc_*)"
        else:
            foreign = answering + [
                k for k in mro if isinstance(k, type) and name in _DICT(k)
                and not made_by(k, module) and not _declares(k, name)
            ]  # fmt: skip
            if not foreign:
                continue
            why = (
                f"would read {_NAME(foreign[0])}.{name}, an attribute of a class every call "
                "shares: dataclasses reads fields by name, past the runtime's checks (rename "
                "the field)"
            )
        raise TypeError(f"pyfuncs: the dataclass field {name!r} of the class {what} {why}")


_WRAPPER = type(object.__dict__["__getattribute__"])  # (a C slot's, as a class's dict has it)


def _answers(kind: type) -> bool:
    """Whether class `kind` answers names of its own with a `__getattribute__` or
    `__getattr__` (not the generic lookup, which C types such as BaseException and deque
    name as their own too: told by the C function the slot's wrapper calls)."""
    own = _DICT(kind)
    if "__getattr__" in own:
        return True
    found = own.get("__getattribute__")
    return found is not None and _wrapped(found) != _wrapped(object.__dict__["__getattribute__"])


def _wrapped(descriptor: Any) -> int | None:
    """The C function a slot's wrapper (a wrapper_descriptor: its d_wrapped, the last of
    its seven words) calls; None for anything else."""
    if type(descriptor) is not _WRAPPER or _WRAPPER.__basicsize__ != 7 * 8:
        return None
    import ctypes

    return (ctypes.c_void_p * 7).from_address(id(descriptor))[6]


def _declares(kind: type, name: str) -> bool:
    """Whether class `kind` is a dataclass with a field `name` of its own (its attribute
    `name` is that field's default or slot, as its module declared it)."""
    own = _DICT(kind).get(FIELDS)
    return type(own) is dict and name in own


def made_by(kind: type, module: str) -> bool:
    """Whether routine module `module` made class `kind`: a class no call shares (C's are
    not heap types, and every other shared one is immutable: `share`) that names no other
    routine's module nor pyfuncs' as its own. (A class the standard library makes for the
    routine names the library's module: make_dataclass's says `types`.)"""
    if _FLAGS(kind) & (HEAPTYPE | IMMUTABLE) != HEAPTYPE:
        return False
    named = _DICT(kind).get("__module__")
    return named == module or not (type(named) is str and named.startswith(_MODULES))


def _machinery(name: str) -> bool:
    """`__x__` (the interpreter's) or `_x_` (enum's): sandbox._machinery."""
    return (name.startswith("__") and name.endswith("__")) or (
        len(name) > 2 and name[0] == name[-1] == "_" and name[1] != "_" and name[-2] != "_"
    )


def _named(key: str, value: Any) -> None:
    raise TypeError(
        f"pyfuncs: a routine's class may say its {key} is plain text only (and its module is "
        f"its own or no routine's), not {type(value).__name__}: what reads it may keep it, or "
        "compare it, where other calls do"
    )


def _names(key: str, value: Any, module: str) -> bool:
    if key == "__doc__":
        return value is None or type(value) is str
    if type(value) is not str:
        return False
    # (a name of another routine's module, or of pyfuncs': dataclasses compile the methods
    # they make with the globals of the module a class names)
    return key != "__module__" or value == module or not value.startswith(_MODULES)


_NAME = type.__dict__["__name__"].__get__
_MODULES = ("routine:", "pyfuncs")


def install() -> None:
    """Keep the flags, and check special methods, from now on, in this process."""
    withhold()
    share(*_every_class().values())
    if not any(isinstance(finder, _Importing) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Importing())
    backstop.check_classes(check_made, check_set)
