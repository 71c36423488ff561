"""p-RoPE for JAX: the API of spec/SPEC.md over jax.Array, on CPU, GPU and TPU.

Same names, signatures, results and error messages as the NumPy reference (``p_rope``), plus what
JAX users expect:

* ``jax.jit``: every argument other than the arrays (inputs, positions, tables) is a Python value
  and must stay static; position values are traced, so new positions never cause a retrace. The
  public functions are jitted themselves, so eager calls run one compiled program.
* ``jax.grad`` / ``jax.vjp``: a custom VJP whose backward pass is the inverse rotation (the
  forward kernel applied with -sin). It saves the [..., L, R] cos/sin tables and nothing of the
  size of the activations. Gradients with respect to float positions or to user-given tables
  are exact too; only then is the input kept for the backward pass. Forward-mode autodiff
  (``jax.jvp``, ``jax.jacfwd``) is not available through the rotation, as for any custom VJP.
* ``jax.vmap``, sharded inputs (outputs keep the input's sharding and device), float16,
  bfloat16, float32, and float64 when ``jax_enable_x64`` is on.
* No ``apply_p_rope_``: JAX arrays are immutable (SPEC.md, "API"). ``apply_p_rope`` computes
  only the 2R rotated lanes and writes them into a copy of the input, so inside a jitted model,
  where the input buffer is an intermediate (or a donated argument), XLA writes just those lanes.

Accuracy (SPEC.md, "Accuracy", strict level): float32 tables within about one float32 unit of
the exact cosine and sine (1.06 measured) for integer and real positions up to 2**31 in magnitude,
without float64. This is a native path, not _core.exact_tables: the angle is reduced modulo one turn
in 32-bit integer fixed point (the turns per unit position held to 60 bits, the position's integer
part taken modulo 2**64, its fraction to 2**-32), then sin and cos are evaluated by polynomials on
[-pi/4, pi/4] and turned by the exact quarter turns. Under XLA it is about three times faster than
exact_tables and more accurate (1.9 units there, and negative real positions are exact here too).
Real positions are taken as the values JAX holds: with x64 off, JAX turns float64 data into
float32 (its rule), rounding a non-integer position to 2**-24 of its magnitude; pass integer or
float32 positions, or enable x64, where that matters.

Shape letters: B... batch axes, L sequence, N heads, H head_dim, R rotated pairs.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from p_rope._params import (  # vendor: inline
    ArrayMeta,
    BadPositions,
    CallParams,
    NotAnArray,
    RopeTables,
    TableSpec,
    check_apply_tables,
    check_call,
    check_positions,
    check_qk_call,
    check_table_request,
    check_tables_type,
    check_x64_dtype,
    check_x64_positions,
    frequency_values,
    is_integer_dtype,
    python_positions,
    revolution_chunks,
    rotated_pair_count,
)
from p_rope.backends._core import (  # vendor: inline
    dtype_name,
    expand_table,
    float64_tables,
    table_dtype_name,
)

__all__ = [
    "RopeTables",
    "apply_p_rope",
    "apply_p_rope_qk",
    "apply_p_rope_tables",
    "frequencies",
    "p_rope_tables",
    "rotated_pair_count",
]


# ---------------------------------------------------------------------------------------------
# argument handling (every check of SPEC.md "Errors" runs here, in Python, before any work;
# under jit these see shapes and dtypes only, which are static)


def _x64_enabled() -> bool:
    return bool(jax.config.read("jax_enable_x64"))


def _is_array(value: object) -> bool:
    return isinstance(value, jax.Array) or (hasattr(value, "shape") and hasattr(value, "dtype"))


def _meta(value: Any) -> ArrayMeta | NotAnArray:
    """The metadata the checks read: dtype name, shape, and the devices of a concrete jax.Array."""
    if not _is_array(value):
        return NotAnArray(type(value).__name__)
    concrete = isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer)
    devices = frozenset(value.devices()) if concrete else None
    return ArrayMeta(dtype_name(value.dtype), tuple(value.shape), devices)


def _positions_meta(positions: object) -> ArrayMeta | BadPositions:
    if isinstance(positions, jax.Array):
        return ArrayMeta(dtype_name(positions.dtype), tuple(positions.shape))
    if _is_array(positions):
        array = np.asarray(positions)
        return ArrayMeta(array.dtype.name, array.shape)
    return python_positions(positions, 64 if _x64_enabled() else 32)


def _jax_array(value: Any, argument: str) -> jax.Array:
    """A checked array argument as a jax.Array (float64 data refused while jax_enable_x64 is off)."""
    if isinstance(value, jax.Array):
        return value
    check_x64_dtype(dtype_name(value.dtype), argument, _x64_enabled())
    return jnp.asarray(value)


def _jax_positions(positions: object, meta: ArrayMeta, like: jax.Array | None) -> jax.Array:
    """Checked positions as a jax.Array on the devices of like. Non-JAX positions follow JAX's
    conversion rules (float64 -> float32 when jax_enable_x64 is off), except that 64-bit integers
    beyond 32 bits are refused then, never wrapped."""
    if isinstance(positions, jax.Array):
        if like is None or isinstance(positions, jax.core.Tracer) or isinstance(like, jax.core.Tracer):
            return positions
        return _same_devices(positions, like)
    array = np.asarray(positions, dtype=None if _is_array(positions) else meta.dtype)
    if is_integer_dtype(meta.dtype) and array.dtype.itemsize == 8 and not _x64_enabled() and array.size:
        narrow = "uint32" if meta.dtype.startswith("u") else "int32"
        check_x64_positions(int(array.min()), int(array.max()), meta.dtype, narrow)
    return jnp.asarray(array)


def _same_devices(array: jax.Array, like: jax.Array) -> jax.Array:
    """array moved onto the devices of like when it lives elsewhere (outputs follow the input)."""
    if array.sharding == like.sharding or array.devices() == like.devices():
        return array
    sharding = like.sharding
    if len(like.devices()) == 1:
        return jax.device_put(array, next(iter(like.devices())))
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.device_put(array, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
    return array  # jit reports devices it cannot reconcile


def _checked_spec(spec: TableSpec) -> TableSpec:
    check_x64_dtype(spec.dtype, "the table dtype", _x64_enabled())
    return spec


# ---------------------------------------------------------------------------------------------
# float32 tables: exact reduction of the angle in 32-bit integer fixed point

_U32 = jnp.uint32
_LOW16 = 0xFFFF
# One turn is 2**32 units of the fixed point. The angle of a remainder of at most 2**29 units
# (an eighth of a turn) is rest_hi * _STEP + rest_lo * _UNIT with rest = rest_hi * 2**17 + rest_lo;
# _STEP_HI holds the 11 leading bits of _STEP = 2**17 units, so rest_hi * _STEP_HI is exact.
_UNIT_EXACT = 2.0 * math.pi / 2.0**32
_STEP_EXACT = _UNIT_EXACT * 2.0**17
_STEP_EXPONENT = math.floor(math.log2(_STEP_EXACT)) - 10
_STEP_HI = math.ldexp(round(math.ldexp(_STEP_EXACT, -_STEP_EXPONENT)), _STEP_EXPONENT)
_STEP_LO = float(np.float32(_STEP_EXACT - _STEP_HI))
_UNIT = float(np.float32(_UNIT_EXACT))
# sin x = x + x^3 S(x^2), cos x = 1 - x^2/2 + x^4 C(x^2) on [-pi/4, pi/4]; near-minimax fits whose
# approximation error (< 4e-12) is far below float32 rounding.
_SIN = (-0.16666666640108763, 0.008333329247491082, -0.00019839297818797456, 2.718008138740194e-06)
_COS = (0.04166666662105897, -0.0013888883628044722, 2.479949183216369e-05, -2.7208205617983063e-07)


@functools.lru_cache(maxsize=256)
def _fixed_point_turns(head_dim: int, max_wavelength: float, pairs: int, scale_factor: float) -> tuple[np.ndarray, ...]:
    """Turns per unit position of each rotated pair, r_i = W_i + F_i / 2**64, as uint32 arrays
    (W mod 2**32, the high and low 32 bits of F, and the 16-bit halves of those), from the exact
    revolution chunks of _params (60 fractional bits)."""
    rows = revolution_chunks(head_dim, max_wavelength, pairs, scale_factor)
    whole = [int(w) % (1 << 32) for w in rows[0]]
    fraction = [0] * pairs
    for row in rows[1:]:
        for i, chunk in enumerate(row):
            fraction[i] += int(math.ldexp(chunk, 64))  # chunk is a multiple of 2**-60: exact
    high = [f >> 32 for f in fraction]
    low = [f & 0xFFFFFFFF for f in fraction]
    as_u32 = functools.partial(np.asarray, dtype=np.uint32)
    return (
        as_u32(whole),
        as_u32(high),
        as_u32([h >> 16 for h in high]),
        as_u32([h & _LOW16 for h in high]),
        as_u32(low),
        as_u32([v >> 16 for v in low]),
        as_u32([v & _LOW16 for v in low]),
    )


def _mulhi(a_hi: jax.Array, a_lo: jax.Array, b_hi: jax.Array, b_lo: jax.Array) -> jax.Array:
    """floor(a * b / 2**32) for uint32 a, b given by their 16-bit halves, less at most 3."""
    return a_hi * b_hi + ((a_hi * b_lo) >> 16) + ((a_lo * b_hi) >> 16)


def _split_u32_float(value: jax.Array) -> jax.Array:
    """A float holding an integer in [0, 2**32), as uint32 (exact: converted by 16-bit halves)."""
    high = jnp.floor(value * (1.0 / 65536.0))
    low = value - high * 65536.0
    return (high.astype(_U32) << 16) | low.astype(_U32)


def _position_words(positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """Integer positions as the words (high, low) of p mod 2**64 in two's complement, uint32 each;
    only p mod 2**64 matters, the turns per position being a 64-bit fixed-point fraction.
    Real positions as (high, low) of floor(|p|) mod 2**64, the fraction |p| - floor(|p|) in units
    of 2**-32 (uint32), and the sign of p (the angle of -p is minus that of p)."""
    if is_integer_dtype(dtype_name(positions.dtype)):
        if positions.dtype.itemsize == 8:
            low = (positions & 0xFFFFFFFF).astype(_U32)
            high = ((positions >> 32) & 0xFFFFFFFF).astype(_U32)
        elif dtype_name(positions.dtype) == "uint32":
            low, high = positions, jnp.zeros_like(positions)
        else:
            signed = positions.astype(jnp.int32)
            low = lax.bitcast_convert_type(signed, _U32)
            high = jnp.where(signed < 0, _U32(0xFFFFFFFF), _U32(0))
        return high, low, None, None
    magnitude = jnp.abs(positions)
    whole = jnp.floor(magnitude)
    fraction = (magnitude - whole) * 2.0**16  # exact
    fraction_hi = jnp.floor(fraction)
    fraction_lo = jnp.floor((fraction - fraction_hi) * 2.0**16)  # drops below 2**-32: exact enough
    upper = jnp.floor(whole * 2.0**-32)
    lower = whole - upper * 2.0**32  # exact (a float32 reaching 2**32 is a multiple of 2**9)
    upper = upper - jnp.floor(upper * 2.0**-32) * 2.0**32
    units = (fraction_hi.astype(_U32) << 16) | fraction_lo.astype(_U32)
    return _split_u32_float(upper), _split_u32_float(lower), units, positions < 0


def _sincos_reduced(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cos a, sin a) for float32 a in [-pi/4, pi/4], each within 0.75 float32 units of exact.
    1 - a^2/2 is formed exactly from a split of a into 12 leading bits and the rest."""
    z = a * a
    s = a + a * (z * (_SIN[0] + z * (_SIN[1] + z * (_SIN[2] + z * _SIN[3]))))
    a_hi = lax.bitcast_convert_type(lax.bitcast_convert_type(a, jnp.int32) & -4096, jnp.float32)
    a_lo = a - a_hi
    half_sq = 0.5 * (a_hi * a_hi)  # exact
    half_sq_lo = 0.5 * (a_lo * (a + a_hi))  # a^2/2 - half_sq, to 2**-24 relative
    head = 1.0 - half_sq
    head_err = (1.0 - head) - half_sq  # exact rounding error of head
    c = head + ((head_err - half_sq_lo) + (z * z) * (_COS[0] + z * (_COS[1] + z * (_COS[2] + z * _COS[3]))))
    return c, s


