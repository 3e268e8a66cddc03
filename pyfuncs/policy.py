"""The policy check: what routine source may do, verified before anything is installed.

It reads the source (it never imports it) and reports every violation with file:line:col, the
rule and how to fix it. It is defence in depth, not the security boundary (see the README):
routines are untrusted-language code that only a superuser can install, and caller rights
and RLS bound the data they reach. The policy stops the mistakes and tricks that would let a
routine step outside pure computation over its `db` handle: the OS, the interpreter's
internals, dynamic code, and the frames and globals behind a function.
"""

from __future__ import annotations

import ast
import os
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

from ._pg.vocabulary import FORBIDDEN_BUILTINS, FRAME_ATTRIBUTES, ROUTINE_API, others_private
from .errors import ConfigError

# Pure-computation standard library. `re` is left out on purpose: a backtracking regular
# expression runs inside one C call that no watchdog can interrupt.
DEFAULT_ALLOWED = frozenset({
    "__future__", "pyfuncs", "math", "cmath", "decimal", "fractions", "numbers", "statistics",
    "random", "datetime", "zoneinfo", "calendar", "uuid", "json", "collections",
    "collections.abc", "dataclasses", "enum", "typing", "itertools", "heapq", "bisect",
    "hashlib", "hmac", "base64", "secrets", "struct", "unicodedata",
})  # fmt: skip

# Named in the error message, so that the refusal says why (the allow-list refuses them anyway).
FORBIDDEN_MODULES = {
    "ctypes": "reaches raw memory", "os": "reaches the operating system",
    "posix": "reaches the operating system", "nt": "reaches the operating system",
    "sys": "reaches the interpreter", "subprocess": "runs programs", "socket": "opens sockets",
    "importlib": "imports anything", "gc": "reaches every object", "inspect": "reaches frames",
    "pickle": "runs code while loading", "marshal": "loads code objects",
    "builtins": "reaches the unrestricted builtins", "operator": "attrgetter reaches attributes",
    "functools": "builds callables that hide what they call",
    "string": "Formatter reaches attributes", "types": "builds functions and code",
    "threading": "starts threads", "_thread": "starts threads", "signal": "changes signals",
    "io": "opens files", "pathlib": "opens files", "shutil": "changes files",
    "tempfile": "creates files", "plpy": "bypasses the db handle", "code": "runs code",
    "codeop": "compiles code", "runpy": "runs modules", "pkgutil": "imports anything",
    "multiprocessing": "starts processes", "asyncio": "runs an event loop",
    "re": "backtracking regular expressions cannot be interrupted",
}  # fmt: skip

NAMED_ACCESS = frozenset({"getattr", "setattr", "hasattr"})

_DUNDER = re.compile(r"__\w+__")  # with fullmatch (`$` would match before a final newline)
# How deeply the syntax tree may nest: checking it (and compiling it with the runtime's
# guards) walks it recursively, and real code stays far below this.
MAX_DEPTH = 100
_ALLOWED_DUNDER_NAMES = frozenset({"__name__"})


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    col: int
    rule: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: [{self.rule}] {self.message}; {self.fix}"


def allowed_modules() -> frozenset[str]:
    """The default allow-list plus PYFUNCS_ALLOWED_MODULES (comma-separated)."""
    extra = {m.strip() for m in os.environ.get("PYFUNCS_ALLOWED_MODULES", "").split(",")}
    extra.discard("")
    bad = sorted(m for m in extra if not all(p.isidentifier() for p in m.split(".")))
    if bad:
        raise ConfigError(f"PYFUNCS_ALLOWED_MODULES: {', '.join(map(repr, bad))} are not "
                          "module names")  # fmt: skip
    return DEFAULT_ALLOWED | extra


