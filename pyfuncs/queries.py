"""SQL kept in .sql files under sql/, loaded by name.

A file holds named sections introduced by `-- name: <query_name>` lines (the procrastinate
habit); `queries()` returns them as a dict. Whole files (schema, migrations) are read with
`read()`. Identifiers are never formatted into these texts: callers compose them with
`psycopg.sql`.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

_SECTION = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """The sql/ directory: packaged copy in a wheel, the repository's in a checkout."""
    packaged = Path(__file__).parent / "_sql"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "sql"


@functools.cache
def read(name: str) -> str:
    return (sql_dir() / name).read_text()


@functools.cache
def queries(name: str = "queries.sql") -> dict[str, str]:
    text = read(name)
    parts = _SECTION.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def query(name: str) -> str:
    return queries()[name]
