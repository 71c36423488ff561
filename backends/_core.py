"""The p-RoPE math, written once against the Python array API standard (via array-api-compat).

Runs unchanged on NumPy, array-api-strict, jax.numpy and torch, on the device the input lives
on. Every backend builds on these helpers:

* ``build_tables``: the cos/sin tables, float32 by SPEC.md's exact reduction (``_exact_turns``, no
  float64 needed), float64 as cos/sin of the float64 angle;
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
import math
from collections.abc import Callable
from typing import Any

import array_api_compat
from p_rope._params import (  # vendor: inline
    ArrayMeta,
    BadPositions,
    NotAnArray,
    RopeTables,
    TableSpec,
    block_budget,
    block_of,
    check_table_dtype,
    check_x64_positions,
    frequency_values,
    is_integer_dtype,
    python_positions,
    token_blocks,
    token_shape,
)
from p_rope.backends._exact_turns import exact_turn_tables, turn_constants  # vendor: inline

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
    """The tables of spec: float32 by SPEC.md's exact reduction (exact_turn_tables), float64 by
    float64_tables."""
    ladder = (spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
    if spec.dtype == "float64":
        return quietly(xp, float64_tables, xp, positions, *ladder)
    device = array_api_compat.device(positions)
    heads, tails = turn_constants(*ladder)
    constants = (xp.asarray(heads, dtype=xp.int32, device=device), xp.asarray(tails, dtype=xp.float32, device=device))
    return quietly(xp, exact_turn_tables, xp, positions, constants)


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


def copy_of(xp: Any, x: Any) -> Any:
    """A new array equal to x bit for bit, differentiable in x where the library tracks gradients.
    A reshape with copy=True: torch.asarray(copy=True) cut its copy from the autograd graph in older
    torch releases and warns in newer ones (its requires_grad default changed); reshape's copy is a clone."""
    return xp.reshape(x, x.shape, copy=True)


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
        return copy_of(xp, x)
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


def rotate_immutable(xp: Any, x: Any, tables: RopeTables, pairing: str, seq_axis: int) -> Any:
    """rotate as one expression for an immutable array library (JAX, the only one array-api-compat
    knows): 16-bit NoPE lanes copied as bits (XLA:CPU copies bfloat16 through float32, quieting NaN
    payloads), with the derivative of the same rotation done in floats, as a bit copy has none in
    autodiff (its tangent is zero). Values and derivatives both follow SPEC.md; no extra work unless
    differentiated."""
    if dtype_name(x.dtype) not in ("float16", "bfloat16") or tables.cos.shape[-1] == 0:
        return rotate(xp, x, tables, pairing, seq_axis)
    return _bit_rotation(xp, pairing, seq_axis)(x, tables.cos, tables.sin)


@functools.lru_cache(maxsize=8)
def _bit_rotation(xp: Any, pairing: str, seq_axis: int) -> Callable[[Any, Any, Any], Any]:
    """The JAX function (x, cos, sin) -> rotate(..., as_bits=True), its JVP that of as_bits=False."""
    import jax  # only reached with JAX arrays: jax is imported already

    def plain(x: Any, cos: Any, sin: Any) -> Any:
        return rotate(xp, x, RopeTables(cos, sin), pairing, seq_axis)

    @jax.custom_jvp
    def bits(x: Any, cos: Any, sin: Any) -> Any:
        return rotate(xp, x, RopeTables(cos, sin), pairing, seq_axis, as_bits=True)

    @bits.defjvp
    def bits_jvp(primals: tuple, tangents: tuple) -> tuple[Any, Any]:
        return bits(*primals), jax.jvp(plain, primals, tangents)[1]

    return bits


# ---------------------------------------------------------------------------------------------
# rotation in blocks (mutable arrays): temporaries bounded by the block, whatever the input size

BLOCK_BYTES = 1 << 19  # bytes of one rotated lane, in the computation dtype, per block (at most)
_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


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
    size = math.prod(x.shape) * _ITEMSIZE[dtype_name(x.dtype)]
    for index in token_blocks((*x.shape[:-1], pairs), width, block_budget(BLOCK_BYTES, size)):
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
