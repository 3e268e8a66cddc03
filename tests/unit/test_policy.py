"""The policy check refuses every route out of pure computation, with file:line:col and a rule."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pyfuncs import DefinitionError
from pyfuncs.cli import main
from pyfuncs.collect import collect
from pyfuncs.policy import check_source

ATTEMPTS = [
    # imports, by every route
    ("import os", "import-not-allowed"),
    ("import os.path", "import-not-allowed"),
    ("from os import system", "import-not-allowed"),
    ("import subprocess as sp", "import-not-allowed"),
    ("import ctypes", "import-not-allowed"),
    ("import sys", "import-not-allowed"),
    ("import importlib", "import-not-allowed"),
    ("from importlib import import_module", "import-not-allowed"),
    ("import builtins", "import-not-allowed"),
    ("import socket", "import-not-allowed"),
    ("import gc", "import-not-allowed"),
    ("import inspect", "import-not-allowed"),
    ("import pickle", "import-not-allowed"),
    ("import marshal", "import-not-allowed"),
    ("import operator", "import-not-allowed"),
    ("from functools import partial", "import-not-allowed"),
    ("import string", "import-not-allowed"),
    ("import plpy", "import-not-allowed"),
    ("import re", "import-not-allowed"),
    ("from . import sibling", "relative-import"),
    ("x = __import__('os')", "dunder-name"),
    ("x = __builtins__['open']", "dunder-name"),
    # dynamic code and namespaces
    ("exec('import os')", "forbidden-builtin"),
    ("eval('1 + 1')", "forbidden-builtin"),
    ("code = compile('1', 'f', 'eval')", "forbidden-builtin"),
    ("f = open('/etc/passwd')", "forbidden-builtin"),
    ("g = globals()", "forbidden-builtin"),
    ("v = vars()", "forbidden-builtin"),
    ("loc = locals()", "forbidden-builtin"),
    ("breakpoint()", "forbidden-builtin"),
    ("e = [exec][0]", "forbidden-builtin"),
    # attribute tricks
    ("x = ().__class__.__bases__[0].__subclasses__()", "dunder-attribute"),
    ("x = (lambda: 0).__globals__", "dunder-attribute"),
    ("x = getattr(object, '__subclasses__')", "dunder-attribute"),
    ("name = 'x'\ny = getattr(object, name)", "computed-attribute"),
    ("name = '__class__'\nsetattr(object, name, 1)", "computed-attribute"),
    ("ga = getattr", "computed-attribute"),
    ("x = getattr(object, '_private')", "dunder-attribute"),
    # frames, through generators and exceptions
    ("def g():\n    yield 1\nf = g().gi_frame", "frame-attribute"),
    ("def g():\n    yield 1\nf = g().gi_frame.f_back.f_globals", "frame-attribute"),
    ("try:\n    1 / 0\nexcept Exception as e:\n    t = e.__traceback__", "dunder-attribute"),
    ("try:\n    1 / 0\nexcept Exception as e:\n    f = sum.tb_frame", "frame-attribute"),
    ("async def c():\n    pass\nf = c().cr_frame", "frame-attribute"),
    # class patterns and imports that read what attribute syntax may not
    ("match len:\n    case object(__self__=m):\n        pass", "dunder-attribute"),
    (
        "def g():\n    yield\nmatch g():\n    case object(gi_frame=f):\n        pass",
        "frame-attribute",
    ),
    ("from json import __builtins__", "dunder-name"),
    ("from pyfuncs import _pg", "import-not-allowed"),
    ("import pyfuncs\nd = pyfuncs.deploy", "import-not-allowed"),
    # names of the interpreter's bound by statements (a module's __getattr__ answers the
    # import system), and coroutines (no event loop: an `async with` swallowed stops)
    ("def __getattr__(name):\n    return name", "dunder-name"),
    ("class __path__:\n    pass", "dunder-name"),
    ("import json as __spec__", "dunder-name"),
    ("def f():\n    global __getattr__", "dunder-name"),
    ("try:\n    pass\nexcept ValueError as __loader__:\n    pass", "dunder-name"),
    ("match [1]:\n    case [*__path__]:\n        pass", "dunder-name"),
    ("async def c():\n    pass", "async"),
    ("class S:\n    async def __aexit__(self, *exc):\n        return True", "async"),
    # format strings that walk attributes
    ("s = '{0.__class__}'.format(1)", "format-traversal"),
    ("s = '{0.real}'.format(1)", "format-traversal"),
    ("s = '{x[0]}'.format_map({'x': [1]})", "format-traversal"),
]


@pytest.mark.parametrize(("snippet", "rule"), ATTEMPTS)
def test_every_attempt_is_refused_with_its_rule(snippet: str, rule: str) -> None:
    found = check_source("from pyfuncs import db\n" + snippet + "\n", "mod.py")
    assert rule in {v.rule for v in found}, found
    first = next(v for v in found if v.rule == rule)
    assert first.line >= 2 and first.col >= 1
    assert str(first).startswith(f"mod.py:{first.line}:{first.col}: [{rule}]")


def test_the_catalogue_is_large_enough() -> None:
    assert len(ATTEMPTS) >= 25


CLEAN = """
from __future__ import annotations
import datetime, decimal, json, math, uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pyfuncs import db, stored_function

