"""The canonical NumPy reference of p-RoPE (spec/SPEC.md is the normative text).

Written for clarity, not speed: every quantity is computed in float64 and the result is rounded
once to the input dtype. It imports NumPy only. bfloat16 arrays (ml_dtypes) are accepted by
dtype name; ml_dtypes itself is never imported here.

Shapes: inputs [B..., L, N, H] (seq_axis=-3, Gemma) or [B..., N, L, H] (seq_axis=-2, HF);
positions broadcastable to [B..., L]; tables [B'..., L, R]. See SPEC.md, "Shapes".
"""

from __future__ import annotations

import numpy as np

from . import _params as P
from ._params import RopeTables

__all__ = [
    "RopeTables",
    "apply_p_rope",
    "apply_p_rope_",
    "apply_p_rope_qk",
    "apply_p_rope_tables",
    "frequencies",
    "p_rope_tables",
    "rotated_pair_count",
]

rotated_pair_count = P.rotated_pair_count


def _dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name


def _check_inputs(inputs: object, head_dim: int, argument: str = "inputs") -> np.ndarray:
    if not isinstance(inputs, np.ndarray):
        raise TypeError(f"{argument} must be a numpy.ndarray; got {type(inputs).__name__}")
    P.check_input_dtype(_dtype_name(inputs.dtype), argument)
    P.check_input_shape(inputs.shape, head_dim, argument)
    return inputs


def _check_positions(positions: object) -> np.ndarray:
    array = np.asarray(positions)
    name = array.dtype.name
    is_integer = name.startswith(("int", "uint"))
    if name == "bool" or not (is_integer or name.startswith(("float", "bfloat"))):
        raise TypeError(f"positions must have an integer or float32/float64 dtype; got dtype {name}")
    P.check_positions_dtype(name, is_integer)
    return array


def _check_table_dtype(dtype: object) -> np.dtype:
    name = np.dtype(dtype).name  # type: ignore[call-overload]
    if name not in P.POSITION_FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64; got {name}")
    return np.dtype(name)


