"""The catalogue of escapes, run against the runtime inside the database (issue 12).

Each attempt is a small routine module whose `attempt()` tries to reach what a routine may
not: a module outside the allow-list, the real builtins, frames, code and globals, the
operating system, or state every call in the backend shares. The policy check is bypassed
(the modules are loaded with `sandbox.load_module` directly, in a PL/Python function a
superuser made for the test), so what refuses them is the runtime: the guards compiled into
the module (a SyntaxError), its restricted builtins and importer, the read-only views of the
allowed modules, and the checks the guards route reads and writes through.

An attempt passes when it is refused, with the exception and message it names, and nothing
that calls share changed (a fingerprint of shared state is taken before and after each).
`attempt()` returns what it got hold of when it gets through, and the test shows what that
was; the checks that refuse them leave what routines ordinarily do working (the last
tests). The catalogue of the other classes lives with their tests: calls affecting each
other (tests/integration/modules/contaminate_mod.py), leaving the caller's identity
(tests/integration/modules/identity_mod.py) and calls that cannot be stopped
(tests/integration/test_stopping.py, test_late_work.py); the last test here counts them all.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any, NamedTuple

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.janitor import DatabaseJanitor

from pyfuncs import policy
from pyfuncs.embedded import SUPERUSER, Cluster

from ..integration.modules import contaminate_mod, identity_mod

# The harness: boots the runtime in this backend, loads one attempt's module as the runtime
# loads a routine's (with the default allow-list), calls its attempt() and says what happened.
HARNESS = """
CREATE FUNCTION public.escape_attempt(name text, source text) RETURNS text
LANGUAGE plpython3u AS $harness$
import contextvars
import sys
if "pyfuncs_pg.sandbox" not in sys.modules:
    plpy.execute("SELECT pyfuncs.boot()")
sandbox = sys.modules["pyfuncs_pg.sandbox"]
allowed = frozenset(%(allowed)s)


def fingerprint():
    import calendar, collections.abc, dataclasses, decimal, enum, json, math, typing, uuid
    plans = sys.modules["pyfuncs_pg.db"]
    context = decimal.getcontext()
    flags = sorted(str(signal) for signal, up in context.flags.items() if up)
    with decimal.localcontext():  # (the flags it raises are not the context's)
        seventh = str(decimal.Decimal(1) / decimal.Decimal(7))
    return repr((
        context.prec, context.rounding, sorted(map(str, context.traps.items())), flags, seventh,
        json.dumps({"a": [1, 2]}), uuid.NAMESPACE_DNS.int, uuid.uuid5(uuid.NAMESPACE_DNS, "x"),
        [(m.name, m.value) for m in uuid.SafeUUID], uuid.SafeUUID(0).name,
        [(m.name, m.value) for m in enum.FlagBoundary], calendar.firstweekday(),
        sorted(vars(dataclasses.MISSING)), math.pi, isinstance("x", collections.abc.Mapping),
        isinstance(type("Fresh", (), {})(), collections.abc.Mapping),
        issubclass(type("Fresh", (), {}), collections.abc.Sized),
        sorted((repr(k), id(v)) for k, v in plans._DIRECT.items()),
        sorted((repr(k), id(v)) for k, v in plans._ADAPTED.items()), sorted(vars(plans.Db)),
        [hasattr(shared, marker) for shared in (json.dumps, json.loads, collections.OrderedDict)
         for marker in ("__final__", "__no_type_check__", "__dataclass_transform__")],
        typing.get_args(typing.Optional[int]), typing.get_args(typing.Union[int, str]),
    ))


before = fingerprint()
module, stage = "escape_" + name, "load"
calling = sys.modules["pyfuncs_pg.watchdog"].CALLING
try:
    try:
        namespace = sandbox.load_module(source, module + ".py", module, allowed)
        stage = "call"
        # as a call runs it: as its module's call (what it returns or raises is told in it
        # too), in a context of its own (routines.py)
        calling[0] = namespace
        got = contextvars.Context().run(namespace["attempt"])
    except BaseException as exc:
        outcome = f"{stage} {type(exc).__name__}: {exc}"
    else:
        outcome = f"returned {type(got).__name__}: {got!r}"[:2000]
finally:
    calling[0] = None
after = fingerprint()
if after != before:
    outcome = f"CONTAMINATED ({outcome}): {before} -> {after}"
return outcome
$harness$
"""


class Attempt(NamedTuple):
    name: str
    source: str
    refused: str  # how: "<load|call> <ExceptionType>: <what the message starts with>"


ATTEMPTS: list[Attempt] = []


def attempt(name: str, refused: str, source: str) -> None:
    ATTEMPTS.append(Attempt(name, textwrap.dedent(source).strip() + "\n", refused))


COMPILE = "load SyntaxError: pyfuncs: "
IMPORT = "load ImportError: pyfuncs: import of "
GETATTR = "call AttributeError: pyfuncs: attribute "

# --- 1. modules the allowed ones hold: the views leave them out -------------------------
for module, hop, rest in [
    ("uuid", "os", "getpid"), ("uuid", "sys", "modules"), ("uuid", "subprocess", "run"),
    ("json", "decoder", "re"), ("json", "scanner", "c_make_scanner"), ("json", "codecs", "open"),
    ("dataclasses", "sys", "modules"), ("dataclasses", "inspect", "currentframe"),
    ("dataclasses", "copy", "deepcopy"), ("enum", "sys", "modules"),
    ("typing", "sys", "modules"), ("typing", "functools", "partial"),
    ("typing", "collections", "abc"), ("decimal", "sys", "modules"),
    ("random", "os", "urandom"), ("random", "_os", "system"), ("calendar", "sys", "argv"),
    ("calendar", "datetime", "date"), ("hashlib", "_hashlib", "new"),
    ("statistics", "sys", "modules"), ("statistics", "random", "seed"),
    ("fractions", "re", "compile"), ("fractions", "operator", "attrgetter"),
    ("collections", "_sys", "modules"), ("collections", "_collections_abc", "Mapping"),
    ("base64", "binascii", "a2b_base64"), ("hmac", "_hashlib", "new"),
    ("secrets", "_sysrand", "seed"), ("zoneinfo", "_tzpath", "reset_tzpath"),
    ("math", "math", "factorial"), ("itertools", "itertools", "count"),
    ("struct", "struct", "pack"),
]:  # fmt: skip
    attempt(
        f"module_{module}_{hop}",
        "call AttributeError: pyfuncs: "
        if hop.startswith("_")
        else "call AttributeError: module '",
        f"""
        import {module}

        def attempt():
            return {module}.{hop}.{rest}
        """,
    )

attempt(
    "from_uuid_import_os",
    "load ImportError: cannot import name 'os'",
    """
    from uuid import os

    def attempt():
        return os.getpid
""",
)
attempt(
    "from_json_import_decoder",
    "load ImportError: cannot import name 'decoder'",
    """
    from json import decoder

    def attempt():
        return decoder.re
""",
)
attempt(
    "from_json_decoder_import",
    IMPORT + "'json.decoder'",
    """
    from json.decoder import scanstring

    def attempt():
        return scanstring
""",
)
attempt(
    "import_submodule_binds_package",
    IMPORT + "'collections.abc.sys'",
    """
    import collections.abc.sys

    def attempt():
        return collections
""",
)
attempt(
    "from_pyfuncs_import_runtime",
    "load ImportError: cannot import name '_pg'",
    """
    from pyfuncs import _pg

    def attempt():
        return _pg
""",
)
attempt(
    "pyfuncs_shim_deploy",
    "call AttributeError: module 'pyfuncs:routines'",
    """
    import pyfuncs

    def attempt():
        return pyfuncs.deploy
""",
)
attempt(
    "import_runtime_package",
    IMPORT + "'pyfuncs_pg'",
    """
    import pyfuncs_pg

    def attempt():
        return pyfuncs_pg
""",
)
for forbidden in ("os", "sys", "builtins", "importlib", "ctypes", "gc", "plpy", "types", "_io"):
    attempt(
        f"import_{forbidden}",
        IMPORT + f"'{forbidden}'",
        f"""
        import {forbidden}

        def attempt():
            return {forbidden}
    """,
    )
attempt(
    "import_at_call_time",
    "call ImportError: pyfuncs: import of 'os'",
    """
    def attempt():
        import os
        return os.getpid
""",
)
attempt(
    "relative_import",
    IMPORT + "''",
    """
    from . import x

    def attempt():
        return x
""",
)
attempt(
    "from_allowed_import_builtins",
    COMPILE + "importing '__builtins__'",
    """
    from json import __builtins__ as b

    def attempt():
        return b["open"]
""",
)
attempt(
    "from_allowed_import_loader",
    COMPILE + "importing '__loader__'",
    """
    from uuid import __loader__ as loader

    def attempt():
        return loader
""",
)
attempt(
    "view_setattr_module",
    "call AttributeError: pyfuncs: a routine may not change",
    """
    import json

    def attempt():
        json.os = 1
""",
)
attempt(
    "view_leaves_out_get_type_hints",
    "call AttributeError: module 'typing (view)'",
    """
    import typing

    class C:
        x: "os.system"

    def attempt():
        return typing.get_type_hints(C)
""",
)
attempt(
    "view_leaves_out_forward_ref",
    "call AttributeError: module 'typing (view)'",
    """
    import typing

    def attempt():
        return typing.ForwardRef("__import__('os')")
""",
)
attempt(
    "view_leaves_out_uuid_getnode",
    "call AttributeError: module 'uuid (view)'",
    """
    import uuid

    def attempt():
        return uuid.getnode()
""",
)

# --- 2. dunder names and frame attributes: refused where the module is compiled ---------
for name, expression in [
    ("function_globals", "attempt.__globals__"), ("function_code", "attempt.__code__"),
    ("function_closure", "attempt.__closure__"), ("function_builtins", "attempt.__builtins__"),
    ("subclasses", "object.__subclasses__()"), ("mro", "int.__mro__"),
    ("base", "bool.__base__"), ("class_bases", "().__class__.__bases__"),
    ("type_dict", "type.__dict__"), ("method_self", "len.__self__"),
    ("module_dict", "json.__dict__"), ("library_globals", "json.dumps.__globals__"),
    ("dunder_import", "__import__('os')"), ("builtins_name", "__builtins__"),
    ("loader_name", "__loader__"), ("spec_name", "__spec__"), ("file_name", "__file__"),
    ("reduce", "(1).__reduce_ex__(2)"),
]:  # fmt: skip
    attempt(
        f"dunder_{name}",
        COMPILE,
        f"""
        import json

        def attempt():
            return {expression}
    """,
    )
for name, setup, expression in [
    ("gi_frame", "def g():\n    yield 1", "g().gi_frame"),
    ("gi_code", "def g():\n    yield 1", "g().gi_code"),
    ("gi_yieldfrom", "def g():\n    yield 1", "g().gi_yieldfrom"),
    ("cr_frame", "async def c():\n    pass", "c().cr_frame"),
    ("cr_await", "async def c():\n    pass", "c().cr_await"),
    ("ag_frame", "async def a():\n    yield 1", "a().ag_frame"),
    ("tb_frame", "def t():\n    try:\n        1 / 0\n    except Exception as e:\n        return e",
     "t().with_traceback(None).tb_frame"),
    ("f_globals", "def g():\n    yield 1", "g().gi_frame.f_globals"),
    ("f_back", "def g():\n    yield 1", "g().gi_frame.f_back"),
    ("f_builtins", "def g():\n    yield 1", "g().gi_frame.f_builtins"),
    ("co_consts", "def g():\n    yield 1", "g().gi_code.co_consts"),
    ("traceback", "def t():\n    try:\n        1 / 0\n    except Exception as e:\n        return e",
     "t().__traceback__"),
]:  # fmt: skip
    attempt(
        f"frame_{name}",
        COMPILE,
        f"""
        {textwrap.indent(setup, " " * 8).strip()}

        def attempt():
            return {expression}
    """,
    )
for name, pattern, subject in [
    ("globals", "object(__globals__=g)", "attempt"),
    ("gi_frame", "object(gi_frame=g)", "(x for x in ())"),
    ("class", "object(__class__=g)", "attempt"),
    ("format", "str(format=g)", "'{0.__class__}'"),
    ("private", "object(_direct=g)", "db"),
]:  # fmt: skip
    attempt(
        f"match_{name}",
        COMPILE + "a class pattern",
        f"""
        from pyfuncs import db

        def attempt():
            match {subject}:
                case {pattern}:
                    return g
    """,
    )

# --- 3. the builtins routine code does not get, by name and by every other route --------
for name, call in [
    ("exec", "exec('import os')"), ("eval", "eval('1')"), ("compile", "compile('1', 'f', 'eval')"),
    ("open", "open('/etc/passwd').read()"), ("globals", "globals()"), ("vars", "vars()"),
    ("locals", "locals()"), ("breakpoint", "breakpoint()"), ("input", "input()"),
    ("help", "help(len)"), ("memoryview", "memoryview(b'x')"),
    ("delattr", "delattr(attempt, 'x')"),
]:  # fmt: skip
    attempt(
        f"builtin_{name}",
        f"call NameError: name '{name}' is not defined",
        f"""
        def attempt():
            return {call}
    """,
    )
attempt(
    "builtins_through_a_function",
    COMPILE + "the attribute '__builtins__'",
    """
    import json

    def attempt():
        return json.dumps.__builtins__["open"]