class _Checker(ast.NodeVisitor):
    def __init__(self, file: str, allowed: frozenset[str]) -> None:
        self.file, self.allowed = file, allowed
        self.found: list[Violation] = []
        self.pyfuncs_names: set[str] = set()  # what `import pyfuncs [as x]` bound

    def _add(self, node: ast.AST, rule: str, message: str, fix: str) -> None:
        line, col = getattr(node, "lineno", 0), getattr(node, "col_offset", -1) + 1
        self.found.append(Violation(self.file, line, col, rule, message, fix))

    def _module(self, node: ast.AST, name: str) -> None:
        if name in self.allowed:
            return
        why = FORBIDDEN_MODULES.get(name.split(".")[0])
        message = f"import of {name!r} is not allowed" + (f" ({why})" if why else "")
        fix = ("use the db handle and pure-computation modules"
               if why else "add it to PYFUNCS_ALLOWED_MODULES if it is pure computation")  # fmt: skip
        self._add(node, "import-not-allowed", message, fix)

    def _pyfuncs_name(self, node: ast.AST, name: str) -> None:
        if name not in ROUTINE_API and name != "*":
            self._add(node, "import-not-allowed",
                      f"pyfuncs.{name} is not part of pyfuncs' API for routines",
                      f"use only {', '.join(sorted(ROUTINE_API))}")  # fmt: skip

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._module(node, alias.name)
            self._binds(node, alias.asname)
            if alias.name == "pyfuncs":
                self.pyfuncs_names.add(alias.asname or "pyfuncs")

    # a name of the interpreter's (`__x__`) bound by a statement other than an assignment
    # (visit_Name sees those): a module-level `def __getattr__` answers the import system's
    # questions about the module (the runtime refuses the same, see pyfuncs/_pg/guards.py);
    # methods of a class are the class's own
    def _binds(self, node: ast.AST, name: str | None) -> None:
        if name is not None and _DUNDER.fullmatch(name):
            self._add(node, "dunder-name", f"binding the name {name!r} reaches interpreter "
                      "internals", "use an ordinary name (methods of a class may have one)")  # fmt: skip

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.ClassDef) -> None:
        if not getattr(node, "_pf_member", False):
            self._binds(node, node.name)
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
                    statement._pf_member = True  # type: ignore[union-attr]
        self.generic_visit(node)

    visit_ClassDef = visit_FunctionDef

    def visit_Global(self, node: ast.Global | ast.Nonlocal) -> None:
        for name in node.names:
            self._binds(node, name)

    visit_Nonlocal = visit_Global

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self._binds(node, node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs | ast.MatchStar) -> None:
        self._binds(node, node.name)
        self.generic_visit(node)

    visit_MatchStar = visit_MatchAs

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self._binds(node, node.rest)
        self.generic_visit(node)

    def _async(self, node: ast.AST, at: ast.AST | None = None) -> None:
        decorators = getattr(node, "decorator_list", None)  # (where its definition starts)
        self._add(at or (decorators[0] if decorators else node), "async",
                  "async code: routines run without an event loop",
                  "write the routine as plain functions (a generator for rows)")  # fmt: skip
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_Await = visit_AsyncWith = visit_AsyncFor = _async

    def visit_comprehension(self, node: ast.comprehension) -> None:
        if node.is_async:  # (a comprehension has no position of its own: its target's)
            self._async(node, node.target)
        else:
            self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self._add(node, "relative-import", "relative imports are not allowed",
                      "a routine module must be self-contained")  # fmt: skip
            return
        self._module(node, node.module or "")
        for alias in node.names:
            self._binds(node, alias.asname)
            if node.module == "pyfuncs":
                self._pyfuncs_name(node, alias.name)
            if alias.name.startswith("__"):
                self._add(node, "dunder-name", f"importing {alias.name!r} reaches interpreter "
                          "internals", "import public names only")  # fmt: skip

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        for name in node.kwd_attrs:  # `case object(__globals__=g)` reads the attribute
            if name.startswith("_"):
                self._add(node, "dunder-attribute", f"a class pattern reads {name!r}",
                          "match on public attributes")  # fmt: skip
            elif name in FRAME_ATTRIBUTES:
                self._add(node, "frame-attribute", f"a class pattern reads {name!r}",
                          "routines do not need frames")  # fmt: skip
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if _DUNDER.fullmatch(name) and name not in _ALLOWED_DUNDER_NAMES:
            self._add(node, "dunder-name", f"the name {name!r} reaches interpreter internals",
                      "use an ordinary name")  # fmt: skip
        elif others_private(name):
            self._add(node, "private-of-another-class",
                      f"the name {name!r} is another class's private attribute",
                      "use the class's public interface")  # fmt: skip
        elif name in FORBIDDEN_BUILTINS:
            self._add(node, "forbidden-builtin", f"{name}() {FORBIDDEN_BUILTINS[name]}",
                      "express it without dynamic code or namespaces")  # fmt: skip
        elif name in NAMED_ACCESS and not getattr(node, "_pf_direct", False):
            self._add(node, "computed-attribute", f"{name} may only be called directly",
                      f"call {name}(obj, 'literal_name') or use obj.attr")  # fmt: skip

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.pyfuncs_names:
            self._pyfuncs_name(node, node.attr)
        if node.attr.startswith("__"):
            self._add(node, "dunder-attribute",
                      f"the attribute {node.attr!r} reaches interpreter internals",
                      "use the object's public interface")  # fmt: skip
        elif others_private(node.attr):
            self._add(node, "private-of-another-class",
                      f"the attribute {node.attr!r} is another class's private attribute",
                      "use the class's public interface")  # fmt: skip
        elif node.attr in FRAME_ATTRIBUTES:
            self._add(node, "frame-attribute",
                      f"the attribute {node.attr!r} leads to frames, code or globals",
                      "routines do not need frames")  # fmt: skip
        elif node.attr in ("format", "format_map") and isinstance(node.value, ast.Constant):
            self._format_template(node, node.value.value)
        self.generic_visit(node)

    def _format_template(self, node: ast.AST, template: object) -> None:
        if not isinstance(template, str):
            return
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        except ValueError:
            return
        if any("." in f or "[" in f for f in fields):
            self._add(node, "format-traversal",
                      "a format field walks attributes or items ({0.attr} / {0[key]})",
                      "format plain values, or use an f-string")  # fmt: skip

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in NAMED_ACCESS:
            func._pf_direct = True  # type: ignore[attr-defined]
            name = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                self._add(node, "computed-attribute",
                          f"{func.id}() with a computed attribute name",
                          "name the attribute with a string literal")  # fmt: skip
            elif name.value.startswith("_") or name.value in FRAME_ATTRIBUTES:
                self._add(node, "dunder-attribute",
                          f"{func.id}() of the private attribute {name.value!r}",
                          "use the object's public interface")  # fmt: skip
        self.generic_visit(node)


