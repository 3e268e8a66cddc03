"""Bounded operations: the few operations that make a result far larger than their operands
inside one C call, checked before they start."""

from __future__ import annotations

import math
import types
from typing import Any

# The watchdog can only stop code that returns to the interpreter. A few operations make a
# result far larger than their operands inside one C call: `*` of a sequence or of big
# integers, `**`, `<<`, and factorial, comb and perm. In routine modules those operators go
# through the checks below (inserted by guards.py; constant expressions the compiler folds
# stay as they are) and `pow` and the math module are replaced by checked ones, so such an
# operation is refused before it starts. Other long C operations take time in proportion to
# an input that had to be built first, in code the watchdog and max_memory_mb do see.

MAX_INT_BITS = 100_000  # ~30,000 decimal digits; Python refuses to print more than 4,300
MAX_REPEAT_BYTES = 64 << 20


class OperationTooLarge(OverflowError):
    """One operation would have made a result beyond what a routine may make at once."""


def refuse(what: str, size: float, unit: str, most: int) -> None:
    raise OperationTooLarge(
        f"{what} would make {size:,.0f} {unit}; one operation in a routine may make at most "
        f"{most:,} (build it in steps, or keep the numbers smaller)"
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
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        bits = exponent * math.log2(abs(base))
        if bits > MAX_INT_BITS:
            refuse("int ** int", bits, "bits", MAX_INT_BITS)
    return exponent


def check_lshift(a: Any, b: Any) -> Any:
    if type(a) is int and type(b) is int and a and b > 0:
        bits = a.bit_length() + b
        if bits > MAX_INT_BITS:
            refuse("int << int", bits, "bits", MAX_INT_BITS)
    return b


def checked_mul(a: Any, b: Any) -> Any:
    return a * check_mul(a, b)


def checked_pow(base: Any, exponent: Any, mod: Any = None) -> Any:
    if mod is not None:  # modular: the result stays below mod
        return pow(base, exponent, mod)
    return base ** check_pow(base, exponent)


def checked_lshift(a: Any, b: Any) -> Any:
    return a << check_lshift(a, b)


def _factorial_bits(n: Any) -> float:
    return math.lgamma(n + 1) / math.log(2) if isinstance(n, int) and n > 1 else 0.0


def guarded_math() -> types.ModuleType:
    """The math module with factorial, comb and perm refusing results beyond MAX_INT_BITS."""

    def checked(bits: float, what: str) -> None:
        if bits > MAX_INT_BITS:
            refuse(what, bits, "bits", MAX_INT_BITS)

    def factorial(n: int, /) -> int:
        checked(_factorial_bits(n), f"factorial({n})")
        return math.factorial(n)

    def comb(n: int, k: int, /) -> int:
        if isinstance(n, int) and isinstance(k, int) and 0 <= k <= n:
            bits = _factorial_bits(n) - _factorial_bits(k) - _factorial_bits(n - k)
            checked(bits, f"comb({n}, {k})")
        return math.comb(n, k)

    def perm(n: int, k: int | None = None, /) -> int:
        if isinstance(n, int) and isinstance(k, int) and 0 <= k <= n:
            checked(_factorial_bits(n) - _factorial_bits(n - k), f"perm({n}, {k})")
        return math.perm(n, k)

    module = types.ModuleType("math", math.__doc__)
    module.__dict__.update({k: v for k, v in vars(math).items() if not k.startswith("_")})
    for checked_one in (factorial, comb, perm):
        checked_one.__module__ = "math"  # what routines see them as: math's own
        module.__dict__[checked_one.__name__] = checked_one
    return module
