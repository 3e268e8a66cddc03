"""`db`: the routine's handle on the database. Parameterised queries with plans prepared
once per backend, cursors, subtransactions, JWT claims; every query counted and refused in a
stopped call."""

from __future__ import annotations

import ctypes
import os
import sys

from . import backstop, deadline, identity, overflow, vocabulary
from . import watchdog as stopping
from .values import OID_PARSERS, adapt_param, converter, simple_types
from .watchdog import RoutineInterrupted

TYPE_CHECKING = False
if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any

# PL/Python's module, bound by boot() (outside PostgreSQL, Rows and Queries serve pyfuncs.local)
plpy: Any = None


_AHEAD: list[Any] = []  # the plan of compiled_ahead, once prepared


def compiled_ahead(key: str) -> bytes | None:
    """The code `pyfuncs deploy` compiled ahead for a routine module, by its key (see
    vocabulary.compiled_key), or None. Every name is qualified: the caller's search_path is
    in force (and the key found is the one asked for, whatever `=` it used)."""
    if not _AHEAD:
        _AHEAD.append(plpy.prepare(
            "SELECT key, code FROM pyfuncs.routine_code WHERE key OPERATOR(pg_catalog.=) $1",
            ["pg_catalog.text"],
        ))  # fmt: skip
    rows = plpy.execute(_AHEAD[0], [key])
    return rows[0]["code"] if rows.nrows() == 1 and rows[0]["key"] == key else None


class Rows(list[dict[str, "Any"]]):  # Any is imported only for type checkers
    """Result rows as dicts, plus the number of rows a write touched (`rowcount`)."""

    rowcount: int = 0


class Queries:
    """The calls derived from `execute` and `claims`, shared with pyfuncs.local.LocalDb."""

    __slots__ = ()

    def execute(self, query: str, params: Sequence[Any] = (), /) -> Rows:
        raise NotImplementedError

    def claims(self) -> dict[str, Any]:
        raise NotImplementedError

    def fetchone(self, query: str, params: Sequence[Any] = (), /) -> dict[str, Any] | None:
        """The first row of `query`, or None."""
        rows = self.execute(query, params)
        return rows[0] if rows else None

    def fetchval(self, query: str, params: Sequence[Any] = (), /) -> Any:
        """The first column of the first row of `query`, or None."""
        row = self.fetchone(query, params)
        return next(iter(row.values())) if row else None

    def user_id(self) -> uuid.UUID | None:
        """The caller's `sub` claim as a UUID, or None."""
        sub = self.claims().get("sub")
        if not sub:
            return None
        import uuid  # here: not every backend's boot pays for it

        return uuid.UUID(sub)


class _Prepared:
    """A plan, and how to convert the columns of its results.

    Every call in the backend shares the plan, whoever calls: PostgreSQL plans it again
    when what it depends on changed (a relation, the search_path, the role under row
    security), and its columns may then be others. So the conversions are those of the
    columns each result has (names and types), learnt again when they differ from the last
    result's: a red team's temporary table gave a query text-typed columns, and the
    conversions learnt from it gave the next role's call of that query str for its uuid and
    timestamptz columns (one comparison of a short list per query)."""

    __slots__ = ("fixes", "names", "plan", "types")

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.names: list[str] | None = None
        self.types: list[int] | None = None
        self.fixes: list[tuple[str, Callable[[Any], Any]]] = []

    def rows(self, result: Any) -> Any:
        try:
            types = result.coltypes()
        except plpy.Error:  # a utility statement or a write without RETURNING
            return result
        # (the names matter only to columns converted: read them only then)
        if types != self.types:
            self._learn(result.colnames(), types)
        elif self.fixes and (names := result.colnames()) != self.names:
            self._learn(names, types)
        fixes = self.fixes
        for row in result if fixes else ():
            for name, convert in fixes:
                row[name] = convert(row[name])
        return result

    def _learn(self, names: list[str], types: list[int]) -> None:
        kinds = {o: OID_PARSERS[o] for o in types if o in OID_PARSERS}
        # PL/Python hands a domain's values over as its base type's (a domain over uuid as
        # str), and an array of domains as an array of those: types made in a database
        # (from FIRST_MADE on) are asked about
        made = [o for o in types if o not in kinds and o >= FIRST_MADE]
        seen = True
        if made:
            based, seen = _based_on(made)
            kinds.update(based)
        self.fixes = [
            (n, converter(kinds[o]))  # type: ignore[misc]
            for n, o in zip(names, types, strict=True)
            if o in kinds
        ]
        # a type the caller's snapshot does not show yet (made after its transaction's
        # snapshot, which the lookup reads with; the result's types are the catalog's
        # latest) is left unconverted for this call only: the next result learns again
        # (a red team's old snapshot fixed a domain's values as str for every later call)
        self.names, self.types = names, types if seen else None


