"""Calls cannot affect each other: a routine cannot change what other routines, or other
roles' calls, run in the same backend (issue 12, "Calls cannot affect each other")."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyfuncs import DefinitionError
from pyfuncs import deploy as deploying
from pyfuncs._pg import guards

from .modules import contaminate_mod, random_mod

CLEAN = '{"a": [1, 2]} False 0.142857 0 3.14 1 0.33333 0001 2 False {"b":1} unchecked 22023'


@pytest.fixture
def cont(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    deploying.deploy(conn, contaminate_mod)
    return conn


def test_every_attempt_is_refused_and_nothing_changes_for_anyone(
    cont: psycopg.Connection[Any],
) -> None:
    assert cont.execute("SELECT cont.observe()").fetchone() == (CLEAN,)
    for attempt in sorted(contaminate_mod.ATTEMPTS):
        answer = cont.execute("SELECT cont.contaminate(%s)", [attempt]).fetchone()
        assert answer is not None and answer[0].startswith("refused: "), (attempt, answer)
    # the same backend, the same routine and another role's call: as before
    assert cont.execute("SELECT cont.observe()").fetchone() == (CLEAN,)
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT cont.observe()").fetchone() == (CLEAN,)


def test_shared_caches_keep_no_key_of_a_routines_class(cont: psycopg.Connection[Any]) -> None:
    """struct's format cache, ZoneInfo's zone caches and strptime's patterns keep the key
    they were given and compare later keys with it: a routine's str subclass that says it
    equals any key ran its __eq__ in other roles' calls and chose what they got (8-byte
    packs of '<I', Paris at +14:00, day and month swapped), and so did a routine's ZoneInfo
    subclass that kept ZoneInfo from giving it a cache of its own (its zones went into the
    one other calls read). The runtime gives them plain str keys; ZoneInfo's zones come
    from a cache of plain keys of the runtime's, and its subclasses are refused."""
    assert cont.execute("SELECT cont.plant_caches()").fetchone() == ("planted",)
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT cont.cached()").fetchone() == ("4 4 1:00:00 01 02",)


def test_the_catalogue_of_contamination_is_large(cont: psycopg.Connection[Any]) -> None:
    assert len(contaminate_mod.ATTEMPTS) >= 15


def _untemper(y: int) -> int:
    """The Mersenne Twister's state word behind one 32-bit output (its tempering undone)."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    x = y
    for _ in range(4):
        x = y ^ ((x << 7) & 0x9D2C5680)
    y = x & 0xFFFFFFFF
    x = y
    for _ in range(2):
        x = y ^ (x >> 11)
    return x & 0xFFFFFFFF


def _predicted(observed: list[int], n: int) -> list[int]:
    """The next n draws of the Mersenne Twister that gave the 624 `observed` ones."""
    import random

    twister = random.Random()
    twister.setstate((3, (*(_untemper(y) for y in observed), 624), None))
    return [twister.getrandbits(32) for _ in range(n)]


def test_each_module_draws_from_a_generator_of_its_own(cont: psycopg.Connection[Any]) -> None:
    """624 draws tell a Mersenne Twister's state: they predict the module's own next draws,
    and nothing about another module's (another role's, the next call's)."""
    deploying.deploy(cont, random_mod)
    observed = cont.execute("SELECT rnd.draws(624)").fetchone()
    assert observed is not None
    predicted = _predicted(observed[0], 8)
    assert cont.execute("SELECT rnd.draws(8)").fetchone() == (predicted,)  # the method works
    predicted = _predicted(observed[0], 16)[8:]
    others = cont.execute("SELECT cont.draws(8)").fetchone()
    assert others is not None and others[0] != predicted
    assert cont.execute("SELECT rnd.draws(8)").fetchone() == (predicted,)  # still its own
    cont.execute("SET ROLE student")
    others = cont.execute("SELECT cont.draws(8)").fetchone()
    assert others is not None and others[0] != _predicted(observed[0], 24)[16:]
    cont.execute("RESET ROLE")
    for how in ("getrandbits", "randbytes", "instance"):
        with pytest.raises(psycopg.Error) as info:
            cont.execute("SELECT rnd.too_many(%s)", [how])
        assert info.value.sqlstate == "54000", (how, info.value)
        assert "one operation in a routine may make at most" in str(info.value)
        cont.rollback()


