"""What a routine hands to PostgreSQL, made plain while its call is still under way.

PL/Python turns a function's result into a datum after the function has returned: it calls
`str()`, `bool()`, `bytes()`, iterates, takes lengths, reads items and attributes. For an
object of a class the routine defined, each of those runs the routine's own code, where no
call is under way any more: a `__str__` that loops there could only be ended by SIGKILL.
So every result is made plain first, inside the call: values of exact built-in types,
which PL/Python converts without running any Python.

* `None`, `bool`, `int`, `float`, `str`, `bytes`, `Decimal`, `date`, `timedelta`, and
  `datetime`/`time` with no time zone or a built-in one, are kept as they are; but an `int`
  beyond `bigint`'s range becomes a `Decimal`, and a `UUID` its text. PL/Python would turn
  them into text after the call, where no limit applies: `str()` of a large int takes time
  quadratic in its digits (a red team's list of 150,000 of 4,000 digits took a minute, at
  1.4 GB), and a UUID's is Python code. The same text, made inside the call, and sized
  as text by max_result_bytes; an int of more than MAX_INT_BITS is refused.
* `list`, `tuple` and `dict` are rebuilt from plain items (a dict's keys too).
* Rows: a dataclass instance becomes a dict of its fields; a NamedTuple a dict of its
  fields where it is the result or a row (so a single column can be read by name), a tuple
  inside other values. Another Mapping becomes a dict; a deque or range a list.
* A subclass of a built-in type becomes its base value, read without its own methods (a
  `str` subclass's text, an IntEnum member's int), so its size is counted as what it is.
* A `datetime` or `time` whose tzinfo is the routine's own keeps its UTC offset, as a
  built-in time zone.
* Anything else (a set, a generator, an object of the routine's own class) is refused with
  a TypeError saying what to return instead; so is data nested deeper than MAX_DEPTH, or
  data that contains itself.
"""

from __future__ import annotations

import sys
from _collections_abc import Mapping, Sequence
from math import frexp as _frexp
from math import isnan as _isnan

from . import lazy
from .bounded import MAX_INT_BITS, OperationTooLarge, refuse
from .imported import imported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_DEPTH = 200  # PostgreSQL's arrays have at most 6 dimensions; JSON this deep is rare

# Kept as they are: PL/Python converts them without running Python of the routine's. The
# types of decimal, datetime and uuid are among them once those modules have been imported
# (before, no value can be of them, and no backend pays for importing them): see _learn.
INERT: set[type] = {type(None), bool, int, float, str, bytes}

# PostgreSQL converts a result after the call, in C no stop reaches: each item and each
# text it reads as the declared type (a red team's 2,500 references to one 1 MB text where
# numeric[] was declared took 7 s past timeout_ms, statement_timeout, cancel and
# terminate). Without max_result_bytes, plain() counts that work, every reference in full,
# and a result may come to MAX_CONVERTED: a text's characters count one each if they are
# ASCII, else WIDEST (what UTF-8 makes of them, at most), a byte string's bytes and a
# Decimal's digits one each, every item of a list, tuple or dict ITEM, and a float, which
# PL/Python prints with repr() (2 µs for 1.2345678901234567e+308), FLOAT more and what its
# exponent adds (_float). Decimals are counted in calls too: not SHORT (one float is short).
LONG: set[type] = {str, bytes}
TEXTS: set[type] = {str, bytes, bytearray}
# the inert types PostgreSQL converts in bounded time, which a call returns as they are
# and plain() does not count (_learn adds what it adds to INERT, but Decimal)
SHORT: set[type] = INERT - LONG
MAX_CONVERTED = 64 << 20
ITEM = 128
WIDEST = 4
FLOAT = 64
# each item of a jsonb[] is a document of its own, made through jsonb's transform (1.5 to
# 2 µs for an int, against 0.2 in a bigint[]: a red team's): DOCUMENT more than an item
DOCUMENT = 1024
_converted = [0]  # of the value being made
_last = [0]  # of the value plain() made last


