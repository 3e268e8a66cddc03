"""What PostgreSQL does with a routine's result after its frame is gone, in C no stop
reaches (README, Limits: what PostgreSQL converts after the call): round fifty-seven's
attacks (a result converted with the address space full, Decimals of small exponents, a
NaN among floats), and what that round tried that is refused or bounded; round
fifty-eight's (more of the address space taken by PostgreSQL's copies of texts than was
left for them, a result sized with max_result_bytes after the call)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from pyfuncs import deploy as deploying
from pyfuncs.embedded import Cluster


def _deploy(conn: psycopg.Connection[Any], tmp_path: Any, source: str) -> None:
    (tmp_path / "results_mod.py").write_text(source)
    deploying.deploy(conn, str(tmp_path / "results_mod.py"))


def _timed(conn: psycopg.Connection[Any], query: str, timeout_ms: int) -> tuple[float, Any]:
    """How long `query` took under that statement_timeout, and the error it ended with
    (None if it returned)."""
    conn.execute("SELECT set_config('statement_timeout', %s, false)", [str(timeout_ms)])
    started = time.monotonic()
    try:
        conn.execute(query).fetchall()
    except psycopg.Error as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


AT_THE_CAP = """
from collections.abc import Iterator
from decimal import Decimal

from pyfuncs import stored_function

def _fill(hog: list, leave: int) -> int:
    # fill the address space up to the runtime's cap with lazily zeroed bytes (no resident
    # memory), then let go of the smallest until `leave` bytes are free again (none if
    # `leave` is negative)
    if leave < 0:
        return 0
    sizes = [1 << k for k in range(33, 15, -1)]
    hog.extend([None] * 255)
    at = iter(range(len(hog) - 255, len(hog)))
    i = next(at)
    for size in sizes:
        while True:
            try:
                hog[i] = bytes(size)
            except MemoryError:
                break
            i = next(at)
    freed = 0
    while freed < leave and i > 0:
        i -= 1
        freed += len(hog[i])
        hog[i] = None
    return freed


@stored_function(schema="cap", timeout_ms=5000, max_memory_mb=64)
def rows(digits: int, leave: int) -> Iterator[Decimal]:
    big = Decimal("9" * digits)
    hog: list = []
    _fill(hog, leave)
    yield big


@stored_function(schema="cap", timeout_ms=5000, max_memory_mb=64)
def cycle(digits: int, leave: int) -> Decimal:
    big = Decimal("9" * digits)
    garbage: list = []
    garbage.append(garbage)  # freed by the collector, after the call
    _fill(garbage, leave)
    return big
"""


def test_a_result_converted_at_the_address_space_cap_fails_the_call_not_the_session(
    conn: psycopg.Connection[Any], tmp_path: Any, cluster: Cluster
) -> None:
    """A set-returning routine keeps the address space full (lazily zeroed bytes: no
    resident memory, so max_memory_mb does not see them) in its generator's frame while
    PL/Python converts the row it yielded: str() of the Decimal fails with MemoryError,
    PL/Python passes the NULL on unchecked (PLyObject_AsString -> PLyUnicode_Bytes), and
    the backend faults."""
    _deploy(conn, tmp_path, AT_THE_CAP)
    postmaster = cluster.postmaster_pid()
    assert conn.execute("SELECT count(*) FROM cap.rows(10, -1)").fetchone() == (1,)
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT * FROM cap.rows(8000000, 2097152)").fetchall()
    assert not conn.closed, f"the session ended: {info.value!r}"
    assert conn.execute("SELECT 'the next statement'").fetchone() == ("the next statement",)
    assert cluster.postmaster_pid() == postmaster


def test_a_scalar_result_converted_at_the_cap_fails_the_call_not_the_session(
    conn: psycopg.Connection[Any], tmp_path: Any, cluster: Cluster
) -> None:
    """The same with a function returning one value: the address space is held by a
    reference cycle, which only the collector frees, after PL/Python converted the result."""
    _deploy(conn, tmp_path, AT_THE_CAP)
    postmaster = cluster.postmaster_pid()
    assert conn.execute("SELECT cap.cycle(10, -1)").fetchone() == (Decimal("9" * 10),)
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT cap.cycle(8000000, 2097152)").fetchall()
    assert not conn.closed, f"the session ended: {info.value!r}"
    assert conn.execute("SELECT 'the next statement'").fetchone() == ("the next statement",)
    assert cluster.postmaster_pid() == postmaster


TEXTS_THEN_A_DECIMAL = """
from collections.abc import Iterator
from decimal import Decimal

