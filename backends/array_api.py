"""p-RoPE for any array API array (NumPy, array-api-strict, jax.numpy, torch, ...).

The public API of spec/SPEC.md ("API") over the shared helpers in ``_core.py``; outputs stay on
the input's device. The JAX and PyTorch backends add what their users need on top (jit, autodiff,
compile, in-place); this module is the plain, portable route.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
from p_rope._params import (  # vendor: inline
    RopeTables,
    check_same_batch,
    frequency_values,
    rotated_pair_count,
)
from p_rope.backends._core import (  # vendor: inline
    as_positions,
    build_tables,
    check_apply_tables,
    check_array,
    check_inputs,
    compute_dtype_name,
    dtype_name,
    expand_table,
    prepare,
    quietly,
    resolve,
    rotate,
    rotate_pairs,
    rotated_lane_slices,
    table_dtype_name,
)

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


def frequencies(
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    dtype: Any = None,
    xp: Any = None,
    device: Any = None,
) -> Any:
    """The [H/2] frequency vector; see SPEC.md "API". ``xp`` picks the array library (default NumPy)."""
    head_dim, w, pairs, scale = resolve(head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor)
    if xp is None:
        import array_api_compat.numpy as xp
    name = table_dtype_name(dtype)
    return xp.asarray(frequency_values(head_dim, w, pairs, scale), dtype=getattr(xp, name), device=device)


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
    """cos/sin tables [..., L, R] on positions' device; see SPEC.md "API"."""
    check_array(None, positions, "positions")
    xp = array_api_compat.array_namespace(positions)
    positions = as_positions(xp, positions, positions)
    head_dim, w, pairs, scale = resolve(head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor)
    return build_tables(xp, positions, head_dim, w, pairs, scale, table_dtype_name(dtype))


def apply_p_rope_tables(inputs: Any, tables: RopeTables, *, pairing: str = "split_half", seq_axis: int = -3) -> Any:
    """Rotate inputs by precomputed tables; see SPEC.md "API"."""
    pairing, seq_axis = check_apply_tables(inputs, tables, pairing, seq_axis)
    xp = array_api_compat.array_namespace(inputs)
    return quietly(xp, rotate, xp, inputs, RopeTables(*tables), pairing, seq_axis)


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
) -> Any:
    """p-RoPE of inputs [B..., L, N, H] at positions [B..., L]; see SPEC.md "API"."""
    xp, positions, params, pairing, seq_axis, compute = prepare(
        inputs, positions, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis
    )
    tables = build_tables(xp, positions, *params, compute)
    return quietly(xp, rotate, xp, inputs, tables, pairing, seq_axis)


def apply_p_rope_(
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
) -> Any:
    """In-place apply_p_rope (mutable array libraries only); see SPEC.md "API"."""
    xp, positions, params, pairing, seq_axis, compute = prepare(
        inputs, positions, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis
    )
    if array_api_compat.is_jax_array(inputs):
        raise TypeError("apply_p_rope_ writes into inputs, and JAX arrays are immutable; use apply_p_rope")
    if getattr(getattr(inputs, "flags", None), "writeable", True) is False:  # a read-only NumPy array
        raise ValueError("inputs is read-only; apply_p_rope_ writes into it")
    tables = build_tables(xp, positions, *params, compute)
    pairs = params[2]
    if pairs:
        first, second = rotated_lane_slices(inputs.shape[-1], pairs, pairing)
        cos, sin = expand_table(xp, tables.cos, seq_axis), expand_table(xp, tables.sin, seq_axis)
        o1, o2 = quietly(
            xp,
            rotate_pairs,
            xp.astype(inputs[..., first], cos.dtype),
            xp.astype(inputs[..., second], cos.dtype),
            cos,
            sin,
        )
        inputs[..., first] = xp.astype(o1, inputs.dtype)
        inputs[..., second] = xp.astype(o2, inputs.dtype)
    return inputs


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
) -> tuple[Any, Any]:
    """apply_p_rope of q and k sharing one table build; see SPEC.md "API"."""
    xp, positions, params, pairing, seq_axis, compute = prepare(
        q, positions, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis, "q"
    )
    check_inputs(k, params[0], "k")
    check_same_batch(tuple(q.shape), tuple(k.shape), seq_axis)
    if compute_dtype_name(dtype_name(k.dtype)) != compute:
        compute = "float64"
    tables = build_tables(xp, positions, *params, compute)
    return quietly(xp, rotate, xp, q, tables, pairing, seq_axis), quietly(xp, rotate, xp, k, tables, pairing, seq_axis)
