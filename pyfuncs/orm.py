"""Calling routines from SQLAlchemy, inside the Session's own transaction.

```python
with SessionLocal() as session, session.begin():
    session.add(Order(...))
    pyfuncs.orm.call(session, create_student, email="a@b.c", ...)
```
The engine must use psycopg 3 (`postgresql+psycopg://`).
"""

from __future__ import annotations

from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import orm

from .client import Routine, Session, _Signatures
from .errors import ConfigError

_signatures = _Signatures()


def call(
    session: orm.Session | sa.Connection, routine: Routine, /, *args: Any, **kwargs: Any
) -> Any:
    """Call a routine on the session's connection; commit or roll back with the session."""
    connection = session.connection() if isinstance(session, orm.Session) else session
    driver = connection.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise ConfigError("pyfuncs.orm needs a psycopg 3 engine (postgresql+psycopg://...)")
    return Session(driver, _signatures).call(routine, *args, **kwargs)