from pyfuncs import stored_function

def _fill(hog: list, leave: int) -> None:
    # fill the address space up to the cap, then free the largest chunks that fit `leave`
    for k in range(33, 15, -1):
        while True:
            try:
                hog.append(bytes(1 << k))
            except MemoryError:
                break
    freed = 0
    for i in sorted(range(len(hog)), key=lambda i: -len(hog[i])):
        if freed + len(hog[i]) <= leave:
            freed += len(hog[i])
            hog[i] = b""


@stored_function(schema="texts", timeout_ms=20000)
def rows(n: int, width: int, digits: int, leave: int) -> Iterator[list[str]]:
    text = "x" * width
    big = Decimal("9" * digits)
    hog: list = []
    _fill(hog, leave)  # kept by the generator's frame while its row is converted
    yield [text] * n + [big]
"""


def test_texts_converted_before_a_decimal_at_the_cap_fail_the_call_not_the_session(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Any, cluster: Cluster
) -> None:
    """Round fifty-eight: the room overflow.room_for asked for (16 MB and twice what
    results.plain counted) was not what PostgreSQL takes: of each text of a text[],
    PL/Python's pstrdup'd copy and its datum, each rounded up to a power of two (4,093
    characters, counted 4,221, took 12.3 kB), so str() of the Decimal after 10,000 of them
    failed, and PL/Python, which does not check, faulted. Swept across the room it asks
    for now (CONVERSION_FACTOR times the count): refused in the call, or converted."""
    from pyfuncs._pg.overflow import CONVERSION_FACTOR, CONVERSION_ROOM

    _deploy(conn, tmp_path, TEXTS_THEN_A_DECIMAL)
    postmaster = cluster.postmaster_pid()
    n, width, digits = 10_000, 4093, 18_000_000
    count = (128 + width) * n + 128 + digits  # about what results.plain counts of the row
    need = CONVERSION_ROOM + CONVERSION_FACTOR * count
    outcomes = []
    for slack in (-(64 << 20), 0, 32 << 20, 96 << 20, 160 << 20):
        try:
            conn.execute(
                "SELECT r IS NULL FROM texts.rows(%s, %s, %s, %s) r",
                [n, width, digits, need + slack],
            ).fetchall()
            outcomes.append("converted")
        except psycopg.Error as exc:
            assert not conn.closed, f"the session ended with {slack >> 20} MB to spare: {exc!r}"
            assert exc.sqlstate == "53200", exc  # out of memory, in the call or in PostgreSQL
            outcomes.append("refused")
    assert outcomes[0] == "refused" and outcomes[-1] == "converted", outcomes
    assert conn.execute("SELECT 'the next statement'").fetchone() == ("the next statement",)
    assert cluster.postmaster_pid() == postmaster


SIZED = """
import uuid
from decimal import Decimal

from pyfuncs import procedure, stored_function


# (texts where a numeric is declared: their exponents count, see definition.reads_numbers)
@stored_function(schema="sz", roles=["student"], timeout_ms=200, max_result_bytes=1_000_000_000)
def echo(s: str) -> Decimal:
    return s


@stored_function(schema="sz", roles=["student"], timeout_ms=200, max_result_bytes=1_000_000_000)
def made(n: int) -> Decimal:
    return "1" + ".e1" * n