def check_source(source: str, file: str, allowed: Iterable[str] | None = None) -> list[Violation]:
    """Every policy violation in a routine module's source (syntax errors are left to the
    import, which reports them with file:line)."""
    try:
        tree = ast.parse(source, file)
    except SyntaxError:
        return []
    except (RecursionError, MemoryError, SystemError):  # SystemError: see ModuleSource.parse
        return [Violation(file, 1, 1, "too-deep", "the code nests too deeply to be parsed",
                          "split deeply nested expressions into named parts")]  # fmt: skip
    checker = _Checker(file, frozenset(allowed) if allowed is not None else allowed_modules())
    deep = _too_deep(tree)
    if deep is None:
        try:
            checker.visit(tree)
        except RecursionError:  # called with little stack left: refuse rather than crash
            deep = tree.body[0]
    if deep is not None:
        checker._add(deep, "too-deep",
                     f"the code nests more than {MAX_DEPTH} levels deep here, too deep to check",
                     "split the expression or statement into named parts")  # fmt: skip
        return checker.found[-1:]
    return sorted(checker.found, key=lambda v: (v.line, v.col))


def _too_deep(tree: ast.AST) -> ast.AST | None:
    """The innermost node with a position above one nested more than MAX_DEPTH levels deep
    (found without recursion)."""
    stack: list[tuple[ast.AST, int, ast.AST]] = [(tree, 0, tree)]
    while stack:
        node, depth, located = stack.pop()
        if hasattr(node, "lineno"):
            located = node
        if depth > MAX_DEPTH:
            return located
        stack.extend((child, depth + 1, located) for child in ast.iter_child_nodes(node))
    return None