# the first oid PostgreSQL gives a type not in its own catalog's data (FirstGenbkiObjectId)
FIRST_MADE = 10_000
_BASES: list[Any] = []  # the plan of _based_on, once prepared


def _based_on(types: list[int]) -> tuple[dict[int, str], bool]:
    """What OID_PARSERS gives the base type of each of `types` that is a domain (through
    domains of domains) or an array of one, and whether the caller's snapshot shows all of
    `types`. Asked as the caller (pg_type is everyone's to read), every name and operator
    qualified: the caller's search_path is in force, and a conversion learnt here serves
    every later call of the query, another role's too."""
    if not _BASES:
        _BASES.append(plpy.prepare(
            """WITH RECURSIVE chain(start, oid, element) AS (
                SELECT y.oid, y.oid, false FROM pg_catalog.pg_type y
                WHERE y.oid OPERATOR(pg_catalog.=) ANY ($1)
                UNION ALL
                SELECT c.start,
                       CASE WHEN y.typtype OPERATOR(pg_catalog.=) 'd' THEN y.typbasetype
                            ELSE y.typelem END,
                       c.element OR y.typtype OPERATOR(pg_catalog.<>) 'd'
                FROM chain c JOIN pg_catalog.pg_type y ON y.oid OPERATOR(pg_catalog.=) c.oid
                WHERE y.typtype OPERATOR(pg_catalog.=) 'd'
                   OR (NOT c.element AND y.typcategory OPERATOR(pg_catalog.=) 'A'
                       AND y.typelem OPERATOR(pg_catalog.<>) 0))
            SELECT start, oid, element FROM chain""",
            ["pg_catalog.oid[]"],
        ))  # fmt: skip
    kinds: dict[int, str] = {}
    seen = set()
    for row in plpy.execute(_BASES[0], [types]):
        seen.add(row["start"])
        kind = OID_PARSERS.get(row["oid"])
        if kind is not None and row["element"]:
            kind = None if kind.startswith("list:") else "list:" + kind
        if kind is not None:  # (any step of a chain that is found gives the same)
            kinds[row["start"]] = kind
    return kinds, seen.issuperset(types)


def _values(params: Any) -> list[Any] | tuple[Any, ...]:
    """A query's parameters in a sequence of the runtime's own, read once here: PL/Python
    reads the sequence it is given inside the query (a red team's `__getitem__` ran there),
    and a list of the routine's could be changed there (by a finalizer of its)."""
    return params if type(params) is tuple else list(params)


def _text(query: Any) -> str:
    """A query as a plain str. Plans are kept by their query's text in dicts every call
    shares, which compare a later query with the key they kept: a red team's str subclass,
    kept as a key, had its `__eq__` say yes to another role's query, which then ran the
    red team's plan (its SQL, with that role's rights)."""
    if not isinstance(query, str):
        raise TypeError(f"pyfuncs: a query is a str, not {type(query).__name__}")
    return str.__str__(query)


def _plan_key(query: str, params: Sequence[Any]) -> tuple[Any, ...]:
    # a query's parameters are mostly one or two: build those keys without unpacking
    count = len(params)
    if count == 1:
        return (query, type(params[0]))
    if count == 2:
        return (query, type(params[0]), type(params[1]))
    return (query, *map(type, params))


