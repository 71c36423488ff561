"""The p-RoPE math, written once against the Python array API standard (via array-api-compat).

Runs unchanged on NumPy, array-api-strict, jax.numpy and torch, on the device the input lives
on. Every backend builds on these helpers:

* ``exact_tables``: float32 cos/sin tables accurate to a few float32 ulps at any position up
  to 2**24, using no float64 (SPEC.md, "Accuracy", strict level);
* ``rotate``: the rotation of the 2R rotated lanes, NoPE lanes passed through bit for bit;
* ``prepare``: every argument check of SPEC.md ("Errors"), before any work.

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
    POSITION_FLOAT_DTYPES,
    RopeTables,
    check_head_dim,
    check_input_dtype,
    check_input_shape,
    check_max_wavelength,
    check_pairing,
    check_positions_dtype,
    check_positions_shape,
    check_scale_factor,
    check_seq_axis,
    check_tables,
    check_tables_dtype,
    frequency_values,
    resolve_rotated_pairs,
    revolution_chunks,
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


def is_integer_dtype(name: str) -> bool:
    return name.startswith(("int", "uint"))


def check_array(xp: Any, value: object, argument: str) -> None:
    if not array_api_compat.is_array_api_obj(value):
        raise TypeError(f"{argument} must be an array; got {type(value).__name__}")


def check_inputs(value: Any, head_dim: int, argument: str = "inputs") -> str:
    """Type, dtype and shape of inputs (SPEC.md, "Errors"); returns its dtype name."""
    if not array_api_compat.is_array_api_obj(value):
        raise TypeError(f"{argument} must be an array; got {type(value).__name__}")
    name = check_input_dtype(dtype_name(value.dtype), argument)
    check_input_shape(tuple(value.shape), head_dim, argument)
    return name


def as_positions(xp: Any, positions: Any, like: Any) -> Any:
    """positions as an array on like's device, with its dtype checked (SPEC.md, "Positions")."""
    if not array_api_compat.is_array_api_obj(positions):
        positions = xp.asarray(positions)
    name = dtype_name(positions.dtype)
    if name == "bool" or not (is_integer_dtype(name) or name.startswith(("float", "bfloat"))):
        raise TypeError(f"positions must have an integer or float32/float64 dtype; got dtype {name}")
    check_positions_dtype(name, is_integer_dtype(name))
    device = array_api_compat.device(like)
    if array_api_compat.device(positions) != device:
        positions = array_api_compat.to_device(positions, device)
    return positions


def resolve(head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor) -> tuple[int, float, int, float]:
    """Checked (head_dim, max_wavelength, R, scale_factor)."""
    head_dim = check_head_dim(head_dim)
    pairs = resolve_rotated_pairs(head_dim, rope_percentage, rotated_pairs)
    return head_dim, check_max_wavelength(max_wavelength), pairs, check_scale_factor(scale_factor)


def compute_dtype_name(inputs_dtype: str) -> str:
    """float64 inputs compute in float64; float16, bfloat16 and float32 in float32."""
    return "float64" if inputs_dtype == "float64" else "float32"


def table_dtype_name(dtype: object) -> str:
    name = "float32" if dtype is None else dtype_name(dtype)
    if name not in POSITION_FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64; got {name}")
    return name


# ---------------------------------------------------------------------------------------------
# tables


def _frac(xp: Any, t: Any) -> Any:
    """t - round(t), in [-1/2, 1/2]; exact in floating point."""
    return t - xp.round(t)


def _position_chunks(xp: Any, positions: Any) -> tuple[Any, Any, Any | None, Any | None]:
    """Split positions p = 4096 hi + mid + fa + fb, each piece cast exactly to float32:
    hi and mid are integers below 4096 in magnitude (for |p| < 2**24), fa a multiple of 2**-12
    below 1, fb below 2**-12. Real positions are split toward zero (trunc), so every piece keeps
    p's sign and each subtraction is exact; floor would round for negative non-integers.
    Integer positions have no fa, fb."""
    f32 = xp.float32
    if is_integer_dtype(dtype_name(positions.dtype)):
        hi = positions // (1 << CHUNK_BITS)
        mid = positions - hi * (1 << CHUNK_BITS)
        return xp.astype(hi, f32), xp.astype(mid, f32), None, None
    hi = xp.trunc(positions / _CHUNK)
    rest = positions - hi * _CHUNK
    mid = xp.trunc(rest)
    frac = rest - mid
    fa = xp.trunc(frac * _CHUNK) / _CHUNK
    fb = frac - fa
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


