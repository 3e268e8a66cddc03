"""`db` outside PostgreSQL, so routine modules run and unit-test as plain Python.

Inside the database, `from pyfuncs import db` gives the runtime's PL/Python handle. Here it
gives the same calls (`execute`, `fetchone`, `fetchval`, `cursor`, `subtransaction`, `claims`,
`user_id`) over a psycopg connection bound with `using(conn)`; `$1` placeholders are sent as
they are (psycopg's raw cursors), so the query text is the same in both places.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ._pg.db import Queries, Rows
from ._pg.errors import RaiseError
from .errors import ConfigError

_connection: ContextVar[psycopg.Connection[Any] | None] = ContextVar("pyfuncs_db", default=None)


@contextmanager
def using(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Bind `db` to a psycopg connection for the duration of the block."""
    token = _connection.set(conn)
    try:
        yield
    finally:
        _connection.reset(token)


def _param(value: Any) -> Any:
    if isinstance(value, Mapping) or (
        isinstance(value, list | tuple) and any(isinstance(v, Mapping | list) for v in value)
    ):
        return Jsonb(value)
    return value


class LocalDb(Queries):
    """The routine's database handle, over psycopg (see the module docstring)."""

    def _conn(self) -> psycopg.Connection[Any]:
        conn = _connection.get()
        if conn is None:
            raise ConfigError(
                "pyfuncs.db is used outside PostgreSQL without a connection; "
                "wrap the call in `with pyfuncs.local.using(conn):`"
            )
        return conn

    def execute(self, query: str, params: Sequence[Any] = (), /) -> Rows:
        with psycopg.RawCursor(self._conn(), row_factory=dict_row) as cur:
            cur.execute(query, [_param(v) for v in params])
            rows = Rows(cur.fetchall() if cur.description else [])
            rows.rowcount = cur.rowcount
            return rows

    def cursor(
        self, query: str, params: Sequence[Any] = (), /, *, batch: int = 1000
    ) -> Iterator[dict[str, Any]]:
        with psycopg.RawCursor(self._conn(), row_factory=dict_row) as cur:
            cur.execute(query, [_param(v) for v in params])
            while chunk := cur.fetchmany(batch):
                yield from chunk

    def subtransaction(self) -> AbstractContextManager[Any]:
        return self._conn().transaction()

    def claims(self) -> dict[str, Any]:
        raw = self.fetchval("SELECT current_setting('request.jwt.claims', true)")
        return dict(json.loads(raw)) if raw else {}


db = LocalDb()

__all__ = ["LocalDb", "RaiseError", "Rows", "db", "using"]
