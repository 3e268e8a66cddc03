"""Decorators that mark routines, and the validated `Definition` read from each one.

The decorators only attach options and return the function unchanged, so a routine stays a
plain, type-checkable, unit-testable Python function. Everything is checked when the module is
collected for deploy (`collect`), before anything touches the database; every problem is
reported with its file:line.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import re
import sys
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, ParamSpec, TypeVar, overload

from . import limits, policy
from .errors import DefinitionError
from .limits import Limits
from .typemap import ReturnShape, SqlType, UnsupportedType, return_shape, sql_type

P = ParamSpec("P")
R = TypeVar("R")

Kind = Literal["function", "procedure"]
Volatility = Literal["volatile", "stable", "immutable"]
Parallel = Literal["unsafe", "restricted", "safe"]

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Names PL/Python itself puts in a routine's globals: a parameter must not hide them.
_RESERVED_PARAMS = frozenset({"args", "plpy", "self"})
_ATTR = "__pyfuncs__"


@dataclass(frozen=True)
class Options:
    """What the decorator was told."""

    kind: Kind
    schema: str = "public"
    name: str | None = None
    roles: tuple[str, ...] = ()
    volatility: Volatility = "volatile"
    strict: bool = False
    parallel: Parallel = "unsafe"
    security: str = "invoker"
    timeout_ms: int | None = None
    max_memory_mb: int | None = None
    max_db_ops: int | None = None
    max_result_rows: int | None = None
    max_result_bytes: int | None = None

    def limit_overrides(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in Limits.names()}


def _mark(options: Options) -> Callable[[Callable[P, R]], Callable[P, R]]:
    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        setattr(fn, _ATTR, options)
        return fn

    return decorate


@overload
def stored_function(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def stored_function(
    *,
    schema: str = "public",
    name: str | None = None,
    roles: typing.Sequence[str] = (),
    volatility: Volatility = "volatile",
    strict: bool = False,
    parallel: Parallel = "unsafe",
    security: str = "invoker",
    timeout_ms: int | None = None,
    max_memory_mb: int | None = None,
    max_db_ops: int | None = None,
    max_result_rows: int | None = None,
    max_result_bytes: int | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def stored_function(
    fn: Callable[P, R] | None = None,
    /,
    *,
    schema: str = "public",
    name: str | None = None,
    roles: typing.Sequence[str] = (),
    volatility: Volatility = "volatile",
    strict: bool = False,
    parallel: Parallel = "unsafe",
    security: str = "invoker",
    timeout_ms: int | None = None,
    max_memory_mb: int | None = None,
    max_db_ops: int | None = None,
    max_result_rows: int | None = None,
    max_result_bytes: int | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a typed Python function as a PostgreSQL function (`LANGUAGE plpython3u`).

    `roles` get EXECUTE; nobody else does. The docstring becomes the function's COMMENT.
    The limits (`timeout_ms`, `max_memory_mb`, `max_db_ops`, `max_result_rows`,
    `max_result_bytes`; see pyfuncs.limits) default to the configured ones; 0 lifts one.
    """
    options = Options(
        "function", schema, name, tuple(roles), volatility, strict, parallel, security,
        timeout_ms, max_memory_mb, max_db_ops, max_result_rows, max_result_bytes,
    )  # fmt: skip
    return _mark(options)(fn) if fn is not None else _mark(options)