""",
)

# --- 4. attributes by name: getattr, hasattr and setattr check what they are given -------
for name, call in [
    ("getattr_globals", "getattr(attempt, '__globals__')"),
    ("getattr_computed", "getattr(attempt, '__glo' + 'bals__')"),
    ("getattr_gi_frame", "getattr((x for x in ()), 'gi_frame')"),
    ("getattr_tb_frame", "getattr(ValueError().with_traceback(None), 'tb_frame')"),
    ("getattr_private", "getattr(db, '_direct')"),
    ("getattr_subclasses", "getattr(object, '__subclasses__')()"),
    ("getattr_format_of_class", "getattr(1, '__class__')"),
    ("hasattr_private", "hasattr(db, '_adapted')"),
    ("setattr_dunder", "setattr(Mine(), '__class__', int)"),
    ("setattr_shared", "setattr(json, 'dumps', len)"),
    ("getattr_through_map", "list(map(getattr, [attempt], ['__code__']))"),
    ("getattr_bytes_name", "getattr(attempt, b'__globals__')"),
]:  # fmt: skip
    attempt(
        name,
        GETATTR if "shared" not in name else "call AttributeError: pyfuncs: ",
        f"""
        import json
        from pyfuncs import db

        class Mine:
            pass

        def attempt():
            return {call}
    """,
    )
attempt(
    "getattr_default_hides_nothing",
    "call TypeError: 'NoneType' object is not",
    """
    def attempt():
        g = getattr(attempt, "__globals__", None)
        return g["__builtins__"]
""",
)
attempt(
    "getattr_str_subclass_name",
    GETATTR,
    """
    class Name(str):
        def startswith(self, *args):
            return False

        def __hash__(self):
            return 0

        def __eq__(self, other):
            return False

    def attempt():
        return getattr(attempt, Name("__globals__"))["__builtins__"]
""",
)
attempt(
    "hasattr_str_subclass_name",
    GETATTR,
    """
    class Name(str):
        def startswith(self, *args):
            return False

    def attempt():
        if hasattr(attempt, Name("__globals__")):
            return getattr(attempt, Name("__globals__"))
""",
)

# --- 5. format fields that walk attributes -----------------------------------------------
for name, call in [
    ("format_class", "'{0.__class__}'.format(1)"),
    ("format_globals", "'{0.__globals__[json]}'.format(attempt)"),
    ("format_computed", "('{0.__glo' + 'bals__}').format(attempt)"),
    ("format_gi_frame", "'{0.gi_frame.f_globals}'.format(x for x in ())"),
    ("format_of_str", "str.format('{0.__class__.__mro__}', 1)"),
    ("format_map", "'{x.__globals__}'.format_map({'x': attempt})"),
    ("format_nested_spec", "'{0:{1.__class__}}'.format(1, 2)"),
    ("format_through_map", "list(map(str.format, ['{0.__init__}'], [1]))"),
    ("format_by_getattr", "getattr('{0.__class__}', 'format')(1)"),
    ("format_str_subclass", "Template('{0.__class__}').format(1)"),
    ("format_type_of", "type('')('{0.__class__}').format(1)"),
    ("format_private", "'{0._direct}'.format(db)"),
]:  # fmt: skip
    attempt(
        name,
        "call AttributeError: pyfuncs: a format field may not read the attribute",
        f"""
        from pyfuncs import db

        class Template(str):
            pass

        def attempt():
            return {call}
    """,
    )
attempt(
    "format_through_super",
    "call AttributeError: pyfuncs: a format field may not read",
    """
    import uuid

    class Template(str):
        def walk(self, value):
            return super().format(value)

    def attempt():
        return Template("{0.__init__.__globals__[os].environ}").walk(uuid.UUID)
""",
)
attempt(
    "format_through_user_string",
    "call AttributeError: pyfuncs: a format field may not",
    """
    import collections
    import uuid

    def attempt():
        template = collections.UserString("{0.__init__.__globals__[os].environ}")
        return template.format(uuid.UUID)
""",
)
attempt(
    "format_map_through_user_string",
    "call AttributeError: pyfuncs: a format field",
    """
    import collections
    import uuid

    def attempt():
        template = collections.UserString("{x.__init__.__globals__[os].getpid}")
        return collections.UserString.format_map(template, {"x": uuid.UUID})
""",
)

# --- 6. class patterns whose __match_args__ name what routines may not read --------------
MATCH = "call TypeError: pyfuncs: a class pattern "
# a class that json.dumps is an instance of: an abstract class of the module's own that
# registers functions (a metaclass's __instancecheck__, as first written, is refused now)
LYING = """
import collections.abc

def Lying(name, bases, namespace):
    made = type(collections.abc.Sized)(name, bases, {**namespace, "__module__": __name__})
    made.register(type(json.dumps))
    return made
"""
# a metaclass of the routine's: refused where it is made
METACLASS = "load TypeError: pyfuncs: the class 'Lying' may not derive from type: "
LYING_TYPE = """
class Lying(type):
    def __instancecheck__(cls, obj):
        return True
"""
for name, refused, made in [
    ("type", MATCH + "may not read", 'Spy = Lying("Spy", (), {"__match_args__": ("__globals__",)})'),
    ("dict_keywords", MATCH + "may not read",
     'Spy = Lying("Spy", (), dict(__match_args__=("__globals__",)))'),
    ("dataclass", "load TypeError: pyfuncs: a dataclass's fields must be named by identifiers",
     'class Base(metaclass=Lying):\n    pass\n\n'
     'Spy = dataclasses.make_dataclass("Spy", ["__globals__"], bases=(Base,))'),
    ("prepare", METACLASS,
     'class Preparing(Lying):\n    @classmethod\n    def __prepare__(cls, name, bases):\n'
     '        return {"__match_args__": ("__globals__",)}\n\n'
     'class Spy(metaclass=Preparing):\n    pass'),
    ("metaclass_new", METACLASS,
     'class Adding(Lying):\n    def __new__(cls, name, bases, namespace):\n'
     '        namespace["__match_" + "args__"] = ("__globals__",)\n'
     '        return Lying(name, bases, namespace)\n\n'
     'class Spy(metaclass=Adding):\n    pass'),
    ("getattribute", METACLASS,
     'class Computing(Lying):\n    def __getattribute__(cls, name):\n'
     '        return ("__globals__",) if name.startswith("__match") else type.mro(cls)\n\n'
     'class Spy(metaclass=Computing):\n    pass'),
    ("metaclass_getattr", METACLASS,
     'class Computing(Lying):\n    def __getattr__(cls, name):\n        return ("__globals__",)\n\n'
     'class Spy(metaclass=Computing):\n    pass'),
    ("metaclass_attribute", METACLASS,
     'Computing = Lying("Computing", (Lying,), {"__match_args__": ("__globals__",)})\n'
     'Spy = Computing("Spy", (), {})'),
    ("descriptor", "load TypeError: pyfuncs: the special method '__match_args__' of a routine's",
     'class Names:\n    def __get__(self, obj, cls):\n        return ("__globals__",)\n\n'
     'Spy = Lying("Spy", (), {"__match_args__": Names()})'),
    ("tuple_subclass", MATCH + "may not read",
     'class Names(tuple):\n    pass\n\n'
     'Spy = Lying("Spy", (), {"__match_args__": Names(["__globals__"])})'),
    ("str_subclass", MATCH + "may not read",
     'class Name(str):\n    def startswith(self, *args):\n        return False\n\n'
     'Spy = Lying("Spy", (), {"__match_args__": (Name("__globals__"),)})'),
    ("frame_attribute", MATCH + "may not read",
     'Spy = Lying("Spy", (), {"__match_args__": ("gi_frame",)})'),
    ("checked_read", MATCH + "may not read",
     'Spy = Lying("Spy", (), {"__match_args__": ("format",)})'),
    ("inherited", MATCH + "may not read",
     'Base = Lying("Base", (), {"__match_args__": ("__globals__",)})\n\nclass Spy(Base):\n    pass\n\n'
     'Spy.register(type(json.dumps))'),
]:  # fmt: skip
    attempt(
        f"match_args_{name}",
        refused,
        f"""
        import dataclasses
        import json
        {textwrap.indent(LYING_TYPE if refused == METACLASS else LYING, " " * 8).strip()}

        {textwrap.indent(made, " " * 8).strip()}

        def attempt():
            match json.dumps:
                case Spy(found):
                    return found["__builtins__"]["__import__"]("os").getpid
    """,
    )
attempt(
    "match_args_nested_pattern",
    MATCH + "may not read",
    """
    import collections.abc
    import json

    Spy = type(collections.abc.Sized)(
        "Spy", (), {"__match_args__": ("__globals__",), "__module__": __name__})
    Spy.register(type(json.dumps))

    def attempt():
        match [json.dumps]:
            case [Spy(found)] | (Spy(found), _):
                return found
""",
)

# --- 7. calls that change what other calls get (class 2), by routes the runtime missed ---
attempt(
    "db_plans_by_private_attribute",
    "call AttributeError: pyfuncs: a routine may not read the private attribute '_direct'",
    """
    from pyfuncs import db

    def attempt():
        db._direct.clear()
        db._direct[("SELECT 1",)] = None
""",
)
attempt(
    "db_plans_by_class",
    "call AttributeError: pyfuncs: a routine may not change",
    """
    from pyfuncs import db

    def attempt():
        type(db)._direct = {}
""",
)
attempt(
    "decimal_context_kept_by_a_suspended_generator",
    "call ",
    """
    import decimal

    KEPT = []

    def low():
        with decimal.localcontext() as context:
            context.prec = 2
            yield

    def attempt():
        generator = low()
        next(generator)
        KEPT.append(generator)
        raise PermissionError("pyfuncs-test: whatever it kept, the context is the call's own")
""",
)

# --- found by this catalogue, and closed since: state shared through the copy protocol,
# private attributes and the decimal context ---------------------------------------------
attempt(
    "instance_state_by_deepcopy",
    "call ",
    """
    import dataclasses
    import uuid

    def shared():
        return uuid.NAMESPACE_DNS

    class Evil:
        def __reduce_ex__(self, protocol):
            return (shared, (), {"int": 0})

    @dataclasses.dataclass
    class Box:
        item: object

    def attempt():
        dataclasses.asdict(Box(Evil()))
        raise PermissionError("pyfuncs-test: nothing shared changed")
""",
)
attempt(
    "instance_state_by_astuple",
    "call ",
    """
    import dataclasses

    def shared():
        return dataclasses.MISSING

    class Evil:
        def __reduce_ex__(self, protocol):
            return (shared, (), {"hijacked": True})

    @dataclasses.dataclass
    class Box:
        item: object

    def attempt():
        dataclasses.astuple(Box(Evil()))
        raise PermissionError("pyfuncs-test: nothing shared changed")
""",
)
attempt(
    "enum_members_by_private_attribute",
    "call AttributeError: pyfuncs: ",
    """
    import uuid

    def attempt():
        uuid.SafeUUID._value2member_map_[0] = uuid.SafeUUID.unknown
""",
)
attempt(
    "enum_member_names_by_private_attribute",
    "call AttributeError: pyfuncs: ",
    """
    import enum

    def attempt():
        enum.FlagBoundary._member_names_.append("KEEP")
""",
)

attempt(
    "instance_state_by_a_constructor_returning_a_shared_object",
    "call TypeError: pyfuncs: copying a ",
    """
    import dataclasses
    import uuid

    class Maker:
        def __new__(cls):
            return uuid.NAMESPACE_OID

    class Evil:
        def __reduce_ex__(self, protocol):
            return (Maker, (), {"int": 0})

    @dataclasses.dataclass
    class Box:
        item: object

    def attempt():
        dataclasses.asdict(Box(Evil()))
""",
)
for label, expression in [
    ("safe_uuid_map", "uuid.SafeUUID._member_map_.clear()"),
    ("safe_uuid_value", "uuid.SafeUUID.safe._value_"),
    ("json_encoder_private", "json._default_encoder"),
    ("random_instance", "random._inst"),
    ("decimal_private", "decimal._decimal"),
]:
    attempt(
        f"private_{label}",
        "call AttributeError: ",
        f"""
    import decimal, json, random, uuid

    def attempt():
        return {expression}
""",
    )
# another class's private attribute, spelled as Python mangles it: refused as compiled
attempt(
    "private_getattr_free_private",
    COMPILE + "the attribute '_UUID__x' is not allowed",
    """
    import uuid

    def attempt():
        return type(uuid.NAMESPACE_DNS)._UUID__x
""",
)
attempt(
    "decimal_context_set_by_a_generator_kept_by_a_class",
    "call ",
    """
    import decimal

    class Keeper:
        kept = []

    def high():
        with decimal.localcontext(prec=50):
            yield

    def attempt():
        generator = high()
        next(generator)
        Keeper.kept.append(generator)
        raise PermissionError("pyfuncs-test: the context is the call's own")
