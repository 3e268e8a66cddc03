"""Collecting a routine module's definitions for `pyfuncs check` and `deploy`, without running
its code here.

The module is found and read as a file: a dotted name is looked up on the path, never
imported (importing a package runs its `__init__`). Its source passes the policy check
(pyfuncs.policy); then it is executed in a contained child process (pyfuncs._sandbox) that
answers with plain facts about each routine, and those facts are validated against the source
and the vocabularies (pyfuncs.definition.build). The deployer's machine, and CI's, never run a
line of the module.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from . import _sandbox, policy
from ._pg.vocabulary import reserved_module_name
from .definition import Definition, build
from .errors import DefinitionError, capped, printable
from .limits import Limits
from .module_source import ModuleSource, display_path, routine_sources, stored_size

# what executing a module for a check may take (module-level code should take next to nothing)
TIMEOUT = 30.0  # seconds of wall clock
CPU_SECONDS = 20
MEMORY_BYTES = 1 << 30  # of address space
# what a module may be: checking it takes time linear in these, and the catalog stores each
# routine with the module code it uses
MAX_SOURCE_BYTES = 1 << 20
MAX_ROUTINES = 1000
MAX_STORED = 64 << 20  # characters of source all of a module's routines keep, together
# what a child may answer: about 1 KB describes a routine (options, parameters, hints,
# defaults), so this leaves a routine 8 KB at the most routines a module may have
MAX_ANSWER = 8 << 20
MAX_ERRORS = 20  # routines whose problems a report lists (then how many more there are)


def _clean(text: str, limit: int = 2000) -> str:
    """Text from the child, shown to whoever runs the check: one line (no control
    characters: no terminal escapes, no forged lines), and not too long."""
    return printable(text[: limit * 2])[:limit]


def find(target: str | ModuleType) -> tuple[str, Path, Path | None]:
    """The module's name (as the database will load it), its file and the directory that
    file is looked up from (see `_open`; None for a module the application imported itself),
    without importing it."""
    if isinstance(target, ModuleType):
        file = getattr(target, "__file__", None)
        if not file:
            raise DefinitionError(f"{target.__name__} has no source file")
        return target.__name__, Path(file), None
    if target.endswith(".py") or "/" in target or os.sep in target:
        path = Path(target)
        if not os.path.lexists(path):
            raise DefinitionError(f"no such file: {printable(target)}")
        # the name the database gives the module: an identifier, whatever the file is called
        stem = re.sub(r"\W", "_", path.stem)
        name = f"pyfuncs_user.{'_' if stem[:1].isdigit() else ''}{stem}"
        cwd = Path.cwd()
        if path.is_absolute() and path.parts[: len(cwd.parts)] == cwd.parts:
            return name, Path(*path.parts[len(cwd.parts) :]), cwd
        if path.is_absolute():
            return name, path.relative_to(path.anchor), Path(path.anchor)
        return name, path, cwd
    parts = target.split(".")
    if not all(part.isidentifier() for part in parts):
        raise DefinitionError(f"{printable(repr(target))} is neither a file path nor a module name")
    for entry in [os.getcwd(), *sys.path]:
        base = Path(entry or ".")
        for relative in (Path(*parts).with_suffix(".py"), Path(*parts, "__init__.py")):
            if os.path.lexists(base / relative):
                return target, relative, base
    raise DefinitionError(
        f"cannot find module {target!r} on the path (it is looked up, not imported); pass a "
        "file path, or run from the directory the module's package is in"
    )


def _open(relative: Path, base: Path) -> int:
    """Open `base/relative` for reading without following a symbolic link below `base`.

    A module's path is chosen by the deployer, but what lies below the working directory
    (or the path entry a dotted name is found on) may come from the change under review: a
    checkout can hold `routines.py -> ~/.env`, or a directory linked anywhere. Reading one
    would run the deployer's file as the module, and its contents would come back in error
    messages. So each component is opened relative to the last with O_NOFOLLOW (nothing can
    be swapped in between), and a link is refused. Links above `base` (the working
    directory's own path, say) are the deployer's, and followed.
    """
    display = printable(str(relative if base == Path.cwd() else base / relative))
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    *directories, last = relative.parts
    for part in directories:
        fd = _step(fd, part, stat.S_ISDIR, display)
    return _step(fd, last, stat.S_ISREG, display)


def _step(fd: int, part: str, kind: Callable[[int], bool], display: str) -> int:
    """Open `part` in the directory `fd` (and close that): a directory or a regular file as
    `kind` says, never through a symbolic link."""
    try:
        mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            raise DefinitionError(
                f"{display}: {printable(part)!r} is a symbolic link, and pyfuncs reads a module "
                "only through real files and directories (a link in a checkout could point at "
                "any file of the deployer's); pass the module's real path"
            )
        if not kind(mode):  # a FIFO or a device is never opened: that could block or act
            raise DefinitionError(f"no such file: {display} ({printable(part)!r} is not a "
                                  f"{'directory' if kind is stat.S_ISDIR else 'regular file'})")  # fmt: skip
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        opened = os.open(part, flags | (os.O_DIRECTORY if kind is stat.S_ISDIR else 0), dir_fd=fd)
    except OSError as exc:  # ELOOP: it became a link since the check above
        raise DefinitionError(f"cannot read {display}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if not kind(os.fstat(opened).st_mode):  # it was replaced since the check above
        os.close(opened)
        raise DefinitionError(f"cannot read {display}: it changed while it was read")
    return opened


def read(target: str | ModuleType) -> ModuleSource:
    """The module's source, read as a file (never imported), at most MAX_SOURCE_BYTES."""
    name, path, base = find(target)
    if reserved_module_name(name):
        raise DefinitionError(
            f"a routine module may not be called {name!r}: the database loads it under that "
            "name, which is a module of the standard library or of pyfuncs (rename it)"
        )
    if base is None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # imported already: its own file
    else:
        fd = _open(path, base)
        path = base / path
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_SOURCE_BYTES + 1)
    shown = display_path(path)
    if len(data) > MAX_SOURCE_BYTES:
        raise DefinitionError(
            f"{shown} is larger than {MAX_SOURCE_BYTES >> 20} MB, the most a routine module may "
            "be; split it into several modules"
        )
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise DefinitionError(f"cannot read {shown}: not UTF-8 ({exc.reason} at byte "
                              f"{exc.start})") from None  # fmt: skip
    # universal newlines, as Path.read_text reads (and versions were fingerprinted) before
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    module = ModuleSource.parse(name, shown, text)
    routines = sum(
        1
        for node in module.tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.decorator_list
    )
    if routines > MAX_ROUTINES:
        raise DefinitionError(
            f"{shown} has {routines} decorated functions; a module may define at most "
            f"{MAX_ROUTINES} routines: split it into several modules"
        )
    return module


