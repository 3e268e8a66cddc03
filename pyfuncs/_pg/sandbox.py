"""What routine code runs with: builtins without dynamic code and namespaces, an importer
that gives read-only views of the allowed modules (views.py), attribute access by name that
refuses private names, the `pyfuncs` it imports, and the helpers the inserted guards call:
one set per routine module, because what a module may change is what it made itself.

Behind the policy check done before deploy, and defence in depth like it: see the README's
security model for what this holds and what it does not.
"""

from __future__ import annotations

import _string  # the parser behind str.format
import abc
import marshal
import sys
import types
from _frozen_importlib_external import MAGIC_NUMBER

try:  # (here: imported later, it is an import whose classes are walked, see classes.sharing)
    from _sha256 import sha256  # type: ignore[import-not-found]  # (hashlib's OpenSSL: 0.8 ms)
except ImportError:  # (Python 3.12 names it _sha2)
    from hashlib import sha256

from . import backstop, bounded, classes, errors, lazy, views, vocabulary
from . import watchdog as stopping
from .imported import imported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

# __import__ is replaced by one limited to the allow-list
REMOVED_BUILTINS = frozenset(vocabulary.FORBIDDEN_BUILTINS) | {"__loader__", "__spec__"}

# What makes the `pyfuncs` module a routine module imports, given the module's namespace:
# the public API for routines only, with a `db` of the module's own (boot() sets it in the
# database; pyfuncs._sandbox sets one whose decorators record what they mark).
API: Callable[[dict[str, Any]], types.ModuleType] | None = None

# views of allowed modules, by name and allow-list (read-only: every routine shares them;
# random's, by routine module too)
VIEWS: dict[tuple[str, frozenset[str], str], types.ModuleType] = {}

# instances of these classes from outside a routine's module it may change all the same:
# each is made for the routine (decimal.localcontext() gives a copy of the context, and an
# exception is raised for the call that caught it). decimal.Context joins once decimal has
# been imported (before, no instance of it can exist): see _mutable_instances
_MUTABLE_INSTANCES: tuple[type, ...] = (BaseException,)


def _mutable_instances() -> tuple[type, ...]:
    global _MUTABLE_INSTANCES
    if len(_MUTABLE_INSTANCES) == 1:
        decimal = imported("decimal")
        if decimal is not None:
            _MUTABLE_INSTANCES = (decimal.Context, BaseException)
    return _MUTABLE_INSTANCES


def _view(name: str, allowed: frozenset[str], owner: str = "") -> types.ModuleType:
    # random's view is the routine module's own: its functions draw from a generator of the
    # module's (bounded.guarded_random), which no other module's draws tell anything about
    key = (name, allowed, owner if name == "random" else "")
    found = VIEWS.get(key)
    if found is None:  # (made held: stopping.held, as an import)
        found = VIEWS[key] = stopping.held(_make_view, name, allowed)
    return found


def _make_view(name: str, allowed: frozenset[str]) -> types.ModuleType:
    if name in allowed and _made_already(name, allowed):
        return views.view(name, allowed)
    if name in allowed:
        with classes.sharing():  # (a stand-in's classes are every call's too)
            found = views.view(name, allowed, STAND_INS[name]() if name in STAND_INS else None)
        backstop.refresh()  # (it may have loaded an extension module)
        return found
    found = views.ModuleView(f"{name} (view)")  # a package only some of whose modules
    for child in sorted(m for m in allowed if m.startswith(name + ".")):  # are allowed
        rest = child[len(name) + 1 :]
        if "." not in rest:
            types.ModuleType.__setattr__(found, rest, _view(child, allowed))
    return found


def _made_already(name: str, allowed: frozenset[str]) -> bool:
    """Whether a view of the allowed module `name` makes nothing: it and its allowed
    submodules are imported (`from __future__ import annotations`: the runtime's modules
    imported it), none answers the attributes it lacks with code (a module's __getattr__),
    and it has no stand-in. Then no class is made to share, no extension module loaded: the
    two walks of every class (classes.sharing) are not needed."""
    if name in STAND_INS:
        return False
    for module in (name, *(m for m in allowed if m.startswith(name + "."))):
        real = sys.modules.get(module)
        if real is None or "__getattr__" in vars(real):
            return False
    return True


# modules the C code of allowed ones imports as it runs (datetime's strptime imports
# _strptime, its strftime time): C imports through the `__import__` of the code that called
# it, a routine's, and uses the module it then finds in sys.modules. The routine's import
# gets a module with nothing in it.
FOR_C_CODE = frozenset({"_strptime", "time"})


class _ForCCode(views.ModuleView):
    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"pyfuncs: module {self.__name__.partition(' ')[0]!r} is not allowed in a routine "
            f"(only the C code of an allowed module uses it), so it has no {name!r}"
        )


def _for_c_code(name: str) -> types.ModuleType:
    __import__(name)  # (boot's hooks hold what it keeps: bounded.hold_strptime)
    key: tuple[str, frozenset[str], str] = (name, frozenset(), "")
    found = VIEWS.get(key)
    if found is None:
        found = VIEWS[key] = _ForCCode(f"{name} (for C code only)")
    return found


