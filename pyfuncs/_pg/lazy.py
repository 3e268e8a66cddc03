"""Lazy inputs that come back to the interpreter: what routines get as `range`, `iter(f, x)`,
the endless and combinatorial tools of `itertools`, and `Counter.elements`.

The watchdog raises into Python code only. A C function that consumes a lazy C iterator
(`sum(range(3_000_000_000))`, `max(itertools.count())`, `list(itertools.product(s, s, s))`,
`"".join(itertools.repeat("x", 10**10))`, `5 in itertools.count(10)`, `a, *b = range(10**12)`)
loops in C for as long as the iterator gives items, and no stop can reach it. So the
producers a routine can make yield each item through a Python loop, where the watchdog's
stop lands: whatever consumes them, in C or not, is stopped between two items (~20 ns per
item on top of the C producer's own ~10). Everything else routines iterate is either data
they built first, in code the watchdog sees, or a pass-through of these (map, zip,
enumerate, islice, ...). `itertools.chain` is one too, and is made to yield each item as
well: it flattens, and flattening a list that holds one big list many times
(`chain.from_iterable([big] * n)`) costs far more than building it did.

`for x in range(n)` and comprehensions over `range(n)` keep Python's own range (guards.py
compiles them so): there the loop itself is Python, and as fast as ever.
"""

from __future__ import annotations

import builtins
import itertools
import types
from _collections import deque  # type: ignore[import-not-found]
from _collections_abc import Sequence

from . import watchdog as stopping
from .imported import imported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any, SupportsIndex

_range = builtins.range


def _each(iterator: Iterable[Any]) -> Iterator[Any]:
    # a `for` loop, not `yield from`: Python checks for a pending stop when a generator
    # resumes after `yield`, but not in the loop `yield from` runs
    for item in iterator:  # noqa: UP028
        yield item


stopping.PRODUCERS.add(id(_each.__code__))