def _round_once(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 values rounded once (to nearest, ties to even) to dtype.

    NumPy rounds float64 to float16 and float32 directly, but ml_dtypes converts float64 to
    bfloat16 through float32, which rounds twice. Rounding to float32 with round-to-odd first
    (truncate, then set the last bit when inexact) makes the second rounding the correct one:
    float32 carries 16 more significand bits than bfloat16 at every magnitude.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.dtype(dtype).name != "bfloat16":
            return values.astype(dtype)
        nearest = values.astype(np.float32)
        back = nearest.astype(np.float64)
        inexact = np.isfinite(values) & (back != values)
        toward_zero = np.where(inexact & (np.abs(back) > np.abs(values)), np.nextafter(nearest, np.float32(0)), nearest)
        bits = toward_zero.view(np.uint32) | inexact.astype(np.uint32)
        return bits.view(np.float32).astype(dtype)


def _resolve(
    head_dim: object, max_wavelength: object, rope_percentage: object, rotated_pairs: object, scale_factor: object
) -> tuple[int, float, int, float]:
    """Checked (H, w, R, scale_factor), in SPEC.md's order ("Errors")."""
    head_dim = P.check_head_dim(head_dim)
    pairs = P.resolve_rotated_pairs(head_dim, rope_percentage, rotated_pairs)  # type: ignore[arg-type]
    return head_dim, P.check_max_wavelength(max_wavelength), pairs, P.check_scale_factor(scale_factor)


def _rotated_frequencies(head_dim: int, max_wavelength: float, pairs: int, scale_factor: float) -> np.ndarray:
    """freq_i = max_wavelength ** (-2 i / head_dim) / scale_factor for i < R, in float64.

    The paper evaluates 1 / max_wavelength ** (2 i / head_dim) in floating point, whose rounded
    exponent 2 i / head_dim alone costs up to ln(max_wavelength) ulps (8 ulps measured for
    max_wavelength = 1e7). The reference uses the correctly rounded value instead (computed to 50
    digits by _params.frequency_values), so that its angles, which SPEC.md's accuracy levels take
    as exact, carry only the rounding of position * frequency.
    """
    return np.array(P.frequency_values(head_dim, max_wavelength, pairs, scale_factor)[:pairs], dtype=np.float64)


def frequencies(
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    dtype: object = np.float64,
) -> np.ndarray:
    """Angular frequency of each of the H/2 pairs, shape [H/2]; 0 for NoPE pairs. SPEC.md §2."""
    head_dim, w, pairs, scale = _resolve(head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor)
    dtype = _check_table_dtype(dtype)
    rotated = _rotated_frequencies(head_dim, w, pairs, scale)
    nope = np.zeros(head_dim // 2 - pairs)
    return np.concatenate([rotated, nope]).astype(dtype)


def _tables(positions: np.ndarray, head_dim: int, w: float, pairs: int, scale: float, dtype: np.dtype) -> RopeTables:
    """cos and sin of angle = position * freq_i (float64), positions.shape + (R,)."""
    angle = positions.astype(np.float64)[..., None] * _rotated_frequencies(head_dim, w, pairs, scale)
    with np.errstate(invalid="ignore"):  # non-finite positions give NaN angles (SPEC.md §6)
        return RopeTables(np.cos(angle).astype(dtype), np.sin(angle).astype(dtype))


def p_rope_tables(
    positions: object,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    dtype: object = np.float64,
) -> RopeTables:
    """cos and sin of the angles of the R rotated pairs, shape positions.shape + (R,). SPEC.md §5."""
    positions = _check_positions(positions)
    head_dim, w, pairs, scale = _resolve(head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor)
    return _tables(positions, head_dim, w, pairs, scale, _check_table_dtype(dtype))


def _lanes(head_dim: int, pairs: int, pairing: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first and second element of each rotated pair i < R."""
    i = np.arange(pairs)
    if pairing == "split_half":
        return i, i + head_dim // 2
    return 2 * i, 2 * i + 1


def _expand_tables(table: np.ndarray, seq_axis: int) -> np.ndarray:
    """[B'..., L, R] -> broadcastable against the rotated lanes [B..., L, N, R] / [B..., N, L, R]."""
    table = table.reshape((1,) * (2 - table.ndim) + table.shape)  # a scalar position: an L axis of 1
    return np.expand_dims(table, -2 if seq_axis == -3 else -3)


def _rotated_lanes(inputs: np.ndarray, tables: RopeTables, pairing: str, seq_axis: int):
    """The rotated lanes' indices and values: (first, second, out1, out2), out* in the input dtype."""
    head_dim = inputs.shape[-1]
    first, second = _lanes(head_dim, tables.cos.shape[-1], pairing)
    cos = _expand_tables(tables.cos.astype(np.float64), seq_axis)
    sin = _expand_tables(tables.sin.astype(np.float64), seq_axis)
    with np.errstate(invalid="ignore", over="ignore"):  # IEEE arithmetic on inf and NaN (SPEC.md §6)
        x1 = inputs[..., first].astype(np.float64)  # ml_dtypes warns when it widens a signaling NaN
        x2 = inputs[..., second].astype(np.float64)
        out1 = _round_once(x1 * cos - x2 * sin, inputs.dtype)
        out2 = _round_once(x2 * cos + x1 * sin, inputs.dtype)
    return first, second, out1, out2


def _check_apply(inputs, tables, pairing, seq_axis, argument="inputs"):
    if not isinstance(tables, tuple) or len(tables) != 2:
        raise TypeError(f"tables must be a RopeTables(cos, sin); got {type(tables).__name__}")
    cos, sin = (np.asarray(t) for t in tables)
    if not isinstance(inputs, np.ndarray):
        raise TypeError(f"{argument} must be a numpy.ndarray; got {type(inputs).__name__}")
    head_dim = inputs.shape[-1] if inputs.ndim else 0
    _check_inputs(inputs, head_dim, argument)
    pairing = P.check_pairing(pairing)
    seq_axis = P.check_seq_axis(seq_axis)
    P.check_tables(cos.shape, sin.shape, head_dim)
    P.check_tables_dtype(cos.dtype.name, inputs.dtype.name)
    P.check_positions_shape(cos.shape[:-1], inputs.shape, seq_axis, "tables")
    return RopeTables(cos, sin), pairing, seq_axis


def apply_p_rope_tables(
    inputs: np.ndarray, tables: RopeTables, *, pairing: str = "split_half", seq_axis: int = -3
) -> np.ndarray:
    """Rotate inputs by precomputed tables (from p_rope_tables). Returns a new array. SPEC.md §5."""
    tables, pairing, seq_axis = _check_apply(inputs, tables, pairing, seq_axis)
    first, second, out1, out2 = _rotated_lanes(inputs, tables, pairing, seq_axis)
    out = inputs.copy()
    out[..., first] = out1
    out[..., second] = out2
    return out


def _prepare(
    inputs: object,
    positions: object,
    head_dim: object,
    max_wavelength: object,
    rope_percentage: object,
    rotated_pairs: object,
    scale_factor: object,
    pairing: object,
    seq_axis: object,
    argument: str = "inputs",
) -> tuple[np.ndarray, tuple[int, float, int, float], str, int]:
    """Every check of apply_p_rope, in SPEC.md's order ("Errors"), before any work.

    Returns (positions array, (H, w, R, scale), pairing, seq_axis).
    """
    head_dim_ = P.check_head_dim(head_dim)
    array = _check_inputs(inputs, head_dim_, argument)
    params = _resolve(head_dim_, max_wavelength, rope_percentage, rotated_pairs, scale_factor)
    pairing_ = P.check_pairing(pairing)
    seq_axis_ = P.check_seq_axis(seq_axis)
    positions_ = _check_positions(positions)
    P.check_positions_shape(positions_.shape, array.shape, seq_axis_)
    return positions_, params, pairing_, seq_axis_


def apply_p_rope(
    inputs: np.ndarray,
    positions: object,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    pairing: str = "split_half",
    seq_axis: int = -3,
) -> np.ndarray:
    """p-RoPE of inputs [B..., L, N, H] at positions [B..., L]; a new array of the input dtype.

    Called as apply_p_rope(inputs, positions, head_dim, max_wavelength, rope_percentage) it is the
    paper's function. SPEC.md is the normative description of every argument.
    """
    positions, params, pairing, seq_axis = _prepare(
        inputs, positions, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis
    )
    tables = _tables(positions, *params, np.dtype(np.float64))
    return apply_p_rope_tables(inputs, tables, pairing=pairing, seq_axis=seq_axis)


def apply_p_rope_(
    inputs: np.ndarray,
    positions: object,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    pairing: str = "split_half",
    seq_axis: int = -3,
) -> np.ndarray:
    """In-place apply_p_rope: writes only the 2R rotated lanes of inputs and returns inputs."""
    positions, params, pairing, seq_axis = _prepare(
        inputs, positions, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis
    )
    if not inputs.flags.writeable:
        raise ValueError("inputs is read-only; apply_p_rope_ writes into it")
    tables = _tables(positions, *params, np.dtype(np.float64))
    first, second, out1, out2 = _rotated_lanes(inputs, tables, pairing, seq_axis)
    inputs[..., first] = out1
    inputs[..., second] = out2
    return inputs


def apply_p_rope_qk(
    q: np.ndarray,
    k: np.ndarray,
    positions: object,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    pairing: str = "split_half",
    seq_axis: int = -3,
) -> tuple[np.ndarray, np.ndarray]:
    """apply_p_rope of q and of k (heads may differ, batch axes and L may not), one table build."""
    positions, params, pairing, seq_axis = _prepare(
        q, positions, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis, "q"
    )
    _check_inputs(k, params[0], "k")
    P.check_same_batch(q.shape, k.shape, seq_axis)
    tables = _tables(positions, *params, np.dtype(np.float64))
    return (
        apply_p_rope_tables(q, tables, pairing=pairing, seq_axis=seq_axis),
        apply_p_rope_tables(k, tables, pairing=pairing, seq_axis=seq_axis),
    )