""",
)

# --- 4. work no stop can interrupt, refused before it starts: Decimal at a high precision
# (a routine's own contexts), Decimal and Fraction powers --------------------------------
for label, body in [
    ("localcontext_prec", "with decimal.localcontext(prec=100_000):\n            return D(1) / D(7)"),
    ("localcontext_of_a_context",
     "with decimal.localcontext(decimal.Context(prec=10**6)):\n            return D(1) / D(7)"),
    ("prec_store", "with decimal.localcontext() as c:\n            c.prec = 10**6"),
    ("prec_augmented_store", "with decimal.localcontext() as c:\n            c.prec += 10**6"),
    ("prec_setattr", "with decimal.localcontext() as c:\n            setattr(c, 'prec', 10**6)"),
    ("context_exp", "return decimal.Context(prec=10**5).exp(D(1))"),
    ("context_ln", "return decimal.Context(prec=10**5).ln(D(2))"),
    ("context_divide", "return decimal.Context(prec=10**7).divide(D(1), D(7))"),
    ("context_power", "return decimal.Context(prec=10**5).power(D(2), D('0.5'))"),
    ("method_context", "return D(2).sqrt(context=decimal.Context(prec=10**6))"),
    ("method_positional_context", "return D(2).log10(decimal.Context(prec=10**6))"),
    ("class_method", "return D.exp(D(1), decimal.Context(prec=10**6))"),
    ("power_of_long_base", "return D('7' * 5000) ** D('1.5')"),
    ("power_of_long_exponent", "return D('1.5') ** D('1.' + '3' * 5000)"),
    ("pow_of_long_base", "return pow(D('7' * 5000), D('1.5'))"),
    ("context_power_long", "return decimal.Context().power(D('7' * 5000), D('1.5'))"),
    ("fraction_power", "return fractions.Fraction(3, 2) ** 100_000_000"),
    ("fraction_pow", "return pow(fractions.Fraction(3), 10**8)"),
    ("int_power_fraction", "return 3 ** fractions.Fraction(10**8)"),
    ("fraction_power_in_place", "x = fractions.Fraction(7)\n        x **= 10**8"),
    # round 47b: a modular power's operands are integers to libmpdec, 1e100000000 one of
    # 100,000,001 digits (and a subclass's own methods say nothing of its digits)
    ("pow_modular_exponent", "return pow(D(3), D('1e100000000'), D(7))"),
    ("pow_modular_base", "return pow(D('1e100000000'), D(3), D(7))"),
    ("pow_modular_int_base", "return pow(3, D('1e100000000'), D(7))"),
    ("pow_modular_int_exponent", "return pow(D(3), 10**2000, D(7))"),
    ("context_power_modular", "return decimal.Context().power(D(3), D('1e100000000'), D(7))"),
    ("context_power_modular_keyword",
     "return decimal.Context().power(D(3), D(5), modulo=D('1e100000000'))"),
    ("class_power_modular", "return decimal.Context.power(decimal.Context(), 3, D('1e9999'), 7)"),
    ("pow_modular_subclass", "class S(D):\n            def adjusted(self):\n"
                             "                return 0\n"
                             "        return pow(S(3), S('1e100000000'), S(7))"),
    ("int_of_a_subclass", "class S(D):\n            def is_finite(self):\n"
                          "                return False\n"
                          "        return int(S('1e1000000'))"),
    # and a Fraction made from a Rational, whose parts fractions takes as they are
    ("fraction_of_a_rational", "class F(fractions.Fraction):\n            @property\n"
                               "            def numerator(self):\n"
                               "                return 1 << 8_000_000\n"
                               "        return fractions.Fraction(F(1))"),
    ("fraction_of_rationals", "class F(fractions.Fraction):\n            @property\n"
                              "            def numerator(self):\n"
                              "                return 1 << 8_000_000\n"
                              "        return fractions.Fraction(F(1), F(3))"),
]:  # fmt: skip
    attempt(
        f"bounded_{label}",
        "call OperationTooLarge: ",
        f"""
    import decimal
    import fractions
    from decimal import Decimal as D

    def attempt():
        {body}
""",
    )


# red team 7: a format's bound read through the routine's own objects, or a nested field
# evaluated twice; normalization and translation that work far beyond their input in C
for label, body in [
    ("spec_len", "class S(str):\n            def __len__(self):\n                return 1\n"
                 "        return format('x', S('>500000000'))"),
    ("percent_find", "class S(str):\n            def find(self, *a):\n                return -1\n"
                     "        return S('%500000000s') % 'x'"),
    ("percent_abs", "class I(int):\n            def __abs__(self):\n                return 0\n"
                    "        return '%*s' % (I(500000000), 'x')"),
    ("percent_bytes_abs", "class I(int):\n            def __abs__(self):\n"
                          "                return 0\n"
                          "        return b'%*b' % (I(500000000), b'x')"),
    ("percent_tuple", "class T(tuple):\n            def __getitem__(self, i):\n"
                      "                return 0\n"
                      "        return '%*s' % T((500000000, 'x'))"),
    ("format_flip", "class F:\n            n = []\n            def __format__(self, spec):\n"
                    "                F.n.append(1)\n"
                    "                return '500000000' if len(F.n) == 1 else '1'\n"
                    "        return '{:>{}}'.format('x', F())"),
    ("normalize_run", "return unicodedata.normalize('NFD', 'a' + '\\u0301\\u0316' * 5000)"),
    ("normalize_ucd", "return unicodedata.ucd_3_2_0.normalize('NFC', '\\u0301' * 5000)"),
    ("normalize_expands", "return unicodedata.normalize('NFKD', '\\ufdfa' * 5_000_000)"),
    ("translate_long", "return ('a' * 100_000).translate({97: 'b' * 30_000})"),
]:  # fmt: skip
    attempt(
        f"bounded_{label}",
        "call OperationTooLarge: ",
        f"""
    import unicodedata

    def attempt():
        {body}
""",
    )


# --- found by the fourth red team, and closed since --------------------------------------
attempt(
    "dataclass_field_name_as_code",
    "load TypeError: pyfuncs: a dataclass's fields must be named by identifiers",
    """
    import dataclasses

    FIELD = "a if 0 else print(().__class__)"
    Spy = dataclasses.dataclass(type("Spy", (), {"__annotations__": {FIELD: int}}))

    def attempt():
        return Spy()
""",
)
attempt(
    "dataclass_field_name_as_code_by_a_decorator_with_options",
    "load TypeError: pyfuncs: a dataclass's fields must be named by identifiers",
    """
    import dataclasses

    Spy = dataclasses.dataclass(eq=True)(type("Spy", (), {"__annotations__": {"a b": int}}))

    def attempt():
        return Spy
""",
)
attempt(
    "enum_members_into_another_modules_namespace",
    "call AttributeError: module 'enum (view)' has no attribute 'global_enum'",
    """
    import enum
    import json

    class Callable(enum.Enum):
        def __call__(self, *args, **kwargs):
            return "pwned"

    def attempt():
        enum.global_enum(Callable("Fake", {"dumps": 1}, module="json"))
        return json.dumps({"a": 1})
""",
)
for label, expression in [
    ("metaclass", "type(collections.abc.Mapping).register(collections.abc.Mapping, str)"),
    (
        "named_metaclass",
        "(meta := type(collections.abc.Sized)).register(collections.abc.Sequence, dict)",
    ),
    ("getattr", "getattr(type(collections.abc.Set), 'register')(collections.abc.Set, str)"),
]:
    attempt(
        f"register_through_the_{label}",
        "call AttributeError: pyfuncs: a routine may not register virtual subclasses",
        f"""
    import collections.abc

    def attempt():
        return {expression}
""",
    )
for label, body in [
    ("int", "return int(D('1e1000000'))"),
    ("int_of_arithmetic", "return int(D(10) ** 999_998)"),
    ("int_by_map", "return list(map(int, [D('1e1000000')]))"),
    ("round", "return round(D('1e1000000'))"),
    ("floor", "return math.floor(D('1e1000000'))"),
    ("trunc", "return math.trunc(D('-1e1000000'))"),
    ("ratio", "return D('1e-1000000').as_integer_ratio()"),
    ("fraction", "return fractions.Fraction(D('1e1000000'))"),
    ("statistics", "return statistics.mean([D('1e1000000'), D(1)])"),
    ("percent_d", "return '%d' % D('1e1000000')"),
    ("format_f", "return format(D('1e100000000'), 'f')"),
    ("fstring_f", "return f\"{D('1e100000000'):f}\""),
    ("format_precision", "return format(D(1), '.100000000f')"),
    ("str_format", "return '{:f}'.format(D('-1e-100000000'))"),
    ("pbkdf2", "return hashlib.pbkdf2_hmac('sha256', b'x', b'salt', 10**7)"),
    ("pbkdf2_long_key", "return hashlib.pbkdf2_hmac('sha256', b'x', b's', 10**5, 10**4)"),
    # each block hashes the salt again: a 64 MB salt, 200 blocks (seconds of libcrypto)
    ("pbkdf2_long_salt", "return hashlib.pbkdf2_hmac('sha256', b'x', bytes(64 << 20), 1, 6400)"),
    # one C loop over references to one lazily zeroed buffer, hashed each time (a red team)
    ("hash_by_reference", "return list(map(hashlib.sha512, [bytes(256 << 20)] * 200))"),
    ("hash_new", "return hashlib.new('sha256', bytes(256 << 20)).digest()"),
    ("hash_update", "return hashlib.blake2b().update(bytes(256 << 20))"),
    ("hash_shake_digest", "return hashlib.shake_128(b'x').digest(1 << 30)"),
    # uuid3 and uuid5 hash their name with the C library's md5 and sha1 (a red team)
    ("hash_uuid3_name", "return uuid.uuid3(uuid.NAMESPACE_DNS, bytes(65 << 20))"),
    ("hash_uuid5_text", "return uuid.uuid5(uuid.NAMESPACE_URL, 'é' * (17 << 20))"),
    (
        "hash_uuid5_by_map",
        "return list(map(uuid.uuid5, [uuid.NAMESPACE_DNS] * 9, [bytes(1 << 30)] * 9))",
    ),
]:
    attempt(
        f"bounded_{label}" if label.startswith(("pbkdf2", "hash")) else f"bounded_decimal_{label}",
        # statistics turns the refusal (an OverflowError) into an assertion of its own
        "call AssertionError" if label == "statistics" else "call OperationTooLarge: ",
        f"""
    import fractions
    import hashlib
    import math
    import statistics
    import uuid
    from decimal import Decimal as D

    def attempt():
        {body}
""",
    )
# CPython 3.11.2's deque.index compares an item it does not hold: an __eq__ that empties the
# deque frees it, and the reflected __eq__ gets freed memory, which a list's items then
# take over (gh-115243; a red team crashed the cluster with it). Routines get an index that
# holds what it compares: each spelling ends in the error a mutated deque gives.
for label, call in [
    ("method", "DEQ.index(W())"), ("class", "collections.deque.index(DEQ, W())"),
    ("getattr", "getattr(DEQ, 'index')(W())"), ("super", "MINE.index(W())"),
    ("bounds", "DEQ.index(W(), -5, 10**30)"),
]:  # fmt: skip
    attempt(
        f"freed_by_deque_index_{label}",
        "call RuntimeError: deque mutated during iteration",
        f"""
    import collections

    FAKE = bytes(88) + b"A" * 240  # a type object whose hash function is at 0x4141...

    def eq_clear(self, other):
        DEQ.clear()
        MINE.clear()
        return NotImplemented

    def eq_hash(self, other):
        spray = [0, 0, 0, FAKE]
        return id(other) == 0  # (freed, in 3.11.2: hash(other) would jump to 0x4141...)

    S = type("S", (), {{"__slots__": (), "__eq__": eq_clear}})
    W = type("W", (), {{"__slots__": (), "__eq__": eq_hash}})
    DEQ = collections.deque()

    class Mine(collections.deque):
        def index(self, *args):
            return super().index(*args)

    MINE = Mine()

    def attempt():
        DEQ.append(S())
        MINE.append(S())
        return {call}
""",
    )
# CPython 3.11.2's list ordering compares the first items that differ again without holding
# them: a `__lt__` that empties the right list frees the right item, whose memory a spray
# refills with a forged type, and the reflected call jumps where the routine says
# (gh-120298; a red team aborted the cluster with it). Lists compare copies of themselves,
# so the right item stays: the comparison is refused as for any two unrelated objects.
for label, call in [
    ("less", "[A()] < WL"), ("greater_equal", "[A()] >= WL"), ("sorted", "sorted([[A()], WL])"),
    ("max", "max([A()], WL)"), ("less_equal", "[A()] <= WL"),
]:  # fmt: skip
    attempt(
        f"freed_by_list_ordering_{label}",
        "call TypeError: ",
        f"""
    SPRAY = []
    FAKE = [bytes(168) + (0x414141414140).to_bytes(8, "little") + bytes(200)]
    WL = []

    class B:
        pass

    def free_and_refill():
        WL.clear()  # (the caller's `other` is the last reference: gone with its frame)
        for _ in range(64):
            SPRAY.append([FAKE[0]] * 8)
        return NotImplemented

    class A:
        def __eq__(self, other):
            return False

        def __lt__(self, other):
            del other
            return free_and_refill()

        def __le__(self, other):
            del other
            return free_and_refill()

        def __gt__(self, other):
            del other
            return free_and_refill()

        def __ge__(self, other):
            del other
            return free_and_refill()

    def attempt():
        WL.append(B())
        return {call}
""",
    )
# CPython 3.11.2's assignment to an extended slice sizes the slice, then runs the routine's
# generator for the values, which may shrink the list: it then reads and writes past the
# items (gh-120384; a red team made the backend jump where it chose). Slice assignment turns
# the values into a list first, so the slice is sized after the generator ran.
for label, call in [
    ("generator", "shrink(ITEMS, values(ITEMS))"),
    ("user_list", "shrink(USER, values(USER))"),
    ("list_subclass", "shrink(ITEMS, Shrinking())"),
]:  # fmt: skip
    attempt(
        f"past_the_list_by_slice_assignment_{label}",
        "call ValueError: attempt to assign sequence of size",
        f"""
    import collections

    ITEMS = list(range(64))
    USER = collections.UserList(range(64))

    def values(target):
        del target[4:]
        yield from range(32)

    class Shrinking(list):
        def __iter__(self):
            del ITEMS[4:]
            yield from range(32)

    def shrink(target, given):
        target[::2] = given
        return len(target)

    def attempt():
        return {call}