def kept(value: Any) -> bool:
    """Whether PL/Python converts `value` as it is, in bounded time, without plain(): of a
    SHORT type, and an int only in bigint's range (str() of a larger one fails past 4,300
    digits, and PL/Python, which does not check, crashed on it: a red team's)."""
    kind = type(value)
    return kind in SHORT and (kind is not int or -LONGEST <= value < LONGEST)


def count(more: int) -> None:
    """Count `more` for the value plain() made last (what the declared type adds)."""
    _last[0] += more


def converted() -> int:
    """What plain() counted of the value it last made (see MAX_CONVERTED)."""
    return _last[0]


def _text(value: str | bytes) -> int:
    """What a text or byte string counts, in constant time."""
    return len(value) if type(value) is bytes or value.isascii() else WIDEST * len(value)


def _float(value: float) -> int:
    """What a float counts beyond an item: repr() and PostgreSQL's reading of it take
    longer the larger its exponent (5 ns more for each power of ten), in constant time."""
    return FLOAT + abs(_frexp(value)[1]) * 3 // 5


def _floats(items: Any, kinds: set[type]) -> int:
    """What the floats among `items` count: each as the one of the largest exponent (the
    largest and the smallest magnitude found in C, when all are floats)."""
    floats = items if len(kinds) == 1 else [v for v in items if type(v) is float]
    if any(map(_isnan, floats)):  # (no comparison with a NaN is true: max() would stop there)
        floats = [v for v in floats if v == v]
    if not floats:
        return 0
    largest = max(map(abs, floats))
    smallest = min(filter(None, map(abs, floats)), default=1.0)
    return len(floats) * max(_float(largest), _float(smallest))


def _digits(value: Any) -> int:
    """At least the digits PostgreSQL reads and prints of a Decimal, in constant time: those
    before the point (its exponent's zeros too; one for a zero, whatever its exponent) and
    those after it (a red team's 1E-16383 prints 16,385), with its coefficient's bounded
    by the memory it takes."""
    adjusted: int = value.adjusted()
    coefficient = (sys.getsizeof(value) - 104) // 8 * 19 + 76
    if not value:  # (0E+999999999 prints 0; 0E-16383 16,385 characters)
        return 1 + max(-adjusted, 0) + coefficient
    return max(adjusted + 1, 1) + max(coefficient - 1 - adjusted, 0)


_ZONES: set[type] = set()  # time zones PL/Python converts without the routine's code
_TIMES: tuple[type, ...] = ()  # datetime and time
_LISTS: tuple[type, ...] = (range, lazy.range)  # made lists (and collections.deque)
_TEXT: dict[type, Any] = {}  # exact types made text inside the call (uuid.UUID)
LONGEST = 1 << 63  # ints in bigint's range are kept
_datetime: Any = None  # the modules, once imported
_Decimal: Any = None
_dataclasses: Any = None
_seen = -1  # how many modules sys.modules held when _learn last looked


def _learn() -> bool:
    """Take in the types of the modules imported since _learn last looked (modules are only
    ever added to sys.modules: a count that has not changed means none was); whether any
    module was new."""
    global _seen, _TIMES, _LISTS, _BASES, _datetime, _Decimal, _dataclasses
    _seen = len(sys.modules)
    new = False
    if _Decimal is None and (decimal := imported("decimal")) is not None:
        _Decimal = decimal.Decimal
        INERT.add(_Decimal)  # (not SHORT: a call counts a Decimal result's digits)
        new = True
    if _datetime is None and (datetime := imported("datetime")) is not None:
        _datetime = datetime
        INERT.update((datetime.date, datetime.timedelta))
        SHORT.update((datetime.date, datetime.timedelta))
        _ZONES.add(datetime.timezone)
        _TIMES = (datetime.datetime, datetime.time)
        new = True
    zoneinfo = imported("zoneinfo")
    if zoneinfo is not None and zoneinfo.ZoneInfo not in _ZONES:
        _ZONES.add(zoneinfo.ZoneInfo)
        new = True
    if _dataclasses is None and (dataclasses := imported("dataclasses")) is not None:
        _dataclasses = dataclasses
        new = True
    if len(_LISTS) == 2 and (collections := imported("collections")) is not None:
        _LISTS = (range, lazy.range, collections.deque)
        new = True
    uuid = imported("uuid")
    if uuid is not None and uuid.UUID not in _TEXT:
        _TEXT[uuid.UUID] = str
        new = True
    if new:
        _BASES = _bases(uuid)
    return new


