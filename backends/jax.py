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

Tables: float32 by SPEC.md's exact reduction ("Accuracy"), in 32-bit integers and float32 with or
without x64; float64 (x64 on, float64 inputs) as cos/sin of the float64 angle. Real positions are
taken as the values JAX holds: with x64 off, JAX turns float64 data into float32 (its rule), rounding
a non-integer position to 2**-24 of its magnitude; pass integer or float32 positions, or enable x64,
where that matters.

Shape letters: B... batch axes, L sequence, N heads, H head_dim, R rotated pairs.
"""

from __future__ import annotations

import functools
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
    rotated_pair_count,
)
from p_rope.backends._core import (  # vendor: inline
    dtype_name,
    expand_table,
    float64_tables,
    table_dtype_name,
)
from p_rope.backends._exact_turns import exact_turn_tables, turn_constants  # vendor: inline

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


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: Any) -> str:
    """dtype_name, memoized per dtype (reading a NumPy dtype's name costs more than the lookup)."""
    return dtype_name(dtype)


def _dtype_name_of(value: Any) -> str:
    try:
        return _dtype_name(value.dtype)
    except TypeError:  # an unhashable dtype of a foreign array
        return dtype_name(value.dtype)


def _memoized(check: Any) -> Any:
    """check(*args), memoized on its arguments and their types where they are all hashable (the
    checks are pure functions of metadata and Python values; raised errors are never memoized)."""
    cached = functools.lru_cache(maxsize=256, typed=True)(check)

    @functools.wraps(check)
    def memoized(*args: Any) -> Any:
        try:
            hash(args)
        except TypeError:
            return check(*args)
        return cached(*args)

    return memoized


_check_call = _memoized(check_call)
_check_qk_call = _memoized(check_qk_call)
_check_apply_tables = _memoized(check_apply_tables)


def _meta(value: Any, device: bool = False) -> ArrayMeta | NotAnArray:
    """The metadata the checks read: dtype name, shape and, where asked (the one check that compares
    them, q's and k's), the devices of a concrete jax.Array."""
    if not _is_array(value):
        return NotAnArray(type(value).__name__)
    concrete = device and isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer)
    return ArrayMeta(_dtype_name_of(value), tuple(value.shape), frozenset(value.devices()) if concrete else None)


def _positions_meta(positions: object) -> ArrayMeta | BadPositions:
    if isinstance(positions, jax.Array):
        return ArrayMeta(_dtype_name_of(positions), tuple(positions.shape))
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
# tables


def _build_tables(positions: jax.Array, spec: TableSpec) -> RopeTables:
    """float32: SPEC.md's exact reduction (32-bit integers, so with or without x64); float64:
    cos/sin of the float64 angle."""
    ladder = (spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
    if spec.dtype == "float64":
        return float64_tables(jnp, positions, *ladder)
    heads, tails = turn_constants(*ladder)
    return exact_turn_tables(jnp, positions, (np.asarray(heads, np.int32), np.asarray(tails, np.float32)))


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


_SMALL_TABLE_ENTRIES = 1 << 16  # up to this many entries per table: undivided on XLA:CPU


def _undivided_tables(positions: jax.Array, spec: TableSpec) -> jax.Array:
    """The tables stacked as [2, ..., L, R], written by one undivided XLA:CPU loop.

    XLA:CPU splits a large enough elementwise loop over its threads, which on small tables (decode)
    costs several times the work. A loop whose root is a dynamic-update-slice is never split, so the
    stacked tables are written into a buffer one table larger at a start index that is 0 at run
    time but not a compile-time constant (a constant one would turn it into a pad, which is split).
    """
    stacked = jnp.stack(_build_tables(positions, spec))
    first = positions.reshape(-1)[0]
    start = jnp.minimum((first != jnp.asarray(7, first.dtype)).astype(jnp.int32), 0)
    buffer = jnp.zeros((3, *stacked.shape[1:]), stacked.dtype)
    return lax.dynamic_update_slice_in_dim(buffer, stacked, start, axis=0)


def _tables_on_cpu(positions: jax.Array, spec: TableSpec) -> RopeTables:
    stacked = _own_fusion_on_cpu(functools.partial(_undivided_tables, spec=spec), positions, positions)
    return RopeTables(stacked[0], stacked[1])


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _tables(positions: jax.Array, spec: TableSpec) -> RopeTables:
    """The [..., L, R] tables, built once per call (on CPU in their own fusion: _own_fusion_on_cpu;
    small ones in one undivided loop: _undivided_tables)."""
    if not 0 < positions.size * spec.pairs <= _SMALL_TABLE_ENTRIES:
        return _own_fusion_on_cpu(functools.partial(_build_tables, spec=spec), positions, positions)
    return lax.platform_dependent(
        positions, cpu=functools.partial(_tables_on_cpu, spec=spec), default=functools.partial(_build_tables, spec=spec)
    )


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
    layout = _check_apply_tables(_meta(inputs), _meta(cos), _meta(sin), pairing, seq_axis)
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
    params = _check_call(
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
    params: CallParams = _check_qk_call(
        _meta(q, device=True),
        _meta(k, device=True),
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
