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


def _array_meta(value: object) -> P.ArrayMeta | P.NotAnArray:
    if not isinstance(value, np.ndarray):
        return P.NotAnArray(type(value).__name__, "a numpy.ndarray")
    return P.ArrayMeta(value.dtype.name, value.shape)


def _positions(positions: object) -> tuple[np.ndarray | None, P.ArrayMeta | P.BadPositions]:
    """positions as an array (None where no array holds them as SPEC.md says) and their metadata.
    Python numbers and nested sequences become int64, float64 or bool (SPEC.md §4); an array of
    another library is converted by numpy.asarray."""
    if not (isinstance(positions, np.generic) or hasattr(positions, "__array__")):
        meta = P.python_positions(positions)
        if isinstance(meta, P.BadPositions) or meta.dtype == "object":
            return None, meta
        return np.asarray(positions, dtype=meta.dtype), meta
    array = np.asarray(positions)
    return array, P.ArrayMeta(array.dtype.name, array.shape)


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


def _rotated_frequencies(spec: P.TableSpec) -> np.ndarray:
    """freq_i = max_wavelength ** (-2 i / head_dim) / scale_factor for i < R, in float64.

    The paper evaluates 1 / max_wavelength ** (2 i / head_dim) in floating point, whose rounded
    exponent 2 i / head_dim alone costs up to ln(max_wavelength) ulps (8 ulps measured for
    max_wavelength = 1e7). The reference uses the correctly rounded value instead (computed to 50
    digits by _params.frequency_values), so that its angles, which SPEC.md's accuracy levels take
    as exact, carry only the rounding of position * frequency.
    """
    values = P.frequency_values(spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
    return np.array(values[: spec.pairs], dtype=np.float64)


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
    spec = P.check_table_request(
        head_dim,
        max_wavelength,
        rope_percentage,
        rotated_pairs,
        scale_factor,
        np.dtype(dtype).name,  # type: ignore[call-overload]
    )
    nope = np.zeros(spec.head_dim // 2 - spec.pairs)
    return np.concatenate([_rotated_frequencies(spec), nope]).astype(spec.dtype)


def _cos_sin(positions: np.ndarray, freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 cos and sin of angle = position * freq_i, positions.shape + (R,)."""
    angle = positions.astype(np.float64)[..., None] * freq
    with np.errstate(invalid="ignore"):  # non-finite positions give NaN angles (SPEC.md §6)
        return np.cos(angle), np.sin(angle)


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
    array, meta = _positions(positions)
    P.check_positions(meta)
    spec = P.check_table_request(
        head_dim,
        max_wavelength,
        rope_percentage,
        rotated_pairs,
        scale_factor,
        np.dtype(dtype).name,  # type: ignore[call-overload]
    )
    cos, sin = _cos_sin(array, _rotated_frequencies(spec))  # type: ignore[arg-type]
    return RopeTables(cos.astype(spec.dtype), sin.astype(spec.dtype))


def _lanes(head_dim: int, pairs: int, pairing: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first and second element of each rotated pair i < R."""
    i = np.arange(pairs)
    if pairing == "split_half":
        return i, i + head_dim // 2
    return 2 * i, 2 * i + 1


def _token_view(array: np.ndarray, rank: int, seq_axis: int, trailing: int) -> np.ndarray:
    """positions (trailing=0) or a table (trailing=1) laid out against the inputs' axes (P.token_shape)."""
    return array.reshape(P.token_shape(array.shape, rank, seq_axis, trailing))


def _block(array: np.ndarray, index: tuple) -> np.ndarray:
    return array[P.block_of(index, array.shape)]


_BLOCK_BYTES = 1 << 20  # float64 bytes of one rotated lane in a block


def _rotate_into(out: np.ndarray, inputs: np.ndarray, pairs: int, pairing: str, block_tables) -> None:
    """out's 2R rotated lanes = those of inputs turned by the float64 tables that
    block_tables(index) gives for each block index (token axes, P.token_blocks); every product in
    float64, rounded once to out's dtype. Temporaries are bounded by the block, whatever the size."""
    if pairs == 0:
        return
    first, second = _lanes(inputs.shape[-1], pairs, pairing)
    for index in P.token_blocks((*inputs.shape[:-1], pairs), 8, P.block_budget(_BLOCK_BYTES, inputs.nbytes)):
        cos, sin = block_tables(index)
        block = inputs[index]
        with np.errstate(invalid="ignore", over="ignore"):  # IEEE arithmetic on inf and NaN (SPEC.md §6)
            x1 = block[..., first].astype(np.float64)  # ml_dtypes warns when it widens a signaling NaN
            x2 = block[..., second].astype(np.float64)
            out1 = _round_once(x1 * cos - x2 * sin, inputs.dtype)
            out2 = _round_once(x2 * cos + x1 * sin, inputs.dtype)
        target = out[index]
        target[..., first] = out1
        target[..., second] = out2


def _rotate_at_positions(out: np.ndarray, inputs: np.ndarray, positions: np.ndarray, params: P.CallParams) -> None:
    """_rotate_into with the tables of each block built from its positions."""
    freq = _rotated_frequencies(params.spec)
    tokens = _token_view(positions, inputs.ndim, params.seq_axis, 0)
    _rotate_into(out, inputs, params.spec.pairs, params.pairing, lambda index: _cos_sin(_block(tokens, index), freq))


def apply_p_rope_tables(
    inputs: np.ndarray, tables: RopeTables, *, pairing: str = "split_half", seq_axis: int = -3
) -> np.ndarray:
    """Rotate inputs by precomputed tables (from p_rope_tables). Returns a new array. SPEC.md §5."""
    P.check_tables_type(tables)
    cos, sin = (np.asarray(t) for t in tables)
    layout = P.check_apply_tables(
        _array_meta(inputs),
        P.ArrayMeta(cos.dtype.name, cos.shape),
        P.ArrayMeta(sin.dtype.name, sin.shape),
        pairing,
        seq_axis,
    )
    cos_, sin_ = (_token_view(t, inputs.ndim, layout.seq_axis, 1) for t in (cos, sin))
    out = inputs.copy()
    _rotate_into(
        out,
        inputs,
        layout.pairs,
        layout.pairing,
        lambda index: (_block(cos_, index).astype(np.float64), _block(sin_, index).astype(np.float64)),
    )
    return out


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
    array, meta = _positions(positions)
    params = P.check_call(
        _array_meta(inputs),
        meta,
        head_dim,
        max_wavelength,
        rope_percentage,
        rotated_pairs,
        scale_factor,
        pairing,
        seq_axis,
    )
    out = inputs.copy()
    _rotate_at_positions(out, inputs, array, params)  # type: ignore[arg-type]
    return out


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
    array, meta = _positions(positions)
    params = P.check_call(
        _array_meta(inputs),
        meta,
        head_dim,
        max_wavelength,
        rope_percentage,
        rotated_pairs,
        scale_factor,
        pairing,
        seq_axis,
    )
    P.check_writable(inputs.flags.writeable)
    P.check_no_overlap(inputs.shape, tuple(stride // inputs.itemsize for stride in inputs.strides))
    _rotate_at_positions(inputs, inputs, array, params)  # type: ignore[arg-type]
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
    """apply_p_rope of q and of k (heads may differ, batch axes and L may not)."""
    array, meta = _positions(positions)
    params = P.check_qk_call(
        _array_meta(q),
        _array_meta(k),
        meta,
        head_dim,
        max_wavelength,
        rope_percentage,
        rotated_pairs,
        scale_factor,
        pairing,
        seq_axis,
    )
    q_out, k_out = q.copy(), k.copy()
    _rotate_at_positions(q_out, q, array, params)  # type: ignore[arg-type]
    _rotate_at_positions(k_out, k, array, params)  # type: ignore[arg-type]
    return q_out, k_out
