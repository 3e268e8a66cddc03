from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest

from pyfuncs import ArgumentError, stored_function
from pyfuncs.callplan import bind, plan, signature_of


@stored_function(schema="api")
def f(
    when: datetime.date, ids: list[uuid.UUID], meta: dict[str, Any], note: str | None = None
) -> int:
    return 1


SIG = signature_of(f)


def test_binding_by_position_and_name() -> None:
    today = datetime.date.today()
    assert bind(SIG, (today, []), {"meta": {}}) == {"when": today, "ids": [], "meta": {}}


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((datetime.datetime.now(), [], {}), {}, "'when' expects date, got datetime"),
        ((datetime.date.today(), ["x"], {}), {}, "'ids' expects uuid\\[\\], got list"),
        ((datetime.date.today(), [], {}), {"note": 5}, "'note' expects text, got int"),
        ((datetime.date.today(), []), {}, "missing required argument 'meta'"),
    ],
)
def test_bad_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        bind(SIG, args, kwargs)


def test_statement_uses_named_arguments_with_casts() -> None:
    p = plan(SIG, (datetime.date(2020, 1, 1), [uuid.UUID(int=1)], {"a": 1}), {})
    text = p.statement.as_string(None)
    assert (
        text
        == 'SELECT "api"."f"("when" => %s::date, "ids" => %s::uuid[], "meta" => %s::jsonb) AS result'
    )
    assert p.read([{"result": 7}]) == 7