""",
    )
# CPython 3.11.2's bytearray methods take the buffer, then run code of the routine's (an
# argument's or a slice's `__index__`, an `__int__` for `%`, an iterator for `__init__`),
# which may empty the bytearray or move its buffer: they read freed memory (red teams found
# bytes of another object in an empty bytearray, and a `bytes` header with libpython's
# address through `%`) or memory no longer mapped, or write there (a chosen byte at a chosen
# offset with `b[i] = value`; chosen bytes anywhere with `b[Grow()::-1] = ...`, up to
# calling os.system as the server's user; past the allocation from `__init__` after
# `del b[:k]`, reached through an Enum's member creation). Four rounds found one more each
# time: routines do not get bytearray at all, and nothing they can import gives one.
for label, call in [
    ("find", "DATA.find(b'MARK', Start())"), ("count", "DATA.count(b'x', Start())"),
    ("rfind", "DATA.rfind(b'MARK', 0, Start())"), ("index_int", "DATA.find(Byte())"),
    ("startswith", "DATA.startswith(b'AAAA', Start())"),
    ("endswith", "DATA.endswith(b'AAAA', 0, Start())"), ("contains", "Byte() in DATA"),
    ("assigned", "assign(8)"), ("slice_assigned", "slice_assign()"),
    ("slice_deleted", "slice_delete()"), ("formatted", "DATA % Number()"),
    ("enum_init", "enum_init()"),
]:  # fmt: skip
    attempt(
        f"freed_by_bytearray_{label}",
        "load NameError: name 'bytearray' is not defined",
        f"""
    import enum

    HOLD = []
    DATA = bytearray(b"%d" * 50_000)

    class Start:
        def __index__(self):
            DATA.clear()
            HOLD.extend([b"MARK" * 25_000] * 4)
            return 0

    class Byte:
        def __index__(self):
            DATA.clear()
            return 77

    class Grow:
        def __index__(self):
            DATA.extend(bytes(4_000_000))
            return 66

    class Number:
        def __int__(self):
            DATA.clear()
            return 1

    def assign(at):
        DATA[at] = Grow()
        return DATA[at]

    def slice_assign():
        DATA[Grow():20:2] = b"Z" * 10
        return DATA[:20]

    def slice_delete():
        del DATA[Grow()::2]
        return len(DATA)

    class Member(bytearray, enum.Enum):
        def __getattr__(self, name):
            raise AttributeError(name)

        A = ((x for x in b"AAAA"),)

    def enum_init():
        return Member.A

    def attempt():
        return {call}
""",
    )
# Enum keeps a mixed-in C type's constructor in the routine's own class, as _new_member_:
# with it, a class whose __new__ returns an object in use makes type() run the C __init__
# again on that object — a set while an addition to it is under way (the set counted an
# item it did not hold), a Struct while it packs (a round-10 red team wrote a return
# address on the C stack and ran system() as the server's user). Names of the form _x_ are
# enum's machinery: routines read only a member's _name_ and _value_.
for label, mixin, source in [
    ("set", "set", "S(items())"),
    ("struct", "type(struct.Struct('i'))", "S('8s')"),
]:  # fmt: skip
    attempt(
        f"enum_constructor_reinitialises_a_{label}",
        "call AttributeError: pyfuncs: a routine may not read '_new_member_'",
        f"""
    import struct
    from enum import Enum

    class E({mixin}, Enum):
        A = {"()" if label == "set" else "'i'"}

    BOX = []

    class S({mixin}):
        def __new__(cls, *args):
            return BOX[0]

    def items():
        yield 1
        yield 2

    def attempt():
        BOX.append(E._new_member_(S))
        {source}
        return len(BOX)
""",
    )
for name in ("_member_type_", "_value2member_map_", "_member_map_"):
    attempt(
        f"enum_machinery_{name.strip('_')}",
        f"call AttributeError: pyfuncs: a routine may not read {name!r}",
        f"""
    from enum import Enum

    class E(Enum):
        A = 1

    def attempt():
        return E.{name}
""",
    )
attempt(
    "enum_member_name_and_value_are_readable",
    "returned str: 'A=1'",
    """
    from enum import Enum

    class E(Enum):
        A = 1

        def label(self):
            return f"{self._name_}={self._value_}"

    def attempt():
        return E.A.label()
""",
)
# ...and without it (round 11): an enum with set mixed in hands its member to a __getattr__
# of the routine's (enum asks hasattr(member, "_value_")) before set.__init__ fills it, and an
# __eq__ then adds to the member during that addition; and copy's reconstruction, told by a
# `__class__` of the routine's (and a metaclass that says its class has no __reduce__) to
# make another class with a C base's constructor, made a Struct subclass without its own
# __new__, to re-initialise while it packed (the red team wrote over the C stack and the
# cluster went through crash recovery). Set's additions include __init__, copies make only
# the class copied, and a Struct's format is set once.
attempt(
    "enum_member_set_added_to_while_init_fills_it",
    "load RuntimeError: set changed by a comparison made while adding to it",
    """
    from enum import Enum

    BOX = []
    PASSES = []

    class K:
        def __init__(self, n):
            self.n, self.target = n, None

        def __hash__(self):
            return 7

        def __eq__(self, other):
            if self.target is not None:
                target, self.target = self.target, None
                target.add(K(99))
            return False

    class Items:
        def __iter__(self):  # (enum iterates it twice: for the value, then for __init__)
            PASSES.append(1)
            x, y, z = K(1), K(2), K(3)
            yield x
            yield y
            if len(PASSES) == 2:
                BOX[0].discard(x)
                y.target = BOX[0]
            yield z

    class E(set, Enum):
        def __getattr__(self, name):
            if not BOX:
                BOX.append(self)
            raise AttributeError(name)

        A = (Items(),)

    def attempt():
        return len(E.A)
""",
)
attempt(
    "copy_makes_another_class_for_a_lying_class",
    "load TypeError: pyfuncs: the class 'M' may not derive from type: ",
    """
    import dataclasses

    class X(set):
        pass

    class M(type):
        def __getattribute__(cls, name):
            if name in ("__reduce__", "__getstate__"):
                return None
            if name == "__module__":
                return __name__
            if name == "__dict__":
                return {}
            raise AttributeError(name)

    class Z(metaclass=M):
        @property
        def __class__(self):
            return X

        def __iter__(self):
            return iter(())

    @dataclasses.dataclass
    class Holder:
        value: object

    def attempt():
        return dataclasses.asdict(Holder(Z()))
""",
)
attempt(
    "abc_metaclass_attribute_hook_lies_to_copy",
    "load TypeError: pyfuncs: the class 'M' may not derive from ABCMeta: ",
    """
    import collections

    class M(type(collections.UserDict)):
        def __getattribute__(cls, name):
            if name in ("__reduce__", "__getstate__"):
                return None
            raise AttributeError(name)

    class Y(collections.UserDict, metaclass=M):
        pass

    def attempt():
        return Y().copy()
""",
)
# itertools.groupby compares the target key with the current one holding neither, and its
# groups re-enter it: a key's __eq__ that advanced the groupby (or read its group) freed the
# key being compared, and a round-12 red team refilled that memory with a forged object whose
# repr was system() (gh-143543, gh-146613). Routines get groupby and tee in Python, and the
# itertools that call a function of theirs behind a generator.
for label, read in [("groupby", "[key.v for key, group in outer]")]:
    attempt(
        f"itertools_{label}_reentered_from_a_key_comparison",
        "call ValueError: generator already executing",
        f"""
    import itertools

    STATE = {{"n": 0, "outer": None}}

    class Key:
        def __init__(self, v):
            self.v = v

        def __eq__(self, other):
            STATE["n"] += 1
            if STATE["n"] == 1:
                next(STATE["outer"], None)
                return NotImplemented
            return False

    def keys():
        i = 0
        while True:
            yield Key(i)
            i += 1

    def attempt():
        outer = STATE["outer"] = itertools.groupby([None] + list(range(9)), keys().send)
        key, group = next(outer)
        return {read}
""",
    )
# ZoneInfo: for a subclass, C uses the cache its `_weak_cache` attribute names and trusts
# what that cache returns, writing a byte into it (gh-142781; gh-142783: it also drops its
# reference to the cache first). A round-16 red team had it write into a shared type's
# function pointer, and another role's next call crashed. ZoneInfo's zones come from the
# runtime's cache now, and subclasses are refused.
attempt(
    "zoneinfo_subclass_names_its_own_cache",
    "call TypeError: pyfuncs: ZoneInfo may not be subclassed in the database",
    """
    import zoneinfo

    class Cache:
        def get(self, key, default=None):
            return None

        def setdefault(self, key, value):
            return self.victim

    class Quiet:
        def __init_subclass__(cls, **kwargs):
            pass

    class Zone(Quiet, zoneinfo.ZoneInfo):
        pass

    def attempt():
        cache = Cache()
        cache.victim = bytes(400)
        Zone._weak_cache = cache
        got = Zone("UTC")
        return [i for i, b in enumerate(got) if b]
""",
)
attempt(
    "zoneinfo_by_key_still_works",
    "returned str: 'Europe/Paris 1:00:00 True'",
    """
    import datetime
    import zoneinfo

    def attempt():
        zone = zoneinfo.ZoneInfo("Europe/Paris")
        offset = zone.utcoffset(datetime.datetime(2026, 1, 1))
        return f"{zone.key} {offset} {zone is zoneinfo.ZoneInfo('Europe/Paris')}"
""",
)
# An enum makes its members with the mixed-in type's constructor, past its metaclass's
# __call__; datetime's C code then makes values of the member's class with type(self)(...)
# and trusts what comes back: a round-17 red team's metaclass returned bytes, and
# astimezone decremented the word at an address inside them (the shared int 7 became 6 for
# another role's call). An enum's metaclass must be enum's own or add nothing.
attempt(
    "enum_metaclass_call_hands_c_a_foreign_object",
    "load TypeError: pyfuncs: the class 'Meta' may not derive from EnumType: ",
    """
    import datetime
    import enum

    PAYLOAD = [b"A" * 48]

    class Meta(enum.EnumType):
        def __call__(cls, *args, **kwargs):
            return PAYLOAD[0]

    class When(datetime.datetime, enum.Enum, metaclass=Meta):
        START = (2020, 1, 1, 0, 0, 0, 0, datetime.timezone.utc)

    def attempt():
        return When.START.astimezone(datetime.timezone(datetime.timedelta(hours=1)))
""",
)
attempt(
    "enum_with_a_datetime_mixin",
    "load TypeError: pyfuncs: the class 'When' may not derive from datetime: ",
    """
    import datetime
    import enum

    class When(datetime.datetime, enum.Enum):
        START = (2020, 1, 1, 0, 0, 0, 0, datetime.timezone.utc)

    def attempt():
        return When.START.year
""",
)
# dataclasses' asdict/astuple/replace read each field with getattr, past the policy's check
# of names: a round-18 red team named a field __new__ and read datetime's constructor off
# its own instance, made a datetime subclass whose metaclass __call__ returns bytes without
# calling it, and astimezone (which makes its result with type(self)(...)) decremented the
# word at an address of its choosing. Field names may not be __x__ or _x_.
for label, source in [
    ("make_dataclass", """
    def attempt():
        made = dataclasses.make_dataclass("Maker", [("__new__", object)], bases=(Quiet,))
        return dataclasses.asdict(made(b"x"))["__new__"]
"""),
    ("decorator_by_type", """
    Maker = type("Maker", (Quiet,), {"__annotations__": {"__new__": object}})

    def attempt():
        return dataclasses.dataclass(Maker)
"""),
    ("sunder", """
    def attempt():
        return dataclasses.make_dataclass("Maker", [("_new_member_", object)])
"""),
]:  # fmt: skip
    attempt(
        f"dataclass_field_named_{label}",
        "call TypeError: pyfuncs: a dataclass's fields must be named by identifiers other than",
        """
    import dataclasses

    class Quiet:
        def __setattr__(self, name, value):
            pass
"""
        + textwrap.indent(textwrap.dedent(source), "    "),
    )
attempt(
    "dataclasses_made_the_plain_way_still_work",
    "returned dict: {'x': 1, '_hidden': 2}",
    """
    import dataclasses

    def attempt():
        Point = dataclasses.make_dataclass("Point", [("x", int), ("_hidden", int)])
        return dataclasses.asdict(Point(1, 2))
""",
)
attempt(
    "itertools_are_routines_own_still",
    "returned str: 'AB|3|[[1, 2], [1, 2]]|[1, 3, 6]|[3]|[4]'",
    """
    import itertools

    def attempt():
        letters = "".join(k for k, _ in itertools.groupby("AAABBB"))
        sizes = max(len(list(g)) for _, g in itertools.groupby("AAABBB"))
        copies = [list(t) for t in itertools.tee([1, 2])]
        sums = list(itertools.accumulate([1, 2, 3]))
        return "|".join(map(str, [letters, sizes, copies, sums,
                                  list(itertools.dropwhile(lambda x: x < 3, [1, 3])),
                                  list(itertools.filterfalse(lambda x: x < 4, [1, 4]))]))
""",
)
# An ABC's registry and caches are sets C adds to (past set's guard) while a class's hash
# and equality run: a routine metaclass's nested an addition (gh-139071's miscount, a
# contained crash), and its classes in a shared ABC's cache would run its __eq__ in other
# roles' isinstance. And a protocol of a routine's under collections.abc's Iterable had
# typing's own check call a str subclass's startswith (its member names) in every later
# isinstance(x, Iterable) of the backend.
attempt(
    "abc_registry_with_a_metaclass_that_compares",
    "load TypeError: pyfuncs: the class 'M' may not derive from type: ",
    """
    import collections.abc

    class Base(metaclass=type(collections.abc.Sized)):
        pass

    class M(type):
        def __hash__(cls):
            return 7

        def __eq__(cls, other):
            return False

    def attempt():
        Base.register(M("a", (), {}))
