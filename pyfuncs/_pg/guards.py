"""Compiling a routine module: guards inserted where its code could swallow a stop, and the
operators of bounded operations routed through their checks."""

from __future__ import annotations
import __future__

import ast
import copy
import types
from typing import ClassVar


class Guards(ast.NodeTransformer):
    """Insert `pyfuncs.guard()` where routine code could swallow a RoutineInterrupted, and
    route the operators of bounded operations through their checks.

    The inserted calls name globals with a dot in them (see sandbox.HELPERS): no source
    code can spell, rebind or shadow such a name, and the policy keeps routines away from
    the module's namespace, so a routine cannot replace the checks with its own.
    """

    @staticmethod
    def _guard(at: ast.AST) -> ast.stmt:
        call = ast.Expr(ast.Call(ast.Name("pyfuncs.guard", ast.Load()), [], []))
        return ast.copy_location(call, at)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        self.generic_visit(node)
        node.body.insert(0, self._guard(node.body[0]))
        return node

    def visit_Try(self, node: ast.Try | ast.TryStar) -> ast.AST:
        self.generic_visit(node)
        if node.finalbody:
            node.finalbody.insert(0, self._guard(node.finalbody[0]))
        return node

    visit_TryStar = visit_Try

    def visit_With(self, node: ast.With) -> list[ast.stmt]:
        self.generic_visit(node)
        return [node, self._guard(node)]  # a context manager's __exit__ may suppress it

    # operators whose result can dwarf their operands, and their checks (bounded operations)
    _BOUNDED: ClassVar[dict[type[ast.operator], str]] = {
        ast.Mult: "mul", ast.Pow: "pow", ast.LShift: "lshift",
    }  # fmt: skip

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        name = self._BOUNDED.get(type(node.op))
        if name is None:
            return node
        call = ast.Call(ast.Name(f"pyfuncs.{name}", ast.Load()), [node.left, node.right], [])
        return ast.copy_location(call, node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        """`t *= v` becomes `t *= pyfuncs.check_mul(t, v)`: in-place operators stay in place."""
        self.generic_visit(node)
        name = self._BOUNDED.get(type(node.op))
        if name is None:
            return node
        current = _as_load(node.target)
        check = ast.Name(f"pyfuncs.check_{name}", ast.Load())
        node.value = ast.copy_location(ast.Call(check, [current, node.value], []), node.value)
        return node


def _as_load(target: ast.expr) -> ast.expr:
    """An assignment target read instead of written (`x`, `obj.x`, `seq[i]`)."""
    read = copy.deepcopy(target)
    for node in ast.walk(read):
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Starred)):
            node.ctx = ast.Load()
    return read


def compile_module(source: str, filename: str) -> types.CodeType:
    """A routine module compiled with the guards inserted. Its annotations are kept as
    strings (PEP 563) whether or not it says so: nothing evaluates them in the database, and
    a check reads them as type expressions only (pyfuncs.typemap.evaluate)."""
    tree = Guards().visit(ast.parse(source, filename))
    flags = __future__.annotations.compiler_flag
    code: types.CodeType = compile(
        ast.fix_missing_locations(tree), filename, "exec", flags, dont_inherit=True
    )
    return code
