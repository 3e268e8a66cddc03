"""The backstop: a session whose routine cannot be stopped ends, the cluster carries on.

The watchdog (watchdog.py) stops a routine between two of its bytecodes. One call of C code
on data the routine built (comparing equal large objects over a list of references, hashing
a tuple nested by reference, keys that collide) runs no bytecode for as long as it takes;
and a routine can swallow its stops in finalizers that such a call triggers one after the
other. Neither can be stopped without the interpreter's help, so both end the session
instead, GRACE after the stop was due, with a FATAL error the client gets: the watchdog does
it for a routine that keeps running Python past its stop, and a small library of C
(backstop.c, `make setup` builds it into PostgreSQL's library directory as
pyfuncs_backstop.so) does it for one stuck in C, from a SIGPROF handler that runs no Python.

CLOCK is what the C handler reads: [0] the deadline of the innermost call under way with a
timeout_ms (its entry functions write it, see routines.py), [1] when the watchdog last
completed a look, [2] when it first raised a stop (the routine may then take `unwind`
seconds to unwind: freeing what it built); seconds of time.monotonic(), 0 for none. Without the
library it is memory of its own, and a routine stuck in one C call runs until the call
returns (README "What is open, plainly").

The library also contains crashes of Python's own code (`contain`): a fault there, or in a
jump from it to where no code is, ends the session with FATAL instead of making PostgreSQL
restart every session of the cluster (see backstop.c). Without it, only an overflow of the
C stack is contained (overflow.py).
"""

from __future__ import annotations

import ctypes
import os
import sys
from types import WrapperDescriptorType

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

LIBRARY = "pyfuncs_backstop.so"
ENTRY_LIBRARY = "pyfuncs_entry.so"  # entry.c: a call's entry and a routine's queries, in C
MESSAGE = (
    "pyfuncs: a routine went on running after it was told to stop; this session ends so that "
    "no other is affected"
)
CRASH = (
    "pyfuncs: a routine's Python crashed, in the interpreter's own code; this session ends so "
    "that no other is affected"
)


def _doubles(buffer: Any) -> Any:
    return memoryview(buffer).cast("B").cast("d")


# (ctypes, not array: array imports collections.abc, milliseconds of every first call)
CLOCK: Any = _doubles((ctypes.c_double * 3)())
_installed: list[Any] = []  # the library's install function and its arguments, once loaded


def library_path(postgres: ctypes.CDLL) -> str:
    """Where PostgreSQL keeps its libraries ($libdir), which is where `make setup` puts ours."""
    libdir = (ctypes.c_char * 1024).in_dll(postgres, "pkglib_path").value.decode()
    return os.path.join(libdir, LIBRARY)


_library: list[Any] = []  # the library, once loaded


def load(postgres: ctypes.CDLL) -> bool:
    """Load the library, and the entry library (built with Python 3.11's headers: loaded
    only in a 3.11); False where the backstop is not installed."""
    path = library_path(postgres)
    if not _library and os.path.exists(path):
        _library.append(ctypes.CDLL(path))
    entries = os.path.join(os.path.dirname(path), ENTRY_LIBRARY)
    if not _makers and sys.version_info[:2] == (3, 11) and os.path.exists(entries):
        load_entries(entries)
    return bool(_library)


# the entry library's makers (pyfuncs_entry_new, pyfuncs_queries_new,
# pyfuncs_entry_clocked_new), once loaded; None for one a library built before it lacks
_makers: list[Any] = []
_MAKERS = ("pyfuncs_entry_new", "pyfuncs_queries_new", "pyfuncs_entry_clocked_new")


def load_entries(path: str) -> None:
    """Load the entry library at `path` (load does, from PostgreSQL's library directory)."""
    library = ctypes.PyDLL(path)  # (PyDLL: its functions are called with the GIL held)
    made = [getattr(library, name, None) for name in _MAKERS]
    for new in made:
        if new is not None:
            new.argtypes, new.restype = [ctypes.py_object], ctypes.py_object
    _makers[:] = made
    headroom = getattr(library, "pyfuncs_query_headroom", None)  # (a library since stop 43)
    if headroom is not None:
        headroom.argtypes, headroom.restype = [], ctypes.c_int
    _headroom[:] = [headroom] if headroom is not None else []


