"""The contained child process in which `pyfuncs check` and `deploy` execute a routine module.

A routine module is code nobody may have reviewed yet (`pyfuncs check` runs in CI and in
pre-commit hooks), so the deployer's machine never executes it. pyfuncs.collect starts this
file with a clean environment, writes a request on its stdin (`{"source", "file", "module",
"allowed", "path", "cpu_seconds", "memory_bytes"}`) and reads one JSON answer on its stdout:
`{"routines": [facts...]}` (pyfuncs.definition.facts_of) or `{"error": {"message", "line"}}`.

Before a line of the module runs, the process is contained:

1. everything it will need is imported, the standard library modules a routine may import
   among them (nothing can be imported later: see 3);
2. resource limits: CPU seconds and address space (the parent also kills it after a wall
   clock timeout), no core file, no file larger than 0 bytes;
3. on Linux, a seccomp filter, on every thread of the process (TSYNC): from then on the
   process may compute, manage its memory and read or write the pipes it was given, and
   nothing else. Opening a file, creating, renaming or removing one, running a program,
   starting a process or a thread, opening a socket, signalling another process: every
   system call outside a short allow-list fails with EPERM. Whatever a module does to
   Python's guards, it cannot leave a trace.

Then the module runs as it does in the database: compiled by the runtime's guards
(pyfuncs/_pg/), with its restricted builtins and allow-listed imports, importing a
`pyfuncs` that holds only the public API for routines (the decorators record their options
here; `db` cannot be used while a module is collected).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import sys
import traceback
import types
from typing import Any

# what Python needs to compute, manage memory, and read or write the pipes it already holds
ALLOWED_SYSCALLS = (
    "read", "write", "readv", "writev", "lseek", "fstat", "close", "brk", "mmap", "munmap",
    "mremap", "mprotect", "madvise", "futex", "getrandom", "clock_gettime", "clock_getres",
    "gettimeofday", "nanosleep", "clock_nanosleep", "rt_sigaction", "rt_sigprocmask",
    "rt_sigreturn", "sigaltstack", "sched_yield", "getpid", "gettid", "exit", "exit_group",
)  # fmt: skip

# imported on first use by allowed modules (strptime, codecs) and by the runtime's guards
# (copy, for `x *= y`): imported now, while imports can still read files
LAZY = ("_strptime", "encodings.idna", "encodings.latin_1", "encodings.ascii",
        "encodings.utf_16", "encodings.utf_32", "encodings.cp1252", "unicodedata",
        "copy")  # fmt: skip


class Refused(Exception):
    """The module cannot be collected: the message says why (and `line`, where)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def contain(cpu_seconds: int, memory_bytes: int) -> str:
    """Resource limits, then (on Linux) the seccomp filter. Returns how it is contained."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))  # SIGXCPU first
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    if not sys.platform.startswith("linux"):
        return "resource limits"
    import errno

    import pyseccomp as seccomp

    syscall_filter = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for name in ALLOWED_SYSCALLS:
        syscall_filter.add_rule(seccomp.ALLOW, name)
    try:
        # for every thread of the process, not only this one: an allowed module may have
        # started one when it was imported (the kernel fails the load rather than leave one
        # of them unfiltered)
        syscall_filter.set_attr(seccomp.Attr.CTL_TSYNC, 1)
    except OSError:  # a libseccomp without TSYNC: then there must be no other thread
        if len(os.listdir("/proc/self/task")) != 1:
            raise Refused("a module imported for the check started a thread, which this "
                          "system's seccomp cannot contain; leave it out of "
                          "PYFUNCS_ALLOWED_MODULES") from None  # fmt: skip
    syscall_filter.load()
    return "seccomp"


def _shim(marked: list[tuple[Any, str, dict[str, Any]]]) -> types.ModuleType:
    """The `pyfuncs` a routine module imports here: the decorators record what they mark."""
    from pyfuncs._pg import vocabulary
    from pyfuncs._pg.db import Rows
    from pyfuncs._pg.errors import RaiseError

    def recorder(kind: str) -> Any:
        def decorator(fn: Any = None, /, **options: Any) -> Any:
            def mark(f: Any) -> Any:
                if not callable(f):
                    raise TypeError(f"@{decorator.__name__} decorates functions")
                marked.append((f, kind, options))
                return f

            return mark(fn) if fn is not None else mark

        decorator.__name__ = "stored_function" if kind == "function" else "procedure"
        return decorator

    class Db:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(
                "db is not available while a module is checked: use it inside routines, "
                "not at module level"
            )

    shim = types.ModuleType(vocabulary.SHIM_NAME)
    shim.__dict__.update(
        db=Db(), Rows=Rows, RaiseError=RaiseError, stored_function=recorder("function"),
        procedure=recorder("procedure"),
        __all__=list(vocabulary.ROUTINE_API),
    )  # fmt: skip
    return shim


def _line_in(exc: BaseException, filename: str) -> int | None:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return frames[-1].lineno if frames else None


def collect(request: dict[str, Any]) -> dict[str, Any]:
    from pyfuncs._pg import bounded, classes, guards, sandbox  # noqa: F401  (guards: read now)
    from pyfuncs._pg import watchdog as stopping
    from pyfuncs.definition import facts_of

    allowed = frozenset(request["allowed"])
    for name in sorted(allowed) + list(LAZY):
        with contextlib.suppress(ImportError):  # the module's own import will say so
            importlib.import_module(name)
    # (read from files: now, while the child still may)
    bounded.python_ordered_dict()
    bounded.guarded_json()
    classes.install()  # (as in the database: no metaclasses, shared classes immutable)
    bounded.hold_unicodedata(importlib.import_module("unicodedata"))
    marked: list[tuple[Any, str, dict[str, Any]]] = []
    api = _shim(marked)
    sandbox.API = lambda module: api
    filename, module = request["file"], request["module"]
    how = contain(request["cpu_seconds"], request["memory_bytes"])
    try:
        namespace = sandbox.load_module(request["source"], filename, module, allowed)
    except SyntaxError as exc:
        raise Refused(f"syntax error: {exc.msg}", exc.lineno) from None
    except MemoryError:
        raise Refused("the module used more memory than a check allows "
                      f"({request['memory_bytes'] >> 20} MB of address space)") from None  # fmt: skip
    except BaseException as exc:  # whatever the module's own code raised
        message = f"importing {module} failed: {type(exc).__name__}: {exc}"
        if isinstance(exc, OSError):
            message += " (module-level code may not use files or the OS while it is checked)"
        raise Refused(message, _line_in(exc, filename)) from None
    # what it is described by (annotations, defaults) is read as in a call of its own: a
    # module's code runs only in those (watchdog.CALLING)
    stopping.CALLING[0] = namespace
    routines, seen = [], set()
    for fn, kind, options in marked:
        if id(fn) in seen or namespace.get(str(getattr(fn, "__name__", ""))) is not fn:
            continue  # decorated, but not what the module's name for it holds in the end
        seen.add(id(fn))
        try:
            routines.append(facts_of(fn, kind, options))  # type: ignore[arg-type]
        except BaseException as exc:
            raise Refused(f"describing {getattr(fn, '__name__', 'a routine')} failed: "
                          f"{type(exc).__name__}: {exc}", _line_in(exc, filename)) from None  # fmt: skip
    return {"routines": routines, "contained": how}


def main() -> None:
    request = json.loads(sys.stdin.read())
    sys.path.insert(0, request["path"])  # where pyfuncs itself is (the child runs with -I)
    # the answer goes to the pipe on fd 1; what the module prints goes to stderr instead
    answers = os.dup(1)
    os.dup2(2, 1)
    try:
        answer: dict[str, Any] = collect(request)
    except Refused as exc:
        answer = {"error": {"message": str(exc)[:2000], "line": exc.line}}
    except MemoryError:
        answer = {"error": {"message": "the module used more memory than a check allows "
                            f"({request['memory_bytes'] >> 20} MB)", "line": None}}  # fmt: skip
    except BaseException as exc:  # its exception's str() failed, say
        answer = {"error": {"message": f"the check failed: {type(exc).__name__}", "line": None}}
    data = json.dumps(answer).encode()
    while data:
        data = data[os.write(answers, data) :]


if __name__ == "__main__":
    main()