""",
)
attempt(
    "abc_cache_with_a_metaclass_that_compares",
    "load TypeError: pyfuncs: the class 'M' may not derive from type: ",
    """
    import collections.abc

    class M(type):
        def __hash__(cls):
            return hash(int)

        def __eq__(cls, other):
            return False

    def attempt():
        return isinstance(M("a", (), {})(), collections.abc.Mapping)
""",
)
attempt(
    "abc_instance_that_says_it_is_another_class",
    "returned bool: False",
    """
    import collections.abc

    class Liar:
        @property
        def __class__(self):
            return dict

    def attempt():
        return isinstance(Liar(), collections.abc.Mapping)
""",
)
for label, names in [
    ("str_subclass_names", "{Key('__iter__'): lambda self: iter(())}"),
    ("plain_names", "{'__iter__': lambda self: iter(())}"),
]:  # fmt: skip
    attempt(
        f"protocol_under_iterable_with_{label}",
        "load TypeError: pyfuncs: the ",
        f"""
    import typing
    from collections.abc import Iterable

    class Key(str):
        def startswith(self, *args):
            raise LookupError("decided by this module")

        def __hash__(self):
            return hash(str(self))

        def __eq__(self, other):
            return True

    Spy = typing.runtime_checkable(
        type(typing.Protocol)("Spy", (Iterable, typing.Protocol), {names}))

    def attempt():
        return Spy
""",
    )
# ZoneInfo.from_file's C parser trusts the TZif an object of the routine's supplies: a
# transition naming the type one past the last read past its array (gh-145883)
attempt(
    "zoneinfo_from_file_reads_past_its_types",
    "call AttributeError: pyfuncs: a routine may not read a time zone from a file object",
    """
    import struct
    import zoneinfo

    class Data:
        def __init__(self, data):
            self.data, self.pos = data, 0

        def read(self, n=-1):
            chunk = self.data[self.pos : self.pos + n]
            self.pos += n
            return chunk

        def seek(self, n, whence):
            self.pos += n

    def attempt():
        chars = b"AB" + bytes(1)
        header = b"TZif" + bytes(16) + struct.pack(">6l", 0, 0, 0, 2, 1, len(chars))
        body = struct.pack(">2l", 0, 1000) + bytes([0, 1]) + struct.pack(">lbb", 3600, 0, 0)
        return repr(zoneinfo.ZoneInfo.from_file(Data(header + body + chars)))
""",
)
# C's OrderedDict walks its own nodes while a key's __eq__ runs, which may empty the dict and
# free them (gh-119004: ==; gh-142637: del, pop, move_to_end; gh-148660: copy). Routines get
# collections' OrderedDict of Python, where that is a change like any other.
for label, call, outcome in [
    ("equality", "ODICT == collections.OrderedDict({Evil(): 4, 5: 6})", "returned bool: "),
    ("delete", "delete(Trigger())", "call KeyError: "),
    ("pop", "ODICT.pop(Trigger())", "call KeyError: "),
    ("move_to_end", "ODICT.move_to_end(Trigger())", "call KeyError: "),
    ("copy", "ODICT.copy()", "returned OrderedDict: "),
]:  # fmt: skip
    attempt(
        f"freed_by_ordered_dict_{label}",
        outcome,
        f"""
    import collections

    class Evil:
        def __eq__(self, other):
            ODICT.clear()
            return True

        def __hash__(self):
            return 3

    Trigger = Evil
    ODICT = collections.OrderedDict()

    def delete(key):
        del ODICT[key]

    def attempt():
        ODICT[Evil()] = 4
        ODICT[5] = 6
        return {call}
""",
    )
for label, call in [
    ("class", "zoneinfo.ZoneInfo.clear_cache()"),
    ("instance", "zoneinfo.ZoneInfo('UTC').clear_cache(only_keys=['UTC'])"),
    ("getattr", "getattr(zoneinfo.ZoneInfo, 'clear_cache')()"),
]:  # fmt: skip
    attempt(
        f"zoneinfo_cache_cleared_by_{label}",
        "call AttributeError: pyfuncs: a routine may not clear ZoneInfo's cache",
        f"""
    import zoneinfo

    def attempt():
        return {call}
""",
    )

# --- found by auditing CPython's changelog after 3.11.2 (memory safety), and closed since ---
# Adding to a set notes a free slot, then compares: an __eq__ that adds to the same set fills
# the slot, the outer addition writes there too, and the set counts an item it does not hold
# (freeing it walks past its table: a crash of 3.11.2; gh-139071, gh-141805). Additions to a
# set refuse to nest.
for label, call in [
    ("add", "SEEN.add(Trigger())"), ("update", "SEEN.update([Trigger()])"),
    ("in_place_or", "grow(Trigger())"), ("class", "set.add(SEEN, Trigger())"),
    ("symmetric", "SEEN.symmetric_difference_update({Trigger()})"),
]:  # fmt: skip
    attempt(
        f"set_overcounted_by_{label}",
        "call RuntimeError: set changed by a comparison made while adding to it",
        f"""
    SEEN = set()

    class Dummy:
        def __hash__(self):
            return 0

    class Trigger:
        def __hash__(self):
            return 0

        def __eq__(self, other):
            SEEN.add(self)
            return False

    def grow(item):
        global SEEN
        SEEN |= {{item}}

    def attempt():
        SEEN.add(Dummy())
        SEEN.add(Dummy())
        SEEN.pop()
        {call}
        return len(SEEN), len(list(SEEN))
""",
    )
# A decimal Context's flags and traps (C's SignalDict) point into the context without holding
# it: kept after the context went, setting one set a bit of whatever took its memory (here,
# another context's flags). Routines get them through the context, which they hold.
for label, body in [
    ("flags", "f = c.flags"), ("traps", "f = c.traps"), ("getattr", "f = getattr(c, 'flags')"),
]:  # fmt: skip
    attempt(
        f"decimal_signals_outlive_their_context_{label}",
        "returned tuple: (False, False)",
        f"""
    import decimal

    def attempt():
        c = decimal.Context(traps=[])
        {body}
        del c
        other = decimal.Context(traps=[])
        f[decimal.Inexact] = True
        return other.flags[decimal.Inexact], other.traps[decimal.Inexact]
""",
    )
attempt(
    "decimal_signals_as_a_context_argument",
    "returned bool: True",
    """
    import decimal

    def attempt():
        c = decimal.Context()
        c.traps[decimal.Inexact] = True
        return decimal.Context(traps=c.traps).traps[decimal.Inexact]
""",
)
# Counter's C tally held an old count without a reference while adding one to it: an
# __add__ that empties the Counter freed it (gh-143004). The tally is Python's (which hashes
# each element twice: the second number counts its hash calls).
attempt(
    "freed_by_counter_update",
    "returned tuple: (1, 2)",
    """
    import collections

    COUNTS = collections.Counter()
    HASHED = []

    class Evil(int):
        def __add__(self, other):
            COUNTS.clear()
            return NotImplemented

    class Key:
        def __hash__(self):
            HASHED.append(1)
            return 5

    def attempt():
        COUNTS["k"] = Evil(0)
        COUNTS.update(["k"])
        collections.Counter([Key()])
        return COUNTS["k"], len(HASHED)
""",
)
# zip_longest, islice and pairwise drop an exhausted iterator that a call of theirs further
# out is still inside of: an iterator that calls back into the zip_longest freed the map()
# around it, and the outer call then called through freed memory (gh-142732). Behind a
# generator, calling back in is refused.
for label, made in [
    ("zip_longest", "itertools.zip_longest(map(same, d), [None, None])"),
    ("islice", "itertools.islice(map(same, d), 3)"),
    ("pairwise", "itertools.pairwise(map(same, d))"),
]:  # fmt: skip
    attempt(
        f"freed_by_reentering_{label}",
        "call ValueError: generator already executing",
        f"""
    import itertools

    HOLD = []

    def same(x):
        return x

    class Reenter:
        z = None

        def __iter__(self):
            return self

        def __next__(self):
            z, self.z = self.z, None
            if z is None:
                raise StopIteration
            next(z, None)
            HOLD.extend([[0] * 6 for _ in range(200)])
            return 7

    def attempt():
        d = Reenter()
        d.z = {made}
        return list(d.z)
""",
    )
# ZoneInfo's utcoffset, dst and tzname read a datetime's fold from where a datetime keeps it,
# whatever they are given: an object of the routine's had them read past its end (a crash of
# the backend; gh-125318). They take a datetime or None.
for label, call in [
    ("utcoffset", "ZONE.utcoffset(Fake())"), ("dst", "ZONE.dst(Fake())"),
    ("tzname", "ZONE.tzname(Fake())"), ("class", "zoneinfo.ZoneInfo.utcoffset(ZONE, Fake())"),
    ("date", "ZONE.utcoffset(datetime.date(2020, 1, 1))"),
]:  # fmt: skip
    attempt(
        f"zoneinfo_reads_past_{label}",
        "call TypeError: ",
        f"""
    import datetime
    import zoneinfo

    ZONE = zoneinfo.ZoneInfo("Europe/Berlin")

    class Fake:
        hour, minute, second = 14, 34, 56

        def toordinal(self):
            return 728538

    def attempt():
        return {call}
""",
    )


# --- found by the fifth red team, and closed since ---------------------------------------
attempt(
    "dataclass_field_names_behind_a_dict_subclass",
    "load TypeError: pyfuncs: a dataclass's annotations must be a plain dict",
    """
    import dataclasses

    class Sneaky(dict):
        def items(self):
            return [("a if 0 else print(1)", int)]

    Spy = dataclasses.dataclass(type("Spy", (), {"__annotations__": Sneaky()}))

    def attempt():
        return Spy
""",
)
for label, body in [
    ("fraction_text_exponent", "return fractions.Fraction('1e100000000')"),
    ("fraction_text_negative_exponent", "return fractions.Fraction('-1.5E-100000000')"),
    ("fraction_round", "return round(fractions.Fraction(1, 3), 10**8)"),
    ("context_constructor", "return decimal.Context(prec=999_999_999)"),
    ("context_positional", "return decimal.Context(10**9)"),
    ("context_by_type", "return type(decimal.Context())(prec=10**9)"),
    ("context_by_mro", "return decimal.Context.mro()[0](prec=10**9)"),
    ("context_store", "c = decimal.Context()\n        c.prec = 10**9"),
    ("context_copy_store", "c = decimal.Context().copy()\n        c.prec = 10**9"),
    ("context_setattr", "c = decimal.Context()\n        setattr(c, 'prec', 10**9)"),
    ("localcontext_kwargs", "with decimal.localcontext(prec=10**9):\n            pass"),
]:  # fmt: skip
    attempt(
        f"bounded_{label}",
        "call OperationTooLarge: ",
        f"""
    import decimal
    import fractions

    def attempt():
        {body}
""",
    )


# --- found by the sixth red team, and closed since ---------------------------------------
for label, body in [
    ("subclasshook", """
    class Evil(collections.abc.Mapping):
        @classmethod
        def __subclasshook__(cls, other):
            return True
"""),
    ("subclasshook_by_type", """
    Evil = type(collections.abc.Mapping)(
        "Evil", (collections.abc.Mapping,),
        {"__subclasshook__": classmethod(lambda cls, other: True)})
"""),
    ("subclasshook_in_a_dict_subclass", """
    class Hiding(dict):
        def get(self, key, default=None):
            return default

    Evil = type(collections.abc.Sized)(
        "Evil", (collections.abc.Sized,),
        Hiding(__subclasshook__=classmethod(lambda cls, other: True)))
"""),
    ("metaclass_subclasscheck", """
    class Meta(type(collections.abc.Mapping)):
        def __subclasscheck__(cls, other):
            return True

    class Evil(collections.abc.Sized, metaclass=Meta):
        pass
"""),
    ("metaclass_instancecheck", """
    class Meta(type(collections.abc.Mapping)):
        def __instancecheck__(cls, other):
            return True

    class Evil(collections.abc.Container, metaclass=Meta):
        pass
"""),
    # (round 12: C's isinstance looks these up on each subclass as attributes, which the
    # metaclass answers: a property, or a method the class does not define)
    ("metaclass_property_subclasshook", """
    class Meta(type(collections.abc.Mapping)):
        @property
        def __subclasshook__(cls):
            return lambda other: True

    class Evil(collections.abc.Mapping, metaclass=Meta):
        pass
"""),
    ("metaclass_subclasses", """
    class Meta(type(collections.abc.Mapping)):
        def __subclasses__(cls):
            return []

    class Evil(collections.abc.Mapping, metaclass=Meta):
        pass
"""),
    ("metaclass_by_type_with_builtins", """
    Meta = type("Meta", (type(collections.abc.Mapping),),
                {"__module__": "abc", "__subclasses__": staticmethod(list)})

    class Evil(collections.abc.Mapping, metaclass=Meta):
        pass
"""),
    ("subclasshook_not_a_function", """
    Evil = type(collections.abc.Mapping)(
        "Evil", (collections.abc.Mapping,), {"__subclasshook__": property(len)})
"""),
]:  # fmt: skip
    attempt(
        f"abc_{label}",
        "load TypeError: pyfuncs: the special method '__subclasses__' of a routine's class"
        if label == "metaclass_by_type_with_builtins"
        else "load TypeError: pyfuncs: the class 'Meta' may not derive from ABCMeta: "
        if label.startswith("metaclass")
        else "load TypeError: pyfuncs: the abstract class 'Evil' may not ",
        "import collections.abc\n"
        + textwrap.dedent(body)
        + "\n\ndef attempt():\n    return Evil\n",
    )
attempt(
    "abc_with_protocols_still_work",
    "returned str: 'ok'",
    """
    import collections.abc
    import typing

    class Mine(collections.abc.Sized):
        def __len__(self):
            return 0

    class Closable(typing.Protocol):
        def close(self) -> None: ...

    def attempt():
        assert len(Mine()) == 0 and not isinstance(Mine(), collections.abc.Mapping)
        return "ok"
