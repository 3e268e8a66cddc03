"""The entry library (pyfuncs/_pg/entry.c), outside PostgreSQL: an Entry does what the
Python entry (routines._CALL) does, step for step, and leaves nothing behind.

The library links against nothing: loaded into this interpreter it uses this Python's C
API, as in a backend it uses PL/Python's. `make setup` installs it where PostgreSQL keeps
its libraries (the backend loads it from there, backstop.load)."""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pyfuncs._pg import backstop, routines
from pyfuncs._pg.watchdog import RoutineInterrupted, local

LIBDIR = subprocess.run(
    ["/usr/lib/postgresql/15/bin/pg_config", "--pkglibdir"],
    capture_output=True, text=True, check=True,
).stdout.strip()  # fmt: skip
LIBRARY = Path(LIBDIR) / backstop.ENTRY_LIBRARY

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="backend's")
BIGINT = 1 << 63


class Watch:
    stop: Any = None
    checked = 0

    def check(self) -> None:
        self.checked += 1
        raise RoutineInterrupted()


class Made(Exception):
    """What `fail` makes of an exception (a PostgreSQL error, in the runtime)."""


def _config(function: Any, timeout: float | None = None, **more: Any) -> dict[str, Any]:
    undone: list[Any] = []
    seen: dict[str, Any] = {"undone": undone, "finished": [], "failed": [], "paid": []}

    def finish(result: Any) -> Any:
        seen["finished"].append((result, VAR.get()))
        return ("finished", result)

    def fail(exc: BaseException) -> Exception:
        seen["failed"].append((exc, VAR.get()))
        return Made(f"made of {type(exc).__name__}")

    config: dict[str, Any] = {
        "function": function, "namespace": {"module": 1}, "fail": fail, "finish": finish,
        "RoutineInterrupted": RoutineInterrupted, "settings": [7, "identity"],
        "calling": ["outer"], "undo": undone.append, "clock": memoryview(bytearray(24)).cast(
            "d"), "timeout": timeout, "grave": [], "owed": {}, "pay": seen["paid"].append,
        "watch": Watch(), "short": {float, bool, type(None)}, "long": {str, bytes},
        "most": 5, "lowest": -BIGINT, "longest": BIGINT, "unread": routines.Unread,
        "seen": seen,
    }  # fmt: skip
    config.update(more)
    return config


@pytest.fixture(scope="module", autouse=True)
def library() -> None:
    assert LIBRARY.exists(), f"{LIBRARY}: run `make setup` (or `make entry`)"
    backstop.load_entries(str(LIBRARY))


def _enter(config: dict[str, Any]) -> Any:
    """An Entry as pyfuncs_entry_new makes it (a runtime from before clocked entries): its
    calls are given when they began, first."""
    return backstop._makers[0](config)


def _clocked(config: dict[str, Any], arity: int) -> Any:
    """A routine's `call` entry function around a clocked Entry (routines._CALL_CLOCKED)."""
    enter, clocked = backstop.entry(config)
    assert clocked
    params = ", ".join(f"a{i}" for i in range(arity))
    namespace: dict[str, Any] = {"enter": enter}
    exec(routines._CALL_CLOCKED.format(params=params), namespace)
    return namespace["call"]


def _split(config: dict[str, Any], arity: int) -> Any:
    """A routine's `call` entry function that calls the function itself, between a clocked
    Entry's enter() and leave() (routines._CALL_SPLIT)."""
    enter, clocked = backstop.entry(config)
    assert clocked
    params = ", ".join(f"a{i}" for i in range(arity))
    namespace: dict[str, Any] = {
        "entry": enter, "enter": enter.enter, "leave": enter.leave, "failed": enter.failed,
        "function": config["function"],
    }  # fmt: skip
    exec(routines._CALL_SPLIT.format(params=params), namespace)
    return namespace["call"]


@pytest.fixture(params=["entry", "split"])
def kind(request: pytest.FixtureRequest) -> str:
    """An Entry that calls the function (given when its call began: the oldest maker's), or
    a split call (the entry frame calls it)."""
    return str(request.param)


def _call(config: dict[str, Any], kind: str, arity: int = 0) -> Any:
    """A call of `config`'s function, as `kind` makes it: takes the function's arguments."""
    if kind == "split":
        return _split(config, arity)
    enter = _enter(config)
    return lambda *args: enter(0.0, *args)