@procedure(schema="sz", roles=["student"], timeout_ms=200, max_result_bytes=1_000_000_000)
def proc(n: int) -> Decimal:
    return "1" + ".e1" * n


@stored_function(schema="sz", roles=["student"], max_result_bytes=8)
def small(kind: str) -> str | None:
    return {"text": "123456789", "short": "12345678", "none": None}[kind]


@stored_function(schema="sz", roles=["student"], max_result_bytes=4)
def number(kind: str) -> float:
    return {"float": 1.5, "int": 2}[kind]


@stored_function(schema="sz", roles=["student"], max_result_bytes=1000)
def ident() -> uuid.UUID:
    return uuid.UUID("123e4567-e89b-12d3-a456-426614174000")


@stored_function(schema="sz", roles=["student"], max_result_bytes=1000)
def digest() -> str:
    return "9e1234567abcdef0" * 4


@stored_function(schema="sz", roles=["student"], max_result_bytes=10000)
def idents() -> list[uuid.UUID]:
    return [uuid.UUID("00000000-0000-0000-0000-0000009e9999")] * 10


@stored_function(schema="sz", roles=["student"], max_result_bytes=1000)
def large() -> float:
    return 1e308


@stored_function(schema="sz", roles=["student"], max_result_bytes=1000)
def numeric() -> Decimal:
    return "9e1234"  # a text where a numeric is declared: PostgreSQL reads it as one


@stored_function(schema="sz", roles=["student"], max_result_bytes=1000)
def document() -> dict:
    return {"digest": "9e1234567abcdef0", "x": 1e308}
"""


@pytest.mark.parametrize(
    "query",
    ["SELECT sz.echo(repeat('.e1', 5500000)) IS NULL", "SELECT sz.made(5500000) IS NULL",
     "CALL sz.proc(5500000, NULL)"],
    ids=["a caller's text", "a routine's text", "a procedure's OUT text"],
)  # fmt: skip
def test_a_result_is_sized_inside_the_call(
    conn: psycopg.Connection[Any], tmp_path: Any, query: str
) -> None:
    """Round fifty-eight: a text result (of an exact built-in type, which the entry function
    returns as it is) was sized for max_result_bytes by the body after the call, where no
    stop reaches: 16.5 M characters with an exponent every three (results._exponents,
    where a numeric is declared) took 3.6 s past timeout_ms=200 and statement_timeout=300,
    and the procedure's left a cancel that failed the session's next statement. Sized
    inside the call, the call stops."""
    _deploy(conn, tmp_path, SIZED)
    conn.execute("SET ROLE student")
    conn.execute("SELECT sz.echo('1'), sz.made(0)")
    took, err = _timed(conn, query, 300)
    assert err is not None and err.sqlstate in ("57014", "54000"), err
    assert took < 0.3 + 1.0, f"{took:.1f} s under timeout_ms=200, statement_timeout=300"
    assert conn.execute("SELECT 'the next statement'").fetchone() == ("the next statement",)


def test_max_result_bytes_counts_exponents_only_where_postgresql_reads_numbers(
    conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """Round fifty-nine: every text with an `e` counted the digits its exponents would
    print as a numeric, whatever was declared: a UUID (16 bytes) counted 4,603, a hex
    digest of 64 characters 589,884, and max_result_bytes refused them. Exponents count
    only where a numeric or jsonb (or an array or a row of them) is declared; there a
    float counts the digits PostgreSQL prints of it, and a text its exponents' digits."""
    _deploy(conn, tmp_path, SIZED)
    conn.execute("SET ROLE student")
    assert conn.execute("SELECT sz.ident()::text, length(sz.digest()), "
                        "cardinality(sz.idents()), sz.large()").fetchone() == (
        "123e4567-e89b-12d3-a456-426614174000", 64, 10, 1e308,
    )  # fmt: skip
    for query in ("SELECT sz.numeric()", "SELECT sz.document()"):
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_result_bytes=1000"):
            conn.execute(query)


