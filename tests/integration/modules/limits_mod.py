"""Routines that go past their limits, and operations too large to make at once."""

from __future__ import annotations

import math
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from math import factorial

from pyfuncs import db, procedure, stored_function


@stored_function(schema="lim", max_memory_mb=64)
def hog(mb: int) -> int:
    db.execute("INSERT INTO lim.log VALUES ('hog')")
    chunks = []
    for i in range(mb):
        try:
            chunks.append(bytes([i % 256]) * (1 << 20))
        except BaseException:  # swallowing the stop does not help
            continue
    return len(chunks)


@stored_function(schema="lim", max_result_rows=10)
def numbers(n: int) -> Iterator[int]:
    yield from range(n)


@stored_function(schema="lim", max_result_bytes=1000)
def text_of(n: int) -> str:
    return "é" * n


@procedure(schema="lim", max_result_bytes=100)
def text_proc(n: int) -> str:
    return "x" * n


@dataclass
class Entry:
    id: int
    label: str


@stored_function(schema="lim", max_result_bytes=1000)
def entries(n: int, width: int) -> list[Entry]:
    return [Entry(i, "x" * width) for i in range(n)]


@stored_function(schema="lim")
def power(base: int, exponent: int) -> int:
    return (base**exponent).bit_length()


@stored_function(schema="lim")
def modular_power(base: int, exponent: int, mod: int) -> int:
    return pow(base, exponent, mod)


@stored_function(schema="lim")
def builtin_power(base: int, exponent: int) -> int:
    return pow(base, exponent).bit_length()


@stored_function(schema="lim")
def repeat(text: str, times: int) -> int:
    return len(text * times)


@stored_function(schema="lim")
def repeat_in_place(times: int) -> int:
    items = [0]
    alias = items
    items *= times
    return len(alias)  # still the same list: `*=` stays in place


@stored_function(schema="lim")
def shift(bits: int) -> int:
    n = 1
    n <<= bits
    return (1 << bits).bit_length() + n.bit_length()


@stored_function(schema="lim")
def growing(steps: int) -> int:
    n = 3
    for _ in range(steps):
        n *= n
    return n.bit_length()