def test_results_are_kept_as_the_python_entry_keeps_them(kind: str) -> None:
    """Ints in bigint's range, short kinds, and long kinds up to `most` leave as they are;
    anything else is made plain by `finish`, in the call's context."""
    for value, kept in [
        (0, True), (BIGINT - 1, True), (-BIGINT, True), (BIGINT, False), (-BIGINT - 1, False),
        (1.5, True), (None, True), ("abcde", True), ("abcdef", False), ([1], False),
        (True, True),
    ]:  # fmt: skip
        config = _config(lambda v=value: v)
        result = _call(config, kind)()
        assert (result is value) == kept, value
        assert result == (value if kept else ("finished", value))
    # and with max_result_bytes (lowest = longest = 0, nothing short or long) nothing is
    config = _config(lambda: 3, short=(), long=(), lowest=0, longest=0)
    assert _call(config, kind)() == ("finished", 3)
    # at the bounds of ranges, and of each count of Python's 30-bit digits
    for low, high in [(-5, 7), (-(2**30), 2**30), (-(2**60), 2**60), (2**29, 2**31)]:
        for value in {low - 1, low, low + 1, high - 1, high, high + 1, 0, 2**30 - 1, 2**30,
                      -(2**30), 2**60 - 1, 2**60, -(2**60) + 1}:  # fmt: skip
            result = _call(_config(lambda v=value: v, lowest=low, longest=high), kind)()
            assert result == (value if low <= value < high else ("finished", value)), value


def test_a_call_runs_in_a_context_of_its_own_and_gives_everything_back(kind: str) -> None:
    deadlines: list[float] = []

    def function(a: Any, b: Any) -> str:
        VAR.set("the call's")
        assert config["calling"] == [config["namespace"]]
        assert config["settings"] == [0, "identity"]
        deadlines.append(clock[0])
        config["settings"][0] = 3  # (the level a query of the call opened)
        return f"{a}{b}{VAR.get()}" + "x" * 10

    config = _config(function, timeout=0.25)
    clock = config["clock"]
    clock[0] = 42.0
    before = time.monotonic()
    if kind == "split":  # (it reads when its call began itself)
        assert _split(config, 2)(1, 2) == ("finished", "12the call's" + "x" * 10)
        assert before + 0.25 <= deadlines[0] <= time.monotonic() + 0.25
    else:
        assert _enter(config)(100.0, 1, 2) == ("finished", "12the call's" + "x" * 10)
        assert deadlines == [pytest.approx(100.25)]
    assert config["seen"]["finished"] == [("12the call's" + "x" * 10, "the call's")]
    assert VAR.get() == "backend's"
    assert config["calling"] == ["outer"] and config["settings"] == [7, "identity"]
    assert clock[0] == 42.0 and config["seen"]["undone"] == [3]


def test_arguments_read_inside_the_call_and_what_is_owed_paid_there() -> None:
    config = _config(lambda a, b: (a, b, VAR.get()), owed={"owed": 1})
    config["pay"] = lambda module: config["seen"]["paid"].append((module, VAR.get()))
    config["grave"].append("a frame let go of")
    argument = routines.Unread(lambda v: (VAR.set("read"), v)[1], 5)
    assert _enter(config)(0.0, argument, 6) == ("finished", (5, 6, "read"))
    assert config["seen"]["paid"] == [({"module": 1}, "backend's")]
    assert config["grave"] == [] and VAR.get() == "backend's"


def test_an_exception_leaves_as_the_error_fail_makes_of_it_in_the_calls_context(kind: str) -> None:
    def function() -> None:
        VAR.set("the call's")
        raise ValueError("boom")

    config = _config(function, timeout=1.0)
    with pytest.raises(Made, match="made of ValueError"):
        _call(config, kind)()
    [(exc, where)] = config["seen"]["failed"]
    assert where == "the call's" and exc.__traceback__ is not None
    assert config["calling"] == ["outer"] and config["settings"] == [7, "identity"]
    assert config["clock"][0] == 0.0