@overload
def procedure(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def procedure(
    *,
    schema: str = "public",
    name: str | None = None,
    roles: typing.Sequence[str] = (),
    security: str = "invoker",
    timeout_ms: int | None = None,
    max_memory_mb: int | None = None,
    max_db_ops: int | None = None,
    max_result_rows: int | None = None,
    max_result_bytes: int | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def procedure(
    fn: Callable[P, R] | None = None,
    /,
    *,
    schema: str = "public",
    name: str | None = None,
    roles: typing.Sequence[str] = (),
    security: str = "invoker",
    timeout_ms: int | None = None,
    max_memory_mb: int | None = None,
    max_db_ops: int | None = None,
    max_result_rows: int | None = None,
    max_result_bytes: int | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a typed Python function as a PostgreSQL procedure, run with `CALL`.

    A procedure is atomic: it runs inside the caller's transaction and none of its writes
    survive an error. A return value becomes OUT parameters (`result`, or a row's fields).
    """
    options = Options(
        "procedure", schema, name, tuple(roles), security=security, timeout_ms=timeout_ms,
        max_memory_mb=max_memory_mb, max_db_ops=max_db_ops, max_result_rows=max_result_rows,
        max_result_bytes=max_result_bytes,
    )  # fmt: skip
    return _mark(options)(fn) if fn is not None else _mark(options)


def options_of(obj: object) -> Options | None:
    options = getattr(obj, _ATTR, None)
    return options if isinstance(options, Options) else None


# --- definitions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    type: SqlType
    has_default: bool = False
    default: Any = None


@dataclass(frozen=True)
class Definition:
    """A routine as it will be installed: validated and independent of the database."""

    options: Options
    function: Callable[..., Any]
    name: str
    params: tuple[Param, ...]
    returns: ReturnShape
    doc: str | None
    file: str
    line: int
    module_name: str
    source: str
    limits: Limits = dataclasses.field(default_factory=Limits)

    @property
    def kind(self) -> Kind:
        return self.options.kind

    @property
    def schema(self) -> str:
        return self.options.schema

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def identity_args(self) -> str:
        return ", ".join(p.type.sql for p in self.params)

    @property
    def out_columns(self) -> tuple[tuple[str, SqlType], ...]:
        """OUT parameters: a procedure's result, or a function's single-row result."""
        shape = self.returns
        if shape.setof:
            return ()
        if shape.kind == "row":
            return shape.columns
        if self.kind == "procedure" and shape.kind == "scalar":
            assert shape.scalar is not None
            return (("result", shape.scalar),)
        return ()

    def spec(self) -> dict[str, Any]:
        """What the in-database runtime needs to load this routine (see ddl.body for calls)."""
        return {
            "routine": self.qualname,
            "function": self.function.__name__,
            "module": self.module_name,
            "file": self.file,
            "converters": sorted({p.type.convert for p in self.params if p.type.convert}),
            "limits": self.limits.as_dict(),
            "allowed_modules": sorted(policy.allowed_modules()),
        }

    def signature(self) -> dict[str, Any]:
        """The signature as stored in the catalog, for clients that call by name."""
        shape = self.returns
        return {
            "kind": self.kind,
            "params": [
                {"name": p.name, "type": p.type.sql, "nullable": p.type.nullable,
                 "has_default": p.has_default}
                for p in self.params
            ],
            "returns": {
                "kind": shape.kind,
                "setof": shape.setof,
                "nullable": shape.nullable,
                "type": shape.scalar.sql if shape.scalar else None,
                "columns": [[n, t.sql] for n, t in shape.columns],
            },
            "out": [n for n, _ in self.out_columns],
        }  # fmt: skip


def _where(fn: Callable[..., Any]) -> tuple[str, int]:
    try:
        file = inspect.getsourcefile(fn) or "<unknown>"
        line = inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        return getattr(fn, "__module__", "<unknown>"), 0
    return display_path(file), line


def display_path(file: str | Path) -> str:
    path = Path(file).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _check_name(what: str, value: str, problems: list[str]) -> None:
    if not _NAME.match(value):
        problems.append(
            f"{what} {value!r} is not a valid name: use lowercase letters, digits and "
            "underscores, starting with a letter or underscore, at most 63 characters"
        )


def build(
    fn: Callable[..., Any], source: str | None = None, defaults: Limits | None = None
) -> Definition:
    """Validate one decorated function and describe it; raises DefinitionError.

    Its limits are `defaults` (by default those configured, see Limits.from_env) with the
    decorator's on top."""
    options = options_of(fn)
    file, line = _where(fn)
    where = f"{file}:{line}"
    if options is None:
        raise DefinitionError(
            f"{fn!r} is not a routine; decorate it with @stored_function or @procedure",
            where=where,
        )
    problems: list[str] = []
    name = options.name or fn.__name__
    _check_name("schema", options.schema, problems)
    _check_name("routine name", name, problems)
    for role in options.roles:
        _check_name("role", role, problems)
    if options.security != "invoker":
        problems.append(
            f"security={options.security!r} is refused: pyfuncs routines always run with the "
            "caller's rights (SECURITY INVOKER); grant the calling roles what the routine needs"
        )
    if options.volatility not in ("volatile", "stable", "immutable"):
        problems.append(f"volatility={options.volatility!r}: use volatile, stable or immutable")
    problems += limits.problems(options.limit_overrides())
    if options.parallel not in ("unsafe", "restricted", "safe"):
        problems.append(f"parallel={options.parallel!r}: use unsafe, restricted or safe")
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        problems.append("async functions cannot run inside PostgreSQL; use a plain def")

    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # NameError for unknown names, and whatever a hint raises
        raise DefinitionError(f"{name}: type hints cannot be resolved: {exc}", where=where) from exc

    params: list[Param] = []
    seen_default = False
    for p in inspect.signature(fn).parameters.values():
        label = f"parameter {p.name!r}"
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            problems.append(f"{label}: *args, **kwargs and positional-only parameters have no "
                            "PostgreSQL equivalent; use named parameters")  # fmt: skip
            continue
        _check_name(label + " name", p.name, problems)
        if p.name in _RESERVED_PARAMS or p.name.startswith("_pf"):
            problems.append(f"{label}: the name is reserved by PL/Python; rename it")
        if p.name not in hints:
            problems.append(f"{label} has no type annotation; add one (e.g. `{p.name}: int`)")
            continue
        try:
            ptype = sql_type(hints[p.name])
        except UnsupportedType as exc:
            problems.append(f"{label}: {exc}")
            continue
        has_default = p.default is not p.empty
        if has_default:
            seen_default = True
            if p.default is None and not ptype.nullable:
                problems.append(f"{label}: default None needs an Optional type (`T | None`)")
        elif seen_default:
            problems.append(f"{label}: follows a parameter with a default, so it needs one too "
                            "(PostgreSQL requires it)")  # fmt: skip
        params.append(Param(p.name, ptype, has_default, p.default if has_default else None))

    returns = ReturnShape("void", False)
    if "return" not in hints:
        problems.append("the return type is not annotated; add `-> T` (or `-> None`)")
    else:
        try:
            returns = return_shape(hints["return"])
        except UnsupportedType as exc:
            problems.append(f"return type: {exc}")
    if options.kind == "procedure" and returns.setof:
        problems.append("a procedure cannot return a set of rows; use @stored_function")
    if options.kind == "procedure" and returns.kind != "void" and seen_default:
        problems.append(
            "a procedure that returns a value cannot have parameters with defaults (PostgreSQL "
            "puts its result in OUT parameters, which may not follow defaults); drop the "
            "defaults, return None, or make it a @stored_function"
        )
    result_names = {n for n, _ in returns.columns}
    if options.kind == "procedure" and returns.kind == "scalar":
        result_names = {"result"}
    clash = result_names & {p.name for p in params}
    if clash:
        problems.append(
            f"parameter names {sorted(clash)} are also result columns; PostgreSQL keeps result "
            "columns and parameters in one namespace, so rename one side"
        )
    if problems:
        raise DefinitionError(
            f"routine {name} is invalid:\n" + "\n".join(f"  - {m}" for m in problems), where=where
        )
    module = sys.modules.get(fn.__module__)
    if source is None:
        source_file = inspect.getsourcefile(fn)
        source = Path(source_file).read_text() if source_file else inspect.getsource(fn)
    return Definition(
        options=options,
        function=fn,
        name=name,
        params=tuple(params),
        returns=returns,
        doc=inspect.cleandoc(fn.__doc__) if fn.__doc__ else None,
        file=file,
        line=line,
        module_name=getattr(module, "__name__", fn.__module__),
        source=source,
        limits=(defaults or Limits.from_env()).overridden(options.limit_overrides()),
    )


def routine_source(source: str, keep: str, routines: set[str]) -> str:
    """The module source one routine needs: other routines' definitions become blank lines.

    A routine's version then changes only when its own code or the module code it shares
    (imports, helpers, row types, constants) changes, and line numbers stay those of the file.
    Another routine stays when the kept code refers to it by name.
    """
    tree = ast.parse(source)
    spans = {
        node.name: (min([node.lineno] + [d.lineno for d in node.decorator_list]), node.end_lineno)
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name in routines and node.name != keep
    }
    lines = source.splitlines(keepends=True)
    dropped = set(spans)
    while True:
        kept = "".join(
            line for i, line in enumerate(lines, 1)
            if not any(spans[n][0] <= i <= (spans[n][1] or i) for n in dropped)
        )  # fmt: skip
        used = {n.id for n in ast.walk(ast.parse(kept)) if isinstance(n, ast.Name)}
        if not dropped & used:
            break
        dropped -= used
    return "".join(
        "\n" if any(spans[n][0] <= i <= (spans[n][1] or i) for n in dropped) else line
        for i, line in enumerate(lines, 1)
    )


def load_module(target: str) -> ModuleType:
    """Import a module by dotted name or by file path; syntax errors come back with file:line."""
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target).resolve()
            module_name = f"pyfuncs_user.{path.stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise DefinitionError(f"cannot load {target} as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(target)
    except SyntaxError as exc:
        where = f"{display_path(exc.filename or target)}:{exc.lineno}:{exc.offset or 0}"
        raise DefinitionError(f"syntax error: {exc.msg}", where=where) from exc
    except ModuleNotFoundError as exc:
        raise DefinitionError(
            f"cannot import {target!r}: {exc}; pass a file path or an importable module name"
        ) from exc
    except DefinitionError:
        raise
    except Exception as exc:  # the module's own code failed while it was imported
        frames = traceback.extract_tb(exc.__traceback__)
        last = frames[-1] if frames else None
        location = f"{display_path(last.filename)}:{last.lineno}" if last else None
        raise DefinitionError(
            f"importing {target} failed: {type(exc).__name__}: {exc}", where=location
        ) from exc


def _source_file(target: str) -> Path:
    if target.endswith(".py") or "/" in target:
        return Path(target).resolve()
    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError) as exc:
        raise DefinitionError(f"cannot find module {target!r}: {exc}") from exc
    if spec is None or spec.origin is None:
        raise DefinitionError(f"cannot find module {target!r}; pass a file path or a module name")
    return Path(spec.origin)


def _read_source(target: str | ModuleType) -> tuple[Path, str]:
    if isinstance(target, str):
        file, name = _source_file(target), target
    else:
        file, name = Path(getattr(target, "__file__", None) or ""), target.__name__
    if not file.is_file():
        raise DefinitionError(f"no such file: {name} (routines are read from their .py source)")
    return file, file.read_text()


def enforce_policy(source: str, file: Path) -> None:
    """Refuse a routine module whose source breaks the policy (see pyfuncs.policy)."""
    violations = policy.check_source(source, display_path(file))
    if violations:
        raise DefinitionError(
            f"{len(violations)} policy violation(s), nothing was deployed:\n"
            + "\n".join(f"  {v}" for v in violations)
        )


def collect(target: str | ModuleType) -> list[Definition]:
    """Every routine defined in a module, validated: the policy first, on the source, before
    the module is imported; then each definition. All problems are reported at once."""
    file, source = _read_source(target)
    enforce_policy(source, file)
    module = load_module(target) if isinstance(target, str) else target
    found = [
        obj
        for obj in vars(module).values()
        if options_of(obj) is not None and getattr(obj, "__module__", None) == module.__name__
    ]
    defaults = Limits.from_env()
    definitions: list[Definition] = []
    errors: list[str] = []
    for fn in found:
        try:
            definitions.append(build(fn, source, defaults))
        except DefinitionError as exc:
            errors.append(str(exc))
    names: dict[str, Definition] = {}
    for d in definitions:
        if d.qualname in names:
            errors.append(f"{d.where}: {d.qualname} is defined twice (also at "
                          f"{names[d.qualname].where})")  # fmt: skip
        names[d.qualname] = d
    if errors:
        raise DefinitionError("\n".join(errors))
    if not definitions:
        raise DefinitionError(f"{module.__name__} defines no @stored_function or @procedure")
    functions = {d.function.__name__ for d in definitions}
    return sorted(
        (
            dataclasses.replace(d, source=routine_source(d.source, d.function.__name__, functions))
            for d in definitions
        ),
        key=lambda d: d.line,
    )