@dataclass
class Row:
    n: int

    def __post_init__(self) -> None:
        self.n = int(self.n)

@stored_function
def f(x: int) -> int:
    '''{0} {name} and f-strings are fine: {x!r}'''
    label = "{} of {name}".format(1, name="x") + f"{x.real}"
    try:
        value = math.floor(x) + len(json.dumps({"k": label}))
    except ValueError as exc:
        value = len(str(exc))
    return int(getattr(Row(value), "n"))
"""


def test_ordinary_code_passes() -> None:
    assert check_source(CLEAN, "clean.py") == []


def test_deploy_and_check_refuse_violations_before_importing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "imported"
    mod = tmp_path / "bad_policy.py"
    mod.write_text(
        textwrap.dedent(f"""
        import os
        from pyfuncs import stored_function
        open({str(marker)!r}, "w").write("ran")

        @stored_function
        def f() -> int:
            return len(os.listdir("/"))
    """)
    )
    with pytest.raises(DefinitionError, match=r"2 policy violation\(s\), nothing was deployed"):
        collect(str(mod))
    assert not marker.exists()  # the module never ran on the deployer's machine
    assert main(["check", str(mod)]) == 1
    err = capsys.readouterr().err
    assert "bad_policy.py:2:1: [import-not-allowed] import of 'os' is not allowed" in err
    assert "[forbidden-builtin] open()" in err


def test_allow_list_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_source("import textwrap\n", "m.py")
    monkeypatch.setenv("PYFUNCS_ALLOWED_MODULES", "textwrap, difflib")
    assert check_source("import textwrap\nimport difflib\n", "m.py") == []


def test_a_deep_module_parsed_while_a_finalizer_parses_is_a_clear_refusal() -> None:
    """CPython 3.11 counts its depth while it builds a deep tree; a finalizer that parses
    meanwhile (pytest formatting a traceback's carets) upset the count: `unexpected error:
    SystemError: AST constructor recursion depth mismatch`."""
    import ast
    import gc

    from pyfuncs.module_source import ModuleSource

    parsing = [True]

    class Parses:
        def __del__(self) -> None:
            ast.parse("a + b")
            garbage()  # for the collector's next pass: finalizers all through the parse

    def garbage() -> None:
        if parsing:
            cycle = Parses()
            cycle.cycle = cycle  # type: ignore[attr-defined]

    source = "x = 1" + " + 1" * 1000 + "\n"
    threshold = gc.get_threshold()
    gc.set_threshold(1)
    try:
        garbage()
        with pytest.raises(DefinitionError, match="nests too deeply"):
            ModuleSource.parse("deep", "deep.py", source)
        assert [v.rule for v in check_source(source, "deep.py")] == ["too-deep"]
    finally:
        parsing.clear()
        gc.set_threshold(*threshold)
        gc.collect()
