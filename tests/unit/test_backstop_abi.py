"""The C library's exported functions keep their arguments.

One pyfuncs_backstop.so serves every database of a cluster, and each database keeps the
runtime it was installed with (pyfuncs.runtime_module), which may be older than the
library: an older runtime calls the library's functions with the arguments it knew. A
function whose arguments change (or the fields of a struct of functions it is given) must
get a new name, which an older runtime does not find, and goes without; a runtime one
commit older than the fix crashed its backend calling a function whose arguments had
grown. This test holds every exported function's arguments as they are: change one, and
rename the function."""

from __future__ import annotations

import re
from pathlib import Path

SOURCE = Path(__file__).parents[2] / "pyfuncs" / "_pg" / "backstop.c"

# each exported function: its parameters, and the fields of the structs among them
ABI = {
    "pyfuncs_backstop_install": "double grace_seconds, double unwind_seconds, const char *text",
    "pyfuncs_backstop_contain": "uintptr_t low, uintptr_t high, const char *overflow, "
    "const char *crash",
    "pyfuncs_window_open": "GetCode a, FromPointer b, Contains c, CallNoArgs d, DecRef e, "
    "PyObject *routine_code, PyObject *on_close, PyObject *on_open",
    "pyfuncs_window_watch": "PyObject *unused, void *frame, int what, PyObject *arg",
    "pyfuncs_classes_checked": "NewFunc new_original, SetAttr set_original, CallArgs a, "
    "DecRef b, PyObject *on_make, PyObject *on_set",
    "pyfuncs_type_new": "PyObject *meta, PyObject *args, PyObject *kwds",
    "pyfuncs_type_setattro": "PyObject *type, PyObject *name, PyObject *value",
    "pyfuncs_finalizers_kept_apart": "const Api *functions, PySize at, PyObject *subclasses_of, "
    "PyObject *root, PyObject *const *kinds | Api: context_new, context_enter, context_exit, "
    "get_handled, set_handled, fetch, restore, list_size, list_item, call_one, same_as, "
    "type_flags, get_attr, clear_error, decref",
    "pyfuncs_weakref_new": "PyObject *type, PyObject *args, PyObject *kwds",
    "pyfuncs_weakrefs_owned": "const RefApi *functions, NewFunc original, PyObject *owning, "
    "PyObject *none_object | RefApi: tuple_size, tuple_item, tuple_pack, call_one, decref",
    "pyfuncs_date_new": "PyObject *type, PyObject *args, PyObject *kwds",
    "pyfuncs_datetime_new": "PyObject *type, PyObject *args, PyObject *kwds",
    "pyfuncs_time_new": "PyObject *type, PyObject *args, PyObject *kwds",
    "pyfuncs_moments_checked": "const RefApi *functions, const NewFunc *originals, "
    "PyObject *check | RefApi: tuple_size, tuple_item, tuple_pack, call_one, decref",
    "pyfuncs_decimal_compare": "PyObject *a, PyObject *b, int op",
    "pyfuncs_decimal_contexts_held": "const HoldApi *functions, RichCompare original, "
    "PyObject *current, PyObject *const *plain | HoldApi: call_no_args, decref",
    "pyfuncs_generators_kept": "PyObject *may_run, PyObject *true_object",
    "pyfuncs_flags_set": "const uintptr_t *types, long count, long at, unsigned long bits",
    "pyfuncs_local_transaction": "void",
    "pyfuncs_query_guards": "const GuardApi *functions, PyObject *settings_list, "
    "PyObject *const *constants, char **claims_storage, int timer_id | GuardApi: tuple_pack, "
    "tuple_item, list_item, list_set, from_unsigned, as_unsigned, from_long, as_long, "
    "from_text, text_of, is_true, error, function_new, incref, decref",
    "pyfuncs_query_guards_joined": "void",
    "pyfuncs_frames_lent": "const LendApi *functions, PyObject *handler, int frames | LendApi: "
    "type_from_spec, generic_alloc, vectorcall_call, vectorcall, get_limit, set_limit, incref",
}


def _exported(source: str) -> dict[str, str]:
    structs = {
        name: ", ".join(re.findall(r"\(\*(\w+)\)", body))
        for body, name in re.findall(r"typedef struct\s*\{(.*?)\}\s*(\w+);", source, re.S)
    }
    found = {}
    for name, params in re.findall(r"^(?!static)[A-Za-z_][\w \*]*\n(pyfuncs_\w+)\(([^)]*)\)",
                                   source, re.M):  # fmt: skip
        params = " ".join(params.split())
        given = [s for s in structs if re.search(rf"\b{s}\b", params)]
        found[name] = " | ".join([params, *(f"{s}: {structs[s]}" for s in given)])
    return found