def test_max_result_bytes_holds_for_results_of_every_built_in_type(
    conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """With the body's sizing gone, every result is sized in the call: short ones too."""
    _deploy(conn, tmp_path, SIZED)
    conn.execute("SET ROLE student")
    assert conn.execute("SELECT sz.small('short'), sz.small('none')").fetchone() == (
        "12345678", None,
    )  # fmt: skip
    for query in ("SELECT sz.small('text')", "SELECT sz.number('float')",
                  "SELECT sz.number('int')"):  # fmt: skip
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_result_bytes="):
            conn.execute(query)


SMALL_EXPONENTS = """
from collections.abc import Iterator
from decimal import Decimal

from pyfuncs import procedure, stored_function


@stored_function(schema="tiny", timeout_ms=200)
def numerics(n: int) -> list[Decimal]:
    return [Decimal("1E-16383")] * n


@stored_function(schema="tiny", timeout_ms=200)
def document(n: int) -> dict:
    return {"x": [Decimal("1E-16383")] * n}


@stored_function(schema="tiny", timeout_ms=200)
def zeros(n: int) -> list[Decimal]:
    return [Decimal("0E-16383")] * n


@procedure(schema="tiny", timeout_ms=200)
def proc(n: int) -> list[Decimal]:
    return [Decimal("0E-16383")] * n


@stored_function(schema="tiny", timeout_ms=200)
def one() -> Decimal:
    return Decimal("1E-16383")
"""


@pytest.mark.parametrize(
    "query",
    ["SELECT tiny.numerics(60000)", "SELECT tiny.document(60000)",
     "SELECT length(tiny.numerics(60000)::text)", "SELECT length(tiny.document(60000)::text)",
     "SELECT tiny.zeros(60000)", "CALL tiny.proc(60000, NULL)"],
    ids=["numeric[] to the client", "jsonb to the client", "numeric[] as text", "jsonb as text",
         "zeros of small exponents", "a procedure's OUT numeric[]"],
)  # fmt: skip
def test_decimals_of_small_exponents_count_what_postgresql_prints_of_them(
    conn: psycopg.Connection[Any], tmp_path: Any, cluster: Cluster, query: str
) -> None:
    """A Decimal counts its digits and its positive exponent's zeros (results._digits), but
    not a negative exponent's: Decimal("1E-16383") counts 76 (a zero, "0E-16383", 1) and
    PostgreSQL prints it as 16,385 characters ("0.000...1"), 85-140 µs in numeric_out,
    after the call, where no stop reaches (numeric[]'s and jsonb's output have no check for
    interrupts). 60,000 of them (12 MB counted of 64; 8 MB for the zeros) print a
    gigabyte."""
    _deploy(conn, tmp_path, SMALL_EXPONENTS)
    assert conn.execute("SELECT tiny.one()").fetchone() == (Decimal("1E-16383"),)
    took, error = _timed(conn, query, 500)
    try:
        nxt: Any = conn.execute("SELECT 'the next statement'").fetchone()
    except psycopg.Error as exc:
        nxt = exc
    assert took < 1.5, (
        f"{took:.1f} s under timeout_ms=200, statement_timeout=500: {error!r}; "
        f"the next statement: {nxt!r}"
    )
    assert nxt == ("the next statement",), f"after {took:.1f} s and {error!r}: {nxt!r}"


DEEP = """
from typing import Any

from pyfuncs import stored_function


@stored_function(schema="deep", roles=["student"], timeout_ms=2000)
def size(doc: dict) -> int:
    return 1
"""


@pytest.mark.parametrize("depth", [5000, 9000, 12000, 15000])
def test_a_deep_jsonb_argument_fails_the_call_not_the_session(
    conn: psycopg.Connection[Any], tmp_path: Any, cluster: Cluster, depth: int
) -> None:
    _deploy(conn, tmp_path, DEEP)
    conn.execute("SET ROLE student")
    postmaster = cluster.postmaster_pid()
    try:
        conn.execute(
            f"SELECT deep.size((repeat('[', {depth}) || '1' || repeat(']', {depth}))::jsonb)"
        )
    except psycopg.Error as exc:
        assert not conn.closed, f"the session ended: {exc!r}"
    assert conn.execute("SELECT 'the next statement'").fetchone() == ("the next statement",)
    assert cluster.postmaster_pid() == postmaster


TEXT_AS_OTHER = """
import datetime
import uuid
from typing import Annotated

from pyfuncs import stored_function


@stored_function(schema="tao", timeout_ms=200)
def as_bigint(n: int) -> int:
    return "\\U0001F600" * n


@stored_function(schema="tao", timeout_ms=200)
def as_date(n: int) -> datetime.date:
    return "\\U0001F600" * n


@stored_function(schema="tao", timeout_ms=200)
def as_uuid(n: int) -> uuid.UUID:
    return "\\U0001F600" * n


@stored_function(schema="tao", timeout_ms=200)
def as_name(n: int) -> Annotated[str, "name"]:
    return "\\U0001F600" * n


@stored_function(schema="tao", timeout_ms=200)
def as_ints(n: int) -> list[int]:
    return ["\\U0001F600" * n]
"""


@pytest.mark.parametrize(
    "query",
    ["SELECT tao.as_bigint(4000000) IS NULL", "SELECT tao.as_date(4000000) IS NULL",
     "SELECT tao.as_uuid(4000000) IS NULL", "SELECT tao.as_name(4000000) IS NULL",
     "SELECT tao.as_ints(4000000) IS NULL"],
    ids=["bigint", "date", "uuid", "name", "bigint[]"],
)  # fmt: skip
def test_text_where_another_type_is_declared_fails_quickly(
    conn: psycopg.Connection[Any], tmp_path: Any, query: str
) -> None:
    _deploy(conn, tmp_path, TEXT_AS_OTHER)
    took, error = _timed(conn, query, 500)
    assert took < 1.5, (
        f"{took:.1f} s under timeout_ms=200, statement_timeout=500: {str(error)[:300]!r}"
    )
    assert conn.execute("SELECT 'the next statement'").fetchone() == ("the next statement",)


NAN_FIRST = """
from typing import Annotated

from pyfuncs import stored_function


@stored_function(schema="nan", timeout_ms=200)
def numerics(n: int) -> list[Annotated[float, "numeric"]]:
    return [float("nan")] + [1.2345678901234567e308] * n


@stored_function(schema="nan", timeout_ms=200)
def numerics_last(n: int) -> list[Annotated[float, "numeric"]]:
    return [1.2345678901234567e308] * n + [float("nan")]


@stored_function(schema="nan", timeout_ms=200)
def tiny(n: int) -> list[Annotated[float, "numeric"]]:
    return [float("nan")] + [5e-324] * n
"""


@pytest.mark.parametrize(
    "query",
    ["SELECT nan.numerics(340000)", "SELECT length(nan.numerics(340000)::text)",
     "SELECT nan.tiny(340000)"],
    ids=["large, to the client", "large, as text", "subnormal, to the client"],
)  # fmt: skip
def test_a_nan_first_does_not_hide_what_the_other_floats_count(
    conn: psycopg.Connection[Any], tmp_path: Any, query: str
) -> None:
    """results._floats takes max() and min() of the floats' magnitudes: with a nan first,
    both are nan (no comparison with a nan is true), and every float counts as one of
    exponent 0."""
    _deploy(conn, tmp_path, NAN_FIRST)
    err = None
    try:
        conn.execute("SELECT nan.numerics_last(340000) IS NULL")
    except psycopg.Error as exc:
        err = exc
    assert err is not None and err.sqlstate == "54000", err  # counted as it should be
    took, error = _timed(conn, query, 500)
    assert took < 1.0, f"{took:.1f} s under timeout_ms=200, statement_timeout=500: {error!r}"


SHAPES = """
import datetime
from typing import Annotated

from pyfuncs import stored_function

UTC = datetime.timezone.utc


@stored_function(schema="shape", timeout_ms=200)
def empty_objects(n: int) -> list:
    return [{}] * n


@stored_function(schema="shape", timeout_ms=200)
def empty_arrays(n: int) -> list:
    return [[]] * n


@stored_function(schema="shape", timeout_ms=200)
def many_keys(n: int) -> dict:
    return dict.fromkeys(map(str, range(n)))


@stored_function(schema="shape", timeout_ms=200)
def moments(n: int) -> list[datetime.datetime]:
    return [datetime.datetime(2020, 1, 1, tzinfo=UTC)] * n


@stored_function(schema="shape", timeout_ms=200)
def naive_moments(n: int) -> list[Annotated[datetime.datetime, "timestamp without time zone"]]:
    return [datetime.datetime(2020, 1, 1, 12, 30, 45, 123456)] * n


@stored_function(schema="shape", timeout_ms=200)
def days(n: int) -> list[datetime.date]:
    return [datetime.date(2020, 1, 1)] * n
"""


@pytest.mark.parametrize(
    "query",
    ["SELECT shape.empty_objects(500000)", "SELECT shape.empty_arrays(500000)",
     "SELECT shape.many_keys(450000)", "SELECT shape.moments(480000)",
     "SELECT shape.naive_moments(500000)", "SELECT shape.days(500000)"],
    ids=["empty objects in jsonb", "empty arrays in jsonb", "many keys", "timestamptz[]",
         "timestamp[]", "date[]"],
)  # fmt: skip
def test_shapes_within_the_count_convert_within_a_second(
    conn: psycopg.Connection[Any], tmp_path: Any, query: str
) -> None:
    _deploy(conn, tmp_path, SHAPES)
    took, error = _timed(conn, query, 500)
    assert took < 1.5, (
        f"{took:.1f} s under timeout_ms=200, statement_timeout=500: {str(error)[:300]!r}"
    )


DIGITS = """
from decimal import Decimal
from typing import Annotated

from pyfuncs import stored_function


@stored_function(schema="dig", timeout_ms=1000)
def as_bigint(n: int) -> int:
    return Decimal("9" * n)


@stored_function(schema="dig", timeout_ms=1000)
def as_integer(n: int) -> Annotated[int, "integer"]:
    return Decimal("9" * n)


@stored_function(schema="dig", timeout_ms=1000)
def as_float(n: int) -> float:
    return Decimal("9" * n)


@stored_function(schema="dig", timeout_ms=1000)
def as_numeric(n: int) -> Decimal:
    return Decimal("9" * n)
"""


@pytest.mark.parametrize(
    "query",
    ["SELECT dig.as_bigint(40000000) IS NULL", "SELECT dig.as_integer(40000000) IS NULL",
     "SELECT dig.as_float(40000000) IS NULL", "SELECT dig.as_numeric(40000000) IS NULL"],
    ids=["bigint", "integer", "double precision", "numeric"],
)  # fmt: skip
def test_a_long_decimal_where_a_narrower_type_is_declared_fails_quickly(
    conn: psycopg.Connection[Any], tmp_path: Any, query: str
) -> None:
    _deploy(conn, tmp_path, DIGITS)
    took, error = _timed(conn, query, 1000)
    assert took < 2, (
        f"{took:.1f} s under timeout_ms=1000, statement_timeout=1000: {str(error)[:200]!r}"
    )
    assert conn.execute("SELECT 'the next statement'").fetchone() == ("the next statement",)