def contain_copies(copy: types.ModuleType) -> None:
    """Copying an object (copy.copy, copy.deepcopy: dataclasses.asdict and astuple, a
    UserDict's copy) calls its class's __reduce_ex__, makes an object with the function it
    names and then sets the state it gives on that object, with the real setattr. A
    routine's class could name a function that returns a shared object (a module's constant,
    an enum member) and so change it past every check. So, once for the backend, as soon as
    `copy` is imported (boot.py): when state is set, the object made must be of the class of
    the object copied, whose instances are its module's own."""
    real = copy._reconstruct
    if getattr(real, "contained", False):
        return

    import copyreg

    # copyreg's constructors make an object of the class they are given with the C
    # constructor of another (`_reconstructor(cls, base, state)` is `base.__new__(cls, ...)`),
    # bypassing the class's own __new__; copyreg picks that class from `x.__class__`, which a
    # routine's class can make say anything (a red team made a Struct subclass that way,
    # and re-initialised it while it packed: chosen bytes over the C stack)
    constructors = (copyreg._reconstructor, copyreg.__newobj__, copyreg.__newobj_ex__)  # type: ignore[attr-defined]

    def reconstruct(x: Any, memo: Any, func: Any, args: Any, state: Any = None,
                    listiter: Any = None, dictiter: Any = None, **kwargs: Any) -> Any:  # fmt: skip
        if func in constructors and (not args or args[0] is not type(x)):
            raise TypeError(
                f"pyfuncs: copying a {_NAME(type(x))} would make an object of another class"
            )
        if state is not None or listiter is not None or dictiter is not None:
            func = _making(func, type(x))
        # slot state is set with the real setattr, and `__class__` among it would move the
        # new object into another class (a red team's made a datetime a class of its own
        # whose __new__ returned bytes, to C's astimezone): names of the interpreter's and
        # of enum's are refused there
        slots = state[1] if type(state) is tuple and len(state) == 2 else None
        if isinstance(slots, dict) and any(
            not isinstance(key, str) or _machinery(key) for key in dict.keys(slots)
        ):
            raise TypeError(
                f"pyfuncs: copying a {_NAME(type(x))} would set a name of the interpreter's"
            )
        return real(x, memo, func, args, state, listiter, dictiter, **kwargs)

    reconstruct.contained = True  # type: ignore[attr-defined]
    copy._reconstruct = reconstruct  # type: ignore[attr-defined]


def contain_typing(typing: types.ModuleType) -> None:
    """typing caches what its subscriptions make (`Optional[int]`, `Callable[..., T]`) in
    lru caches every call in the backend shares. Keyed by the arguments' equality, a
    routine's class whose metaclass said it equals int (and hashed like it) was cached in
    int's place, and a later call's `Optional[int]` was `Optional[ThatClass]`; an object of
    the routine's with its own `__eq__` (`Literal[obj]`) would run it in other calls. And
    whatever a cache keeps, it lets go of in whichever call later evicts it: a red team's
    object, kept so, was freed in another role's call and its finalizer ran there. So, once
    for the backend, as soon as typing is imported (boot.py), its caches key by identity,
    and keep only what every call shares (_everyones): a subscription of anything of a
    routine's is made anew each time, as typing does for unhashable arguments."""
    import gc

    _TYPING_OWN.update(map(id, vars(typing).values()))  # (typing keeps them alive)
    code = typing._SpecialForm.__getitem__.__code__  # every cached subscription's (_tp_cache)
    for function in gc.get_referrers(code):
        if not isinstance(function, types.FunctionType) or function.__code__ is not code:
            continue
        cell = function.__closure__[code.co_freevars.index("cached")]  # type: ignore[index]
        if not getattr(cell.cell_contents, "contained", False):
            cell.cell_contents = _by_identity(cell.cell_contents)


def _by_identity(cached: Any) -> Any:
    """What lru_cache `cached` caches, cached by its arguments' identity (the keys keep them
    alive, so an identity is never another object's while its entry is there)."""
    import functools

    function = cached.__wrapped__

    def make(key: _Identity) -> Any:
        return function(*key.args, **key.kwds)

    made = functools.lru_cache(cached.cache_parameters()["maxsize"])(make)

    def by_identity(*args: Any, **kwds: Any) -> Any:
        return made(_Identity(args, kwds))

    by_identity.contained = True  # type: ignore[attr-defined]
    by_identity.cache_clear = made.cache_clear  # type: ignore[attr-defined]
    return by_identity


class _Identity:
    __slots__ = ("args", "hash", "key", "kwds")

    def __init__(self, args: tuple[Any, ...], kwds: dict[str, Any]) -> None:
        self.args, self.kwds = args, kwds
        self.key = (_identity(args), tuple(kwds), _identity(tuple(kwds.values())))
        self.hash = hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and self.key == other.key  # ints and tuples only

    def __hash__(self) -> int:
        return self.hash


def _identity(value: Any) -> Any:
    # a TypeError, on which typing calls the function uncached: for what it may not keep,
    # and for the unhashable
    if type(value) is tuple:
        return tuple(map(_identity, value))
    if not _everyones(value):
        raise TypeError("pyfuncs: not cached (a routine's)")
    hash(value)
    return id(value)


_TYPING_OWN: set[int] = set()  # typing's own objects (`Any`, `T`, `Optional`), by id
_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None), type(...)})
_C_ALIASES = (types.GenericAlias, types.UnionType)  # (`list[int]`, `int | None`)
_SLOTS_WITHOUT_STATE = ((), ("__weakref__",), "__weakref__")


def _everyones(value: Any, depth: int = 0) -> bool:
    """Whether `value` is, and holds, only what every call shares: values of the plain
    built-in types, typing's own objects, classes no routine can change (C's, and those
    made immutable: classes.share), and instances of typing's classes (aliases, TypeVars)
    whose state is all such (a TypeVar of a routine's, `Annotated[int, obj]` are not).
    Told by the object's real class and real dict, which a routine's code cannot answer
    for; the state of instances of other classes (a function's closure, a staticmethod's
    function, an exception's arguments: a red team's kept so) is not all in a dict."""
    kind = type(value)
    if kind in _PLAIN or id(value) in _TYPING_OWN:
        return True
    if depth > 32 or not _unchangeable(kind):
        return False
    if kind is tuple or kind is list:  # (a list: Callable[[int], str])
        return all(_everyones(item, depth + 1) for item in value)
    if any(k is type for k in classes._MRO(kind)):  # a class (metaclasses are C's or shared)
        return _unchangeable(value)
    if kind in _C_ALIASES:
        origin = value.__origin__ if kind is types.GenericAlias else None
        return _everyones(origin, depth + 1) and _everyones(value.__args__, depth + 1)
    if classes._MODULE(kind) != "typing":
        return False
    if any(classes._DICT(k).get("__slots__", ()) not in _SLOTS_WITHOUT_STATE
           for k in classes._MRO(kind)[:-1]):  # fmt: skip
        return False  # (state kept in slots is not in the dict)
    try:
        state = object.__getattribute__(value, "__dict__")
    except AttributeError:
        return False
    return type(state) is dict and all(
        type(name) is str and _everyones(item, depth + 1) for name, item in state.items()
    )


