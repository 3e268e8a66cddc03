"""What a subscriber may see of a table: filters, and the queries that answer it as them.

Every question is asked as the subscriber, inside a transaction that has switched to their
role and claims (the `set_identity` query), so PostgreSQL itself applies row-level security
and privileges: the gateway never decides visibility on its own. Rows come back as the JSON
text PostgreSQL makes (`row_to_json`), restricted to the columns the role may SELECT, and are
passed to clients as they are.

Those transactions run code that table owners wrote (policies, the functions they call,
domain checks), so they run on the gateway's check connections, which never read pyfuncs'
own tables, and they always end with ROLLBACK (see hub.py and the README's security model).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..auth import Identity
from ..config import SEARCH_PATH, VALUE_SETTINGS
from ..errors import SubscriptionError
from ..queries import query
from . import exact

OPERATORS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "in": "in"}
# what one subscription may ask for: filters are kept for its lifetime and sent with every
# visibility check, so their size is bounded (the WebSocket message limit is in app.py)
MAX_FILTERS = 16
MAX_IN_VALUES = 100
MAX_VALUE_LENGTH = 1000  # characters of a value (as JSON, for numbers and booleans)
MAX_FILTERS_SIZE = 16_384  # characters of all the filters of a subscription, as JSON
Key = tuple[Any, ...]


class _Object(tuple[tuple[str, Any], ...]):
    """A JSON object in a key (a jsonb primary key): its members, sorted, so it can be
    hashed and compared (jsonb has one form for equal objects too)."""


def hashable(value: Any) -> Any:
    """A JSON value of a key, in a form that can be hashed: arrays (an array primary key)
    become tuples and objects `_Object`s; `plain` turns it back."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return _Object(sorted((k, hashable(v)) for k, v in value.items()))
    return value


def plain(value: Any) -> Any:
    """The JSON value a `hashable` one stands for."""
    if isinstance(value, _Object):
        return {k: plain(v) for k, v in value}
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Table:
    """A realtime-enabled table with a primary key."""

    relid: int
    schema: str
    name: str
    key: tuple[str, ...]

    @functools.cached_property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @functools.cached_property
    def _hash(self) -> int:
        return hash((self.relid, self.schema, self.name, self.key))

    def __hash__(self) -> int:  # computed once: delivery looks tables up for every change
        return self._hash

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def key_of(self, image: dict[str, Any]) -> Key | None:
        """The key of a change's row image (JSON as captured, so equal to `visible`'s), or
        None when the image lacks a key column (the key was renamed or dropped since the
        subscription began)."""
        try:
            return tuple(hashable(image[column]) for column in self.key)
        except (KeyError, TypeError):
            return None

    def key_object(self, key: Key) -> dict[str, Any]:
        """A key as the JSON object clients receive (and the queries take)."""
        return {column: plain(v) for column, v in zip(self.key, key, strict=True)}

    def key_from(self, raw: dict[str, Any]) -> Key:
        """A key a client sends back (an event's `key` object), as `visible` gives keys;
        SubscriptionError("bad_request") unless it has exactly the key's columns."""
        if set(raw) != set(self.key):
            raise SubscriptionError(
                "bad_request",
                f"a key of {self.qualified} is an object of its primary key's columns "
                f"({', '.join(self.key)}), as events carry it",
            )
        return tuple(hashable(raw[column]) for column in self.key)


def _is_text(text: str) -> bool:
    """Not a lone surrogate in it (a JSON `\\ud800` escape makes one), which no query takes."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _json(value: Any) -> str:
    """A client's value as JSON, as json.dumps writes it, numbers exactly (exact.py)."""
    return exact.dumps(value, separators=(", ", ": "))


def _too_long(value: Any) -> bool:
    text = value if isinstance(value, str) else exact.dumps(value)
    return len(text) > MAX_VALUE_LENGTH


