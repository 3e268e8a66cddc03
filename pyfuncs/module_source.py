"""A routine module as read from its file, and the part of it each routine's version covers.

A routine's version covers its own code and the module code it uses (imports, helpers, row
types, constants), so editing one routine of a module does not bump the others: each routine
is stored with the module's source in which the other routines' definitions are blank lines.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DefinitionError, printable


@dataclass(frozen=True)
class ModuleSource:
    """A routine module as read from its file: the routines are its top-level defs."""

    name: str  # the module's name, as the database loads it
    file: str  # its path, as messages show it
    text: str
    tree: ast.Module

    @classmethod
    def parse(cls, name: str, file: str, text: str) -> ModuleSource:
        try:
            tree = ast.parse(text, file)
        except SyntaxError as exc:
            # a NUL byte is a syntax error without a position (Python 3.12: a ValueError)
            where = f"{file}:{exc.lineno}:{exc.offset or 0}" if exc.lineno else file
            raise DefinitionError(f"syntax error: {exc.msg}", where=where) from None
        except (RecursionError, MemoryError, SystemError):
            # SystemError: CPython 3.11 checks its own depth count after building a deep tree,
            # and a finalizer that parses meanwhile (a traceback's carets) upsets the count
            raise DefinitionError(f"{file} nests too deeply to be parsed: split deeply nested "
                                  "expressions into named parts") from None  # fmt: skip
        except ValueError as exc:  # a NUL byte
            raise DefinitionError(f"{file} cannot be parsed: {printable(str(exc))}") from None
        if not all(part.isidentifier() for part in name.split(".")):
            raise DefinitionError(f"{name!r} is not a module name; rename {file}")
        return cls(name, file, text, tree)

    @property
    def published_file(self) -> str:
        """The file as the catalog and the generated code name it, which PUBLIC may read:
        its path relative to the deployer's working directory, or its name alone."""
        return Path(self.file).name if Path(self.file).is_absolute() else self.file

    @functools.cached_property
    def _defs(self) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
        return {
            node.name: node
            for node in self.tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }

    def defs(self) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
        """The module's top-level defs by name (the last one, where a name is defined twice)."""
        return self._defs


def display_path(file: str | Path) -> str:
    """A file's path as messages, catalogs and generated code show it: relative to the
    working directory when it is under it, and never with a control character (a newline in
    a directory's name must not start a line anywhere)."""
    path = Path(file).resolve()
    try:
        text = str(path.relative_to(Path.cwd()))
    except ValueError:
        text = str(path)
    return printable(text)


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def routine_sources(module: ModuleSource, routines: Collection[str]) -> dict[str, str]:
    """The module source each routine needs: other routines' definitions become blank lines.

    A routine's version then changes only when its own code or the module code it shares
    (imports, helpers, row types, constants) changes, and line numbers stay those of the file.
    Another routine stays when the kept code refers to it by name, directly or through other
    routines that stay.

    The module is parsed once and the closures are computed on the graph of which routine
    names which (strongly connected components, bitsets), so the time is linear in the
    module's size plus the size of the sources made (`stored_size` tells that first).
    """
    plan = _Plan(module, routines)
    return {name: plan.source(name) for name in plan.spans if name in routines}


def stored_size(module: ModuleSource, routines: Collection[str]) -> int:
    """How many characters `routine_sources` would make, without making them."""
    return _Plan(module, routines).size()


class _Plan:
    """Where each routine's definition is in the module, and which others each one needs."""

    def __init__(self, module: ModuleSource, routines: Collection[str]) -> None:
        # lines as the parser counts them (str.splitlines would also split at \f, \x1c,
        # \u2028 ... and shift every span after one)
        self.lines = _LINE.findall(module.text)
        nodes: dict[str, ast.FunctionDef] = {}
        shared: set[str] = set()  # names the code every routine keeps refers to
        for node in module.tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in routines:
                previous = nodes.get(node.name)
                if previous is not None:  # redefined: the earlier def is ordinary code
                    shared |= _names(previous)
                    del nodes[node.name]  # (and the spans stay in the module's order)
                nodes[node.name] = node
            else:
                shared |= _names(node)
        self.order = list(nodes)
        index = {name: i for i, name in enumerate(self.order)}
        self.spans = {
            name: (min([n.lineno] + [d.lineno for d in n.decorator_list]), n.end_lineno or n.lineno)
            for name, n in nodes.items()
        }
        edges = [[index[m] for m in _names(nodes[name]) if m in index] for name in self.order]
        reach = _reach(edges)
        common = 0
        for name in shared:
            if name in index:
                common |= reach[index[name]]
        self.needed = {name: reach[i] | common for i, name in enumerate(self.order)}
        self.pieces: list[tuple[str, str, int]] | None = None

    def size(self) -> int:
        """The characters of every routine's source: the module, less what blanking saves."""
        whole = sum(map(len, self.lines))
        saved = [
            sum(map(len, self.lines[start - 1 : end])) - (end - start + 1)
            for start, end in self.spans.values()
        ]
        everything = sum(saved)
        total = 0
        for needed in self.needed.values():
            kept = sum(saved[i] for i in _bits(needed))
            total += whole - everything + kept
        return total

    def source(self, keep: str) -> str:
        if self.pieces is None:  # the module cut at routines: (text, blanked, routine index)
            self.pieces, at = [], 0
            for i, (start, end) in enumerate(self.spans.values()):
                self.pieces.append(("".join(self.lines[at : start - 1]), "", -1))
                span = "".join(self.lines[start - 1 : end])
                self.pieces.append((span, "\n" * (end - start + 1), i))
                at = end
            self.pieces.append(("".join(self.lines[at:]), "", -1))
        mask = bin(self.needed[keep])[:1:-1]  # mask[i] == "1": routine i stays
        return "".join(
            text if i < 0 or (i < len(mask) and mask[i] == "1") else blank
            for text, blank, i in self.pieces
        )


def _bits(value: int) -> Iterator[int]:
    """The positions of the bits set in `value`."""
    while value:
        low = value & -value
        yield low.bit_length() - 1
        value ^= low


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _reach(edges: list[list[int]]) -> list[int]:
    """For each node of a directed graph, the set of nodes it reaches (itself included), as a
    bitset: Tarjan's strongly connected components, iteratively, each component's set made
    once from its successors' (which Tarjan finishes first)."""
    count = len(edges)
    order = [-1] * count  # discovery index
    low = [0] * count
    reach = [0] * count
    stack: list[int] = []
    on_stack = [False] * count
    counter = 0
    for root in range(count):
        if order[root] != -1:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                order[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack[node] = True
            if child < len(edges[node]):
                work.append((node, child + 1))
                succ = edges[node][child]
                if order[succ] == -1:
                    work.append((succ, 0))
                elif on_stack[succ]:
                    low[node] = min(low[node], order[succ])
                continue
            if low[node] == order[node]:  # the root of a component: pop it whole
                members = []
                while True:
                    member = stack.pop()
                    on_stack[member] = False
                    members.append(member)
                    if member == node:
                        break
                bits = 0
                for member in members:
                    bits |= 1 << member
                for member in members:
                    for succ in edges[member]:
                        if not bits >> succ & 1:
                            bits |= reach[succ]
                for member in members:
                    reach[member] = bits
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return reach
