"""The p-RoPE math, written once against the Python array API standard (via array-api-compat).

Runs unchanged on NumPy, array-api-strict, jax.numpy and torch, on the device the input lives
on. Every backend builds on these helpers:

* ``exact_tables``: float32 cos/sin tables accurate to a few float32 ulps at any position up
  to 2**24, using no float64 (SPEC.md, "Accuracy", strict level);
* ``rotate``: the rotation of the 2R rotated lanes, NoPE lanes passed through bit for bit;
* ``rotate_into``: the same rotation in blocks, into a mutable output, temporaries bounded;
* ``array_meta``, ``positions_meta``, ``as_positions``: the metadata that the checks of
  ``p_rope._params`` read (every check of SPEC.md's "Errors", before any work), and positions as
  an array of the inputs' library on their device.

The public API over these helpers is in ``array_api.py`` (any array API library), ``jax.py``
and ``torch.py``; its normative description is spec/SPEC.md.
Shape letters: B... batch axes, L sequence, N heads, H head_dim, R rotated pairs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import array_api_compat
from p_rope._params import (  # vendor: inline
    CHUNK_BITS,
    ArrayMeta,
    BadPositions,
    NotAnArray,
    RopeTables,
    TableSpec,
    block_of,
    check_table_dtype,
    check_x64_positions,
    frequency_values,
    is_integer_dtype,
    python_positions,
    revolution_chunks,
    token_blocks,
    token_shape,
)

_TWO_PI_HI = 6.2831854820251465  # float32(2 pi)
_TWO_PI_LO = -1.7484555314695172e-07  # float32(2 pi - _TWO_PI_HI)
_CHUNK = float(1 << CHUNK_BITS)


# ---------------------------------------------------------------------------------------------
# dtype and argument helpers


def dtype_name(dtype: Any) -> str:
    """'float32', 'bfloat16', 'int64', ... for a NumPy, JAX, torch or array-api-strict dtype."""
    name = getattr(dtype, "name", None)
    if isinstance(name, str):
        return name
    return str(dtype).rsplit(".", 1)[-1].strip("'>")


def array_meta(value: Any, expected: str = "an array") -> ArrayMeta | NotAnArray:
    """What the checks of p_rope._params read of an array argument (dtype name, shape, device)."""
    if not array_api_compat.is_array_api_obj(value):
        return NotAnArray(type(value).__name__, expected)
    return ArrayMeta(dtype_name(value.dtype), tuple(value.shape), array_api_compat.device(value))


def _integer_bits(xp: Any) -> int:
    """The width of xp's default integer (32 for JAX with jax_enable_x64 off, 64 elsewhere)."""
    return int(xp.iinfo(xp.__array_namespace_info__().default_dtypes()["integral"]).bits)


def positions_meta(xp: Any, positions: Any) -> ArrayMeta | BadPositions:
    """The metadata of positions: an array's own, or that of the array xp makes of Python values."""
    if array_api_compat.is_array_api_obj(positions):
        return ArrayMeta(dtype_name(positions.dtype), tuple(positions.shape))
    return python_positions(positions, _integer_bits(xp))


def as_positions(xp: Any, positions: Any, meta: ArrayMeta, like: Any) -> Any:
    """Checked positions as an array of xp on like's device (SPEC.md, "Positions"): Python values
    in meta's dtype; another library's array through xp.asarray, its integers never wrapped."""
    device = array_api_compat.device(like)
    if not array_api_compat.is_array_api_obj(positions):
        return xp.asarray(positions, dtype=getattr(xp, meta.dtype), device=device)
    source = array_api_compat.array_namespace(positions)
    if source is not xp:
        converted = xp.asarray(positions, device=device)
        name = dtype_name(converted.dtype)
        if name != meta.dtype and is_integer_dtype(meta.dtype) and positions.size:
            low, high = int(source.min(positions)), int(source.max(positions))
            check_x64_positions(low, high, meta.dtype, name)
        return converted
    if array_api_compat.device(positions) != device:
        positions = array_api_compat.to_device(positions, device)
    return positions


def table_dtype_name(dtype: object) -> str:
    """The checked name of a table dtype argument (None: float32)."""
    return check_table_dtype("float32" if dtype is None else dtype_name(dtype))


