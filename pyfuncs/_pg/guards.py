"""Compiling a routine module: what the policy refuses, refused again; guards inserted where
its code could swallow a stop; the operators of bounded operations routed through their
checks; and attribute stores, and the few attribute reads that reach shared state, routed
through the sandbox's checks."""

from __future__ import annotations
import __future__

# The node classes. Not ast.py, whose imports (contextlib, enum) cost the first routine in
# every backend 5 ms: what this module needs of it, its node walks, are below, as it has them.
import _ast as ast
import types

from . import bounded
from .sandbox import CHECKED_READS
from .vocabulary import FRAME_ATTRIBUTES, others_private

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, ClassVar, TypeVar

    Node = TypeVar("Node", bound=ast.AST)


def _private(name: str) -> bool:
    return name.startswith("_") or name in FRAME_ATTRIBUTES


def _fields(node: ast.AST) -> Iterator[tuple[str, Any]]:
    """ast.iter_fields: the fields of `node` it has."""
    for field in node._fields:
        try:  # noqa: SIM105  (contextlib costs every backend's first routine 3 ms)
            yield field, getattr(node, field)
        except AttributeError:
            pass


def _children(node: ast.AST) -> Iterator[ast.AST]:
    """ast.iter_child_nodes: the nodes of `node`'s fields, and of its fields' lists."""
    for _, field in _fields(node):
        if isinstance(field, ast.AST):
            yield field
        elif isinstance(field, list):
            for item in field:
                if isinstance(item, ast.AST):
                    yield item


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """ast.walk: `node` and every node below it (in no particular order)."""
    todo = [node]
    while todo:
        node = todo.pop()
        todo.extend(_children(node))
        yield node


def _copy_location(new_node: Node, old_node: ast.AST) -> Node:
    """ast.copy_location: `new_node`, at `old_node`'s place in the source."""
    for attr in "lineno", "col_offset", "end_lineno", "end_col_offset":
        if attr in old_node._attributes and attr in new_node._attributes:
            value = getattr(old_node, attr, None)
            # end_lineno and end_col_offset are optional, and copied even when None
            if value is not None or (hasattr(old_node, attr) and attr.startswith("end_")):
                setattr(new_node, attr, value)
    return new_node


def _fix_missing_locations(node: Node) -> Node:
    """ast.fix_missing_locations: every node without a place in the source gets its
    parent's."""

    def fix(node: Any, lineno: int, col_offset: int, end_lineno: int, end_col_offset: int) -> None:
        if "lineno" in node._attributes:
            if not hasattr(node, "lineno"):
                node.lineno = lineno
            else:
                lineno = node.lineno
        if "end_lineno" in node._attributes:
            if getattr(node, "end_lineno", None) is None:
                node.end_lineno = end_lineno
            else:
                end_lineno = node.end_lineno
        if "col_offset" in node._attributes:
            if not hasattr(node, "col_offset"):
                node.col_offset = col_offset
            else:
                col_offset = node.col_offset
        if "end_col_offset" in node._attributes:
            if getattr(node, "end_col_offset", None) is None:
                node.end_col_offset = end_col_offset
            else:
                end_col_offset = node.end_col_offset
        for child in _children(node):
            fix(child, lineno, col_offset, end_lineno, end_col_offset)

    fix(node, 1, 0, 1, 0)
    return node


class _Transformer:
    """ast.NodeTransformer: visits each node with its `visit_<class>` method, or else its
    fields; a node a visit returns replaces it, None removes it, and a list of them takes
    its place in a list."""

    def visit(self, node: ast.AST) -> Any:
        return getattr(self, "visit_" + node.__class__.__name__, self.generic_visit)(node)

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field, old_value in _fields(node):
            if isinstance(old_value, list):
                new_values = []
                for value in old_value:
                    if isinstance(value, ast.AST):
                        value = self.visit(value)
                        if value is None:
                            continue
                        if not isinstance(value, ast.AST):
                            new_values.extend(value)
                            continue
                    new_values.append(value)
                old_value[:] = new_values
            elif isinstance(old_value, ast.AST):
                new_node = self.visit(old_value)
                if new_node is None:
                    delattr(node, field)
                else:
                    setattr(node, field, new_node)
        return node