def test_a_stop_leaves_as_a_fresh_routine_interrupted(kind: str) -> None:
    stop = RoutineInterrupted("the routine's, with its frames")

    def function() -> None:
        raise stop

    config = _config(function)
    with pytest.raises(RoutineInterrupted) as caught:
        _call(config, kind)()
    assert caught.value is not stop and caught.value.args == ()
    assert config["seen"]["failed"] == [] and config["calling"] == ["outer"]
    # a stop the function did not see (a finalizer swallowed it) is raised as it returns
    config = _config(lambda: 1)
    config["watch"].stop = "due"
    with pytest.raises(RoutineInterrupted):
        _call(config, kind)()
    assert config["watch"].checked == 1


def test_with_the_watchdogs_byte_a_stop_is_read_there(kind: str) -> None:
    """The runtime gives the watchdog's `stop_set` (one byte, kept by its `stop`): the
    entry reads it instead of looking `stop` up on the watchdog at every call."""
    flag = memoryview(bytearray(1))
    config = _config(lambda: 1, stop_set=flag)
    config["watch"].stop = "due"  # (not what it reads now)
    assert _call(config, kind)() == 1 and config["watch"].checked == 0
    flag[0] = 1
    with pytest.raises(RoutineInterrupted):
        _call(config, kind)()
    assert config["watch"].checked == 1


def test_an_undo_that_fails_replaces_the_result(kind: str) -> None:
    def function() -> int:
        config["settings"][0] = 2
        return 1

    def undo(level: int) -> None:
        raise RuntimeError(f"undo {level}")

    config = _config(function, undo=undo)
    # (a split call's failed() makes the error of it; an Entry leaves that to the body)
    with pytest.raises(Made if kind == "split" else RuntimeError, match=r"RuntimeError|undo 2"):
        _call(config, kind)()
    assert config["settings"] == [7, "identity"] and config["calling"] == ["outer"]


def test_a_config_it_cannot_use_is_refused() -> None:
    config = _config(lambda: 1)
    del config["fail"]
    with pytest.raises(KeyError, match="fail"):
        _enter(config)
    with pytest.raises(TypeError, match="wrong kinds"):
        _enter(_config(lambda: 1, settings=[1]))
    with pytest.raises(TypeError, match="memoryview of doubles"):
        _enter(_config(lambda: 1, timeout=1.0, clock=memoryview(b"x" * 8)))
    with pytest.raises(TypeError, match="began"):
        _enter(_config(lambda: 1))()
    for odd in (bytearray(1), memoryview(bytearray(8)).cast("d"), memoryview(b"")):
        with pytest.raises(TypeError, match="stop_set is a memoryview of bytes"):
            _enter(_config(lambda: 1, stop_set=odd))


def test_an_undo_after_a_failed_call_runs_with_the_error_put_aside(kind: str) -> None:
    """As a `finally` does: the settings a failed call's queries changed are undone, and
    the call's error leaves after it."""

    def function() -> None:
        config["settings"][0] = 4
        raise ValueError("after a query")

    config = _config(function)
    with pytest.raises(Made, match="made of ValueError"):
        _call(config, kind)()
    assert config["seen"]["undone"] == [4] and config["settings"] == [7, "identity"]


def test_what_the_call_held_is_let_go_of_after_it_gave_everything_back() -> None:
    """The result as the function returned it, the arguments read and the call's context
    live until the call has given back its module, as the Python entry's frame holds them:
    their finalizers run outside the call (round 72)."""
    seen: list[Any] = []

    class Held(list):  # type: ignore[type-arg]
        def __del__(self) -> None:
            seen.append((self[0], config["calling"][0], config["settings"][0]))

    def function(a: Any) -> Any:
        VAR.set(Held(["context"]))  # type: ignore[arg-type]
        return Held(["result"])

    config = _config(function, finish=lambda result: "made plain")
    argument = routines.Unread(lambda v: Held([v]), "argument")
    assert _enter(config)(0.0, argument) == "made plain"
    assert sorted(seen) == [(name, "outer", 7) for name in ("argument", "context", "result")]


def test_each_call_sees_an_empty_context_whatever_the_last_left(kind: str) -> None:
    """No call of an entry sees the variables another set in its context, reset or not,
    nor a copy one kept of it."""
    seen: list[str] = []

    def function(how: str) -> int:
        seen.append(VAR.get())
        token = VAR.set(f"set by {how}")
        if how == "reset":
            VAR.reset(token)
        elif how == "kept":
            kept.append(contextvars.copy_context())
        return 1

    kept: list[contextvars.Context] = []
    enter = _call(_config(function), kind, 1)
    for how in ["reset", "reset", "left set", "reset", "kept", "left set", "reset"]:
        assert enter(how) == 1
    assert seen == ["backend's"] * 7 and VAR.get() == "backend's"
    assert kept[0][VAR] == "set by kept"  # (a copy: what it holds stays its own)