_headroom: list[Any] = []  # the library's pyfuncs_query_headroom, once loaded


def query_headroom() -> None:
    """Refuses a routine's query this close to the recursion limit with a RecursionError
    (entry.c, QUERY_HEADROOM; nothing without the library)."""
    if _headroom:
        _headroom[0]()


def entry(config: dict[str, Any]) -> tuple[Any, bool]:
    """The entry library's Entry for a routine's `call` (entry.c says what `config` holds),
    or None without the library; and whether it is clocked: it notes when its call began in
    the entry frame's `began` itself, and takes the routine's arguments alone (else it is
    given that time first)."""
    if _makers and _makers[2]:
        return _makers[2](config), True
    return (_makers[0](config) if _makers and _makers[0] else None), False


def queries(config: dict[str, Any]) -> Any:
    """The entry library's runner of db's queries (db.use_runner), or None without it."""
    return _makers[1](config) if _makers and _makers[1] else None


def lend_frames(handler: Any, frames: int) -> Any:
    """A callable that calls `handler` with `frames` more of the recursion limit for its
    call alone (backstop.c says why: the watchdog's handler, called one frame below the
    limit), or `handler` itself without the library (or one built before it)."""
    if not _lender and _library and hasattr(_library[0], "pyfuncs_frames_lent"):
        functions = _functions(
            "PyType_FromSpec", "PyType_GenericAlloc", "PyVectorcall_Call",
            "PyObject_Vectorcall", "Py_GetRecursionLimit", "Py_SetRecursionLimit", "Py_IncRef",
        )  # fmt: skip
        make = ctypes.PyDLL(_library[0]._name).pyfuncs_frames_lent
        make.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.c_int]
        make.restype = ctypes.py_object
        _lender.extend((make, ctypes.addressof(functions), functions))
    if not _lender:
        return handler
    make, functions, _ = _lender
    return make(functions, handler, frames)


_lender: list[Any] = []  # the library's maker, Python's functions' addresses, the array


def install(grace: float, unwind: float, stack: tuple[int, int], overflow: str) -> bool:
    """Put the C handler in front of the watchdog's (which must be installed already), point
    CLOCK at what it reads, and contain faults of Python's code (after overflow.contain:
    `stack` is where an overflow faults, `overflow` its message). False where the library
    is not loaded (load)."""
    global CLOCK
    if not _library:
        return False
    library = _library[0]
    setup = library.pyfuncs_backstop_install
    setup.argtypes = [ctypes.c_double, ctypes.c_double, ctypes.c_char_p]
    setup.restype = ctypes.c_int
    if setup(grace, unwind, MESSAGE.encode()) != 0:
        return False
    clock = (ctypes.c_double * 3).in_dll(library, "pyfuncs_backstop_clock")
    clock[:] = CLOCK.tolist()
    CLOCK = _doubles(clock)
    _installed.extend((library, setup, grace, unwind))
    contain = getattr(library, "pyfuncs_backstop_contain", None)  # (a library built before it)
    if contain is not None:
        contain.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_char_p]
        contain.restype = ctypes.c_int
        contain(*stack, overflow.encode(), CRASH.encode())
    return True


def refresh() -> None:
    """After a routine imported a module: the C handler learns where the code of Python's
    extension modules loaded since is (a call stuck there is Python's too), and their
    classes' finalizers run apart (keep_finalizers_apart)."""
    if _installed:
        _installed[1](_installed[2], _installed[3], MESSAGE.encode())
    if _apart:
        _apart[0](*_apart[1:])


