"""float32 cos/sin tables through float64 turns, for devices where float64 runs at full speed.

A second table algorithm of SPEC.md ("Accuracy", "The float64 reduction"), written once against the
Python array API. It is shorter than the exact reduction (``_exact_turns``) and faster where float64
is native (CPUs), but needs float64 (which MPS lacks and many GPUs run slowly).

* ``float64_revolutions(H, w, R, s)``: r_i, the revolutions per unit position, as float64 numbers
  (correctly rounded from the 60-bit value of p_rope._params);
* ``float64_turn_tables(xp, positions, revolutions)``: the float32 tables, shape positions.shape + (R,).

Contract: the turns ``m * r_i`` are formed in float64 (relative error below 2**-52), reduced modulo
1 exactly, and cos/sin of ``2 pi`` times that fraction are taken in float64 and rounded once to
float32. The tables are within SPEC.md's bound of the exact cosine and sine for ``|m| <= 2**24``,
integer or real; beyond, the angle keeps a relative error below 2**-51. Non-finite positions give NaN.

Shape letters: L positions (any leading shape), R rotated pairs.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from p_rope._params import RopeTables  # vendor: inline
from p_rope.backends._exact_turns import fixed_revolutions  # vendor: inline


@functools.lru_cache(maxsize=256)
def float64_revolutions(head_dim: int, max_wavelength: float, pairs: int, scale_factor: float) -> tuple[float, ...]:
    """r^_i of the R rotated pairs (r_i to 60 fractional bits), each rounded to the nearest float64."""
    return tuple(math.ldexp(fixed, -60) for fixed in fixed_revolutions(head_dim, max_wavelength, pairs, scale_factor))


def float64_turn_tables(xp: Any, positions: Any, revolutions: Any) -> RopeTables:
    """float32 cos/sin of 2 pi frac(m r_i), shape positions.shape + (R,), on positions' device.

    ``revolutions``: float64_revolutions as a float64 array [R] on positions' device.
    """
    turns = xp.astype(positions, xp.float64)[..., None] * revolutions
    angle = (turns - xp.round(turns)) * (2 * math.pi)  # the fraction is exact; |angle| <= pi
    return RopeTables(xp.astype(xp.cos(angle), xp.float32), xp.astype(xp.sin(angle), xp.float32))