@dataclass(frozen=True)
class Filter:
    """`column op value`, PostgREST's operator names; `in` takes a list."""

    column: str
    op: str
    value: Any

    @classmethod
    def parse(cls, raw: Any) -> Filter:
        if not isinstance(raw, dict) or set(raw) != {"column", "op", "value"}:
            raise SubscriptionError(
                "bad_filter",
                f"a filter is an object {{column, op, value}}, not {_json(raw)[:80]}",
            )
        column, op, value = raw["column"], raw["op"], raw["value"]
        if not isinstance(column, str) or op not in OPERATORS:
            raise SubscriptionError(
                "bad_filter",
                f"filter {_json(raw)[:80]}: op must be one of {', '.join(OPERATORS)}",
            )
        values = value if op == "in" else [value]
        if op == "in" and not (isinstance(value, list) and value):
            raise SubscriptionError("bad_filter", f"filter on {column[:80]!r}: `in` takes a list")
        if len(values) > MAX_IN_VALUES:
            raise SubscriptionError(
                "bad_filter",
                f"filter on {column[:80]!r}: `in` takes at most {MAX_IN_VALUES} values",
            )
        if any(v is None or isinstance(v, (dict, list)) for v in values):
            raise SubscriptionError(
                "bad_filter",
                f"filter on {column[:80]!r}: compare with a string, number or boolean",
            )
        if len(column) > MAX_VALUE_LENGTH or any(_too_long(v) for v in values):
            raise SubscriptionError(
                "bad_filter",
                f"filter on {column[:80]!r}: a value has at most {MAX_VALUE_LENGTH} characters",
            )
        return cls(column, op, tuple(value) if op == "in" else value)

    @classmethod
    def parse_all(cls, raw: Any) -> tuple[Filter, ...]:
        """A subscription's filters (a list, maybe empty), within the limits above."""
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise SubscriptionError("bad_filter", "`filters` is a list of {column, op, value}")
        if len(raw) > MAX_FILTERS:
            raise SubscriptionError(
                "bad_filter", f"a subscription has at most {MAX_FILTERS} filters"
            )
        filters = tuple(cls.parse(f) for f in raw)
        if len(_json(raw)) > MAX_FILTERS_SIZE:
            raise SubscriptionError(
                "bad_filter",
                f"the filters of a subscription take at most {MAX_FILTERS_SIZE} characters "
                "as JSON; subscribe more narrowly, or to several subscriptions",
            )
        return filters

    def condition(self, table: Table, param: str) -> sql.Composable:
        """SQL for this filter on `t`; the value is converted by the column's own type, via
        jsonb_populate_record of the table's row type (no type names in the SQL)."""
        column = sql.Identifier("t", self.column)
        converted = sql.SQL("(pg_catalog.jsonb_populate_record(NULL::{}, {})).{}")
        if self.op == "in":
            each = converted.format(table.ident, sql.SQL("e"), sql.Identifier(self.column))
            return sql.SQL(
                "{} = ANY (ARRAY(SELECT {} FROM pg_catalog.jsonb_array_elements({}) e))"
            ).format(column, each, sql.Placeholder(param))
        value = converted.format(table.ident, sql.Placeholder(param), sql.Identifier(self.column))
        return sql.SQL("{} {} {}").format(column, sql.SQL(OPERATORS[self.op]), value)

    def parameter(self) -> Jsonb:
        if self.op == "in":
            return Jsonb([{self.column: v} for v in self.value], exact.dumps)
        return Jsonb({self.column: self.value}, exact.dumps)


Filters = tuple[Filter, ...]


def weight(filters: Filters) -> int:
    """What a subscription's filters cost every batch of its table's changes: one
    conversion per value (RateLimits counts a user's, in all)."""
    return sum(len(f.value) if f.op == "in" else 1 for f in filters)


def weight_of(raw: Any) -> int:
    """weight() of filters as a client sent them; 0 where they do not parse (subscribing
    refuses them, saying why)."""
    try:
        return weight(Filter.parse_all(raw))
    except SubscriptionError:
        return 0


