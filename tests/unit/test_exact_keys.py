"""Keys compared exactly (pyfuncs/gateway/exact.py): numbers with a fraction or an exponent
are Decimals wherever the gateway reads keys (the change log, rows it reads, keys clients
send), so keys that one double would hold are told apart, and numbers PostgreSQL takes for
one key are one key."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from pyfuncs.errors import SubscriptionError
from pyfuncs.gateway import exact, protocol
from pyfuncs.gateway.tables import Filter, Table, _parse_key

T = Table(1, "rt", "k", ("id",))
LONG = "0.10000000000000000001"  # 0.1 as a double


def test_keys_beyond_a_doubles_precision_are_told_apart() -> None:
    logged = T.key_of(exact.loads(b'{"id": ' + LONG.encode() + b"}"))
    read = _parse_key(f"[{LONG}]")
    assert logged == read == (Decimal(LONG),)
    assert logged != T.key_of(exact.loads('{"id": 0.1}'))
    sent = protocol.decode(f'{{"keys": [{{"id": {LONG}}}, {{"id": 0.1}}]}}', 1000)["keys"]
    assert [T.key_from(k) for k in sent] == [(Decimal(LONG),), (Decimal("0.1"),)]
    # and go back as they came
    assert exact.dumps(T.key_object(read)) == f'{{"id":{LONG}}}'
    # integers were exact already, and stay ints
    assert _parse_key("[9007199254740993]") != _parse_key("[9007199254740992]")
    assert type(_parse_key("[9007199254740993]")[0]) is int


def test_numbers_postgresql_takes_for_one_key_are_one_key() -> None:
    # numeric 1, 1.0 and 1.00 are one key (a unique index refuses the second); jsonb too
    keys = {_parse_key("[1]"), _parse_key("[1.0]"), _parse_key("[1.00]"), _parse_key("[1e0]")}
    assert len(keys) == 1
    assert T.key_from(protocol.decode('{"id": 1.000}', 100)) in keys
    # a jsonb key's objects, whatever their members' order, and their numbers exactly
    a = _parse_key('[{"b": 0.5, "a": [1.0, "x"]}]')
    assert a == _parse_key('[{"a": [1, "x"], "b": 0.50}]')
    assert a != _parse_key('[{"a": [1, "x"], "b": 0.50000000000000000001}]')


def test_exact_json_of_keys_and_filters() -> None:
    value = {"id": [Decimal("1E-7"), Decimal("-0.0"), 2, "x", None, True]}
    assert exact.dumps(value) == '{"id":[1E-7,-0.0,2,"x",null,true]}'
    assert json.loads(exact.dumps(value), parse_float=Decimal) == value
    assert exact.dumps({"a": 1}) == json.dumps({"a": 1}, separators=(",", ":"))
    with pytest.raises(ValueError):
        exact.dumps([Decimal("NaN")])
    # a filter's value keeps its digits too (it converts by the column's type in SQL)
    f = Filter.parse(protocol.decode(f'{{"column": "id", "op": "eq", "value": {LONG}}}', 100))
    assert f.value == Decimal(LONG)
    assert f.parameter().dumps(f.parameter().obj) == f'{{"id":{LONG}}}'


@pytest.mark.parametrize("number", ["1e400", "-1E309", "1e-99999999999999999999"])
def test_absurd_numbers_are_still_refused(number: str) -> None:
    with pytest.raises(SubscriptionError) as error:
        protocol.decode(f'{{"keys": [{{"id": {number}}}]}}', 1000)
    assert error.value.code == "bad_request"


def test_integers_longer_than_python_converts_are_read_as_decimals() -> None:
    """Python refuses to convert an integer of more than 4,300 digits; a numeric key may have
    131,072. A text with one is read with every integer a Decimal (equal to, and hashed as,
    the int), instead of failing every read of the change log."""
    huge = "9" * 5000
    logged = T.key_of(exact.loads(f'{{"id": {huge}, "n": 1}}'))
    assert logged == _parse_key(f"[{huge}]") == (Decimal(huge),)
    assert exact.loads('{"id": 7, "n": ' + huge + "}")["id"] == 7
    assert exact.dumps(T.key_object(logged)) == f'{{"id":{huge}}}'
    with pytest.raises(json.JSONDecodeError):
        exact.loads('{"id": ' + huge)