class Guards(_Transformer):
    """Insert `pyfuncs.guard()` where routine code could swallow a RoutineInterrupted, route
    the operators of bounded operations through their checks, and attribute stores and
    checked reads through the sandbox's (`pyfuncs.writable`, `pyfuncs.attribute`).

    The inserted calls name globals with a dot in them (see sandbox.helpers): no source code
    can spell, rebind or shadow such a name. What the policy check refuses that leads past
    these (a dunder name or attribute, a frame attribute, a class pattern or an import that
    reads one) is refused again here, a SyntaxError at the line, whatever code is compiled.
    """

    def __init__(self, filename: str = "<routine>", loops_over_range: bool = False) -> None:
        self.filename = filename
        # `for x in range(n)` may use Python's own range (see lazy.py): the module never
        # binds the name `range` itself
        self.loops_over_range = loops_over_range
        self.match_classes = 0  # names of the checked classes of class patterns

    def _refuse(self, node: ast.AST, what: str) -> None:
        line, col = getattr(node, "lineno", 0), getattr(node, "col_offset", 0) + 1
        raise SyntaxError(f"pyfuncs: {what} is not allowed in a routine",
                          (self.filename, line, col, None))  # fmt: skip

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if (
            node.id.startswith("__")
            and node.id.endswith("__")
            and (node.id != "__name__" or not isinstance(node.ctx, ast.Load))
        ):  # __name__ may be read, not rebound: what the module is called is pyfuncs' to say
            self._refuse(node, f"the name {node.id!r}")
        if others_private(node.id):
            self._refuse(node, f"the name {node.id!r}, another class's private attribute,")
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if node.attr.startswith("__") or node.attr in FRAME_ATTRIBUTES or others_private(node.attr):
            self._refuse(node, f"the attribute {node.attr!r}")
        if not isinstance(node.ctx, ast.Load):  # x.a = ..., del x.a: may x be changed?
            check = ast.Name("pyfuncs.writable", ast.Load())
            node.value = _copy_location(ast.Call(check, [node.value], []), node.value)
            return node
        if node.attr.startswith("_"):  # private: of what this module made only
            read = ast.Name("pyfuncs.private", ast.Load())
            call = ast.Call(read, [node.value, ast.Constant(node.attr)], [])
            return _copy_location(call, node)
        if node.attr in CHECKED_READS:
            read = ast.Name("pyfuncs.attribute", ast.Load())
            call = ast.Call(read, [node.value, ast.Constant(node.attr)], [])
            return _copy_location(call, node)
        return node

    def visit_MatchClass(self, node: ast.MatchClass) -> ast.AST:
        self.generic_visit(node)
        for name in node.kwd_attrs:  # read by the pattern, past any check
            if _private(name) or name in CHECKED_READS:
                self._refuse(node, f"a class pattern on the attribute {name!r}")
        return node

    def visit_Match(self, node: ast.Match) -> ast.AST | list[ast.stmt]:
        """A class pattern with positional sub-patterns reads the attributes its class's
        `__match_args__` names, which code can set where no guard sees it (a string key of
        `type(name, bases, namespace)`, make_dataclass): its class is checked first
        (sandbox.match_class), and the pattern uses what was checked."""
        self.generic_visit(node)
        checked: list[ast.stmt] = []
        for case in node.cases:
            for pattern in _walk(case.pattern):
                if isinstance(pattern, ast.MatchClass) and pattern.patterns:
                    name = f"pyfuncs.match_class_{self.match_classes}"
                    self.match_classes += 1
                    check = ast.Call(ast.Name("pyfuncs.match_class", ast.Load()), [pattern.cls], [])
                    bind = ast.Assign([ast.Name(name, ast.Store())], check)
                    checked.append(_copy_location(bind, pattern))
                    pattern.cls = _copy_location(ast.Name(name, ast.Load()), pattern.cls)
        return [*checked, node] if checked else node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        for alias in node.names:
            if alias.name.startswith("__"):
                self._refuse(node, f"importing {alias.name!r}")
        return self.visit_Import(node)

    # Names of the interpreter's (`__x__`) a module may not bind, however it binds them:
    # a module-level `def __getattr__` answers the import system's questions about the
    # module (`__path__`, `__spec__`), and a red team had Python import code of its choosing
    # with the real builtins that way. Methods of a class are the class's own.
    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> ast.AST:
        for alias in node.names:
            self._binds(node, alias.asname)
        return node

    def _binds(self, node: ast.AST, name: str | None) -> None:
        if name is not None and name.startswith("__") and name.endswith("__"):
            self._refuse(node, f"binding the name {name!r}")

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        if not getattr(node, "_pf_member", False):
            self._binds(node, node.name)
        for statement in node.body:
            if isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
                statement._pf_member = True  # type: ignore[union-attr]
        self.generic_visit(node)
        return node

    def visit_Global(self, node: ast.Global | ast.Nonlocal) -> ast.AST:
        for name in node.names:
            self._binds(node, name)
        return node

    visit_Nonlocal = visit_Global

    def visit_MatchAs(self, node: ast.MatchAs | ast.MatchStar) -> ast.AST:
        self._binds(node, node.name)
        self.generic_visit(node)
        return node

    visit_MatchStar = visit_MatchAs

    def visit_MatchMapping(self, node: ast.MatchMapping) -> ast.AST:
        self._binds(node, node.rest)
        self.generic_visit(node)
        return node

    # Routines run without an event loop, and an `async with` whose __aexit__ swallowed
    # its stops kept a call running until its session was ended (a red team): no coroutines
    def _no_async(self, node: ast.AST) -> ast.AST:
        self._refuse(node, "async code (routines run without an event loop)")
        return node

    visit_AsyncFunctionDef = visit_Await = visit_AsyncWith = visit_AsyncFor = _no_async

    @staticmethod
    def _guard(at: ast.AST) -> ast.stmt:
        call = ast.Expr(ast.Call(ast.Name("pyfuncs.guard", ast.Load()), [], []))
        return _copy_location(call, at)

    # The module's code runs only in calls of its own routines (sandbox._its_own): tested
    # where its code starts (a function's body, a lambda's, each item of a generator
    # expression) or goes on after a pause (a generator after its yield, or in a handler or
    # a `finally` as it is closed). The test inline, for functions: ~20 ns a call.
    @staticmethod
    def _own(at: ast.AST) -> ast.stmt:
        calling = ast.Subscript(
            ast.Name("pyfuncs.calling", ast.Load()), ast.Constant(0), ast.Load()
        )
        test = ast.Compare(calling, [ast.IsNot()], [ast.Name("pyfuncs.mine", ast.Load())])
        refuse = ast.Expr(ast.Call(ast.Name("pyfuncs.foreign", ast.Load()), [], []))
        return _copy_location(ast.If(test, [refuse], []), at)

    @staticmethod
    def _own_call(at: ast.AST) -> ast.expr:
        return _copy_location(ast.Call(ast.Name("pyfuncs.own", ast.Load()), [], []), at)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        self._binds(node, node.name)
        self.generic_visit(node)
        node.body[:0] = [self._own(node.body[0]), self._guard(node.body[0])]
        return node

    def visit_Try(self, node: ast.Try | ast.TryStar) -> ast.AST:
        self.generic_visit(node)
        if node.finalbody:
            node.finalbody[:0] = [self._own(node.finalbody[0]), self._guard(node.finalbody[0])]
        return node

    visit_TryStar = visit_Try

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        """A finalizer (`__del__`) of a stopped call does not run: Python reports a stop
        raised in one as "ignored" and carries on, so a routine that spends its time in
        finalizers it triggers would never see its stop (the watchdog does not log it)."""
        if not getattr(node, "_pf_member", False):
            self._binds(node, node.name)
        self.generic_visit(node)
        if node.name == "__del__":
            node.body.insert(0, self._guard(node.body[0]))
        first = node.body[0]
        documented = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
        node.body.insert(1 if documented else 0, self._own(first))
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self.generic_visit(node)
        node.body = _copy_location(
            ast.BoolOp(ast.And(), [self._own_call(node), node.body]), node.body
        )
        return node

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> ast.AST:
        self.generic_visit(node)
        for loop in node.generators:
            loop.ifs.insert(0, self._own_call(loop))
        return node

    def visit_Yield(self, node: ast.Yield | ast.YieldFrom) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node, ast.YieldFrom):  # (see sandbox.delegate)
            delegate = ast.Name("pyfuncs.delegate", ast.Load())
            node.value = _copy_location(ast.Call(delegate, [node.value], []), node.value)
        resumed = ast.Name("pyfuncs.resumed", ast.Load())
        return _copy_location(ast.Call(resumed, [node], []), node)

    visit_YieldFrom = visit_Yield

    def _loop_range(self, iterable: ast.expr) -> ast.expr:
        """The iterable of a loop or comprehension: `range(...)` as Python's own range."""
        if (
            self.loops_over_range
            and isinstance(iterable, ast.Call)
            and isinstance(iterable.func, ast.Name)
            and iterable.func.id == "range"
        ):
            iterable.func = _copy_location(ast.Name("pyfuncs.range", ast.Load()), iterable.func)
        return iterable

    def visit_For(self, node: ast.For) -> ast.AST:
        self.generic_visit(node)
        node.iter = self._loop_range(node.iter)
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        if node.is_async:
            self._no_async(node)
        self.generic_visit(node)
        node.iter = self._loop_range(node.iter)
        return node

    def visit_With(self, node: ast.With) -> list[ast.stmt]:
        self.generic_visit(node)
        return [node, self._guard(node)]  # a context manager's __exit__ may suppress it

    # operators whose result can dwarf their operands, and their checks (bounded operations)
    _BOUNDED: ClassVar[dict[type[ast.operator], str]] = {
        ast.Mult: "mul", ast.Pow: "pow", ast.LShift: "lshift", ast.FloorDiv: "floordiv",
        ast.Mod: "mod",
    }  # fmt: skip

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        name = self._BOUNDED.get(type(node.op))
        if name is None:
            return node
        call = ast.Call(ast.Name(f"pyfuncs.{name}", ast.Load()), [node.left, node.right], [])
        return _copy_location(call, node)

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        """`f"{x:{spec}}"`: the spec checked (bounded.check_spec) before x is formatted, unless
        it is a constant within the bound."""
        self.generic_visit(node)
        spec = node.format_spec
        if isinstance(spec, ast.JoinedStr):
            parts = spec.values
            if all(isinstance(p, ast.Constant) and isinstance(p.value, str) for p in parts):
                text = "".join(p.value for p in parts)  # type: ignore[attr-defined]
                if bounded.largest_number(text) <= bounded.MAX_REPEAT_BYTES:
                    return node
            check = ast.Call(ast.Name("pyfuncs.spec", ast.Load()), [spec], [])
            node.format_spec = _copy_location(
                ast.JoinedStr([ast.FormattedValue(check, -1, None)]), spec
            )
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        """`t *= v` becomes `t *= pyfuncs.check_mul(t, v)`: in-place operators stay in place."""
        self.generic_visit(node)
        name = self._BOUNDED.get(type(node.op))
        if name is None:
            return node
        current = _as_load(node.target)
        check = ast.Name(f"pyfuncs.check_{name}", ast.Load())
        node.value = _copy_location(ast.Call(check, [current, node.value], []), node.value)
        return node


def _as_load(target: ast.expr) -> ast.expr:
    """An assignment target read instead of written (`x`, `obj.x`, `seq[i]`)."""
    import copy  # only for `x op= y`: not every backend's first routine pays for it

    read = copy.deepcopy(target)
    for node in _walk(read):
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Starred)):
            node.ctx = ast.Load()
    return read


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name the module binds anywhere (assignments, parameters, imports, definitions,
    handlers, patterns)."""
    names: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.partition(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                               ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):  # fmt: skip
            if node.name:
                names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
    return names


def compile_module(source: str, filename: str) -> types.CodeType:
    """A routine module compiled with the guards inserted. Its annotations are kept as
    strings (PEP 563) whether or not it says so: nothing evaluates them in the database, and
    a check reads them as type expressions only (pyfuncs.typemap.evaluate)."""
    # ast.parse
    tree: Any = compile(source, filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    tree = Guards(filename, loops_over_range="range" not in _bound_names(tree)).visit(tree)
    flags = __future__.annotations.compiler_flag
    code: types.CodeType = compile(
        _fix_missing_locations(tree), filename, "exec", flags, dont_inherit=True
    )
    return code