def _matches(table: Table, filters: Filters, prefix: str) -> tuple[sql.Composable, dict[str, Any]]:
    """One boolean SQL expression for a set of filters, and its parameters."""
    if not filters:
        return sql.SQL("true"), {}
    params = {f"{prefix}_{i}": f.parameter() for i, f in enumerate(filters)}
    parts = [f.condition(table, name) for f, name in zip(filters, params, strict=True)]
    return sql.SQL("coalesce({}, false)").format(sql.SQL(" AND ").join(parts)), params


def _row(columns: Sequence[str]) -> sql.Composable:
    """The row as JSON text, only `columns` (those the subscriber may read). json, not jsonb:
    a `json` value keeps its text, which jsonb may refuse (an escaped NUL, a number numeric
    cannot hold) — with jsonb, one such row made every snapshot of its table fail."""
    picked = sql.SQL(", ").join(sql.Identifier("t", c) for c in columns)
    return sql.SQL("(SELECT pg_catalog.row_to_json(r) FROM (SELECT {}) r)::text").format(picked)


def _key(table: Table) -> sql.Composable:
    parts = sql.SQL(", ").join(sql.Identifier("t", c) for c in table.key)
    return sql.SQL("pg_catalog.jsonb_build_array({})::text").format(parts)


def _parse_key(text: str) -> Key:
    # exactly: numbers with a fraction as Decimals, as the change log's keys (exact.py)
    return tuple(hashable(v) for v in exact.loads(text))


async def describe(conn: psycopg.AsyncConnection[Any], name: Any) -> Table:
    """The table a client named, if realtime serves it; SubscriptionError otherwise. Asked as
    the subscriber (after `as_identity`, in its transaction): a table it may not read gets the
    same answer as one that does not exist, enabled or not, so nobody learns what exists by
    asking. Enabled means that pyfuncs' capture trigger function is attached to it, which
    only `pyfuncs.enable_realtime` (pyfuncs' owner) can do; a trigger's name proves nothing."""
    row = None
    if isinstance(name, str) and 0 < len(name) <= 256 and "\x00" not in name and _is_text(name):
        try:
            async with conn.transaction():  # a savepoint: a malformed name must not end ours
                cur = await conn.execute(query("realtime_table_info"), {"table": name})
                row = await cur.fetchone()
        except psycopg.OperationalError:
            raise
        except psycopg.Error:  # not a relation name at all, another database's, ...
            row = None
    if row is None:
        raise SubscriptionError(
            "unknown_table",
            f"there is no table {repr(name)[:80]} that you may read; name it as 'schema.table'",
        )
    relid, schema, table, enabled, key, odd_key = row
    if not enabled:
        raise SubscriptionError(
            "not_enabled",
            f"{schema}.{table} is not enabled for realtime; run `pyfuncs realtime enable "
            f"{schema}.{table}` (or op.enable_realtime) first",
        )
    if not key:
        raise SubscriptionError(
            "no_primary_key", f"{schema}.{table} has no primary key; realtime needs one"
        )
    if odd_key:
        raise SubscriptionError(
            "unsupported_key",
            f"{schema}.{table}'s primary key has {', '.join(odd_key)}: capture logs such a "
            "value as its text while rows carry it as JSON, so its changes could not be "
            "matched to rows; realtime serves tables whose key columns have built-in types, "
            "enums or domains over them",
        )
    return Table(relid, schema, table, tuple(key))