class range:  # what routines know as `range`
    """Python's range, except that iterating one yields its numbers through Python, and
    `in`, index() and count() of anything but an int go through Python too."""

    __slots__ = ("start", "step", "stop")
    start: int
    stop: int
    step: int

    def __init__(self, *args: SupportsIndex) -> None:
        real = _range(*args)
        setattr_ = object.__setattr__
        setattr_(self, "start", real.start)
        setattr_(self, "stop", real.stop)
        setattr_(self, "step", real.step)

    def __iter__(self) -> Iterator[int]:
        return _each(_real(self))

    def __reversed__(self) -> Iterator[int]:
        return _each(_real(self)[::-1])

    def __len__(self) -> int:
        return len(_real(self))

    def __bool__(self) -> bool:
        return bool(_real(self))

    def __getitem__(self, index: Any) -> Any:
        item = _real(self)[index]
        return range(item.start, item.stop, item.step) if isinstance(item, _range) else item

    def __contains__(self, value: object) -> bool:
        if type(value) is int or type(value) is bool:
            return value in _real(self)
        return any(item == value for item in _real(self))

    def index(self, value: Any) -> int:
        if type(value) is int or type(value) is bool:
            return _real(self).index(value)
        for position, item in enumerate(_real(self)):
            if item == value:
                return position
        raise ValueError(f"{value!r} is not in range")

    def count(self, value: Any) -> int:
        if type(value) is int or type(value) is bool:
            return _real(self).count(value)
        return sum(1 for item in _real(self) if item == value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, range):
            return _real(self) == _real(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(_real(self))

    def __repr__(self) -> str:
        return repr(_real(self))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("readonly attribute")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("readonly attribute")


Sequence.register(range)
range.__module__ = "builtins"


def _real(of: range) -> builtins.range:
    # a function of this module, not a method: nothing of a routine's can call it
    return _range(of.start, of.stop, of.step)


def iter(obj: Any, *sentinel: Any) -> Iterator[Any]:  # what routines know as `iter`
    """Python's iter; `iter(f, sentinel)`, which calls f in C until it returns sentinel,
    through Python. The C iterator calls f without holding it and drops it when a call
    returns the sentinel: a call of f that advanced the same iterator to the sentinel
    freed f under the outer call (round 82). Behind the generator nothing of a routine's
    holds the C iterator, and advancing the generator from inside is a ValueError."""
    if not sentinel:
        return builtins.iter(obj)
    return _each(builtins.iter(obj, *sentinel))


iter.__module__ = "builtins"


def groupby(iterable: Iterable[Any], key: Any = None) -> Iterator[tuple[Any, Iterator[Any]]]:
    """itertools.groupby in Python (its documentation's equivalent). C's compares the target
    key with the current one holding neither, and its groups re-enter it: a key's `__eq__`
    that advanced the groupby freed the key being compared, and a red team refilled that
    memory to call system() (gh-143543, gh-146613; fixed upstream after 3.11.2). Here the
    keys are the generator's locals, and advancing it from inside is a ValueError."""
    keyfunc = (lambda value: value) if key is None else key
    iterator = builtins.iter(iterable)
    value = current = None
    exhausted = False

    def grouper(target: Any) -> Iterator[Any]:
        nonlocal value, current, exhausted
        yield value
        for value in iterator:  # (a group moves the groupby on, as C's does)
            current = keyfunc(value)
            if not (target is current or target == current):  # (C's comparison, in C's order)
                return
            yield value
        exhausted = True

    try:
        value = next(iterator)
    except StopIteration:
        return
    current = keyfunc(value)
    while not exhausted:
        target = current
        group = grouper(target)
        yield current, group
        if target is current or target == current:  # the group was not read to its end
            for _ in group:
                pass


def tee(iterable: Iterable[Any], n: int = 2) -> tuple[Iterator[Any], ...]:
    """itertools.tee in Python (its documentation's equivalent): C's iterators share a
    buffer that one of them fills while the iterator it reads runs code of the routine's,
    the shape of the bugs above."""
    if not isinstance(n, int) or n < 0:
        raise ValueError("n must be >= 0")
    iterator = builtins.iter(iterable)
    buffers = [deque() for _ in builtins.range(n)]

    def gen(mine: deque[Any]) -> Iterator[Any]:
        while True:
            if not mine:
                try:
                    value = next(iterator)
                except StopIteration:
                    return
                for buffer in buffers:
                    buffer.append(value)
            yield mine.popleft()

    return tuple(gen(buffer) for buffer in buffers)


for _producer in (groupby, tee):  # stops are checked when their generators resume
    _code = _producer.__code__
    for _inner in (_code, *(c for c in _code.co_consts if isinstance(c, types.CodeType))):
        stopping.PRODUCERS.add(id(_inner))


def _itertools() -> dict[str, Callable[..., Any]]:
    def count(start: Any = 0, step: Any = 1) -> Iterator[Any]:
        return _each(itertools.count(start, step))

    def repeat(object: Any, times: int | None = None) -> Iterator[Any]:
        if times is None:
            return _each(itertools.repeat(object))
        return _each(itertools.repeat(object, times))

    def cycle(iterable: Iterable[Any]) -> Iterator[Any]:
        return _each(itertools.cycle(iterable))

    def product(*iterables: Iterable[Any], repeat: int = 1) -> Iterator[tuple[Any, ...]]:
        return _each(itertools.product(*iterables, repeat=repeat))

    def permutations(iterable: Iterable[Any], r: int | None = None) -> Iterator[tuple[Any, ...]]:
        return _each(itertools.permutations(iterable, r))

    def combinations(iterable: Iterable[Any], r: int) -> Iterator[tuple[Any, ...]]:
        return _each(itertools.combinations(iterable, r))

    def combinations_with_replacement(iterable: Iterable[Any], r: int) -> Iterator[tuple[Any, ...]]:
        return _each(itertools.combinations_with_replacement(iterable, r))

    def chain(*iterables: Iterable[Any]) -> Iterator[Any]:
        return _each(itertools.chain(*iterables))

    def from_iterable(iterables: Iterable[Iterable[Any]]) -> Iterator[Any]:
        return _each(itertools.chain.from_iterable(iterables))

    chain.from_iterable = from_iterable  # type: ignore[attr-defined]

    # These three drop an iterator they were given once it is exhausted, while a call of
    # theirs further out may still be using it: an iterator of the routine's that calls
    # next() on the zip_longest, islice or pairwise it feeds frees, say, a map() the outer
    # call is inside of, which then calls through freed memory (CPython 3.11.2: gh-142732,
    # open upstream; gh-109786). Behind a generator, a call back into one is a ValueError.
    def zip_longest(*iterables: Iterable[Any], fillvalue: Any = None) -> Iterator[tuple[Any, ...]]:
        return _each(itertools.zip_longest(*iterables, fillvalue=fillvalue))

    def islice(iterable: Iterable[Any], *bounds: Any) -> Iterator[Any]:
        return _each(itertools.islice(iterable, *bounds))

    def pairwise(iterable: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        return _each(itertools.pairwise(iterable))

    # These call a function of the routine's on each item: behind a generator, that function
    # cannot call back into the C iterator it runs inside (a round of red teams found no bug
    # there in 3.11.2, but groupby's is of the same shape, below)
    def accumulate(
        iterable: Iterable[Any], func: Any = None, *, initial: Any = None
    ) -> Iterator[Any]:
        return _each(itertools.accumulate(iterable, func, initial=initial))

    def starmap(function: Any, iterable: Iterable[Any]) -> Iterator[Any]:
        return _each(itertools.starmap(function, iterable))

    def compress(data: Iterable[Any], selectors: Iterable[Any]) -> Iterator[Any]:
        return _each(itertools.compress(data, selectors))

    def dropwhile(predicate: Any, iterable: Iterable[Any]) -> Iterator[Any]:
        return _each(itertools.dropwhile(predicate, iterable))

    def takewhile(predicate: Any, iterable: Iterable[Any]) -> Iterator[Any]:
        return _each(itertools.takewhile(predicate, iterable))

    def filterfalse(predicate: Any, iterable: Iterable[Any]) -> Iterator[Any]:
        return _each(itertools.filterfalse(predicate, iterable))

    made = {f.__name__: f for f in (count, repeat, cycle, product, permutations, combinations,
                                    combinations_with_replacement, chain, zip_longest, islice,
                                    pairwise, accumulate, starmap, compress, dropwhile,
                                    takewhile, filterfalse, groupby, tee)}  # fmt: skip
    for function in (*made.values(), from_iterable):
        function.__module__ = "itertools"  # what routines see them as: itertools' own
        function.__qualname__ = function.__name__
    from_iterable.__qualname__ = "chain.from_iterable"
    return made


ITERTOOLS = _itertools()


def stand_in_itertools() -> types.ModuleType:
    """The itertools module with the producers above in place of its own."""
    module = types.ModuleType("itertools", itertools.__doc__)
    module.__dict__.update({k: v for k, v in vars(itertools).items() if not k.startswith("_")})
    module.__dict__.update(ITERTOOLS)
    return module


def _elements(counter: Any, method: Callable[[], Iterator[Any]]) -> Callable[[], Iterator[Any]]:
    """Counter.elements, through Python (it repeats each key as many times as it counts)."""
    return lambda: _each(method())


def _counter_kinds() -> tuple[type, ...]:
    """collections.Counter, once collections has been imported (before, none can exist)."""
    collections = imported("collections")
    return (collections.Counter,) if collections is not None else ()


# what a routine reads instead of these methods (see sandbox.attribute)
READS: dict[
    str, tuple[Callable[[], tuple[type, ...]], Callable[[Any, Callable[..., Any]], Any]]
] = {
    "elements": (_counter_kinds, _elements),
}