def _fixed_point_tables(positions: jax.Array, head_dim: int, max_wavelength: float, pairs: int, scale: float):
    """float32 RopeTables of shape positions.shape + (R,), each entry within about one float32 unit
    of cos/sin of the exact angle (SPEC.md "Accuracy")."""
    whole, f_high, fh_hi, fh_lo, f_low, fl_hi, fl_lo = (
        jnp.asarray(row) for row in _fixed_point_turns(head_dim, max_wavelength, pairs, scale)
    )
    high, low, fraction, negative = _position_words(positions)
    e = (..., None)
    # turns mod 1 in units of 2**-32: the top 32 bits of (n mod 2**64) * F / 2**64 for the whole
    # part n (n * W is whole turns), plus fraction * (W + F / 2**64) for a real position.
    units = low[e] * f_high + _mulhi((low >> 16)[e], (low & _LOW16)[e], fl_hi, fl_lo) + high[e] * f_low
    if fraction is not None and negative is not None:
        units = units + fraction[e] * whole + _mulhi((fraction >> 16)[e], (fraction & _LOW16)[e], fh_hi, fh_lo)
        units = jnp.where(negative[e], _U32(0) - units, units)
    quarter = (units + (1 << 29)) >> 30  # nearest quarter turn, 0..3
    rest = lax.bitcast_convert_type(units - (quarter << 30), jnp.int32)  # in [-2**29, 2**29)
    rest_hi = (rest >> 17).astype(jnp.float32)  # in [-2**12, 2**12)
    rest_lo = (rest & 0x1FFFF).astype(jnp.float32)
    big = rest_hi * _STEP_HI  # exact
    small = rest_hi * _STEP_LO + rest_lo * _UNIT
    angle = big + small
    b = angle - big
    angle_err = (big - (angle - b)) + (small - b)  # TwoSum: angle + angle_err = big + small
    c, s = _sincos_reduced(angle)
    c, s = c - angle_err * s, s + angle_err * c
    odd = (quarter & 1) == 1
    c, s = jnp.where(odd, s, c), jnp.where(odd, c, s)
    cos = jnp.where(((quarter + 1) & 2) != 0, -c, c)
    sin = jnp.where((quarter & 2) != 0, -s, s)
    if fraction is not None:
        finite = jnp.isfinite(positions)[e]
        cos = jnp.where(finite, cos, jnp.nan)
        sin = jnp.where(finite, sin, jnp.nan)
    return RopeTables(cos, sin)