def test_every_exported_function_keeps_its_arguments() -> None:
    exported = _exported(SOURCE.read_text())
    changed = {
        name: exported[name] for name in exported if ABI.get(name, exported[name]) != exported[name]
    }
    assert not changed, (
        f"{sorted(changed)}: arguments changed; an older runtime in some database calls it "
        "with the old ones. Give the function a new name (and add it to ABI)."
    )
    assert sorted(exported) == sorted(ABI), "a function was added or removed: update ABI"


def test_the_manifest_reads_the_source() -> None:
    """The parser finds every function the runtime looks the library up by (backstop.py)."""
    runtime = (SOURCE.parent / "backstop.py").read_text()
    looked_up = set(re.findall(r"\b(pyfuncs_\w+)\b", runtime))
    # (the libraries' names, the array, and the entry library's functions: tested below)
    data = {"pyfuncs_backstop", "pyfuncs_backstop_clock", "pyfuncs_entry", *ENTRY_ABI,
            *ENTRY_FUNCTIONS}  # fmt: skip
    assert looked_up - data <= set(_exported(SOURCE.read_text())), looked_up
    # the array the runtime writes deadlines to: three doubles, as CLOCK reads them
    assert "double\t\tpyfuncs_backstop_clock[3];" in SOURCE.read_text()


# The entry library (entry.c) is shared the same way: each function takes a dict, and the
# keys it requires are held here. A key it must have more of makes a new function: an
# older runtime's dict lacks it (one it no longer needs may go: the runtime still gives it
# to older libraries). A key it may be given (`optional`) is listed apart: an
# older runtime's dict without it gets what the function did before it.
ENTRY_SOURCE = SOURCE.parent / "entry.c"
ENTRY_ABI = {
    "pyfuncs_entry_new": "PyObject *config | function, namespace, fail, finish, "
    "RoutineInterrupted, settings, calling, undo, grave, owed, pay, watch, short, long, "
    "unread, timeout, clock, most, lowest, longest | optional: stop_set",
    "pyfuncs_queries_new": "PyObject *config | db, stopping, from_the_call, guard, owners, "
    "entries, calling, querying, text, plans, guarded, may_not_run, expired, failed, ended, "
    "execute, SPIError, Db, Prepared",
    "pyfuncs_entry_clocked_new": "PyObject *config | function, namespace, fail, finish, "
    "RoutineInterrupted, settings, calling, undo, grave, owed, pay, watch, short, long, "
    "unread, timeout, clock, most, lowest, longest | optional: stop_set",
}


def _entry_exported(source: str) -> dict[str, str]:
    found = {}
    # (the makers of Entries share the one that reads the config)
    shared = re.search(
        r"^entry_new\(PyObject \*config, bool clocked\)\n\{(.*?)\n\}", source, re.M | re.S
    )
    assert shared is not None
    for name, params, body in re.findall(
        r"^PyObject \*\n(pyfuncs_\w+)\(([^)]*)\)\n\{(.*?)\n\}", source, re.M | re.S
    ):
        if "return entry_new(config, " in body:
            body = shared.group(1)
        keys = re.findall(r'(?:item|PyDict_GetItemString)\(config, "(\w+)"\)', body)
        if "queries_names" in body:
            block = re.search(r"queries_names\[QUERIES_OBJECTS\] = \{(.*?)\};", source, re.S)
            assert block is not None
            keys = re.findall(r'"(\w+)"', block.group(1))
        found[name] = f"{params} | {', '.join(keys)}"
        optional = re.findall(r'optional\(config, "(\w+)"\)', body)
        if optional:
            found[name] += f" | optional: {', '.join(optional)}"
    return found


# (and functions of its own that take nothing: the runtime calls them through ctypes as
# they are declared here, and one a library built before it lacks is not called)
ENTRY_FUNCTIONS = {"pyfuncs_query_headroom": "int (void)"}


def test_the_entry_librarys_other_functions_keep_their_signatures() -> None:
    source = ENTRY_SOURCE.read_text()
    for name, signature in ENTRY_FUNCTIONS.items():
        result, params = signature.split(" ", 1)
        assert f"\n{result}\n{name}{params}\n{{" in source, name
    runtime = (SOURCE.parent / "backstop.py").read_text()
    assert 'getattr(library, "pyfuncs_query_headroom", None)' in runtime
    assert "headroom.argtypes, headroom.restype = [], ctypes.c_int" in runtime


def test_the_entry_library_keeps_what_it_takes() -> None:
    exported = _entry_exported(ENTRY_SOURCE.read_text())
    assert exported == ENTRY_ABI, (
        "an entry library function's config changed: an older runtime in some database "
        "gives the old one. Give the function a new name (and add it to ENTRY_ABI)."
    )
    runtime = (SOURCE.parent / "backstop.py").read_text()
    looked_up = re.search(r"^_MAKERS = \((.*?)\)", runtime, re.M | re.S)
    assert looked_up is not None
    assert set(re.findall(r'"(pyfuncs_\w+)"', looked_up.group(1))) == set(ENTRY_ABI)