def _unchangeable(kind: type) -> bool:
    flags = classes._FLAGS(kind)
    return not flags & classes.HEAPTYPE or bool(flags & classes.IMMUTABLE)


def _making(func: Callable[..., Any], kind: type) -> Callable[..., Any]:
    def make(*args: Any) -> Any:
        made = func(*args)
        if type(made) is not kind:
            raise TypeError(
                f"pyfuncs: copying a {_NAME(kind)} made a {_NAME(type(made))}: a copy "
                f"may only set state on a new {_NAME(kind)}"
            )
        return made

    return make


def guarded_dataclasses() -> types.ModuleType:
    """dataclasses, whose `dataclass` and `make_dataclass` refuse field names that are not
    plain identifiers (dataclasses writes them into the source of the methods it compiles,
    and runs them without the runtime's guards; a class made with `type(name, bases,
    namespace)` can have any string as an annotation's name), or that are names of the
    interpreter's or of enum's (`__x__`, `_x_`): `asdict`, `astuple` and `replace` read each
    field with getattr, past the policy's check of names (a red team read datetime's
    `__new__` so, to make an instance its class's own constructor would not). Nor may a
    field be named as an attribute of a class the module did not make, or as another
    class's private one (classes.check_fields: a red team's field `flags` under
    decimal.Context had `replace` hand it C's SignalDict): checked as the class is made,
    for the bases `make_dataclass` is given, as a routine's class inherits fields
    (classes.check_made) and, again, for the object `replace`, `asdict` and `astuple` read."""
    import dataclasses
    import keyword

    def plain(name: Any) -> None:
        if (type(name) is not str or not name.isidentifier() or keyword.iskeyword(name)
                or _machinery(name)):  # fmt: skip
            raise TypeError(
                f"pyfuncs: a dataclass's fields must be named by identifiers other than the "
                f"interpreter's and enum's (__x__, _x_), not {name!r}"
            )

    def dataclass(cls: Any = None, /, **options: Any) -> Any:
        def wrap(cls: Any) -> Any:
            # (dataclasses marks what it is given before it reads its MRO: a red team's
            # dataclass(typing.AnyStr) failed there, and left a mark on what every call
            # shares)
            if not (isinstance(cls, type) and classes.made_by(cls, _calling_module())):
                raise TypeError("pyfuncs: dataclass() takes a class of the routine's own")
            annotations = _DICT(cls).get("__annotations__", {})
            if type(annotations) is not dict:  # dataclasses reads a subclass's own items()
                raise TypeError("pyfuncs: a dataclass's annotations must be a plain dict")
            for name in annotations:
                plain(name)
            mro = _MRO(cls)  # (checked before dataclasses reads each default: getattr)
            names = [*annotations, *classes.inherited_fields(mro)]
            # (getattr(cls, name) finds the metaclass's attributes too: ABCMeta.register)
            classes.check_fields(
                names, (*mro, *_MRO(type(cls))), _calling_module(), repr(_NAME(cls))
            )
            return _made_by_the_call(dataclasses.dataclass, cls, **options)

        return wrap if cls is None else wrap(cls)

    def make_dataclass(cls_name: Any, fields: Any, /, **options: Any) -> Any:
        fields = list(fields)  # (each a name, or a tuple that starts with one)
        names = [item[0] if isinstance(item, tuple) and item else item for item in fields]
        for name in names:
            plain(name)
        bases = options.get("bases", ())
        bases = tuple(bases) if type(bases) in (tuple, list) else ()  # (else: its TypeError)
        options["bases"] = bases
        mro = [k for base in bases if isinstance(base, type) for k in _MRO(base)]
        names += classes.inherited_fields(mro)
        metaclasses = [k for base in bases if isinstance(base, type) for k in _MRO(type(base))]
        classes.check_fields(names, mro + metaclasses, _calling_module(), repr(cls_name))
        return _made_by_the_call(dataclasses.make_dataclass, cls_name, fields, **options)

    def read_by_name(real: Callable[..., Any]) -> Callable[..., Any]:
        # the object's class, again (and the classes of the dataclasses asdict and astuple
        # walk inside it were checked as they were made); dataclasses reads the fields an
        # object has by getattr: they must be its class's (a copy's state could give it
        # a dict of its own)
        def reading(obj: Any, /, *args: Any, **kwargs: Any) -> Any:
            if not isinstance(obj, type):
                mro = _MRO(type(obj))
                found = getattr(obj, classes.FIELDS, None)
                if found is not None and not any(
                    found is _DICT(k).get(classes.FIELDS) for k in mro
                ):
                    raise TypeError(
                        f"pyfuncs: a {_NAME(type(obj))}'s dataclass fields are not its class's"
                    )
                names = classes.inherited_fields(mro)
                classes.check_fields(names, mro, _calling_module(), repr(_NAME(type(obj))))
            return real(obj, *args, **kwargs)

        reading.__name__ = real.__name__
        return reading

    reads = [
        read_by_name(f) for f in (dataclasses.replace, dataclasses.asdict, dataclasses.astuple)
    ]
    return bounded._stand_in(dataclasses, dataclass, make_dataclass, *reads)


