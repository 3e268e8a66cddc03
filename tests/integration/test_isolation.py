"""Calls cannot affect each other: a routine cannot change what other routines, or other
roles' calls, run in the same backend (issue 12, "Calls cannot affect each other")."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying

from .modules import contaminate_mod

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


def test_the_catalogue_of_contamination_is_large(cont: psycopg.Connection[Any]) -> None:
    assert len(contaminate_mod.ATTEMPTS) >= 15
