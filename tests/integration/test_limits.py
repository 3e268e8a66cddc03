"""Per-routine limits (memory, result rows and bytes, configured defaults) and operations
bounded before they start (issue 3, "Limits" and long C operations)."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.collect import collect
from pyfuncs.embedded import Cluster

from .modules import limits_mod


@pytest.fixture
def lim(dsn: str, conn: psycopg.Connection[Any], cluster: Cluster,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[psycopg.Connection[Any]]:  # fmt: skip
    monkeypatch.setenv("PYFUNCS_MAX_RESULT_ROWS", "5")  # the configured default
    deploying.deploy(conn, limits_mod)
    conn.execute("CREATE TABLE lim.log (what text)")
    conn.commit()
    postmaster = cluster.postmaster_pid()
    with psycopg.connect(dsn, autocommit=True) as session:
        yield session
    assert cluster.postmaster_pid() == postmaster, "the cluster restarted"


def fails(conn: psycopg.Connection[Any], query: str, *params: object) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(query, params)
    return info.value


def test_max_memory_mb_stops_the_call_and_keeps_no_writes(lim: psycopg.Connection[Any]) -> None:
    err = fails(lim, "SELECT lim.hog(4000)")
    assert err.sqlstate == "53200"
    message = err.diag.message_primary or ""
    assert "lim.hog exceeded its limit max_memory_mb=64 (grew by " in message
    grown = int(message.split("grew by ")[1].split(" MB")[0])
    assert 64 <= grown < 4000  # (whole MB, rounded down)
    assert lim.execute("SELECT count(*) FROM lim.log").fetchone() == (0,)
    # the memory went back: calls within the limit keep working in the same session
    for _ in range(3):
        assert lim.execute("SELECT lim.hog(24)").fetchone() == (24,)


def test_max_result_rows(lim: psycopg.Connection[Any]) -> None:
    assert lim.execute("SELECT count(*) FROM lim.numbers(10)").fetchone() == (10,)
    err = fails(lim, "SELECT * FROM lim.numbers(1000000)")
    assert err.sqlstate == "54000"
    assert "lim.numbers exceeded its limit max_result_rows=10 (row 11)" in str(err)


def test_max_result_bytes_of_a_value_and_of_rows(lim: psycopg.Connection[Any]) -> None:
    assert lim.execute("SELECT length(lim.text_of(500))").fetchone() == (500,)  # 1000 bytes
    err = fails(lim, "SELECT lim.text_of(501)")
    assert err.sqlstate == "54000"
    assert "lim.text_of exceeded its limit max_result_bytes=1000 (1002 bytes)" in str(err)

    assert lim.execute("CALL lim.text_proc(100, NULL)").fetchone() == ("x" * 100,)
    err = fails(lim, "CALL lim.text_proc(101, NULL)")
    assert "lim.text_proc exceeded its limit max_result_bytes=100 (101 bytes)" in str(err)

    assert lim.execute("SELECT count(*) FROM lim.entries(4, 100)").fetchone() == (4,)
    err = fails(lim, "SELECT * FROM lim.entries(5, 300)")
    assert "lim.entries exceeded its limit max_result_bytes=1000 (1276 bytes by row 4)" in str(err)


def test_max_result_bytes_counts_what_postgresql_makes(lim: psycopg.Connection[Any]) -> None:
    """Nulls in json and arrays, and a numeric's digits as it prints them (a Decimal, text
    read as a numeric, a float in json): red teams' million nulls and numerics of one digit
    and a large exponent were counted as nothing (and made gigabytes of jsonb and text
    after the call, under none of its limits)."""
    assert lim.execute("SELECT lim.nulls(3)").fetchone() == ({"a": [None, None, None]},)
    err = fails(lim, "SELECT lim.nulls(1000000)")
    assert "lim.nulls exceeded its limit max_result_bytes=1000 (4000009 bytes)" in str(err)
    assert lim.execute("SELECT lim.wide(2, 3)").fetchone() == ([1000, 1000],)
    for n, exponent, made in ((1, 131071, 131076), (7, -16383, 114699)):
        err = fails(lim, f"SELECT lim.wide({n}, {exponent})")
        assert f"max_result_bytes=100000 ({made} bytes)" in str(err)
    # text where a numeric is declared, and floats in json, as PostgreSQL reads them
    err = fails(lim, "SELECT lim.spaced()")
    assert "max_result_bytes=100000 (147476 bytes)" in str(err)
    err = fails(lim, "SELECT lim.numeric_text()")
    assert "max_result_bytes=100000 (131079 bytes)" in str(err)
    assert lim.execute("SELECT length(lim.floats(3)::text)").fetchone() == (940,)
    err = fails(lim, "SELECT lim.floats(1000)")
    assert "max_result_bytes=100000 (309009 bytes)" in str(err)


def test_configured_defaults_apply_and_zero_lifts_them(lim: psycopg.Connection[Any]) -> None:
    err = fails(lim, "SELECT * FROM lim.defaulted(6)")
    assert "lim.defaulted exceeded its limit max_result_rows=5 (row 6)" in str(err)
    assert lim.execute("SELECT count(*) FROM lim.unlimited(100)").fetchone() == (100,)


def test_limits_are_part_of_the_deployed_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYFUNCS_TIMEOUT_MS", "2500")
    by_name = {d.name: d for d in collect(limits_mod)}
    assert by_name["hog"].limits.timeout_ms == 2500
    assert by_name["hog"].limits.max_memory_mb == 64
    assert by_name["unlimited"].limits.max_result_rows is None
    assert by_name["hog"].spec()["limits"]["timeout_ms"] == 2500


@pytest.mark.parametrize(
    ("query", "result"),
    [
        ("SELECT lim.power(2, 1000)", 1001),
        ("SELECT lim.power(10, 100)", 333),
        (
            "SELECT lim.modular_power(3, 1000000000000000000, 1000000007)",
            pow(3, 10**18, 1000000007),
        ),
        ("SELECT lim.builtin_power(7, 2)", 6),
        ("SELECT lim.repeat('ab', 1000)", 2000),
        ("SELECT lim.repeat_in_place(1000)", 1000),
        ("SELECT lim.shift(1000)", 2002),
        ("SELECT lim.growing(10)", 1624),
        ("SELECT lim.factorial_bits(100)", 622),
        ("SELECT lim.caught(1000000000)", -1),  # refused before it started, so catchable
    ],
)
def test_bounded_operations_within_bounds(
    lim: psycopg.Connection[Any], query: str, result: int
) -> None:
    assert lim.execute(query).fetchone() == (result,)


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        ("SELECT lim.power(3, 100000000)", "int ** int would make 158,496,250 bits"),
        ("SELECT lim.builtin_power(10, 1000000)", "int ** int would make 3,321,928 bits"),
        ("SELECT lim.repeat('ab', 1000000000)", "str * 1000000000 would make 2,000,000,000 bytes"),
        ("SELECT lim.repeat_in_place(100000000)", "list * 100000000 would make 800,000,000 bytes"),
        ("SELECT lim.shift(100000000)", "int << int would make 100,000,001 bits"),
        ("SELECT lim.growing(40)", "int * int would make"),
        ("SELECT lim.factorial_bits(100000000)", "factorial(100000000) would make"),
    ],
)
def test_bounded_operations_are_refused_before_they_start(
    lim: psycopg.Connection[Any], query: str, refused: str
) -> None:
    err = fails(lim, query)
    assert err.sqlstate == "54000"
    assert refused in str(err)
    assert "one operation in a routine may make at most" in str(err)
    assert "limits_mod.py:" in str(err) and "lim." in str(err)  # routine, file:line


def test_the_longest_timeout_holds_queries_within_it(lim: psycopg.Connection[Any]) -> None:
    assert lim.execute("SELECT lim.patient()").fetchone() == (1,)


def test_memory_error_is_out_of_memory(lim: psycopg.Connection[Any]) -> None:
    err = fails(lim, "SELECT lim.huge_allocation()")
    assert err.sqlstate == "53200"
    assert "lim.huge_allocation ran out of memory" in str(err)
    assert lim.execute("SELECT lim.repeat('a', 3)").fetchone() == (3,)


FORMATS = ["fstring", "fstring_precision", "fstring_constant", "format", "str_format",
           "str_format_named", "format_map", "str_format_static", "percent",
           "percent_precision", "percent_bytes", "percent_in_place", "unicode_digits",
           "nested_spec_of_nested", "spec_len", "percent_find", "percent_abs",
           "percent_bytes_abs", "percent_tuple", "format_map_fails_once"]  # fmt: skip


@pytest.mark.parametrize("how", FORMATS)
def test_format_widths_and_precisions_are_bounded(lim: psycopg.Connection[Any], how: str) -> None:
    """Every way of formatting, width and precision, written or read from the arguments."""
    small = lim.execute("SELECT lim.formatted(%s, %s)", [how, 9 if "constant" not in how and
                                                          "static" not in how else 0]).fetchone()  # fmt: skip
    assert small is not None and 9 <= small[0] < 20
    err = fails(lim, f"SELECT lim.formatted('{how}', 99999999)")
    assert err.sqlstate == "54000", err
    assert "99,999,999 characters" in str(err) and "at most 67,108,864" in str(err)


@pytest.mark.parametrize(
    ("how", "refused"),
    [
        ("nfd_run", "a run of more than 1,000 combining characters"),
        ("nfc_run_after_starter", "a run of more than 1,000 combining characters"),
        ("is_normalized", "a run of more than 1,000 combining characters"),
        ("ucd", "a run of more than 1,000 combining characters"),
        ("nfkd_expands", "unicodedata.normalize would make 90,000,000 characters"),
        ("translate", "str.translate would make 5,000,000,000 characters"),
        ("translate_class", "str.translate would make 5,000,000,000 characters"),
    ],
)
def test_normalize_and_translate_are_bounded(
    lim: psycopg.Connection[Any], how: str, refused: str
) -> None:
    """unicodedata's normalization sorts runs of combining characters in time quadratic in
    the run, and NFKD makes up to 18 characters of one; str.translate makes each character
    its replacement: refused before they start when beyond the bounds, done within them."""
    small = lim.execute("SELECT lim.normalized(%s, 1000)", [how]).fetchone()
    assert small is not None and small[0] in (0, 1, 1000, 1001, 2000, 18000)
    n = 5_000_000 if how.startswith(("nfkd", "translate")) else 3000
    started = time.monotonic()
    err = fails(lim, "SELECT lim.normalized(%s, %s)", how, n)
    assert err.sqlstate == "54000", err
    assert refused in str(err), err
    assert time.monotonic() - started < 2


def test_a_nested_format_field_is_evaluated_once(lim: psycopg.Connection[Any]) -> None:
    """str.format formats a template with the nested field's text as checked, not the field
    again (whose __format__ could give a small width to the check, a huge one after)."""
    assert lim.execute("SELECT lim.formatted_once()").fetchone() == ([3, 1],)


@pytest.mark.parametrize("how", ["hex", "decode", "concatenate"])
def test_one_allocation_beyond_the_address_space_cap_fails_at_once(
    lim: psycopg.Connection[Any], how: str
) -> None:
    """Far more than the cap (4 GiB beyond the backend's size at boot), still within what
    the machine would grant: without the cap the call would fill gigabytes, or wake the OOM
    killer and restart the cluster (the fixture checks it did not)."""
    assert lim.execute("SELECT lim.filled(%s, 0)", [how]).fetchone() == (0,)
    started = time.monotonic()
    err = fails(lim, f"SELECT lim.filled('{how}', 6)")
    assert err.sqlstate == "53200" and "ran out of memory" in str(err)
    assert time.monotonic() - started < 2
    # the session carries on, PostgreSQL's own work included
    assert lim.execute("SELECT count(*) FROM generate_series(1, 100000)").fetchone() == (100000,)


def test_max_db_ops_counts_while_a_generator_makes_its_rows(lim: psycopg.Connection[Any]) -> None:
    assert lim.execute("SELECT array_agg(x) FROM lim.queried_rows(3) x").fetchone() == (
        [0, 10, 20],
    )
    err = fails(lim, "SELECT count(*) FROM lim.queried_rows(4)")
    assert err.sqlstate == "54000"
    assert "lim.queried_rows exceeded its limit max_db_ops=3 (operation 4)" in str(err)
    # a routine called through SQL spends the budget of the call it serves as well
    assert lim.execute("SELECT lim.outer_ops(1)").fetchone() == (1,)
    err = fails(lim, "SELECT lim.outer_ops(2)")
    assert err.sqlstate == "54000"
    assert "lim.outer_ops exceeded its limit max_db_ops=2 (operation 3)" in str(err)


@pytest.mark.parametrize("how", ["claims", "subtransaction"])
def test_max_db_ops_counts_claims_and_savepoints(lim: psycopg.Connection[Any], how: str) -> None:
    """A red team made 20,000 of them under a budget of 3."""
    err = fails(lim, f"SELECT lim.other_ops('{how}')")
    assert err.sqlstate == "54000"
    assert "lim.other_ops exceeded its limit max_db_ops=3 (operation 4)" in str(err)


def test_large_ints_and_uuids_become_text_inside_the_call(lim: psycopg.Connection[Any]) -> None:
    """PL/Python turns a result's ints into text after the call, in time quadratic in their
    digits, where timeout_ms does not apply (a red team's 150,000 ints of 4,000 digits took
    a minute): beyond bigint's range they are turned inside the call, as UUIDs are."""
    row = lim.execute("SELECT lim.big_numbers(2)").fetchone()
    assert row is not None and row[0] == [Decimal(10**4000 + 1)] * 2
    started = time.monotonic()
    err = fails(lim, "SELECT cardinality(lim.big_numbers(150000))")
    assert err.sqlstate == "57014", err
    assert time.monotonic() - started < 2
    ids = lim.execute("SELECT lim.ids(3)").fetchone()
    assert ids is not None and ids[0] == [uuid.UUID(int=i) for i in range(3)]


CONVERTED = """
from collections.abc import Iterator, Mapping
from decimal import Decimal

from pyfuncs import db, stored_function


@stored_function(schema="conv", timeout_ms=1000, max_result_bytes=0)
def numerics(refs: int, width: int) -> list[Decimal]:
    return ["0" * width + "1"] * refs  # one text, `refs` references: 8 bytes each


@stored_function(schema="conv", timeout_ms=1000, max_result_bytes=0)
def texts(refs: int, width: int) -> list[str]:
    return ["x" * width] * refs


@stored_function(schema="conv", timeout_ms=1000, max_result_bytes=0)
def text(width: int) -> str:
    return "1" * width


@stored_function(schema="conv", timeout_ms=1000, max_result_bytes=0)
def items(n: int) -> list[int]:
    return [7] * n


@stored_function(schema="conv", timeout_ms=1000, max_result_bytes=0)
def document(refs: int, width: int) -> dict:
    return {"a": [{"b": "y" * width}] * refs}


@stored_function(schema="conv", timeout_ms=1000, max_result_bytes=0)
def rows(refs: int, width: int) -> Iterator[list[Decimal]]:
    yield [Decimal(1)]
    yield ["0" * width + "1"] * refs


@stored_function(schema="conv", timeout_ms=5000, max_result_bytes=0)
def decimal(half: int) -> Decimal:
    return Decimal("9" * half + "9" * half)


@stored_function(schema="conv", timeout_ms=1000, max_result_bytes=2_000_000_000)
def allowed(refs: int, width: int) -> list[str]:
    return ["x" * width] * refs


class Resets(Mapping):  # its items() calls a routine, whose own result is counted apart
    def __getitem__(self, key: str) -> int:
        return 1

    def __iter__(self) -> Iterator[str]:
        return iter(["k"])

    def __len__(self) -> int:
        return 1

    def items(self):  # type: ignore[no-untyped-def]
        db.fetchval("SELECT conv.items(1)")
        return [("k", 1)]


@stored_function(schema="conv", timeout_ms=1000, max_result_bytes=0)
def nested(refs: int, width: int) -> dict:
    return {"a": ["x" * width] * refs, "b": Resets()}
"""


@pytest.mark.parametrize(
    ("call", "made"),
    [("conv.numerics(2500, 1000000)", 2_500_322_500), ("conv.texts(2500, 1000000)", None),
     ("conv.items(3000000)", 384_000_000),
     ("conv.document(3000, 100000)", None), ("(SELECT array_agg(r) FROM conv.rows(700, 100000) r)", None),
     ("conv.nested(1000, 100000)", None), ("conv.decimal(35000000)", None)],
    ids=["numerics", "texts", "items", "json", "rows", "a call inside", "one decimal"],
)  # fmt: skip
def test_a_result_postgresql_would_convert_for_long_after_the_call_is_refused_in_it(
    conn: psycopg.Connection[Any], tmp_path: Any, call: str, made: int | None
) -> None:
    """PostgreSQL converts a routine's result after the call, in C no stop reaches: a red
    team's 2,500 references to one text of a million digits, declared `list[Decimal]`, were
    made in microseconds and converted for 7 s past timeout_ms, statement_timeout, cancel
    and terminate. Without max_result_bytes, a result (each row of a set-returning one) may
    come to 64 M characters, digits and items (128 each), every reference counted."""
    (tmp_path / "conv_mod.py").write_text(CONVERTED)
    deploying.deploy(conn, str(tmp_path / "conv_mod.py"))
    started = time.monotonic()
    err = fails(conn, f"SELECT {call} IS NULL")
    assert time.monotonic() - started < 3
    assert err.sqlstate == "54000", err
    assert "returned more than PostgreSQL may convert after the call" in str(err), err
    if made is not None:
        assert f": {made} characters, digits and items" in str(err), err
    # within it, and with max_result_bytes chosen, as before
    assert conn.execute("SELECT array_length(conv.numerics(20, 1000000), 1)").fetchone() == (20,)
    assert conn.execute("SELECT array_length(conv.items(400000), 1)").fetchone() == (400000,)
    assert conn.execute("SELECT length(conv.text(10000000))").fetchone() == (10000000,)
    assert conn.execute("SELECT array_length(conv.allowed(70, 1000000), 1)").fetchone() == (70,)
    assert conn.execute("SELECT conv.decimal(3)").fetchone() == (Decimal(999999),)


TEXT_FOR_ITEMS = """
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from pyfuncs import stored_function


@dataclass
class Row:
    xs: list[Decimal]
    m: int


@stored_function(schema="items", timeout_ms=5000, max_result_bytes=0)
def chars(n: int) -> list[Decimal]:
    return "1" * n


@stored_function(schema="items", timeout_ms=5000, max_result_bytes=0)
def octets(n: int) -> list[int]:
    return b"1" * n


@stored_function(schema="items", timeout_ms=5000, max_result_bytes=0)
def text_row(n: int) -> Row:
    return '("{' + "1," * n + '1}",1)'


@stored_function(schema="items", timeout_ms=5000, max_result_bytes=0)
def text_column(n: int) -> Row:
    return {"xs": "1" * n, "m": 1}


@stored_function(schema="items", timeout_ms=5000, max_result_bytes=0)
def text_tuple(n: int) -> Row:
    return ("1" * n, 1)


@stored_function(schema="items", timeout_ms=5000, max_result_bytes=0)
def text_rows(n: int) -> Iterator[Row]:
    yield Row([Decimal(1)], 1)
    yield {"xs": b"1" * n, "m": 2}


@stored_function(schema="items", timeout_ms=5000)
def rows() -> Iterator[Row]:
    yield Row([Decimal("1.5"), Decimal(2)], 3)
    yield {"xs": [], "m": 4}


@stored_function(schema="items", timeout_ms=5000)
def nested() -> list[list[int]]:
    return [[1, 2], [3, 4]]


@stored_function(schema="items", timeout_ms=5000)
def names() -> list[str]:
    return ["ab", "c"]
"""


@pytest.mark.parametrize(
    ("call", "what"),
    [("items.chars(20000000)", "a str where list[Decimal]"),
     ("items.octets(20000000)", "a bytes where list[int]"),
     ("items.text_row(10000000)", "a str where Row"),
     ("items.text_column(20000000)", "a str where its column xs is declared"),
     ("items.text_tuple(20000000)", "a str where its column xs is declared"),
     ("(SELECT array_agg(m) FROM items.text_rows(20000000))", "a bytes where its column xs")],
    ids=["str as numeric[]", "bytes as bigint[]", "str as a row", "str as an array column",
         "str as a tuple's array column", "bytes as a row's array column"],
)  # fmt: skip
def test_a_text_where_an_array_or_a_row_is_declared_is_refused_in_the_call(
    conn: psycopg.Connection[Any], tmp_path: Any, call: str, what: str
) -> None:
    """PostgreSQL converts a text or byte string returned where an array or a row is
    declared as one item per character, after the call: a red team's 20 million characters
    where list[Decimal] was declared ran 5.5 s past every stop, a terminate included."""
    (tmp_path / "items_mod.py").write_text(TEXT_FOR_ITEMS)
    deploying.deploy(conn, str(tmp_path / "items_mod.py"))
    started = time.monotonic()
    err = fails(conn, f"SELECT {call} IS NULL")
    assert time.monotonic() - started < 2, err
    assert f"returned {what}" in str(err) and "return a list" in str(err), err
    assert conn.execute("SELECT * FROM items.rows()").fetchall() == [
        ([Decimal("1.5"), Decimal(2)], 3),
        ([], 4),
    ]
    assert conn.execute("SELECT items.nested(), items.names()").fetchone() == (
        [[1, 2], [3, 4]],
        ["ab", "c"],
    )


AS_DECLARED = """
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from pyfuncs import procedure, stored_function


@dataclass
class Doc:
    doc: dict
    m: int


@dataclass
class Named:
    name: str


class Label(NamedTuple):
    label: bytes


@dataclass
class Mixed:
    doc: dict
    data: bytes
    docs: list[dict]


@stored_function(schema="decl", timeout_ms=200)
def jb_scalar(n: int) -> dict:
    return b"7" * n


@stored_function(schema="decl", timeout_ms=200)
def jb_nested(n: int) -> dict:
    return {"payload": [1, "x", {"deep": [b"7" * n]}]}


@stored_function(schema="decl", timeout_ms=200)
def jb_row(n: int) -> Doc:
    return Doc(b"7" * n, 1)


@stored_function(schema="decl", timeout_ms=200)
def jb_rows(n: int) -> Iterator[Doc]:
    yield Doc({}, 0)
    yield Doc([b"7" * n], 1)


@stored_function(schema="decl", timeout_ms=200)
def jb_array(n: int) -> list[dict]:
    return [{}, [b"7" * n]]


@procedure(schema="decl", timeout_ms=200)
def jb_proc(n: int) -> dict:
    return b"7" * n


@stored_function(schema="decl", timeout_ms=200, max_result_bytes=10_000_000)
def jb_sized(n: int) -> dict:
    return b"7" * n


@stored_function(schema="decl", timeout_ms=200)
def list_repr(n: int) -> str:
    return [chr(0xE0001) * n]


@stored_function(schema="decl", timeout_ms=200)
def dict_repr(n: int) -> str:
    return {chr(0xE0001) * n: None}


@stored_function(schema="decl", timeout_ms=200)
def tuple_as_int(n: int) -> int:
    return (chr(0xE0001) * n,)


@stored_function(schema="decl", timeout_ms=200)
def bytes_repr(n: int) -> str:
    return b"\\x00" * n


@stored_function(schema="decl", timeout_ms=200)
def list_column(n: int) -> Named:
    return {"name": ["x" * n]}


@stored_function(schema="decl", timeout_ms=200)
def floats(n: int) -> list[Decimal]:
    return [1.7976931348623157e308] * n


@stored_function(schema="decl", timeout_ms=200)
def tiny_floats(n: int) -> dict:
    return [1.0, 2.2250738585072014e-308] * (n // 2)


@stored_function(schema="decl", timeout_ms=200)
def wide(n: int) -> str:
    return chr(0x1F600) * n


@stored_function(schema="decl", timeout_ms=200)
def wide_items(n: int) -> list[str]:
    return ["a", chr(0x1F600) * n]


@dataclass
class Tags:
    tags: list[str]
    k: int


@stored_function(schema="decl", timeout_ms=200)
def tuple_item(n: int) -> list[str]:
    return ["a", ("\\x00" * n,)]


@stored_function(schema="decl", timeout_ms=200)
def bytes_item(n: int) -> list[str]:
    return ["a", b"\\x00" * n]


@stored_function(schema="decl", timeout_ms=200)
def dict_item(n: int) -> list[Decimal]:
    return [Decimal(1), {"\\x00" * n: 1}]


@stored_function(schema="decl", timeout_ms=200)
def bottom_tuple(n: int) -> list[list[str]]:
    return [["a"], [("\\x00" * n,)]]


@stored_function(schema="decl", timeout_ms=200)
def tuple_column(n: int) -> Tags:
    return Tags(["a", ("\\x00" * n,)], 1)


@stored_function(schema="decl", timeout_ms=200)
def tuple_rows(n: int) -> Iterator[Tags]:
    yield Tags(["a"], 0)
    yield Tags(["a", ("\\x00" * n,)], 1)


@stored_function(schema="decl", timeout_ms=200)
def jb_bytes_key(n: int) -> dict:
    return {b"\\x00" * n: 1}


@stored_function(schema="decl", timeout_ms=200)
def jb_tuple_key(n: int) -> list[dict]:
    return [{"doc": {("\\x00" * n,): 1}}]


@procedure(schema="decl", timeout_ms=200)
def tuple_proc(n: int) -> list[str]:
    return ["a", ("\\x00" * n,)]


@procedure(schema="decl", timeout_ms=200)
def jb_key_proc(n: int) -> dict:
    return {b"\\x00" * n: 1}


@stored_function(schema="decl", timeout_ms=900)  # (200 ran out under two workers' load)
def jb_items(n: int) -> list[dict]:
    return [-1234567890123456789] * n


@stored_function(schema="decl", timeout_ms=2000)
def names() -> Iterator[Named]:
    yield Named("ada")
    yield Named("grace")


@stored_function(schema="decl", timeout_ms=2000)
def labels() -> list[Label]:
    return [Label(b"x"), Label(b"y")]


@stored_function(schema="decl", timeout_ms=2000)
def mixed() -> Mixed:
    return Mixed({"s": "text", "n": [1, 2.5, None]}, b"\\x00\\x01", [{"a": 1}, {"b": [2]}])


@stored_function(schema="decl", timeout_ms=2000)
def series(n: int) -> list[float]:
    return [i / 7 for i in range(n)]


@stored_function(schema="decl", timeout_ms=2000)
def blobs() -> list[bytes]:
    return [b"\\x00", b"ab"]


@stored_function(schema="decl", timeout_ms=2000)
def flag() -> bool:
    return [1]


@stored_function(schema="decl", timeout_ms=2000)
def keyed() -> list[dict]:
    return [{1: [1, 2], "a": {"b": None}}, {"c": [[1], ["x"]]}]


@stored_function(schema="decl", timeout_ms=2000)
def grid() -> list[list[str]]:
    return [["a", "b"], ["c", None]]


@stored_function(schema="decl", timeout_ms=2000)
def zero() -> Decimal:
    return Decimal("0E+999999")
"""


@pytest.mark.parametrize(
    ("call", "what"),
    [("decl.jb_scalar(8000000)", "a bytes where json (jsonb) is declared, and jsonb would"),
     ("decl.jb_nested(8000000)", "a dict holding a byte string where json (jsonb)"),
     ("(decl.jb_row(8000000)).m", "a bytes where its column doc is declared, and jsonb"),
     ("(SELECT array_agg(m) FROM decl.jb_rows(8000000))", "a list holding a byte string where its"),
     ("decl.jb_array(8000000)", "a bytes where list[json] (jsonb[]) is declared, and jsonb"),
     ("decl.jb_sized(8000000)", "a bytes where json (jsonb) is declared"),
     ("decl.list_repr(30000000)", "a list where str (text) is declared, which PostgreSQL would"),
     ("decl.dict_repr(30000000)", "a dict where str (text) is declared"),
     ("decl.tuple_as_int(30000000)", "a tuple where int (bigint) is declared"),
     ("decl.bytes_repr(16000000)", "a bytes where str (text) is declared"),
     ("(decl.list_column(30000000)).name", "a list where its column name is declared"),
     ("decl.floats(520000)", "more than PostgreSQL may convert"),
     ("decl.tiny_floats(520000)", "more than PostgreSQL may convert"),
     ("decl.wide(20000000)", "more than PostgreSQL may convert"),
     ("decl.wide_items(20000000)", "more than PostgreSQL may convert"),
     ("decl.tuple_item(60000000)", "a tuple as an item where list[str] (text[]) is declared"),
     ("decl.bytes_item(60000000)", "a bytes as an item where list[str]"),
     ("decl.dict_item(60000000)", "a dict as an item where list[Decimal] (numeric[])"),
     ("decl.bottom_tuple(60000000)", "a tuple as an item where list[list[str]]"),
     ("(decl.tuple_column(60000000)).k", "a tuple as an item where its column tags"),
     ("(SELECT array_agg(k) FROM decl.tuple_rows(60000000))", "a tuple as an item where its"),
     ("decl.jb_bytes_key(60000000)", "a bytes as an object's key in a dict where json (jsonb)"),
     ("decl.jb_tuple_key(60000000)", "a tuple as an object's key in a dict where list[json]"),
     ("decl.jb_items(520000)", "more than PostgreSQL may convert")],
    ids=["bytes as jsonb", "bytes deep in jsonb", "bytes as a jsonb column",
         "bytes in a set's jsonb column", "bytes in jsonb[]", "with max_result_bytes",
         "a list as text", "a dict as text", "a tuple as bigint", "bytes as text",
         "a list as a text column", "floats of large exponents as numeric[]",
         "floats of small exponents in jsonb", "a wide text", "wide texts in a list",
         "a tuple in text[]", "bytes in text[]", "a dict in numeric[]", "a tuple deep in text[][]",
         "a tuple in a text[] column", "a tuple in a set's text[] column", "bytes as a jsonb key",
         "a tuple as a key in jsonb[]", "ints as documents of jsonb[]"],
)  # fmt: skip
def test_what_postgresql_would_convert_for_long_as_declared_is_refused_in_the_call(
    conn: psycopg.Connection[Any], tmp_path: Any, call: str, what: str
) -> None:
    """Rounds fifty-four and fifty-five: PostgreSQL converts a result after the call as it
    is declared,
    where no stop reaches. Bytes anywhere in jsonb become a number each (8 MB: 3 to 14 s
    past timeout_ms, statement_timeout and a terminate; a procedure's OUT jsonb returned
    after 4.5 s and left the cancel for the session's next statement); a list, tuple, dict
    or byte string where text (any type but boolean and bytea) is declared becomes its
    repr(), ten characters for a counted one (2.2 s); a float is printed with repr(), 2 µs
    for a large exponent, and a wide character is up to 4 bytes (1.2 to 1.4 s within the
    count). Round fifty-five found the same repr() inside arrays (an array's items are read
    as the element type, by str()) and of jsonb's keys (1.4 to 4.7 s, 7.8 s where the error
    message carried the text). Each is refused, or counted, inside the call."""
    _refused_at_once(conn, tmp_path, f"SELECT {call} IS NULL", what, "2000")


@pytest.mark.parametrize(
    ("call", "what"),
    [("decl.jb_proc(8000000, NULL)", "a bytes where json (jsonb) is declared"),
     ("decl.tuple_proc(60000000, NULL)", "a tuple as an item where list[str] (text[])"),
     ("decl.jb_key_proc(60000000, NULL)", "a bytes as an object's key in a dict")],
    ids=["bytes as jsonb", "a tuple in text[]", "bytes as a jsonb key"],
)  # fmt: skip
def test_a_procedures_out_value_converted_for_long_is_refused_and_cancels_nothing_after(
    conn: psycopg.Connection[Any], tmp_path: Any, call: str, what: str
) -> None:
    """A procedure's OUT jsonb of 8 MB of bytes returned after 4.5 s under a 500 ms
    statement_timeout, and the timeout, due during the conversion, cancelled the session's
    next statement (a pooled session's next client's); an OUT text[] with a tuple in it
    after 11 s (round fifty-five)."""
    _refused_at_once(conn, tmp_path, f"CALL {call}", what, "500")


def _refused_at_once(
    conn: psycopg.Connection[Any], tmp_path: Any, statement: str, what: str, timeout: str
) -> None:
    """`statement`, of AS_DECLARED's routines under that statement_timeout, fails within a
    second saying what was returned, and the session's next statement runs."""
    (tmp_path / "decl_mod.py").write_text(AS_DECLARED)
    deploying.deploy(conn, str(tmp_path / "decl_mod.py"))
    conn.execute("SELECT set_config('statement_timeout', %s, false)", [timeout])
    started = time.monotonic()
    err = fails(conn, statement)
    assert time.monotonic() - started < 1, err
    assert f"returned {what}" in str(err), err
    assert conn.execute("SELECT 'the next statement'").fetchone() == ("the next statement",)


def test_results_as_declared_that_convert_quickly_are_returned(
    conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """What the checks of round fifty-four do not refuse: a set-returning routine of a row
    of one text or bytea column (which round fifty-three's refused), jsonb beside bytea,
    arrays of bytea, a long series of floats, any value where boolean is declared."""
    (tmp_path / "decl_mod.py").write_text(AS_DECLARED)
    deploying.deploy(conn, str(tmp_path / "decl_mod.py"))
    assert conn.execute("SELECT * FROM decl.names()").fetchall() == [("ada",), ("grace",)]
    assert conn.execute("SELECT * FROM decl.labels()").fetchall() == [(b"x",), (b"y",)]
    assert conn.execute("SELECT * FROM decl.mixed()").fetchone() == (
        {"s": "text", "n": [1, 2.5, None]},
        b"\x00\x01",
        [{"a": 1}, {"b": [2]}],
    )
    assert conn.execute("SELECT array_length(decl.series(200000), 1)").fetchone() == (200000,)
    assert conn.execute("SELECT decl.blobs(), decl.flag()").fetchone() == ([b"\x00", b"ab"], True)
    assert conn.execute("SELECT decl.keyed(), decl.grid(), decl.zero()").fetchone() == (
        [{"1": [1, 2], "a": {"b": None}}, {"c": [[1], ["x"]]}],
        [["a", "b"], ["c", None]],
        Decimal(0),
    )


BEYOND_BIGINT = """
import math
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated

from pyfuncs import procedure, stored_function


@stored_function(schema="big", timeout_ms=2000)
def as_numeric(digits: int) -> Annotated[int, "numeric"]:
    return 10**digits


@stored_function(schema="big", timeout_ms=2000)
def as_decimal(digits: int) -> Decimal:
    return 10**digits


@stored_function(schema="big", timeout_ms=2000)
def in_list(digits: int) -> list[Annotated[int, "numeric"]]:
    return [10**digits]


@stored_function(schema="big", timeout_ms=2000)
def rows(digits: int) -> Iterator[Annotated[int, "numeric"]]:
    yield 10**digits


@procedure(schema="big", timeout_ms=2000)
def proc(digits: int) -> Annotated[int, "numeric"]:
    return 10**digits


@stored_function(schema="big", timeout_ms=2000, max_result_bytes=100000)
def sized(digits: int) -> Decimal:
    return 10**digits


@stored_function(schema="big", timeout_ms=2000)
def as_jsonb(digits: int) -> dict:
    return 10**digits


@stored_function(schema="big", roles=["student"], timeout_ms=2000)
def factorial(n: int) -> Decimal:
    return math.factorial(n)


@stored_function(schema="big", timeout_ms=2000)
def around_bigint(offset: int) -> Annotated[int, "numeric"]:
    # bigint's bounds and one past each: returned as they are, or made Decimals in the call
    return -(2**63) - offset if offset < 2 else 2**63 - 3 + offset
"""


@pytest.mark.parametrize(
    ("call", "expected"),
    [("SELECT (big.in_list(5000))[1]", 10**5000), ("SELECT big.as_numeric(5000)", 10**5000),
     ("SELECT big.as_decimal(5000)", 10**5000), ("SELECT * FROM big.rows(5000)", 10**5000),
     ("CALL big.proc(5000, NULL)", 10**5000), ("SELECT big.sized(5000)", 10**5000),
     ("SELECT big.as_jsonb(5000)::text::numeric", 10**5000),
     ("SELECT big.factorial(1700)", math.factorial(1700)),
     ("SELECT array[big.around_bigint(0), big.around_bigint(1), big.around_bigint(2), "
      "big.around_bigint(3)]::text", "{-9223372036854775808,-9223372036854775809,"
      "9223372036854775807,9223372036854775808}")],
    ids=["in a list", "as numeric", "as Decimal", "as rows", "a procedure's",
         "with max_result_bytes", "as jsonb", "a factorial, called by a login role",
         "at bigint's bounds"],
)  # fmt: skip
def test_an_int_beyond_bigint_is_returned_as_declared(
    conn: psycopg.Connection[Any], tmp_path: Any, cluster: Cluster, call: str, expected: object
) -> None:
    """Round fifty-six: an int beyond bigint's range returned as it is (the entry function's
    fast path, a set-returning routine's rows) reached PL/Python, whose str() of it fails
    past 4,300 digits and which then crashed on the NULL: a reviewed n! routine ended its
    caller's session (the backstop contained the segfault; without the library, the
    cluster's). It becomes a Decimal inside the call, on every path."""
    (tmp_path / "big_mod.py").write_text(BEYOND_BIGINT)
    deploying.deploy(conn, str(tmp_path / "big_mod.py"))
    conn.commit()
    postmaster = cluster.postmaster_pid()
    if "factorial" in call:
        conn.execute("SET ROLE student")
    assert conn.execute(call).fetchone() == (expected,)
    assert cluster.postmaster_pid() == postmaster
