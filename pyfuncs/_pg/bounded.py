"""Bounded operations: the operations that do far more work, or make a far larger result,
than their operands' size inside one C call, checked before they start."""

from __future__ import annotations

import math
import struct
import types
from _collections import deque  # type: ignore[import-not-found]  # (collections costs ms)
from _collections_abc import MutableMapping
from contextvars import Context, ContextVar

from . import classes
from . import watchdog as stopping
from .imported import imported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any, NoReturn, TypeAlias

    # the types whose method a check stands for: a tuple, or a function that gives them
    Kinds: TypeAlias = tuple[type, ...] | Callable[[], tuple[type, ...]]

# The watchdog can only stop code that returns to the interpreter. Some operations make a
# result far larger than their operands inside one C call (`*` of a sequence or of big
# integers, `**`, `<<`, factorial, comb, perm, prod, lcm, str.replace, join, padding), or
# take time far beyond their operands' size (`pow(a, e, m)`, `//`, `%` and divmod of big
# integers, gcd, isqrt). In routine modules those operators go through the checks below
# (inserted by guards.py; constant expressions the compiler folds stay as they are), `pow`
# and `divmod` are checked builtins, `math`, `struct`, `random`, `secrets`, `decimal` and
# `hashlib` are replaced by checked copies, the methods are read through checks
# (sandbox.attribute), and the Decimal, Context and Fraction types check themselves (at the
# end of this module), so such an operation is refused before it starts. Lazy inputs
# consumed in C come back to Python (lazy.py). Other C operations take time in proportion
# to data that was built first, in code the watchdog and max_memory_mb do see.

MAX_INT_BITS = 100_000  # ~30,000 decimal digits; Python refuses to print more than 4,300
MAX_REPEAT_BYTES = 64 << 20  # a string, bytes, list or tuple made by one operation
# work, in the units the checks below count, that takes ~0.05-0.3 s on this kind of machine
MAX_DIVISION = 10**10  # bits of the quotient x bits of the divisor
MAX_OPERAND_BITS = 2 * MAX_INT_BITS  # of gcd, lcm and isqrt, which are quadratic
MAX_MODULAR = 4 * 10**6  # bits of the exponent x (30-bit digits of the modulus) ** 1.6
# a Decimal context's precision where routines work with it, and the digits of a Decimal
# power's operands: exp, ln, log10 or a power of 1,000 digits take ~20 ms, of 4,000 seconds
MAX_DECIMAL_DIGITS = 1_000
# the digits of an int or of a fixed-point text a Decimal becomes in one call (int(d),
# as_integer_ratio, format(d, "f")): converting 1e1000000 to an int takes 30 s in C
MAX_DECIMAL_CONVERSION = 30_000
# a PBKDF2's iterations times its output blocks: 1,000,000 take ~0.35 s, in C
MAX_PBKDF2_ROUNDS = 1_000_000
# what one call of hashlib's or hmac's hashes (the C library hashes 64 MB in ~0.1 s); beyond
# it the call takes seconds per reference to data that costs nothing to build (`bytes(n)`
# is zeroed lazily), in OpenSSL's code, where the backstop does not reach (a red team)
MAX_HASHED_BYTES = 64 << 20


class OperationTooLarge(OverflowError):
    """One operation would have made a result beyond what a routine may make at once."""


def refuse(what: str, size: float, unit: str, most: int) -> None:
    raise OperationTooLarge(
        f"{what} would make {size:,.0f} {unit}; one operation in a routine may make at most "
        f"{most:,} (build it in steps, or keep the numbers smaller)"
    )


def refuse_work(what: str, work: float, unit: str, most: int) -> None:
    raise OperationTooLarge(
        f"{what} would take {work:,.0f} {unit} of work in one C call, which no stop can "
        f"interrupt; one operation in a routine may take at most {most:,} (keep the numbers "
        "smaller)"
    )


def _repeat(seq: Any, times: Any, op: str) -> None:
    if isinstance(seq, (str, bytes, bytearray, list, tuple)) and isinstance(times, int):
        size = len(seq) * times * (8 if isinstance(seq, (list, tuple)) else 1)
        if size > MAX_REPEAT_BYTES:
            refuse(f"{type(seq).__name__} {op} {times}", size, "bytes", MAX_REPEAT_BYTES)


def check_mul(a: Any, b: Any) -> Any:
    """Refuse `a * b` if it would be too large; else b (for `a *= b`, which stays in place)."""
    if type(a) is int and type(b) is int:
        bits = a.bit_length() + b.bit_length()
        if bits > MAX_INT_BITS:
            refuse("int * int", bits, "bits", MAX_INT_BITS)
    elif type(a) is not float and type(b) is not float:
        _repeat(a, b, "*")
        _repeat(b, a, "*")
    return b


def check_pow(base: Any, exponent: Any) -> Any:
    if isinstance(base, int) and isinstance(exponent, int):
        _int_pow(base, exponent, "int ** int")
    elif not isinstance(base, float) and not isinstance(exponent, float):
        _other_pow(base, exponent)
    return exponent


def _int_pow(base: int, exponent: int, what: str) -> None:
    if exponent > 0 and abs(base) > 1:
        bits = exponent * math.log2(abs(base))
        if bits > MAX_INT_BITS:
            refuse(what, bits, "bits", MAX_INT_BITS)


def _other_pow(base: Any, exponent: Any) -> None:
    """`**` of Fractions (which raise their numerator and denominator, in fractions' own
    code) and of Decimals (whose non-integral powers take time far beyond their digits)."""
    fractions = imported("fractions")
    if fractions is not None:
        fraction = fractions.Fraction
        if isinstance(exponent, fraction) and exponent.denominator == 1:
            exponent = exponent.numerator  # what fractions raises to
        if isinstance(exponent, int):
            if isinstance(base, int):
                _int_pow(base, exponent, "int ** Fraction")
            elif isinstance(base, fraction):
                top = max(abs(base.numerator), base.denominator)
                _int_pow(top, abs(exponent), "Fraction ** int")
    decimal = imported("decimal")
    if decimal is not None and (
        isinstance(base, decimal.Decimal) or isinstance(exponent, decimal.Decimal)
    ):
        _decimal_operands("Decimal **", base, exponent)  # the precision: see bound_decimal


def _decimal_operands(what: str, *operands: Any, integral: bool = False) -> None:
    """Refuse a Decimal power of an operand of more than MAX_DECIMAL_DIGITS digits: its
    coefficient's, or, where the power works with integers (`integral`: a modular power),
    the digits it has as an integer. libmpdec writes a modular power's operands out as
    integers before it starts, and works through the exponent bit by bit: Decimal("1e8")
    is one digit, and 100,000,001 as an integer (a red team's pow(Decimal(3),
    Decimal("1e100000000"), Decimal(7)) ran in one C call until the backstop ended the
    session). Read with the type's own methods: a subclass's could say anything."""
    decimal = imported("decimal")
    for operand in operands:
        if isinstance(operand, int):
            digits = int.bit_length(operand) * 0.30103
        elif decimal is not None and isinstance(operand, decimal.Decimal):
            kind = decimal.Decimal
            if not kind.is_finite(operand):
                continue
            digits = len(kind.as_tuple(operand).digits)
            if integral:
                digits = max(digits, kind.adjusted(operand) + 1)
        else:
            continue
        if digits > MAX_DECIMAL_DIGITS:
            refuse(f"{what} of a {digits:,.0f}-digit number", digits, "digits",
                   MAX_DECIMAL_DIGITS)  # fmt: skip


def _decimal_modular(what: str, base: Any, exponent: Any, modulus: Any) -> None:
    """A Decimal modular power (`pow(a, b, m)`, Context.power(a, b, m)): all three operands
    as integers (see _decimal_operands)."""
    _decimal_operands(what, base, exponent, modulus, integral=True)


def check_lshift(a: Any, b: Any) -> Any:
    if type(a) is int and type(b) is int and a and b > 0:
        bits = a.bit_length() + b
        if bits > MAX_INT_BITS:
            refuse("int << int", bits, "bits", MAX_INT_BITS)
    return b


def check_divide(a: Any, b: Any) -> Any:
    """Refuse `a // b`, `a % b`, divmod(a, b) of integers whose long division would take
    too long (its work grows with the quotient's bits times the divisor's); else b."""
    if isinstance(a, int) and isinstance(b, int):
        big = a.bit_length()
        if big > MAX_INT_BITS:  # below, the work is below MAX_DIVISION whatever b is
            small = b.bit_length()
            work = (big - small) * small
            if work > MAX_DIVISION:
                refuse_work("dividing a big integer", work, "bit x bit", MAX_DIVISION)
    return b


def checked_mul(a: Any, b: Any) -> Any:
    return a * check_mul(a, b)


def checked_pow(base: Any, exponent: Any, mod: Any = None) -> Any:
    if mod is None:
        return base ** check_pow(base, exponent)
    decimal = imported("decimal")
    if decimal is not None and any(
        isinstance(x, decimal.Decimal) for x in (base, exponent, mod)
    ):  # (the Decimal type checks it too: bound_decimal; this says it was pow(...))
        _decimal_modular("pow(Decimal, Decimal, Decimal)", base, exponent, mod)
        if isinstance(base, int):  # (C's power makes it a Decimal: so does this)
            base = decimal.Decimal(base)
    if isinstance(exponent, int) and isinstance(mod, int) and mod:
        # modular: the result stays below mod, but the work is one multiplication modulo
        # mod per bit of the exponent
        digits = max(1.0, mod.bit_length() / 30)
        work = exponent.bit_length() * digits**1.6
        if work > MAX_MODULAR:
            refuse_work("pow(int, int, int)", work, "digit", MAX_MODULAR)
    return pow(base, exponent, mod)


