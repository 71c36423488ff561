"""float32 cos/sin tables by an exact reduction of the angle in turns, in 32-bit integers.

The algorithm of SPEC.md ("Accuracy", "The exact reduction"), written once against the Python array
API: it runs on NumPy, array-api-strict, jax.numpy (with or without jax_enable_x64) and torch on any
device. It needs no float64 and no 64-bit integer arithmetic beyond splitting 64-bit positions; every
integer product is exact in int32 (no overflow, no wrap-around).

* ``turn_constants(H, w, R, s)``: per rotated pair, the revolutions per unit position r_i to 60
  fractional bits, as the 12 + 12 bit integer heads and float32 tails of ``frac(2**e r_i)`` for the
  digit weights ``2**e`` of ``DIGIT_EXPONENTS`` (Python values, computed once per parameter set);
* ``exact_turn_tables(xp, positions, constants)``: the float32 tables, shape positions.shape + (R,).

Contract: for every integer position (any integer dtype) the turns ``m * r_i`` are reduced modulo 1
exactly (integer part modulo 2**60); a real position (float32, float64) is split exactly into its
sign, its integer part (modulo 2**60) and its fraction, truncated to 2**-48. The tables are within
SPEC.md's bound of the exact cosine and sine for ``|m| <= 2**24``, and the angle error stays below
``|m| * 2**-59`` turns beyond.

Shape letters: L positions (any leading shape), R rotated pairs.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from p_rope._params import RopeTables, revolution_chunks  # vendor: inline

# Digit weights 2**e of a position's magnitude: 16-bit integer digits (the last one 12 bits, so that
# the integer part is taken modulo 2**60) and three 16-bit fraction digits.
DIGIT_EXPONENTS = (0, 16, 32, 48, -16, -32, -48)
_DIGIT_BITS = 16
_FIXED_BITS = 60  # r_i is held to 2**-60
_INTEGER_DIGITS = 4  # the digits of the integer part, modulo 2**60
_GRID = 24  # the coarse turns are exact on a 2**-24 grid, held in int32 as units of 2**-24 turn
_HALF = 12  # each per-digit constant's head is split in two 12-bit integers
# 2 pi / 2**24 radians per unit: its 2-bit head 6 * 2**-24 times a unit count below 2**22 is exact.
_STEP_HI = 6.0 * 2.0**-_GRID
_STEP_LO = (2 * math.pi - 6.0) * 2.0**-_GRID
_TWO_PI = 2 * math.pi
# sin a = a + a^3 S(a^2), cos a = 1 - a^2/2 + a^4 C(a^2) on [-pi/4, pi/4]: near-minimax fits whose
# approximation error (below 4e-12) is far below float32 rounding.
_SIN = (-0.16666666640108763, 0.008333329247491082, -0.00019839297818797456, 2.718008138740194e-06)
_COS = (0.04166666662105897, -0.0013888883628044722, 2.479949183216369e-05, -2.7208205617983063e-07)


@functools.lru_cache(maxsize=256)
def fixed_revolutions(head_dim: int, max_wavelength: float, pairs: int, scale_factor: float) -> tuple[int, ...]:
    """r^_i 2**60 for the R rotated pairs: the revolutions per unit position r_i of p_rope._params
    truncated to 60 fractional bits (0 <= r_i - r^_i < 2**-60), as Python integers."""
    rows = revolution_chunks(head_dim, max_wavelength, pairs, scale_factor)
    return tuple(
        (int(rows[0][i]) << _FIXED_BITS) + sum(int(math.ldexp(row[i], _FIXED_BITS)) for row in rows[1:])
        for i in range(pairs)
    )


@functools.lru_cache(maxsize=256)
def turn_constants(
    head_dim: int, max_wavelength: float, pairs: int, scale_factor: float
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[float, ...], ...]]:
    """(heads, tails) of frac(2**e r^_i) for e in DIGIT_EXPONENTS and the R rotated pairs.

    For each digit weight, frac(2**e r^_i) = a 2**-12 + b 2**-24 + t with 12-bit integers a, b and
    0 <= t < 2**-24: heads[2 k] holds the a of digit k, heads[2 k + 1] its b ([2 D, R]); tails[k]
    its t ([D, R], floats that the caller's asarray rounds to float32).
    """
    heads: list[list[int]] = [[] for _ in range(2 * len(DIGIT_EXPONENTS))]
    tails: list[list[float]] = [[] for _ in DIGIT_EXPONENTS]
    for fixed in fixed_revolutions(head_dim, max_wavelength, pairs, scale_factor):
        for k, exponent in enumerate(DIGIT_EXPONENTS):
            bits = _FIXED_BITS - exponent  # frac(2**e r^) = (fixed mod 2**bits) / 2**bits
            fraction = (fixed % (1 << bits)) << _GRID  # frac(2**e r^) in units of 2**-(bits + 24)
            head = fraction >> bits
            heads[2 * k].append(head >> _HALF)
            heads[2 * k + 1].append(head & ((1 << _HALF) - 1))
            tails[k].append(math.ldexp(fraction - (head << bits), -bits - _GRID))
    return tuple(tuple(row) for row in heads), tuple(tuple(row) for row in tails)


def _integer_digits(xp: Any, positions: Any) -> tuple[list[Any], Any | None]:
    """(digits, sign) of integer positions: int32 digits of |m| modulo 2**60 (16 bits each; a single
    digit of up to 16 bits for 8- and 16-bit dtypes) and the sign of m as int32 (None: unsigned).
    Unsigned 32- and 64-bit values are read as the namespace's default integer where it is 64 bits
    wide (uint64 then modulo 2**64, which keeps m modulo 2**60); JAX without x64 keeps uint32. |m| of
    the most negative value wraps to itself, whose bits, read as unsigned, are its magnitude."""
    info = xp.iinfo(positions.dtype)
    signed = info.min < 0
    if info.bits <= 16:
        positions, signed = xp.astype(positions, xp.int32), True
    elif not signed:
        wide = xp.__array_namespace_info__().default_dtypes()["integral"]
        if xp.iinfo(wide).bits == 64:
            positions, signed = xp.astype(positions, wide), True
    sign = None
    if signed:
        sign = xp.where(positions < 0, xp.asarray(-1, dtype=xp.int32), xp.asarray(1, dtype=xp.int32))
        positions = xp.abs(positions)
    if info.bits <= 16:
        return [positions], sign
    digits = []
    for k in range(min(_INTEGER_DIGITS, info.bits // _DIGIT_BITS)):
        width = _FIXED_BITS - _DIGIT_BITS * k if k == _INTEGER_DIGITS - 1 else _DIGIT_BITS
        digits.append(xp.astype((positions >> (_DIGIT_BITS * k)) & ((1 << width) - 1), xp.int32))
    return digits, sign


def _real_digits(xp: Any, positions: Any) -> tuple[list[Any], Any, Any]:
    """(digits, sign, finite) of float positions, split exactly in their own dtype: int32 digits of
    floor(|m|) modulo 2**60 and of its fraction to 2**-48, the sign as int32, and where m is finite
    (non-finite positions are split as 0)."""
    finite = xp.isfinite(positions)
    value = xp.where(finite, positions, xp.zeros_like(positions))
    sign = xp.where(value < 0, xp.asarray(-1, dtype=xp.int32), xp.asarray(1, dtype=xp.int32))
    magnitude = xp.abs(value)
    whole = xp.floor(magnitude)
    fraction = magnitude - whole  # exact
    whole = whole - xp.floor(whole * 2.0**-_FIXED_BITS) * 2.0**_FIXED_BITS  # modulo 2**60: exact
    digits = []
    for _ in range(_INTEGER_DIGITS):
        upper = xp.floor(whole * 2.0**-_DIGIT_BITS)
        digits.append(xp.astype(whole - upper * 2.0**_DIGIT_BITS, xp.int32))
        whole = upper
    for _ in range(len(DIGIT_EXPONENTS) - _INTEGER_DIGITS):
        scaled = fraction * 2.0**_DIGIT_BITS
        digit = xp.floor(scaled)
        digits.append(xp.astype(digit, xp.int32))
        fraction = scaled - digit  # exact
    return digits, sign, finite


def exact_turn_tables(xp: Any, positions: Any, constants: tuple[Any, Any]) -> RopeTables:
    """float32 cos/sin of 2 pi frac(m r_i), shape positions.shape + (R,), on positions' device.

    ``constants``: turn_constants' (heads, tails) as arrays on positions' device, int32 [2 D, R] and
    float32 [D, R]. Per digit d of the position, frac(d 2**e r_i) is accumulated as d a (its low
    12 bits, shifted to 2**-24 units) + d b in int32 units of 2**-24 turn (each product below 2**28:
    exact) and d t in float32 (below 2**-8 turn). The sum is reduced to the nearest quarter turn q
    and a remainder within 1/8 turn, converted to radians with one rounding, and cos/sin come from
    polynomials on [-pi/4, pi/4], turned by q quarter turns (exact).
    """
    heads, tails = constants
    if xp.isdtype(positions.dtype, "integral"):
        digits, sign = _integer_digits(xp, positions)
        finite = None
    else:
        digits, sign, finite = _real_digits(xp, positions)
    units: Any = None
    fine: Any = None
    for k, digit in enumerate(digits):
        d = (digit if sign is None else digit * sign)[..., None]
        term = (((d * heads[2 * k, ...]) & ((1 << _HALF) - 1)) << _HALF) + d * heads[2 * k + 1, ...]
        small = xp.astype(d, xp.float32) * tails[k, ...]
        units = term if units is None else units + term
        fine = small if fine is None else fine + small
    # carry the fine part's whole 2**-24 units into the integer sum; the rest is within 2**-25 turn
    carried = xp.round(fine * 2.0**_GRID)
    rest = fine - carried * 2.0**-_GRID  # exact
    if finite is not None:  # non-finite positions give NaN (SPEC.md, "Special values")
        nan = xp.where(finite, xp.asarray(0.0, dtype=xp.float32), xp.asarray(math.nan, dtype=xp.float32))
        rest = rest + nan[..., None]
    shifted = (units + xp.astype(carried, xp.int32) + (1 << (_GRID - 3))) & ((1 << _GRID) - 1)
    quarter = shifted >> (_GRID - 2)  # the nearest quarter turn, 0..3
    eighths = (shifted & ((1 << (_GRID - 2)) - 1)) - (1 << (_GRID - 3))  # |.| <= 2**21 units
    units_f = xp.astype(eighths, xp.float32)  # exact: 22 bits
    big = units_f * _STEP_HI  # exact
    small = units_f * _STEP_LO + rest * _TWO_PI
    angle = big + small
    error = small - (angle - big)  # angle + error = big + small (Fast2Sum: |big| >= |small| or big = 0)
    head = xp.astype(eighths >> _HALF, xp.float32) * (_STEP_HI * 2.0**_HALF)  # 12 bits: its square is exact
    cos, sin = _sincos(xp, angle, head)
    cos, sin = cos - error * sin, sin + error * cos
    odd = (quarter & 1) == 1
    cos, sin = xp.where(odd, sin, cos), xp.where(odd, cos, sin)
    cos = xp.where(((quarter + 1) & 2) != 0, -cos, cos)
    sin = xp.where((quarter & 2) != 0, -sin, sin)
    return RopeTables(cos, sin)


def _sincos(xp: Any, a: Any, head: Any) -> tuple[Any, Any]:
    """(cos a, sin a) for float32 a in [-pi/4, pi/4] (a little beyond), by the polynomials above;
    head: a number of at most 12 significant bits within 2**-9 of a, so that
    1 - a^2/2 = (1 - head^2/2) - (a - head)(a + head)/2 is formed with one rounding."""
    z = a * a
    s = a + a * (z * (_SIN[0] + z * (_SIN[1] + z * (_SIN[2] + z * _SIN[3]))))
    half_square = 0.5 * (head * head)  # exact
    half_rest = 0.5 * ((a - head) * (a + head))  # a^2/2 - half_square, to 2**-24 relative
    one = 1.0 - half_square
    one_error = (1.0 - one) - half_square  # exact: 1 - half_square = one - one_error
    c = one + ((one_error - half_rest) + (z * z) * (_COS[0] + z * (_COS[1] + z * (_COS[2] + z * _COS[3]))))
    return c, s
