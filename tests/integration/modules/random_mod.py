"""Draws from random's module-level functions, in a module of their own (see
tests/integration/test_isolation.py: another module's draws tell nothing about these)."""

from __future__ import annotations

import random

from pyfuncs import stored_function


@stored_function(schema="rnd")
def draws(n: int) -> list[int]:
    return [random.getrandbits(32) for _ in range(n)]


@stored_function(schema="rnd")
def too_many(how: str) -> int:
    """More random bits or bytes than one operation may make: refused."""
    if how == "getrandbits":
        return random.getrandbits(1 << 40).bit_length()
    if how == "randbytes":
        return len(random.randbytes(1 << 40))
    return len(random.Random().randbytes(1 << 40))
