"""The in-database runtime's files, and routine modules compiled ahead of their first call.

`pyfuncs install` stores the runtime (the modules of pyfuncs/_pg/) one row per file, with
its sha256. A backend's first call of a routine would otherwise parse its module, insert
the guards (pyfuncs/_pg/guards.py) and compile it: milliseconds, and the import of `_ast`,
paid by every new connection. So `pyfuncs deploy` (and `pyfuncs install`, for the live
versions) does that work here, with the guards of the runtime it ships, and stores the code
in `pyfuncs.routine_code` under a key made of everything the code depends on
(vocabulary.compiled_key): Python's bytecode, the runtime's modules, the file name and the
source. A backend whose runtime or Python differs finds no code under its key, and compiles
the module itself, as before.

The code is trusted as the function bodies are: only the deployer writes either.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

RUNTIME_DIR = Path(__file__).parent / "_pg"


def runtime_files() -> list[tuple[str, str]]:
    """The runtime's modules, (name, source), by name."""
    return [
        (file.stem, file.read_text())
        for file in sorted(RUNTIME_DIR.glob("*.py"))
        if file.name != "__init__.py"
    ]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def runtime_hashes() -> dict[str, str]:
    """The sha256 of each module of the runtime, by name, as `pyfuncs install` stores them."""
    return {name: sha256(source) for name, source in runtime_files()}


def compiled(filename: str, source: str, runtime: dict[str, str]) -> dict[str, Any] | None:
    """The row of pyfuncs.routine_code for a routine module (the parameters of the query
    routine_code_put), or None where its source does not compile: the backend that loads
    it says why, as it would have."""
    from ._pg import guards, vocabulary

    try:
        code = guards.compile_module(source, filename)
    except (SyntaxError, ValueError, TypeError):
        return None
    magic = importlib.util.MAGIC_NUMBER
    return {
        "key": sha256(vocabulary.compiled_key(magic, runtime, filename, source)),
        "runtime": runtime_digest(runtime),
        "code": marshal.dumps(code),
    }


def rows(modules: Iterable[tuple[str, str]], runtime: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The rows of pyfuncs.routine_code for routine modules, (file name, source) each, but
    those that do not compile."""
    for filename, source in modules:
        row = compiled(filename, source, runtime)
        if row is not None:
            yield row


def runtime_digest(runtime: dict[str, str]) -> str:
    """What pyfuncs.routine_code notes of the runtime a code was compiled for, to prune it
    when another is installed."""
    from ._pg import vocabulary

    return sha256(vocabulary.compiled_key(importlib.util.MAGIC_NUMBER, runtime, "", ""))
