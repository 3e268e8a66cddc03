"""Decorators that mark routines, and the validated `Definition` of each one.

The decorators only attach options and return the function unchanged, so a routine stays a
plain, type-checkable, unit-testable Python function.

A definition is made in two steps. `facts_of(fn)` describes a decorated function as plain
JSON data: its options, parameters, hints (pyfuncs.typemap.describe) and defaults, each value
with its exact type. It runs where the module was executed: for `pyfuncs check` and
`deploy`, a contained child process (pyfuncs._sandbox), so its output is data from a module
nobody has reviewed yet. `build(facts, module)` checks those facts against the module's
source (the function must be a top-level `def` there; its line and docstring come from the
source) and against fixed vocabularies, and reports every problem with file:line. Nothing a
module made reaches DDL: only names that passed a pattern, types from the vocabulary, and
values rebuilt here from their JSON.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import decimal
import inspect
import json
import re
import sys
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, ParamSpec, TypeVar, overload

from . import limits, policy
from .errors import DefinitionError, capped, printable
from .limits import Limits
from .module_source import ModuleSource, display_path
from .typemap import ReturnShape, SqlType, UnsupportedType, describe, evaluate, return_shape
from .typemap import sql_type as map_sql_type

P = ParamSpec("P")
R = TypeVar("R")

Kind = Literal["function", "procedure"]
Volatility = Literal["volatile", "stable", "immutable"]
Parallel = Literal["unsafe", "restricted", "safe"]

# used with fullmatch: `$` would also match before a final newline
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Schemas a module may not deploy into: pyfuncs' own (its security functions live there) and
# PostgreSQL's (pg_catalog, pg_toast, pg_temp_N: every name with the reserved `pg_` prefix).
RESERVED_SCHEMAS = frozenset({"pyfuncs", "information_schema"})
MAX_PROBLEMS = 20  # problems reported for one routine
# Names PL/Python itself puts in a routine's globals, and the builtins the generated body
# uses (pyfuncs/ddl.py): a parameter must not hide them.
_RESERVED_PARAMS = frozenset({"args", "plpy", "self", "SD", "GD", "TD", "map", "isinstance",
                              "getattr", "dict", "BaseException", "NameError"})  # fmt: skip
_ATTR = "__pyfuncs__"
# the keyword each decorator takes, and the types its value may have
_OPTIONS: dict[str, tuple[type, ...]] = {
    "schema": (str,), "name": (str, type(None)), "roles": (list,), "volatility": (str,),
    "strict": (bool,), "parallel": (str,), "security": (str,),
    **{name: (int, type(None)) for name in Limits.names()},
}  # fmt: skip
_FUNCTION_ONLY = frozenset({"volatility", "strict", "parallel"})


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

    def given(self) -> dict[str, Any]:
        """The options as a decorator call would pass them (what `facts_of` records)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "kind" and not (self.kind == "procedure" and f.name in _FUNCTION_ONLY)
        }


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


# --- values that travel as JSON, with their exact types ---------------------------------


def encode(value: Any, depth: int = 0) -> Any:
    """A value as JSON that keeps its exact type; a subclass (whose str() or repr() could
    say anything) or any other type is marked unsupported."""
    kind = type(value)
    if depth > 8:
        return {"t": "unsupported", "v": "a value nested too deeply"}
    if value is None:
        return {"t": "none"}
    if kind in (bool, int, str):
        return {"t": kind.__name__, "v": value}
    if kind is float:
        return {"t": "float", "v": float.__repr__(value)}  # inf and nan too
    if kind is decimal.Decimal:
        return {"t": "Decimal", "v": decimal.Decimal.__str__(value)}
    if kind is bytes:
        return {"t": "bytes", "v": value.hex()}
    if kind in (datetime.datetime, datetime.date, datetime.time):
        return {"t": kind.__name__, "v": kind.isoformat(value)}
    if kind is uuid.UUID:
        return {"t": "UUID", "v": uuid.UUID.__str__(value)}
    if kind in (list, tuple):
        return {"t": "list", "v": [encode(v, depth + 1) for v in value]}
    if kind is dict and all(type(k) is str for k in value):
        return {"t": "dict", "v": {k: encode(v, depth + 1) for k, v in dict.items(value)}}
    return {"t": "unsupported", "v": f"a {kind.__name__}"}


_DECODE: dict[str, Callable[[Any], Any]] = {
    "bool": lambda v: v if type(v) is bool else _bad(),
    "int": lambda v: v if type(v) is int else _bad(),
    "str": lambda v: v if type(v) is str else _bad(),
    "float": lambda v: float(v) if type(v) is str else _bad(),
    "Decimal": lambda v: decimal.Decimal(v) if type(v) is str else _bad(),
    "bytes": lambda v: bytes.fromhex(v) if type(v) is str else _bad(),
    "datetime": lambda v: datetime.datetime.fromisoformat(v) if type(v) is str else _bad(),
    "date": lambda v: datetime.date.fromisoformat(v) if type(v) is str else _bad(),
    "time": lambda v: datetime.time.fromisoformat(v) if type(v) is str else _bad(),
    "UUID": lambda v: uuid.UUID(v) if type(v) is str else _bad(),
}