def enforce_policy(module: ModuleSource) -> None:
    """Refuse a routine module whose source breaks the policy (see pyfuncs.policy)."""
    violations = policy.check_source(module.text, module.file)
    if violations:
        shown = capped([printable(str(v)) for v in violations], MAX_ERRORS, "violations", 2000)
        raise DefinitionError(
            f"{len(violations)} policy violation(s), nothing was deployed:\n"
            + "\n".join(f"  {v}" for v in shown)
        )


@functools.lru_cache(maxsize=16)
def _run_child(request: str) -> dict[str, Any]:
    """Execute a module in the contained child (pyfuncs._sandbox) and read its answer. One
    answer per request: the same source, file, name and allow-list give the same facts."""
    import pyfuncs

    command = [sys.executable, "-I", "-B", _sandbox.__file__]
    env = {"PATH": os.defpath, "LC_ALL": "C.UTF-8"}  # nothing of the deployer's environment
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, cwd="/")  # fmt: skip
    except OSError as exc:
        raise DefinitionError(f"the module cannot be checked: {exc}") from None
    assert proc.stdin is not None and proc.stdout is not None
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(TIMEOUT, stop)
    timer.start()
    try:
        path = str(Path(pyfuncs.__file__).resolve().parent.parent)
        limits = {"cpu_seconds": CPU_SECONDS, "memory_bytes": MEMORY_BYTES, "path": path}
        proc.stdin.write(json.dumps({**json.loads(request), **limits}).encode())
        proc.stdin.close()
        data = proc.stdout.read(MAX_ANSWER + 1)
    except BrokenPipeError:
        data = b""
    finally:
        proc.kill()
        code = proc.wait()
        timer.cancel()
        proc.stdout.close()
    if timed_out.is_set() and not data:
        raise DefinitionError(
            f"checking the module took more than {TIMEOUT:g} s: module-level code must not run "
            "that long (routines run when they are called, not when the module loads)"
        )
    if len(data) > MAX_ANSWER:
        raise DefinitionError(
            f"the module's routines take more than {MAX_ANSWER >> 20} MB to describe (their "
            "options, parameters, type hints and default values): use smaller default values, "
            "or split the module"
        )
    try:
        answer = json.loads(data)
    except RecursionError:  # nested deeper than a description ever is
        raise DefinitionError("checking the module gave an unreadable answer") from None
    except ValueError:
        cpu = f"used more than {CPU_SECONDS} s of CPU: module-level code must not run that long"
        why = {-24: cpu, -9: cpu}.get(code, f"exit status {code}")
        raise DefinitionError(f"checking the module failed ({why}) without an answer") from None
    if not isinstance(answer, dict):
        raise DefinitionError("checking the module gave an unreadable answer")
    return answer