def test_modules_of_the_same_name_draw_from_generators_of_their_own(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """Two deployers' files of the same name are two modules: what a module owns is told
    by its name (its random generator, what it may change), so the second gets a name of
    its own (a red team predicted another file's draws from its own, both `routines.py`)."""
    for schema in ("same_a", "same_b"):
        folder = tmp_path / schema
        folder.mkdir()
        (folder / "routines.py").write_text(
            "import random\nfrom pyfuncs import stored_function\n\n\n"
            f"@stored_function(schema={schema!r})\n"
            "def draws(n: int) -> list[int]:\n"
            "    return [random.getrandbits(32) for _ in range(n)]\n"
        )
        deploying.deploy(cont, str(folder / "routines.py"))
    observed = cont.execute("SELECT same_a.draws(624)").fetchone()
    assert observed is not None
    predicted = _predicted(observed[0], 8)
    others = cont.execute("SELECT same_b.draws(8)").fetchone()
    assert others is not None and others[0] != predicted
    assert cont.execute("SELECT same_a.draws(8)").fetchone() == (predicted,)


PLANS = """
from pyfuncs import db, stored_function


@stored_function(schema="plans", roles=["student", "manager"])
def kinds() -> str:
    row = db.fetchone("SELECT id, at FROM events")
    return " ".join("str" if isinstance(value, str) else "other" for value in row.values())
"""


def test_a_shared_plan_converts_each_result_by_its_own_columns(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """Plans are every call's, and PostgreSQL plans one again for another search_path or
    relation: its result's columns may then be others. A red team's temporary table gave a
    query text columns, and the next role's call of the same query got str for its uuid and
    timestamptz (the conversions were learnt once, from the first result)."""
    module = tmp_path / "plans_mod.py"
    module.write_text(PLANS)
    deploying.deploy(cont, str(module))
    cont.execute(
        "CREATE TABLE public.events (id uuid, at timestamptz);"
        "INSERT INTO public.events VALUES (gen_random_uuid(), now());"
        "GRANT SELECT ON public.events TO student, manager"
    )
    cont.execute("SET ROLE student")
    cont.execute("CREATE TEMP TABLE events (id text, at text)")
    cont.execute("INSERT INTO events VALUES ('x', 'y')")
    assert cont.execute("SELECT plans.kinds()").fetchone() == ("str str",)
    cont.execute("DROP TABLE pg_temp.events")
    cont.execute("RESET ROLE")
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT plans.kinds()").fetchone() == ("other other",)


DOMAINED = """
import datetime
import uuid

from pyfuncs import db, stored_function


@stored_function(schema="plans", roles=["student", "manager"])
def domain_kinds() -> str:
    row = db.fetchone("SELECT * FROM domained")
    return " ".join(f"{name}:{kind(value)}" for name, value in row.items())


def kind(value: object) -> str:
    if isinstance(value, list):
        return "[" + ",".join(kind(v) for v in value) + "]"
    for name, made in KINDS:
        if isinstance(value, made):
            return name
    return "other"


KINDS = [("UUID", uuid.UUID), ("datetime", datetime.datetime), ("date", datetime.date),
         ("str", str)]
"""


def test_columns_of_domains_convert_as_their_base_types_do(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """A domain has an oid of its own, and PL/Python hands its values over as its base
    type's: a domain over uuid came back as str, and so did an array of them. Neither the
    caller's search_path (its own pg_type, unnest and `=` first) nor a query's temporary
    table changes what the next role's call of the same query gets."""
    module = tmp_path / "domained_mod.py"
    module.write_text(DOMAINED)
    deploying.deploy(cont, str(module))
    cont.execute(
        "CREATE DOMAIN public.ident AS uuid; CREATE DOMAIN public.ident2 AS public.ident;"
        "CREATE DOMAIN public.stamps AS timestamptz[]; CREATE DOMAIN public.word AS text;"
        "CREATE TABLE public.domained (a public.ident, b public.ident2, c public.ident[],"
        " d public.stamps, e public.word, f date);"
        "INSERT INTO public.domained VALUES (gen_random_uuid(), gen_random_uuid(),"
        " ARRAY[gen_random_uuid()], ARRAY[now()], 'x', current_date);"
        "GRANT SELECT ON public.domained TO student, manager;"
        "CREATE SCHEMA evil; GRANT USAGE ON SCHEMA evil TO student;"
        "CREATE TABLE evil.pg_type AS SELECT * FROM pg_catalog.pg_type;"
        "GRANT SELECT ON evil.pg_type TO student;"
        "CREATE FUNCTION evil.unnest(oid[]) RETURNS SETOF oid LANGUAGE sql"
        " AS 'SELECT 25::oid'; GRANT EXECUTE ON FUNCTION evil.unnest(oid[]) TO student;"
        "CREATE FUNCTION evil.same(oid, oid) RETURNS bool LANGUAGE sql AS 'SELECT true';"
        "CREATE OPERATOR evil.= (FUNCTION = evil.same, LEFTARG = oid, RIGHTARG = oid)"
    )
    expected = ("a:UUID b:UUID c:[UUID] d:[datetime] e:str f:date",)
    cont.execute("SET ROLE student")
    cont.execute("SET search_path = evil, pg_catalog, public")
    assert cont.execute("SELECT plans.domain_kinds()").fetchone() == expected
    # the same query over a temporary table of text columns, first on the path
    cont.execute("CREATE TEMP TABLE domained (a text, b text, c text, d text, e text, f text)")
    cont.execute("INSERT INTO domained VALUES ('1', '2', '3', '4', '5', '6')")
    cont.execute("SET search_path = pg_temp, public")
    assert cont.execute("SELECT plans.domain_kinds()").fetchone() == (
        "a:str b:str c:str d:str e:str f:str",
    )
    cont.execute("DROP TABLE pg_temp.domained")
    cont.execute("RESET ROLE")
    cont.execute("RESET search_path")
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT plans.domain_kinds()").fetchone() == expected


HANDLES = """
from typing import Any

from pyfuncs import db, stored_function

LENT: Any = None  # set from outside by the test: another module's db.execute


@stored_function(schema={schema!r}, roles=["student", "manager"])
def own() -> str:
    return str(db.fetchval("SELECT current_user"))


@stored_function(schema={schema!r}, roles=["student", "manager"])
def lent(method: str, query: str) -> str:
    if LENT is None:
        return "none lent"
    if method == "claims":
        return str(LENT())
    return str(list(LENT(query)) if method == "cursor" else LENT(query))
"""

# what a test lends from one routine module to another's LENT, as a superuser (by path:
# `db.execute`, `KEPT.eq` — attributes, or keys of a dict), standing for a shared cache
LEND = """
CREATE FUNCTION public.lend(src text, dst text, path text) RETURNS void
LANGUAGE plpython3u AS $$
import sys
modules = {name.rpartition(".")[2]: module for name, module in sys.modules.items()
           if name.startswith("routine:")}
found = modules[src]
for step in path.split("."):
    found = found[step] if isinstance(found, dict) else getattr(found, step)
modules[dst].LENT = found
$$
"""


def _deploy_all(cont: psycopg.Connection[Any], tmp_path: Any, sources: dict[str, str]) -> None:
    for name, source in sources.items():
        (tmp_path / f"{name}.py").write_text(source)
        deploying.deploy(cont, str(tmp_path / f"{name}.py"))
    cont.execute(LEND)


def _refused_when_lent(
    cont: psycopg.Connection[Any], lent: tuple[str, str, str], call: str, how: str, match: str
) -> None:
    """Lend (src, dst, path); then `call` (of `how`) fails as manager's with `match`, and
    the session goes on as manager."""
    cont.execute("RESET ROLE")
    cont.execute("SELECT public.lend(%s, %s, %s)", list(lent))
    cont.execute("SET ROLE manager")
    with pytest.raises(psycopg.Error, match=match):
        cont.execute(call, [how])


@pytest.mark.parametrize("method", ["execute", "fetchval", "cursor", "claims"])
def test_a_modules_db_queries_only_in_its_own_modules_calls(
    cont: psycopg.Connection[Any], tmp_path: Any, method: str
) -> None:
    """Each routine module has a `db` of its own, which queries only in calls of that
    module's routines. A red team put a bound `db.execute` of its module into a cache every
    call shares (as a class's `__eq__`), where C called it in another role's call with none
    of its module's code on the stack: the query ran as that role. Here the handle is lent
    directly (by a superuser) and called from another module's call."""
    _deploy_all(cont, tmp_path, {s: HANDLES.format(schema=s) for s in ("handle_a", "handle_b")})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT handle_a.own(), handle_b.lent('', '')").fetchone() == (
        "student", "none lent",
    )  # fmt: skip
    _refused_when_lent(cont, ("handle_a", "handle_b", f"db.{method}"),
                       "SELECT handle_b.lent(%s, 'SELECT current_user')", method,
                       "db is for the routine whose call is under way")  # fmt: skip
    # each module's own handle, and the one lent in its own module's calls, still query
    assert cont.execute("SELECT handle_a.own(), handle_b.own()").fetchone() == (
        "manager", "manager",
    )  # fmt: skip


FLAGS = """
import decimal
from decimal import Decimal

from pyfuncs import stored_function


@stored_function(schema="flags", roles=["student", "manager"])
def divide(x: Decimal, y: Decimal) -> str:
    return str(x / y)


@stored_function(schema="flags", roles=["student", "manager"])
def raised() -> list[str]:
    with decimal.localcontext() as context:
        return sorted(str(signal) for signal, up in context.flags.items() if up)


@stored_function(schema="flags", roles=["student", "manager"])
def exact(total: str, parts: int) -> bool:
    with decimal.localcontext() as context:
        Decimal(total) / parts
        return not context.flags[decimal.Inexact]
"""


def test_each_call_has_a_decimal_context_of_its_own(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """decimal's current context was one object every call shared (made where PL/Python
    first converted a numeric): a red team's routine read the flags another role's
    divisions had raised, and one that asked whether its own division was exact was told
    no after another role's inexact one."""
    module = tmp_path / "flags_mod.py"
    module.write_text(FLAGS)
    deploying.deploy(cont, str(module))
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT flags.exact('10.00', 2)").fetchone() == (True,)
    assert cont.execute("SELECT flags.divide(1, 3)").fetchone() == (
        "0.3333333333333333333333333333",
    )
    with pytest.raises(psycopg.Error, match="DivisionByZero"):
        cont.execute("SELECT flags.divide(1, 0)")
    cont.execute("RESET ROLE")
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT flags.raised(), flags.exact('10.00', 2)").fetchone() == ([], True)


OWNER = """
import dataclasses
from typing import Any

from pyfuncs import stored_function


@dataclasses.dataclass(frozen=True)
class Row:
    a: int = 1

SEEN: list[Any] = []
KEPT: dict[str, Any] = {}


class Key:
    def __eq__(self, other: object) -> bool:
        SEEN.append(other)
        return True

    def __hash__(self) -> int:
        return 0


def keep(value: Any) -> Any:
    SEEN.append(value)
    return value


def counting() -> Any:
    try:
        while True:
            SEEN.append((yield len(SEEN)))
    finally:
        SEEN.append("closed")


@stored_function(schema="owner", roles=["student", "manager"])
def prepare(seen: bool) -> str:
    if seen:  # (one routine: each routine of a module has the module's state of its own)
        return repr(SEEN)
    KEPT.update(eq=Key(), function=keep, lambda_=lambda value: SEEN.append(value),
                generator=counting(), genexp=(SEEN.append(x) for x in ["secret"]), row=Row())
    next(KEPT["generator"])  # started in its own call
    return "prepared"
"""

BORROWER = """
from typing import Any

from pyfuncs import stored_function

LENT: Any = None  # set from outside by the test: an object of the module `owner`


@stored_function(schema="borrower", roles=["student", "manager"])
def use(how: str) -> str:
    if LENT is None:
        return "none lent"
    if how == "eq":
        return str(LENT == "secret")
    if how in ("function", "lambda_"):
        return str(LENT("secret"))
    if how == "generator":
        return str(LENT.send("secret"))
    if how == "close":
        LENT.close()
        return "closed"
    if how == "row":  # (the methods dataclasses made for the module's class)
        return str([hash(LENT), LENT == LENT])
    return str(next(LENT))
"""


@pytest.mark.parametrize(
    "how", ["eq", "function", "lambda_", "generator", "genexp", "close", "row"]
)
def test_a_modules_code_runs_only_in_its_own_modules_calls(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str
) -> None:
    """Code of a routine module that Python runs in another module's call (a method of an
    object kept where calls share it, a function, a lambda, a generator resumed or closed,
    a generator expression, the methods dataclasses made for its class) is refused before
    its first statement: red teams had an `__eq__` kept as a key in a standard library cache
    see other roles' keys, and a dataclass's `__hash__` walk 10**10 items there."""
    _deploy_all(cont, tmp_path, {"owner_mod": OWNER, "borrower_mod": BORROWER})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT owner.prepare(false), borrower.use('')").fetchone() == (
        "prepared", "none lent",
    )  # fmt: skip
    kept = "generator" if how == "close" else how
    _refused_when_lent(cont, ("owner_mod", "borrower_mod", f"KEPT.{kept}"),
                       "SELECT borrower.use(%s)", how,
                       "runs only in calls of its own routines")  # fmt: skip
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT owner.prepare(true)").fetchone() == ("[]",)


PLANTER = """
from pyfuncs import db, stored_function

THEIRS = "SELECT 'theirs: ' || $1::text AS v"


class Query(str):
    \"\"\"A query hashed as another module's, equal to any (as a key in the plans' cache).\"\"\"

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash(THEIRS)


@stored_function(schema="planter", roles=["student", "manager"])
def plant() -> str:
    return str(db.fetchval(Query("SELECT 'planted, ' || $1::text AS v"), [0]))


@stored_function(schema="planter", roles=["student", "manager"])
def theirs(n: int) -> str:
    return str(db.fetchval(THEIRS, [n]))
"""


def test_plans_are_kept_by_plain_query_text(cont: psycopg.Connection[Any], tmp_path: Any) -> None:
    """Plans every call shares are kept by their query's text: a red team's str subclass,
    kept as a key, said it equalled another role's query, which then ran its plan (its SQL,
    with that role's rights). Queries are read as plain str."""
    (tmp_path / "planter_mod.py").write_text(PLANTER)
    deploying.deploy(cont, str(tmp_path / "planter_mod.py"))
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT planter.plant()").fetchone() == ("planted, 0",)
    cont.execute("RESET ROLE")
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT planter.theirs(1)").fetchone() == ("theirs: 1",)


ORPHANED = """
import decimal
from collections.abc import Iterator
from decimal import Decimal

from pyfuncs import db, stored_function

KEPT: list[decimal.Context] = []


@stored_function(schema="orphan", roles=["student", "manager"])
def numbers(peek: bool) -> Iterator[str]:
    if peek:  # (one routine: each routine of a module has the module's state of its own)
        yield from sorted(str(s) for c in KEPT for s, up in c.flags.items() if up)
        return
    with decimal.localcontext() as mine:
        mine.prec = 3
        KEPT.append(mine)
        later = decimal.localcontext()  # gives back `mine` as it exits
    with later:
        yield "1"
        yield "2"
        yield "3"


@stored_function(schema="orphan", roles=["student", "manager"])
def third() -> str:
    for _ in db.cursor("SELECT 1"):  # (closes what aborted statements left suspended)
        pass
    return str(Decimal(1) / 3)
"""


def _abandoned_by_student(
    cont: psycopg.Connection[Any], tmp_path: Any, source: str, query: str
) -> None:
    """Deploy `source`; as student, `query` fails (division by zero) with a set-returning
    routine's generator suspended; then the session goes on as manager."""
    (tmp_path / "left_mod.py").write_text(source)
    deploying.deploy(cont, str(tmp_path / "left_mod.py"))
    cont.execute("SET ROLE student")
    with pytest.raises(psycopg.errors.DivisionByZero):
        cont.execute(query)
    cont.execute("RESET ROLE")
    cont.execute("SET ROLE manager")


def test_a_generator_closed_in_another_call_gives_back_no_decimal_context(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """A set-returning routine's generator that an aborted statement left suspended is
    closed in the backend's next call: a red team's, suspended inside a
    `decimal.localcontext()`, gave its own context back there (C's manager restores it in
    whatever context is current), and another role's call computed at its precision and
    raised flags in it for the red team to read."""
    _abandoned_by_student(cont, tmp_path, ORPHANED, "SELECT 1 / (orphan.numbers(false)::int - 2)")
    assert cont.execute("SELECT orphan.third()").fetchone() == ("0.3333333333333333333333333333",)
    cont.execute("RESET ROLE")
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT orphan.numbers(true)").fetchall() == []


ABANDONED = """
from collections.abc import Iterator

from pyfuncs import db, stored_function

STATE = {"busy": 0, "query": "none"}


@stored_function(schema="abandon", roles=["student", "manager"])
def rows(peek: bool) -> Iterator[str]:
    if peek:
        yield f"{STATE['busy']} {STATE['query']}"
        return
    STATE["busy"] += 1
    try:
        yield "1"
        yield "2"
        yield "3"
    finally:
        STATE["busy"] -= 1
        try:
            STATE["query"] = str(db.fetchval("SELECT current_user"))
        except PermissionError:
            STATE["query"] = "refused"
"""


def test_a_generator_an_aborted_statement_left_runs_its_finally_without_queries(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """What an aborted statement left suspended is closed in the routine's next call, which
    may be another role's: its `finally` runs there (module state it restores is restored:
    it was skipped, and the state stayed as the abandoned call left it), and its queries
    are refused (they would run as that role). So are those of a generator PostgreSQL
    closes as its statement ends."""
    _abandoned_by_student(cont, tmp_path, ABANDONED, "SELECT 1 / (abandon.rows(false)::int - 2)")
    assert cont.execute("SELECT abandon.rows(true)").fetchall() == [("0 refused",)]
    # a call whose statement needs no more rows (LIMIT) runs its finally in its own call,
    # from PostgreSQL's cleanup of the statement, where no PL/Python function runs: a query
    # there was an error raised through the interpreter's frames, and is refused now
    cont.execute("RESET ROLE")
    assert cont.execute("SELECT abandon.rows(false) LIMIT 1").fetchall() == [("1",)]
    assert cont.execute("SELECT abandon.rows(true)").fetchall() == [("0 refused",)]


CURSORS = """
from collections.abc import Iterator

from pyfuncs import db, stored_function

KEPT = []


@stored_function(schema="curs", roles=["student", "manager"])
def rows(n: int) -> Iterator[int]:
    for r in db.cursor("SELECT g FROM generate_series(1, $1) g", [n], batch=10):
        yield r["g"]


@stored_function(schema="curs", roles=["student", "manager"])
def keep(close: bool) -> str:
    if close:
        try:
            next(KEPT[-1])
        except RuntimeError as exc:
            read = str(exc)
        KEPT.pop().close()
        return "closed: " + read
    kept = db.cursor("SELECT g FROM generate_series(1, 10) g", batch=1)
    next(kept)
    KEPT.append(kept)
    return "kept"


@stored_function(schema="curs", roles=["student", "manager"])
def work() -> str:
    return str(db.fetchval("SELECT current_user"))
"""
PORTALS = "SELECT name FROM pg_cursors WHERE name LIKE 'pyfuncs_cursor_%'"


@pytest.mark.parametrize("how", ["aborted", "rolled_back_to_a_savepoint", "kept_by_the_routine"])
def test_a_cursor_whose_portal_another_took_is_never_closed_or_freed(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str
) -> None:
    """PL/Python finds a cursor's portal by name to close or free it, and unpinning a
    portal of that name that is not its own raises an error through the interpreter's
    frames. A red team's statement ended with a routine's cursor open (its portal dropped),
    declared a cursor of the same name and had the routine's cursor closed: the next call,
    another role's, crashed. A routine's cursors are SQL cursors now, read and closed only
    while the subtransaction they were declared in is under way."""
    (tmp_path / "curs_mod.py").write_text(CURSORS)
    deploying.deploy(cont, str(tmp_path / "curs_mod.py"))
    cont.execute("SET ROLE student")
    cont.execute("BEGIN")
    if how == "rolled_back_to_a_savepoint":
        cont.execute("SAVEPOINT s")
    if how == "kept_by_the_routine":
        assert cont.execute("SELECT curs.keep(false)").fetchone() == ("kept",)
    else:
        cont.execute("DECLARE c CURSOR FOR SELECT curs.rows(100)")
        assert cont.execute("FETCH 1 FROM c").fetchone() == (1,)
    (name,) = cont.execute(PORTALS).fetchone() or ("",)
    if how == "aborted":
        with pytest.raises(psycopg.errors.DivisionByZero):
            cont.execute("SELECT 1 / 0")
    if how == "rolled_back_to_a_savepoint":
        cont.execute("ROLLBACK TO SAVEPOINT s")
    else:
        cont.execute("ROLLBACK")
        cont.execute("BEGIN")
    cont.execute(sql.SQL("DECLARE {} CURSOR FOR SELECT 7").format(sql.Identifier(name)))
    if how == "kept_by_the_routine":
        said = cont.execute("SELECT curs.keep(true)").fetchone()
        assert said is not None and "is read in the transaction" in said[0], said
    else:  # (what the aborted statement left is closed in the routine's next call)
        assert cont.execute("SELECT curs.rows(2)").fetchall() == [(1,), (2,)]
    # the role's own cursor of that name is untouched, and the next call runs as it should
    assert cont.execute(sql.SQL("FETCH 1 FROM {}").format(sql.Identifier(name))).fetchone() == (7,)
    cont.execute("COMMIT")
    cont.execute("RESET ROLE")
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT curs.work(), curs.work()").fetchone() == ("manager", "manager")


DELEGATING = """
from collections.abc import Iterator

from pyfuncs import db, stored_function

LOG = ["a", "b", "c"]


class Holder:
    def __init__(self) -> None:
        self.close = LOG.pop  # what Python would close a generator delegating to it with

    def __iter__(self) -> "Holder":
        return self

    def __next__(self) -> str:
        return "1"


@stored_function(schema="delegating", roles=["student", "manager"])
def numbers(logged: bool) -> Iterator[str]:
    if logged:  # (one routine: each routine of a module has the module's state of its own)
        yield str(len(LOG))
        return
    yield "2"
    yield from Holder()


@stored_function(schema="delegating", roles=["student", "manager"])
def other() -> int:
    return sum(1 for _ in db.cursor("SELECT 1"))  # (closes what aborted statements left)
"""


def test_a_generator_delegates_only_to_items_of_an_object(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """Python closes what a generator delegates to (`yield from x`) by the `close` it finds
    on x, its own attributes first: a red team's object kept a C function as its `close`,
    called in another role's call when that generator was closed there. A generator
    delegates to anything but a generator only for its items."""
    _deploy_all(cont, tmp_path, {"delegating_mod": DELEGATING})
    cont.execute("SET ROLE student")
    with pytest.raises(psycopg.errors.DivisionByZero):
        cont.execute("SELECT 1 / (delegating.numbers(false)::int - 1)")
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT delegating.other()").fetchone() == (1,)
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT delegating.numbers(true)").fetchone() == ("3",)


FIRST_DECIMAL = """
from collections.abc import Iterator
from typing import Any

from pyfuncs import stored_function

KEPT: list[Any] = []


def _hold(decimal: Any) -> Iterator[Any]:
    with decimal.localcontext(prec=3) as context:
        yield context


@stored_function(schema="first", roles=["student", "manager"])
def plant() -> str:
    import decimal  # (the backend's first import of decimal: in this call)

    held = _hold(decimal)
    context = next(held)
    context.traps[decimal.Inexact] = True
    KEPT.append(held)
    return "planted"
"""

PLAIN_DECIMAL = """
CREATE FUNCTION public.plain_divide(a numeric, b numeric) RETURNS text LANGUAGE plpython3u
AS $$
import decimal
return f"{a / b} {decimal.getcontext().prec}"
$$
"""


def test_a_call_that_imports_decimal_changes_no_other_functions_context(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """A call ran in the backend's own context until decimal had been imported: one that
    imported it itself, and kept a `localcontext` open in a generator, left its precision
    and traps to PL/Python's other functions (a red team read another role's flags)."""
    _deploy_all(cont, tmp_path, {"first_mod": FIRST_DECIMAL})
    cont.execute(PLAIN_DECIMAL)
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT first.plant()").fetchone() == ("planted",)
    cont.execute("RESET ROLE")
    assert cont.execute("SELECT public.plain_divide(100, 7)").fetchone() == (
        "14.28571428571428571428571429 28",
    )  # fmt: skip


# a chain of C's and the standard library's code that runs what a routine chose: Python
# closes a suspended generator's delegate by the `close` it finds on it (a C method that
# computes in the current decimal context: round thirty-five's sorted a list with a
# UserList in it whose `_UserList__cast`, which its comparisons call, kept the context;
# a routine's class may no longer set a base's private attributes)
CHAIN = """
KEPT: list[object] = []


class Delegate:
    def __iter__(self) -> "Delegate":
        return self

    def __next__(self) -> int:
        return 1
"""

COLLECTED = (
    """
import collections
import collections.abc
import decimal

from pyfuncs import stored_function
"""
    + CHAIN
    + """

@stored_function(schema="collected", roles=["student", "manager"])
def plant(read: bool) -> str:
    if read:  # (one routine: each routine of a module has the module's state of its own)
        return str(len(KEPT))
    for _ in range(5):
        delegate = Delegate()
        # what Python closes a suspended generator's delegate with, as the collector
        # finalizes it: a square root, inexact, in the context of the call under way
        delegate.close = decimal.Decimal(2).sqrt
        keys = iter(collections.abc.KeysView(delegate))  # (yield from its mapping)
        next(keys)
        delegate.loop = keys  # a cycle: only the collector finalizes it
    return "planted"


@stored_function(schema="collected", roles=["student", "manager"])
def compute(n: int) -> str:
    with decimal.localcontext(prec=9) as context:
        context.traps[decimal.DivisionByZero] = False
        made = [(i, str(i)) for i in range(20_000)]  # (the collector runs)
        return f"{decimal.Decimal(n) / 0} {len(made)} {context.flags[decimal.Inexact]}"
"""
)


def test_the_collectors_finalizers_see_no_calls_decimal_context(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """The collector finalizes what it finds in whatever call is under way: a red team's
    suspended generator, finalized there, had Python close its delegate by a chain of C's
    and the standard library's code (no code of the routine's to refuse) that copied that
    call's decimal context (precision, flags, traps) for the red team to read; C's code
    computing in it raises that call's flags. While the collector runs, no call is under
    way and decimal's context is a clean one (and such a generator is not finalized)."""
    _deploy_all(cont, tmp_path, {"collected_mod": COLLECTED})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT collected.plant(false)").fetchone() == ("planted",)
    cont.execute("SET ROLE manager")
    for n in range(5):
        assert cont.execute("SELECT collected.compute(%s)", [n + 1]).fetchone() == (
            "Infinity 20000 False",
        )  # fmt: skip
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT collected.plant(true)").fetchone() == ("0",)


APART = (
    """
import collections
import collections.abc
import decimal
import typing
from collections.abc import Iterator

from pyfuncs import stored_function
"""
    + CHAIN
    + """

class Dying:
    def __del__(self) -> None:
        KEPT.append(decimal.Decimal(2).sqrt())
        try:
            raise  # the exception being handled, if any
        except BaseException as exc:
            KEPT.append("the-calls" if isinstance(exc, ValueError) else "none")


def _suspended() -> object:
    # Python closes a suspended generator's delegate with the `close` it finds on it: a
    # square root in the current context
    delegate = Delegate()
    delegate.close = decimal.Decimal(2).sqrt
    keys = iter(collections.abc.KeysView(delegate))  # (yield from its mapping)
    next(keys)
    return keys


def _finally() -> Iterator[None]:
    try:
        yield
    finally:
        KEPT.append(decimal.Decimal(2).sqrt())


@stored_function(schema="apart", roles=["student", "manager"])
def finalized(how: str) -> str:
    KEPT.clear()
    with decimal.localcontext(prec=9) as context:
        if how == "generator":
            dropped = _finally()
            next(dropped)
            del dropped
        elif how == "del":
            dropped = Dying()
            del dropped
        elif how == "handling":
            try:
                raise ValueError("the call's")
            except ValueError:
                dropped = Dying()
                del dropped
        inexact = context.flags[decimal.Inexact]
    return f"{' '.join(map(str, KEPT))} {inexact}"


@stored_function(schema="apart", roles=["student", "manager"])
def typed(how: str) -> str:
    KEPT.clear()
    if how in ("class", "int", "staticmethod", "function", "exception"):
        held = {
            "class": lambda: type("Held", (), {"kept": _suspended()}), "int": lambda: int,
            "staticmethod": lambda: staticmethod(Dying()), "function": lambda: _suspended,
            "exception": lambda: ValueError(Dying()),
        }[how]()  # fmt: skip
        return str(typing.Literal[held] is typing.Literal[held])  # (cached: the same)
    dying = Dying()
    if how == "object":
        typing.Optional[dying]
        typing.Literal[dying, 1]
    elif how == "annotated":
        typing.Annotated[int, dying]
    elif how == "alias":
        typing.Optional[list[dying]]
    del dying
    return str(len(KEPT))  # (Dying's __del__ adds two)
"""
)


CLOSING = """
import collections
import collections.abc
import heapq
import zoneinfo
from collections.abc import Iterator

from pyfuncs import stored_function

CLOSED: list[object] = []


class Delegate:
    def __iter__(self) -> "Delegate":
        return self

    def __next__(self) -> int:
        return 1

    def __reversed__(self) -> "Delegate":
        return self


class Zones(zoneinfo.ZoneInfo):  # (C gives the class a WeakValueDictionary of its own)
    pass


class Value:
    pass


KEY_VALUES = [Value(), Value()]
HASHED: list[str] = []


class Key:
    def __hash__(self) -> int:
        HASHED.append("hashed")
        return id(self)


class Looked(Delegate):
    @property
    def close(self) -> object:  # (looked up: run)
        CLOSED.append("looked up")
        return CLOSED.clear


class Ordered(collections.OrderedDict):
    def __reversed__(self) -> Delegate:
        return self["delegate"]


def _mine(inner: Iterator[int]) -> Iterator[int]:
    yield from inner  # (a routine's generator delegating to the standard library's)


@stored_function(schema="closing", roles=["student", "manager"])
def dropped(how: str) -> str:
    CLOSED.clear()
    delegate = Looked() if how == "property" else Delegate()
    if how != "property":
        delegate.close = CLOSED.clear if how == "plain" else lambda: CLOSED.append("closed")
    CLOSED.append("kept")
    if how == "guarded":  # a WeakValueDictionary's items(): `with _IterationGuard(self)`
        guarded = Zones._weak_cache
        guarded[Key()] = KEY_VALUES[0]
        guarded[Key()] = KEY_VALUES[1]
        suspended = iter(guarded.items())
        next(suspended)
        KEY_VALUES.pop()  # freed while it iterates: the removal of its entry waits
        HASHED.clear()
        del suspended  # (its guard's exit would commit the removal, hashing the key)
        return " ".join(CLOSED + HASHED)
    if how in ("keys", "plain", "mine", "property"):
        suspended = iter(collections.abc.KeysView(delegate))  # (yield from its mapping)
    elif how == "merge":
        suspended = heapq.merge(delegate)  # (yield from the last iterator left)
        next(suspended)
    else:
        suspended = reversed(Ordered(delegate=delegate).keys())
    if how == "mine":
        suspended = _mine(suspended)
    next(suspended)
    del suspended
    return " ".join(map(str, CLOSED))
"""


@pytest.mark.parametrize(
    "how", ["keys", "plain", "merge", "reversed", "mine", "property", "guarded"]
)
def test_a_generator_is_not_closed_by_a_close_its_delegate_was_given(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str
) -> None:
    """Python closes what a suspended generator delegates to (`yield from x`) by the `close`
    it finds on `x`: a generator of the standard library's (KeysView's iterator,
    heapq.merge, an OrderedDict's reversed keys) delegating to a routine's object called a
    C function the routine had set there, wherever the generator was finalized (red teams:
    in another role's call, with its decimal context; sorting for as long as it liked). A
    generator whose innermost delegate is not a generator is not finalized."""
    _deploy_all(cont, tmp_path, {"closing_mod": CLOSING})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT closing.dropped(%s)", [how]).fetchone() == ("kept",)


ABORTED = """
from collections.abc import Iterator

from pyfuncs import stored_function


@stored_function(schema="aborted", roles=["student", "manager"])
def numbers() -> Iterator[str]:
    yield "2"
    yield "3"


@stored_function(schema="aborted", roles=["student", "manager"])
def others(n: int) -> Iterator[int]:
    yield from range(n)
"""

KEPT_SUSPENDED = """
CREATE FUNCTION public.kept_suspended() RETURNS int LANGUAGE plpython3u AS $$
import sys
return len(next(m for n, m in sys.modules.items() if n.endswith("_pg.watchdog")).ORPHANS)
$$
"""


def test_what_an_aborted_statement_left_is_closed_only_in_its_routines_call(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """A set-returning routine's generator an aborted statement left suspended is closed
    in that routine's next set-returning call, inside it: closed at the next one in the
    backend, another role's, the finalizers of what it held ran there (a red team's, a C
    sort for as long as it liked, past that call's timeout_ms)."""
    _deploy_all(cont, tmp_path, {"aborted_mod": ABORTED})
    cont.execute(KEPT_SUSPENDED)
    cont.execute("SET ROLE student")
    with pytest.raises(psycopg.errors.DivisionByZero):
        cont.execute("SELECT 1 / (aborted.numbers()::int - 2)")
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT count(*) FROM aborted.others(5)").fetchone() == (5,)
    cont.execute("RESET ROLE")
    assert cont.execute("SELECT public.kept_suspended()").fetchone() == (1,)
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT count(*) FROM aborted.numbers()").fetchone() == (2,)
    cont.execute("RESET ROLE")
    assert cont.execute("SELECT public.kept_suspended()").fetchone() == (0,)


OWED = """
import zoneinfo

from pyfuncs import stored_function

HASHED: list[str] = []
CALLED: list[str] = []
KEPT: list[object] = []


class Zones(zoneinfo.ZoneInfo):  # (C gives the class a WeakValueDictionary of its own)
    pass


class Key:
    def __hash__(self) -> int:  # (run as its entry is removed)
        HASHED.append("hashed")
        return 1


class Value:
    pass


def _called(reference: object) -> None:
    CALLED.append("called")


@stored_function(schema="owed", roles=["student", "manager"])
def plant(how: str) -> str:
    cache = Zones._weak_cache
    if how == "read":
        return f"{len(cache.data)} {' '.join(HASHED + CALLED)}"
    value = Value()
    if how == "dictionary":
        cache[Key()] = value  # its callback removes the entry, hashing the key
    else:  # a weak reference of the dictionary's class, with a callback of the routine's
        cache["probe"] = value
        reference = type(cache.data["probe"])
        del cache["probe"]
        KEPT.append(reference(value, _called, None))
    value.loop = value  # a cycle: only the collector frees it
    HASHED.clear()
    return "planted"


@stored_function(schema="owed", roles=["student", "manager"])
def compute(n: int) -> int:
    return len([(i, str(i)) for i in range(20_000)]) + n  # (the collector runs)
"""


@pytest.mark.parametrize(("how", "read"), [("dictionary", "0 hashed"), ("reference", "0 called")])
def test_a_weak_references_callback_runs_only_in_its_routines_calls(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str, read: str
) -> None:
    """Python runs a weak reference's callback as its object is freed, wherever that is: a
    red team's WeakValueDictionary (a ZoneInfo subclass's cache) removed an entry there
    whose key hashed for as long as it liked, as the collector freed the value in another
    role's call. A callback of a reference a routine made runs only in that routine's
    calls: freed in another's, it runs at the start of the routine's next call."""
    _deploy_all(cont, tmp_path, {"owed_mod": OWED})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT owed.plant(%s)", [how]).fetchone() == ("planted",)
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT owed.compute(1)").fetchone() == (20_001,)
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT owed.plant('read')").fetchone() == (read,)


SQRT_2 = "1.414213562373095048801688724"  # at decimal's default precision, 28


@pytest.mark.parametrize(
    ("how", "finalized"),
    [
        ("generator", f"{SQRT_2} False"),  # (the flags: sqrt of 2 is inexact)
        ("del", f"{SQRT_2} none False"),
        ("handling", f"{SQRT_2} none False"),  # (no exception to re-raise)
    ],
)
def test_finalizers_run_apart_from_the_call_under_way(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str, finalized: str
) -> None:
    """An object is finalized where its last reference goes, which can be another role's
    call (a shared cache's eviction): what its finalizer runs, C's and the standard
    library's code on objects the routine chose, ran with that call's decimal context
    (precision, flags) and saw the exception it was handling. Finalizers run in a context
    of their own: decimal's default context there, no exception being handled."""
    _deploy_all(cont, tmp_path, {"apart_mod": APART})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT apart.finalized(%s)", [how]).fetchone() == (finalized,)


@pytest.mark.parametrize(
    ("how", "freed"),
    [("object", "2"), ("annotated", "2"), ("alias", "2"), ("class", "False"), ("int", "True"),
     ("staticmethod", "False"), ("function", "False"), ("exception", "False")],
)  # fmt: skip
def test_typings_caches_keep_nothing_of_a_routines(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str, freed: str
) -> None:
    """typing keeps what its subscriptions make in caches every call shares, and lets it go
    in whichever call evicts it: a red team's object, kept so, was freed in another role's
    call. A subscription of anything of a routine's, however deep in it (a staticmethod's
    function, an exception's arguments: state not in a dict), is not cached: it is freed
    in the call that lets go of it. What every call shares still is."""
    _deploy_all(cont, tmp_path, {"apart_mod": APART})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT apart.typed(%s)", [how]).fetchone() == (freed,)


TOLD = """
import decimal
from collections.abc import Iterator
from typing import Any

from pyfuncs import stored_function

KEPT: list[Any] = []


def _hold() -> Iterator[None]:
    with decimal.localcontext(prec=3):
        yield


class Told(Exception):
    def __str__(self) -> str:  # (run as the error is told)
        held = _hold()
        next(held)
        KEPT.append(held)
        return "told"


@stored_function(schema="told", roles=["student", "manager"])
def fails() -> int:
    raise Told()
"""


def test_an_error_is_told_in_its_calls_context(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """What a routine's exception runs as it is told (its `__str__`) runs in the call's
    context: in the backend's, a decimal context it left open stayed for PL/Python's other
    functions."""
    _deploy_all(cont, tmp_path, {"told_mod": TOLD})
    cont.execute(PLAIN_DECIMAL)
    cont.execute("SET ROLE student")
    with pytest.raises(psycopg.Error, match="told"):
        cont.execute("SELECT told.fails()")
    cont.execute("RESET ROLE")
    assert cont.execute("SELECT public.plain_divide(100, 7)").fetchone() == (
        "14.28571428571428571428571429 28",
    )  # fmt: skip


OVERLOADS = """
import typing

from pyfuncs import stored_function

SEEN: list[object] = []


class Key:
    def __hash__(self) -> int:  # (in its own call, as typing stores it)
        return hash("routine:pyfuncs_user.ov_victim")

    def __eq__(self, other: object) -> bool:  # (in whichever call compares it)
        SEEN.append(other)
        return False


KEY = Key()


class Named:
    def __getattribute__(self, name: str) -> object:  # what typing.overload reads
        if name == "__module__":
            return KEY
        raise AttributeError(name)


@stored_function(schema="ov", roles=["student", "manager"])
def plant() -> str:
    typing.overload(Named())
    return f"planted, seen {len(SEEN)}"
"""
VICTIM = """
import typing

from pyfuncs import stored_function


@typing.overload
def twice(x: int) -> int: ...
@typing.overload
def twice(x: str) -> str: ...
def twice(x):
    return x * 2


@stored_function(schema="ov", roles=["student", "manager"])
def victim() -> str:
    return twice("ok")
"""


def test_typing_overload_keeps_nothing_of_a_routines(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """typing.overload keeps what it is given in a registry every call shares, keyed by
    what the function says its module is: a red team's said an object of its own, which
    compared itself with the keys other modules' calls looked up there (its `==` kept
    them, from another role's call). Routines get an overload that keeps nothing."""
    _deploy_all(cont, tmp_path, {"ov_plant": OVERLOADS, "ov_victim": VICTIM})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT ov.plant()").fetchone() == ("planted, seen 0",)
    cont.execute("RESET ROLE")
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT ov.victim()").fetchone() == ("okok",)
    cont.execute("RESET ROLE")
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT ov.plant()").fetchone() == ("planted, seen 0",)


ENUM_FLAGS = """
import enum

from pyfuncs import stored_function


class Sly(int):
    pass


class Own(enum.IntFlag):  # (a routine's own: its map of values is its own too)
    A = 1
    B = 2


# (0 is in no map of enum's until a call asks for it; 3 is a composite of Own's)
FLAGS = [(enum.IntFlag, 0), (enum.Flag, 0), (Own, 0), (Own, 3)]


def kinds(values: list[object]) -> str:
    return " ".join("int" if type(value) is int else "other" for value in values)


@stored_function(schema="enumflags", roles=["student"])
def plant() -> str:
    return kinds([kind(Sly(value)).value for kind, value in FLAGS])


@stored_function(schema="enumflags", roles=["manager"])
def seen() -> str:
    return kinds([kind(value).value for kind, value in FLAGS])
"""


def test_enum_flags_keep_only_plain_values(cont: psycopg.Connection[Any], tmp_path: Any) -> None:
    """enum.Flag keeps what it is called with, and the member it makes of it, in its
    class's map of values: a class every call shares for enum's Flag and IntFlag. A red
    team's int subclass was kept there, and another role's `IntFlag(0)` got back a member
    whose value was the routine's object. The value kept is a plain int."""
    _deploy_all(cont, tmp_path, {"enum_flags_mod": ENUM_FLAGS})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT enumflags.plant()").fetchone() == ("int int int int",)
    cont.execute("RESET ROLE")
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT enumflags.seen()").fetchone() == ("int int int int",)


NAMING = """
import collections
import dataclasses
import enum

from pyfuncs import stored_function

SEEN: list[object] = []


class Key:
    pass


def attempt(how: str) -> object:
    if how == "module property":
        class A:
            @property
            def __module__(self) -> object:
                return Key()
        return A
    if how == "module object":
        return type("B", (), {"__module__": Key()})
    if how == "module str subclass":
        class Text(str):
            pass
        return type("C", (), {"__module__": Text("routine:elsewhere")})
    if how == "another routine's module":
        return type("D", (), {"__module__": "routine:pyfuncs_user.ov_victim"})
    if how == "pyfuncs' module":
        return type("E", (), {"__module__": "pyfuncs_pg.db"})
    if how == "qualname object":
        return type("F", (), {"__qualname__": Key()})
    if how == "doc property":
        class G:
            @property
            def __doc__(self) -> object:
                return Key()
        return G
    if how == "a base's private, by type()":
        return type("I", (collections.UserList,), {"_UserList__cast": SEEN.append})
    raise ValueError(how)


def fine() -> str:
    Point = collections.namedtuple("Point", "x y")
    Made = dataclasses.make_dataclass("Made", ["a"])
    Color = enum.Enum("Color", "RED GREEN")

    class Own(collections.UserList):
        "its docstring"
        __kept = 1  # (its own private attribute: _Own__kept)

        def kept(self) -> int:
            return len(self)

    @dataclasses.dataclass
    class Row:
        a: int

    return " ".join(
        [str(Point(1, 2).x), str(Made(3).a), Color.RED.name, str(Own([4]).kept()), str(Row(5))]
    )


@stored_function(schema="naming", roles=["student", "manager"])
def made(how: str) -> str:
    if how == "fine":
        return fine()
    try:
        attempt(how)
    except TypeError as exc:
        return "refused: " + str(exc)
    return "made"
"""


@pytest.mark.parametrize(
    "how",
    ["module property", "module object", "module str subclass", "another routine's module",
     "pyfuncs' module", "qualname object", "doc property", "a base's private, by type()"],
)  # fmt: skip
def test_a_routines_class_names_itself_in_plain_text_and_keeps_its_bases_privates(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str
) -> None:
    """What names a class (its module, qualified name, docstring) is read by code every
    call shares, which may keep it (typing's registry kept a red team's object that way):
    it is plain text, and a module is the class's own or no routine's (dataclasses compile
    a class's methods with the globals of the module it names). A base's private
    attributes are its own code's: UserList's `==` calls `_UserList__cast` with the other
    operand, which a red team's class made C's `list.append`. Common classes are made as
    before."""
    _deploy_all(cont, tmp_path, {"naming_mod": NAMING})
    cont.execute("SET ROLE student")
    answer = cont.execute("SELECT naming.made(%s)", [how]).fetchone()
    assert answer is not None and answer[0].startswith("refused: pyfuncs: "), answer
    assert cont.execute("SELECT naming.made('fine')").fetchone() == (
        "1 3 RED 1 fine.<locals>.Row(a=5)",
    )


@pytest.mark.parametrize(
    ("spelling", "name"),
    [("key._UserList__cast = SEEN.append", "_UserList__cast"),
     ("cast = key._UserList__cast", "_UserList__cast"),
     ("class Cast(collections.UserList):\n    _UserList__cast = SEEN.append", "_UserList__cast"),
     ("del key._UserList__cast", "_UserList__cast"),
     ("Own._abc_impl = Free._abc_impl", "_abc_impl"), ("kept = Own._abc_registry", "_abc_registry"),
     ("class Taking(collections.abc.Mapping):\n    _abc_impl = None", "_abc_impl")],
)  # fmt: skip
def test_another_classes_private_state_is_refused_before_deploy(
    cont: psycopg.Connection[Any], tmp_path: Any, spelling: str, name: str
) -> None:
    """A red team set `_UserList__cast` on an instance (the class check sees classes only)
    and had enum.IntFlag keep it, every call's, in its map of values: another role's call
    got the object back, and its `==` ran C's `list.append` with that call's key. Another
    gave its class under Mapping the abc state (`_abc_impl`, whose registry C trusts) of a
    free abstract class of its own, which had registered str: every role's
    `isinstance("text", Mapping)` was True. Such a name, in any spelling the source can
    have, is refused by the check before deploy and again as the module is compiled."""
    source = (
        "import collections\nimport collections.abc\nSEEN = []\nkey = collections.UserList()\n"
        "class Own(collections.abc.Mapping):\n    pass\n"
        "Free = type(collections.abc.Mapping)('Free', (), {})\n"
        f"{spelling}\n"
    )
    (tmp_path / "private_mod.py").write_text(source)
    with pytest.raises(DefinitionError, match="private-of-another-class"):
        deploying.deploy(cont, str(tmp_path / "private_mod.py"))
    with pytest.raises(SyntaxError, match=name):
        guards.compile_module(source, "private_mod.py")


ABC_PLANT = """
import collections.abc

from pyfuncs import stored_function


def says_yes(cls: object, other: object) -> bool:
    return True


def base(how: str) -> type:
    if how == "hook function":  # (inherited: no abstract class's own namespace has it)
        return type("Hook", (), {"__subclasshook__": classmethod(says_yes)})
    if how == "hook data":
        return type("Hook", (), {"__subclasshook__": None})
    return type("Hook", (), {"__subclasses__": None})


KEPT: list[type] = []


@stored_function(schema="abcplant", roles=["student"])
def plant(how: str) -> str:
    class Planted(base(how), collections.abc.Mapping):
        def __getitem__(self, key: object) -> object:
            raise KeyError(key)

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(())

        def __len__(self) -> int:
            return 0

    KEPT.append(Planted)
    try:  # (in its own call, of classes no call has asked about: the answers are cached
        # for every call)
        return str([isinstance(x, collections.abc.Mapping)
                    for x in (b"x", 1.5, range(1), frozenset())])
    except Exception as exc:
        return "raised " + str(exc)
"""
ABC_VICTIM = """
import collections
import collections.abc

from pyfuncs import db, stored_function


@stored_function(schema="abcvictim", roles=["manager"])
def check() -> str:
    class Fresh:  # (a class no call has asked about)
        pass

    try:
        return str([
            [isinstance(x, collections.abc.Mapping)
             for x in (b"x", 1.5, range(1), frozenset(), Fresh())],
            sorted(collections.Counter([b"ab", b"ab"]).items()),
            db.fetchval("SELECT $1::text", [[["k", "v"]]]),
        ])
    except Exception as exc:
        return "raised " + repr(exc)
"""


@pytest.mark.parametrize("how", ["hook function", "hook data", "subclasses data"])
def test_a_routines_class_under_a_shared_abstract_class_decides_nothing_for_other_calls(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str
) -> None:
    """isinstance against a class every call shares (collections.abc.Mapping) walks its
    subclasses, and caches the answer for every call: a routine's class there answered
    with a `__subclasshook__` or `__subclasses__` it inherits from a plain class (ABCMeta
    checks an abstract class's own namespace only), or with another class's registry (a
    red team's made every role's `isinstance("text", Mapping)` True, and
    collections.Counter and db count and send differently); answered in its own call, for
    every call after. The walk of a shared class asks none of a routine's classes."""
    _deploy_all(cont, tmp_path, {"abc_plant_mod": ABC_PLANT, "abc_victim_mod": ABC_VICTIM})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT abcplant.plant(%s)", [how]).fetchone() == (
        "[False, False, False, False]",
    )
    cont.execute("RESET ROLE")
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT abcvictim.check()").fetchone() == (
        """[[False, False, False, False, False], [(b'ab', 2)], '[["k", "v"]]']""",
    )


GENERATED = """
import dataclasses

from pyfuncs import stored_function

SEEN: list[object] = []
# the names dataclasses' methods look up: the module's own, not theirs
NotImplemented = True
hash = len
type = SEEN.append


@dataclasses.dataclass(frozen=True, order=True)
class Row:
    a: int = 1


Made = dataclasses.make_dataclass("Made", [("b", int)], frozen=True)


@stored_function(schema="generated", roles=["student"])
def probe() -> str:
    row, made = Row(), Made(2)
    try:
        row.a = 3
        refused = "assigned"
    except dataclasses.FrozenInstanceError:
        refused = "frozen"
    try:
        below = str(row < 5)
    except TypeError:
        below = "not comparable"
    same = made == Made(2)
    return f"{row == 5} {below} {Row(2) > row} {refused} {len(SEEN)} {made!r} {same}"
"""


def test_dataclasses_methods_read_builtins_not_the_modules_names(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """dataclasses compiles the methods it makes with the globals of the class's module: a
    red team rebound `hash`, `type` and `NotImplemented` there, and its frozen class's
    `__setattr__` called C's `list.append` of its choosing. They read the builtins only."""
    _deploy_all(cont, tmp_path, {"generated_mod": GENERATED})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT generated.probe()").fetchone() == (
        "False not comparable True frozen 0 Made(b=2) True",
    )


FIELDS = '''
import collections
import collections.abc
import dataclasses
import decimal

from pyfuncs import stored_function

KEPT = []


@dataclasses.dataclass(eq=False, repr=False)
class Plain:
    """A dataclass of the module's own: its field is named like Context's flags."""

    flags: object = None


@dataclasses.dataclass
class Named:
    index: int = 0


@dataclasses.dataclass
class Indexed:
    """A dataclass of the module's own: its field is named like deque's index."""

    index: object = None


@dataclasses.dataclass
class Setting:
    setdefault: object = None


def _init(self, flags=None, setdefault=None):
    self.data, self.flags = {}, flags
    KEPT.append(setdefault)


def _reduce_ex(self, protocol):
    # the state a copy is given: dataclass fields of its own (a field named like
    # MutableMapping's setdefault, which a UserDict has)
    fields = {"setdefault": dataclasses.fields(Setting)[0]}
    return Copied, (), {"data": {}, "__dataclass_fields__": fields}


# a dataclass under UserDict whose copies (UserDict.copy: copy.copy, by __reduce_ex__) are
# given fields of their own
Copied = type("Copied", (Plain, collections.UserDict),
              {"__init__": _init, "__copy__": None, "__reduce_ex__": _reduce_ex,
               "__module__": __name__})


def attempt(how: str) -> object:
    if how == "decorator, a C type's attribute":
        @dataclasses.dataclass(init=False, repr=False, eq=False)
        class C(decimal.Context):
            flags: object
        return C
    if how == "decorator, a default read off deque":
        @dataclasses.dataclass(init=False, repr=False, eq=False)
        class D(collections.deque):
            index: object
        return dataclasses.fields(D)[0].default
    if how == "decorator, the metaclass's attribute":
        @dataclasses.dataclass(init=False, repr=False, eq=False)
        class R(collections.abc.Sized):
            register: object

            def __len__(self):
                return 0
        return dataclasses.fields(R)[0].default
    if how == "make_dataclass with bases":
        return dataclasses.make_dataclass("M", ["traps"], bases=(decimal.Context,))
    if how == "make_dataclass, another class's private":
        U = dataclasses.make_dataclass("U", ["data", "_UserList__cast"],
                                       bases=(collections.UserList,), eq=False, repr=False)
        u = U([], KEPT.append)
        u == ["compared", "with"]
        return KEPT
    if how == "make_dataclass, abc's state":
        return dataclasses.make_dataclass("A", ["_abc_impl"])
    if how == "make_dataclass, a frame's attribute":
        return dataclasses.make_dataclass("F", ["gi_frame"])
    if how == "a later subclass":
        class E(Plain, decimal.Context):
            pass
        return dataclasses.replace(E()).flags
    if how == "a later subclass, by type()":
        E = type("E", (Plain, decimal.Context), {})
        return E() == E()
    if how == "a later subclass, by make_dataclass":
        return dataclasses.make_dataclass("E", ["other"], bases=(Indexed, collections.deque))
    if how == "fields given by type()":
        fields = {"flags": dataclasses.fields(Plain)[0]}
        return type("G", (decimal.Context,), {"__dataclass_fields__": fields})
    if how == "fields given as a property":
        return type("H", (), {"__dataclass_fields__": property(lambda self: {})})
    if how in ("replace", "asdict", "astuple"):
        copy = Copied().copy()
        {"replace": dataclasses.replace, "asdict": dataclasses.asdict,
         "astuple": dataclasses.astuple}[how](copy)
        return KEPT
    raise ValueError(how)


def fine() -> str:
    @dataclasses.dataclass(frozen=True, order=True)
    class Counted:
        count: int
        index: int = 0
        flags: str = "f"
        traps: str = "t"
        register: str = "r"
        _own: int = 7

    @dataclasses.dataclass(slots=True)
    class Slotted:
        data: list

    @dataclasses.dataclass
    class Listed(collections.UserList):
        data: list

    @dataclasses.dataclass
    class Failure(Exception):
        code: int

    class Later(Counted):
        pass

    Made = dataclasses.make_dataclass("Made", [("index", int, 1)], bases=(Counted,), frozen=True)
    one = Counted(1)
    return " ".join(map(str, [
        dataclasses.replace(one, index=2).index, len(dataclasses.asdict(one)),
        dataclasses.astuple(one)[-1], one == Counted(1), one < Counted(2),
        hash(one) == hash(Counted(1)), Slotted([1]).data, Listed([2]).count(2),
        Failure(3).code, Later(4).count, Made(5).index, dataclasses.astuple(Made(6))[:2],
        dataclasses.replace(Plain(8)).flags, dataclasses.fields(Named)[0].default,
    ]))


@stored_function(schema="fields", roles=["student"])
def made(how: str) -> str:
    if how == "fine":
        return fine()
    try:
        got = attempt(how)
    except TypeError as exc:
        return "refused: " + str(exc)
    return f"got {got!r}"
'''


@pytest.mark.parametrize(
    ("how", "refused"),
    [("decorator, a C type's attribute", "field 'flags' of the class 'C' would read Context"),
     ("decorator, a default read off deque", "field 'index' of the class 'D' would read deque"),
     ("decorator, the metaclass's attribute",
      "field 'register' of the class 'R' would read ABCMeta.register"),
     ("make_dataclass with bases", "field 'traps' of the class 'M' would read Context"),
     ("make_dataclass, another class's private",
      "field '_UserList__cast' of the class 'U' is spelled as a class's private attribute"),
     ("make_dataclass, abc's state", "field '_abc_impl' of the class 'A' is spelled as"),
     ("make_dataclass, a frame's attribute", "field 'gi_frame' of the class 'F' is the name"),
     ("a later subclass", "field 'flags' of the class 'E' would read Context"),
     ("a later subclass, by type()", "field 'flags' of the class 'E' would read Context"),
     ("a later subclass, by make_dataclass", "field 'index' of the class 'E' would read deque"),
     ("fields given by type()", "field 'flags' of the class 'G' would read Context"),
     ("fields given as a property", "a class's dataclass fields must be a plain dict"),
     ("replace", "a Copied's dataclass fields are not its class's"),
     ("asdict", "a Copied's dataclass fields are not its class's"),
     ("astuple", "a Copied's dataclass fields are not its class's")],
)  # fmt: skip
def test_a_dataclass_field_reads_no_attribute_of_a_class_every_call_shares(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str, refused: str
) -> None:
    """dataclasses reads a field by its name with the real getattr, past the runtime's
    checked reads: a red team's dataclass under decimal.Context with a field `flags` had
    `replace` hand it C's SignalDict (its context freed, it wrote into memory another role's
    call then used, which crashed), one under deque with a field `index` got deque's raw
    `index` as the field's default (gh-115243, a use-after-free), and make_dataclass's field
    `_UserList__cast` set UserList's private attribute to C's `list.append`. A field may not
    be named as an attribute of a class the module did not make (its C `__getattribute__`
    serves Context's `flags`; a metaclass's, `register`, is a class's default), nor as a
    frame attribute, another class's private one or abc's state: checked by `dataclass` and
    `make_dataclass` (its bases too) before dataclasses reads a default, when a routine's
    class inherits fields (a later subclass changes what a name finds first) or is given
    them, and for the object `replace`, `asdict` and `astuple` read, whose fields must be its
    class's (a copy's state gave one a dict of its own). Ordinary dataclasses, fields
    named `index`, `count`, `flags`, `data` or private ones of their own among them, work
    as before."""
    _deploy_all(cont, tmp_path, {"fields_mod": FIELDS})
    cont.execute("SET ROLE student")
    answer = cont.execute("SELECT fields.made(%s)", [how]).fetchone()
    assert answer is not None and answer[0].startswith("refused: pyfuncs: "), answer
    assert refused in answer[0], answer
    assert cont.execute("SELECT fields.made('fine')").fetchone() == (
        "2 6 7 True True True [1] 1 3 4 1 (6, 1) 8 0",
    )


NAMES = """
import collections.abc
import enum
import statistics
import typing

from pyfuncs import stored_function


class Name(str):
    pass


class Own(collections.abc.Mapping):
    def __getitem__(self, key: object) -> object:
        raise KeyError(key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(())

    def __len__(self) -> int:
        return 0


class Notes:
    def __init__(self) -> None:
        self.text: list[str] = []

    def write(self, text: str) -> None:
        self.text.append(text)


def given() -> object:
    return statistics.mean


@stored_function(schema="names", roles=["student"])
def attempt(how: str) -> str:
    try:
        if how == "name str subclass":
            type(Name("P"), (), {})
        elif how == "abstract class named by a str subclass":
            type(Name("P"), (collections.abc.Mapping,), {})
        elif how == "enum named by a str subclass":
            enum.Enum(Name("P"), "A B")
        elif how == "metaclass private":
            Own._dump_registry(file=Notes())
        elif how == "no_type_check_decorator":
            return str(typing.no_type_check_decorator(given)() is statistics.mean)
    except (TypeError, AttributeError) as exc:
        return "refused: " + str(exc)[:60]
    return "done"
"""


@pytest.mark.parametrize(
    "how",
    ["name str subclass", "abstract class named by a str subclass", "enum named by a str subclass",
     "metaclass private"],
)  # fmt: skip
def test_a_routine_names_its_classes_in_plain_text_and_reads_no_metaclass_private(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str
) -> None:
    """typing's protocol check compared a routine class's `__name__`, a str subclass, in
    another role's isinstance; and ABCMeta's `_dump_registry`, read through a routine's own
    abstract class, printed its caches, where other roles' checks landed."""
    _deploy_all(cont, tmp_path, {"names_mod": NAMES})
    cont.execute("SET ROLE student")
    answer = cont.execute("SELECT names.attempt(%s)", [how]).fetchone()
    assert answer is not None and answer[0].startswith("refused: pyfuncs: "), answer


def test_typing_no_type_check_decorator_marks_nothing(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """typing's no_type_check_decorator called typing's own no_type_check on what the
    decorator made, past the stand-in, and marked a function every call shares (a red
    team's: statistics.mean)."""
    _deploy_all(cont, tmp_path, {"names_mod": NAMES})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT names.attempt('no_type_check_decorator')").fetchone() == ("True",)
    cont.execute("RESET ROLE")
    cont.execute(
        "DO $$\nimport statistics\nif hasattr(statistics.mean, '__no_type_check__'):\n"
        "    plpy.error('marked')\n$$ "
        "LANGUAGE plpython3u"
    )


PORTAL = """
from typing import Any, Iterator

from pyfuncs import db, stored_function


@stored_function(schema="portal", roles=["student", "manager"])
def gen(n: int) -> Iterator[int]:
    try:
        yield from range(n)
    finally:  # (run as the portal of the query that called it is closed)
        db.execute("INSERT INTO public.seen SELECT 'closed as ' || current_user")
        db.execute("INSERT INTO public.seen SELECT what FROM public.secret")


@stored_function(schema="portal", roles=["student", "manager"])
def start() -> str:
    rows = db.cursor("SELECT portal.gen(5) AS g", batch=1)
    first = next(rows)
    box: list[Any] = [rows]
    box.append(box)  # a cycle: freed by the collector, in whatever call is under way then
    return "started " + str(first["g"])
"""
BUSY = """
from pyfuncs import stored_function


@stored_function(schema="busy", roles=["student", "manager"])
def work(n: int) -> int:
    kept = [[i] for i in range(n)]  # (enough to set the collector off)
    return len(kept)
"""


@pytest.mark.parametrize("how", ["transaction", "statement"])
def test_a_routines_portal_is_closed_in_its_own_calls_only(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str
) -> None:
    """A red team left a `db.cursor` suspended, its portal open on a query of its own
    set-returning routine, in a reference cycle. The collector freed it in another role's
    call (in the same transaction, or in the same statement through a SECURITY DEFINER
    function of that role's), where closing the portal shut the set-returning routine
    down, and its `finally` ran there, querying as that role (a table the red team may not
    read). A portal is closed, and a set-returning routine finished, only where the call
    that asked for its rows is under way; else in the module's next call."""
    _deploy_all(cont, tmp_path, {"portal_mod": PORTAL, "busy_mod": BUSY})
    cont.execute(
        "CREATE TABLE public.secret (what text); INSERT INTO public.secret VALUES ('salary');"
        "GRANT SELECT ON public.secret TO manager;"
        "CREATE TABLE public.seen (what text); GRANT SELECT, INSERT ON public.seen TO PUBLIC;"
        "GRANT USAGE ON SCHEMA busy TO manager;"
        "CREATE FUNCTION public.report_count() RETURNS int LANGUAGE sql SECURITY DEFINER "
        "AS $$ SELECT busy.work(300000) $$;"
        "ALTER FUNCTION public.report_count() OWNER TO manager;"
        "GRANT EXECUTE ON FUNCTION public.report_count() TO student"
    )
    if how == "transaction":
        cont.execute("BEGIN")  # (a portal lives until its transaction ends)
        cont.execute("SET ROLE student")
        assert cont.execute("SELECT portal.start()").fetchone() == ("started 0",)
        cont.execute("RESET ROLE")
        cont.execute("SET ROLE manager")
        assert cont.execute("SELECT busy.work(300000)").fetchone() == (300000,)
        cont.execute("RESET ROLE")
    else:
        cont.execute("SET ROLE student")
        got = cont.execute("SELECT portal.start(), public.report_count()").fetchone()
        assert got == ("started 0", 300000)
        cont.execute("RESET ROLE")
    seen = cont.execute("SELECT coalesce(string_agg(what, ' '), '') FROM public.seen").fetchone()
    if how == "transaction":
        cont.execute("ROLLBACK")
    assert seen is not None and "manager" not in seen[0] and "salary" not in seen[0], seen


# a generator that enters a savepoint and stays suspended inside it
HOLDER = """
from typing import Any, Iterator

from pyfuncs import db, stored_function

KEPT: list[Any] = []


def _holder() -> Iterator[int]:
    with db.subtransaction():
        db.execute("SELECT 1")
        yield 1
    yield 2
"""
SUBXACT = (
    HOLDER
    + """


THROW: list[bool] = [False]


def _resume() -> str:
    try:
        if THROW[0]:
            return "resumed " + str(KEPT.pop().throw(KeyError("x")))
        return "resumed " + str(next(KEPT.pop()))
    except Exception as exc:
        return "resume raised " + repr(exc)[:200]


@stored_function(schema="subx", roles=["student", "manager"])
def act(how: str) -> str:
    if how == "keep":
        g = _holder()
        next(g)
        KEPT.append(g)
        return "kept %d" % len(KEPT)
    if how == "resume":
        return _resume()
    if how.startswith("throw "):
        THROW[0] = True
        how = how[6:]
    try:
        with db.subtransaction():
            if how == "nested":
                got = db.fetchval("SELECT subx.act('resume')")
            elif how == "rows":
                got = db.execute(
                    "SELECT subx.act('resume') AS a, repeat('x', g) AS b "
                    "FROM generate_series(1, 200) g ORDER BY b DESC"
                ).rowcount
            elif how == "cursor":
                query = "SELECT subx.act('resume') AS a, g FROM generate_series(1, 50) g"
                got = sum(1 for _ in db.cursor(query, batch=1))
            else:
                got = _resume()
            db.execute("SELECT 2")
    except Exception as exc:
        return "outer raised " + repr(exc)[:200]
    return "outer " + str(got)
"""
)


LEDGER = """
from pyfuncs import db, stored_function


class Abort(Exception):
    pass


@stored_function(schema="ledger", roles=["student", "manager"])
def transfer(helper: str) -> str:
    \"\"\"A victim: a savepoint around its writes, undone when it aborts; it calls a
    helper routine (another module's) through SQL and carries on if the helper fails.\"\"\"
    outcome = "committed"
    try:
        with db.subtransaction():
            try:
                db.fetchval(helper)
            except Exception:
                pass
            db.execute("INSERT INTO public.ledger VALUES ('debit')")
            raise Abort()
    except Abort:
        outcome = "rolled back"
    except Exception as exc:
        outcome = "raised " + repr(exc)[:60]
    return outcome + " " + str(db.fetchval("SELECT count(*) FROM public.ledger"))
"""


def test_a_stale_savepoint_cannot_leave_another_routines_savepoint(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """PL/Python keeps the savepoints routines open (`db.subtransaction()`) in one list for
    the whole backend, and aborts as a call ends those a generator left open, without
    marking them left. A red team's generator, kept and resumed in a later call, had the
    stale savepoint's `__exit__` take whatever savepoint was on top of that list then (a
    victim routine of another role's, which called the red team's inside its own savepoint)
    and release the subtransaction of the query under way: the victim's write, which it
    rolled back, stayed. A savepoint is left only where it is the one under way."""
    _deploy_all(cont, tmp_path, {"subx_mod": SUBXACT, "ledger_mod": LEDGER})
    cont.execute(
        "CREATE TABLE public.ledger (what text); GRANT SELECT, INSERT ON public.ledger TO manager"
    )
    cont.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA subx TO manager")
    # the victim's behaviour with a helper that merely fails: its write is rolled back
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT ledger.transfer('SELECT 1/0')").fetchone() == ("rolled back 0",)
    cont.execute("RESET ROLE")
    # the red team (student) keeps a generator suspended inside a savepoint
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT subx.act('keep')").fetchone() == ("kept 1",)
    cont.execute("RESET ROLE")
    # manager's call of the victim, which calls the red team's routine
    cont.execute("SET ROLE manager")
    try:
        got: Any = cont.execute("SELECT ledger.transfer('SELECT subx.act(''resume'')')").fetchone()
    except psycopg.Error as exc:  # (what happens: the victim's SPI connection is gone)
        got = exc
    assert got == ("rolled back 0",), got


@pytest.mark.parametrize("how", ["nested", "rows", "cursor", "throw nested"])
def test_a_stale_savepoint_cannot_leave_the_query_under_way(
    cont: psycopg.Connection[Any], tmp_path: Any, how: str
) -> None:
    """The same inside one module's calls released the subtransaction of the query running
    the routine (PostgreSQL warned of a plan and a snapshot reference leaked, an SPI stack
    left), and the call failed with SPI_finish failed: the stale exit is refused, and the
    call goes on."""
    _deploy_all(cont, tmp_path, {"subx_mod": SUBXACT})
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT subx.act('keep')").fetchone() == ("kept 1",)
    try:
        got: Any = cont.execute("SELECT subx.act(%s)", [how]).fetchone()
    except psycopg.Error as exc:  # (what happens: SPI_finish failed)
        got = exc
    assert isinstance(got, tuple) and got[0].startswith("outer "), got


ROW_SAVEPOINTS = """
from typing import Any, Iterator

from pyfuncs import db, stored_function

KEPT: list[Any] = []


def _holder() -> Iterator[int]:
    with db.subtransaction():
        yield 1
    yield 2


@stored_function(schema="rowsp", roles=["student"])
def act(how: str) -> Iterator[str]:
    if how == "left open":  # a savepoint entered in a row, kept open by a generator
        g = _holder()
        next(g)
        KEPT.append(g)
        yield how
    elif how == "across rows":
        with db.subtransaction():
            yield how
            yield how
    else:  # a savepoint left open, rolled back as a later statement's query ends
        try:
            yield how
            yield how
        finally:
            while KEPT:
                try:
                    KEPT.pop().throw(KeyError("undo"))
                except KeyError:
                    pass


@stored_function(schema="rowsp", roles=["student"])
def plain() -> str:
    with db.subtransaction():
        return str(db.fetchval("SELECT 1"))
"""


@pytest.mark.parametrize("how", ["left open", "across rows"])
def test_a_set_returning_routines_rows_open_no_savepoint(
    cont: psycopg.Connection[Any], tmp_path: Any, dsn: str, how: str
) -> None:
    """PL/Python aborts the savepoints a call left open as its function returns, but a
    set-returning routine's rows run outside that: a savepoint a row left open outlived the
    statement and took the session's transaction with it (its later statements, another
    role's too, ran inside the red team's subtransaction), and one rolled back as a later
    statement's query ended made the next statement crash the cluster. A row may not open
    a savepoint; a routine that returns a value may, as before."""
    _deploy_all(cont, tmp_path, {"row_savepoints_mod": ROW_SAVEPOINTS})
    with psycopg.connect(dsn, autocommit=True) as bystander:
        cont.execute("SET ROLE student")
        with pytest.raises(psycopg.Error, match=r"db\.subtransaction"):
            cont.execute("SELECT * FROM rowsp.act(%s)", [how])
        assert cont.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert cont.execute("SELECT rowsp.act('undo') LIMIT 1").fetchone() == ("undo",)
        assert cont.execute("SELECT 1").fetchone() == (1,)
        assert cont.execute("SELECT rowsp.plain()").fetchone() == ("1",)
        assert bystander.execute("SELECT 'still here'").fetchone() == ("still here",)


STUCK = """
from typing import Any, Iterator

from pyfuncs import stored_function


class It:
    def __iter__(self) -> "It":
        return self

    def __next__(self) -> int:
        return 1

    @property
    def close(self) -> Any:  # read as the orphan is closed: spins until its call is stopped
        n = 0
        while True:
            n += 1

    def __del__(self) -> None:  # (a stopped call's raises at once)
        pass


@stored_function(schema="stuck", roles=["student"], timeout_ms=200)
def rows(how: str) -> Iterator[int]:
    return It()
"""
SAFE = """
from pyfuncs import db, stored_function


@stored_function(schema="safe", roles=["manager"])
def work() -> str:
    try:
        return str(1 / 0)
    except ZeroDivisionError:
        return "caught " + str(db.fetchval("SELECT current_user"))
"""


def test_closing_orphans_cannot_be_left_unfinished_for_later_calls(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """What an aborted statement left suspended is closed in its routine's next call, with
    a flag on that makes every guard refuse meanwhile. A red team's orphan spun in its
    `close` until the call was stopped, and its `__del__` raised the stop as it was freed
    there: the watchdog raised it again at the next line of the runtime's code, before the
    flag was turned off, and every later call in the backend, of any role, failed."""
    _deploy_all(cont, tmp_path, {"stuck_mod": STUCK, "safe_mod": SAFE})
    cont.execute("SET ROLE student")
    cont.execute("BEGIN")
    cont.execute("DECLARE c CURSOR FOR SELECT stuck.rows('x')")
    cont.execute("FETCH 1 FROM c")
    with pytest.raises(psycopg.Error):
        cont.execute("SELECT 1/0")
    cont.execute("ROLLBACK")
    with pytest.raises(psycopg.Error, match="timeout_ms=200"):  # closing the orphan
        cont.execute("SELECT stuck.rows('x') LIMIT 1")
    cont.execute("RESET ROLE")
    cont.execute("SET ROLE manager")
    for _ in range(3):
        assert cont.execute("SELECT safe.work()").fetchone() == ("caught manager",)


SUBX_COUNTED = (
    HOLDER
    + """


@stored_function(schema="subxn", roles=["student", "manager"])
def act(how: str) -> str:
    if how.startswith("keep"):
        for _ in range(int(how[4:])):  # (subtransactions first: the savepoint's number)
            db.execute("SELECT 1")
        g = _holder()
        next(g)
        KEPT.append(g)
        return "kept %d" % len(KEPT)
    try:
        return "resumed " + str(next(KEPT.pop()))
    except Exception as exc:
        return "resume raised " + repr(exc)[:200]
"""
)


def test_a_stale_savepoint_is_refused_in_a_later_transaction_of_the_same_message(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """A savepoint was told by its transaction's start and its SubTransactionId, and both
    repeat: every transaction of one simple-query message starts at its timestamp, and
    SubTransactionIds start again at 1 in each. A red team's savepoint, entered after k
    subtransactions (k from 0 to 3) and kept in a generator, was the victim query's in the
    next transaction of the same message, and its stale exit was let through. A
    transaction is told by the backend's local transaction id now."""
    _deploy_all(cont, tmp_path, {"subxn_mod": SUBX_COUNTED, "ledger_mod": LEDGER})
    cont.execute(
        "CREATE TABLE public.ledger (what text); GRANT SELECT, INSERT ON public.ledger TO manager;"
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA subxn TO manager"
    )
    # (both modules loaded and their plans prepared in this backend: the count of
    # subtransactions below is then the same every time)
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT ledger.transfer('SELECT subxn.act(''resume'')')").fetchone() == (
        "rolled back 0",
    )
    cont.execute("RESET ROLE")
    outcomes = []
    for count in range(4):
        try:
            cur = cont.execute(
                f"BEGIN; SET ROLE student; SELECT subxn.act('keep{count}'); COMMIT; "
                "BEGIN; RESET ROLE; SET ROLE manager; "
                "SELECT ledger.transfer('SELECT subxn.act(''resume'')'); COMMIT; RESET ROLE"
            )
            results = []
            while True:
                if cur.description:
                    results += cur.fetchall()
                if not cur.nextset():
                    break
            got: Any = results
        except psycopg.Error as exc:
            got = str(exc).splitlines()[0]
            cont.execute("ROLLBACK")
            cont.execute("RESET ROLE")
        outcomes.append(got)
    assert outcomes == [[("kept 1",), ("rolled back 0",)]] * 4, outcomes


CONVERTED = """
from decimal import Decimal

from pyfuncs import db, stored_function

RAN: list[str] = []


class Seq:
    def __len__(self) -> int:
        RAN.append("len")
        return 1

    def __getitem__(self, i: int) -> int:
        RAN.append("item")
        if i == 0:
            return 1
        raise IndexError(i)


class Loud(int):
    def __str__(self) -> str:
        RAN.append("int")
        return "7"


class LoudDecimal(Decimal):
    def __str__(self) -> str:
        RAN.append("decimal")
        return "7"


class Text(str):
    def __str__(self) -> str:
        RAN.append("str")
        return "x"


@stored_function(schema="conv", roles=["student", "manager"])
def send(kind: str) -> str:
    RAN.clear()
    value = {"seq": {"a": Seq()}, "int": Loud(5), "decimal": LoudDecimal(5), "str": Text("y"),
             "nested": {"a": [Loud(5), {"b": Text("y")}]}}[kind]
    try:
        got = db.fetchval("SELECT $1::text", [value])
    except TypeError as exc:
        got = "refused: " + str(exc).partition(";")[0]
    return f"{got} ran={RAN}"
"""


@pytest.mark.parametrize(
    ("kind", "sent"),
    [("seq", "refused: db: a jsonb parameter holds no Seq"), ("int", "5"), ("decimal", "5"),
     ("str", "y"), ("nested", '{"a": [5, {"b": "y"}]}')],
)  # fmt: skip
def test_no_code_of_a_routines_runs_inside_its_query_to_read_a_parameter(
    cont: psycopg.Connection[Any], tmp_path: Any, kind: str, sent: str
) -> None:
    """PL/Python reads a query's parameters inside plpy.execute, after it began the
    query's subtransaction, calling their methods (`str()` of an int or Decimal subclass,
    a sequence's items in jsonb). A red team's began a savepoint there, which PL/Python
    then ended as the query's own: the session was left restricted for good, a shared
    buffer pinned past its end, the cluster crashed. Parameters are sent as exact built-in
    values now, read with C's own methods before the query."""
    (tmp_path / "conv_mod.py").write_text(CONVERTED)
    deploying.deploy(cont, str(tmp_path / "conv_mod.py"))
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT conv.send(%s)", [kind]).fetchone() == (f"{sent} ran=[]",)
    cont.execute("RESET ROLE")  # (the session can change role: it is not left restricted)
    cont.execute("SET ROLE manager")
    assert cont.execute("SELECT current_user").fetchone() == ("manager",)


PARAMS = """
from pyfuncs import db, stored_function

SEEN: list[str] = []


class Params:
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> object:
        if i != 0:
            raise IndexError(i)
        try:
            db.fetchval("SELECT 1")
            SEEN.append("read before the query")
        except PermissionError:
            SEEN.append("read inside the query")
        return "x"


class Items(list):
    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        SEEN.append("item read")
        return list(self)[i]


@stored_function(schema="seq", roles=["student", "manager"])
def send(warm: bool) -> str:
    SEEN.clear()
    if warm:
        db.fetchval("SELECT $1", ["warm"])  # its plan kept: no preparing before the query
    got = db.fetchval("SELECT $1", Params())
    kept = Items(["y"])
    kept_too = db.fetchval("SELECT $1", kept)
    return f"{got} {kept_too} {sorted(set(SEEN))}"
"""


@pytest.mark.parametrize("warm", [True, False])
def test_a_routines_parameter_sequence_is_read_before_its_query(
    cont: psycopg.Connection[Any], tmp_path: Any, warm: bool
) -> None:
    """PL/Python read the parameters' sequence itself (the routine's) inside the query, with
    its `__getitem__` (a red team's). The runtime reads it once, before the query, into a
    list of its own."""
    (tmp_path / "seq_mod.py").write_text(PARAMS)
    deploying.deploy(cont, str(tmp_path / "seq_mod.py"))
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT seq.send(%s)", [warm]).fetchone() == (
        "x y ['read before the query']",
    )


RAW_SAVEPOINT = """
from pyfuncs import db, stored_function


@stored_function(schema="raw", roles=["student", "manager"])
def unnest() -> str:
    with db.subtransaction() as outer:
        with db.subtransaction():
            try:
                outer.exit(None, None, None)
                return "the outer one's exit ended the inner one"
            except AttributeError:
                pass
    return f"nothing: {outer!r}"
"""


def test_a_savepoint_hands_out_no_object_of_pl_pythons(
    cont: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """`with db.subtransaction() as s` gave PL/Python's own savepoint object, whose `exit`
    ends whatever subtransaction is under way, past the runtime's checks (a red team's
    ended another savepoint's, and, from a call nested in its query, the query's own)."""
    (tmp_path / "raw_mod.py").write_text(RAW_SAVEPOINT)
    deploying.deploy(cont, str(tmp_path / "raw_mod.py"))
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT raw.unnest()").fetchone() == ("nothing: None",)
