"""JSON whose numbers keep their exact value, for keys and filters.

Python's JSON decoder makes a double of every number with a fraction or an exponent, so two
`numeric` keys that differ beyond a double's precision (`0.1` and `0.10000000000000000001`)
would decode to one value: the gateway would take a change of one row for a change of the
other. So whatever the gateway compares keys of, it decodes with `loads`: such numbers become
`Decimal`s, which compare and hash by value (`Decimal("1.0") == Decimal("1.00") == 1`, as
PostgreSQL's `numeric` compares them, and as jsonb does), and integers stay `int`s (exact in
Python already). Text and integer keys decode as before, at the same speed: the decoder only
calls `Decimal` for a number with a fraction or an exponent.

`dumps` writes a `Decimal` as its digits (`str`, which is valid JSON for a finite value), so
keys go back to clients, and to PostgreSQL as jsonb parameters, exactly as they came.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

_DECODER = json.JSONDecoder(parse_float=Decimal)
# integers too, for a text with one longer than Python converts (4,300 digits, its guard
# against quadratic conversions): a `numeric` key may have 131,072 digits before the point,
# and one such row must not make every read of the change log fail
_WIDE = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal)


def loads(data: str | bytes) -> Any:
    """A JSON text, numbers with a fraction or an exponent as `Decimal`s (psycopg's jsonb
    loader on the gateway's connections, see sessions.py, and the keys the queries return);
    in a text with an integer too long for `int`, every integer is a `Decimal` (they compare
    and hash as the `int`s would)."""
    text = data if isinstance(data, str) else data.decode()
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer over Python's limit of digits
        return _WIDE.decode(text)


COMPACT = (",", ":")


def dumps(value: Any, separators: tuple[str, str] = COMPACT) -> str:
    """JSON of `value` (compact unless told), a `Decimal` written as its digits (only finite
    ones are ever made: `loads` and protocol.decode make no other). Values without a
    `Decimal`, the common case, are encoded by the json module alone; what it cannot encode
    is written as its `str`, as `json.dumps(..., default=str)` would."""
    try:
        return json.dumps(value, separators=separators)
    except TypeError:
        return _encode(value, *separators)


def _encode(value: Any, item: str, key: str) -> str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        return str(value)
    if isinstance(value, dict):
        members = (f"{json.dumps(str(k))}{key}{_encode(v, item, key)}" for k, v in value.items())
        return "{" + item.join(members) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + item.join(_encode(v, item, key) for v in value) + "]"
    return json.dumps(value, default=str)