def element_strides(x: Any) -> tuple[int, ...]:
    """x's strides in elements (torch, NumPy, array-api-strict over NumPy)."""
    stride = getattr(x, "stride", None)
    if callable(stride):
        return tuple(stride())
    array = x if hasattr(x, "strides") else getattr(x, "_array", x)
    return tuple(step // array.itemsize for step in array.strides)


# ---------------------------------------------------------------------------------------------
# tables


def _frac(xp: Any, t: Any) -> Any:
    """t - round(t), in [-1/2, 1/2]; exact in floating point."""
    return t - xp.round(t)


def _wide_integers(xp: Any, positions: Any) -> Any:
    """Integer positions in a dtype in which p // 4096 and p - 4096 h are exact and supported:
    8- and 16-bit integers widened to int32, unsigned ones of 32 and 64 bits to xp's default integer
    (int64; uint64 positions of 2**63 and more wrap, far beyond the strict range, where the
    conformant bound exceeds any rotation's error)."""
    name = dtype_name(positions.dtype)
    if name in ("int32", "int64") or (name == "uint32" and _integer_bits(xp) == 32):
        return positions
    if xp.iinfo(positions.dtype).bits < 32:
        return xp.astype(positions, xp.int32)
    return xp.astype(positions, xp.__array_namespace_info__().default_dtypes()["integral"])


def _position_chunks(xp: Any, positions: Any) -> tuple[Any, Any, Any | None, Any | None]:
    """Split positions p = 4096 hi + mid + fa + fb, each piece cast exactly to float32:
    hi and mid are integers below 4096 in magnitude (for |p| < 2**24), fa a multiple of 2**-12
    below 1, fb below 2**-12. Real positions are split toward zero (trunc), so every piece keeps
    p's sign and each subtraction is exact; floor would round for negative non-integers.
    Integer positions have no fa, fb. A real hi is taken modulo 2**24, exactly, so that it stays
    finite in float32 (positions beyond 2**36, where SPEC.md's conformant bound exceeds any
    rotation's error)."""
    f32 = xp.float32
    if is_integer_dtype(dtype_name(positions.dtype)):
        positions = _wide_integers(xp, positions)
        hi = positions // (1 << CHUNK_BITS)
        mid = positions - hi * (1 << CHUNK_BITS)
        return xp.astype(hi, f32), xp.astype(mid, f32), None, None
    hi = xp.trunc(positions / _CHUNK)
    rest = positions - hi * _CHUNK
    mid = xp.trunc(rest)
    frac = rest - mid
    fa = xp.trunc(frac * _CHUNK) / _CHUNK
    fb = frac - fa
    hi = xp.where(xp.abs(hi) < 2.0**24, hi, hi - xp.trunc(hi / 2.0**24) * 2.0**24)
    return xp.astype(hi, f32), xp.astype(mid, f32), xp.astype(fa, f32), xp.astype(fb, f32)


def exact_tables(
    xp: Any, positions: Any, head_dim: int, max_wavelength: float, pairs: int, scale_factor: float
) -> RopeTables:
    """float32 cos/sin of 2 pi * frac(p * r_i) for the R rotated pairs, shape positions.shape + (R,).

    Error-free reduction of the angle modulo one turn (SPEC.md, "Accuracy", strict level): every
    product below is exact in float32 and the coarse fractions lie on a 2**-24 grid whose sums are
    exact, so the only roundings are a final addition, the multiplication by 2 pi and sin/cos of an
    argument in [-pi/4, pi/4]. Costs about 40 elementwise float32 operations per table entry.
    """
    device = array_api_compat.device(positions)
    whole, c1, c2, c3, c4, c5 = (
        xp.asarray(row, dtype=xp.float32, device=device)
        for row in revolution_chunks(head_dim, max_wavelength, pairs, scale_factor)
    )
    hi, mid, fa, fb = (None if piece is None else piece[..., None] for piece in _position_chunks(xp, positions))
    # hi * 4096 * c1 is an integer: it drops out of the angle.
    coarse = [hi * (_CHUNK * c2), hi * (_CHUNK * c3), mid * c1, mid * c2]
    fine = [hi * (_CHUNK * c4), hi * (_CHUNK * c5), mid * c3, mid * c4]
    if fa is not None:
        coarse += [fa * c1, fa * whole]
        fine += [fa * c2, fa * c3, fb * (whole + c1 + c2)]
    turns = _frac(xp, coarse[0])
    for term in coarse[1:]:
        turns = _frac(xp, turns + _frac(xp, term))
    small = fine[0]
    for term in fine[1:]:
        small = small + term
    quarter = xp.round(turns * 4.0)
    reduced = (turns - quarter * 0.25) + small  # in [-1/8, 1/8] turn, up to 2**-28
    angle = reduced * _TWO_PI_HI + reduced * _TWO_PI_LO
    cos, sin = xp.cos(angle), xp.sin(angle)
    q = xp.remainder(quarter, 4.0)
    # rotate (cos, sin) by q quarter turns: exact
    out_cos = xp.where(q == 0.0, cos, xp.where(q == 1.0, -sin, xp.where(q == 2.0, -cos, sin)))
    out_sin = xp.where(q == 0.0, sin, xp.where(q == 1.0, cos, xp.where(q == 2.0, -sin, -cos)))
    return RopeTables(out_cos, out_sin)


def float64_tables(
    xp: Any, positions: Any, head_dim: int, max_wavelength: float, pairs: int, scale_factor: float
) -> RopeTables:
    """float64 cos/sin of position * frequency, shape positions.shape + (R,)."""
    device = array_api_compat.device(positions)
    freq = xp.asarray(
        frequency_values(head_dim, max_wavelength, pairs, scale_factor)[:pairs], dtype=xp.float64, device=device
    )
    angle = xp.astype(positions, xp.float64)[..., None] * freq
    return RopeTables(xp.cos(angle), xp.sin(angle))


def build_tables(xp: Any, positions: Any, spec: TableSpec) -> RopeTables:
    """The tables of spec (its dtype: float32 by exact_tables, float64 by float64_tables)."""
    build = exact_tables if spec.dtype == "float32" else float64_tables
    ladder = (spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
    return quietly(xp, build, xp, positions, *ladder)


def quietly(xp: Any, fn: Any, *args: Any) -> Any:
    """fn(*args), with NumPy's floating-point warnings off where xp is NumPy-backed: SPEC.md defines
    what non-finite positions and inf * 0 give (NaN; "Special values"), so they are not warnings."""
    if array_api_compat.is_numpy_namespace(xp) or array_api_compat.is_array_api_strict_namespace(xp):
        import numpy  # already imported by these namespaces

        with numpy.errstate(invalid="ignore", over="ignore"):
            return fn(*args)
    return fn(*args)


# ---------------------------------------------------------------------------------------------
# rotation


def expand_table(xp: Any, table: Any, seq_axis: int) -> Any:
    """[B'..., L, R] -> [B'..., L, 1, R] (seq_axis=-3) or [B'..., 1, L, R] (seq_axis=-2)."""
    if table.ndim < 2:  # a scalar position: an L axis of 1
        table = xp.reshape(table, (1, table.shape[-1]))
    return xp.expand_dims(table, axis=-2 if seq_axis == -3 else -3)


def rotated_lane_slices(head_dim: int, pairs: int, pairing: str) -> tuple[slice, slice]:
    """Lanes of the first and second element of the rotated pairs i < R."""
    if pairing == "split_half":
        half = head_dim // 2
        return slice(0, pairs), slice(half, half + pairs)
    return slice(0, 2 * pairs, 2), slice(1, 2 * pairs, 2)


def rotate_pairs(x1: Any, x2: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
    """(x1 cos - x2 sin, x2 cos + x1 sin): the rotation of each pair by its angle."""
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin


def rotate(xp: Any, x: Any, tables: RopeTables, pairing: str, seq_axis: int, as_bits: bool = False) -> Any:
    """Rotate the 2R rotated lanes of x by tables; NoPE lanes are copied bit for bit. as_bits: a
    16-bit float x is concatenated as its uint16 bits (x.view, as NumPy, JAX and torch offer), for
    libraries that copy 16-bit floats through float32, quieting NaN payloads (XLA:CPU)."""
    head_dim = x.shape[-1]
    pairs = tables.cos.shape[-1]
    if pairs == 0:
        return xp.asarray(x, copy=True)
    compute = tables.cos.dtype
    cos, sin = expand_table(xp, tables.cos, seq_axis), expand_table(xp, tables.sin, seq_axis)
    first, second = rotated_lane_slices(head_dim, pairs, pairing)
    o1, o2 = rotate_pairs(xp.astype(x[..., first], compute), xp.astype(x[..., second], compute), cos, sin)
    o1, o2 = xp.astype(o1, x.dtype), xp.astype(o2, x.dtype)
    dtype = x.dtype
    if as_bits and dtype_name(dtype) in ("float16", "bfloat16"):
        x, o1, o2 = (a.view(xp.uint16) for a in (x, o1, o2))
    if pairing == "split_half":
        half = head_dim // 2
        out = xp.concat([o1, x[..., pairs:half], o2, x[..., half + pairs :]], axis=-1)
    else:
        interleaved = xp.reshape(xp.stack([o1, o2], axis=-1), (*o1.shape[:-1], 2 * pairs))
        out = xp.concat([interleaved, x[..., 2 * pairs :]], axis=-1)
    return out.view(dtype) if out.dtype != dtype else out


# ---------------------------------------------------------------------------------------------
# rotation in blocks (mutable arrays): temporaries bounded by the block, whatever the input size

BLOCK_BYTES = 1 << 19  # bytes of one rotated lane, in the computation dtype, per block


def token_view(xp: Any, array: Any, rank: int, seq_axis: int, trailing: int) -> Any:
    """positions (trailing=0) or a table (trailing=1) laid out against the inputs' axes (token_shape)."""
    return xp.reshape(array, token_shape(tuple(array.shape), rank, seq_axis, trailing))


def rotate_into(
    xp: Any, out: Any, x: Any, pairs: int, pairing: str, compute: Any, block_tables: Callable[[Any], Any]
) -> None:
    """out's 2R rotated lanes = those of x turned by the tables block_tables(index) gives for each
    block index of the token axes (token_blocks), computed in dtype compute and rounded once to
    out's; out may be x (in place). NoPE lanes are not touched."""
    if pairs == 0:
        return
    first, second = rotated_lane_slices(x.shape[-1], pairs, pairing)
    width = 8 if compute == xp.float64 else 4
    for index in token_blocks((*x.shape[:-1], pairs), width, BLOCK_BYTES):
        cos, sin = block_tables(index)
        o1, o2 = rotate_pairs(
            xp.astype(x[(*index, ..., first)], compute), xp.astype(x[(*index, ..., second)], compute), cos, sin
        )
        out[(*index, ..., first)] = xp.astype(o1, out.dtype)
        out[(*index, ..., second)] = xp.astype(o2, out.dtype)


def position_blocks(xp: Any, positions: Any, spec: TableSpec, rank: int, seq_axis: int) -> Callable[[Any], Any]:
    """block_tables for rotate_into: the tables of each block built from its positions."""
    tokens = token_view(xp, positions, rank, seq_axis, 0)
    return lambda index: build_tables(xp, tokens[block_of(index, tuple(tokens.shape))], spec)


def table_blocks(xp: Any, tables: RopeTables, rank: int, seq_axis: int) -> Callable[[Any], Any]:
    """block_tables for rotate_into: each block's part of precomputed tables."""
    cos, sin = (token_view(xp, t, rank, seq_axis, 1) for t in tables)
    return lambda index: (cos[block_of(index, tuple(cos.shape))], sin[block_of(index, tuple(sin.shape))])


# ---------------------------------------------------------------------------------------------
# memoized checks


def memoized_checks(checks: Callable[..., Any], bypass: Callable[[], bool] = lambda: False) -> Callable[..., Any]:
    """checks, memoized per value and type of every argument (the checks of a small call cost more
    than its work): a valid set of arguments is checked once; a failing one raises every time (an
    exception is never cached); an unhashable argument, or bypass() true (a tracing compiler that
    must not meet a cache), runs the checks uncached."""
    cached = functools.lru_cache(maxsize=256, typed=True)(checks)

    @functools.wraps(checks)
    def call(*args: Any) -> Any:
        if bypass():
            return checks(*args)
        try:
            return cached(*args)
        except TypeError:  # unhashable (or a check's own TypeError, which this call raises again)
            return checks(*args)

    return call