def removed_later_query(
    table: Table, after: int, keys: Iterable[Key]
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """Of `keys`, those a change committed after position `after` deletes, re-keys or
    truncates (run by the gateway in its own role, in the snapshot of the visibility check);
    read the answer with `removed_keys`."""
    return query("realtime_removed_later"), {"after": after, **_keys_of(table, keys)}


def changed_later_query(
    table: Table, commit: int, change: int, keys: Sequence[Key], window: int
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """Of `keys`, the ordinals (from 1) of those a change of `table` among the log's next
    `window` changes (in the next `window` commits) after position (`commit`, `change`)
    writes or removes (all, after a TRUNCATE): run by the gateway in its own role."""
    params = {"commit": commit, "change": change, "window": window, **_keys_of(table, keys)}
    return query("realtime_changed_later"), params


def _keys_of(table: Table, keys: Iterable[Key]) -> dict[str, Any]:
    """The parameters that name a table's keys in a query of the change log."""
    objects = [Jsonb(table.key_object(k), exact.dumps) for k in keys]
    return {"schema": table.schema, "table": table.name, "keys": objects,
            "names": list(table.key)}  # fmt: skip


def removed_keys(table: Table, keys: set[Key], rows: Iterable[tuple[Any, ...]]) -> set[Key]:
    removed: set[Key] = set()
    for op, old, new in rows:
        if op == "TRUNCATE":
            return set(keys)
        old_key = table.key_of(old)
        if old_key is not None and (op == "DELETE" or table.key_of(new) != old_key):
            removed.add(old_key)
    return removed


# the settings a subscriber's code may have changed, as the gateway's sessions start with
_PINNED = {"names": ["search_path", *VALUE_SETTINGS],
           "values": [SEARCH_PATH, *VALUE_SETTINGS.values()]}  # fmt: skip


async def as_identity(conn: psycopg.AsyncConnection[Any], identity: Identity) -> None:
    """Switch the current transaction to a subscriber's role and claims, with the session's
    search_path and value settings as it began: the code that ran as the subscriber before
    (an RLS policy of another table, in a check of the same batch) may have set them, and
    rows must be read as the change log writes them (a red team's policy set TimeZone, and
    another subscriber's timestamptz keys no longer matched the log's)."""
    try:
        await conn.execute(query("gateway_as_identity"), {**identity.settings(), **_PINNED})
    except psycopg.errors.InvalidAuthorizationSpecification as exc:
        raise SubscriptionError("unauthorized", exc.diag.message_primary or str(exc)) from None


async def readable_columns(conn: psycopg.AsyncConnection[Any], table: Table) -> list[str]:
    """Columns the current role may SELECT (call after `as_identity`)."""
    cur = await conn.execute(query("realtime_readable_columns"), {"relid": table.relid})
    row = await cur.fetchone()
    return list(row[0]) if row else []


async def check(conn: psycopg.AsyncConnection[Any], table: Table, filters: Filters) -> list[str]:
    """Whether the current role may subscribe to `table` with `filters`: it must read the key
    and every filtered column (a filter on a hidden column would reveal it), each value must
    convert to its column's type, and no filtered column may have a type whose conversion
    looks objects up by name (regclass...: it would tell whether they exist). Returns the
    readable columns."""
    columns = await readable_columns(conn, table)
    if not columns:
        raise SubscriptionError("forbidden", f"your role may not SELECT from {table.qualified}")
    missing = [c for c in table.key if c not in columns]
    if missing:
        raise SubscriptionError(
            "forbidden",
            f"your role may not read the key of {table.qualified} ({', '.join(missing)})",
        )
    for f in filters:
        if f.column not in columns:
            raise SubscriptionError(
                "bad_filter",
                f"filter on {f.column[:80]!r}: {table.qualified} has no such column you may "
                f"read; columns: {', '.join(columns)}",
            )
    if not filters:
        return columns
    named = sorted({f.column for f in filters})
    cur = await conn.execute(
        query("realtime_lookup_columns"), {"relid": table.relid, "columns": named}
    )
    lookups = [c for (c,) in await cur.fetchall()]
    if lookups:
        raise SubscriptionError(
            "bad_filter",
            f"filter on {lookups[0]!r}: its type names database objects (regclass, regrole "
            "and the like), which filters do not compare; filter on another column",
        )
    for f in filters:
        # convert the value(s) by the row type, as the delivery queries will
        records = sql.SQL(
            "pg_catalog.jsonb_array_elements(%(v)s)" if f.op == "in" else "(SELECT %(v)s)"
        )
        value = sql.SQL(
            "SELECT pg_catalog.jsonb_populate_record(NULL::{}, e) FROM {} AS x(e)"
        ).format(table.ident, records)
        try:
            async with conn.transaction():  # a savepoint: a bad value must not end ours
                await conn.execute(value, {"v": f.parameter()})
        except psycopg.OperationalError:
            raise
        except psycopg.Error:
            # PostgreSQL's message is not passed on: the column's type may run code of the
            # type's owner (a domain's CHECK), which could put anything in it
            raise SubscriptionError(
                "bad_filter",
                f"filter on {f.column!r}: {_shown(f.value)} is not a valid value for this "
                "column (its type refused it)",
            ) from None
    return columns


def _shown(value: Any) -> str:
    text = _json(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 80 else text[:77] + "..."


async def snapshot(
    conn: psycopg.AsyncConnection[Any], table: Table, columns: Sequence[str],
    filters: Filters, limit: int,
) -> list[tuple[Key, str]]:  # fmt: skip
    """The rows the current role sees that match `filters` (key, JSON text), at most
    `limit` (SubscriptionError beyond: the subscriber must narrow it)."""
    matches, params = _matches(table, filters, "f")
    statement = sql.SQL("SELECT {}, {} FROM {} t WHERE {} LIMIT %(limit)s").format(
        _key(table), _row(columns), table.ident, matches
    )
    cur = await conn.execute(statement, {**params, "limit": limit + 1})
    rows = await cur.fetchall()
    if len(rows) > limit:
        raise SubscriptionError(
            "too_many_rows",
            f"{table.qualified} has more than {limit} rows for this subscription; narrow it "
            "with filters",
        )
    return [(_parse_key(key), row) for key, row in rows]


Visible = dict[Key, tuple[str, list[bool]]]


def visible_query(
    table: Table, columns: Sequence[str], keys: Iterable[Key], filter_sets: Sequence[Filters]
) -> tuple[str, dict[str, Any]]:
    """Of the rows with `keys`, those the current role sees now: key -> (JSON text, whether
    each filter set matches). One query whatever the number of subscriptions; read the
    answer with `visible_rows`."""
    statement, params = _visible_statement(table, tuple(columns), tuple(filter_sets))
    objects = Jsonb([table.key_object(k) for k in keys], exact.dumps)
    return statement, {**params, "keys": objects}


CACHED_FILTER_SETS = 8  # statements for more filter sets are composed for each batch


def _visible_statement(
    table: Table, columns: tuple[str, ...], filter_sets: tuple[Filters, ...]
) -> tuple[str, dict[str, Any]]:
    """The statement of `visible_query` and its filter parameters, composed once for each
    table, columns and filters (it runs for every batch). Only statements for a few filter
    sets are cached, in a small cache: a user's many subscriptions, changed between
    batches, would otherwise fill it with large statements (and their parameters)."""
    if len(filter_sets) > CACHED_FILTER_SETS:
        return _compose_visible(table, columns, filter_sets)
    return _cached_visible(table, columns, filter_sets)


def _compose_visible(
    table: Table, columns: tuple[str, ...], filter_sets: tuple[Filters, ...]
) -> tuple[str, dict[str, Any]]:
    matches = [_matches(table, filters, f"s{i}") for i, filters in enumerate(filter_sets)]
    flags = sql.SQL(", ").join(m for m, _ in matches) if matches else sql.SQL("true")
    key_columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.key)
    statement = sql.SQL(
        "SELECT {}, {}, ARRAY[{}] FROM {} t WHERE ({}) IN "
        "(SELECT {} FROM pg_catalog.jsonb_populate_recordset(NULL::{}, %(keys)s))"
    ).format(
        _key(table), _row(columns), flags, table.ident,
        sql.SQL(", ").join(sql.Identifier("t", c) for c in table.key),
        key_columns, table.ident,
    )  # fmt: skip
    params: dict[str, Any] = {}
    for _, p in matches:
        params.update(p)
    return statement.as_string(), params


def visible_rows(rows: Iterable[tuple[Any, ...]]) -> Visible:
    return {_parse_key(key): (row, list(flags)) for key, row, flags in rows}


_cached_visible = functools.lru_cache(maxsize=256)(_compose_visible)