@stored_function(schema="lim")
def factorial_bits(n: int) -> int:
    return factorial(n).bit_length() + math.comb(n, n // 2).bit_length()


@stored_function(schema="lim")
def caught(times: int) -> int:
    try:
        return len("x" * times)
    except OverflowError:
        return -1


@stored_function(schema="lim")
def huge_allocation() -> int:
    return len(bytes(1 << 62))


@stored_function(schema="lim")
def filled(how: str, gib: int) -> int:
    """One C call that allocates and fills `gib` GiB: beyond the backend's address space cap
    it fails at once instead of waking the OOM killer."""
    n = gib << 30
    if how == "hex":  # bytes(n) costs nothing until touched; its hex is twice n, written
        return len(bytes(n // 2).hex())
    if how == "decode":
        return len(bytes(n).decode())
    return len(bytes(n) + b".") - 1  # (the copy is written)


@stored_function(schema="lim", timeout_ms=2**31 - 1)
def patient() -> int:
    """The longest timeout_ms: the timer lent to its query is as long as PostgreSQL's allows."""
    return int(db.fetchval("SELECT 1"))


@stored_function(schema="lim")
def formatted(how: str, n: int) -> int:
    """A width or precision of n through each way of formatting (bounded when n is large)."""
    if how == "fstring":
        return len(f"{'x':>{n}}")
    if how == "fstring_precision":
        return len(f"{1.5:.{n}f}")
    if how == "fstring_constant":
        return len(f"{'x':>99999999}") if n else len(f"{'x':>9}")
    if how == "format":
        return len(format("x", f">{n}"))
    if how == "str_format":
        return len("{:>{}}".format("x", n))
    if how == "str_format_named":
        return len("{v:>{w}}".format(v="x", w=n))
    if how == "format_map":
        return len("{v:>{w[0]}}".format_map({"v": "x", "w": [n]}))
    if how == "str_format_static":
        return len("{:>99999999}".format("x")) if n else len("{:>9}".format("x"))
    if how == "percent":
        return len("%*s" % (n, "x"))  # noqa: UP031
    if how == "percent_precision":
        return len("%.*f" % (n, 1.5))  # noqa: UP031
    if how == "percent_bytes":
        return len(b"%*b" % (n, b"x"))
    if how == "percent_in_place":
        text = "%*s"
        text %= (n, "x")
        return len(text)
    if how == "nested_spec_of_nested":  # the width is a nested field padded by its own spec
        return len(("{:{:0>" + str(n) + "}}").format(7, 9))
    if how == "unicode_digits":  # format specs read any script's digits
        return len(format("x", ">" + "".join(chr(0x660 + int(d)) for d in str(n))))
    return _formatted_through_own_objects(how, n)


class _Short(str):
    def __len__(self) -> int:
        return 1

    def find(self, *args: object) -> int:
        return -1


class _Small(int):
    def __abs__(self) -> int:
        return 0


class _Zeros(tuple):  # type: ignore[type-arg]
    def __getitem__(self, at: object) -> object:  # type: ignore[override]
        return 0


class _FailsOnce(dict):  # type: ignore[type-arg]
    failed = False
    values: dict[str, object] = {}  # noqa: RUF012

    def __getitem__(self, key: object) -> object:
        if not _FailsOnce.failed:
            _FailsOnce.failed = True
            raise KeyError(key)
        return _FailsOnce.values[key]  # type: ignore[index]


def _formatted_through_own_objects(how: str, n: int) -> int:
    """The spellings that read the spec through the routine's own objects (red team 7)."""
    if how == "spec_len":  # a str subclass whose len() says 1
        return len(format("x", _Short(f">{n}")))
    if how == "percent_find":  # a str subclass whose find() finds no %
        return len(_Short(f"%{n}s") % "x")
    if how == "percent_abs":  # an int subclass whose abs() says 0
        return len("%*s" % (_Small(n), "x"))  # noqa: UP031
    if how == "percent_bytes_abs":
        return len(b"%*b" % (_Small(n), b"x"))
    if how == "percent_tuple":  # a tuple subclass whose items read as 0
        return len("%*s" % _Zeros((n, "x")))  # noqa: UP031
    if how == "format_map_fails_once":  # the lookup fails for the check only
        _FailsOnce.failed = False
        _FailsOnce.values = {"v": "x", "w": n}
        mapping = _FailsOnce()
        try:
            return len("{v:>{w}}".format_map(mapping))
        except KeyError:  # the first lookup's error, raised: not formatted unchecked
            return len("{v:>{w}}".format_map(mapping))
    raise ValueError(how)


@stored_function(schema="lim")
def normalized(how: str, n: int) -> int:
    """Normalizing text (n combining characters in a run, or n characters that NFKD makes
    18 of) and translating it (n characters, each to 1,000): bounded when n is large."""
    if how == "nfd_run":  # sorted by insertion sort: quadratic in the run
        return len(unicodedata.normalize("NFD", "a" + "\u0301\u0316" * (n // 2)))
    if how == "nfc_run_after_starter":  # U+0F73 is a starter that decomposes to two marks
        return len(unicodedata.normalize("NFC", "\u0f73" * n))
    if how == "is_normalized":
        return int(unicodedata.is_normalized("NFKD", "a" + "\u0316\u0301" * (n // 2)))
    if how == "ucd":  # the Unicode 3.2 database's own method
        return len(unicodedata.ucd_3_2_0.normalize("NFD", "a" + "\u0301\u0316" * (n // 2)))
    if how == "nfkd_expands":  # U+FDFA: 18 characters
        return len(unicodedata.normalize("NFKD", "\ufdfa" * n))
    if how == "translate":
        return len(("a" * n).translate({97: "b" * 1000})) // 1000
    if how == "translate_class":
        return len(str.translate("a" * n, {97: "b" * 1000})) // 1000
    raise ValueError(how)


@stored_function(schema="lim")
def formatted_once() -> list[int]:
    """A nested field's __format__ that gives a small width, then a huge one: evaluated
    once, so the width is the small one."""

    class Flip:
        calls = 0

        def __format__(self, spec: str) -> str:
            Flip.calls += 1
            return "3" if Flip.calls == 1 else "500000000"

    return [len("{:>{}}".format("x", Flip())), Flip.calls]


@stored_function(schema="lim")
def defaulted(n: int) -> Iterator[int]:
    yield from range(n)


@stored_function(schema="lim", max_result_rows=0)
def unlimited(n: int) -> Iterator[int]:
    yield from range(n)


@stored_function(schema="lim", max_db_ops=3)
def queried_rows(n: int) -> Iterator[int]:
    for i in range(n):
        yield int(db.fetchval("SELECT $1::bigint * 10", [i]))


@stored_function(schema="lim")
def inner_ops(n: int) -> int:
    for i in range(n):
        db.execute("SELECT $1::bigint", [i])
    return n


@stored_function(schema="lim", max_db_ops=2)
def outer_ops(inner: int) -> int:
    # the queries of what it calls through SQL count as its own
    try:
        return int(db.fetchval("SELECT lim.inner_ops($1)", [inner]))
    except BaseException:  # the stop is sticky: catching it does not help
        return -1


@stored_function(schema="lim", max_db_ops=3)
def other_ops(how: str) -> int:
    """Database operations that are not queries: counted as well."""
    for _ in range(4):
        if how == "claims":
            db.claims()
        else:
            with db.subtransaction():
                pass
    return 4


@stored_function(schema="lim", timeout_ms=200)
def big_numbers(n: int) -> list[Decimal]:
    """Ints PL/Python would turn into text after the call: turned inside it."""
    return [10**4000 + 1] * n


@stored_function(schema="lim")
def ids(n: int) -> list[uuid.UUID]:
    return [uuid.UUID(int=i) for i in range(n)]


@stored_function(schema="lim", max_result_bytes=1000)
def nulls(n: int) -> dict[str, list[None]]:
    return {"a": [None] * n}


@stored_function(schema="lim", max_result_bytes=100_000)
def wide(n: int, exponent: int) -> list[Decimal]:
    return [Decimal(f"1E{exponent:+d}")] * n


@stored_function(schema="lim", max_result_bytes=100_000)
def numeric_text() -> Decimal:
    return "9e131071"  # type: ignore[return-value]  # (PostgreSQL reads the text as a numeric)


@stored_function(schema="lim", max_result_bytes=100_000)
def floats(n: int) -> dict[str, list[float]]:
    return {"x": [1e308] * n}


@stored_function(schema="lim", max_result_bytes=100_000)
def spaced() -> list[Decimal]:
    # numeric's input reads an exponent as C's strtol, whitespace first
    return ["1e 131071", "1e\t-16383"]  # type: ignore[list-item]