def facts(module: ModuleSource) -> list[Any]:
    """Execute the module in the contained child and return its routines' facts."""
    request = json.dumps({"source": module.text, "file": module.file, "module": module.name,
                          "allowed": sorted(policy.allowed_modules())})  # fmt: skip
    answer = _run_child(request)
    error = answer.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, dict) else None
        line = error.get("line") if isinstance(error, dict) else None
        raise DefinitionError(
            _clean(message if type(message) is str else "the module cannot be collected"),
            where=f"{module.file}:{line}" if type(line) is int else module.file,
        )
    routines = answer.get("routines")
    # more routines than the module may define is not an answer the child gives
    if not isinstance(routines, list) or len(routines) > MAX_ROUTINES:
        raise DefinitionError("checking the module gave an unreadable answer")
    return routines


def collect(target: str | ModuleType) -> list[Definition]:
    """Every routine defined in a module, validated, all problems reported at once (up to
    MAX_ERRORS of them): the policy on the source, then the facts the contained child found,
    against the source."""
    module = read(target)
    enforce_policy(module)
    defaults = Limits.from_env()
    definitions: list[Definition] = []
    errors: list[str] = []
    for routine in facts(module):
        try:
            definitions.append(build(routine, module, defaults))
        except DefinitionError as exc:
            # one line per problem: what the module chose is escaped where build puts it in
            errors.append("\n".join(_clean(line) for line in str(exc).split("\n")))
        except RecursionError:  # facts nested deeper than any description (a forged answer)
            errors.append(f"{module.file}: checking the module gave an unreadable answer")
    names: dict[str, Definition] = {}
    for d in definitions:
        if d.qualname in names:
            errors.append(f"{d.where}: {d.qualname} is defined twice (also at "
                          f"{names[d.qualname].where})")  # fmt: skip
        names[d.qualname] = d
    if errors:
        raise DefinitionError(
            "\n".join(capped(errors, MAX_ERRORS, "routines with problems", 50_000))
        )
    if not definitions:
        raise DefinitionError(f"{module.name} defines no @stored_function or @procedure")
    functions = {d.function for d in definitions}
    stored = stored_size(module, functions)
    if stored > MAX_STORED:
        raise DefinitionError(
            f"{module.file}: its {len(definitions)} routines would keep {stored >> 20} MB of "
            f"source in the catalog, more than {MAX_STORED >> 20} MB (each keeps the module code "
            "it uses: constants and helpers shared by all of them count once per routine); "
            "split the module, or make large constants smaller"
        )
    sources = routine_sources(module, functions)
    return sorted(
        (dataclasses.replace(d, source=sources[d.function]) for d in definitions),
        key=lambda d: d.line,
    )
