"""Routines exercising the `db` handle; the same code runs outside PostgreSQL too."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from typing import Any

from pyfuncs import db, stored_function


@stored_function(schema="dbh")
def big_sum(n: int) -> int:
    """Streams n rows through a cursor in batches instead of holding them all."""
    total = 0
    for row in db.cursor("SELECT g FROM generate_series(1, $1) g", [n], batch=100):
        total += row["g"]
    return total


@stored_function(schema="dbh")
def keep_good(values: list[int]) -> list[int]:
    """Inserts each value in a savepoint; the ones that break the check are rolled back alone."""
    for v in values:
        try:
            with db.subtransaction():
                db.execute("INSERT INTO dbh.items VALUES ($1)", [v])
        except Exception:
            pass
    return [r["v"] for r in db.execute("SELECT v FROM dbh.items ORDER BY v")]


@stored_function(schema="dbh")
def touch(limit: int) -> int:
    return db.execute("UPDATE dbh.items SET v = v WHERE v <= $1", [limit]).rowcount


@stored_function(schema="dbh")
def typed_values(day: datetime.date, ident: uuid.UUID, meta: dict[str, Any]) -> dict[str, Any]:
    """Query results arrive as Python types, and typed parameters need no casts."""
    row = db.fetchone(
        "SELECT $1::date + 1 AS next, $2::uuid AS ident, $3::jsonb -> 'k' AS k, now() AS ts",
        [day, ident, meta],
    )
    assert row is not None
    return {
        "next": row["next"].isoformat(),
        "ident_is_uuid": isinstance(row["ident"], uuid.UUID),
        "k": row["k"],
        "ts_is_datetime": isinstance(row["ts"], datetime.datetime),
        "one": db.fetchval("SELECT 1"),
        "missing": db.fetchone("SELECT 1 WHERE false"),
    }


@stored_function(schema="dbh")
def whoami() -> dict[str, Any]:
    user = db.user_id()
    return {"claims": db.claims(), "user": str(user) if user else None}


@stored_function(schema="dbh")
def evens(limit: int) -> Iterator[int]:
    for row in db.execute("SELECT g FROM generate_series(1, $1) g WHERE g % 2 = 0", [limit]):
        yield row["g"]