def build_tables(xp, positions, head_dim, max_wavelength, pairs, scale_factor, dtype_name_: str) -> RopeTables:
    build = exact_tables if dtype_name_ == "float32" else float64_tables
    return quietly(xp, build, xp, positions, head_dim, max_wavelength, pairs, scale_factor)


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


def rotate(xp: Any, x: Any, tables: RopeTables, pairing: str, seq_axis: int) -> Any:
    """Rotate the 2R rotated lanes of x by tables; NoPE lanes are copied bit for bit."""
    head_dim = x.shape[-1]
    pairs = tables.cos.shape[-1]
    if pairs == 0:
        return xp.asarray(x, copy=True)
    compute = tables.cos.dtype
    cos, sin = expand_table(xp, tables.cos, seq_axis), expand_table(xp, tables.sin, seq_axis)
    first, second = rotated_lane_slices(head_dim, pairs, pairing)
    o1, o2 = rotate_pairs(xp.astype(x[..., first], compute), xp.astype(x[..., second], compute), cos, sin)
    o1, o2 = xp.astype(o1, x.dtype), xp.astype(o2, x.dtype)
    if pairing == "split_half":
        half = head_dim // 2
        return xp.concat([o1, x[..., pairs:half], o2, x[..., half + pairs :]], axis=-1)
    interleaved = xp.reshape(xp.stack([o1, o2], axis=-1), (*o1.shape[:-1], 2 * pairs))
    return xp.concat([interleaved, x[..., 2 * pairs :]], axis=-1)


# ---------------------------------------------------------------------------------------------
# argument checks of the public functions


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


def check_apply_tables(
    inputs: Any, tables: Any, pairing: str, seq_axis: int, argument: str = "inputs"
) -> tuple[str, int]:
    """Validate apply_p_rope_tables' arguments (SPEC.md, "Errors"); returns (pairing, seq_axis)."""
    if not isinstance(tables, tuple) or len(tables) != 2:
        raise TypeError(f"tables must be a RopeTables(cos, sin); got {type(tables).__name__}")
    check_array(None, inputs, argument)
    cos, sin = tables
    return _checked_table_layout(
        inputs.shape, inputs.dtype, cos.shape, cos.dtype, sin.shape, pairing, seq_axis, argument
    )


def table_layout_checks(
    shape: Any, dtype: Any, cos_shape: Any, cos_dtype: Any, sin_shape: Any, pairing: Any, seq_axis: Any, argument: str
) -> tuple[str, int]:
    """check_apply_tables after the type checks, on everything the remaining checks read."""
    head_dim = shape[-1] if len(shape) else 0
    inputs_dtype = check_input_dtype(dtype_name(dtype), argument)
    check_input_shape(tuple(shape), head_dim, argument)
    pairing = check_pairing(pairing)
    seq_axis = check_seq_axis(seq_axis)
    check_tables(tuple(cos_shape), tuple(sin_shape), head_dim)
    check_tables_dtype(dtype_name(cos_dtype), inputs_dtype)
    check_positions_shape(tuple(cos_shape[:-1]), tuple(shape), seq_axis, "tables")
    return pairing, seq_axis


_checked_table_layout = memoized_checks(table_layout_checks)


def prepare(
    inputs: Any,
    positions: object,
    head_dim: object,
    max_wavelength: object,
    rope_percentage: object,
    rotated_pairs: object,
    scale_factor: object,
    pairing: object,
    seq_axis: object,
    argument: str = "inputs",
) -> tuple[Any, Any, tuple[int, float, int, float], str, int, str]:
    """Every check of apply_p_rope, in SPEC.md's order, before any work.

    Returns (xp, positions array, (H, w, R, scale), pairing, seq_axis, compute dtype name).
    """
    head_dim_ = check_head_dim(head_dim)
    inputs_dtype = check_inputs(inputs, head_dim_, argument)
    params = resolve(head_dim_, max_wavelength, rope_percentage, rotated_pairs, scale_factor)
    pairing_ = check_pairing(pairing)
    seq_axis_ = check_seq_axis(seq_axis)
    xp = array_api_compat.array_namespace(inputs)
    positions_ = as_positions(xp, positions, inputs)
    check_positions_shape(tuple(positions_.shape), tuple(inputs.shape), seq_axis_)
    return xp, positions_, params, pairing_, seq_axis_, compute_dtype_name(inputs_dtype)