def window_profile(codes: dict[int, Any], closing: Any, opening: Any) -> bool:
    """Make the library's profile function the thread's, for an import window
    (classes.py): it calls `closing` when code of a routine's (`codes`) starts running and
    `opening` when it has returned. False without the library (or one built before it)."""
    watch = getattr(_installed[0], "pyfuncs_window_watch", None) if _installed else None
    if watch is None:
        return False
    api = ctypes.pythonapi
    address = [ctypes.cast(f, ctypes.c_void_p) for f in (
        api.PyFrame_GetCode, api.PyLong_FromVoidPtr, api.PyDict_Contains,
        api.PyObject_CallNoArgs, api.Py_DecRef, watch)]  # fmt: skip
    bind = _installed[0].pyfuncs_window_open
    bind.argtypes = [ctypes.c_void_p] * 5 + [ctypes.py_object] * 3
    bind.restype = None
    bind(*address[:5], codes, closing, opening)
    api.PyEval_SetProfile.argtypes = [ctypes.c_void_p, ctypes.py_object]
    api.PyEval_SetProfile.restype = None
    api.PyEval_SetProfile(address[5], None)
    return True


# typeslots.h: the slots of type objects PyType_GetSlot reads
_TP_NEW, _TP_RICHCOMPARE, _TP_SETATTRO, _TP_FINALIZE = 65, 67, 69, 80
_WRAPPED = 6  # the word of a slot's wrapper (a wrapper_descriptor) that holds its function
_checking: list[Any] = []  # what type's slots call, kept alive


def _slot(kind: type, number: int) -> tuple[int, int] | None:
    """Slot `number` of type `kind` (a function's address) and the index of the one word of
    the type object that holds it; None if it is empty or not found once."""
    get = ctypes.pythonapi.PyType_GetSlot
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_int]
    value = get(kind, number)
    words = (ctypes.c_void_p * 64).from_address(id(kind))  # (a type object is ~50 words)
    found = [i for i in range(64) if words[i] == value]
    return (value, found[0]) if value and len(found) == 1 else None


def _replace_below(kind: type, at: int, original: int, hook: int) -> None:
    """Word `at` of `kind` and of every class deriving from it, where it is `original`
    (a slot a class inherited, or has its own), made `hook`."""
    pending, seen = [kind], set()
    while pending:
        each = pending.pop()
        if id(each) not in seen:
            seen.add(id(each))
            pending.extend(type.__subclasses__(each))
            words = (ctypes.c_void_p * 64).from_address(id(each))
            if words[at] == original:
                words[at] = hook


def _functions(*names: str) -> Any:
    """An array of the addresses of Python's C functions `names` (kept alive by the caller)."""
    api = ctypes.pythonapi
    return (ctypes.c_void_p * len(names))(
        *(ctypes.cast(getattr(api, name), ctypes.c_void_p).value for name in names)
    )


def check_classes(on_make: Any, on_set: Any) -> bool:
    """Have type's tp_new call `on_make(args)` before it makes a class, and its tp_setattro
    `on_set(cls, name, value)` before it sets an attribute of a class (backstop.c), for
    type and for the metaclasses made before now that have its own (later ones inherit
    them). False without the library (or one built before it)."""
    library: Any = _installed[0] if _installed else None
    made = getattr(library, "pyfuncs_type_new", None)
    if made is None or _checking:
        return bool(_checking)
    found = (_slot(type, _TP_NEW), _slot(type, _TP_SETATTRO))
    if None in found:
        return False
    (new, new_at), (setattro, setattro_at) = found  # type: ignore[misc]
    hooks = [ctypes.cast(f, ctypes.c_void_p).value or 0
             for f in (made, library.pyfuncs_type_setattro)]  # fmt: skip
    bind = library.pyfuncs_classes_checked
    bind.argtypes = [ctypes.c_void_p] * 4 + [ctypes.py_object] * 2
    bind.restype = None
    api = ctypes.pythonapi
    bind(new, setattro, ctypes.cast(api.PyObject_CallFunctionObjArgs, ctypes.c_void_p),
         ctypes.cast(api.Py_DecRef, ctypes.c_void_p), on_make, on_set)  # fmt: skip
    _checking.extend((on_make, on_set))
    # type and every metaclass (their slots are type's, or their own)
    _replace_below(type, new_at, new, hooks[0])
    _replace_below(type, setattro_at, setattro, hooks[1])
    # type.__setattr__ and type.__delattr__ (a metaclass's super().__delattr__: enum's) call
    # the function they wrap, and refuse a type whose slot is another: they wrap the hook too
    for name in ("__setattr__", "__delattr__"):
        descriptor = (ctypes.c_void_p * 8).from_address(id(type.__dict__[name]))
        (wrapped,) = [i for i in range(8) if descriptor[i] == setattro]
        descriptor[wrapped] = hooks[1]
    return (_slot(type, _TP_NEW), _slot(type, _TP_SETATTRO)) == (
        (hooks[0], new_at),
        (hooks[1], setattro_at),
    )


