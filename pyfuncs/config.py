"""Where to connect, resolved the same way by every command and API.

Order: an explicit `--dsn`, then `PYFUNCS_DSN`, then `DATABASE_URL`, then the embedded
cluster under `.pgdata/` if it has been started (`pyfuncs db up`).

pyfuncs' own sessions (install, deploy, status...) run as a superuser in a database whose
owner, or anyone with CREATE on a schema, may have put functions or tables of the same name
as the ones pyfuncs uses on the database's default search_path. `connect` pins search_path
to pg_catalog for them, over whatever the database, the role or the DSN set.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .embedded import Cluster
from .errors import ClusterError, ConfigError


def resolve_dsn(explicit: str | None = None) -> str:
    given = (("--dsn", explicit), ("PYFUNCS_DSN", os.environ.get("PYFUNCS_DSN")),
             ("DATABASE_URL", os.environ.get("DATABASE_URL")))  # fmt: skip
    for where, candidate in given:
        if candidate:
            try:
                candidate.encode("utf-8")
            except UnicodeEncodeError:  # bytes that are not UTF-8, as Python sees them
                raise ConfigError(f"the DSN given by {where} is not UTF-8 text") from None
            return candidate
    try:
        return Cluster.default().url()
    except ClusterError as exc:
        raise ConfigError(
            "no database given: pass --dsn, set PYFUNCS_DSN or DATABASE_URL, "
            "or start the embedded one with `pyfuncs db up`"
        ) from exc


# Startup options a client sends win over ALTER DATABASE / ALTER ROLE settings; a later -c
# wins over an earlier one, so the pin goes last.
SEARCH_PATH = "pg_catalog,pg_temp"
PINNED_SEARCH_PATH = f"-c search_path={SEARCH_PATH}"
# How values are written as text, whatever the server, the database, the role or a writer
# set: capture writes the change log so (realtime_capture and realtime_wal_batch pin the same
# in sql/schema.sql), the WAL consumer's stream so (wal2json calls the types' output
# functions in that session), and the gateway reads rows so, to compare their keys with the
# log's and send them alike: timestamps in UTC, intervals and dates in PostgreSQL's own
# styles, a double's shortest exact digits, bytea in hex, money in the C locale, reg* values
# quoted only where needed (and named as search_path pg_catalog names them: the pin above).
VALUE_SETTINGS = {
    "DateStyle": "ISO,MDY", "IntervalStyle": "postgres", "extra_float_digits": "1",
    "bytea_output": "hex", "TimeZone": "UTC", "lc_monetary": "C",
    "quote_all_identifiers": "off",
}  # fmt: skip
PINNED_VALUES = " ".join(f"-c {name}={value}" for name, value in VALUE_SETTINGS.items())


def pinned_options(dsn: str) -> str:
    """The `options` connection parameter for `dsn` with search_path pinned to pg_catalog:
    those of the DSN (or PGOPTIONS), then the pin, which wins."""
    given = conninfo_to_dict(dsn).get("options") or os.environ.get("PGOPTIONS") or ""
    return f"{given} {PINNED_SEARCH_PATH}".strip()


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection for pyfuncs' own work, with search_path pinned to pg_catalog."""
    return psycopg.connect(dsn, options=pinned_options(dsn), **kwargs)