def _build_tables(positions: jax.Array, spec: TableSpec) -> RopeTables:
    ladder = (spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
    if spec.dtype == "float64":
        return float64_tables(jnp, positions, *ladder)
    return _fixed_point_tables(positions, *ladder)


def _own_fusion_on_cpu(fn: Any, witness: jax.Array, *args: Any) -> Any:
    """fn(*args), computed by XLA:CPU in a fusion of its own, its result materialized.

    XLA:CPU fuses elementwise producers into every consumer, recomputing them per consumer element:
    the tables would be rebuilt for each head and lane of the rotation (twice the cost of the
    whole op at p = 1). A conditional is a fusion boundary, so on CPU fn runs inside one whose two
    branches are fn itself, on a predicate the compiler cannot fold (one element of witness, a
    runtime array). Other platforms call fn directly: a device-side conditional costs a host round
    trip on GPUs. Under vmap with a batched witness the conditional becomes a select (same values).
    """
    if witness.size == 0:
        return fn(*args)

    def on_cpu(*operands: Any) -> Any:
        first = witness.reshape(-1)[0]
        return lax.cond(first != jnp.asarray(7, first.dtype), fn, fn, *operands)

    return lax.platform_dependent(*args, cpu=on_cpu, default=fn)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _tables(positions: jax.Array, spec: TableSpec) -> RopeTables:
    """The [..., L, R] tables, built once per call (on CPU in their own fusion: _own_fusion_on_cpu)."""
    return _own_fusion_on_cpu(functools.partial(_build_tables, spec=spec), positions, positions)


@_tables.defjvp
def _tables_jvp(spec: TableSpec, primals: tuple, tangents: tuple) -> tuple[RopeTables, RopeTables]:
    """d cos = -sin * freq * dp, d sin = cos * freq * dp: the exact derivative in float positions."""
    (positions,), (dp,) = primals, tangents
    tables = _tables(positions, spec)
    if is_integer_dtype(dtype_name(positions.dtype)):
        return tables, RopeTables(jnp.zeros_like(tables.cos), jnp.zeros_like(tables.sin))
    values = frequency_values(spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
    freq = jnp.asarray(values[: spec.pairs], dtype=tables.cos.dtype)
    d_angle = dp.astype(tables.cos.dtype)[..., None] * freq
    return tables, RopeTables(-tables.sin * d_angle, tables.cos * d_angle)


# ---------------------------------------------------------------------------------------------
# the rotation: only the 2R rotated lanes are read and computed, then written into a copy of x


def _pair_lanes(x: jax.Array, pairs: int, pairing: str) -> tuple[jax.Array, jax.Array]:
    """(x1, x2), the first and second elements of the rotated pairs, [..., R] each. Both are read
    through one strided view of x ([..., 2, H/2] or [..., H/2, 2]), which XLA reads straight from
    the input buffer (no slice copies)."""
    half = x.shape[-1] // 2
    if pairing == "split_half":
        view = x.reshape(*x.shape[:-1], 2, half)[..., :pairs]
        return view[..., 0, :], view[..., 1, :]
    view = x.reshape(*x.shape[:-1], half, 2)[..., :pairs, :]
    return view[..., 0], view[..., 1]


def _rotated_pairs(x: jax.Array, c: jax.Array, s: jax.Array, pairing: str) -> jax.Array:
    """The rotated lanes, computed in the tables' dtype and rounded once to x's dtype, stacked as
    in x: [..., 2, R] (split_half: first elements, then second ones) or [..., R, 2] (interleaved)."""
    x1, x2 = (v.astype(c.dtype) for v in _pair_lanes(x, c.shape[-1], pairing))
    o1 = (x1 * c - x2 * s).astype(x.dtype)
    o2 = (x2 * c + x1 * s).astype(x.dtype)
    return jnp.stack([o1, o2], axis=-2 if pairing == "split_half" else -1)


def _bits(a: jax.Array) -> jax.Array:
    """A bfloat16 array as uint16 (bit for bit): XLA:CPU emulates bfloat16 copies in float32, which
    quiets NaN payloads; integer copies keep every bit (float16 copies are native)."""
    return lax.bitcast_convert_type(a, jnp.uint16) if a.dtype == jnp.bfloat16 else a


def _floats(a: jax.Array, dtype: Any) -> jax.Array:
    return lax.bitcast_convert_type(a, dtype) if a.dtype != dtype else a


def _rotate_in_place(x: jax.Array, c: jax.Array, s: jax.Array, pairing: str) -> jax.Array:
    """A copy of x whose rotated lanes are overwritten by dynamic-update-slices: XLA copies x (or
    reuses its buffer) and touches only the 2R rotated lanes, reading them from x. bfloat16 is
    copied as its bits (_bits), so NoPE lanes keep NaN payloads."""
    rotated = _bits(_rotated_pairs(x, c, s, pairing))
    last = x.ndim - 1
    if pairing == "split_half":
        out = lax.dynamic_update_slice_in_dim(_bits(x), rotated[..., 0, :], 0, axis=last)
        out = lax.dynamic_update_slice_in_dim(out, rotated[..., 1, :], x.shape[-1] // 2, axis=last)
    else:
        out = lax.dynamic_update_slice_in_dim(_bits(x), rotated.reshape(*x.shape[:-1], -1), 0, axis=last)
    return _floats(out, x.dtype)


def _rotate_materialized(x: jax.Array, c: jax.Array, s: jax.Array, pairing: str) -> jax.Array:
    """bfloat16 with NoPE lanes on XLA:CPU, which emulates bfloat16 dynamic-update-slice in float32
    over the whole array: fused into that pass, the rotation would be evaluated for every lane.
    The rotated lanes are materialized in their own fusion, then written over x's bits in one pass."""
    rotated = _own_fusion_on_cpu(functools.partial(_rotated_pairs, pairing=pairing), x, x, c, s)
    half = x.shape[-1] // 2
    view = _bits(x).reshape(*x.shape[:-1], *((2, half) if pairing == "split_half" else (half, 2)))
    out = lax.dynamic_update_slice(view, _bits(rotated), (0,) * view.ndim).reshape(x.shape)
    return _floats(out, x.dtype)


def _rotate_whole(x: jax.Array, c: jax.Array, s: jax.Array, pairing: str) -> jax.Array:
    """Every lane rotated (no NoPE lanes): the output in one fused pass."""
    return _rotated_pairs(x, c, s, pairing).reshape(x.shape)


_SMALL_BYTES = 1 << 20  # inputs up to this size: fastest undivided on XLA:CPU (2 cores, measured)


def _rotate_lanes(x: jax.Array, cos: jax.Array, sin: jax.Array, pairing: str, seq_axis: int) -> jax.Array:
    """x with its 2R rotated lanes turned by (cos, sin), computed in the tables' dtype and rounded
    once to x's dtype; NoPE lanes copied bit for bit."""
    pairs = cos.shape[-1]
    if pairs == 0:
        return x
    c, s = expand_table(jnp, cos, seq_axis), expand_table(jnp, sin, seq_axis)
    if pairs == x.shape[-1] // 2:  # no NoPE lanes: one fused pass writes the output
        whole = functools.partial(_rotate_whole, pairing=pairing)
        if not 0 < x.size * x.dtype.itemsize <= _SMALL_BYTES or x.dtype == jnp.bfloat16:
            return whole(x, c, s)
        # XLA:CPU splits that pass over its threads, which costs more than the work on a small
        # input (decode: 2x); writing each lane's slice into a copy of x runs undivided
        return lax.platform_dependent(x, c, s, cpu=functools.partial(_rotate_in_place, pairing=pairing), default=whole)
    if x.dtype == jnp.bfloat16:
        return lax.platform_dependent(
            x,
            c,
            s,
            cpu=functools.partial(_rotate_materialized, pairing=pairing),
            default=functools.partial(_rotate_in_place, pairing=pairing),
        )
    return _rotate_in_place(x, c, s, pairing)


def _sum_to(value: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum a broadcast result back to shape (the cotangent of a broadcast)."""
    lead = value.ndim - len(shape)
    value = value.sum(axis=tuple(range(lead))) if lead else value
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and value.shape[i] != 1)
    return value.sum(axis=axes, keepdims=True) if axes else value


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array, pairing: str, seq_axis: int) -> jax.Array:
    return _rotate_lanes(x, cos, sin, pairing, seq_axis)


def _rotate_fwd(x: Any, cos: Any, sin: Any, pairing: str, seq_axis: int) -> tuple[jax.Array, tuple]:
    out = _rotate_lanes(x.value, cos.value, sin.value, pairing, seq_axis)
    # The input is kept only when the tables themselves are differentiated.
    kept = x.value if (cos.perturbed or sin.perturbed) else None
    return out, (cos.value, sin.value, kept)


def _rotate_bwd(pairing: str, seq_axis: int, residuals: tuple, g: Any) -> tuple:
    cos, sin, x = residuals
    if isinstance(g, SymbolicZero):
        return None, None, None
    # The transpose of a rotation is the rotation by the opposite angle.
    g_x = _rotate_lanes(g, cos, -sin, pairing, seq_axis)
    if x is None:
        return g_x, None, None
    pairs = cos.shape[-1]
    if pairs == 0:
        return g_x, jnp.zeros_like(cos), jnp.zeros_like(sin)
    x1, x2 = (v.astype(cos.dtype) for v in _pair_lanes(x, pairs, pairing))
    g1, g2 = (v.astype(cos.dtype) for v in _pair_lanes(g, pairs, pairing))
    heads = x.ndim - 2 if seq_axis == -3 else x.ndim - 3
    g_cos = (g1 * x1 + g2 * x2).sum(axis=heads)
    g_sin = (g2 * x1 - g1 * x2).sum(axis=heads)
    return g_x, _sum_to(g_cos, cos.shape), _sum_to(g_sin, sin.shape)


_rotate.defvjp(_rotate_fwd, _rotate_bwd, symbolic_zeros=True)


# ---------------------------------------------------------------------------------------------
# compiled entry points (parameters static, arrays traced)


@functools.partial(jax.jit, static_argnames=("spec",))
def _tables_jit(positions: jax.Array, spec: TableSpec) -> RopeTables:
    return _tables(positions, spec)


@functools.partial(jax.jit, static_argnames=("pairing", "seq_axis"))
def _apply_tables_jit(inputs: jax.Array, cos: jax.Array, sin: jax.Array, pairing: str, seq_axis: int) -> jax.Array:
    return _rotate(inputs, cos, sin, pairing, seq_axis)


@functools.partial(jax.jit, static_argnames=("spec", "pairing", "seq_axis"))
def _apply_jit(inputs: jax.Array, positions: jax.Array, spec: TableSpec, pairing: str, seq_axis: int) -> jax.Array:
    cos, sin = _tables(positions, spec)
    return _rotate(inputs, cos, sin, pairing, seq_axis)


@functools.partial(jax.jit, static_argnames=("spec", "pairing", "seq_axis"))
def _apply_qk_jit(
    q: jax.Array, k: jax.Array, positions: jax.Array, spec: TableSpec, pairing: str, seq_axis: int
) -> tuple[jax.Array, jax.Array]:
    cos, sin = _tables(positions, spec)
    return _rotate(q, cos, sin, pairing, seq_axis), _rotate(k, cos, sin, pairing, seq_axis)


# ---------------------------------------------------------------------------------------------
# public API (SPEC.md, "API")


def frequencies(
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    dtype: Any = None,
) -> jax.Array:
    """The [H/2] angular frequencies, 0 for NoPE pairs (float32 unless dtype says float64)."""
    spec = check_table_request(head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, "float32")
    name = table_dtype_name(dtype)
    check_x64_dtype(name, "dtype", _x64_enabled())
    values = frequency_values(spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
    return jnp.asarray(values, dtype=name)


def p_rope_tables(
    positions: Any,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    dtype: Any = None,
) -> RopeTables:
    """cos/sin tables of shape positions.shape + (R,), float32 (exact reduction) unless dtype is
    float64; reusable for q and k and across layers (apply_p_rope_tables)."""
    meta = check_positions(_positions_meta(positions) if _is_array(positions) else NotAnArray(type(positions).__name__))
    spec = check_table_request(head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, "float32")
    spec = _checked_spec(spec._replace(dtype=table_dtype_name(dtype)))
    return _tables_jit(_jax_positions(positions, meta, None), spec)


def apply_p_rope_tables(
    inputs: Any, tables: RopeTables, *, pairing: str = "split_half", seq_axis: int = -3
) -> jax.Array:
    """Rotate inputs [B..., L, N, H] (or [B..., N, L, H] with seq_axis=-2) by precomputed tables."""
    check_tables_type(tables)
    cos, sin = (t if _is_array(t) else np.asarray(t) for t in tables)
    layout = check_apply_tables(_meta(inputs), _meta(cos), _meta(sin), pairing, seq_axis)
    inputs = _jax_array(inputs, "inputs")
    cos, sin = (t if isinstance(t, jax.Array) else jnp.asarray(t) for t in (cos, sin))
    if not isinstance(inputs, jax.core.Tracer):
        cos, sin = (t if isinstance(t, jax.core.Tracer) else _same_devices(t, inputs) for t in (cos, sin))
    return _apply_tables_jit(inputs, cos, sin, layout.pairing, layout.seq_axis)


def apply_p_rope(
    inputs: Any,
    positions: Any,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    pairing: str = "split_half",
    seq_axis: int = -3,
) -> jax.Array:
    """p-RoPE of inputs [B..., L, N, H] (seq_axis=-3) or [B..., N, L, H] (seq_axis=-2) at positions
    broadcastable to [B..., L]; a new array of the input's dtype, shape and sharding."""
    meta = _positions_meta(positions)
    params = check_call(
        _meta(inputs), meta, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis
    )
    inputs_ = _jax_array(inputs, "inputs")
    spec = _checked_spec(params.spec)
    positions_ = _jax_positions(positions, meta, inputs_)  # type: ignore[arg-type]
    return _apply_jit(inputs_, positions_, spec, params.pairing, params.seq_axis)


def apply_p_rope_qk(
    q: Any,
    k: Any,
    positions: Any,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    pairing: str = "split_half",
    seq_axis: int = -3,
) -> tuple[jax.Array, jax.Array]:
    """apply_p_rope of q and of k (heads may differ; batch axes and L may not), one table build."""
    meta = _positions_meta(positions)
    params: CallParams = check_qk_call(
        _meta(q),
        _meta(k),
        meta,
        head_dim,
        max_wavelength,
        rope_percentage,
        rotated_pairs,
        scale_factor,
        pairing,
        seq_axis,
    )
    q_, k_ = _jax_array(q, "q"), _jax_array(k, "k")
    spec = _checked_spec(params.spec)
    positions_ = _jax_positions(positions, meta, q_)  # type: ignore[arg-type]
    return _apply_qk_jit(q_, k_, positions_, spec, params.pairing, params.seq_axis)
