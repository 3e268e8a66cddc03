"""A routine that fails with a serialization failure a given number of times."""

from __future__ import annotations

from pyfuncs import RaiseError, db, stored_function


@stored_function(schema="rty")
def flaky(failures: int) -> int:
    # sequences are not transactional: the count survives the rolled-back attempts
    attempt = db.fetchval("SELECT nextval('rty.attempts')")
    if attempt <= failures:
        raise RaiseError("could not serialize access", sqlstate="40001")
    return int(attempt)