def _calling_module() -> str:
    """The name of the routine module whose call is under way ("" outside calls)."""
    module = stopping.CALLING[0]
    name = module.get("__name__") if module is not None else None
    return name if type(name) is str else ""


# the namespaces of the routine modules whose dataclasses are being made, innermost last
_MAKING: list[dict[str, Any]] = []


def _made_by_the_call(make: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """`make(*args, **options)` (dataclasses'), whose methods are the call's module's
    (contain_generated)."""
    module = stopping.CALLING[0]
    if module is None or "pyfuncs.own" not in module:
        raise TypeError("pyfuncs: a routine's dataclass is made in a call of its routines")
    _MAKING.append(module)
    try:
        return make(*args, **options)
    finally:
        _MAKING.pop()


def contain_generated(dataclasses: types.ModuleType) -> None:
    """dataclasses compiles the methods it makes (`__init__`, `__repr__`, `__eq__`,
    `__hash__`, a frozen class's `__setattr__`...) with the globals of the module its class
    names, and they ran in any call: a routine's globals, whose `hash`, `type` and
    `NotImplemented` it may rebind (a red team's frozen class called C's `list.append` of its
    choosing as it refused an assignment), and no test that the call is the module's (a red
    team's `__hash__`, reached by another role's isinstance, walked a tuple of 10**10 items
    there). So, once per backend, as dataclasses is imported: the methods of a routine's
    dataclass read its module's builtins only, and refuse to run outside its module's calls,
    as the module's own code does (_its_own)."""
    create = dataclasses._create_fn
    if getattr(create, "held", False):
        return

    def _create_fn(name: str, args: Any, body: Any, *, globals: Any = None, locals: Any = None,
                   return_type: Any = dataclasses.MISSING) -> Any:  # fmt: skip
        if _MAKING:
            module = _MAKING[-1]
            locals = {} if locals is None else locals
            locals["__pyfuncs_own__"] = module["pyfuncs.own"]
            body = ["__pyfuncs_own__()", *body]
            globals = {"__builtins__": module["__builtins__"]}
        return create(name, args, body, globals=globals, locals=locals, return_type=return_type)

    _create_fn.held = True  # type: ignore[attr-defined]
    dataclasses._create_fn = _create_fn  # type: ignore[attr-defined]


# modules routines get a changed copy of (bounded work, producers that come back to Python)
STAND_INS = {
    "math": bounded.guarded_math, "itertools": lazy.stand_in_itertools,
    "struct": bounded.guarded_struct, "random": bounded.guarded_random,
    "secrets": bounded.guarded_secrets, "decimal": bounded.guarded_decimal,
    "hashlib": bounded.guarded_hashlib, "hmac": bounded.guarded_hmac,
    "dataclasses": guarded_dataclasses,
    "uuid": bounded.guarded_uuid,
    "collections": bounded.guarded_collections, "json": bounded.guarded_json,
}  # fmt: skip


def _owner(obj: object) -> str | None:
    """The module an object belongs to, as far as changing it goes."""
    if isinstance(obj, types.ModuleType):
        return None
    if isinstance(obj, type | types.FunctionType | types.MethodType):
        owner = getattr(obj, "__module__", None)
    else:
        owner = type(obj).__module__
    return owner if isinstance(owner, str) else None


def _format_fields(template: str, depth: int = 0) -> None:
    """Refuse a format template whose fields walk private or frame attributes."""
    for _, field, spec, _ in _string.formatter_parser(template):
        if field is not None:
            _, rest = _string.formatter_field_name_split(field)
            for is_attribute, name in rest:
                if is_attribute and (name.startswith("_") or name in vocabulary.FRAME_ATTRIBUTES):
                    raise AttributeError(
                        f"pyfuncs: a format field may not read the attribute {name!r}"
                    )
        if spec and depth < 2:
            _format_fields(spec, depth + 1)


# the private names a routine may read of any named tuple (its documented API)
NAMED_TUPLE_API = frozenset({"_asdict", "_replace", "_fields", "_make"})
# enum keeps its machinery under names of the form _x_ in the classes of routines too: an
# enum with a C type mixed in holds that type's constructor as `_new_member_`, which a red
# team used to run a C __init__ again on an object in use (a set being added to, a Struct
# packing). Of these, routines read only a member's name and value.
ENUM_MEMBER_API = frozenset({"_name_", "_value_"})


def _machinery(name: str) -> bool:
    """Whether `name` is one of the interpreter's (`__x__`) or of enum's (`_x_`)."""
    return _sunder(name) or (name.startswith("__") and name.endswith("__"))


def _sunder(name: str) -> bool:
    """`_x_`: one underscore at each end (not a dunder)."""
    return len(name) > 2 and name[0] == name[-1] == "_" and name[1] != "_" and name[-2] != "_"


def helpers(module_name: str) -> dict[str, Any]:
    """What the code guards.py inserts calls, for one routine module: its globals."""

    def writable(obj: Any) -> Any:
        """`obj.x = ...` and `del obj.x`: only on what this module made."""
        if _owner(obj) == module_name or isinstance(obj, _mutable_instances()):
            return obj
        raise AttributeError(
            f"pyfuncs: a routine may not change {type(obj).__name__} objects it did not make: "
            "every call in this backend shares them"
        )

    def private(obj: Any, name: str) -> Any:
        """`obj._x`: of what this module made, and a named tuple's API. The private state of
        what allowed modules made (an enum's member maps, say) is every call's."""
        if name in NAMED_TUPLE_API:
            return getattr(obj, name)
        if _sunder(name) and name not in ENUM_MEMBER_API:
            raise AttributeError(
                f"pyfuncs: a routine may not read {name!r}: names of the form _x_ are enum's "
                "machinery (read a member's _name_ and _value_, or its name and value)"
            )
        if _owner(obj) == module_name:
            # and not one a class of the module inherits from a class every call shares,
            # nor, for a class, one its metaclass has (ABCMeta's `_dump_registry` printed
            # the caches of a routine's abstract class, where other calls' checks land)
            for klass in _MRO(obj if isinstance(obj, type) else type(obj)):
                if name in _DICT(klass):
                    if _owner(klass) == module_name or name in getattr(obj, "__dict__", ()):
                        return getattr(obj, name)
                    break
            else:
                if not isinstance(obj, type) or not any(
                    name in _DICT(klass) for klass in _MRO(type(obj))
                ):
                    return getattr(obj, name)  # an instance's own, or none (AttributeError)
        raise AttributeError(
            f"pyfuncs: a routine may not read the private attribute {name!r} of "
            f"{type(obj).__name__} objects it did not make: every call in this backend "
            "shares them"
        )

    def attribute(obj: Any, name: str) -> Any:
        value = getattr(obj, name)
        read = READS.get(name)
        if read is not None:
            return _checked_read(obj, value, *read)
        if name == "register" and isinstance(obj, type):
            if isinstance(obj, abc.ABCMeta) and any(
                isinstance(klass, abc.ABCMeta) and _owner(klass) != module_name
                for klass in _MRO(obj)
            ):  # a shared ABC answers for its subclasses' registries too
                _shared_abc(obj)
            if issubclass(obj, abc.ABCMeta):  # ABCMeta.register(abc, cls): the abc first
                return lambda abstract, *args, **kwargs: value(
                    attribute(abstract, "register") and abstract, *args, **kwargs)  # fmt: skip
        if name in ("format", "format_map"):
            return _checked_format(value)
        return value

    return {
        "pyfuncs.guard": stopping.guard, "pyfuncs.mul": bounded.checked_mul,
        "pyfuncs.pow": bounded.checked_pow, "pyfuncs.lshift": bounded.checked_lshift,
        "pyfuncs.check_mul": bounded.check_mul, "pyfuncs.check_pow": bounded.check_pow,
        "pyfuncs.check_lshift": bounded.check_lshift, "pyfuncs.writable": writable,
        "pyfuncs.attribute": attribute, "pyfuncs.range": range,
        "pyfuncs.floordiv": bounded.checked_floordiv, "pyfuncs.mod": bounded.checked_mod,
        "pyfuncs.check_floordiv": bounded.check_divide, "pyfuncs.check_mod": bounded.check_mod,
        "pyfuncs.spec": bounded.check_spec,
        "pyfuncs.match_class": match_class, "pyfuncs.private": private,
        "pyfuncs.delegate": delegate,
    }  # fmt: skip


def _checked_read(
    obj: Any, value: Any, kinds: bounded.Kinds, check: Callable[[Any, Any], Any]
) -> Any:
    """A method of READS, read through its check: bound (`s.replace`) or from its class
    (`str.replace`, called with the object first)."""
    if not isinstance(kinds, tuple):  # the types of a module imported only when needed
        kinds = kinds()
    if type(obj) is super:  # `super().ljust`: the method of what super was asked about
        obj = obj.__self__  # type: ignore[attr-defined]
    if isinstance(obj, kinds):
        return check(obj, value)
    if isinstance(obj, type) and issubclass(obj, kinds):
        if type(value) is types.BuiltinMethodType and value.__self__ is obj:
            return check(obj, value)  # a class method read from the class (`int.from_bytes`)
        if hasattr(value, "__get__"):
            return lambda instance, *args, **kwargs: check(instance, value.__get__(instance))(
                *args, **kwargs)  # fmt: skip
    return value


def _shared_abc(obj: Any) -> None:
    raise AttributeError(
        f"pyfuncs: a routine may not register virtual subclasses of {obj.__name__}: it is, "
        "or derives from, an ABC every call in this backend shares"
    )


def contain_abcs() -> None:
    """`isinstance(x, collections.abc.Mapping)` in any call asks every subclass of Mapping,
    a routine's too: its `__subclasshook__` would run in other roles' calls and decide for
    them. So, once per backend, abc.ABCMeta refuses to make a class with such a hook of a
    routine's own, or whose names typing's protocol check would read with the routine's
    methods. (A metaclass answered these for its classes too; routines may not define
    metaclasses: see classes.py.)"""
    new = abc.ABCMeta.__new__
    if getattr(new, "contained", False):
        return

    def __new__(mcls: Any, name: str, bases: Any, namespace: Any, /, **kwargs: Any) -> Any:
        # typing's protocol check reads the names (and annotations) of every class under
        # the ABC asked about, with their own methods: only plain str names, in a plain
        # dict; and a protocol of a routine's under collections.abc's ABCs would have
        # typing's check read its attributes in other roles' isinstance (a red team ran its
        # code there, through a str subclass's startswith)
        annotations = (
            dict.get(namespace, "__annotations__", {}) if isinstance(namespace, dict) else {}
        )
        if (
            not isinstance(namespace, dict)
            or type(annotations) is not dict
            or any(
                type(key) is not str
                for names in (namespace, annotations)
                for key in dict.keys(names)
            )
        ):
            raise TypeError(f"pyfuncs: the abstract class {name!r} must have plain str names")
        if _extends_an_abc_as_a_protocol(bases):
            raise TypeError(
                f"pyfuncs: the protocol {name!r} may not extend an abstract class that is not "
                "a protocol (collections.abc's): isinstance of that class in every call would "
                "read its attributes"
            )
        # read as type() will copy it (a dict's own items, whatever a subclass says)
        hook = dict.get(namespace, "__subclasshook__") if isinstance(namespace, dict) else None
        code = getattr(getattr(hook, "__func__", hook), "__code__", None)
        if hook is not None and (code is None or id(code) in stopping.ROUTINE_CODE):
            raise TypeError(
                f"pyfuncs: the abstract class {name!r} may not define __subclasshook__: it "
                "would decide isinstance and issubclass for every call in this backend"
            )
        return new(mcls, name, bases, namespace, **kwargs)

    __new__.contained = True  # type: ignore[attr-defined]
    abc.ABCMeta.__new__ = staticmethod(__new__)  # type: ignore[method-assign]
    _contain_abc_caches()


def _extends_an_abc_as_a_protocol(bases: Any) -> bool:
    protocol = getattr(imported("typing"), "Protocol", None)  # (None while typing loads)
    if protocol is None:
        return False
    mro = {k for base in bases if isinstance(base, type) for k in _MRO(base)}
    return protocol in mro and any(
        isinstance(k, abc.ABCMeta) and k is not protocol and not _DICT(k).get("_is_protocol")
        for k in mro
    )  # fmt: skip


def _contain_abc_caches() -> None:
    """isinstance against an ABC caches what an instance says its class is: an instance
    whose class says it is another (`__class__`, or a `__getattribute__`) would put that
    class in a shared ABC's cache. Such instances are checked as what they are."""
    meta = abc.ABCMeta
    instancecheck, subclasscheck = (
        meta.__dict__["__instancecheck__"],
        meta.__dict__["__subclasscheck__"],
    )

    def checked_instancecheck(cls: Any, instance: Any) -> bool:
        kind = type(instance)
        if any("__class__" in _DICT(k) or "__getattribute__" in _DICT(k)
               for k in _MRO(kind) if k is not object):  # fmt: skip
            return bool(subclasscheck(cls, kind))  # what it is, not what it says
        return bool(instancecheck(cls, instance))

    meta.__instancecheck__ = checked_instancecheck  # type: ignore[method-assign]

    def __subclasses__(cls: Any) -> list[Any]:
        # the walk of a class every call shares asks none of a routine's classes (a class
        # every call shares is unchangeable: classes.py), whose registry, hook or caches would
        # decide, or see, every call's answers (a red team's class under Mapping, with
        # another class's registry, made every role's isinstance("text", Mapping) True);
        # a real subclass is found through its own __mro__, and routines may not register
        # under a class every call shares
        made = classes._SUBCLASSES(cls)
        return [kind for kind in made if _unchangeable(kind)] if _unchangeable(cls) else made

    meta.__subclasses__ = __subclasses__  # type: ignore[assignment]


def _template(obj: Any) -> Any:
    """The template a format method formats: a str, or the text of a UserString."""
    collections = imported("collections")
    if collections is not None and isinstance(obj, collections.UserString):
        return obj.data
    return obj


def _checked_format(method: Callable[..., Any]) -> Callable[..., Any]:
    """A `format` or `format_map` method that refuses templates whose fields walk attributes
    a routine may not read, or whose widths or precisions are beyond the bound: str's own,
    bound (`"{0.x}".format`, `super().format` in a subclass) or not (`str.format`, called
    with the template first), and UserString's, which call str's in code that is not the
    routine's. str's method is then called on a template of the routine's rebuilt (see
    _format_specs): its nested fields are not evaluated a second time."""
    bound = getattr(method, "__self__", None)
    mapped = getattr(method, "__name__", "") == "format_map"

    def checked(*args: Any, **kwargs: Any) -> Any:
        unbound = bound is None or isinstance(bound, type)
        template = _template(args[0] if args else None) if unbound else _template(bound)
        if not isinstance(template, str) or not _is_str_format(method):
            return method(*args, **kwargs)  # a routine's own method: what it calls is checked
        template = bounded.exact_str(template)
        _format_fields(template)
        values = args[1:] if unbound else args
        if mapped:
            if len(values) != 1 or kwargs:
                return method(*args, **kwargs)  # the method reports it
            return str.format_map(_format_specs(template, (), values[0], True), values[0])
        return str.format(_format_specs(template, values, kwargs, False), *values, **kwargs)

    return checked


def _is_str_format(method: Any) -> bool:
    """Whether `method` is str's format or format_map (bound or not) or UserString's."""
    if method is str.format or method is str.format_map:
        return True
    if isinstance(method, types.BuiltinMethodType):
        return isinstance(method.__self__, str) and method.__name__ in ("format", "format_map")
    collections = imported("collections")
    function = getattr(method, "__func__", method)
    return collections is not None and (
        function is collections.UserString.format or function is collections.UserString.format_map
    )


_CONVERSIONS: dict[str | None, Callable[[Any], Any]] = {"r": repr, "s": str, "a": ascii}


def _format_specs(template: str, args: Any, names: Any, mapped: bool) -> str:
    """The template str.format is to format instead of `template`: every field numbered
    explicitly and every nested field (`{:>{}}`) replaced by its text, read from the
    arguments once, as str.format reads them; refused if a width or precision is beyond the
    bound (bounded.check_spec). Where reading a nested field fails, that error is raised."""
    auto, manual, out = 0, False, []

    def number(field: str) -> str:
        nonlocal auto, manual
        first = _string.formatter_field_name_split(field)[0]
        if first == "":
            if manual:
                raise ValueError(
                    "cannot switch from manual field specification to automatic field numbering"
                )
            if mapped:
                raise ValueError("Format string contains positional fields")
            auto += 1
            return f"{auto - 1}{field}"
        if isinstance(first, int):
            if auto:
                raise ValueError(
                    "cannot switch from automatic field numbering to manual field specification"
                )
            manual = True
        return field

    for literal, field, spec, conversion in _string.formatter_parser(template):
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        field = number(field)  # numbered before the fields in its spec, as str.format does
        if spec and "{" in spec:
            parts = []
            for inner_literal, inner, inner_spec, inner_conversion in _string.formatter_parser(
                spec
            ):
                parts.append(inner_literal)
                if inner is None:
                    continue
                inner = number(inner)
                first, rest = _string.formatter_field_name_split(inner)
                value = args[first] if isinstance(first, int) else names[first]
                for is_attribute, key in rest:
                    value = getattr(value, key) if is_attribute else value[key]
                value = _CONVERSIONS.get(inner_conversion, lambda v: v)(value)
                text = format(value, bounded.check_spec(inner_spec or ""))
                parts.append(bounded.exact_str(text) if isinstance(text, str) else text)
            spec = "".join(parts)
            if "{" in spec or "}" in spec:
                raise ValueError(f"pyfuncs: a nested format field gave {spec!r}, with braces")
        spec = bounded.check_spec(spec)
        out.append(
            f"{{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
        )
    return "".join(out)


_MRO: Callable[[type], tuple[type, ...]] = type.__dict__["__mro__"].__get__
_DICT: Callable[[type], Any] = type.__dict__["__dict__"].__get__
_NAME: Callable[[type], str] = type.__dict__["__name__"].__get__  # (whatever a metaclass says)


def match_class(cls: Any) -> Any:
    """The class of a class pattern with positional sub-patterns (guards.py inserts the
    call before the match statement): refused unless the attributes those sub-patterns
    read, its `__match_args__`, are public names, given by a plain tuple in the class that
    nothing of the routine's computes (a descriptor; and routines may not define the
    metaclasses whose `__getattribute__` would: classes.py)."""
    if type not in _MRO(type(cls)):
        return cls  # not a class: the match statement refuses it
    for klass in _MRO(cls):
        own = _DICT(klass)
        if "__match_args__" in own:
            names = own["__match_args__"]
            if type(names) is not tuple or not all(
                type(n) is str and not n.startswith("_") and n not in vocabulary.FRAME_ATTRIBUTES
                and n not in CHECKED_READS for n in names):  # fmt: skip
                raise TypeError(
                    f"pyfuncs: a class pattern may not read {names!r} of a {cls.__name__}: "
                    "__match_args__ must be a tuple of public attribute names"
                )
            break
    return cls


def delegate(iterable: Any) -> Any:
    """What `yield from iterable` delegates to: a generator as it is, anything else through
    a generator of the runtime's, which only asks it for its items. Python closes (and
    throws into, and sends to) what a generator delegates to by the `close` (`throw`,
    `send`) it finds on that object, its own attributes first: a red team's object kept
    `items.pop` as its `close`, which C called in another role's call when the collector
    closed the generator there."""
    if type(iterable) is types.GeneratorType:
        return iterable
    return _items(iter(iterable))


def _items(iterator: Any) -> Any:
    for item in iterator:  # noqa: UP028  (a loop: `yield from` would close it by its close)
        yield item


def restricted_builtins(
    allowed: frozenset[str], module_name: str, api: types.ModuleType | None = None
) -> dict[str, Any]:
    """The builtins of routine module `module_name`: `api` is the `pyfuncs` it imports."""
    import builtins

    checked = helpers(module_name)
    attribute, writable = checked["pyfuncs.attribute"], checked["pyfuncs.writable"]

    def guarded_import(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        if level == 0 and name in FOR_C_CODE:
            return _for_c_code(name)
        if level != 0 or name not in allowed:
            raise ImportError(f"pyfuncs: import of {name!r} is not allowed in a routine")
        if name == "pyfuncs" and api is not None:
            return api
        # `import a.b` binds a, `from a.b import c` reads c of a.b (as __import__ does)
        return _view(name if fromlist else name.partition(".")[0], allowed, module_name)

    def public(name: object) -> str:
        # a subclass of str could answer startswith() and `in` as it likes: what is checked,
        # and used, is a plain copy of it
        name = str.__str__(name) if isinstance(name, str) else name
        if not isinstance(name, str) or name.startswith("_") or name in vocabulary.FRAME_ATTRIBUTES:
            raise AttributeError(f"pyfuncs: attribute {name!r} is not accessible from a routine")
        return name

    def getattr_(obj: Any, name: str, *default: Any) -> Any:
        try:
            return attribute(obj, public(name))
        except AttributeError:
            if default:
                return default[0]
            raise

    build_class = builtins.__build_class__

    def __build_class__(func: Any, name: Any, /, *bases_: Any, **kwargs: Any) -> Any:
        for base in bases_:  # (C refuses them anyway: this says why)
            why = classes.refused(base)
            if why is not None:
                raise TypeError(f"pyfuncs: the class {name!r} may not derive from "
                                f"{_NAME(base)}: {why}")  # fmt: skip
        return build_class(func, name, *bases_, **kwargs)

    restricted = {k: v for k, v in vars(builtins).items() if k not in REMOVED_BUILTINS}
    restricted.update(
        __build_class__=__build_class__,
        __import__=guarded_import,
        getattr=getattr_,
        hasattr=lambda obj, name: hasattr(obj, public(name)),
        setattr=lambda obj, name, value: setattr(writable(obj), public(name), value),
        pow=bounded.checked_pow,
        divmod=bounded.checked_divmod,
        format=bounded.checked_format,
        range=lazy.range,
        iter=lazy.iter,
    )
    return restricted


# methods whose results a routine gets through a check (CHECKED_READS names them):
# name -> (the class whose method it is, what to give instead, made from the object)
READS: dict[str, tuple[bounded.Kinds, Callable[[Any, Any], Any]]] = {
    **lazy.READS,
    **bounded.READS,
}
# attribute reads the sandbox checks (attribute), where guards.py routes them: registering a
# virtual subclass of an ABC every call shares, str.format, whose fields can walk attributes
# ("{0.__class__}"), and methods whose work is bounded or made to come back to Python (READS)
CHECKED_READS = frozenset({"register", "format", "format_map", *READS})

# routine modules executed in this backend, by their exact source and allow-list, and the
# names of their files
MODULES: dict[tuple[str, frozenset[str]], dict[str, Any]] = {}
FILENAMES: set[str] = set()


def load_module(
    source: str, filename: str, module_name: str, allowed: frozenset[str]
) -> dict[str, Any]:
    """Execute a routine module once per backend, keyed by its exact source."""
    key = (source, allowed)
    namespace = MODULES.get(key)
    if namespace is None:
        if vocabulary.reserved_module_name(module_name):  # deploy refuses it too
            raise ImportError(
                f"pyfuncs: a routine module may not be called {module_name!r}, the name of a "
                "module of the standard library or of pyfuncs (rename it)"
            )
        # What the module owns is told by its name (writable, private, random's generator),
        # and dataclasses find it in sys.modules by that name while they build its classes.
        # A name no import asks for: a module named as one the standard library imports
        # (`tzdata`, which zoneinfo does) answered the import system's questions, and a red
        # team had it import code with the real builtins. Another module of the same name
        # (another version of it, or another deployer's file of that name) gets one of its
        # own, and so do the lines of a file of the same name (tracebacks show them).
        name = _unused(f"routine:{module_name}", sys.modules)
        deployed, filename = filename, _unused(filename, FILENAMES)
        FILENAMES.add(filename)
        module = types.ModuleType(name)
        module.__file__ = filename
        # dataclasses and typing look classes' modules up in sys.modules while they are built
        sys.modules[name] = module
        # so tracebacks show the routine's source lines: the file itself is not on the server
        errors.remember_lines(filename, source)
        module.__dict__.update(helpers(name), **_its_own(module.__dict__, module_name))
        api = API(module.__dict__) if API is not None else None
        module.__dict__["__builtins__"] = restricted_builtins(allowed, name, api)
        code = _compiled(source, filename, deployed)
        _register(code, module.__dict__)
        outer, stopping.CALLING[0] = stopping.CALLING[0], module.__dict__
        try:
            exec(code, module.__dict__)
        except BaseException:
            # a module that failed (or was stopped) half-way is let go; its name stays taken
            # (what it made may live on, naming it), so the next call loads it anew as another
            sys.modules[name] = None  # type: ignore[assignment]
            raise
        finally:
            stopping.CALLING[0] = outer
        namespace = MODULES[key] = module.__dict__
    return namespace


# The runtime's modules and their sha256, as boot() read them (boot.py), and what reads the
# code of a routine module `pyfuncs deploy` compiled ahead by its key (db.compiled_ahead)
RUNTIME: dict[str, str] | None = None
READ_AHEAD: Callable[[str], bytes | None] | None = None


def _compiled(source: str, filename: str, deployed: str) -> types.CodeType:
    """A routine module's code: as `pyfuncs deploy` compiled it with this runtime's guards
    for this Python, where it did, else compiled here (milliseconds of a backend's first
    call: _ast's classes, the parse, the guards, the compile). Code compiled ahead carries
    the file name deployed (`deployed`); a second copy of a module in the backend (each
    routine's source is its module without the routines it does not use) is given its own
    (`filename`, `name~2`: its lines are its own in tracebacks)."""
    if RUNTIME is not None and READ_AHEAD is not None:
        key = vocabulary.compiled_key(MAGIC_NUMBER, RUNTIME, deployed, source)
        stored = READ_AHEAD(sha256(key.encode()).hexdigest())
        if stored is not None:
            code = marshal.loads(stored)
            if type(code) is types.CodeType:
                return code if filename == deployed else _renamed(code, filename)
    from .guards import compile_module

    return compile_module(source, filename)


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    """`code`, and the code of every function, class and comprehension in it, carrying
    file name `filename`."""
    consts = tuple(
        _renamed(c, filename) if type(c) is types.CodeType else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


def _its_own(namespace: dict[str, Any], module_name: str) -> dict[str, Any]:
    """What the test guards.py puts where a routine module's code starts or resumes reads:
    the code runs only in calls of the module's routines. Python runs code at other times
    too: a finalizer when the collector gets to it, and the methods of an object kept where
    calls share it (a key of a standard library cache: red teams had their `__eq__` run in
    other roles' calls and see the keys those calls looked up). What runs then, in another
    module's call or in none, is refused before its first statement."""
    calling = stopping.CALLING

    def foreign() -> NoReturn:
        raise PermissionError(
            f"pyfuncs: code of the routine module {module_name!r} runs only in calls of its "
            "own routines, not in another module's call or outside calls (a finalizer, or an "
            "object of the module kept where other calls reach it)"
        )

    def own() -> bool:  # (for expressions: lambdas, generator expressions)
        if calling[0] is not namespace:
            foreign()
        return True

    def resumed(value: Any) -> Any:  # (a generator's, as it resumes after a yield)
        own()
        return value

    return {
        "pyfuncs.calling": calling, "pyfuncs.mine": namespace, "pyfuncs.foreign": foreign,
        "pyfuncs.own": own, "pyfuncs.resumed": resumed,
    }  # fmt: skip


def _unused(name: str, taken: Any) -> str:
    """`name`, or `name~2`, `name~3`... the first not in `taken`."""
    found, serial = name, 1
    while found in taken:
        serial += 1
        found = f"{name}~{serial}"
    return found


# the code objects of loaded routine modules, kept alive: watchdog.ROUTINE_CODE has their ids
CODE: list[types.CodeType] = []


def _register(code: types.CodeType, namespace: dict[str, Any]) -> None:
    """Make every code object of a routine module (functions, lambdas, comprehensions,
    class bodies) known to the watchdog as the module's."""
    CODE.append(code)
    stopping.ROUTINE_CODE[id(code)] = namespace
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            _register(constant, namespace)


def _decorator(*args: Any, **_options: Any) -> Any:
    """In the database the decorators only mark; the definition was read at deploy time.
    `@stored_function` or `@stored_function(**options)`, nothing else (a red team made one
    a class's `__eq__`, which said yes to anything)."""
    if len(args) == 1 and callable(args[0]) and not _options:
        return args[0]
    if args:
        raise TypeError("pyfuncs: the decorators take a function, or options by keyword")
    return _marked


def _marked(fn: Any, /) -> Any:
    return fn


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