_apart: list[Any] = []  # the library's function and its arguments
_keep: list[Any] = []  # what they point at


def keep_finalizers_apart() -> bool:
    """Have every class's finalizer run in a context of its own, apart from the call under
    way wherever it runs (backstop.c says why): the classes there are now, those made from
    now on, and those of extension modules loaded later (refresh). False without the
    library (or one built before it)."""
    library: Any = _installed[0] if _installed else None
    apart = getattr(library, "pyfuncs_finalizers_kept_apart", None)
    if apart is None or _apart:
        return bool(_apart)
    import types

    found = _slot(types.GeneratorType, _TP_FINALIZE)
    if found is None:
        return False
    at = found[1]
    functions = _functions(
        "PyContext_New", "PyContext_Enter", "PyContext_Exit", "PyErr_GetHandledException",
        "PyErr_SetHandledException", "PyErr_Fetch", "PyErr_Restore", "PyList_Size",
        "PyList_GetItem", "PyObject_CallOneArg", "PyUnicode_CompareWithASCIIString",
        "PyType_GetFlags", "PyObject_GetAttrString", "PyErr_Clear", "Py_DecRef",
    )  # fmt: skip
    # (it calls Python: the GIL stays held, and an error it sets is raised)
    signature = ctypes.PYFUNCTYPE(
        ctypes.c_int, ctypes.c_void_p, ctypes.c_long, ctypes.py_object, ctypes.py_object,
        ctypes.c_void_p,
    )  # fmt: skip
    call = signature(ctypes.cast(apart, ctypes.c_void_p).value or 0)
    kinds: Any = (ctypes.py_object * 4)()
    kinds[:] = [types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType, None]
    _apart.extend((call, ctypes.addressof(functions), at, type.__subclasses__, object,
                   ctypes.addressof(kinds)))  # fmt: skip
    _keep.extend((functions, kinds))
    call(*_apart[1:])
    return _slot(types.GeneratorType, _TP_FINALIZE) != found


# the standard library's directory: its generators' frames run only where they are closed
# (keep_generators)
_STANDARD = os.path.dirname(os.__file__) + os.sep


def _may_run_finalized(generator: Any) -> bool:
    """Whether a generator's frame may run as it is finalized, wherever that is: not one of
    the standard library's (see backstop.c's pyfuncs_generators_kept)."""
    code = getattr(generator, "gi_code", None) or getattr(generator, "cr_code", None)
    if code is None:
        code = generator.ag_code
    return not code.co_filename.startswith(_STANDARD)


def keep_generators() -> bool:
    """Finalize no generator of the standard library's, or one that delegates to one
    (backstop.c says why). False without the library (or one built before it)."""
    library: Any = _installed[0] if _installed else None
    bind = getattr(library, "pyfuncs_generators_kept", None)
    if bind is None or not _apart:
        return False
    bind.argtypes = [ctypes.py_object, ctypes.py_object]
    bind.restype = None
    bind(_may_run_finalized, True)
    return True