class ResultTooDeep(OperationTooLarge):
    """A result nested deeper than a routine may return (or containing itself)."""


def plain(value: Any, row: bool = True) -> Any:
    """`value` as values of exact built-in types (see the module's docstring). `row`: it is
    a function's result or one row of a set-returning function's."""
    kind = type(value)
    if kind in INERT and (kind is not int or -LONGEST <= value < LONGEST):
        _last[0] = (
            _text(value) if kind in LONG else _digits(value) if kind is _Decimal
            else _float(value) if kind is float else 0
        )  # fmt: skip
        return value
    # (a Mapping's items() is the routine's code, which may call a routine through SQL,
    # whose own result is counted apart)
    outer, _converted[0] = _converted[0], 0
    try:
        if len(sys.modules) != _seen:
            _learn()
        return _plain(value, 0, row)
    finally:
        _last[0], _converted[0] = _converted[0], outer


def _big(value: int) -> Any:
    """An int beyond bigint's range, as a Decimal (whose text PL/Python reads in linear time)."""
    bits = value.bit_length()
    if bits > MAX_INT_BITS:
        refuse("returning an int", bits, "bits", MAX_INT_BITS)
    import decimal  # (here: rare, and decimal is imported by PL/Python for numerics anyway)

    return decimal.Decimal(value)


def _small_ints(items: Any, kinds: set[type]) -> bool:
    """Whether the ints among `items` are all in bigint's range (min and max in C when
    all are ints)."""
    if int not in kinds:
        return True
    if len(kinds) == 1:
        return bool(min(items) >= -LONGEST and max(items) < LONGEST)
    return all(-LONGEST <= v < LONGEST for v in items if type(v) is int)


def _plain(value: Any, depth: int, row: bool) -> Any:
    kind = type(value)
    if kind in INERT:
        if kind in LONG:
            _converted[0] += _text(value)
        elif kind is _Decimal:
            _converted[0] += _digits(value)
        elif kind is float:
            _converted[0] += _float(value)
        return value if kind is not int or -LONGEST <= value < LONGEST else _big(value)
    text = _TEXT.get(kind)
    if text is not None:
        return text(value)
    if depth >= MAX_DEPTH:
        raise ResultTooDeep(
            f"the result is nested deeper than {MAX_DEPTH} levels, or contains itself"
        )
    inner = depth + 1
    if kind is list or kind is tuple:
        _converted[0] += ITEM * len(value)
        kinds = set(map(type, value))
        # (as they are, when nothing in them counts but floats, or only texts: else item by
        # item)
        if (kinds <= SHORT or kinds <= LONG) and _small_ints(value, kinds):
            if kinds <= LONG:
                made = sum(map(len, value))
                if str in kinds and not all(v.isascii() for v in value if type(v) is str):
                    made *= WIDEST  # (bytes among them too: few lists mix the two)
                _converted[0] += made
            elif float in kinds:
                _converted[0] += _floats(value, kinds)
            return list(value) if kind is list else value
        items = [_plain(item, inner, False) for item in value]
        return items if kind is list else tuple(items)
    if kind is dict:
        _converted[0] += ITEM * len(value)
        return {_plain(k, inner, False): _plain(v, inner, False) for k, v in value.items()}
    if kind in _TIMES:
        return _moment(value, kind)
    if kind is bytearray:
        _converted[0] += len(value)
        return bytearray(value)
    return _other(value, kind, inner, row)