def checked_lshift(a: Any, b: Any) -> Any:
    return a << check_lshift(a, b)


def checked_floordiv(a: Any, b: Any) -> Any:
    return a // check_divide(a, b)


def checked_mod(a: Any, b: Any) -> Any:
    return a % check_mod(a, b)


def check_mod(a: Any, b: Any) -> Any:
    """`a % b`: integers' division, or a %-format's widths (see _check_percent)."""
    if isinstance(a, (str, bytes, bytearray)):
        _check_percent(a, b)
        return b
    return check_divide(a, b)


def checked_divmod(a: Any, b: Any) -> Any:
    return divmod(a, check_divide(a, b))


def _factorial_bits(n: Any) -> float:
    return math.lgamma(n + 1) / math.log(2) if isinstance(n, int) and n > 1 else 0.0


def _bits_at_most(bits: float, what: str, most: int = MAX_INT_BITS) -> None:
    if bits > most:
        refuse(what, bits, "bits", most)


def _operands(what: str, *numbers: Any) -> None:
    for n in numbers:
        if isinstance(n, int) and n.bit_length() > MAX_OPERAND_BITS:
            bits = n.bit_length()
            refuse_work(f"{what} of a {bits:,}-bit integer", bits**2, "bit x bit",
                        MAX_OPERAND_BITS**2)  # fmt: skip


def _stand_in(module: types.ModuleType, *checked: Callable[..., Any]) -> types.ModuleType:
    """A copy of `module` (its public names) with the `checked` functions in place."""
    copy = types.ModuleType(module.__name__, module.__doc__)
    copy.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    if hasattr(module, "__all__"):
        copy.__dict__["__all__"] = list(module.__all__)
    for function in checked:
        if isinstance(function, types.FunctionType):  # (a class is named already, and shared)
            function.__module__ = module.__name__  # what routines see: the module's own
            function.__qualname__ = function.__name__
        copy.__dict__[function.__name__] = function
    return copy


def guarded_math() -> types.ModuleType:
    """The math module with factorial, comb, perm, prod and lcm refusing results beyond
    MAX_INT_BITS, and gcd and isqrt operands beyond MAX_OPERAND_BITS."""

    def factorial(n: int, /) -> int:
        _bits_at_most(_factorial_bits(n), f"factorial({n})")
        return math.factorial(n)

    def comb(n: int, k: int, /) -> int:
        if isinstance(n, int) and isinstance(k, int) and 0 <= k <= n:
            bits = _factorial_bits(n) - _factorial_bits(k) - _factorial_bits(n - k)
            _bits_at_most(bits, f"comb({n}, {k})")
        return math.comb(n, k)

    def perm(n: int, k: int | None = None, /) -> int:
        if isinstance(n, int) and isinstance(k, int) and 0 <= k <= n:
            _bits_at_most(_factorial_bits(n) - _factorial_bits(n - k), f"perm({n}, {k})")
        return math.perm(n, k)

    def prod(iterable: Iterable[Any], /, *, start: Any = 1) -> Any:
        result = start
        for item in iterable:  # each product checked, as `*` is in a routine
            result = checked_mul(result, item)
        return result

    def lcm(*integers: int) -> int:
        _operands("lcm", *integers)
        bits = sum(n.bit_length() for n in integers if isinstance(n, int))
        _bits_at_most(bits, "lcm(...)")
        return math.lcm(*integers)

    def gcd(*integers: int) -> int:
        _operands("gcd", *integers)
        return math.gcd(*integers)

    def isqrt(n: int, /) -> int:
        _operands("isqrt", n)
        return math.isqrt(n)

    return _stand_in(math, factorial, comb, perm, prod, lcm, gcd, isqrt)


def _size_at_most(size: Any, what: str) -> None:
    if isinstance(size, int) and size > MAX_REPEAT_BYTES:
        refuse(what, size, "bytes", MAX_REPEAT_BYTES)


def plain_key(key: Any) -> Any:
    """A str or bytes key as the exact built-in value. Caches every call shares (struct's
    formats, ZoneInfo's zones) keep the key they were given and compare later keys with it:
    a str subclass of a routine's, whose `__eq__` says yes, ran in other roles' calls and
    chose what they got (a red team's). Other keys as they are (C refuses them)."""
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, bytes):
        return bytes.__getitem__(key, slice(None))
    return key


def guarded_struct() -> types.ModuleType:
    """struct with pack and Struct refusing formats of more than MAX_REPEAT_BYTES, and every
    function taking a format giving it to struct as a plain str or bytes (plain_key: struct
    caches the formats its functions are given)."""

    def pack(format: Any, /, *values: Any) -> bytes:
        format = plain_key(format)
        _size_at_most(struct.calcsize(format), "struct.pack")
        return struct.pack(format, *values)

    def Struct(format: Any) -> struct.Struct:
        format = plain_key(format)
        _size_at_most(struct.calcsize(format), "struct.Struct")
        return struct.Struct(format)

    def calcsize(format: Any, /) -> int:
        return struct.calcsize(plain_key(format))

    def pack_into(format: Any, buffer: Any, offset: Any, /, *values: Any) -> None:
        struct.pack_into(plain_key(format), buffer, offset, *values)

    def unpack(format: Any, buffer: Any, /) -> tuple[Any, ...]:
        return struct.unpack(plain_key(format), buffer)

    def unpack_from(format: Any, /, buffer: Any, offset: Any = 0) -> tuple[Any, ...]:
        return struct.unpack_from(plain_key(format), buffer, offset)

    def iter_unpack(format: Any, buffer: Any, /) -> Any:
        return struct.iter_unpack(plain_key(format), buffer)

    return _stand_in(struct, pack, Struct, calcsize, pack_into, unpack, unpack_from, iter_unpack)


def hold_strptime(module: types.ModuleType) -> None:
    """`datetime.strptime` with plain str, once per backend, as _strptime is imported (its
    C code imports it and calls these two on it). _strptime keeps a compiled pattern per
    format in a dict every call shares and compares later formats with the key it kept: a
    red team's str subclass, kept there as a key, ran its `__eq__` in other roles' calls,
    saw their formats and chose the patterns they parsed with."""
    parse_datetime, parse_time = module._strptime_datetime, module._strptime_time

    def _strptime_datetime(cls: Any, data: str, format: str = "%a %b %d %H:%M:%S %Y") -> Any:
        return parse_datetime(cls, exact_str(data), exact_str(format))

    def _strptime_time(data: str, format: str = "%a %b %d %H:%M:%S %Y") -> Any:
        return parse_time(exact_str(data), exact_str(format))

    module._strptime_datetime, module._strptime_time = _strptime_datetime, _strptime_time  # type: ignore[attr-defined]


def hold_flag_values(enum: types.ModuleType) -> None:
    """enum.Flag's `_missing_` with a plain int, once per backend, as enum is imported. It
    keeps the value it is called with, and the pseudo-member it makes of it, in the map of
    values of the class called, a class every call shares when it is enum's `Flag` or
    `IntFlag` or re's `RegexFlag`: a red team's int subclass was kept there, and another
    role's `IntFlag(0)` got back a member whose value was the routine's object."""
    missing = enum.Flag.__dict__["_missing_"].__func__
    if getattr(missing, "held", False):
        return

    def _missing_(cls: Any, value: Any) -> Any:
        return missing(cls, int.__int__(value) if isinstance(value, int) else value)

    _missing_.held = True  # type: ignore[attr-defined]
    _set_on_type(enum.Flag, {"_missing_": classmethod(_missing_)})


def hold_zones(zoneinfo: types.ModuleType) -> None:
    """ZoneInfo(key) in Python, once per backend, as zoneinfo is imported. C's keeps zones
    in caches every call shares, keyed by the key it was given, and compares later keys
    with it: a routine's str subclass whose `__eq__` said yes ran in other roles' calls and
    chose the zone they got. For a subclass, C uses the cache the class's `_weak_cache`
    attribute names, trusting whatever it is (gh-142781, gh-142783: a red team's class
    made C write a byte into a shared type's function pointer, and another role's call
    crashed on it). So ZoneInfo's zones come from a cache of this function's, of plain str
    keys, made with no_cache (which reads no cache), and subclasses are refused."""
    kind = zoneinfo.ZoneInfo
    if getattr(kind.__new__, "held", False):
        return
    no_cache = kind.no_cache
    zones: dict[str, Any] = {}  # one per time zone file at most (an unknown key raises)

    def __new__(cls: Any, key: Any) -> Any:
        if cls is not kind:
            raise TypeError(
                "pyfuncs: ZoneInfo may not be subclassed in the database: CPython 3.11.2's "
                "ZoneInfo trusts a subclass's cache (gh-142781)"
            )
        key = plain_key(key)
        if type(key) is not str:
            return no_cache(key)  # (which says what a key must be)
        zone = zones.get(key)
        if zone is None:
            zone = zones[key] = no_cache(key)
        return zone

    __new__.held = True  # type: ignore[attr-defined]
    _set_on_type(kind, {"__new__": staticmethod(__new__)})


