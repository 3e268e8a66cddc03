"""The gateway's wire protocol (README "Realtime: the gateway"): inbound messages, decoded and
checked into typed ones, and the close codes.

Whatever a client sends is decoded here, before anything else looks at it, and anything
malformed is a SubscriptionError("bad_request") that says what is wrong: a binary frame, text
that is not a JSON object, JSON nested deeper than any message needs (Python's decoder would
otherwise raise RecursionError, and code that walks the value later could too), an unknown
`type`, fields of the wrong type. A message over the size limit is `TooBig`: the connection
is closed with 1009.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from ..errors import SubscriptionError

# WebSocket close codes (4000-4999 are the application's); the reason says more
CLOSE_CODES = {
    "unauthorized": 4001,
    "token_expired": 4003,
    "slow_consumer": 4008,
    "resync_required": 4010,
    "rate_limited": 4029,
    "shutdown": 1001,  # going away
    "message_too_big": 1009,
    "internal_error": 1011,
}
REFUSED = 1008  # policy violation: any other refusal of a connection
MAX_DEPTH = 16  # nesting of a message's JSON (a filter in a subscribe message is at 4)
MAX_REASON = 123  # bytes of a close frame's reason (RFC 6455)
SHUTDOWN = "the gateway is shutting down; reconnect to resume"
TYPES = ("auth", "subscribe", "unsubscribe", "ping")


class TooBig(SubscriptionError):
    """A message over the gateway's size limit: the connection is closed (1009)."""

    def __init__(self, limit: int) -> None:
        super().__init__("message_too_big", f"a message has at most {limit} bytes")


def close_reason(code: str, message: str) -> str:
    """`code: message`, cut to what a close frame may carry (123 bytes of UTF-8)."""
    text = f"{code}: {message}"
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_REASON:
        return text
    return data[: MAX_REASON - 3].decode("utf-8", "ignore") + "..."


@dataclass(frozen=True)
class Auth:
    token: str | None  # None: missing, or not a string


@dataclass(frozen=True)
class Subscribe:
    id: str
    table: Any  # checked against the database as the subscriber (tables.describe)
    filters: Any  # checked by tables.Filter.parse_all
    since: object = None  # a position token (checked by PositionTokens.position)
    keys: tuple[dict[str, Any], ...] | None = None  # on resume: the keys the client holds


@dataclass(frozen=True)
class Unsubscribe:
    id: str


@dataclass(frozen=True)
class Ping:
    pass


Message = Auth | Subscribe | Unsubscribe | Ping


def size_of(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def decode(text: str | None, limit: int) -> dict[str, Any]:
    """One client message as a JSON object; SubscriptionError("bad_request") when it is not
    one, TooBig over `limit` bytes."""
    if text is None:
        raise SubscriptionError("bad_request", "messages are JSON text, not binary")
    if size_of(text) > limit:
        raise TooBig(limit)
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise SubscriptionError(
            "bad_request", f"a message is nested at most {MAX_DEPTH} levels deep"
        ) from None
    except ValueError:
        raise SubscriptionError("bad_request", "messages are JSON objects") from None
    if not isinstance(value, dict):
        raise SubscriptionError("bad_request", "messages are JSON objects")
    _check(value)
    return value


def _not_json(name: str) -> Any:
    # Python's decoder takes NaN and Infinity, which JSON (and PostgreSQL's jsonb) do not
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> Decimal:
    """A number with a fraction or an exponent, exactly (a key `0.10000000000000000001` is
    not the key `0.1`: exact.py), if it is finite as a double: `1e400` gets bad_request, as
    it did when such numbers were doubles (integers are Python's exact ints, as before)."""
    if not math.isfinite(float(text)):
        raise ValueError(f"{text[:40]} is out of range")
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent beyond Decimal's (`1e-99999999999999999999`)
        raise ValueError(f"{text[:40]} is out of range") from None


_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def _check(value: Any) -> None:
    """Bounded nesting. Iterative: the value may be as deep as the decoder allows."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise SubscriptionError(
                    "bad_request", f"a message is nested at most {MAX_DEPTH} levels deep"
                )
            stack.extend(
                (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
            )


def parse(message: dict[str, Any], max_keys: int) -> Message:
    """A decoded message as its typed form; SubscriptionError("bad_request") for an unknown
    type or a field of the wrong type."""
    kind = message.get("type")
    if kind == "auth":
        token = message.get("token")
        return Auth(token if isinstance(token, str) else None)
    if kind == "ping":
        return Ping()
    if kind == "unsubscribe":
        return Unsubscribe(_id(message))
    if kind == "subscribe":
        since = message.get("since")
        return Subscribe(
            _id(message), message.get("table"), message.get("filters"), since,
            _keys(message.get("keys"), since, max_keys),
        )  # fmt: skip
    raise SubscriptionError("bad_request", f"type is one of {', '.join(TYPES)}")


def _id(message: dict[str, Any]) -> str:
    sub_id = message.get("id")
    if not isinstance(sub_id, str) or not 0 < len(sub_id) <= 64:
        raise SubscriptionError("bad_request", "give the subscription an `id` (1-64 chars)")
    return sub_id


def _keys(raw: Any, since: object, most: int) -> tuple[dict[str, Any], ...] | None:
    if raw is None:
        return None
    if since is None:
        raise SubscriptionError(
            "bad_request", "`keys` goes with `since`: they are the keys you hold when resuming"
        )
    if not isinstance(raw, list) or not all(isinstance(k, dict) for k in raw):
        raise SubscriptionError(
            "bad_request", "`keys` is a list of primary keys as objects ({column: value})"
        )
    if len(raw) > most:
        raise SubscriptionError(
            "bad_request",
            f"`keys` holds at most {most} keys; with more rows than that, subscribe "
            "without `since` (a snapshot)",
        )
    return tuple(raw)


def message_id(message: Any) -> str | None:
    """The subscription a message is about, if it names one (errors carry it back)."""
    sub_id = message.get("id") if isinstance(message, dict) else None
    return sub_id if isinstance(sub_id, str) and len(sub_id) <= 64 else None
