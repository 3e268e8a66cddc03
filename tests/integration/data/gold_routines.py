from collections.abc import Iterator

from pyfuncs import db, stored_function


@stored_function(schema="gold")
def add(a: int, b: int = 1) -> int:
    """Adds."""
    return a + b + int(db.fetchval("SELECT 0"))


@stored_function(schema="gold")
def upto(n: int) -> Iterator[int]:
    yield from range(n)