_owned: list[Any] = []  # what the weak reference hook reads, kept alive
# backstop.c's RefApi, in its order
_REF_API = ("PyTuple_Size", "PyTuple_GetItem", "PyTuple_Pack", "PyObject_CallOneArg", "Py_DecRef")


def own_weakref_callbacks(own: Any) -> bool:
    """Have the weak reference type's tp_new replace a callback by `own(callback)` before it
    makes a reference (backstop.c says why), for weakref.ref and its subclasses made before
    now that have its own (later ones inherit it). False without the library (or one built
    before it)."""
    library: Any = _installed[0] if _installed else None
    hook = getattr(library, "pyfuncs_weakref_new", None)
    if hook is None or _owned:
        return bool(_owned)
    import _weakref

    kind = _weakref.ref
    found = _slot(kind, _TP_NEW)
    if found is None:
        return False
    original, at = found
    functions = _functions(*_REF_API)
    bind = library.pyfuncs_weakrefs_owned
    bind.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.py_object, ctypes.py_object]
    bind.restype = None
    bind(ctypes.addressof(functions), original, own, None)
    _owned.extend((functions, own))
    address = ctypes.cast(hook, ctypes.c_void_p).value or 0
    _replace_below(kind, at, original, address)  # (later subclasses inherit it)
    return _slot(kind, _TP_NEW) == (address, at)


_moments: list[Any] = []  # what the date, datetime and time hooks read, kept alive


def check_moments(check: Any) -> bool:
    """Have the tp_new of datetime's date, datetime and time hand what they made from one or
    two arguments (a pickle's state among them) to `check` (backstop.c says why), for the
    three and the classes deriving from them that have their own. False without the
    library (or one built before it)."""
    library: Any = _installed[0] if _installed else None
    hooks: list[Any] = [
        getattr(library, f"pyfuncs_{name}_new", None) for name in ("date", "datetime", "time")
    ]
    if None in hooks or _moments:
        return bool(_moments)
    import datetime

    kinds = (datetime.date, datetime.datetime, datetime.time)
    slots = [_slot(kind, _TP_NEW) for kind in kinds]
    found = [slot for slot in slots if slot is not None]
    if len(found) != len(kinds):
        return False
    functions = _functions(*_REF_API)
    originals = (ctypes.c_void_p * 3)(*(original for original, _ in found))
    bind = library.pyfuncs_moments_checked
    bind.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.py_object]
    bind.restype = None
    bind(ctypes.addressof(functions), ctypes.addressof(originals), check)
    _moments.extend((functions, originals, check))
    made = [
        (ctypes.cast(hook, ctypes.c_void_p).value or 0, at)
        for hook, (_, at) in zip(hooks, found, strict=True)
    ]
    for kind, (original, at), (address, _) in zip(kinds, found, made, strict=True):
        _replace_below(kind, at, original, address)
    return [_slot(kind, _TP_NEW) for kind in kinds] == made


_decimals: list[Any] = []  # what the Decimal comparison hook reads, kept alive


def hold_decimal_contexts(decimal: Any) -> bool:
    """Have Decimal's tp_richcompare hold the current context around a comparison with an
    operand of a kind whose comparison may run a routine's code (backstop.c says why), for
    Decimal and the classes deriving from it that have its own. False without the library
    (or one built before it)."""
    library: Any = _installed[0] if _installed else None
    hook = getattr(library, "pyfuncs_decimal_compare", None)
    if hook is None or _decimals:
        return bool(_decimals)
    kind = decimal.Decimal
    found = _slot(kind, _TP_RICHCOMPARE)
    if found is None:
        return False
    original, at = found
    functions = _functions("PyObject_CallNoArgs", "Py_DecRef")
    four: Any = ctypes.py_object * 4
    plain = four(kind, int, bool, float)
    bind = library.pyfuncs_decimal_contexts_held
    bind.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.py_object, ctypes.c_void_p]
    bind.restype = None
    bind(ctypes.addressof(functions), original, decimal.getcontext, ctypes.addressof(plain))
    _decimals.extend((functions, plain, decimal.getcontext))
    address = ctypes.cast(hook, ctypes.c_void_p).value or 0
    _replace_below(kind, at, original, address)
    # a class made later takes its slot from the six comparisons' wrappers in Decimal's
    # dict, which call the function they wrap (round 84: a routine's subclass compared
    # with C's own): they wrap the hook too
    wrapped = []
    for name in ("__lt__", "__le__", "__eq__", "__ne__", "__gt__", "__ge__"):
        wrapper = kind.__dict__[name]
        words = (ctypes.c_void_p * (_WRAPPED + 1)).from_address(id(wrapper))
        if type(wrapper) is WrapperDescriptorType and words[_WRAPPED] == original:
            words[_WRAPPED] = address
        wrapped.append(words[_WRAPPED])
    return _slot(kind, _TP_RICHCOMPARE) == (address, at) and set(wrapped) == {address}