def test_a_clocked_entry_notes_when_its_call_began_in_the_entry_frame() -> None:
    """It reads the clock itself, notes the time in the entry frame's `began` (where the
    watchdog reads it) and sets the call's deadline from it; the function gets the
    arguments alone."""
    noted: list[Any] = []

    def function(a: Any, b: Any) -> Any:
        entry_frame = sys._getframe(1)  # (the Entry, C, has no frame of its own)
        noted.append((local(entry_frame, "began"), clock[0]))
        return a + b

    config = _config(function, timeout=0.25)
    clock = config["clock"]
    clock[0] = 42.0
    call = _clocked(config, 2)
    before = time.monotonic()
    assert call(1, 2) == 3
    after = time.monotonic()
    began, deadline = noted[0]
    assert before <= began <= after and deadline == pytest.approx(began + 0.25)
    assert clock[0] == 42.0
    assert call(3, 4) == 7 and noted[1][0] >= began  # (noted again, in the next call's frame)


def test_a_noted_start_is_reused_only_where_nothing_holds_it() -> None:
    """The float a call's start was noted in is the next call's only where nothing holds
    it any more (the watchdog may keep what it read): one that is held keeps its value."""
    seen: list[tuple[int, float]] = []
    held: list[Any] = []

    def function(keep: bool) -> int:
        began = local(sys._getframe(1), "began")
        seen.append((id(began), began + 0.0))  # (a copy: float() gives the float itself)
        if keep:
            held.append(began)
        return 1

    call = _clocked(_config(function), 1)
    for keep in [True, False, False, True, False]:
        assert call(keep) == 1
        time.sleep(0.001)
    ids = [i for i, _ in seen]
    times = [t for _, t in seen]
    assert times == sorted(times) and len(set(times)) == 5
    assert ids[2] == ids[1] and ids[3] == ids[2]  # (reused while nothing held it)
    assert ids[4] != ids[3]  # (the fourth is held: the fifth is a float of its own)
    assert held == [times[0], times[3]]


def test_a_clocked_entry_leaves_a_frame_without_began_alone() -> None:
    """Called from a frame that has no local `began`, it notes nothing there."""

    def caller(enter: Any) -> Any:
        other = "kept"
        result = enter(5)
        return result, other, sorted(sys._getframe().f_locals)

    enter, _ = backstop.entry(_config(lambda a: a * 2))
    assert caller(enter) == (10, "kept", ["enter", "other", "result"])


def test_a_context_still_held_is_not_the_next_calls() -> None:
    """A call's context is the next call's only where it is empty and nothing holds it: a
    ContextVar token kept from a call keeps its context (whose variables a reset then
    empties) out of every later call."""
    tokens: list[Any] = []
    seen: list[str] = []

    def function(how: str) -> int:
        seen.append(VAR.get())
        if how == "keep a token":
            tokens.append(VAR.set("set by a kept token's call"))
        elif how == "reset it":
            with pytest.raises(ValueError):  # (made in another context: not this call's)
                VAR.reset(tokens[0])
        return 1

    call = _clocked(_config(function), 1)
    for how in ["keep a token", "reset it", "nothing", "nothing"]:
        assert call(how) == 1
    assert seen == ["backend's"] * 4 and VAR.get() == "backend's"


# A split call (routines._CALL_SPLIT): stops land where Python looks for them, which is also
# after enter's, leave's and failed's calls in the entry frame. Each test sets one there
# (Python raises an exception set for a thread at the next place it looks: here, the entry
# frame's, right after the C call that set it).
_SET_ASYNC = ctypes.pythonapi.PyThreadState_SetAsyncExc
_SET_ASYNC.argtypes = [ctypes.c_ulong, ctypes.py_object]


def _given_back(config: dict[str, Any]) -> bool:
    return config["calling"] == ["outer"] and config["settings"] == [7, "identity"]