""",
)
attempt(
    "abc_register_on_a_subclass_of_a_shared_abc",
    "call AttributeError: pyfuncs: a routine may not register virtual subclasses of Mine",
    """
    import collections.abc

    class Mine(collections.abc.Mapping):
        pass

    def attempt():
        Mine.register(int)
""",
)
attempt(
    "module_renamed_after_another",
    "load SyntaxError: pyfuncs: the name '__name__' is not allowed",
    """
    __name__ = "json"

    def attempt():
        return __name__
""",
)
attempt(
    "typing_overload_registry",
    "call AttributeError: module 'typing (view)' has no attribute 'clear_overloads'",
    """
    import typing

    def attempt():
        typing.clear_overloads()
""",
)
attempt(
    "typing_markers_on_shared_objects",
    "returned type: <class 'collections.OrderedDict'>",  # given back, unmarked (fingerprint)
    """
    import json
    import typing
    from collections import OrderedDict

    def attempt():
        typing.final(json.dumps)
        typing.no_type_check(json.loads)
        return typing.dataclass_transform(eq_default=False)(OrderedDict)
""",
)
attempt(
    "typing_cache_by_a_lying_metaclass",
    "load TypeError: pyfuncs: the class 'Liar' may not derive from type: ",
    """
    import typing

    class Liar(type):
        def __eq__(cls, other):
            return other is int or cls is other

        def __hash__(cls):
            return hash(int)

    class Int(metaclass=Liar):
        pass

    def attempt():
        # cached by identity: Optional[Int] is its own, and a later Optional[int] (the
        # fingerprint's, in this call and others) is still int's
        return typing.get_args(typing.Optional[Int])
""",
)
attempt(
    "padding_through_super",
    "call OperationTooLarge: Wide.ljust(1000000000) would make 1,000,000,000 characters",
    """
    class Wide(str):
        def wide(self, n):
            return super().ljust(n)  # the bounded method read through super()

    def attempt():
        return len(Wide("x").wide(10**9))
""",
)
attempt(
    "to_bytes_through_super",
    "call OperationTooLarge: int.to_bytes(1000000000) would make 1,000,000,000 bytes",
    """
    class Big(int):
        def wide(self, n):
            return super().to_bytes(n, "big")

    def attempt():
        return len(Big(1).wide(10**9))
""",
)
attempt(
    "private_inherited_from_a_shared_class",
    "call AttributeError: pyfuncs: a routine may not read the private attribute",
    """
    import decimal

    class Mine(decimal.DecimalTuple):
        pass

    def attempt():
        Mine._field_defaults["sign"] = "spoofed"
""",
)

# No class of a routine's derives from a metaclass or from date, datetime or time (round
# 19's change at the root of rounds 11-18): C refuses the base, however the class is made.
NOT_A_BASE = "TypeError: type '{}' is not an acceptable base type"
for label, refused, source in [
    ("class_statement", "load TypeError: pyfuncs: the class 'M' may not derive from type: ",
     "class M(type):\n    pass"),
    ("type_call", "load " + NOT_A_BASE.format("type"), 'M = type("M", (type,), {})'),
    ("type_of_a_class", "load " + NOT_A_BASE.format("type"), 'M = type(int)("M", (type(int),), {})'),
    ("make_dataclass", "load " + NOT_A_BASE.format("type"),
     'import dataclasses\nM = dataclasses.make_dataclass("M", [], bases=(type,))'),
    ("abc_meta_call", "load " + NOT_A_BASE.format("ABCMeta"),
     'import collections.abc\nMeta = type(collections.abc.Sized)\nM = Meta("M", (Meta,), {})'),
    ("enum_meta_by_type", "load " + NOT_A_BASE.format("EnumType"),
     'import enum\nM = type("M", (type(enum.Enum),), {})'),
    ("date", "load TypeError: pyfuncs: the class 'D' may not derive from date: ",
     "import datetime\n\nclass D(datetime.date):\n    pass"),
    ("datetime_by_type", "load " + NOT_A_BASE.format("datetime.datetime"),
     'import datetime\nD = type("D", (datetime.datetime,), {})'),
    ("time_by_dataclass", "load " + NOT_A_BASE.format("datetime.time"),
     'import dataclasses\nimport datetime\n'
     'D = dataclasses.make_dataclass("D", [], bases=(datetime.time,))'),
    ("date_mixed_into_an_enum", "load TypeError: pyfuncs: the class 'E' may not derive from date",
     "import datetime\nimport enum\n\nclass E(datetime.date, enum.Enum):\n"
     "    A = (2020, 1, 1)"),
]:  # fmt: skip
    attempt(f"no_base_{label}", refused, source + "\n\ndef attempt():\n    return 1\n")
attempt(
    "classes_of_the_routines_own_still_derive",
    "returned str: 'ok 2020 Color.RED'",
    """
    import collections.abc
    import dataclasses
    import datetime
    import enum

    class Sized(collections.abc.Sized):
        def __len__(self):
            return 0

    @dataclasses.dataclass
    class When:
        at: datetime.date

    class Color(enum.Enum):
        RED = 1

    def attempt():
        assert len(Sized()) == 0
        return f"ok {When(datetime.date(2020, 1, 1)).at.year} {Color.RED}"
""",
)
# json's C encoder holds a list it encodes without a reference, turns a subclass into a
# sequence by calling its __iter__ (which may free it), then counts a reference up and down
# on what took its memory (round 20: a routine held a freed object of its own, and another
# role's call crashed its session). Routines get json's encoder of Python.
attempt(
    "json_encoder_list_freed_while_encoded",
    "returned str: '[[1]]'",
    """
    import json

    OUTER = []

    class Shy(list):
        def __iter__(self):
            OUTER.clear()
            yield 1

    def attempt():
        OUTER.append(Shy([0]))
        text = json.dumps(OUTER)
        [bytes(40) for _ in range(2000)]
        return text
""",
)
attempt(
    "json_encoder_memory_taken_by_a_new_list",
    "returned str: '[[0]] 1 0'",
    """
    import json

    OUTER = []
    KEEP = []

    class Shy(list):
        def __iter__(self):
            OUTER.clear()
            yield Later()

    class Later:
        pass

    def default(o):
        KEEP.append(Shy())
        return 0

    def attempt():
        OUTER.append(Shy([0]))
        text = json.dumps(OUTER, default=default)
        return f"{text} {len(KEEP)} {len(KEEP[0])}"
""",
)

# Names of the interpreter's bound by a statement (round 21): a module-level `def
# __getattr__` answered the import system's questions about a routine module deployed as
# `tzdata`, and zoneinfo's import of tzdata ran code of the routine's choosing with the real
# builtins. Refused however they are bound, but as methods of a class. (And routine modules
# are kept in sys.modules under names no import asks for: see the test below.)
BINDS = "load SyntaxError: pyfuncs: binding the name "
for label, source in [
    ("module_getattr", "def __getattr__(name):\n    return [name]"),
    ("module_dir", "def __dir__():\n    return []"),
    ("class_path", "import enum\n\nclass __path__(str, enum.Enum):\n    A = '/tmp'"),
    ("import_as", "import json as __spec__"),
    ("from_import_as", "from json import dumps as __loader__"),
    ("global_def", "def make():\n    global __getattr__\n\n    def __getattr__(name):\n"
                   "        return name"),
    ("except_as", "try:\n    pass\nexcept ValueError as __path__:\n    pass"),
    ("match_capture", "match [1]:\n    case [*__path__]:\n        pass"),
    ("nested_class_in_a_function", "def make():\n    class __getattr__:\n        pass"),
]:  # fmt: skip
    attempt(f"dunder_bound_{label}", BINDS, source + "\n\ndef attempt():\n    return 1\n")
attempt(
    "dunder_methods_of_classes_still_work",
    "returned str: 'x 2'",
    """
    class Box:
        def __init__(self, items):
            self.items = items

        def __getattr__(self, name):
            return name

        def __len__(self):
            return len(self.items)

    def attempt():
        box = Box([1, 2])
        return f"{box.x} {len(box)}"
""",
)
# Coroutines (round 22): routines run without an event loop, and an `async with` whose
# __aexit__ swallowed the stop, driven by hand with send(), kept the call running until
# the backstop ended its session.
ASYNC = "load SyntaxError: pyfuncs: async code (routines run without an event loop)"
for label, source in [
    ("with", "class S:\n    async def __aenter__(self):\n        return self\n\n"
             "    async def __aexit__(self, *exc):\n        return True"),
    ("def", "async def spin():\n    return 1"),
    ("comprehension", "def f(xs):\n    return [x async for x in xs]"),
]:  # fmt: skip
    attempt(f"async_{label}", ASYNC, source + "\n\ndef attempt():\n    return 1\n")

# Ints made without an operator, that stdlib code then works on in quadratic time (round
# 22: the gcd of two 8-million-bit ints in Fraction's code, in one C call): int.from_bytes
# is bounded as the operators are, and so are Fractions of large ints (int(text, 2) makes
# them too) and Fraction powers, whoever asks for them.
for label, refused, body in [
    ("from_bytes", "call OperationTooLarge: int.from_bytes of 20,000 bytes would make",
     'return int.from_bytes(b"\\x01" + bytes(19_999), "big")'),
    ("from_bytes_of_an_int", "call OperationTooLarge: int.from_bytes of 20,000 bytes",
     'return (1).from_bytes(bytes(20_000), "little")'),
    ("fraction_of_a_large_int", "call OperationTooLarge: a Fraction would make 200,000 bits",
     'return fractions.Fraction(int("1" * 200_000, 2), 3)'),
    ("fraction_from_ints_summed", "call OperationTooLarge: a Fraction would make",
     'return statistics.mean([int("1" * 200_000, 2), 1])'),
]:  # fmt: skip
    attempt(f"large_int_{label}", refused,
            f"import fractions\nimport statistics\n\ndef attempt():\n    {body}\n")  # fmt: skip
# The idna codec, reached by name from str.encode, normalizes with unicodedata's own
# functions, past a routine's view of the module (round 23): bounded for whoever calls.
attempt(
    "normalize_through_the_idna_codec",
    "call OperationTooLarge: encoding with 'idna' codec failed (OperationTooLarge: "
    "unicodedata.ucd_3_2_0.normalize of a run of more than 1,000",
    """
    def attempt():
        return ("a" + "\\u0301" * 2_000).encode("idna")
""",
)
# copy's reconstruction sets slot state with the real setattr: `__class__` among it moved
# a new datetime into a class of the routine's whose __new__ returned bytes, which C's
# astimezone then wrote through (round 25)
attempt(
    "copy_slot_state_names_another_class",
    "call TypeError: pyfuncs: copying a Base would set a name of the interpreter's",
    """
    import dataclasses

    class Evil:
        pass

    class Base:
        def __reduce_ex__(self, protocol):
            return (Base, (), (None, {"__class__": Evil}))

    @dataclasses.dataclass
    class Box:
        item: object

    def attempt():
        return type(dataclasses.asdict(Box(Base()))["item"])
""",
)
attempt(
    "json_indent_repeated_in_one_call",
    "call OperationTooLarge: json's indent or separators would make 1,300,000,000 characters",
    """
    import json

    def attempt():
        return len(json.dumps([[1]], indent=1_300_000_000))