def _random_bytes(generator: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    def randbytes(n: Any) -> Any:
        _size_at_most(n, f"randbytes({n})")
        return method(n)

    return randbytes


def _random_bits(generator: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    def getrandbits(k: Any, /) -> Any:
        if isinstance(k, int):
            _bits_at_most(k, f"getrandbits({k})", MAX_REPEAT_BYTES * 8)
        return method(k)

    return getrandbits


# The call whose context is current: a token of its own in each call's context (every
# call runs in a fresh one: see routines.py), set as the first localcontext() of the call
# is entered, so that what a call set is given back only in that call.
CALL: ContextVar[object] = ContextVar("pyfuncs_call")


class LocalContext:
    """decimal.localcontext()'s context manager, which gives back the context it replaced
    only in the call it was entered in. C's gives it back in whatever context is current
    when it exits: a red team's generator, suspended inside one and closed in another
    role's call (an aborted set-returning call's, closed at the next one in the backend),
    put its own context in that call, which computed at its precision and raised flags in
    it for the red team to read."""

    __slots__ = ("_call", "_decimal", "_made", "_saved")

    def __init__(self, decimal: types.ModuleType, made: Any) -> None:
        self._decimal, self._made = decimal, made

    def __enter__(self) -> Any:
        call = CALL.get(None)
        if call is None:
            call = object()
            CALL.set(call)
        self._saved, self._call = self._decimal.getcontext(), call
        self._decimal.setcontext(self._made)
        return self._made

    def __exit__(self, *exc: object) -> None:
        if CALL.get(None) is self._call:
            self._decimal.setcontext(self._saved)


def guarded_decimal() -> types.ModuleType:
    """decimal with a localcontext() that refuses a precision beyond MAX_DECIMAL_DIGITS
    (the contexts it makes are current in the call, where `/` and the rest use them), and
    whose manager gives back what it replaced only in its own call (LocalContext)."""
    import decimal

    def localcontext(ctx: Any = None, **kwargs: Any) -> Any:
        # only for the call under way's own code: it copies the current context, which
        # a red team's finalizer (C's map over localcontext, in another role's call) read
        if not stopping.from_the_call():
            raise PermissionError(
                "pyfuncs: decimal.localcontext() is for the code of the call under way"
            )
        # the C localcontext sets a precision it is given past the Context type's check
        # (bound_decimal); the context it copies has a precision within bounds already
        _precision_at_most(kwargs.get("prec"))
        made = decimal.localcontext(ctx, **kwargs)  # (C checks what it is given)
        # its copy of the context, as it enters it: in a context of its own, changing nothing
        return LocalContext(decimal, Context().run(made.__enter__))

    return _stand_in(decimal, localcontext)


def _hashed(what: str, data: Any) -> None:
    """Refuse more than MAX_HASHED_BYTES for one call into the C library's hashing (its
    buffer's size, whatever len() says; what is not a buffer, hashlib refuses itself)."""
    try:
        size = memoryview(data).nbytes
    except TypeError:
        return
    if size > MAX_HASHED_BYTES:
        refuse_work(what, size, "bytes hashed", MAX_HASHED_BYTES)


class Hash:
    """A hash object of hashlib's (or hmac's) whose methods are Python: each call is a
    bytecode where a stop lands (a `map` over the real object's C methods runs in OpenSSL
    for as long as its input lasts), and takes at most MAX_HASHED_BYTES."""

    __slots__ = ("_hash",)

    def __init__(self, hashed: Any) -> None:
        self._hash = hashed

    @property
    def name(self) -> str:
        return str(self._hash.name)

    @property
    def digest_size(self) -> int:
        return int(self._hash.digest_size)

    @property
    def block_size(self) -> int:
        return int(self._hash.block_size)

    def update(self, data: Any, /) -> None:
        _hashed("update", data)
        self._hash.update(data)

    def digest(self, *length: int) -> bytes:
        _length_at_most(length)
        return bytes(self._hash.digest(*length))

    def hexdigest(self, *length: int) -> str:
        _length_at_most(length)
        return str(self._hash.hexdigest(*length))

    def copy(self) -> Hash:
        return Hash(self._hash.copy())


def _length_at_most(length: tuple[int, ...]) -> None:
    """A shake digest's length (the only hash whose output length is asked for)."""
    if length and isinstance(length[0], int) and length[0] > MAX_HASHED_BYTES:
        refuse("a digest", length[0], "bytes", MAX_HASHED_BYTES)


def _hashing(name: str, real: Callable[..., Any], data_at: int) -> Callable[..., Any]:
    """A constructor of `real` hash objects, made Hash, their first data bounded."""

    def make(*args: Any, **kwargs: Any) -> Hash:
        data = args[data_at] if len(args) > data_at else kwargs.get("data", kwargs.get("string"))
        if data is not None:
            _hashed(name, data)
        return Hash(real(*args, **kwargs))

    make.__name__ = name
    return make


def guarded_hashlib() -> types.ModuleType:
    """hashlib whose hash objects are Hash, each call hashing at most MAX_HASHED_BYTES, with
    a pbkdf2_hmac that refuses more than MAX_PBKDF2_ROUNDS rounds: each block of output
    hashes the salt again and then `iterations` rounds (a salt of 64 MB made 200 blocks
    take seconds of libcrypto, which nothing stops: a red team), so every 64 bytes of salt
    count as a round of each block."""
    import hashlib

    def pbkdf2_hmac(hash_name: str, password: Any, salt: Any, iterations: int,
                    dklen: int | None = None) -> bytes:  # fmt: skip
        _hashed("pbkdf2_hmac's password", password)
        if isinstance(iterations, int) and (dklen is None or isinstance(dklen, int)):
            blocks = 1 if not dklen else -(-dklen // 16)  # a 16-byte digest at the least
            try:
                salted = -(-memoryview(salt).nbytes // 64)  # (its buffer, whatever len says)
            except TypeError:
                salted = 0  # not bytes: hashlib says so
            rounds = (iterations + salted) * blocks
            if rounds > MAX_PBKDF2_ROUNDS:
                refuse_work("pbkdf2_hmac", rounds, "rounds", MAX_PBKDF2_ROUNDS)
        return hashlib.pbkdf2_hmac(hash_name, password, salt, iterations, dklen)

    constructors = [_hashing("new", hashlib.new, 1)] + [
        _hashing(name, getattr(hashlib, name), 0)
        for name in hashlib.__all__
        if name not in ("new", "pbkdf2_hmac", "file_digest") and callable(getattr(hashlib, name))
    ]
    return _stand_in(hashlib, pbkdf2_hmac, *constructors)


def guarded_uuid() -> types.ModuleType:
    """uuid whose uuid3 and uuid5 hash a name of at most MAX_HASHED_BYTES (they hash it in
    one call of the C library's, which nothing stops: a red team)."""
    import uuid

    def _name_at_most(name: Any, what: str) -> None:
        if isinstance(name, str):  # hashed as UTF-8: a byte a character in ASCII, else 4 at most
            size = len(name) if name.isascii() else 4 * len(name)
            if size > MAX_HASHED_BYTES:
                refuse_work(what, size, "bytes hashed", MAX_HASHED_BYTES)
        else:
            _hashed(what, name)

    def uuid3(namespace: Any, name: Any) -> Any:
        _name_at_most(name, "uuid3's name")
        return uuid.uuid3(namespace, name)

    def uuid5(namespace: Any, name: Any) -> Any:
        _name_at_most(name, "uuid5's name")
        return uuid.uuid5(namespace, name)

    return _stand_in(uuid, uuid3, uuid5)


def guarded_hmac() -> types.ModuleType:
    """hmac whose objects are Hash and whose one-shot digest hashes at most
    MAX_HASHED_BYTES (a key longer than a block is hashed too)."""
    import hmac

    def new(key: Any, msg: Any = None, digestmod: Any = "") -> Hash:
        _hashed("hmac's key", key)
        if msg is not None:
            _hashed("hmac.new", msg)
        return Hash(hmac.new(key, msg, digestmod))

    def digest(key: Any, msg: Any, digest: Any) -> bytes:
        _hashed("hmac's key", key)
        _hashed("hmac.digest", msg)
        return hmac.digest(key, msg, digest)

    def HMAC(key: Any, msg: Any = None, digestmod: Any = "") -> Hash:  # (the class, as made)
        return new(key, msg, digestmod)

    return _stand_in(hmac, new, digest, HMAC)


def guarded_random() -> types.ModuleType:
    """random with a generator of its own (each routine module gets one: see sandbox._view)
    behind its module-level functions, and randbytes and getrandbits refusing more than
    MAX_REPEAT_BYTES. The module's own generator is shared by every call in the backend: 624
    draws of it tell its state, and so every later draw of every other role's."""
    import random  # when a routine first imports it, not in every backend's boot

    generator = random.Random()  # seeded from os.urandom

    def randbytes(n: int) -> bytes:
        _size_at_most(n, f"randbytes({n})")
        return generator.randbytes(n)

    def getrandbits(k: int, /) -> int:
        _bits_at_most(k, f"getrandbits({k})", MAX_REPEAT_BYTES * 8)
        return generator.getrandbits(k)

    copy = _stand_in(random, randbytes, getrandbits)
    shared = random._inst
    for name, value in list(vars(copy).items()):
        if getattr(value, "__self__", None) is shared and name not in ("randbytes", "getrandbits"):
            copy.__dict__[name] = getattr(generator, name)
    return copy


# unicodedata.normalize sorts a run of combining characters (non-starters) by insertion sort,
# in C: a run of 8,000 takes ~50 ms, 16,000 ~0.2 s, 200,000 ten seconds. A combining
# character decomposes into at most 2, so a run of 1,000 sorts in a few ms.
MAX_COMBINING_RUN = 1_000
# the characters of combining class 0 whose decomposition starts with a non-starter
_STARTING_MARKS = "\u0f73\u0f75\u0f81\uff9e\uff9f"


def check_normalize(form: Any, text: Any, what: str = "unicodedata.normalize") -> None:
    """Refuse to normalize `text` if its result could be beyond MAX_REPEAT_BYTES (18
    characters for one in NFKC and NFKD, 4 in NFC and NFD) or if it has a run of more than
    MAX_COMBINING_RUN combining characters (whose sort takes time quadratic in the run)."""
    import unicodedata

    if not isinstance(text, str) or not isinstance(form, str):
        return  # unicodedata refuses it
    text = exact_str(text)
    if text.isascii():
        return  # every form of ASCII is itself
    size = len(text) * (18 if exact_str(form).startswith("NFK") else 4)
    _text_size(text, size, what)
    run, combining = 0, unicodedata.combining
    for character in text:  # in Python: a stop reaches it
        if combining(character) or character in _STARTING_MARKS:
            run += 1
            if run > MAX_COMBINING_RUN:
                raise OperationTooLarge(
                    f"{what} of a run of more than {MAX_COMBINING_RUN:,} combining characters "
                    "would take time quadratic in the run in one C call, which no stop can "
                    f"interrupt; a routine may normalize runs of at most {MAX_COMBINING_RUN:,}"
                )
        else:
            run = 0


def hold_unicodedata(unicodedata: types.ModuleType) -> None:
    """normalize and is_normalized refuse what check_normalize refuses, once per backend as
    unicodedata is imported: the module's functions and its UCD objects' methods
    (`unicodedata.ucd_3_2_0`), for whoever calls them. A routine's `"...".encode("idna")`
    had the idna codec's code normalize a long run of combining characters in one C call
    (a red team's; the codec reaches them by name, past anything a routine's view holds)."""
    kind = unicodedata.UCD
    if getattr(kind.__dict__["normalize"], "held", False):
        return
    own = kind.__dict__

    def held(name: str, method: Callable[..., Any], prefix: str) -> Callable[..., Any]:
        def checked(*args: Any) -> Any:
            form, unistr = args[-2:] if len(args) >= 2 else (None, None)
            check_normalize(form, unistr, f"{prefix}{name}")
            return method(*args)

        checked.held = True  # type: ignore[attr-defined]
        checked.__name__ = checked.__qualname__ = name
        checked.__module__ = "unicodedata"  # what routines see: the module's own
        return checked

    for name in ("normalize", "is_normalized"):
        setattr(unicodedata, name, held(name, getattr(unicodedata, name), "unicodedata."))
    _set_on_type(kind, {name: held(name, own[name], "unicodedata.ucd_3_2_0.")
                        for name in ("normalize", "is_normalized")})  # fmt: skip


def guarded_secrets() -> types.ModuleType:
    """secrets with its token and bit functions refusing more than MAX_REPEAT_BYTES."""
    import secrets  # when a routine first imports it, not in every backend's boot

    def token_bytes(nbytes: int | None = None) -> bytes:
        _size_at_most(nbytes, f"token_bytes({nbytes})")
        return secrets.token_bytes(nbytes)

    def token_hex(nbytes: int | None = None) -> str:
        _size_at_most(nbytes, f"token_hex({nbytes})")
        return secrets.token_hex(nbytes)

    def token_urlsafe(nbytes: int | None = None) -> str:
        _size_at_most(nbytes, f"token_urlsafe({nbytes})")
        return secrets.token_urlsafe(nbytes)

    def randbits(k: int) -> int:
        _bits_at_most(k, f"randbits({k})", MAX_REPEAT_BYTES * 8)
        return secrets.randbits(k)

    return _stand_in(secrets, token_bytes, token_hex, token_urlsafe, randbits)


# --- methods of built-in types, read through a check (sandbox.attribute) ---------------


def _text_size(text: Any, size: float, what: str) -> None:
    # characters, as `str * n` counts them (a character takes 1 to 4 bytes)
    if size > MAX_REPEAT_BYTES:
        unit = "bytes" if isinstance(text, (bytes, bytearray)) else "characters"
        refuse(what, size, unit, MAX_REPEAT_BYTES)


# --- formats ----------------------------------------------------------------------------
# A format's width or precision is the size of what it writes, in one C call:
# f"{x:>{n}}", format(x, spec), "{:>{}}".format(x, n) and "%*d" % (n, x) each fill n
# characters. So every number in a format spec (or a %-format's, `*` included) must be at
# most MAX_REPEAT_BYTES; a number in a spec of a type's own __format__ (a date's, say) is
# held to the same bound.


def largest_number(text: str) -> int:
    """The largest run of decimal digits in `text` (any script's, as format specs read them)
    as a number; a run too long to be within any bound counts as one past it."""
    largest, start = 0, -1
    for at, character in enumerate(f"{text} "):
        if character.isdecimal():
            if start < 0:
                start = at
        elif start >= 0:
            run = text[start:at]
            largest = max(largest, int(run) if len(run) <= 9 else MAX_REPEAT_BYTES + 1)
            start = -1
    return largest


def exact_str(text: str) -> str:
    """`text` as a plain str (a subclass's copy), read without any method of the subclass."""
    return str.__str__(text)


def check_spec(spec: Any) -> Any:
    """A format spec (f-strings' and format()'s) whose numbers are within the bound; else
    refused. Returns the spec, a plain str if it is a str (a subclass's length, digits or
    __format__ are not what is read, nor what is used)."""
    if isinstance(spec, str):
        spec = exact_str(spec)
        if len(spec) > 7:  # shorter, no number can be beyond it
            size = largest_number(spec)
            if size > MAX_REPEAT_BYTES:
                refuse(f"a format of width or precision {size}", size, "characters",
                       MAX_REPEAT_BYTES)  # fmt: skip
    return spec


def checked_format(value: Any, spec: Any = "", /) -> Any:
    return format(value, check_spec(spec))


def _check_percent(template: Any, values: Any) -> None:
    """Refuse a %-format (str or bytes) whose widths or precisions, written or taken from
    the values by `*`, are beyond the bound."""
    # read as the %-operator reads them: the template's own characters and the items of a
    # tuple, whatever a subclass's methods say
    if isinstance(template, str):
        text = exact_str(template)
    elif isinstance(template, bytes):
        text = bytes.__getitem__(template, slice(None)).decode("latin-1")
    else:
        text = bytearray.__getitem__(template, slice(None)).decode("latin-1")
    if "%" not in text:
        return
    values = tuple.__getitem__(values, slice(None)) if isinstance(values, tuple) else (values,)
    taken, at, end = 0, 0, len(text)
    while (at := text.find("%", at) + 1) > 0:
        if text.startswith("(", at):  # a mapping key: '*' may not follow it
            depth = 0
            while at < end:
                depth += {"(": 1, ")": -1}.get(text[at], 0)
                at += 1
                if not depth:
                    break
        while at < end and text[at] in "-+ #0":
            at += 1
        for part in ("width", "precision"):
            if part == "precision":
                if not text.startswith(".", at):
                    break
                at += 1
            if text.startswith("*", at):
                size = values[taken] if taken < len(values) else 0
                taken, at = taken + 1, at + 1
                size = abs(int.__index__(size)) if isinstance(size, int) else 0
            else:
                start = at
                while at < end and "0" <= text[at] <= "9":
                    at += 1
                size = largest_number(text[start:at])
            if size > MAX_REPEAT_BYTES:
                refuse(f"a %-format of {part} {size}", size, "characters", MAX_REPEAT_BYTES)
        while at < end and text[at] in "hlL":
            at += 1
        if at < end and text[at] != "%":
            taken += 1
        at += 1


def _replace(text: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    def replace(old: Any, new: Any, count: int = -1, /) -> Any:
        if isinstance(old, (str, bytes, bytearray)) and isinstance(new, (str, bytes, bytearray)):
            found = text.count(old) if len(old) else len(text) + 1
            if isinstance(count, int) and count >= 0:
                found = min(found, count)
            size = len(text) + found * (len(new) - len(old))
            _text_size(text, size, f"{type(text).__name__}.replace")
        return method(old, new, count)

    return replace


def _translate(text: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    def translate(table: Any, /) -> Any:
        # a dict's values as stored (what str.translate reads of a dict that does not
        # override lookup); any other mapping is looked up by Python code for every
        # character, where a stop reaches the call and its memory is counted as it grows
        if isinstance(table, dict):
            longest = max(
                (str.__len__(v) for v in dict.values(table) if isinstance(v, str)), default=1
            )
            _text_size(text, str.__len__(text) * longest, "str.translate")
        return method(table)

    return translate


def _join(separator: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    def join(iterable: Iterable[Any], /) -> Any:
        items = iterable if isinstance(iterable, (list, tuple)) else list(iterable)
        size = sum(len(i) for i in items if isinstance(i, (str, bytes, bytearray)))
        size += len(separator) * max(0, len(items) - 1)
        _text_size(separator, size, f"{type(separator).__name__}.join")
        return method(items)

    return join


def _padding(name: str) -> Callable[[Any, Callable[..., Any]], Callable[..., Any]]:
    def checked(text: Any, method: Callable[..., Any]) -> Callable[..., Any]:
        def pad(*args: Any, **kwargs: Any) -> Any:
            width = args[0] if args else kwargs.get("tabsize", kwargs.get("width", 8))
            if isinstance(width, int):
                size = width
                if name == "expandtabs":  # every tab may become `width` spaces
                    tabs = text.count("\t" if isinstance(text, str) else b"\t")
                    size = len(text) + tabs * width
                _text_size(text, size, f"{type(text).__name__}.{name}({width})")
            return method(*args, **kwargs)

        return pad

    return checked


def _to_bytes(number: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    def to_bytes(length: Any = 1, *args: Any, **kwargs: Any) -> Any:
        _size_at_most(length, f"int.to_bytes({length})")
        return method(length, *args, **kwargs)

    return to_bytes


def _from_bytes(kind: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    """int.from_bytes makes an int of eight bits a byte, linear in them: the ints that
    stdlib code then works on in quadratic time (Fraction's gcd, Decimal(int)) must not come
    that way beyond what the operators may make (a red team's 8,000,001 bits)."""

    def from_bytes(data: Any, *args: Any, **kwargs: Any) -> Any:
        size = len(data) if isinstance(data, (bytes, bytearray)) else 0
        if size * 8 > MAX_INT_BITS:
            refuse(f"int.from_bytes of {size:,} bytes", size * 8, "bits", MAX_INT_BITS)
        return method(data, *args, **kwargs)

    return from_bytes


_TEXT = (str, bytes, bytearray)
PADDING = ("ljust", "rjust", "center", "zfill", "expandtabs")


def _random_kinds() -> tuple[type, ...]:
    """random.Random, once random has been imported (before, no instance of it can exist)."""
    random = imported("random")
    return (random.Random,) if random is not None else ()


def _contexts() -> tuple[type, ...]:
    """decimal's Context, once decimal has been imported."""
    decimal = imported("decimal")
    return (decimal.Context,) if decimal is not None else ()


def _context_power(context: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    """Context.power, its operands' digits checked as `**` checks a Decimal power's."""

    def power(*args: Any, **kwargs: Any) -> Any:
        _decimal_operands("Decimal power", *args[:2])
        modulo = args[2] if len(args) > 2 else kwargs.get("modulo")
        if modulo is not None:
            _decimal_operands("Decimal power", *args[:2], modulo, integral=True)
        return method(*args, **kwargs)

    return power


class Signals(MutableMapping):  # type: ignore[type-arg]
    """A decimal Context's flags or traps as routines get them: through the context, which
    this holds. The C context's own (a SignalDict) points into the context without holding
    it, so one kept after its context was freed read and set bits of whatever took that
    memory (CPython 3.11.2; gh-146011 made the pointer a checked one, in 3.13+)."""

    __slots__ = ("_context", "_name")

    def __init__(self, context: Any, name: str) -> None:
        self._context, self._name = context, name

    def _own(self) -> Any:
        return getattr(self._context, self._name)

    def __getitem__(self, signal: Any) -> bool:
        return self._own()[signal]  # type: ignore[no-any-return]

    def __setitem__(self, signal: Any, value: Any) -> None:
        self._own()[signal] = value

    def __delitem__(self, signal: Any) -> None:
        del self._own()[signal]

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._own()))

    def __len__(self) -> int:
        return len(self._own())

    def __eq__(self, other: object) -> bool:
        return self._own() == (other._own() if isinstance(other, Signals) else other)  # type: ignore[no-any-return]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._own())

    def copy(self) -> dict[Any, bool]:
        return self._own().copy()  # type: ignore[no-any-return]


def _signals(context: Any, value: Any) -> Any:
    """`context.flags` and `context.traps` of a decimal Context: Signals that hold it."""
    name = "flags" if value is context.flags else "traps"
    return Signals(context, name)


def _deque_index(items: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    """deque.index compares each item without holding it: an __eq__ that empties the deque
    frees the item being compared, and the reflected __eq__ gets freed memory to use
    (CPython gh-115243, fixed in 3.11.9; Debian's 3.11.2 has it: a red team crashed the
    cluster with it). This index compares the items of a copy, which holds them."""
    if hasattr(method, "__func__"):
        return method  # a subclass's own index, Python

    def index(value: Any, start: Any = 0, stop: Any = _LONGEST, /) -> int:
        copy = list(items)
        length = len(copy)
        for at in range(*slice(start, stop).indices(length)):
            item = copy[at]
            if item is value or item == value:
                return at
            if len(items) != length:
                raise RuntimeError("deque mutated during iteration")
        raise ValueError(f"{value!r} is not in deque")

    return index


def _refused_on_zones(message: str) -> Callable[[Any, Callable[..., Any]], Callable[..., Any]]:
    """A READS entry: the method as it is, but ZoneInfo's (of the class or a zone) raises."""

    def read(zone: Any, method: Callable[..., Any]) -> Callable[..., Any]:
        zoneinfo = imported("zoneinfo")
        kind = zone if isinstance(zone, type) else type(zone)
        if zoneinfo is None or not issubclass(kind, zoneinfo.ZoneInfo):
            return method

        def refused(*_: Any, **__: Any) -> NoReturn:
            raise AttributeError(f"pyfuncs: a routine may not {message}")

        return refused

    return read


def _zone_kinds() -> tuple[type, ...]:
    """zoneinfo.ZoneInfo, once zoneinfo has been imported."""
    zoneinfo = imported("zoneinfo")
    return (zoneinfo.ZoneInfo,) if zoneinfo is not None else ()


def _zone_time(zone: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    """ZoneInfo's utcoffset, dst and tzname read a datetime's fold from where a datetime
    keeps it, whatever object they are given: an object of the routine's with the hour,
    minute and second they ask for (and toordinal) has them read past its end (CPython
    gh-125318, open upstream; a routine crashed its backend with it). These take a datetime
    or None, as the C functions assume."""
    import datetime

    def on_time(dt: Any) -> Any:
        if dt is not None and not isinstance(dt, datetime.datetime):
            raise TypeError(f"{method.__name__}: argument must be a datetime or None, not "
                            f"{type(dt).__name__}")  # fmt: skip
        return method(dt)

    return on_time


_LONGEST = (1 << 63) - 1  # deque.index's default stop

# name -> (the types whose method it is, or a function that gives them when asked; what a
# routine gets instead: made from the object and its own bound method)
READS: dict[str, tuple[Kinds, Callable[[Any, Callable[..., Any]], Any]]] = {
    "replace": (_TEXT, _replace),
    "join": (_TEXT, _join),
    "translate": ((str,), _translate),
    "to_bytes": ((int,), _to_bytes),
    "from_bytes": ((int,), _from_bytes),
    "randbytes": (_random_kinds, _random_bytes),
    "getrandbits": (_random_kinds, _random_bits),
    **{name: (_TEXT, _padding(name)) for name in PADDING},
    "power": (_contexts, _context_power),
    "flags": (_contexts, _signals),
    "traps": (_contexts, _signals),
    "index": ((deque,), _deque_index),
    # ZoneInfo.clear_cache empties the cache every call shares; from_file parses a TZif an
    # object of the routine's supplies, with C indices it trusts (a transition naming the
    # type one past the last read past its array: gh-145883, fixed upstream after 3.11.2; a
    # red team crashed a backend with it)
    "clear_cache": ((object,), _refused_on_zones(
        "clear ZoneInfo's cache: every call in this backend shares it (ZoneInfo.no_cache(key) "
        "gives a zone read afresh)")),
    "from_file": ((object,), _refused_on_zones(
        "read a time zone from a file object: CPython 3.11.2's parser trusts what it reads "
        "(use ZoneInfo(key))")),
    **{name: (_zone_kinds, _zone_time) for name in ("utcoffset", "dst", "tzname")},
}  # fmt: skip


# --- Decimal conversions -------------------------------------------------------------------
# A Decimal holds its exponent apart from its digits: Decimal("1e1000000") is ten characters,
# and so is 10 ** 999_998 in decimal's default context. Turned into an int (int(), round(),
# math.floor, as_integer_ratio, Fraction, statistics) or into fixed-point text (format "f"),
# it becomes a million digits, in C code no stop reaches (int() of it takes 30 s). These
# conversions are methods of the Decimal type, which every caller reaches, whoever made the
# value (a routine, PL/Python for a numeric argument, a query's result): so the runtime
# bounds them on the type itself, once per backend, as soon as decimal is imported
# (boot.py). The type is immutable to Python code; the runtime lifts that flag for the time
# it takes to set the checked methods, which then run for every Decimal in the backend.

_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE


def _digits(value: Any) -> int:
    """The digits of the int (or of the numerator or denominator) a Decimal would become
    (read with the type's own methods: a subclass's could say anything)."""
    kind = imported("decimal").Decimal  # type: ignore[union-attr]  # (one is converting)
    if not kind.is_finite(value):
        return 0
    return int(max(kind.adjusted(value) + 1, -kind.as_tuple(value).exponent, 0))


def _conversion(value: Any, what: str, digits: int | None = None) -> None:
    digits = _digits(value) if digits is None else digits
    if digits > MAX_DECIMAL_CONVERSION:
        refuse(f"{what} of a Decimal", digits, "digits", MAX_DECIMAL_CONVERSION)


def _format_digits(value: Any, spec: str) -> int:
    """About the digits format(value, spec) writes: a fixed-point one writes the integer part
    and the fraction in full, any kind writes its precision."""
    kind = spec[-1:] if spec[-1:].isalpha() or spec[-1:] == "%" else ""
    _, dot, tail = spec.rstrip("%fFeEgGn").partition(".")
    precision = int(tail) if dot and tail.isdigit() else 0
    decimal = imported("decimal").Decimal  # type: ignore[union-attr]  # (the type's own)
    if kind in ("f", "F", "%") and decimal.is_finite(value):
        exponent = decimal.as_tuple(value).exponent
        return int(max(decimal.adjusted(value), 0) + 3 + max(precision, -exponent))
    return precision


def bound_decimal(decimal: types.ModuleType) -> None:
    """Check, on the Decimal type, the conversions to int and to fixed-point text, and on
    the Context type, the precision of every context made or changed (however a routine
    got hold of the type: `decimal.Context`, `type(context)`, `super()`)."""
    _bound_conversions(decimal)
    _bound_modular_powers(decimal)
    kind = decimal.Context
    if getattr(kind.__init__, "bounded", False):
        return
    init, prec = kind.__dict__["__init__"], kind.__dict__["prec"]

    def __init__(self: Any, prec: Any = None, *args: Any, **kwargs: Any) -> None:
        _precision_at_most(prec)
        if args or kwargs:  # another context's flags or traps, as routines get them
            args = tuple(a.copy() if isinstance(a, Signals) else a for a in args)
            kwargs = {k: v.copy() if isinstance(v, Signals) else v for k, v in kwargs.items()}
        init(self, prec, *args, **kwargs)

    def set_prec(self: Any, value: Any) -> None:
        _precision_at_most(value)
        prec.__set__(self, value)

    __init__.bounded = True  # type: ignore[attr-defined]
    _set_on_type(kind, {"__init__": __init__, "prec": property(prec.__get__, set_prec)})


def _bound_modular_powers(decimal: types.ModuleType) -> None:
    """Check a modular power's operands as integers (_decimal_operands) on the types, for
    whoever asks: Decimal's `__pow__` and `__rpow__` with a modulus (the builtin pow(a, b,
    m) of anyone's code, a Decimal's own `__pow__(b, m)`) and Context.power(a, b, m). (C's
    power converted an int base too, for pow(int, Decimal, Decimal): Python's `__pow__`
    is asked of the base only, so that one is a TypeError now, but in routines, whose pow
    makes the base a Decimal first.)"""
    kind, context = decimal.Decimal, decimal.Context
    if getattr(kind.__pow__, "bounded", False):
        return
    power, rpower = kind.__dict__["__pow__"], kind.__dict__["__rpow__"]
    context_power = context.__dict__["power"]

    def __pow__(self: Any, other: Any, modulo: Any = None, /) -> Any:
        if modulo is not None:
            _decimal_modular("pow(Decimal, Decimal, Decimal)", self, other, modulo)
        return power(self, other, modulo)

    def __rpow__(self: Any, other: Any, modulo: Any = None, /) -> Any:
        if modulo is not None:
            _decimal_modular("pow(Decimal, Decimal, Decimal)", other, self, modulo)
        return rpower(self, other, modulo)

    def power_of(self: Any, a: Any, b: Any, modulo: Any = None) -> Any:
        if modulo is not None:
            _decimal_modular("Context.power", a, b, modulo)
        return context_power(self, a, b, modulo)

    __pow__.bounded = True  # type: ignore[attr-defined]
    _set_on_type(kind, {"__pow__": __pow__, "__rpow__": __rpow__})
    _set_on_type(context, {"power": power_of})


def _precision_at_most(prec: Any) -> None:
    if type(prec) is int and prec > MAX_DECIMAL_DIGITS:
        raise OperationTooLarge(
            f"a Decimal context with a precision of {prec:,} digits: a routine may work with "
            f"Decimals at a precision of at most {MAX_DECIMAL_DIGITS:,} digits, where no "
            "operation runs long in C (keep the precision lower)"
        )


def _set_on_type(kind: type, attributes: dict[str, Any]) -> None:
    """Set attributes of a type for the runtime, a type Python code may not change (a C
    type) too, named as the type's own."""
    flags = classes.flags(kind)
    # only the one flag goes back: setting attributes changes others (the method cache's)
    immutable = flags.value & _IMMUTABLE_TYPE
    flags.value &= ~_IMMUTABLE_TYPE
    try:
        for name, value in attributes.items():
            inner = value.fset if isinstance(value, property) else getattr(value, "__func__", value)
            if isinstance(inner, types.FunctionType):
                inner.__name__ = inner.__qualname__ = name
                inner.__module__ = kind.__module__  # what routines see: the type's own
            setattr(kind, name, value)
    finally:
        flags.value |= immutable


def _bound_conversions(decimal: types.ModuleType) -> None:
    kind = decimal.Decimal
    if getattr(kind.__int__, "bounded", False):
        return
    original = {name: kind.__dict__[name] for name in (
        "__int__", "__trunc__", "__floor__", "__ceil__", "__round__", "as_integer_ratio",
        "__format__")}  # fmt: skip

    def to_int(name: str) -> Callable[..., Any]:
        real = original[name]

        def convert(self: Any) -> int:
            _conversion(self, f"{name.strip('_')}()")
            return real(self)  # type: ignore[no-any-return]

        return convert

    def rounded(self: Any, *ndigits: Any) -> Any:
        if not ndigits or ndigits[0] is None:
            _conversion(self, "round()")
        return original["__round__"](self, *ndigits)

    def as_integer_ratio(self: Any) -> tuple[int, int]:
        _conversion(self, "as_integer_ratio()")
        return original["as_integer_ratio"](self)  # type: ignore[no-any-return]

    def formatted(self: Any, spec: str, *rest: Any) -> str:
        if type(spec) is str:
            _conversion(self, f"format(..., {spec[:20]!r})", _format_digits(self, spec))
        return original["__format__"](self, spec, *rest)  # type: ignore[no-any-return]

    checked = {name: to_int(name) for name in ("__int__", "__trunc__", "__floor__", "__ceil__")}
    checked.update(__round__=rounded, as_integer_ratio=as_integer_ratio, __format__=formatted)
    checked["__int__"].bounded = True  # type: ignore[attr-defined]
    _set_on_type(kind, checked)


# --- memory-safety bugs of the interpreter --------------------------------------------------
# Debian's CPython 3.11.2 lacks fixes of use-after-free and type-confusion bugs that plain
# Python code reaches: red teams used them to crash the cluster, to jump to an address of
# their choosing and to write where they chose (README "Security model, honestly"). Where
# each is closed:
# - for routines only: deque.index (_deque_index) and ZoneInfo's utcoffset, dst, tzname,
#   clear_cache and from_file (READS); a decimal Context's flags and traps (Signals); the C
#   OrderedDict and Counter's C tally (guarded_collections); struct's cached formats
#   (guarded_struct); itertools (lazy.py); bytearray (vocabulary.FORBIDDEN_BUILTINS);
# - on the types, for the whole backend (boot.py): list ordering and slice assignment
#   (hold_list_items), set additions (hold_set_additions), dict tables (hold_dict_tables),
#   Struct formats (hold_struct_formats), ZoneInfo's constructor (hold_zones), the
#   messages of UnicodeDecodeError, UnicodeEncodeError and UnicodeTranslateError
#   (hold_unicode_errors), defaultdict's factory (hold_default_factories), OSError's
#   members (hold_os_error_members); and with hooks of the C library (backstop.py): date,
#   datetime and time made from a state (check_moments, moment_check), the context of
#   Decimal's comparisons (hold_decimal_contexts);
# - in sandbox.py: copies, abstract classes, enums' metaclasses, dataclass field names.


def guarded_collections() -> types.ModuleType:
    """collections whose OrderedDict is the one of Python that collections defines and then
    replaces with C's: C's has use-after-free bugs that a key's `__eq__` or `__hash__` reaches
    by changing the dict while it works (`==`, gh-119004, fixed after 3.11.2; `del`, `pop`,
    `move_to_end` and `copy`, gh-142637 and gh-148660, open upstream). Python's keeps its
    order in objects of its own, where such a change is a KeyError, not freed memory.
    Counter's tally is the one of Python too (_count_elements)."""
    import collections

    collections._count_elements = _count_elements  # type: ignore[attr-defined]
    return _stand_in(collections, python_ordered_dict())


def _count_elements(mapping: Any, iterable: Iterable[Any]) -> None:
    """The tally behind Counter(items) and Counter.update, in Python (collections' own
    fallback), in place of C's: that one holds an element's old count without a reference
    while it adds one to it, and an `__add__` of the routine's that empties the Counter frees
    the count under it (gh-143004, fixed upstream after 3.11.2)."""
    get = mapping.get
    for element in iterable:
        mapping[element] = get(element, 0) + 1


# modules of the standard library run again from their source without a C part, by name
_PYTHON_ONLY: dict[str, dict[str, Any]] = {}


def python_only(
    module: types.ModuleType, c_part: str, names: tuple[str, ...], **modules: types.ModuleType
) -> dict[str, Any]:
    """The namespace of `module` run again from its source, once per process, where
    `from <c_part> import <names>` fails (the module then defines them in Python), and
    where a relative import `from .<name> import ...` gets `modules[name]`. (pyfuncs check
    makes them before its child may no longer open files.)"""
    key = module.__name__
    if key not in _PYTHON_ONLY:
        import builtins

        real = builtins.__import__

        def importing(name: str, globals: Any = None, locals: Any = None,
                      fromlist: Any = (), level: int = 0) -> Any:  # fmt: skip
            if level and name in modules:
                return modules[name]
            if name == c_part and fromlist and any(n in names for n in fromlist):
                raise ImportError(f"pyfuncs: {key} of Python")
            return real(name, globals, locals, fromlist, level)

        namespace: dict[str, Any] = {
            "__name__": key, "__package__": module.__package__,
            "__builtins__": {**vars(builtins), "__import__": importing},
        }  # fmt: skip
        path = module.__file__
        assert path is not None
        with open(path, encoding="utf-8") as source:
            exec(compile(source.read(), path, "exec"), namespace)
        _PYTHON_ONLY[key] = namespace
    return _PYTHON_ONLY[key]


def python_ordered_dict() -> type:
    """collections' OrderedDict of Python."""
    import collections

    return python_only(collections, "_collections", ("OrderedDict",))["OrderedDict"]  # type: ignore[no-any-return]


MAX_JSON_INDENT = 64  # characters of json's indent and of each separator


def _bound_indents(kind: type) -> None:
    """The encoder repeats its indent once a level (`' ' * indent`, in one C call): an
    indent of 1.3 billion took a red team's call past its memory limit. It and the
    separators are at most MAX_JSON_INDENT characters."""
    init = kind.__dict__["__init__"]
    if getattr(init, "bounded", False):
        return

    def __init__(self: Any, *, indent: Any = None, separators: Any = None, **kwargs: Any) -> None:
        widths = [indent if isinstance(indent, int) else len(indent) if isinstance(indent, str)
                  else 0]  # fmt: skip
        if isinstance(separators, tuple):
            widths += [len(s) for s in separators if isinstance(s, str)]
        if max(widths) > MAX_JSON_INDENT:
            refuse("json's indent or separators", max(widths), "characters", MAX_JSON_INDENT)
        init(self, indent=indent, separators=separators, **kwargs)

    __init__.bounded = True  # type: ignore[attr-defined]
    kind.__init__ = __init__  # type: ignore[misc]


def guarded_json() -> types.ModuleType:
    """json whose encoder is the one of Python: C's takes a list or tuple it holds without
    a reference (an item of the list around it) and, when it is a subclass, turns it into a
    sequence by calling its `__iter__`, which may free it; then it enters and leaves it in
    its table of objects being encoded, changing the count of whatever took that memory (a
    red team freed an object of its own it still held, and another role's call crashed its
    session). Decoding stays C's (its hooks were tried: nothing it holds is freed)."""
    import json
    import json.encoder

    encoder = types.ModuleType("json.encoder")
    encoder.__dict__.update(python_only(json.encoder, "_json", ("make_encoder",)))
    _bound_indents(encoder.JSONEncoder)
    python = python_only(json, "", (), encoder=encoder, decoder=json.decoder)
    copy = types.ModuleType(json.__name__, json.__doc__)
    copy.__dict__.update({name: python[name] for name in json.__all__})
    copy.__dict__["__all__"] = list(json.__all__)
    return copy


def hold_list_items() -> None:
    """Two use-after-free bugs of list, patched on the type once per backend:

    - ordering (`<`, `<=`, `>`, `>=`) compares the first items that differ a second time,
      with the operator asked for, without holding them: a `__lt__` of the left item that
      empties the right list frees the right item under the comparison, and the reflected
      call goes through memory the routine refilled (gh-120298, fixed in 3.12.5). The four
      compare copies of the lists, which hold the items and which nothing else can change
      (equality holds them already): two copies and a Python call per ordering of lists.
    - assigning to an extended slice (`items[::2] = values`) works out the slice from the
      list's size, then turns `values` into a sequence, which runs the routine's generator:
      one that shrinks the list makes the assignment read and write past its items
      (gh-120384, fixed in 3.12.5). Assignment to a slice turns its values into a list
      first. (An item assigned by int index in Python code does not come here: Python 3.11
      specialises it.)"""
    if getattr(list.__lt__, "held", False):
        return
    copy = list.copy

    def ordering(name: str) -> Callable[[Any, Any], Any]:
        compare = list.__dict__[name]  # the C comparison, through its slot's wrapper

        def ordered(self: Any, other: Any) -> Any:
            if not isinstance(other, list):
                return NotImplemented
            return compare(copy(self), copy(other))

        return ordered

    assign = list.__dict__["__setitem__"]

    def __setitem__(self: Any, key: Any, value: Any) -> None:
        if type(key) is slice and type(value) is not list and type(value) is not tuple:
            value = list(value)
        assign(self, key, value)

    patched = {name: ordering(name) for name in ("__lt__", "__le__", "__gt__", "__ge__")}
    patched["__lt__"].held = True  # type: ignore[attr-defined]
    _set_on_type(list, {**patched, "__setitem__": __setitem__})


def hold_set_additions() -> None:
    """Adding to a set notes the first free slot it passes, then compares the items it
    meets with the one added, which runs `__eq__`s of the routine's: one that adds to the
    same set fills that slot, and the first addition then writes its item there too and
    counts it again. The set then counts more items than it holds, and clearing or freeing
    it walks past its table, dropping references to whatever lies there (gh-139071 and
    gh-141805, fixed upstream after 3.11.2; a crash of Debian's 3.11.2 from four lines of
    Python). Once per backend, the methods of the type that add to a set (`add`, `update`,
    `|=`, `^=`, `symmetric_difference_update`, `__init__`) refuse to add to a set while an
    addition to it is under way: one Python call and a dict entry per call (`s.add(x)`:
    ~80 ns more, `set(items)` about as much; set displays and comprehensions are not
    affected)."""
    if getattr(set.add, "held", False):
        return
    own = set.__dict__
    adding: dict[int, None] = {}  # the sets being added to, by id

    def guarded(name: str) -> Callable[..., Any]:
        method = own[name]

        def adding_to(self: Any, *args: Any) -> Any:
            key = id(self)
            if key in adding:
                raise RuntimeError("set changed by a comparison made while adding to it")
            adding[key] = None
            try:
                return method(self, *args)
            finally:
                del adding[key]

        return adding_to

    add_one = own["add"]

    def add(self: Any, item: Any) -> None:  # (the common one, without *args: ~80 ns a call)
        key = id(self)
        if key in adding:
            raise RuntimeError("set changed by a comparison made while adding to it")
        adding[key] = None
        try:
            add_one(self, item)
        finally:
            del adding[key]

    # (__init__ too: an enum of the routine's with set mixed in hands its member to a
    # __getattr__ of the routine's before set.__init__ fills it; a red team added to it there)
    names = ("__init__", "update", "__ior__", "__ixor__", "symmetric_difference_update")
    patched = {"add": add, **{name: guarded(name) for name in names}}
    patched["add"].held = True  # type: ignore[attr-defined]
    _set_on_type(set, patched)


def hold_dict_tables() -> None:
    """A dict holding only str keys keeps them in a table for str keys, which it compares
    without asking the keys. Clearing a dict puts it back on the shared empty table of that
    kind; a key's `__eq__` that cleared the dict while a key of another type was being
    inserted had that key stored in a str table, where it was then read as a str (CPython
    gh-140551, in 3.11.2: a red team chose the address memcmp read). Once per backend, the
    type's `clear` leaves the dict on a table for any key (it inserts and removes a key that
    is not a str: ~0.1 µs per clear; the dict is as fast to use as before for most keys),
    and so do `update` and `|=` into an empty dict, which copy the other's table."""
    if getattr(dict.clear, "held", False):
        return
    own = dict.__dict__
    clear, setitem, delitem = own["clear"], own["__setitem__"], own["__delitem__"]
    update, ior, size = own["update"], own["__ior__"], own["__len__"]
    general = object()  # a key of no str kind

    def any_keys(self: Any) -> None:
        setitem(self, general, None)
        delitem(self, general)

    def clear_any(self: Any) -> None:
        clear(self)
        any_keys(self)

    # (merging into an empty dict copies the other's table, of its kind: a red team emptied
    # the dict with popitem() and then merged a dict of str keys into it)
    def update_any(self: Any, *args: Any, **kwargs: Any) -> None:
        empty = size(self) == 0
        update(self, *args, **kwargs)
        if empty:
            any_keys(self)

    def __ior__(self: Any, other: Any) -> Any:
        empty = size(self) == 0
        result = ior(self, other)
        if empty and result is self:
            any_keys(self)
        return result

    clear_any.held = True  # type: ignore[attr-defined]
    _set_on_type(dict, {"clear": clear_any, "update": update_any, "__ior__": __ior__})


def hold_unicode_errors() -> None:
    """The `__str__` of UnicodeDecodeError, UnicodeEncodeError and UnicodeTranslateError
    trusts the error's `start`, `end` and `object`, which neither the constructor nor
    assignment checks: with `end == start + 1` and a `start` below the object's length, a
    negative one too, it reads the byte (or character) at `start`, wherever that is, into
    the message (gh-123378, fixed in 3.12.6 and 3.13; Debian's 3.11.2 has it: a red team
    read its backend's memory and, through the preload's layout, shared buffers, a byte per
    `str()`; an `object` of another type is read as bytes or as a str too). Once per
    backend, the three format their message in Python from the C members, as 3.11 does,
    indexing the object only where `start` lies inside it and the object is of the kind
    the error is about. The other C paths that read those members are the codecs' error
    handlers, which routines cannot reach (codecs is not allowed)."""
    if getattr(UnicodeDecodeError.__str__, "held", False):
        return

    def character(code: int) -> str:
        if code <= 0xFF:
            return f"\\x{code:02x}"
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"

    def message(kind: type, item: Any, one: str, many: str) -> Callable[[Any], str]:
        """kind's __str__: `one` formats the message about one item of the object, `many`
        about a range, from the C members (each of the three types has its own)."""
        members = kind.__dict__
        size, index = item.__len__, item.__getitem__
        encoding, data, start, end, reason = (
            members[name].__get__ for name in ("encoding", "object", "start", "end", "reason")
        )

        def __str__(self: Any) -> str:
            held = data(self)
            if held is None:  # (not initialized)
                return ""
            what, why, at, upto = str(encoding(self)), str(reason(self)), start(self), end(self)
            # (the object's own length and item, as C reads them: not a subclass's methods)
            if isinstance(held, item) and 0 <= at < size(held) and upto == at + 1:
                shown = index(held, at)
                shown = f"0x{shown:02x}" if item is bytes else character(ord(shown))
                return one.format(what=what, shown=shown, at=at, why=why)
            return many.format(what=what, at=at, last=upto - 1, why=why)

        return __str__

    patched = {
        UnicodeDecodeError: message(
            UnicodeDecodeError, bytes,
            "'{what}' codec can't decode byte {shown} in position {at}: {why}",
            "'{what}' codec can't decode bytes in position {at}-{last}: {why}",
        ),
        UnicodeEncodeError: message(
            UnicodeEncodeError, str,
            "'{what}' codec can't encode character '{shown}' in position {at}: {why}",
            "'{what}' codec can't encode characters in position {at}-{last}: {why}",
        ),
        UnicodeTranslateError: message(
            UnicodeTranslateError, str,
            "can't translate character '{shown}' in position {at}: {why}",
            "can't translate characters in position {at}-{last}: {why}",
        ),
    }  # fmt: skip
    patched[UnicodeDecodeError].held = True  # type: ignore[attr-defined]
    for kind, method in patched.items():
        _set_on_type(kind, {"__str__": method})


def hold_default_factories(collections: types.ModuleType) -> None:
    """defaultdict's C code uses `default_factory` without holding it:

    - `__missing__` calls it: a factory that is a bound method of an object nothing else
      holds (`items.sort`) is freed with that object when code it runs sets
      `default_factory`, and the method runs on in freed memory (round 82: `list.sort`
      wrote the list's size and item pointer into a routine's bytes object that took the
      memory, and freed a pointer the routine chose);
    - `__repr__` marks it as being shown and unmarks it whatever the mark said: a repr of
      the same defaultdict, run from inside the repr of a list that was its factory, took
      away the mark of the outer `repr` of that list, which was what held the list once the
      routine dropped it, and the list's repr went on over freed items (round 83, gh-145492:
      C read an address of the routine's choosing as an object).

    Once per backend, the type's `__missing__` and `__repr__` are Python's, holding the
    factory in a local while they use it: one Python call more per missing key or repr. A
    factory shown inside its own repr shows as `...`, as C's did. (As collections is
    imported: the runtime's start does not import it.)"""
    defaultdict = collections.defaultdict
    if getattr(defaultdict.__missing__, "held", False):
        return
    factory_of = defaultdict.__dict__["default_factory"].__get__
    dict_repr = dict.__repr__
    showing: set[int] = set()  # the factories being shown, by id (each held while it is)

    def __missing__(self: Any, key: Any) -> Any:
        factory = factory_of(self)
        if factory is None:
            raise KeyError(key)
        self[key] = made = factory()
        return made

    def __repr__(self: Any) -> str:
        shown = dict_repr(self)
        factory = factory_of(self)
        if factory is None:
            made_by = "None"
        elif id(factory) in showing:
            made_by = "..."
        else:
            showing.add(id(factory))
            try:
                made_by = repr(factory)
            finally:
                showing.discard(id(factory))
        return f"{type(self).__name__}({made_by}, {shown})"

    __missing__.held = True  # type: ignore[attr-defined]
    _set_on_type(defaultdict, {"__missing__": __missing__, "__repr__": __repr__})


def hold_os_error_members() -> None:
    """OSError's C `__str__` formats `errno`, `strerror`, `filename` and `filename2` one after
    another without holding them, and routines may set them: an `errno` whose `__str__` set
    `strerror` freed the string C was about to format, and C formatted what took its memory
    (round 83). Once per backend, OSError's `__str__` (its subclasses' too) holds the four
    in locals while C's makes the message: one Python call more per str()."""
    if getattr(OSError.__str__, "held", False):
        return
    members = OSError.__dict__
    fields = [members[name].__get__ for name in ("errno", "strerror", "filename", "filename2")]
    message = members["__str__"]  # C's, by its slot's wrapper

    def __str__(self: Any) -> str:
        held = [field(self) for field in fields]
        text: str = message(self)
        del held  # (what C formatted was held until it was done)
        return text

    __str__.held = True  # type: ignore[attr-defined]
    _set_on_type(OSError, {"__str__": __str__})


def moment_check(datetime: types.ModuleType) -> Callable[[Any], Any]:
    """What the backstop's hooks of the tp_new of date, datetime and time call with what they
    made from one or two arguments (backstop.check_moments): made from a pickle's state, C
    checks only the month (a time's hour), and a date of year 0 had ctime() read before its
    table of day names (round 82). The check makes the object again from its fields, which
    C's constructor checks all, and returns it."""
    date, moment, time = datetime.date, datetime.datetime, datetime.time

    def check(made: Any) -> Any:
        if isinstance(made, moment):
            moment(made.year, made.month, made.day, made.hour, made.minute, made.second,
                   made.microsecond)  # fmt: skip
        elif isinstance(made, date):
            date(made.year, made.month, made.day)
        elif isinstance(made, time):
            time(made.hour, made.minute, made.second, made.microsecond)
        return made

    return check


def hold_struct_formats() -> None:
    """A Struct's format is set once. Its C __init__ frees the format's codes and makes new
    ones, and `pack` walks them while it runs an argument's `__index__`: an `__index__` that
    re-initialised the Struct being packed (a routine's class whose __new__ returns one in
    use, made by a C constructor: two red teams found two ways to get one) had `pack`
    follow codes of its choosing, and write chosen bytes over the C stack. Once per backend,
    the type's __init__ refuses a Struct that has a format already (a new one's size is -1;
    only a Struct's creation is affected, which struct's functions cache by format)."""
    import _struct

    kind = _struct.Struct
    if getattr(kind.__init__, "held", False):
        return
    init, size = kind.__dict__["__init__"], kind.__dict__["size"]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if size.__get__(self) != -1:
            raise TypeError("pyfuncs: a Struct's format is set once (make a new Struct)")
        init(self, *args, **kwargs)

    __init__.held = True  # type: ignore[attr-defined]
    _set_on_type(kind, {"__init__": __init__})


def bound_fractions(fractions: types.ModuleType) -> None:
    """Check what makes fractions compute large numbers in its own code, where the guards of
    routines are not, for whoever asks (statistics' code too): a Fraction from text with a
    large exponent or many digits (`Fraction("1e100000000")`), round() to many digits,
    powers, and Fractions of ints beyond MAX_INT_BITS (the gcd of two 8-million-bit ints
    held a red team's call in one C call for seconds)."""
    kind = fractions.Fraction
    if getattr(kind.__new__, "bounded", False):
        return
    new, rounded = kind.__new__, kind.__round__
    rational = fractions.numbers.Rational
    # (the slots the parts are kept in, read as Fraction's: a subclass's properties could
    # say anything)
    parts_of = (kind.__dict__["_numerator"].__get__, kind.__dict__["_denominator"].__get__)

    def __new__(cls: Any, numerator: Any = 0, denominator: Any = None, **kwargs: Any) -> Any:
        if (
            denominator is not None
            and not (type(numerator) is int and type(denominator) is int)
            and isinstance(numerator, rational)
            and isinstance(denominator, rational)
        ):
            # of two Rationals, fractions multiplies their parts and takes the gcd of the
            # products, in C: each part read here once (a property could answer a check one
            # way and fractions another), checked, and multiplied as fractions would
            parts = (numerator.numerator, denominator.denominator, denominator.numerator,
                     numerator.denominator)  # fmt: skip
            if all(isinstance(part, int) for part in parts):
                for part in parts:
                    if int.bit_length(part) > MAX_INT_BITS:
                        refuse("a Fraction", int.bit_length(part), "bits", MAX_INT_BITS)
                numerator = int.__mul__(parts[0], parts[1])
                denominator = int.__mul__(parts[2], parts[3])
        for part in (numerator, denominator):  # (fractions' own arithmetic makes them too)
            if isinstance(part, int) and int.bit_length(part) > MAX_INT_BITS:
                refuse("a Fraction", int.bit_length(part), "bits", MAX_INT_BITS)
        if isinstance(numerator, str):
            text = str.__str__(numerator)
            _, e, exponent = text.lower().rpartition("e")
            digits = len(text)
            if e and exponent.strip().lstrip("+-").isdigit():
                exponent = exponent.strip().lstrip("+-")
                digits += int(exponent) if len(exponent) < 10 else 10**10
            if digits > MAX_DECIMAL_CONVERSION:
                refuse("Fraction(text)", digits, "digits", MAX_DECIMAL_CONVERSION)
        made = new(cls, numerator, denominator, **kwargs)
        # and what it was made of, whatever the argument: one Rational's parts are taken as
        # they are (a Fraction subclass's `numerator` property gave a red team's 8 million
        # bits)
        for part_of in parts_of:
            part = part_of(made)
            if isinstance(part, int) and int.bit_length(part) > MAX_INT_BITS:
                refuse("a Fraction", int.bit_length(part), "bits", MAX_INT_BITS)
        return made

    def __round__(self: Any, ndigits: Any = None) -> Any:
        if isinstance(ndigits, int) and abs(ndigits) > MAX_DECIMAL_CONVERSION:
            refuse("round(Fraction, ndigits)", abs(ndigits), "digits", MAX_DECIMAL_CONVERSION)
        return rounded(self, ndigits)

    # a power with an int exponent is computed by `**` on the numerator and denominator in
    # fractions' code, for whoever asks (statistics' code, say): checked as the operator is
    # in a routine's
    def __pow__(a: Any, b: Any) -> Any:
        _other_pow(a, b)
        return power(a, b)

    def __rpow__(b: Any, a: Any) -> Any:
        _other_pow(a, b)
        return rpower(b, a)

    power, rpower = kind.__pow__, kind.__rpow__
    __new__.bounded = True  # type: ignore[attr-defined]
    _set_on_type(kind, {"__new__": staticmethod(__new__), "__round__": __round__,
                        "__pow__": __pow__, "__rpow__": __rpow__})  # fmt: skip