# Plans, kept where no routine reaches them (not on the handle every call shares, whose
# attributes routine code can read): by query text and the Python types of its parameters,
# when PL/Python sends the values as they are (the common case: one dict lookup, no
# conversion) ...
_DIRECT: dict[tuple[Any, ...], _Prepared] = {}
# ... and by query text and SQL types, when values have to be adapted first
_ADAPTED: dict[tuple[str, tuple[str, ...]], _Prepared] = {}


class Db(Queries):
    """The database, as seen from inside a routine. Runs as the caller; RLS applies.

    Each routine module has a handle of its own (`module`, its namespace): it queries only
    in calls of that module's routines, from that module's code (see _from_the_call)."""

    __slots__ = ("_module",)

    def __init__(self, module: dict[str, Any]) -> None:
        self._module = module

    def _plan(
        self, query: str, params: Sequence[Any], keep: bool = True
    ) -> tuple[_Prepared, Sequence[Any]]:
        """The plan for `query` (a plain str: see _text) with these parameters' types, and
        the values to send; kept for the next time unless `keep` is false."""
        key = _plan_key(query, params)
        prepared = _DIRECT.get(key)
        if prepared is not None:
            return prepared, params
        simple = simple_types()
        if all(type(v) in simple for v in params):
            prepared = _Prepared(plpy.prepare(query, [simple[type(v)] for v in params]))
            if keep:
                _DIRECT[key] = prepared
            return prepared, params
        adapted = [adapt_param(v) for v in params]
        adapted_key = (query, tuple(t for t, _ in adapted))
        prepared = _ADAPTED.get(adapted_key)
        if prepared is None:
            prepared = _Prepared(plpy.prepare(query, list(adapted_key[1])))
            if keep:
                _ADAPTED[adapted_key] = prepared
        return prepared, [v for _, v in adapted]

    def _count(self) -> int:
        """Every database operation: refused in a stopped call and to code that is not the
        call's (see _from_the_call), counted for max_db_ops; the id of the call's entry
        frame."""
        stopping.guard()
        entry = _from_the_call(self._module)
        watchdog = stopping.WATCHDOG
        if watchdog is not None and watchdog.budgets:
            watchdog.count_db_op()
        return id(entry)

    def _run(self, query: str, params: Sequence[Any], what: int) -> Any:
        # the hot path of every query: _count (and the guard's test) and the first step of
        # _plan, inlined
        backstop.query_headroom()  # (as entry.c's runner: not at the recursion limit's edge)
        watchdog = stopping.WATCHDOG
        if watchdog is not None and watchdog.stop is not None:
            stopping.guard()
        entry = _from_the_call(self._module)
        if watchdog is not None and watchdog.budgets:
            watchdog.count_db_op()
        if type(query) is not str:
            query = _text(query)
        if type(params) is not tuple:
            params = _values(params)
        # most queries have one parameter: its key is built here, without a call
        key = (query, type(params[0])) if len(params) == 1 else _plan_key(query, params)
        prepared = _DIRECT.get(key)
        if prepared is None:  # (a query of its own, as PostgreSQL runs any SQL preparing
            # it: types' input functions on literals, a domain's check with them)
            prepared, params = _guarded(id(entry), self._plan, query, params)
        if watchdog is not None and watchdog.stop is not None:  # (held while planning or
            stopping.guard()  # counting: the runtime's bookkeeping, see entry.c)
        # (begun inside the try: an exception right after, a MemoryError under
        # max_memory_mb say, must still end it)
        begun = ended = None
        outer = _QUERYING[0]
        try:
            _QUERYING[0] = id(entry)
            begun = begin()
            if begun is None:
                raise deadline.may_not_run()
            result = plpy.execute(prepared.plan, params)
        except plpy.SPIError as exc:  # its subtransaction, and what it changed, rolled back
            deadline.expired(exc)
            _failed(exc)
            raise
        finally:
            _QUERYING[0] = outer
            if begun is not None:
                ended = end(begun)
        if ended is not None:
            _ended(ended)
        return _part(prepared.rows(result), what)

    def execute(self, query: str, params: Sequence[Any] = (), /) -> Rows:
        """Run `query` with `$1, $2 …` bound to `params`; return the rows as dicts.

        Plans are prepared once per backend for each query text and parameter types.
        """
        result = _query(self, query, params, RESULT)
        rows = Rows(result)
        rows.rowcount = result.nrows()
        return rows

    def fetchone(self, query: str, params: Sequence[Any] = (), /) -> dict[str, Any] | None:
        """The first row of `query`, or None."""
        return _query(self, query, params, ROW)  # type: ignore[no-any-return]

    def fetchval(self, query: str, params: Sequence[Any] = (), /) -> Any:
        """The first column of the first row of `query`, or None."""
        return _query(self, query, params, VALUE)

    def cursor(
        self, query: str, params: Sequence[Any] = (), /, *, batch: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Iterate over a large result without holding it all in memory."""
        if type(batch) is not int or batch < 1:
            raise ValueError(f"pyfuncs: a cursor's batch is a positive int, not {batch!r}")
        entry = self._count()  # (from this module's call: what it left is closed in it)
        stopping.dispose_orphans(self._module)
        # a name no one can declare first (a red team's WITH HOLD cursors, declared under
        # the names coming next, kept the next role of a pooled session from any cursor);
        # its plan is not kept: its text is this cursor's only
        name = f"pyfuncs_cursor_{os.urandom(12).hex()}"
        declare = f"DECLARE {name} NO SCROLL CURSOR FOR {_text(query)}"
        prepared, values = _guarded(entry, self._plan, declare, _values(params), False)
        _guarded(entry, plpy.execute, prepared.plan, values)
        opened = under_way()
        try:
            while True:
                entry = self._count()
                if not _still_open(opened):
                    raise RuntimeError(
                        "pyfuncs: a db.cursor is read in the transaction, and the "
                        "savepoint, it was opened in, and not after either ended"
                    )
                chunk = _guarded(entry, plpy.execute, f"FETCH {batch} FROM {name}")
                if not chunk:
                    return
                yield from prepared.rows(chunk)
        finally:
            # closed here only in a call of its module's, while a PL/Python function runs
            # (not as PostgreSQL cleans up after a statement: see watchdog.close_apart):
            # closing it shuts down what the query runs (a set-returning routine's code,
            # which then finishes), and the collector may free this generator in any call
            # (a red team's ran its routine's `finally` in another role's call, querying
            # as that role); else its transaction's end drops it
            if (
                not stopping.disposing and stopping.in_transaction()
                and stopping.CALLING[0] is self._module and _still_open(opened)
            ):  # fmt: skip
                _close(name)

    def subtransaction(self) -> Savepoint:
        """A savepoint: `with db.subtransaction(): ...` undoes its writes if the block raises."""
        self._count()  # (a savepoint is a database operation: max_db_ops counts it)
        return Savepoint(plpy.subtransaction(), self._module)

    def claims(self) -> dict[str, Any]:
        """The caller's JWT claims (`request.jwt.claims`), empty without a token."""
        self._count()
        raw = identity.claims()
        if not raw:
            return {}
        import json  # here: not every backend's boot pays for it

        return dict(json.loads(raw))


# A routine's cursors are SQL's, declared, fetched and closed by a name of random hex no one
# can guess (`pyfuncs_cursor_...`), and read only while the subtransaction they were
# declared in is under way. Not PL/Python's: it finds its cursor's portal by name as it
# closes or frees the cursor, and unpins it, which raises an error through the
# interpreter's frames where the portal of that name is another's. A red team's statement
# aborted with a routine's cursor open (which dropped its portal), declared a cursor of the
# same name, and had the routine's cursor closed: the interpreter was left corrupt, and the
# next call of another role crashed. An SQL cursor is not pinned: it ends with its
# transaction (or savepoint) whatever keeps its generator, and closing or reading one that
# is not there is an error PL/Python reports as a Python exception.
def _still_open(opened: Any) -> bool:
    return stopping.in_transaction() and under_way()[0] == opened[0] and _active(opened[1])


def _close(name: str) -> None:
    try:  # noqa: SIM105  (contextlib costs every backend's boot 3 ms)
        _guarded(_innermost_entry(), plpy.execute, f"CLOSE {name}")
    except plpy.SPIError:  # (closed already: the query inside it failed)
        pass


def _active(subtransaction: int) -> bool:
    """Whether that subtransaction is under way (boot() binds PostgreSQL's
    SubTransactionIsActive; outside PostgreSQL, always)."""
    return True


class Savepoint:
    """PL/Python's subtransaction, entered inside the call's level of settings (identity.py),
    and left only where it is the subtransaction under way: PL/Python keeps the savepoints
    of every call in one list and aborts, as a call ends, those it left open without
    marking them left; a red team's generator, suspended inside one and resumed in a later
    call, had its `__exit__` take the savepoint of another role's call off that list and
    release the subtransaction of the query under way."""

    __slots__ = ("_entered", "_module", "_savepoint")

    def __init__(self, savepoint: Any, module: dict[str, Any]) -> None:
        self._savepoint, self._module = savepoint, module
        self._entered: Any = None

    def __enter__(self) -> None:
        stopping.guard()
        _in_a_call_entry(_from_the_call(self._module))
        if deadline.parallel():
            raise deadline.may_not_run()
        _room_to_move()
        changed = identity.open_settings()
        if changed:
            _stop_identity(changed)
        self._savepoint.__enter__()
        self._entered = under_way()
        # (not what PL/Python's __enter__ returns: its object, whose `exit` ends whatever
        # subtransaction is under way, past every check here, a red team's the query's)

    def __exit__(self, *exc: Any) -> Any:
        if self._entered is None or self._entered != under_way():
            raise RuntimeError(
                "pyfuncs: a savepoint is left where it was entered, in the same call and "
                "while it is the one under way (not from a generator resumed later)"
            )
        _room_to_move()
        self._entered = None
        return self._savepoint.__exit__(*exc)


# PL/Python begins and ends a savepoint, and grows its list of them, outside any error
# handling: memory PostgreSQL cannot get there is an error thrown through the interpreter's
# frames, which left PL/Python's list and PostgreSQL's subtransactions out of step (a red
# team's, at the runtime's address-space cap with a thousand savepoints open, crashed the
# cluster as the transaction aborted). So a savepoint is entered and left only with this
# much of the address space to spare (what Python does in between cannot allocate it).
_ROOM = 64 << 20


# What of a query's result db's methods take: all of it, its first row (read in place: no
# copy for one row), or that row's first column; None for the last two without rows
RESULT, ROW, VALUE = 0, 1, 2


def _part(result: Any, what: int) -> Any:
    if what == RESULT:
        return result
    if not len(result):
        return None
    if what == ROW:
        return result[0]
    for value in result[0].values():
        return value
    return None


# What db's methods run a query with: Db._run, or the entry library's runner of the same
# work in C (entry.c), once boot() put it in place (use_runner)
_query: Callable[[Db, str, Sequence[Any], int], Any] = Db._run


def use_runner(make: Callable[[dict[str, Any]], Any]) -> None:
    """Run queries with what `make` (backstop.queries) makes of what Db._run uses, unless
    it makes nothing (no entry library)."""
    global _query
    runner = make({
        "db": globals(), "stopping": vars(stopping), "from_the_call": _from_the_call,
        "guard": stopping.guard, "owners": stopping.ROUTINE_CODE, "entries": stopping.ENTRIES,
        "calling": stopping.CALLING, "querying": _QUERYING, "text": _text, "plans": _DIRECT,
        "guarded": _guarded, "may_not_run": deadline.may_not_run,
        "expired": deadline.expired, "failed": _failed, "ended": _ended,
        "execute": plpy.execute, "SPIError": plpy.SPIError,
        "Error": plpy.Error,  # (libraries built before stop 41 require it)
        "Db": Db, "Prepared": _Prepared,
    })  # fmt: skip
    if runner is not None:
        _query = runner


def _room_to_move() -> None:
    if overflow.room_left() < _ROOM:
        raise MemoryError(
            "pyfuncs: too little memory is left for a savepoint to begin or end safely"
        )


def _in_a_call_entry(entry: Any) -> None:
    """Refuse a savepoint outside a routine's `call` entry (`entry` is the call's innermost
    entry frame): PL/Python aborts the savepoints a call left open as its function returns,
    but a set-returning routine's rows (and a module's top-level code) run outside that
    cleanup, and one left open there outlived the statement and its transaction (a red
    team's took the session's transaction with it, and another crashed the cluster rolling
    one back as its query ended)."""
    if not stopping.ENTRIES[id(entry.f_code)].numbered(entry):
        return
    raise RuntimeError(
        "pyfuncs: db.subtransaction() is for routines that return a value, not for a "
        "set-returning routine's rows or a module's top-level code (nothing would end a "
        "savepoint left open there)"
    )


def under_way() -> Any:
    """Which subtransaction is under way: its transaction (the backend's local transaction
    id, from the backstop library; else the transaction's start, which the transactions of
    one simple-query message share) and its number (boot() binds PostgreSQL's; outside
    PostgreSQL, always the same)."""
    return None


def bind(lib: Any, local_transaction: Any = None) -> None:
    global under_way, _active
    active = lib.SubTransactionIsActive
    active.restype, active.argtypes = ctypes.c_bool, [ctypes.c_uint32]
    _active = active
    transaction, number = local_transaction, lib.GetCurrentSubTransactionId
    if transaction is None:
        transaction = lib.GetCurrentTransactionStartTimestamp
        transaction.restype = ctypes.c_int64
    number.restype = ctypes.c_uint32
    under_way = lambda: (transaction(), number())  # noqa: E731
    stopping.bookkeeping(under_way)  # (read inside Savepoint's)


def _from_the_call(module: dict[str, Any]) -> Any:
    """Refuse the `db` of routine module `module` (its namespace) to code that is not that
    of a call of its routines: the code of a routine module runs only in calls of its
    routines, except for what Python runs at other times (a finalizer, `__del__` or a
    generator's `finally`, run when the garbage collector gets to it, maybe in another
    routine's call or in none), which must not query as whoever happens to be calling then.
    The caller's code is the first of a routine module's on the stack, and must be the
    handle's module's; the call is that of the innermost entry frame, returned, and must be
    one of that module's routines (or load it). By the stack alone, a red team's bound
    `db.execute`, put in a shared cache as a class's `__eq__` and called there by C in
    another role's call with none of its module's code on the stack, queried as that role.
    Nor is it for the cleanup of a generator whose statement ended before its last row
    (watchdog.close_apart)."""
    if stopping.disposing:
        raise PermissionError(
            "pyfuncs: db is not for the cleanup of a set-returning routine's generator "
            "whose statement ended before its last row (a LIMIT, an error): it runs "
            "without queries"
        )
    owners, entries = stopping.ROUTINE_CODE, stopping.ENTRIES
    owner = None
    frame: Any = sys._getframe(2)
    while frame is not None:
        code = id(frame.f_code)
        routine = entries.get(code)
        if routine is not None:
            if owner is module and module is stopping.CALLING[0]:
                if id(frame) == _QUERYING[0]:
                    raise PermissionError(
                        "pyfuncs: db is not for code that runs inside its own call's query "
                        "(a method of a parameter's, which PostgreSQL calls as it reads it)"
                    )
                return frame
            break
        if owner is None:
            owner = owners.get(code)
        frame = frame.f_back
    raise PermissionError(
        "pyfuncs: db is for the routine whose call is under way, not for code that runs "
        "outside it (a finalizer, or an object of another routine module)"
    )


def begin() -> Any:
    """Before a routine's query: deadline.lend, then identity.enter (backstop.c's `begin`
    does both in one call, once use() put it in place). What `end` needs, or None where the
    query may not run (see deadline.may_not_run)."""
    lent = deadline.lend()
    if lent is None:
        return None
    try:
        return lent, identity.enter()
    except BaseException:
        if lent:
            deadline.give_back()
        raise


def end(begun: Any) -> Any:
    """After the query: deadline.give_back (where it lent), then identity.leave; None, or
    what leave named (a str), or what give_back told (True, or 2): see _ended."""
    lent, entered = begun
    fired = deadline.give_back() if lent else False
    return identity.leave(entered) or fired or None


stopping.bookkeeping(begin, end)  # (a stop lands in neither: see watchdog.bookkeeping)


def use(guard_begin: Any, guard_end: Any) -> None:
    """The backstop library's begin and end (backstop.query_guards) in place of these."""
    global begin, end
    PYTHON[:] = [begin, end]  # (kept: a test uses them in a backend again)
    begin, end = guard_begin, guard_end


PYTHON: list[Any] = []  # this module's begin and end, once use() replaced them


def _ended(ended: Any) -> None:
    """What `end` told of a query: its identity changed (stop the call), or a timer went
    off while it ran (deadline.went_on)."""
    if type(ended) is str:
        _stop_identity(ended)
    deadline.went_on(ended)


def _guarded(entry: int | None, operation: Callable[..., Any], *args: Any) -> Any:
    """One database operation of the call under way (`entry`: the id of its entry frame),
    with its deadline lent and its identity kept (Db._run does the same inline, for every
    query)."""
    backstop.query_headroom()
    begun = ended = None  # (inside the try: see Db._run)
    outer = _QUERYING[0]
    try:
        _QUERYING[0] = entry
        begun = begin()
        if begun is None:
            raise deadline.may_not_run()
        result = operation(*args)
    except plpy.SPIError as exc:
        deadline.expired(exc)
        _failed(exc)
        raise
    finally:
        _QUERYING[0] = outer
        if begun is not None:
            ended = end(begun)
    if ended is not None:
        _ended(ended)
    return result


# The id of the entry frame of the call whose query is under way (Db._run, _guarded), if
# any: that call's own code runs inside the query only where PostgreSQL calls a method of
# one of its values (parameters are made plain first: values.adapt_param), and its db is
# refused there (a red team's savepoint, begun there, was taken for the query's).
_QUERYING: list[int | None] = [None]


def _innermost_entry() -> int | None:
    """The id of the innermost entry frame on the stack, if any."""
    frame: Any = sys._getframe(1)
    entries = stopping.ENTRIES
    while frame is not None:
        if id(frame.f_code) in entries:
            return id(frame)
        frame = frame.f_back
    return None


def _failed(exc: BaseException) -> None:
    """A routine's query failed: stopped by PostgreSQL (a cancel), or refused a change of
    identity, either of which stops the call for good; or its plan is one PostgreSQL kept
    past a type it needs."""
    stopping.interrupted(exc)
    if getattr(exc, "sqlstate", None) == vocabulary.UNDEFINED_OBJECT:
        # PostgreSQL keeps a plan whose type was dropped (a domain with no constraints,
        # made again; another role's temporary type the plan was made with again under its
        # search_path) and fails it on every later run: every call's plans are let go of
        # and prepared again as they are next run (the one call this happened in has failed)
        _DIRECT.clear()
        _ADAPTED.clear()
    what = identity.refused(exc)
    if what is not None:
        _stop_identity(what)


def _stop_identity(what: str) -> None:
    """Stop the call whose query changed, or tried to change, who it runs as."""
    if stopping.WATCHDOG is not None:
        stopping.WATCHDOG.stop_here(vocabulary.PERMISSION_DENIED, identity.message(what))
    raise RoutineInterrupted()


stopping.bookkeeping(Db._run, Db.cursor, _guarded, Savepoint.__enter__, Savepoint.__exit__)
