"""Routines whose endless work is not in their own frame: in what PostgreSQL does with their
result or exception after they return, in a generator's `finally`, or in C consuming a lazy
input. Every one must stop at timeout_ms like a plain `while True` (issue 12)."""

from __future__ import annotations

import collections
import datetime
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pyfuncs import stored_function


def _forever() -> int:
    n = 0
    while True:
        n += 1


class Endless(Exception):
    def __str__(self) -> str:
        return str(_forever())


class EndlessMapping(Mapping[str, int]):
    def __getitem__(self, key: str) -> int:
        return _forever()

    def __iter__(self) -> Iterator[str]:
        while True:
            yield "k"

    def __len__(self) -> int:
        return _forever()


@dataclass
class Pair:
    a: int
    b: int

    def __getattribute__(self, name: str) -> int:
        return _forever()


class EndlessZone(datetime.tzinfo):
    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        _forever()
        return datetime.timedelta(0)


class EndlessRows:
    def __iter__(self) -> EndlessRows:
        return self

    def __next__(self) -> int:
        return _forever()


@stored_function(schema="late", timeout_ms=200)
def exception_text() -> int:
    raise Endless()


@stored_function(schema="late", timeout_ms=200)
def mapping_result() -> dict[str, int]:
    return EndlessMapping()  # type: ignore[return-value]


@stored_function(schema="late", timeout_ms=200)
def dataclass_result() -> Pair:
    return Pair(1, 2)


@stored_function(schema="late", timeout_ms=200)
def zone_result() -> datetime.datetime:
    return datetime.datetime(2026, 1, 1, tzinfo=EndlessZone())


@stored_function(schema="late", timeout_ms=200)
def iterator_rows() -> Iterator[int]:
    return EndlessRows()


@stored_function(schema="late", timeout_ms=200)
def closing_rows() -> Iterator[int]:
    try:
        yield 1
        yield 2
    finally:  # run when a LIMIT closes the generator
        _forever()


def _unpack() -> int:
    _first, *rest = range(10**12)
    return len(rest)


# C functions consuming lazy inputs: each would loop in C for minutes to forever
LAZY = {
    "sum_range": lambda: sum(range(3_000_000_000)),
    "max_count": lambda: max(itertools.count()),
    "in_count": lambda: 5 in itertools.count(10),
    "join_repeat": lambda: len("".join(itertools.repeat("x", 10**12))),
    "product": lambda: len(list(itertools.product(range(5000), repeat=3))),
    "unpack_range": lambda: _unpack(),
    "sentinel": lambda: len(sorted(iter(int, 1))),
    "prod_repeat": lambda: math.prod(itertools.repeat(1, 10**12)),
    "deque_consume": lambda: len(collections.deque(itertools.count(), maxlen=0)),
    "counter_cycle": lambda: len(collections.Counter(itertools.cycle("ab"))),
    "fromkeys": lambda: len(dict.fromkeys(itertools.count())),
    "any_repeat": lambda: any(itertools.repeat(False)),
    "min_map": lambda: min(map(abs, itertools.count(1))),
    "set_zip": lambda: len(set(zip(itertools.count(), itertools.count()))),
    "bytes_repeat": lambda: len(bytes(itertools.repeat(0, 10**12))),
    "accumulate": lambda: sum(itertools.accumulate(itertools.repeat(1))),
    "islice": lambda: len(list(itertools.islice(itertools.count(), 10**12))),
    "permutations": lambda: sum(1 for _ in itertools.permutations(range(20))),
    "combinations": lambda: sum(map(len, itertools.combinations(range(10**6), 2))),
    "reversed_range": lambda: max(reversed(range(10**12))),
    "elements": lambda: len(list(collections.Counter(a=10**12).elements())),
    "zip_longest": lambda: len(list(itertools.zip_longest([], itertools.count()))),
    "filter_repeat": lambda: len(list(filter(None, itertools.repeat(0)))),
    "starmap": lambda: max(itertools.starmap(pow, itertools.repeat((2, 3)))),
    "elements_through_super": lambda: len(max(_Counted(a=10**12).raw())),
}


class _Counted(collections.Counter):  # type: ignore[type-arg]
    def raw(self) -> Any:
        return super().elements()  # the lazy method read through super(): checked the same


@stored_function(schema="late", timeout_ms=200)
def consume(case: str) -> int:
    return int(LAZY[case]())


@stored_function(schema="late", timeout_ms=1000)
def small(case: int) -> int:
    """The same tools on small inputs: they still work, and as Python's own."""
    if case == 1:
        return sum(range(1000)) + sum(x for x in range(10))
    if case == 2:
        return len(list(itertools.product(range(3), repeat=2))) + sum(itertools.repeat(2, 5))
    if case == 3:
        return len(collections.deque(itertools.islice(itertools.count(), 7)))
    if case == 4:
        return len(range(10**12)) + (10**11 in range(10**12)) + range(5)[-1]
    return len(list(collections.Counter(a=3, b=2).elements()))