class _Unreadable(ValueError):
    pass


def _bad() -> NoReturn:
    raise _Unreadable("an unreadable value")


def decode(data: Any, depth: int = 0) -> Any:
    """The value `encode` described, rebuilt with its exact type; ValueError otherwise."""
    if not isinstance(data, dict) or depth > 8:
        _bad()
    kind, value = data.get("t"), data.get("v")
    if kind == "none":
        return None
    if kind == "list" and isinstance(value, list):
        return [decode(v, depth + 1) for v in value]
    if kind == "dict" and isinstance(value, dict):
        return {str(k): decode(v, depth + 1) for k, v in value.items()}
    if kind == "unsupported":
        raise _Unreadable(f"{value if type(value) is str else 'a value'} cannot be written "
                          "into SQL")  # fmt: skip
    convert = _DECODE.get(kind) if type(kind) is str else None
    if convert is None:
        _bad()
    try:
        return convert(value)
    except (ValueError, TypeError, decimal.InvalidOperation) as exc:
        raise _Unreadable(str(exc)) from None


# --- facts: a decorated function described (where its module runs) ----------------------


def facts_of(fn: Callable[..., Any], kind: Kind, given: Mapping[str, Any]) -> dict[str, Any]:
    """What `build` needs to know of a decorated function, as JSON data: its options as given
    to the decorator, its parameters with their hints and defaults, its return hint."""
    annotations = dict(getattr(fn, "__annotations__", None) or {})
    namespace = getattr(fn, "__globals__", {})

    def hint(name: str) -> Any:
        if name not in annotations:
            return None
        try:
            return describe(annotations[name], lambda text: evaluate(text, namespace))
        except Exception as exc:  # NameError, UnsupportedType, and whatever a hint raises
            return {"kind": "unreadable", "text": f"{type(exc).__name__}: {str(exc)[:200]}"}

    params = []
    for p in inspect.signature(fn, follow_wrapped=False).parameters.values():
        param = {"name": str.__str__(p.name), "kind": p.kind.name, "hint": hint(p.name)}
        if p.default is not p.empty:
            param["default"] = encode(p.default)
        params.append(param)
    return {
        "function": str.__str__(fn.__name__),
        "kind": kind,
        "options": {str.__str__(k): encode(v) for k, v in given.items()},
        "params": params,
        "returns": hint("return"),
        "async": inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn),
    }


# --- definitions (trusted: built from facts and the source) ------------------------------


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
    function: str  # the top-level def the database calls
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
            "function": self.function,
            "module": self.module_name,
            "file": self.file,
            "converters": sorted({p.type.convert for p in self.params if p.type.convert}),
            "limits": self.limits.as_dict(),
            "allowed_modules": sorted(policy.allowed_modules()),
            **self._declared(),
        }

    def _declared(self) -> dict[str, Any]:
        """How PostgreSQL converts what the routine returns, after the call, where that
        needs checking inside it (the runtime's Routine._refuse): for the value, and for each
        column of a row, the checks of `conversion`. Void routines have none."""
        shape = self.returns
        if shape.kind == "scalar" and shape.scalar is not None:
            scalar = shape.scalar
            where = f"{scalar.python} ({scalar.sql})"
            return _declared(where, conversion(scalar), [], reads_numbers(scalar))
        if shape.kind != "row":
            return {}
        if shape.setof and len(shape.columns) == 1 and self.kind == "function":
            # (each row the body hands over is its one column's value: ddl.body)
            name, column = shape.columns[0]
            where = f"the column {name} of {shape.row_name or 'a row'}"
            return _declared(where, conversion(column), [], reads_numbers(column))
        columns = [[i, name, conversion(t)] for i, (name, t) in enumerate(shape.columns)]
        numbers = any(reads_numbers(t) for _, t in shape.columns)
        return _declared(shape.row_name or "a row", ["row"], columns, numbers)

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


def conversion(t: SqlType) -> list[str]:
    """What to refuse where `t` is declared, as PostgreSQL converts a Python value to it
    after the call, where no stop reaches (red teams' results took seconds there): "text",
    a list, tuple, dict or byte string, which any type but boolean, bytea and jsonb reads
    through its repr(); "json", a byte string anywhere in it, whose every byte jsonb makes a
    number, and a tuple or byte string as a key, which it reads through its repr(); and, for
    an array, "items": a text or byte string, which it reads as one item per character, the
    other checks holding for its items. A row is checked as "row" (a text or byte string
    refused), and each of its columns as its type says."""
    element = t.sql.removesuffix("[]")
    checks = [] if element in ("boolean", "bytea") else ["json"] if element == "jsonb" else ["text"]
    return ["items", *checks] if t.sql.endswith("[]") else checks