def test_a_split_calls_stop_landing_after_enter_ends_the_call() -> None:
    """enter() pays what is owed with a C callable that sets a stop: it lands in the entry
    frame after enter returned, and the handler's failed() ends the call."""
    ran: list[int] = []
    config = _config(lambda: ran.append(1) or 1, owed={"owed": 1}, namespace=RoutineInterrupted,
                     timeout=1.0)  # fmt: skip
    config["pay"] = functools.partial(_SET_ASYNC, threading.get_ident())
    with pytest.raises(RoutineInterrupted) as caught:
        _split(config, 0)()
    assert ran == [] and caught.value.__context__ is None and caught.value.args == ()
    assert _given_back(config) and config["clock"][0] == 0.0
    config["pay"], config["owed"] = config["seen"]["paid"].append, {}
    assert _split(config, 0)() == 1  # (nothing left over for the next call)


def test_a_split_calls_stop_landing_in_enter_or_the_function_ends_the_call() -> None:
    def pay(module: Any) -> None:
        raise RoutineInterrupted("in enter")

    config = _config(lambda: 1, owed={"owed": 1}, pay=pay)
    with pytest.raises(RoutineInterrupted) as caught:
        _split(config, 0)()
    assert caught.value.args == () and _given_back(config)

    def function(a: Any) -> None:
        VAR.set("the call's")
        raise RoutineInterrupted("the routine's, with its frames")

    config = _config(function)
    with pytest.raises(RoutineInterrupted) as caught:
        _split(config, 1)(1)
    assert caught.value.args == () and caught.value.__context__ is None
    assert config["seen"]["failed"] == [] and _given_back(config) and VAR.get() == "backend's"


def test_a_split_calls_stop_landing_after_leave_leaves_as_a_stop() -> None:
    """finish (C here) sets a stop as it makes the result plain: the call has given back
    everything when it lands, and failed() hands it on, fresh."""
    config = _config(lambda: RoutineInterrupted, timeout=1.0)
    config["finish"] = functools.partial(_SET_ASYNC, threading.get_ident())
    with pytest.raises(RoutineInterrupted) as caught:
        _split(config, 0)()
    assert caught.value.__context__ is None and _given_back(config)
    assert config["clock"][0] == 0.0 and config["seen"]["failed"] == []


def test_failed_takes_the_exception_out_of_the_handler() -> None:
    """What is raised in the handler after failed() (a stop landing there) has nothing of
    the routine's as its context; the error leaves without one too."""
    seen: list[Any] = []
    source = routines._CALL_SPLIT.format(params="").replace(
        "error = failed(entry)", "error = failed(entry)\n        seen.append(sys.exc_info())"
    )
    assert "seen.append" in source

    def function() -> None:
        raise ValueError("the routine's")

    config = _config(function)
    enter = backstop.entry(config)[0]
    namespace = {"entry": enter, "enter": enter.enter, "leave": enter.leave,
                 "failed": enter.failed, "function": function, "seen": seen, "sys": sys}  # fmt: skip
    exec(source, namespace)
    with pytest.raises(Made) as caught:
        namespace["call"]()
    assert seen == [(None, None, None)]
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    assert _given_back(config)


def test_an_exceptions_frames_are_let_go_of_inside_the_split_call() -> None:
    """failed() lets go of the exception before it gives anything back: the finalizers of
    its frames' locals run inside the call (where the Python entry's handler ends), the
    result's after it (round 72)."""
    seen: list[Any] = []

    class Held(list):  # type: ignore[type-arg]
        def __del__(self) -> None:
            seen.append((self[0], config["calling"][0] is config["namespace"]))

    def function(fail: bool) -> Any:
        local = Held(["local"])
        if fail:
            raise ValueError(local)
        return Held(["result"])

    config = _config(function, finish=lambda result: "made plain", fail=lambda exc: Made())
    call = _split(config, 1)
    with pytest.raises(Made):
        call(True)
    assert seen == [("local", True)]
    seen.clear()
    assert call(False) == "made plain"
    assert sorted(seen) == [("local", True), ("result", False)]


def test_nested_split_calls_of_one_routine_each_give_back_their_own() -> None:
    """Calls of the routine inside its call (through SQL, in the runtime) keep records of
    their own: each ends its own, whichever way it leaves, at any depth."""
    depths: list[Any] = []

    def function(n: int) -> int:
        config["settings"][1] = f"identity {n}"
        if n <= 0:
            if n < 0:
                raise ValueError("inside")
            return 0
        with contextlib.suppress(Made):
            call(n - 1 if n % 3 else -1)
        depths.append((n, config["settings"][1], config["calling"][0] is config["namespace"]))
        if n == 7:
            raise ValueError("at 7")
        return n

    config = _config(function)
    call = _split(config, 1)
    assert call(5) == 5
    with pytest.raises(Made):
        call(7)
    assert all(identity == f"identity {n}" and inside for n, identity, inside in depths)
    assert _given_back(config)
    assert call(0) == 0


