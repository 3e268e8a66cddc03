"""The in-database runtime's modules, tested as plain Python outside PostgreSQL."""

from __future__ import annotations

import ast
import datetime
import decimal
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from pyfuncs import errors, policy
from pyfuncs._pg import bounded, guards, results, sandbox, values, vocabulary
from pyfuncs._pg import watchdog as stopping
from pyfuncs._pg.watchdog import RoutineInterrupted


def test_one_home_for_the_shared_vocabulary() -> None:
    assert policy.FORBIDDEN_BUILTINS is vocabulary.FORBIDDEN_BUILTINS
    assert policy.FRAME_ATTRIBUTES is vocabulary.FRAME_ATTRIBUTES
    assert errors.LimitExceeded.code == vocabulary.LIMIT_EXCEEDED
    assert errors.from_sqlstate(vocabulary.ROUTINE_FAILED, "x").__class__ is errors.RoutineFailed
    assert set(sandbox.REMOVED_BUILTINS) >= set(vocabulary.FORBIDDEN_BUILTINS)


def test_values() -> None:
    convert = values.converter("list:date")
    assert convert is not None
    assert convert(["2026-01-02", None, ["2026-01-03"]]) == [
        datetime.date(2026, 1, 2), None, [datetime.date(2026, 1, 3)]]  # fmt: skip
    assert values.adapt_param(uuid.UUID(int=1)) == ("pg_catalog.uuid", str(uuid.UUID(int=1)))
    assert values.adapt_param([1, None, 2]) == ("pg_catalog.int8[]", [1, None, 2])
    assert values.adapt_param([{"a": 1}]) == ("pg_catalog.jsonb", [{"a": 1}])
    with pytest.raises(TypeError, match="cannot pass a set"):
        values.adapt_param({1})
    assert (
        results.size({"a": "é", "b": [decimal.Decimal("1.5"), None]}) == 4 + 1 + 2 + 1 + 4 + 3 + 4
    )  # (4 for each container and null)


def test_bounded_operations_refuse_before_they_start() -> None:
    with pytest.raises(bounded.OperationTooLarge, match="int \\*\\* int"):
        bounded.checked_pow(10, 10**6)
    with pytest.raises(bounded.OperationTooLarge, match="str \\* "):
        bounded.checked_mul("x", 10**9)
    assert bounded.checked_pow(2, 10) == 1024
    assert bounded.guarded_math().factorial(5) == 120
    with pytest.raises(bounded.OperationTooLarge):
        bounded.guarded_math().factorial(10**6)


def run(source: str, allowed: frozenset[str] = frozenset({"math", "pyfuncs"})) -> dict[str, Any]:
    """The module's namespace, loaded as the runtime loads it; its code runs as in a call
    of its own (watchdog.CALLING) until the next module is loaded."""
    sandbox.API = lambda module: sandbox.shim(object())
    namespace = sandbox.load_module(source, f"mod{abs(hash(source))}.py", "m", allowed)
    stopping.CALLING[0] = namespace
    return namespace


def test_modules_are_compiled_with_their_guards_and_run_with_restricted_builtins() -> None:
    code = guards.compile_module("try:\n    x = 2 ** 3\nexcept Exception:\n    pass\n", "g.py")
    names = set(code.co_names)
    assert {"pyfuncs.guard", "pyfuncs.pow"} <= names
    namespace = run("import math\nfrom pyfuncs import RaiseError\nX = math.floor(2.5)\n")
    assert namespace["X"] == 2
    builtins = namespace["__builtins__"]
    assert not set(vocabulary.FORBIDDEN_BUILTINS) - {"__import__"} & set(builtins)
    for source, error in [
        ("import os\n", ImportError),
        ("from pyfuncs import deploy\n", ImportError),
        ("x = getattr(1, '__class__')\n", AttributeError),
        ("x = 10 ** 10 ** 6\n", bounded.OperationTooLarge),
    ]:
        with pytest.raises(error):
            run(source)