""",
)
for label in ("indent_as_text", "separators"):
    attempt(
        f"json_{label}_bounded",
        "call OperationTooLarge: json's indent or separators would make 100 characters",
        "import json\n\ndef attempt():\n    return json.dumps([1], "
        + ('indent=" " * 100)' if label == "indent_as_text" else 'separators=(",", " " * 100))')
        + "\n",
    )

# --- special methods that are not the routine's code: C calls them wherever the object is,
# another role's call among them (a red team's bound db.execute, as a class's __eq__ in a
# cache every call shares, queried as that role), so they are refused as the class is made
SPECIAL = "call TypeError: pyfuncs: the special method '__eq__' of a routine's class"
for label, made in [
    ("type_bound_c_method", 'type("K", (), {"__eq__": SEEN.append})'),
    ("type_c_method_of_a_base", 'type("K", (list,), {"__eq__": list.append})'),
    ("type_stdlib_function",
     'type("K", (collections.Counter,), {"__eq__": collections.Counter.update})'),
    ("type_staticmethod", 'type("K", (), {"__eq__": staticmethod(SEEN.append)})'),
    ("type_property", 'type("K", (), {"__eq__": property(SEEN.append)})'),
    ("type_classmethod_of_a_type", 'type("K", (), {"__eq__": classmethod(list)})'),
    ("abc_metaclass_called",
     'type(collections.abc.Sized)("K", (), {"__eq__": SEEN.append, "__len__": len})'),
    ("enum_functional", 'enum.Enum("K", {"__eq__": SEEN.append, "A": 1})'),
    ("named_tuple_metaclass_called",
     'type(Named)("K", (), {"__module__": "m", "__eq__": SEEN.append})'),
    ("dataclass_namespace",
     'dataclasses.make_dataclass("K", ["a"], namespace={"__eq__": SEEN.append})'),
    ("runtime_decorator",
     "class K:\n    @(lambda method: stored_function)\n    def __eq__(self, other):\n"
     "        return True"),
    ("runtime_builtin", 'type("K", (), {"__eq__": getattr})'),
    ("stdlib_frames_on_the_stack",
     'list(collections.Counter(map(type, ["K"], [()], [{"__eq__": collections.Counter.total}])))'),
    ("inherited_from_another_class",
     'type("K", (list,), {"__eq__": collections.UserList.append})'),
    ("class_statement_decorated",
     "class K:\n    @lose\n    def __eq__(self, other):\n        return True"),
    ("named_tuple_class_statement",
     "class K(typing.NamedTuple):\n    x: int\n\n    @lose\n    def __eq__(self, other):\n"
     "        return True"),
]:  # fmt: skip
    attempt(
        f"special_method_{label}",
        SPECIAL,
        "import collections, collections.abc, dataclasses, enum, typing\n"
        "from pyfuncs import stored_function\n\n"
        "SEEN = []\n\n\nclass Named(typing.NamedTuple):\n    x: int\n\n\n"
        "def lose(method):\n    return SEEN.append\n\n\n"
        "def attempt():\n" + textwrap.indent(made, "    ") + "\n    return SEEN\n",
    )
attempt(
    "special_method_slot_named_like_one",
    "call TypeError: pyfuncs: the special method '__slots__' of a routine's class",
    """
    def attempt():
        return type("K", (), {"__slots__": ("__eq__",)})
    """,
)


@pytest.fixture(scope="module")
def runtime(cluster: Cluster, template: str) -> Iterator[psycopg.Connection[Any]]:
    """One database and one session for the whole catalogue: the runtime booted once."""
    name = "t_escapes"
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    DatabaseJanitor(
        user=SUPERUSER, host="127.0.0.1", port=cluster.port, dbname=name, template_dbname=template,
    ).init()  # type: ignore[arg-type]  # fmt: skip
    try:
        with psycopg.connect(cluster.url(name), autocommit=True) as conn:
            conn.execute(HARNESS % {"allowed": sorted(policy.DEFAULT_ALLOWED)})
            yield conn
    finally:
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(a, id=a.name) for a in ATTEMPTS])
def test_the_runtime_refuses(runtime: psycopg.Connection[Any], case: Attempt) -> None:
    row = runtime.execute("SELECT public.escape_attempt(%s, %s)", [case.name, case.source])
    outcome = row.fetchone()
    assert outcome is not None
    assert outcome[0].startswith(case.refused), outcome[0]


# the attempts above of class 2, calls affecting each other (all others are of class 1)
CONTAMINATING = frozenset({
    "db_plans_by_private_attribute", "db_plans_by_class",
    "decimal_context_kept_by_a_suspended_generator", "instance_state_by_deepcopy",
    "instance_state_by_astuple", "enum_members_by_private_attribute",
    "enum_member_names_by_private_attribute",
    "instance_state_by_a_constructor_returning_a_shared_object",
    "decimal_context_set_by_a_generator_kept_by_a_class",
    "enum_members_into_another_modules_namespace",
    *(a.name for a in ATTEMPTS if a.name.startswith("register_through")),
    *(a.name for a in ATTEMPTS if a.name.startswith("abc_")),
    "module_renamed_after_another", "typing_overload_registry",
    "typing_markers_on_shared_objects", "typing_cache_by_a_lying_metaclass",
    *(a.name for a in ATTEMPTS if a.name.startswith("private_")),
    *(a.name for a in ATTEMPTS if a.name.startswith("zoneinfo_cache_")),
    *(a.name for a in ATTEMPTS if a.name.startswith("special_method_")),
})  # fmt: skip


def _stopping_cases() -> int:
    """The cases of tests/integration/test_stopping.py: each test, times its parameters."""
    from ..integration import test_stopping

    count = 0
    for name, test in vars(test_stopping).items():
        if name.startswith("test_") and callable(test):
            cases = 1
            for mark in getattr(test, "pytestmark", []):
                if mark.name == "parametrize":
                    cases *= len(mark.args[1])
            count += cases
    return count


def test_the_catalogue_holds_at_least_a_hundred_attempts() -> None:
    names = [a.name for a in ATTEMPTS]
    assert len(names) == len(set(names))
    assert set(names) >= CONTAMINATING
    bounded = sum(a.name.startswith("bounded_") for a in ATTEMPTS)
    escapes = len(ATTEMPTS) - len(CONTAMINATING) - bounded
    assert escapes >= 70 and bounded >= 20
    total = (
        len(ATTEMPTS) + len(contaminate_mod.ATTEMPTS) + len(identity_mod.ATTEMPTS)
        + _stopping_cases()
    )  # fmt: skip
    assert _stopping_cases() >= 10
    assert total >= 100


ORDINARY = """
import collections
import dataclasses
import enum
import typing


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Pair(typing.NamedTuple):
    left: int
    right: int


class Colour(enum.Enum):
    RED = 1


class Template(str):
    def twice(self, value):
        return super().format(value) * 2


def where(shape):
    match shape:
        case Point(0, y):
            return f"on the y axis at {y}"
        case Point(x, y) if x == y:
            return "on the diagonal"
        case Pair(left, right=r):
            return f"a pair {left} {r}"
        case [Point(x, _), *_]:
            return f"points from {x}"
        case int(n) | float(n):
            return f"a number {n}"
        case Colour.RED:
            return "RED"
        case _:
            return "elsewhere"


def attempt():
    name = Template("real")
    return " | ".join([
        where(Point(0, 3)), where(Point(2, 2)), where(Pair(1, 2)), where([Point(5, 1)]),
        where(4), where(Colour.RED), where("x"), "{0.real}".format(2),
        str.format("{0}-{1}", 1, 2), Template("{0}").twice(7),
        collections.UserString("{0}/{x}").format(1, x=2),
        str(getattr(3, name)), str(hasattr(3, name)),
    ])
"""


def test_what_routines_ordinarily_do_still_works(runtime: psycopg.Connection[Any]) -> None:
    row = runtime.execute("SELECT public.escape_attempt('ordinary', %s)", [ORDINARY])
    assert row.fetchone() == (
        "returned str: 'on the y axis at 3 | on the diagonal | a pair 1 2 | points from 5 | "
        "a number 4 | RED | elsewhere | 2 | 1-2 | 77 | 1/2 | 3 | True'",
    )


ORDINARY_CLASSES = """
import collections, collections.abc, dataclasses, enum, typing

T = typing.TypeVar("T")


class Money:
    def __init__(self, cents):
        self.cents = cents

    def __eq__(self, other):
        return isinstance(other, Money) and other.cents == self.cents

    def __ne__(self, other):
        return not self == other

    @property
    def euros(self):
        return self.cents / 100

    @classmethod
    def zero(cls):
        return cls(0)

    @staticmethod
    def parse(text):
        return Money(int(text))

    def __init_subclass__(cls, **kwargs):
        cls.made = True

    def __class_getitem__(cls, item):
        return cls


class Colour(enum.IntEnum):
    RED = 1

    def __str__(self):
        return self.name.lower()


Perm = enum.Flag("Perm", "R W X")
Shape = enum.Enum("Shape", {"SQUARE": 4, "TRIANGLE": 3})


class Pair(typing.NamedTuple):
    left: int
    right: int = 0

    def total(self):
        return self.left + self.right


class Movie(typing.TypedDict):
    title: str


@dataclasses.dataclass(slots=True, frozen=True, order=True)
class Point:
    x: int
    y: int = 0


@typing.runtime_checkable
class Sized(typing.Protocol):
    def size(self) -> int: ...


class Box(typing.Generic[T]):
    def __init__(self, item: T) -> None:
        self.item = item


class Registry(collections.abc.Mapping):
    def __getitem__(self, key):
        return key

    def __len__(self):
        return 0

    def __iter__(self):
        return iter(())


def attempt():
    Row = collections.namedtuple("Row", "a b")
    Made = dataclasses.make_dataclass("Made", ["a"], namespace={"double": lambda self: 2 * self.a})
    Dynamic = type("Dynamic", (), {"__eq__": lambda self, other: True, "__hash__": None,
                                   "__slots__": ("a",)})
    return " ".join(map(str, [
        Money(5) == Money(5), Money(5) != Money(6), Money.zero().euros, Money.parse("7").cents,
        Money[int] is Money, Colour.RED, Perm.R | Perm.W in Perm.R | Perm.W | Perm.X,
        Shape.SQUARE.value, Pair(1, 2).total(), Movie(title="x")["title"],
        Point(1) < Point(2), isinstance(Box(1), Box), dict(Registry()), Row(1, 2).b,
        Made(3).double(), Dynamic() == 1,
    ]))
"""


ORDINARY_MORE_CLASSES = """
import collections, collections.abc, dataclasses, decimal, enum, fractions, typing

T = typing.TypeVar("T")


class Mood(enum.StrEnum):
    HAPPY = enum.auto()


class Level(str, enum.Enum):
    LOW = "low"

    @classmethod
    def _missing_(cls, value):
        return cls.LOW


class Perm(enum.IntFlag, boundary=enum.STRICT):
    R = 4
    W = 2


@enum.unique
class Status(enum.Enum):
    @staticmethod
    def _generate_next_value_(name, start, count, last_values):
        return name.lower()

    OPEN = enum.auto()


@dataclasses.dataclass(frozen=True)
class Base:
    code: int


class Coded(Base, enum.Enum):
    ONE = 1


@dataclasses.dataclass(slots=True, weakref_slot=True, kw_only=True, match_args=True)
class Item:
    name: str
    tags: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.tags.append(self.name)


@dataclasses.dataclass
class Boxed(typing.Generic[T]):
    item: T


class Pair(typing.NamedTuple, typing.Generic[T]):
    left: T
    right: T


class Movie(typing.TypedDict, total=False):
    title: str


class Film(Movie):
    year: int


@typing.runtime_checkable
class Holder(typing.Protocol[T]):
    def get(self) -> T: ...


class Oops(Exception):
    def __str__(self):
        return "oops"


class Defaults(collections.UserDict):
    def __missing__(self, key):
        return 0


class Counts(collections.defaultdict):
    pass


class Money(decimal.Decimal):
    pass


class Ratio(fractions.Fraction):
    pass


class Store(collections.abc.MutableMapping):
    def __init__(self):
        self.data = {}

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        self.data[key] = value

    def __delitem__(self, key):
        del self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)


class Temperature:
    def __init__(self):
        self._c = 0

    @property
    def celsius(self):
        return self._c

    @celsius.setter
    def celsius(self, value):
        self._c = value


def attempt():
    store = Store()
    store["a"] = 1
    hot = Temperature()
    hot.celsius = 30
    return " ".join(map(str, [
        Mood.HAPPY, Level("x").value, int(Perm.R | Perm.W), Status.OPEN.value, Coded.ONE.code,
        Item(name="a").tags, Boxed(1).item, Pair(1, 2).right, Film(title="x", year=1)["year"],
        str(Oops()), Defaults()["k"], Counts(int)["k"], Money("1.5") + 1, Ratio(1, 2) * 2,
        dict(store), hot.celsius,
    ]))
"""


def test_more_classes_routines_define_still_work(runtime: psycopg.Connection[Any]) -> None:
    """The classes a red team checked for false refusals of the special-method check."""
    row = runtime.execute(
        "SELECT public.escape_attempt('more_classes', %s)", [ORDINARY_MORE_CLASSES]
    )
    assert row.fetchone() == (
        "returned str: \"happy low 6 open 1 ['a'] 1 2 1 oops 0 0 2.5 1 {'a': 1} 30\"",
    )


def test_special_methods_routines_define_still_work(runtime: psycopg.Connection[Any]) -> None:
    row = runtime.execute(
        "SELECT public.escape_attempt('ordinary_classes', %s)", [ORDINARY_CLASSES]
    )
    assert row.fetchone() == (
        "returned str: 'True True 0.0 7 True red True 4 3 x True True {} 2 6 True'",
    )


ORDINARY_STATE = """
import collections
import dataclasses
import decimal
import fractions
import typing
import uuid
from decimal import Decimal as D


class Account:
    def __init__(self, balance):
        self._balance = balance

    def _doubled(self):
        return self._balance * 2

    def report(self):
        return self._doubled()


class Pair(typing.NamedTuple):
    left: int
    right: int


@dataclasses.dataclass
class Inner:
    id: uuid.UUID
    amount: D


@dataclasses.dataclass
class Outer:
    inner: Inner
    tags: list


class Bag(collections.UserDict):
    pass


def attempt():
    with decimal.localcontext(prec=50) as context:
        third = str(D(1) / D(3))
        context.prec = 30
        root = str(D(2).sqrt())
        context.prec += 2
        digits = context.prec
    copied = dataclasses.asdict(Outer(Inner(uuid.UUID(int=5), D("1.5")), ["a"]))
    pair = Pair(1, 2)._replace(right=5)
    return [
        Account(21).report(), third[-3:], root[:6], digits, str(D("1.5") ** 2),
        str(fractions.Fraction(2, 3) ** 3), pair._asdict(), Pair._fields,
        copied["inner"]["id"].int, str(copied["inner"]["amount"]), Bag(a=1).copy().data,
        decimal.Context(prec=500).prec, int(D("1e20")), round(D("2.5")), f"{D('1.25'):.1f}",
        D("0.75").as_integer_ratio(), str(fractions.Fraction(D("1.5"))),
        str(fractions.Fraction("1.25e2")), str(round(fractions.Fraction(1, 3), 3)),
        decimal.Context(prec=28, Emax=99).Emax, str(pow(D(3), D(200), D(7))),
        str(pow(3, D(200), D(7))), str(decimal.Context().power(D(3), 200, modulo=D(7))),
        str(fractions.Fraction(fractions.Fraction(1, 3), fractions.Fraction(2, 5))),
    ]