def reads_numbers(t: SqlType) -> bool:
    """Whether PostgreSQL reads a text or a float returned where `t` is declared as a
    numeric, which prints every digit its exponent adds (`"9e131071"`: 131,072 of them), so
    that max_result_bytes counts them (the runtime's results.size): numeric, jsonb and their
    arrays. Elsewhere a text is its length (a red team's UUIDs and hex digests, counted by
    the exponents their hex digits spell, were refused)."""
    return t.sql.removesuffix("[]") in ("numeric", "jsonb")


def _declared(
    returns: str, value: list[str], columns: list[list[Any]], numbers: bool
) -> dict[str, Any]:
    checked = [c for c in columns if c[2]]
    if not value and not checked:
        return {}
    declared = {"returns": returns, "value": value, "columns": checked, "numbers": numbers}
    return {"declared": declared}


def valid_name(value: object) -> bool:
    """Whether `value` may name a schema, routine, role, parameter or result column:
    lowercase ASCII letters, digits and underscores, starting with a letter or underscore,
    at most 63 characters, and nothing else (no trailing newline either)."""
    return type(value) is str and _NAME.fullmatch(value) is not None


def reserved_schema(schema: str) -> bool:
    """Whether routines may not be deployed into `schema` (see RESERVED_SCHEMAS)."""
    return schema in RESERVED_SCHEMAS or schema.startswith("pg_")


def _check_name(what: str, value: Any, problems: list[str]) -> None:
    if not valid_name(value):
        problems.append(
            f"{what} {value!r} is not a valid name: use lowercase letters, digits and "
            "underscores, starting with a letter or underscore, at most 63 characters"
        )


def _options(kind: Any, raw: Any, problems: list[str]) -> Options:
    """The decorator's options, each of an exact, expected type (defaults for bad ones)."""
    if kind not in ("function", "procedure") or not isinstance(raw, dict):
        raise DefinitionError("unreadable facts about a routine")
    values: dict[str, Any] = {}
    for key, data in raw.items():
        allowed = _OPTIONS.get(key)
        if allowed is None or (kind == "procedure" and key in _FUNCTION_ONLY):
            problems.append(f"@{'stored_function' if kind == 'function' else kind} has no "
                            f"option {key!r}")  # fmt: skip
            continue
        try:
            value = decode(data)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
            continue
        if key == "roles":
            if type(value) is list and all(type(r) is str for r in value):
                values[key] = tuple(value)
                continue
            problems.append(f"roles={value!r}: give a list of role names")
        elif key in Limits.names():
            values[key] = value  # limits.problems says what is wrong with it
        elif type(value) in allowed:
            values[key] = value
        else:
            problems.append(f"{key}={value!r}: expected {' or '.join(t.__name__ for t in allowed)}")
    return Options(kind, **values)


def _default(param: Param, data: Any, problems: list[str]) -> Param:
    label = f"parameter {param.name!r}"
    try:
        value = decode(data)
    except ValueError as exc:
        problems.append(f"{label}: its default: {exc}")
        return param
    if value is None and not param.type.nullable:
        problems.append(f"{label}: default None needs an Optional type (`T | None`)")
    elif value is not None and not _fits(param.type.python, value):
        problems.append(f"{label}: the default {value!r} is not a {param.type.python}")
    return dataclasses.replace(param, has_default=True, default=value)


_FITS: dict[str, tuple[type, ...]] = {
    "bool": (bool,), "int": (int,), "float": (float, int), "Decimal": (decimal.Decimal, int),
    "str": (str,), "bytes": (bytes,), "datetime": (datetime.datetime,),
    "date": (datetime.date,), "time": (datetime.time,), "UUID": (uuid.UUID,),
}  # fmt: skip


def _fits(python: str, value: Any) -> bool:
    """Whether a default (rebuilt by `decode`, so of an exact type) suits a parameter of the
    hinted type `python` (as SqlType.python names it)."""
    if python == "json":
        return type(value) in (dict, list, str, int, float, bool)
    if python.startswith("list["):
        return type(value) is list and all(v is None or _fits(python[5:-1], v) for v in value)
    expected = _FITS.get(python, ())
    if type(value) is bool and bool not in expected:
        return False
    if python == "date" and type(value) is datetime.datetime:
        return False
    return type(value) in expected