def test_a_stopped_call_cannot_swallow_the_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard at the top of every handler raises again in a stopped call. Closing what
    an aborted statement left is no stop: its handlers run (watchdog.close_apart)."""
    namespace = run(
        "def f():\n    try:\n        raise ValueError\n    except ValueError:\n"
        "        return 'swallowed'\n"
    )
    assert namespace["f"]() == "swallowed"
    monkeypatch.setattr("pyfuncs._pg.watchdog.disposing", True)
    assert namespace["f"]() == "swallowed"

    class Stopped:
        stop = "a stop"

        def check(self) -> None:
            raise RoutineInterrupted()

    monkeypatch.setattr("pyfuncs._pg.watchdog.WATCHDOG", Stopped())
    with pytest.raises(RoutineInterrupted):
        namespace["f"]()


def test_the_runtime_refuses_a_module_that_would_shadow_one_it_imports() -> None:
    import sys

    before = dict(sys.modules)
    for name in ("json", "uuid.sub", "pyfuncs_pg.db", "plpy"):
        with pytest.raises(ImportError, match="may not be called"):
            sandbox.load_module("x = 1\n", "m.py", name, policy.DEFAULT_ALLOWED)
    assert sys.modules == before


_SEEN: list[str] = []


class _Finalized:
    def __del__(self) -> None:
        _SEEN.append("finalized")


def test_an_entry_frames_locals_are_read_without_finalizing_what_has_gone() -> None:
    """The watchdog reads `began` and `n` of entry frames from their slots (stopping.local):
    `frame.f_locals` would drop what the frame's dict held of a local gone since, running a
    finalizer of the routine's inside the look (round 64). Entry functions have no cells,
    so their slots are in co_varnames' order."""
    from pyfuncs._pg import routines

    head, body = routines._CALL_HEAD, routines._CALL.format(params="a0", reads="")
    for source in (
        routines._entry_source(head, body, 1.0, "began").format(params="a0"),
        routines._entry_source(routines._WITHIN_HEAD, routines._WITHIN, None, ""),
    ):
        made: dict[str, Any] = {}
        exec(source, made)  # (the runtime's own template)
        code = next(v for v in made.values() if callable(v)).__code__
        assert not code.co_cellvars and not code.co_freevars

    def entry(n: int, began: float) -> None:
        frame = sys._getframe()
        try:
            raise ValueError(_Finalized())
        except ValueError as exc:
            assert stopping.local(frame, "exc") is exc
            frame.f_locals  # noqa: B018  (a look before: the frame's dict holds exc)
        # exc is gone; the dict still holds it, and a read of its slot leaves the dict be
        assert stopping.local(frame, "exc", "unbound") == "unbound"
        assert (stopping.local(frame, "n"), stopping.local(frame, "began")) == (n, began)
        assert stopping.local(frame, "nowhere", "absent") == "absent"
        assert _SEEN == []
        frame.f_locals  # noqa: B018  (what a look did: the dict drops exc, and it goes)
        assert _SEEN == ["finalized"]

    _SEEN.clear()
    entry(7, 1.5)
    # and nothing of the runtime's reads a frame's locals the other way
    runtime = Path(stopping.__file__).parent
    reads = [
        f"{file.name}:{node.lineno}"
        for file in runtime.glob("*.py")
        for node in ast.walk(ast.parse(file.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "f_locals"
    ]
    assert reads == []


def test_sharing_walks_what_calls_share_and_what_was_made_not_what_a_routine_keeps() -> None:
    """A first import's held work finds the classes it made by walking from object: not into
    the classes no call shares (a routine's, mutable), whose subclasses a red team made
    120,000 of, walked twice by every first import after, another role's included, with
    stops held (round 65). What the import makes is found, a class deriving from another
    it made included."""
    from pyfuncs._pg import classes

    kept = type("Kept", (), {})  # a routine's: mutable, made at run time
    below = [type(f"Below{i}", (kept,), {}) for i in range(1000)]
    shared, unshared = classes._classes()
    assert id(kept) in unshared and id(kept) not in shared
    assert not any(id(kind) in shared or id(kind) in unshared for kind in below)
    made = type("Made", (), {})  # what an import makes meanwhile
    derived = type("Derived", (made,), {})
    also_below = type("AlsoBelow", (kept,), {})
    found = classes._made_since(shared, unshared)
    assert made in found and derived in found
    assert also_below not in found and not set(below) & set(found)


def _bound(target: ast.expr) -> list[ast.expr]:
    """What an assignment to `target` binds (not an item of a subscript: `x.a[0] = ...`
    binds no attribute)."""
    if isinstance(target, ast.Tuple | ast.List):
        return [bound for element in target.elts for bound in _bound(element)]
    return _bound(target.value) if isinstance(target, ast.Starred) else [target]


def _assigning(attribute: str) -> list[str]:
    """The functions of the runtime's modules that bind `attribute` of some object."""
    assigned: list[str] = []
    for module in sorted(Path(stopping.__file__).parent.glob("*.py")):
        for function in ast.walk(ast.parse(module.read_text())):
            if isinstance(function, ast.FunctionDef):
                for node in ast.walk(function):
                    targets = (
                        node.targets
                        if isinstance(node, ast.Assign)
                        else [node.target]
                        if isinstance(node, ast.AnnAssign | ast.AugAssign)
                        else []
                    )
                    assigned += [function.name for target in targets for bound in _bound(target)
                                 if isinstance(bound, ast.Attribute) and bound.attr == attribute]  # fmt: skip
    return sorted(assigned)


def test_the_watchdogs_stop_is_set_only_with_its_byte() -> None:
    """The entry library reads whether the watchdog holds a stop from its byte `stop_set`
    (entry.c: a call's entry and db's queries), every guard from `stop`: each assignment of
    `stop` goes through `_hold`, which keeps the two together (an assignment elsewhere would
    leave a call's entry blind to a stop a finalizer swallowed). The byte and `budgets`,
    which db's queries read as the watchdog made them, are never replaced."""
    assert _assigning("stop") == ["__init__", "_hold"]
    assert _assigning("stop_set") == ["__init__"]
    assert _assigning("budgets") == ["__init__"]