"""


def test_routines_keep_their_own_state_private_and_copies_and_decimals_work(
    runtime: psycopg.Connection[Any],
) -> None:
    row = runtime.execute("SELECT public.escape_attempt('ordinary_state', %s)", [ORDINARY_STATE])
    assert row.fetchone() == (
        "returned list: [42, '333', '1.4142', 32, '2.25', '8/27', {'left': 1, 'right': 5}, "
        "('left', 'right'), 5, '1.5', {'a': 1}, 500, 100000000000000000000, 2, '1.2', "
        "(3, 4), '3/2', '125', '333/1000', 99, '2', '2', '2', '5/6']",
    )


def test_a_struct_is_initialised_once(runtime: psycopg.Connection[Any]) -> None:
    """Once the runtime has started in a backend, Struct's C __init__ refuses a Struct that
    has a format (re-initialising one while it packs wrote over the C stack): whoever calls
    it, routine or not."""
    runtime.execute("SELECT public.escape_attempt('boot', 'def attempt():\n    return 1\n')")
    runtime.execute(
        "DO LANGUAGE plpython3u $$\n"
        "import struct\n"
        "fresh = struct.Struct('i')\n"
        "try:\n"
        "    type(fresh).__init__(fresh, 'q')\n"
        "except TypeError as exc:\n"
        "    assert 'set once' in str(exc) and fresh.format == 'i', exc\n"
        "else:\n"
        "    raise AssertionError('re-initialised')\n"
        "assert struct.unpack('<q', struct.pack('<q', 5)) == (5,)\n"
        "$$"
    )


@pytest.mark.parametrize(
    "empties",
    [
        "table.clear()",
        "table.popitem(); table.update({'a': 1})",
        "table.popitem(); table.__ior__({'a': 1})",
    ],
    ids=["clear", "popitem_update", "popitem_ior"],
)
def test_a_dict_emptied_during_an_insert_keeps_a_table_for_any_key(
    runtime: psycopg.Connection[Any], empties: str
) -> None:
    """A key's __eq__ that cleared the dict while a bytes key was being inserted left that
    key in a table for str keys, read as a str from then on (gh-140551: a red team chose
    the address memcmp read); so did emptying it and merging a dict of str keys into it
    (round 14: the merge copies the other's table). Once the runtime has started in a
    backend, neither leaves a table for str keys only: the table's kind (dk_kind, 0 for
    any key) is read from the dict."""
    runtime.execute("SELECT public.escape_attempt('boot', 'def attempt():\n    return 1\n')")
    runtime.execute(
        "DO LANGUAGE plpython3u $$\n"
        "import ctypes\n"
        "key = b'plain bytes key'\n"
        "table = {}\n"
        "class Clears:\n"
        "    def __hash__(self):\n"
        "        return hash(key)\n"
        "    def __eq__(self, other):\n"
        f"        {empties}\n"
        "        return False\n"
        "table[Clears()] = 0\n"
        "table[key] = 1\n"
        "keys = ctypes.c_void_p.from_address(id(table) + 32).value\n"
        "kind = ctypes.c_uint8.from_address(keys + 10).value\n"
        "assert kind == 0 and key in list(table), (kind, list(table))\n"
        "$$"
    )


@pytest.mark.parametrize("hook", ["C", "Python"])
def test_a_window_for_imports_closes_while_code_of_a_routines_runs(
    runtime: psycopg.Connection[Any], hook: str
) -> None:
    """While the import system runs a module's code, the standard library may define
    metaclasses and set attributes of other modules' classes (ast's): the flags are given
    back, in a window. Code of a routine's that runs meanwhile (a finalizer something the
    import does sets off) finds the window closed: it may not derive from type, nor change
    a shared class; the window opens again when it returns, and closes for good after. The
    profile function that sees it is backstop.c's, or Python's where that is missing."""
    runtime.execute("SELECT public.escape_attempt('boot', 'def attempt():\n    return 1\n')")
    runtime.execute(
        "DO LANGUAGE plpython3u $$\n"
        "import sys\n"
        "sandbox = sys.modules['pyfuncs_pg.sandbox']\n"
        "classes = sys.modules['pyfuncs_pg.classes']\n"
        "backstop = sys.modules['pyfuncs_pg.backstop']\n"
        f"c_hook = {hook == 'C'}\n"
        "assert not c_hook or backstop._installed, 'pyfuncs_backstop.so is not installed'\n"
        "real = backstop.window_profile\n"
        "backstop.window_profile = real if c_hook else (lambda *args: False)\n"
        "import json\n"
        "source = '\\n'.join([\n"
        "    'import dataclasses',\n"
        "    'import json',\n"
        "    'def finalizer():',\n"
        "    '    try:',\n"
        "    '        type(\"M\", (type,), {})',\n"
        "    '    except TypeError as exc:',\n"
        "    '        made = str(exc)',\n"
        "    '    else:',\n"
        "    '        made = \"a metaclass\"',\n"
        "    '    try:',\n"
        "    '        dataclasses.dataclass(json.JSONDecodeError)',\n"
        "    '    except TypeError as exc:',\n"
        "    '        return made, str(exc)',\n"
        "    '    return made, \"changed\"',\n"
        "]) + '\\n'\n"
        "allowed = frozenset({'json', 'dataclasses'})\n"
        "namespace = sandbox.load_module(source, 'window.py', f'window_{c_hook}', allowed)\n"
        "sys.modules['pyfuncs_pg.watchdog'].CALLING[0] = namespace  # (as in its call)\n"
        "import ast, types\n"
        "imported = types.ModuleType('ast')  # (as ast's import: the one window that thaws)\n"
        "try:\n"
        "    with classes.window(imported):\n"
        "        assert (sys.getprofile() is classes._watch) is not c_hook\n"
        "        # (as enum and typing define theirs: a name of the imported module's)\n"
        "        M = type('M', (type,), {'__module__': imported.__name__})\n"
        "        imported.M = M\n"
        "        got = namespace['finalizer']()\n"
        "        ast.Constant.y = 1  # (as ast sets attributes of _ast's classes)\n"
        "        del ast.Constant.y\n"
        "finally:\n"
        "    backstop.window_profile = real\n"
        "assert sys.getprofile() is None\n"
        "assert got[0] == \"type 'type' is not an acceptable base type\", got\n"
        'assert "dataclass() takes a class of the routine\'s own" in got[1], got\n'
        "assert namespace['finalizer']() == got\n"
        "try:\n"
        "    type('N', (M,), {})\n"
        "except TypeError as exc:\n"
        "    assert 'not an acceptable base type' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('a metaclass made in a window is still a base after it')\n"
        "$$"
    )


def test_routine_modules_have_names_no_import_asks_for(runtime: psycopg.Connection[Any]) -> None:
    """A routine module deployed as `tzdata` was what zoneinfo's import of tzdata found in
    sys.modules (round 21). Routine modules are there under `routine:<name>`, a name no
    import statement or standard module asks for; another module of that name, and the
    lines of another file of that name, get names of their own."""
    runtime.execute("SELECT public.escape_attempt('boot', 'def attempt():\n    return 1\n')")
    runtime.execute(
        "DO LANGUAGE plpython3u $$\n"
        "import linecache, sys\n"
        "sandbox = sys.modules['pyfuncs_pg.sandbox']\n"
        "allowed = frozenset({'zoneinfo'})\n"
        "first = sandbox.load_module('A = 1\\n', 'tzdata.py', 'tzdata', allowed)\n"
        "second = sandbox.load_module('A = 2\\n', 'tzdata.py', 'tzdata', allowed)\n"
        "assert 'tzdata' not in sys.modules\n"
        "assert first['__name__'] == 'routine:tzdata', first['__name__']\n"
        "assert second['__name__'] == 'routine:tzdata~2', second['__name__']\n"
        "assert sys.modules['routine:tzdata~2'].__dict__ is second\n"
        "assert (first['__file__'], second['__file__']) == ('tzdata.py', 'tzdata.py~2')\n"
        "assert linecache.getline('tzdata.py', 1) == 'A = 1\\n'\n"
        "assert linecache.getline('tzdata.py~2', 1) == 'A = 2\\n'\n"
        "$$"
    )


def test_fraction_powers_are_bounded_for_whoever_asks(runtime: psycopg.Connection[Any]) -> None:
    """fractions raises a numerator to a power in its own code (statistics' code calls it
    too, past a routine's guards): bounded on the type, as the operator is in a routine."""
    runtime.execute("SELECT public.escape_attempt('boot', 'def attempt():\n    return 1\n')")
    runtime.execute(
        "DO LANGUAGE plpython3u $$\n"
        "import fractions, sys\n"
        "bounded = sys.modules['pyfuncs_pg.bounded']\n"
        "for power in (lambda: fractions.Fraction(3, 2) ** 10**6,\n"
        "              lambda: 10 ** fractions.Fraction(10**6)):\n"
        "    try:\n"
        "        power()\n"
        "    except bounded.OperationTooLarge as exc:\n"
        "        assert 'would make' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError('computed')\n"
        "assert fractions.Fraction(3, 2) ** 2 == fractions.Fraction(9, 4)\n"
        "$$"
    )


def test_decimal_modular_powers_are_bounded_for_whoever_asks(
    runtime: psycopg.Connection[Any],
) -> None:
    """libmpdec writes a modular power's operands out as integers and works through the
    exponent bit by bit, in one C call: Decimal("1e100000000") is one digit of coefficient
    and 100,000,001 as an integer (round 47b's pow(Decimal(3), Decimal("1e100000000"),
    Decimal(7)) ran until the backstop ended the session). Decimal's `__pow__` and
    `__rpow__` with a modulus and Context.power(a, b, m) size their operands as integers
    on the types, for whoever calls them; small modular powers work as before."""
    runtime.execute("SELECT public.escape_attempt('boot', 'def attempt():\n    return 1\n')")
    runtime.execute(
        "DO LANGUAGE plpython3u $$\n"
        "import decimal, sys\n"
        "from decimal import Decimal as D\n"
        "bounded = sys.modules['pyfuncs_pg.bounded']\n"
        "huge = D('1e100000000')\n"
        "for power in (lambda: pow(D(3), huge, D(7)), lambda: D(3).__pow__(huge, D(7)),\n"
        "              lambda: huge.__rpow__(D(3), D(7)), lambda: pow(huge, 2, D(7)),\n"
        "              lambda: decimal.Context().power(D(3), huge, D(7)),\n"
        "              lambda: decimal.Context().power(3, 2, modulo=huge)):\n"
        "    try:\n"
        "        power()\n"
        "    except bounded.OperationTooLarge as exc:\n"
        "        assert '100,000,001-digit' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError('computed')\n"
        "assert pow(D(3), D(200), D(7)) == D(2) and D(2) ** D(3) == 8 and 2 ** D(3) == 8\n"
        "assert decimal.Context().power(D(3), 200, D(7)) == D(2)\n"
        "assert str(decimal.Context().power(D(2), D('0.5')))[:5] == '1.414'\n"
        "$$"
    )


@pytest.mark.parametrize(
    "inside",
    [
        # Python drops a profile function of Python that raised (called where the stack
        # was nearly full, say: a red team's harness did it), after which code of a
        # routine's could run with the window open
        "backstop.window_profile = lambda *args: False\n"
        "with classes.window(imported):\n"
        "    sys.setprofile(None)  # (as Python does when the function raised)\n",
        # a routine's finalizer that runs only the standard library's code (property(asdict)
        # as `__del__`, copy's reconstruction calling `type` with the routine's arguments)
        # is not seen by the profile function: a red team made a metaclass in a window so
        "with classes.window(imported):\n"
        "    Spy = type('Spy', (type,), {'__module__': 'imported'})  # (not imported's)\n",
    ],
    ids=["profile_function_dropped", "metaclass_not_of_the_imported_modules"],
)
def test_a_window_that_may_have_let_a_routine_in_ends_the_session(
    runtime: psycopg.Connection[Any], inside: str
) -> None:
    """When an import window closes after its profile function was dropped, or with a new
    metaclass (or date or time subclass) that is not one the imported modules define by
    name, the session ends."""
    with psycopg.connect(runtime.info.dsn, autocommit=True) as conn:
        conn.execute("SELECT public.escape_attempt('boot', 'def attempt():\n    return 1\n')")
        with pytest.raises(psycopg.Error) as info:
            conn.execute(
                "DO LANGUAGE plpython3u $$\n"
                "import sys, types\n"
                "classes = sys.modules['pyfuncs_pg.classes']\n"
                "backstop = sys.modules['pyfuncs_pg.backstop']\n"
                "imported = types.ModuleType('imported')\n" + inside + "$$"
            )
        assert "lost sight of a routine's code while a module was imported" in str(info.value)
        assert conn.closed or conn.broken
    assert runtime.execute("SELECT 1").fetchone() == (1,)  # (the catalogue's carries on)


def test_datetime_imported_outside_a_window_is_withheld(runtime: psycopg.Connection[Any]) -> None:
    """datetime is not imported when the runtime starts, and its import opens no window:
    its types are withheld as bases when that import ends (a red team derived from datetime
    in a fresh backend, where nothing else had withheld them yet)."""
    with psycopg.connect(runtime.info.dsn, autocommit=True) as conn:
        conn.execute(
            "DO LANGUAGE plpython3u $$\n"
            "import sys\n"
            "plpy.execute('SELECT pyfuncs.boot()')\n"
            "assert '_datetime' not in sys.modules and 'datetime' not in sys.modules\n"
            "import datetime\n"
            "classes = sys.modules['pyfuncs_pg.classes']\n"
            "for kind in (datetime.date, datetime.datetime, datetime.time):\n"
            "    assert not kind.__flags__ & classes.BASETYPE, kind\n"
            "    assert 'cls(...)' in classes.refused(kind)\n"
            "try:\n"
            "    type('D', (datetime.datetime,), {})\n"
            "except TypeError as exc:\n"
            "    assert 'not an acceptable base type' in str(exc)\n"
            "else:\n"
            "    raise AssertionError('derived from datetime')\n"
            "$$"
        )
