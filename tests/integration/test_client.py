"""Client behaviour: isolation levels, retries with backoff, sessions, calls by name."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import psycopg
import pytest

from pyfuncs import errors
from pyfuncs.client import Client

from .modules import retry_mod


@pytest.fixture
def client(deployed: Any, conn: psycopg.Connection[Any]) -> Client:
    conn.execute("CREATE SCHEMA rty; CREATE SEQUENCE rty.attempts")
    return deployed(retry_mod)


def test_serialization_failures_are_retried(client: Client) -> None:
    assert client.options(retries=3, backoff=0.001).call(retry_mod.flaky, 2) == 3


def test_retries_give_up_with_the_error(client: Client) -> None:
    with pytest.raises(errors.SerializationFailure):
        client.options(retries=1, backoff=0.001).call(retry_mod.flaky, 5)
    with pytest.raises(errors.SerializationFailure):
        client.call(retry_mod.flaky, 100)  # no retries by default


def test_isolation_level_is_applied(client: Client) -> None:
    with client.options(isolation="serializable").transaction() as tx:
        level = tx.connection.execute("SHOW transaction_isolation").fetchone()
    assert level == ("serializable",)
    with client.transaction() as tx:
        assert tx.connection.execute("SHOW transaction_isolation").fetchone() == ("read committed",)


def test_real_serialization_conflict_is_retried(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("CREATE TABLE rty.counter (n int); INSERT INTO rty.counter VALUES (0)")
    serializable = client.options(isolation="serializable", retries=5, backoff=0.001)
    attempts: Counter[str] = Counter()
    failures: list[BaseException] = []
    both_read = threading.Barrier(2)

    def bump(tx: Any) -> None:
        me = threading.current_thread().name
        attempts[me] += 1
        tx.connection.execute("SELECT n FROM rty.counter").fetchone()
        if attempts[me] == 1:
            both_read.wait(timeout=10)  # both have read before either writes: a sure conflict
        tx.connection.execute("UPDATE rty.counter SET n = n + 1")

    def worker() -> None:
        try:
            serializable.run(bump)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, name=f"w{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert conn.execute("SELECT n FROM rty.counter").fetchone() == (2,)
    assert sum(attempts.values()) == 3  # exactly one transaction was retried


def test_a_session_spans_several_calls_in_one_transaction(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    with pytest.raises(errors.SerializationFailure), client.transaction() as tx:
        first = tx.call("rty.flaky", failures=0)
        tx.connection.execute("CREATE TABLE rty.trace (n int)")
        tx.call(retry_mod.flaky, failures=first + 10)
    assert conn.execute("SELECT to_regclass('rty.trace')").fetchone() == (None,)
