from __future__ import annotations

import ast
import datetime
import random
import textwrap
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from pyfuncs import DefinitionError, procedure, stored_function
from pyfuncs.definition import definition_of
from pyfuncs.module_source import ModuleSource, routine_sources, stored_size


class Row(NamedTuple):
    total: int


@stored_function(schema="api", roles=["manager"], volatility="stable")
def leaderboard(top: int = 10, since: datetime.date | None = None) -> Iterator[Row]:
    """Docs."""
    yield Row(top)


@procedure(schema="api")
def enroll(student: str, course: int) -> None:
    return None


def test_decorators_keep_the_function_callable() -> None:
    assert list(leaderboard(3)) == [Row(3)]
    assert enroll("a", 1) is None


def test_definition_describes_the_routine() -> None:
    d = definition_of(leaderboard)
    assert d.qualname == "api.leaderboard"
    assert d.identity_args == "bigint, date"
    assert d.doc == "Docs."
    assert d.where.endswith("test_definition.py:21")  # the decorator line
    assert d.spec()["converters"] == ["date"]
    assert d.signature()["returns"]["columns"] == [["total", "bigint"]]
    assert definition_of(enroll).kind == "procedure" and definition_of(enroll).out_columns == ()


def test_undecorated_functions_are_refused() -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(DefinitionError, match="is not a routine"):
        definition_of(plain)


def test_routine_source_blanks_other_routines_but_keeps_line_numbers() -> None:
    source = textwrap.dedent("""\
        import x

        def helper():
            return 1

        @stored_function
        def a():
            return helper()

        @stored_function
        def b():
            return a()

        @stored_function
        def c():
            return 3
    """)
    sources = routine_sources(ModuleSource.parse("m", "m.py", source), {"a", "b", "c"})
    only_a = sources["a"]
    assert only_a.count("\n") == source.count("\n")
    assert "def a" in only_a and "def helper" in only_a
    assert "def b" not in only_a and "def c" not in only_a
    only_b = sources["b"]
    assert "def a" in only_b  # b calls a, so a stays
    assert "def c" not in only_b


def _reference(source: str, keep: str, routines: set[str]) -> str:
    """routine_sources' meaning, written the obvious way (re-parsing until nothing changes:
    cubic in the number of routines, which is why collect does not use it)."""
    tree = ast.parse(source)
    spans = {
        node.name: (min([node.lineno] + [d.lineno for d in node.decorator_list]), node.end_lineno)
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name in routines and node.name != keep
    }
    lines = source.split("\n")
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    dropped = set(spans)
    while True:
        kept = "".join(
            line
            for i, line in enumerate(lines, 1)
            if not any(spans[n][0] <= i <= (spans[n][1] or i) for n in dropped)
        )
        used = {n.id for n in ast.walk(ast.parse(kept)) if isinstance(n, ast.Name)}
        if not dropped & used:
            break
        dropped -= used
    return "".join(
        "\n" if any(spans[n][0] <= i <= (spans[n][1] or i) for n in dropped) else line
        for i, line in enumerate(lines, 1)
    )


@pytest.mark.parametrize("seed", range(40))
def test_routine_sources_mean_what_the_obvious_definition_does(seed: int) -> None:
    """Random modules: routines naming routines (cycles too), helpers and constants naming
    them, decorators, a routine defined twice."""
    rng = random.Random(seed)
    count = rng.randint(1, 12)
    names = [f"r{i}" for i in range(count)]
    parts = ["import math\n"]
    for i in range(rng.randint(count, count * 2)):
        what = rng.random()
        refs = " + ".join(f"{n}()" for n in rng.sample(names, rng.randint(0, min(3, count))))
        if what < 0.6:
            name = rng.choice(names)
            decorators = "@stored_function\n" * rng.randint(1, 2)
            parts.append(f"{decorators}def {name}() -> int:\n    x = 1\n    return {refs or 0}\n")
        elif what < 0.8:
            parts.append(f"def helper{i}():\n    return {refs or 0}\n")
        else:
            parts.append(f"CONSTANT{i} = [\n    {refs or 1},\n]\n")
    source = "\n".join(parts)
    module = ModuleSource.parse("m", "m.py", source)
    present = {n for n in names if n in module.defs()}
    made = routine_sources(module, present)
    assert set(made) == present
    for name in present:
        assert made[name] == _reference(source, name, present), (name, source)
    assert stored_size(module, present) == sum(map(len, made.values()))


def test_routine_sources_count_lines_as_the_parser_does() -> None:
    """A form feed or a line separator inside a line is not a new line for Python: the
    definitions blanked are exactly the other routines', wherever such characters are."""
    source = (
        "from pyfuncs import stored_function\n\n"
        '@stored_function\ndef a() -> str:\n    return "\u2028\x0c\x1c\x85"\n\n'
        "@stored_function\ndef b() -> int:\n    return 2\n"
    )
    module = ModuleSource.parse("m", "m.py", source)
    sources = routine_sources(module, {"a", "b"})
    assert "return 2" not in sources["a"] and "def a" in sources["a"]
    assert "\u2028" not in sources["b"] and "return 2" in sources["b"] and "def b" in sources["b"]
    for made in sources.values():
        assert made.count("\n") == source.count("\n")
        ast.parse(made)