def build(facts: Any, module: ModuleSource, defaults: Limits | None = None) -> Definition:
    """Validate the facts of one routine against its module's source; DefinitionError with
    every problem found, at file:line. Its limits are `defaults` (by default those configured,
    see Limits.from_env) with the decorator's on top."""
    if not isinstance(facts, dict) or type(facts.get("function")) is not str:
        raise DefinitionError("unreadable facts about a routine", where=module.file)
    function = facts["function"]
    node = module.defs().get(function)
    if node is None:
        raise DefinitionError(
            f"{function!r} is not a top-level def of {module.file}: define routines with "
            "`def` at module level, decorated with @stored_function or @procedure",
            where=module.file,
        )
    line = min([node.lineno] + [d.lineno for d in node.decorator_list])
    where = f"{module.file}:{line}"
    problems: list[str] = []
    options = _options(facts.get("kind"), facts.get("options"), problems)
    name = function if options.name is None else options.name
    _check_name("schema", options.schema, problems)
    if valid_name(options.schema) and reserved_schema(options.schema):
        problems.append(
            f"schema {options.schema!r} is reserved (pyfuncs' own and PostgreSQL's system "
            "schemas cannot hold routines): deploy into a schema of your application's, "
            "e.g. schema='api'"
        )
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
    if facts.get("async") is not False or isinstance(node, ast.AsyncFunctionDef):
        problems.append("async functions cannot run inside PostgreSQL; use a plain def")

    given = facts.get("params")
    given = [p for p in given if isinstance(p, dict)] if isinstance(given, list) else []
    declared = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
    if [p.get("name") for p in given] != declared or (node.args.vararg or node.args.kwarg):
        if node.args.vararg or node.args.kwarg or node.args.posonlyargs:
            problems.append("*args, **kwargs and positional-only parameters have no "
                            "PostgreSQL equivalent; use named parameters")  # fmt: skip
        else:
            problems.append(f"its parameters at run time are not those of `def {function}` "
                            "in the source; do not replace routines while the module loads")  # fmt: skip
        given = []

    params: list[Param] = []
    seen_default = False
    for p in given:
        pname = p["name"]
        label = f"parameter {pname!r}"
        _check_name(label + " name", pname, problems)
        if pname in _RESERVED_PARAMS or str(pname).startswith("_pf"):
            problems.append(f"{label}: the name is reserved by PL/Python; rename it")
        if p.get("hint") is None:
            problems.append(f"{label} has no type annotation; add one (e.g. `{pname}: int`)")
            continue
        try:
            param = Param(pname, map_sql_type(p["hint"]))
        except UnsupportedType as exc:
            problems.append(f"{label}: {exc}")
            continue
        if "default" in p:
            seen_default = True
            param = _default(param, p["default"], problems)
        elif seen_default:
            problems.append(f"{label}: follows a parameter with a default, so it needs one too "
                            "(PostgreSQL requires it)")  # fmt: skip
        params.append(param)

    returns = ReturnShape("void", False)
    if facts.get("returns") is None:
        problems.append("the return type is not annotated; add `-> T` (or `-> None`)")
    else:
        try:
            returns = return_shape(facts["returns"])
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
    for column in result_names:
        _check_name("result column", column, problems)
    clash = result_names & {p.name for p in params}
    if clash:
        problems.append(
            f"parameter names {sorted(clash)} are also result columns; PostgreSQL keeps result "
            "columns and parameters in one namespace, so rename one side"
        )
    if problems:
        # what the module chose (names, values, hint texts) is in these lines: printed safely
        lines = capped([printable(m) for m in problems], MAX_PROBLEMS, "problems")
        raise DefinitionError(
            f"routine {printable(name)} is invalid:\n" + "\n".join(f"  - {m}" for m in lines),
            where=where,
        )
    return Definition(
        options=options,
        function=function,
        name=name,
        params=tuple(params),
        returns=returns,
        doc=ast.get_docstring(node),
        file=module.published_file,
        line=line,
        module_name=module.name,
        source=module.text,
        limits=(defaults or Limits.from_env()).overridden(options.limit_overrides()),
    )


def definition_of(fn: Callable[..., Any], defaults: Limits | None = None) -> Definition:
    """The definition of a decorated function imported by the application itself (trusted
    code, as any import is), e.g. for a client calling it by its Python object."""
    options = options_of(fn)
    if options is None:
        raise DefinitionError(
            f"{fn!r} is not a routine; decorate it with @stored_function or @procedure"
        )
    try:
        file = inspect.getsourcefile(fn)
    except TypeError:
        file = None
    if file is None:
        raise DefinitionError(f"{fn!r}: its source file cannot be found")
    module = getattr(sys.modules.get(fn.__module__), "__name__", fn.__module__)
    source = ModuleSource.parse(module, display_path(file), Path(file).read_text())
    facts = json.loads(json.dumps(facts_of(fn, options.kind, options.given())))
    return build(facts, source, defaults)