def test_leave_and_failed_outside_a_call_are_refused() -> None:
    entry = backstop.entry(_config(lambda: 1))[0]
    with pytest.raises(SystemError, match="leave"):
        entry.leave(entry, 1)
    with pytest.raises(SystemError, match="failed"):
        entry.failed(entry)
    for wrong in [(), (1, 1), (entry,)]:  # (the entry first, and nothing else)
        with pytest.raises(TypeError, match="leave"):
            entry.leave(*wrong)


_SET_LIMIT = ctypes.pythonapi.Py_SetRecursionLimit  # (sys's refuses a limit below the depth)


def _depth() -> int:
    """The recursion depth Python counts here (frames, and C calls under way), as the
    refusal of a limit below it says."""
    with pytest.raises(RecursionError) as refused:
        sys.setrecursionlimit(1)
    return int(str(refused.value).split("depth ")[1].split(":")[0])


def test_a_split_call_at_the_recursion_limits_edge_always_ends() -> None:
    """Round 79: enter, leave and failed were methods, which Python does not call past the
    recursion limit (it raises RecursionError instead), and the limit moves during a call
    (held work raises it, the watchdog's look gives it back): enter ran and failed did not,
    and the call never gave back its module or context. They are called whatever the depth
    now: a call that began ends, whether the function recurses to the limit itself, or the
    limit comes down to (or below) the entry frame's depth while the function runs."""

    def down(n: int) -> int:
        return n if n <= 0 else down(n - 1)

    def function(n: int, lower: int | None) -> int:
        VAR.set("the call's")
        if lower is not None:
            _SET_LIMIT(_depth() + lower)
            if n:
                raise ValueError("at the edge")
            return n
        try:
            return down(n)
        except RecursionError:
            return -1

    def at(depth: int, call: Any, n: int, lower: int | None) -> Any:
        if depth > 0:
            return at(depth - 1, call, n, lower)
        try:
            return call(n, lower)
        except BaseException as error:  # (at the lowered limit: give it back first)
            _SET_LIMIT(limit)
            return type(error).__name__

    config = _config(function)
    limit = sys.getrecursionlimit()
    outcomes = set()
    warm = _split(config, 2)  # (its instructions specialized by the calls before)
    for _ in range(100):
        assert warm(1, None) == 0
        with pytest.raises(Made):  # (through failed; the limit raised, and given back)
            warm(1, 10_000)
        _SET_LIMIT(limit)
    try:
        for depth in (0, 1, 5, 20):
            for lower in (None, 1, 0, -1, -2, -3):
                for n in (0, 1, 10_000):
                    # (and a fresh entry frame's code: Python calls through its unspecialized
                    # path first, which checks the limit for a method where the specialized
                    # one may not)
                    for call in (warm, _split(config, 2)):
                        outcomes.add(at(depth, call, n, lower))
                        _SET_LIMIT(limit)
                        assert _given_back(config), (depth, n, lower)
                        assert VAR.get() == "backend's", (depth, n, lower)
    finally:
        _SET_LIMIT(limit)
    assert {0, -1, "RecursionError", "Made"} <= outcomes, outcomes
    assert _split(config, 2)(3, None) == 0 and _given_back(config)


def test_frames_let_go_of_are_dropped_in_the_calls_context(kind: str) -> None:
    """Round 79: the frames the watchdog let go of were dropped before the call entered its
    context, so a finalizer of the routine's ran (its module the one under way) in the
    context of whatever called: what it set there (decimal's context) outlived the call."""
    seen: list[Any] = []

    class Held:
        def __del__(self) -> None:
            seen.append((VAR.get(), config["calling"][0] is config["namespace"]))
            VAR.set("set by a finalizer")

    config = _config(lambda: 1)
    config["grave"].append(Held())
    token = VAR.set("the caller's")
    try:
        assert _call(config, kind)() == 1
        assert VAR.get() == "the caller's"
    finally:
        VAR.reset(token)
    assert seen == [("backend's", True)] and config["grave"] == []
