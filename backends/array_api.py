"""p-RoPE for any array API array (NumPy, array-api-strict, jax.numpy, torch, ...).

The public API of spec/SPEC.md ("API") over the shared helpers in ``_core.py``; outputs stay on
the input's device. The JAX and PyTorch backends add what their users need on top (jit, autodiff,
compile, in-place); this module is the plain, portable route.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
from p_rope._params import (  # vendor: inline
    ArrayMeta,
    CallParams,
    RopeTables,
    check_apply_tables,
    check_call,
    check_no_overlap,
    check_positions,
    check_qk_call,
    check_table_request,
    check_tables_type,
    check_writable,
    frequency_values,
    rotated_pair_count,
)
from p_rope.backends._core import (  # vendor: inline
    array_meta,
    as_positions,
    build_tables,
    copy_of,
    element_strides,
    position_blocks,
    positions_meta,
    quietly,
    rotate_immutable,
    rotate_into,
    table_blocks,
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
    spec = check_table_request(head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, "float32")
    name = table_dtype_name(dtype)
    if xp is None:
        import array_api_compat.numpy as xp
    values = frequency_values(spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
    return xp.asarray(values, dtype=getattr(xp, name), device=device)


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
    meta = check_positions(array_meta(positions))
    spec = check_table_request(head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, "float32")
    spec = spec._replace(dtype=table_dtype_name(dtype))
    xp = array_api_compat.array_namespace(positions)
    return build_tables(xp, as_positions(xp, positions, meta, positions), spec)


def apply_p_rope_tables(inputs: Any, tables: RopeTables, *, pairing: str = "split_half", seq_axis: int = -3) -> Any:
    """Rotate inputs by precomputed tables; see SPEC.md "API"."""
    check_tables_type(tables)
    cos, sin = tables
    layout = check_apply_tables(array_meta(inputs), array_meta(cos), array_meta(sin), pairing, seq_axis)
    xp = array_api_compat.array_namespace(inputs)
    if not array_api_compat.is_writeable_array(inputs):  # JAX: the rotation as one expression
        return rotate_immutable(xp, inputs, RopeTables(cos, sin), layout.pairing, layout.seq_axis)
    out = copy_of(xp, inputs)
    blocks = table_blocks(xp, RopeTables(cos, sin), inputs.ndim, layout.seq_axis)
    quietly(xp, rotate_into, xp, out, inputs, layout.pairs, layout.pairing, getattr(xp, layout.dtype), blocks)
    return out


def _rotate_at(xp: Any, out: Any, x: Any, positions: Any, params: CallParams) -> Any:
    """out (x itself, or a new array when None) with x's rotated lanes turned at positions: in
    blocks into a mutable array, as one expression for an immutable one (JAX)."""
    spec = params.spec
    if out is None and not array_api_compat.is_writeable_array(x):
        tables = build_tables(xp, positions, spec)
        return rotate_immutable(xp, x, tables, params.pairing, params.seq_axis)
    out = copy_of(xp, x) if out is None else out
    blocks = position_blocks(xp, positions, spec, x.ndim, params.seq_axis)
    quietly(xp, rotate_into, xp, out, x, spec.pairs, params.pairing, getattr(xp, spec.dtype), blocks)
    return out


def _metadata(inputs: Any, positions: Any) -> tuple[Any, Any, Any]:
    """(xp, the inputs' metadata, the positions' metadata) for the checks of p_rope._params."""
    meta = array_meta(inputs)
    xp = array_api_compat.array_namespace(inputs) if isinstance(meta, ArrayMeta) else None
    return xp, meta, positions_meta(xp, positions)


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
    xp, meta, positions_ = _metadata(inputs, positions)
    params = check_call(
        meta, positions_, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis
    )
    return _rotate_at(xp, None, inputs, as_positions(xp, positions, positions_, inputs), params)


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
    xp, meta, positions_ = _metadata(inputs, positions)
    params = check_call(
        meta, positions_, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis
    )
    if array_api_compat.is_jax_array(inputs):
        raise TypeError("apply_p_rope_ writes into inputs, and JAX arrays are immutable; use apply_p_rope")
    check_writable(getattr(getattr(inputs, "flags", None), "writeable", True) is not False)
    check_no_overlap(tuple(inputs.shape), element_strides(inputs))
    return _rotate_at(xp, inputs, inputs, as_positions(xp, positions, positions_, inputs), params)


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
    """apply_p_rope of q and k at the same positions; see SPEC.md "API"."""
    xp, meta, positions_ = _metadata(q, positions)
    params = check_qk_call(
        meta,
        array_meta(k),
        positions_,
        head_dim,
        max_wavelength,
        rope_percentage,
        rotated_pairs,
        scale_factor,
        pairing,
        seq_axis,
    )
    positions = as_positions(xp, positions, positions_, q)
    return _rotate_at(xp, None, q, positions, params), _rotate_at(xp, None, k, positions, params)