def query_guards(settings: list[Any], claims: int | None, timer: int) -> Any:
    """The guards around each query of a routine's, in C (backstop.c says why): a tuple of
    identity's enter and leave, deadline's lend, give_back and depth, and (where the library
    has them) db's begin and end and identity's undo_settings, for identity's
    `settings`, the claims' storage at address `claims` (None: read by name) and the
    runtime's timer (-1: none). None without the library (or one built before them)."""
    library: Any = _installed[0] if _installed else None
    if getattr(library, "pyfuncs_query_guards", None) is None or _guards:
        return _guards[0][0] if _guards else None
    functions = _functions(
        "PyTuple_Pack", "PyTuple_GetItem", "PyList_GetItem", "PyList_SetItem",
        "PyLong_FromUnsignedLong", "PyLong_AsUnsignedLong", "PyLong_FromLong", "PyLong_AsLong",
        "PyBytes_FromString", "PyBytes_AsString", "PyObject_IsTrue", "PyErr_Occurred",
        "PyCFunction_NewEx", "Py_IncRef", "Py_DecRef",
    )  # fmt: skip
    six: Any = ctypes.py_object * 6
    constants = six(None, True, False, "role", "search_path", "request.jwt.claims")
    # (a PyDLL function: Python's error, if any, is raised here)
    make = ctypes.PyDLL(library._name).pyfuncs_query_guards
    make.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.c_void_p, ctypes.c_void_p,
                     ctypes.c_int]  # fmt: skip
    make.restype = ctypes.py_object
    guards = make(ctypes.addressof(functions), settings, constants, claims, timer)
    if getattr(library, "pyfuncs_query_guards_joined", None) is not None:
        joined = ctypes.PyDLL(library._name).pyfuncs_query_guards_joined
        joined.argtypes, joined.restype = [], ctypes.py_object
        guards += joined()
    _guards.append((guards, functions, settings, constants))
    return guards


_guards: list[Any] = []  # what query_guards made, and what they use, kept alive


def local_transaction() -> Any:
    """The library's function that tells the backend's local transaction id, or None
    without the library (or one built before it)."""
    library: Any = _installed[0] if _installed else None
    if getattr(library, "pyfuncs_local_transaction", None) is None:
        return None
    serial = ctypes.PyDLL(library._name).pyfuncs_local_transaction
    serial.restype, serial.argtypes = ctypes.c_uint32, []
    return serial


def set_flags(kinds: list[type], at: int, bits: int) -> bool:
    """Set `bits` in the flags word (byte `at` of the type object) of each class of
    `kinds`, in one call of the library's. False without the library (or one built before
    it): the caller sets them itself."""
    library: Any = _installed[0] if _installed else None
    set_all = getattr(library, "pyfuncs_flags_set", None)
    if set_all is None:
        return False
    set_all.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_ulong]
    set_all.restype = None
    addresses = (ctypes.c_size_t * len(kinds))(*map(id, kinds))
    set_all(addresses, len(kinds), at, bits)
    return True
