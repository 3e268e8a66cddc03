"""Calls cannot affect each other: a routine cannot change what other routines, or other
roles' calls, run in the same backend (issue 12, "Calls cannot affect each other")."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying

from .modules import contaminate_mod, random_mod

CLEAN = '{"a": [1, 2]} False 0.142857 0 3.14 1 0.33333 0001'


@pytest.fixture
def cont(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    deploying.deploy(conn, contaminate_mod)
    return conn


def test_every_attempt_is_refused_and_nothing_changes_for_anyone(
    cont: psycopg.Connection[Any],
) -> None:
    assert cont.execute("SELECT cont.observe()").fetchone() == (CLEAN,)
    for attempt in sorted(contaminate_mod.ATTEMPTS):
        answer = cont.execute("SELECT cont.contaminate(%s)", [attempt]).fetchone()
        assert answer is not None and answer[0].startswith("refused: "), (attempt, answer)
    # the same backend, the same routine and another role's call: as before
    assert cont.execute("SELECT cont.observe()").fetchone() == (CLEAN,)
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT cont.observe()").fetchone() == (CLEAN,)


def test_shared_caches_keep_no_key_of_a_routines_class(cont: psycopg.Connection[Any]) -> None:
    """struct's format cache and ZoneInfo's zone caches keep the key they were given and
    compare later keys with it: a routine's str subclass that says it equals any key ran
    its __eq__ in other roles' calls and chose what they got (8-byte packs of '<I', Paris
    at +14:00), and so did a routine's ZoneInfo subclass that kept ZoneInfo from giving it
    a cache of its own (its zones went into the one other calls read). The runtime gives
    them plain str keys; ZoneInfo's zones come from a cache of plain keys of the runtime's,
    and its subclasses are refused."""
    assert cont.execute("SELECT cont.plant_caches()").fetchone() == ("planted",)
    cont.execute("SET ROLE student")
    assert cont.execute("SELECT cont.cached()").fetchone() == ("4 4 1:00:00",)


def test_the_catalogue_of_contamination_is_large(cont: psycopg.Connection[Any]) -> None:
    assert len(contaminate_mod.ATTEMPTS) >= 15


def _untemper(y: int) -> int:
    """The Mersenne Twister's state word behind one 32-bit output (its tempering undone)."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    x = y
    for _ in range(4):
        x = y ^ ((x << 7) & 0x9D2C5680)
    y = x & 0xFFFFFFFF
    x = y
    for _ in range(2):
        x = y ^ (x >> 11)
    return x & 0xFFFFFFFF


def _predicted(observed: list[int], n: int) -> list[int]:
    """The next n draws of the Mersenne Twister that gave the 624 `observed` ones."""
    import random

    twister = random.Random()
    twister.setstate((3, (*(_untemper(y) for y in observed), 624), None))
    return [twister.getrandbits(32) for _ in range(n)]


def test_each_module_draws_from_a_generator_of_its_own(cont: psycopg.Connection[Any]) -> None:
    """624 draws tell a Mersenne Twister's state: they predict the module's own next draws,
    and nothing about another module's (another role's, the next call's)."""
    deploying.deploy(cont, random_mod)
    observed = cont.execute("SELECT rnd.draws(624)").fetchone()
    assert observed is not None
    predicted = _predicted(observed[0], 8)
    assert cont.execute("SELECT rnd.draws(8)").fetchone() == (predicted,)  # the method works
    predicted = _predicted(observed[0], 16)[8:]
    others = cont.execute("SELECT cont.draws(8)").fetchone()
    assert others is not None and others[0] != predicted
    assert cont.execute("SELECT rnd.draws(8)").fetchone() == (predicted,)  # still its own
    cont.execute("SET ROLE student")
    others = cont.execute("SELECT cont.draws(8)").fetchone()
    assert others is not None and others[0] != _predicted(observed[0], 24)[16:]
    cont.execute("RESET ROLE")
    for how in ("getrandbits", "randbytes", "instance"):
        with pytest.raises(psycopg.Error) as info:
            cont.execute("SELECT rnd.too_many(%s)", [how])
        assert info.value.sqlstate == "54000", (how, info.value)
        assert "one operation in a routine may make at most" in str(info.value)
        cont.rollback()
