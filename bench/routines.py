"""The trivial routine of benchmark (a)."""

from __future__ import annotations

from pyfuncs import stored_function


@stored_function(schema="bench", volatility="immutable", parallel="safe")
def add_one(x: int) -> int:
    return x + 1
