"""The compact row encoding of readings: exact, and about a third of the bytes.

A reading's values are floats a meter gave as decimals (230.1 V, 0.95, 12.345 A): each is kept
as the shortest decimal that gives the same float back (what `repr` prints), a mantissa and an
exponent in a few varint bytes instead of 8 bytes of float64. Decoding parses the decimal text,
which gives exactly the float that was encoded. NaN, infinities and -0.0 have codes of their own.

Counters are exact decimals (`Decimal`, the text the meter's register gave): each is its
mantissa and exponent, so "12345.60" comes back as "12345.60" with its trailing zero.

Varints are little-endian base-128 (7 bits a byte, the high bit set on all but the last), signed
numbers zigzag-coded (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...).
"""

from __future__ import annotations

import math
from decimal import Decimal

# the low 3 bits of a value's head: what follows
_FINITE, _NAN, _POS_INF, _NEG_INF, _NEG_ZERO = range(5)


def _put(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zig(n: int) -> int:
    return n << 1 if n >= 0 else ((-n) << 1) - 1


def _unzig(n: int) -> int:
    return n >> 1 if not n & 1 else -((n + 1) >> 1)


def _get(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        if c < 0x80:
            return n, i
        shift += 7


def _decimal_of_float(x: float) -> tuple[int, int]:
    """(mantissa, exponent) of the shortest decimal that reads back as x (x finite, not -0.0)."""
    s = repr(x)
    e = 0
    if "e" in s:
        s, exp = s.split("e")
        e = int(exp)
    if "." in s:
        whole, frac = s.split(".")
        if frac == "0":
            frac = ""
        m = int(whole + frac)
        e -= len(frac)
    else:
        m = int(s)
    if m:
        while m % 10 == 0:
            m //= 10
            e += 1
    else:
        e = 0
    return m, e


def encode_vals(values) -> bytes:
    """Floats (any iterable) as bytes; `decode_vals` gives them back exactly."""
    out = bytearray()
    for x in values:
        if x != x:
            out.append(_NAN)
        elif x == 0.0 and math.copysign(1.0, x) < 0:
            out.append(_NEG_ZERO)
        elif x in (math.inf, -math.inf):
            out.append(_POS_INF if x > 0 else _NEG_INF)
        else:
            m, e = _decimal_of_float(float(x))
            _put(out, _zig(e) << 3 | _FINITE)
            _put(out, _zig(m))
    return bytes(out)


def decode_vals(b: bytes) -> list[float]:
    out: list[float] = []
    i, n = 0, len(b)
    while i < n:
        head, i = _get(b, i)
        kind = head & 7
        if kind == _FINITE:
            m, i = _get(b, i)
            e = _unzig(head >> 3)
            m = _unzig(m)
            out.append(float(f"{m}e{e}") if e else float(m))
        else:
            out.append({_NAN: math.nan, _POS_INF: math.inf, _NEG_INF: -math.inf, _NEG_ZERO: -0.0}[kind])
    return out


def encodable_counter(v: Decimal) -> bool:
    """A counter the compact form keeps exactly (finite, and not a negative zero)."""
    return v.is_finite() and not (v.is_zero() and v.is_signed())


def varint(n: int) -> bytes:
    out = bytearray()
    _put(out, n)
    return bytes(out)


def encode_counters(set_id: int, values) -> bytes:
    """The counter set's id, then each Decimal (all `encodable_counter`) as mantissa and exponent."""
    return varint(set_id) + encode_counter_values(values)


def encode_counter_values(values) -> bytes:
    out = bytearray()
    for v in values:
        sign, digits, exp = v.as_tuple()
        m = int("".join(map(str, digits)))
        _put(out, _zig(exp))
        _put(out, _zig(-m if sign else m))
    return bytes(out)


def decode_counters(b: bytes) -> tuple[int, list[Decimal]]:
    set_id, i = _get(b, 0)
    out: list[Decimal] = []
    n = len(b)
    while i < n:
        e, i = _get(b, i)
        m, i = _get(b, i)
        out.append(Decimal(f"{_unzig(m)}E{_unzig(e)}"))
    return set_id, out
