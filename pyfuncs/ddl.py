"""The SQL that installs a routine, composed with psycopg.sql (never by string formatting).

SQL type names come from `typemap` (a fixed vocabulary), identifiers go through
`sql.Identifier`, values (bodies, defaults, comments) through `sql.Literal`.
"""

from __future__ import annotations

from psycopg import sql
from psycopg.abc import AdaptContext
from psycopg.types.json import Jsonb

from .definition import Definition, Param

# The interface of the runtime the bodies generated here call (pyfuncs/_pg/boot.py): a body
# keeps the version it was generated for, and the runtime keeps serving it.
INTERFACE = "pyfuncs.v1"

# The generated PL/Python body. PL/Python passes arguments as globals named after the
# parameters. The runtime is loaded once per backend (GD) and the routine once per function
# (SD); per call the body checks NULLs and hands text-typed values to the runtime's
# converters (which the entry function reads inside the call: routines.Unread), then calls
# the routine's entry function. Python 3.11 `try` costs nothing until something is raised.
# The entry function is kept in the procedure's globals too (`_pf_entry`; no parameter may
# start with `_pf`): PL/Python writes each call's arguments there, so the lookup reads what
# the call touches anyway, not SD (with 16 clients a core, each line and page a call
# touches comes cold). For the same reason a call's path comes first and runs straight
# through: the loading, once per function, comes after it, and loops back to it.
BODY = """\
# pyfuncs {qualname}: generated from {where}; edit the Python source and deploy it.
global _pf_entry
while True:
    try:
        _pf_fn = _pf_entry
    except NameError:
        pass
    else:
{checks}{begin}        try:
            return {result}
        except BaseException as _pf_error:  # RoutineInterrupted is a BaseException on purpose
            raise SD["pf"].fail(_pf_error) from None
{end}    if {interface!r} not in GD:
        import ctypes  # (a query in a parallel operation fails past PL/Python's frames)
        if ctypes.CDLL(None).IsInParallelMode():
            plpy.error("a pyfuncs routine cannot start during a parallel operation",
                       hint="call it from a query that is not run in parallel",
                       sqlstate="25000")
        plpy.execute("SELECT pyfuncs.boot()")
    if {interface!r} not in GD:
        plpy.error("the pyfuncs runtime in this database is older than this routine",
                   hint="run `pyfuncs install`", sqlstate="PF002")
    _pf_spec = {spec!r}
    _pf_source = {source!r}
    SD["pf"] = GD[{interface!r}].routine(_pf_spec, _pf_source)
    _pf_entry = SD["fn"] = SD["pf"].fn
"""


def body(d: Definition) -> str:
    checks = "".join(
        f"        if {p.name} is None:\n            raise SD['pf'].null({p.name!r})\n"
        for p in d.params
        if not p.type.nullable
    )
    args = ", ".join(
        f"SD['pf'].convert[{p.type.convert!r}]({p.name})" if p.type.convert else p.name
        for p in d.params
    )
    result = f"_pf_fn({args})"
    # max_db_ops: the call's budget of operations, for the runtime to count against
    counted = d.limits.max_db_ops is not None
    begin = "        _pf_budget = SD['pf'].begin()\n" if counted else ""
    end = "        finally:\n            SD['pf'].end()\n" if counted else ""
    shape = d.returns
    # a single column: PostgreSQL types the result by that column (one OUT parameter, or
    # TABLE of one column), so the body returns the field, not the row
    single = shape.kind == "row" and len(shape.columns) == 1 and d.kind == "function"
    field = ""
    if single:
        column = repr(shape.columns[0][0])
        field = (f"(lambda _pf_row: None if _pf_row is None else _pf_row[{column}] "
                 f"if isinstance(_pf_row, dict) else getattr(_pf_row, {column}))")  # fmt: skip
    if shape.setof:
        if single:
            result = f"map({field}, {result} or ())"
        result = f"SD['pf'].rows({result}, _pf_budget)" if counted else f"SD['pf'].rows({result})"
    else:
        if d.limits.max_result_bytes and d.returns.kind != "void":
            # (a runtime since round 58 sizes every result inside the call and returns it
            # here as it is; an older one sized a result of a built-in type here)
            result = f"SD['pf'].sized({result})"
        if d.kind == "procedure" and d.returns.kind == "scalar":
            result = f"{{'result': {result}}}"  # a procedure's OUT parameters form a row
        elif single:
            result = f"{field}({result})"
    return BODY.format(
        qualname=d.qualname, where=d.where, spec=d.spec(), source=d.source, interface=INTERFACE,
        checks=checks, begin=begin, result=result, end=end,
    )  # fmt: skip


def routine_ident(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def routine_ref(kind: str, schema: str, name: str, identity_args: str) -> sql.Composed:
    """`FUNCTION api.f(bigint, text)`: names one routine for DROP, GRANT and COMMENT."""
    return sql.SQL("{} {}({})").format(
        sql.SQL(kind.upper()), routine_ident(schema, name), sql.SQL(identity_args)
    )


def _default(param: Param) -> sql.Composable:
    value = param.default  # of an exact type (see definition.decode)
    if value is not None and param.type.is_json:
        value = Jsonb(value)
    return sql.SQL(" DEFAULT {}").format(sql.Literal(value)) if param.has_default else sql.SQL("")


def create_statement(d: Definition) -> sql.Composed:
    args: list[sql.Composable] = [
        sql.SQL("{} {}{}").format(sql.Identifier(p.name), sql.SQL(p.type.sql), _default(p))
        for p in d.params
    ]
    args += [
        sql.SQL("OUT {} {}").format(sql.Identifier(n), sql.SQL(t.sql)) for n, t in d.out_columns
    ]
    shape = d.returns
    parts: list[sql.Composable] = [
        sql.SQL("CREATE OR REPLACE {} {}({})").format(
            sql.SQL(d.kind.upper()), routine_ident(d.schema, d.name), sql.SQL(", ").join(args)
        )
    ]
    if d.kind == "function":
        if shape.kind == "void":
            returns: sql.Composable = sql.SQL("void")
        elif shape.kind == "row" and shape.setof:
            returns = sql.SQL("TABLE({})").format(
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t.sql))
                    for n, t in shape.columns
                )
            )
        elif shape.kind == "row" and len(shape.columns) == 1:
            returns = sql.SQL(shape.columns[0][1].sql)  # what one OUT parameter makes it
        elif shape.kind == "row":
            returns = sql.SQL("record")
        else:
            assert shape.scalar is not None
            returns = sql.SQL(("SETOF " if shape.setof else "") + shape.scalar.sql)
        parts.append(sql.SQL("RETURNS {}").format(returns))
    parts.append(sql.SQL("LANGUAGE plpython3u TRANSFORM FOR TYPE jsonb"))
    if d.kind == "function":
        o = d.options
        parts.append(sql.SQL(o.volatility.upper()))
        if o.strict:
            parts.append(sql.SQL("STRICT"))
        parts.append(sql.SQL("PARALLEL " + o.parallel.upper()))
    parts.append(sql.SQL("SECURITY INVOKER"))
    parts.append(sql.SQL("AS {}").format(sql.Literal(body(d))))
    return sql.SQL("\n").join(parts)


def render(statement: sql.Composable, context: AdaptContext | None = None) -> str:
    return statement.as_string(context)