def _other(value: Any, kind: type, depth: int, row: bool) -> Any:
    """Everything that is not of an exact built-in type (rarer: a function of its own)."""
    dataclasses = _dataclasses
    if dataclasses is not None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), depth, False)
                for f in dataclasses.fields(value)}  # fmt: skip
    if isinstance(value, tuple):
        items = [_plain(item, depth, False) for item in tuple.__iter__(value)]
        _converted[0] += ITEM * len(items)
        fields = getattr(kind, "_fields", None)
        if (  # a NamedTuple row
            row and type(fields) is tuple and len(fields) == len(items)
            and all(type(name) is str for name in fields)
        ):  # fmt: skip
            return dict(zip(fields, items, strict=True))
        return tuple(items)
    for base, copy in _BASES:
        if isinstance(value, base):
            return _plain(copy(value), depth - 1, row)
    made: Any
    if isinstance(value, list):
        made = [_plain(item, depth, False) for item in list.__iter__(value)]
    elif isinstance(value, dict):
        made = {_plain(k, depth, False): _plain(v, depth, False) for k, v in dict.items(value)}
    elif isinstance(value, Mapping):
        made = {_plain(k, depth, False): _plain(v, depth, False) for k, v in value.items()}
    elif isinstance(value, _LISTS):
        lazy_items: Any = value
        made = [_plain(item, depth, False) for item in lazy_items]
    else:
        made = None
    if made is not None:
        _converted[0] += ITEM * len(made)
        return made
    if _learn():  # of a type whose module was imported since plain() looked: once more
        return _plain(value, depth - 1, row)
    what = "a set" if isinstance(value, (set, frozenset)) else f"a {kind.__name__}"
    if isinstance(value, Sequence) or hasattr(value, "__next__"):
        what += " (declare the routine as returning Iterator[...] for rows, or return a list)"
    raise TypeError(
        f"pyfuncs: a routine cannot return {what}: return None, bool, int, float, str, bytes, "
        "Decimal, a date or time, UUID, list, tuple, dict, or a dataclass or NamedTuple row"
    )


def _moment(value: Any, kind: type) -> Any:
    """A datetime or time whose time zone converts without the routine's code."""
    zone = value.tzinfo
    if type(zone) is _datetime.timezone:  # (its name counts: repr() would print it)
        _converted[0] += len(zone.tzname(None))
    if zone is None or type(zone) in _ZONES:
        return value
    offset = value.utcoffset()  # the routine's tzinfo, asked now, inside the call
    return value.replace(tzinfo=None if offset is None else _datetime.timezone(offset))


def _copy_moment(value: Any) -> Any:
    datetime = _datetime
    if isinstance(value, datetime.datetime):
        made = datetime.datetime(value.year, value.month, value.day, value.hour, value.minute,
                                 value.second, value.microsecond, value.tzinfo, fold=value.fold)  # fmt: skip
    elif isinstance(value, datetime.time):
        made = datetime.time(value.hour, value.minute, value.second, value.microsecond,
                             value.tzinfo, fold=value.fold)  # fmt: skip
    else:
        return datetime.date(value.year, value.month, value.day)
    return _moment(made, type(made))


def _bases(uuid: Any) -> tuple[tuple[type, Any], ...]:
    """Subclasses of built-in types, and their base values read without the subclass's
    methods (those of modules imported so far)."""
    bases: list[tuple[type, Any]] = [
        (str, str.__str__), (bytes, bytes.__bytes__), (int, int.__index__),
        (float, float.__float__), (bytearray, bytearray.copy),
    ]  # fmt: skip
    if _Decimal is not None:
        bases.append((_Decimal, _Decimal))
    datetime = _datetime
    if datetime is not None:
        bases += [
            (datetime.date, _copy_moment), (datetime.time, _copy_moment),
            (datetime.timedelta, lambda v: datetime.timedelta(v.days, v.seconds, v.microseconds)),
        ]  # fmt: skip
    if uuid is not None:
        bases.append((uuid.UUID, lambda v: str(uuid.UUID(int=int(v.int)))))
    return tuple(bases)


