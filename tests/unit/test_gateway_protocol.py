"""The gateway's protocol module without a server: decoding, typing, close reasons."""

from __future__ import annotations

import pytest

from pyfuncs.errors import SubscriptionError
from pyfuncs.gateway import protocol
from pyfuncs.gateway.audit import _storable
from pyfuncs.gateway.protocol import Auth, Ping, Subscribe, TooBig, Unsubscribe


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "not binary"),
        ("[]", "JSON objects"),
        ("1e999999", "JSON objects"),
        ('{"type": "ping", "x": NaN}', "JSON objects"),
        ('{"type": "ping", "x": -Infinity}', "JSON objects"),
        ("{", "JSON objects"),
        ("[" * 100_000, "nested"),
        ('{"a": ' * 17 + "1" + "}" * 17, "nested"),
        ('{"a": [' + "[" * 15 + "]" * 15 + "]}", "nested"),
    ],
)
def test_malformed_messages_are_bad_requests(text: str | None, says: str) -> None:
    with pytest.raises(SubscriptionError, match=says) as error:
        protocol.decode(text, 1 << 20)
    assert error.value.code == "bad_request"


def test_size_is_counted_in_bytes() -> None:
    assert protocol.decode('{"a": "' + "é" * 10 + '"}', 32)
    with pytest.raises(TooBig, match="at most 32 bytes"):
        protocol.decode('{"a": "' + "é" * 13 + '"}', 32)


def test_messages_are_typed() -> None:
    assert protocol.parse({"type": "auth", "token": "t"}, 5) == Auth("t")
    assert protocol.parse({"type": "auth", "token": 5}, 5) == Auth(None)
    assert protocol.parse({"type": "ping"}, 5) == Ping()
    assert protocol.parse({"type": "unsubscribe", "id": "a"}, 5) == Unsubscribe("a")
    sub = protocol.parse(
        {"type": "subscribe", "id": "a", "table": "s.t", "since": "p", "keys": [{"id": 1}]}, 5
    )
    assert sub == Subscribe("a", "s.t", None, "p", ({"id": 1},))
    for bad in (
        {"type": "subscribe", "id": "", "table": "s.t"},
        {"type": "subscribe", "id": "a" * 65, "table": "s.t"},
        {"type": "subscribe", "id": "a", "keys": [{"id": 1}]},
        {"type": "subscribe", "id": "a", "since": "p", "keys": [{"id": i} for i in range(6)]},
        {"type": "subscribe", "id": "a", "since": "p", "keys": "id=1"},
        {"type": "unsubscribe", "id": None},
        {"type": "nope"},
        {},
    ):
        with pytest.raises(SubscriptionError) as error:
            protocol.parse(bad, 5)
        assert error.value.code == "bad_request", bad


@pytest.mark.parametrize("message", ["x" * 500, "é" * 200, "🙂" * 100, "\udc80" * 200, ""])
def test_close_reasons_fit_a_close_frame(message: str) -> None:
    reason = protocol.close_reason("unauthorized", message)
    assert len(reason.encode()) <= 123 and reason.startswith("unauthorized: ")


def test_the_audit_stores_what_postgresql_can_hold() -> None:
    assert _storable({"t": "a\x00b", "l": ["\ud800", 1], "\x00": None}) == {
        "t": "a\ufffdb", "l": ["?", 1], "\ufffd": None,
    }  # fmt: skip