_BASES = _bases(None)


def size(value: Any, numbers: bool = True) -> int:
    """About the bytes a plain value makes in PostgreSQL: text and bytea by their length,
    rows, arrays and json by their items and 4 for each (and for each null in them), a
    numeric by the digits it prints (every one: `1E+131071` prints 131,072), any other
    scalar by 8. Where PostgreSQL reads texts and floats as numerics (`numbers`: a numeric
    or jsonb, or an array or a row of them, is declared: definition.reads_numbers), a
    float counts the digits it prints so (`1e308` in json prints 309), and a text what
    the exponents of the numbers in it add. (Red teams' million nulls, and numerics of one
    digit and large exponents, as Decimals, as text where a numeric was declared and as
    floats in json, were counted as nothing, and made gigabytes in PostgreSQL after the
    call, under none of its limits.)"""
    kind = type(value)
    if kind is str:
        made = len(value) if value.isascii() else len(value.encode())
        if numbers and ("e" in value or "E" in value):
            return made + _exponents(value)
        return made
    if kind is bytes or kind is bytearray:
        return len(value)
    if kind is dict:
        return 4 + sum(size(k, numbers) + size(v, numbers) for k, v in value.items())
    if kind is list or kind is tuple:
        return 4 + sum(size(item, numbers) for item in value)
    if value is None:
        return 4
    if kind is float:
        return max(8, _printed(repr(value))) if numbers else 8
    if kind is _Decimal or (_Decimal is None and len(sys.modules) != _seen and _learn()
                            and kind is _Decimal):  # fmt: skip
        sign: int
        digits: tuple[int, ...]
        sign, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int):  # NaN, Infinity
            return 9
        return _width(sign, len(digits), exponent)
    return 8


# the most digits an exponent adds to what a numeric prints (131,072 before the point,
# 16,383 after it); and the exponents of the numbers in a text, compiled once needed
_WIDEST = 147_455
_EXPONENT: list[Any] = []
_QUOTING = {ord('"'): None, ord("\\"): None}


def _exponents(text: str) -> int:
    """The digits the exponents of the numbers in `text` could add to what PostgreSQL
    prints of it, read as a numeric, or as json, an array or a row of numerics
    (`"[9e131071]"` as jsonb prints 131,072 digits): each exponent's, at most _WIDEST.
    numeric's input reads an exponent as C's strtol does (whitespace and a sign before its
    digits: `1e 131071`, a red team's), and an array's or a row's input takes quotes and
    backslashes out of an item before (`{1"e"131071}`): so they are taken out here too."""
    if not _EXPONENT:
        import re  # (here: only a result's text with an e in it, and max_result_bytes)

        pattern = r"[0-9.][eE][ \t\n\v\f\r]*[+-]?0*([0-9]{1,7})(?![0-9])"
        _EXPONENT.append(re.compile(pattern).finditer)
    if '"' in text or "\\" in text:
        text = text.translate(_QUOTING)
    return sum(min(int(m.group(1)), _WIDEST) for m in _EXPONENT[0](text))


def _width(sign: int, digits: int, exponent: int) -> int:
    """What a numeric of `digits` digits times 10**exponent prints: its sign, the digits
    before the point (at least a 0), the point and those after it."""
    return sign + max(digits + exponent, 1) + (1 - exponent if exponent < 0 else 0)


def _printed(text: str) -> int:
    """What PostgreSQL prints for `text` (a float's repr) read as a numeric (json's input),
    or 0 if it is not one."""
    mantissa, _, exponent = text.strip().replace("E", "e").partition("e")
    sign = mantissa[:1] in ("-", "+")
    whole, _, fraction = mantissa[sign:].partition(".")
    if not (whole + fraction).isdigit() or not (whole + fraction).isascii():
        return 0
    try:
        shift = int(exponent) if exponent else 0
    except ValueError:
        return 0
    return _width(sign, len(whole) + len(fraction), shift - len(fraction))
