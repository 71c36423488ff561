"""p-RoPE for PyTorch tensors: SPEC.md's API, plus autograd, torch.compile, in-place and speed.

Same names, signatures, errors and accuracy as the NumPy reference (spec/SPEC.md, "API"). On top:

* autograd: the backward of a rotation is the inverse rotation; only the sin/cos tables are saved
  (the input too, only when the tables themselves require a gradient). Positions get no gradient.
* torch.compile(fullgraph=True): no graph break, no recompilation when position values change.
  The parameters (head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing,
  seq_axis) are compile-time constants; their arithmetic runs once, in Python, at trace time.
  If one compiled function is called with several parameter values (e.g. layers with different
  max_wavelength compiled one by one), compile it with ``dynamic=False``: with the default,
  dynamo turns a Python float that changed between calls into a symbolic value, which no exact
  parameter arithmetic can use.
* outputs on the input's device (CPU, CUDA, MPS, ...); positions and tables on another device are
  moved there. float16, bfloat16, float32 (computed in float32, rounded once) and float64.
* in place (``apply_p_rope_``): writes only the 2R rotated lanes of ``inputs`` and returns it.

Where each step lives: the checks in p_rope._params (memoized here per argument layout in eager
mode); the tables in ``_torch_tables`` (SPEC.md §8's float64 reduction on the CPU, its exact
reduction elsewhere); the rotation in ``_torch_rotation`` (one eager route, in chunks of
``_torch_chunks``, large CPU outputs on huge pages by ``_hugepages``; one compiled route). On CUDA
with Triton installed, the fused kernel of ``_triton`` does tables and rotation in one launch.

Shape letters: B... batch axes, L sequence, N heads, H head_dim, R rotated pairs.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from p_rope._params import (  # vendor: inline
    ArrayMeta,
    BadPositions,
    CallParams,
    Layout,
    NotAnArray,
    RopeTables,
    check_apply_tables,
    check_call,
    check_no_overlap,
    check_positions,
    check_qk_call,
    check_table_dtype,
    check_table_request,
    check_tables_type,
    frequency_values,
    python_positions,
    rotated_pair_count,
)
from p_rope.backends._core import memoized_checks  # vendor: inline
from p_rope.backends._torch_rotation import rotation, rotation_in_place  # vendor: inline
from p_rope.backends._torch_tables import torch_tables  # vendor: inline

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

# ---------------------------------------------------------------------------------------------
# metadata for the checks of p_rope._params (memoized per argument layout in eager mode, where the
# checks cost more than a small rotation; traced as they are under torch.compile)

_DTYPE_NAMES = {
    dtype: str(dtype).removeprefix("torch.")
    for dtype in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.uint8,
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.complex64,
        torch.complex128,
    )
}


def _torch_dtype_name(dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    return name if name is not None else str(dtype).removeprefix("torch.")


def _is_array(value: object) -> bool:
    return isinstance(value, torch.Tensor) or (hasattr(value, "shape") and hasattr(value, "dtype"))


def _meta(value: object, device: bool = False) -> ArrayMeta | NotAnArray:
    """A tensor's dtype name and shape (and device, where asked); SPEC.md's "not an array" otherwise,
    naming torch.Tensor when value is an array of another library."""
    if isinstance(value, torch.Tensor):
        return ArrayMeta(_torch_dtype_name(value.dtype), value.shape, value.device if device else None)
    return NotAnArray(type(value).__name__, "a torch.Tensor" if _is_array(value) else "an array")


def _positions_meta(positions: object) -> ArrayMeta | BadPositions:
    if isinstance(positions, torch.Tensor):
        return ArrayMeta(_torch_dtype_name(positions.dtype), positions.shape)
    if _is_array(positions):  # another library's array
        dtype = positions.dtype  # type: ignore[attr-defined]
        return ArrayMeta(str(getattr(dtype, "name", dtype)), tuple(positions.shape))  # type: ignore[attr-defined]
    return python_positions(positions)


def _positions_on(positions: object, meta: ArrayMeta, device: torch.device | None) -> torch.Tensor:
    """Checked positions as a tensor on device (None: where it is). Python values take meta's dtype
    (float64, the reference's precision, except on MPS, which has no float64); another library's
    array keeps its dtype."""
    if not isinstance(positions, torch.Tensor):
        if _is_array(positions):
            positions = torch.as_tensor(positions)
        else:
            dtype = getattr(torch, meta.dtype)
            if dtype == torch.float64 and device is not None and device.type == "mps":
                dtype = torch.float32
            positions = torch.as_tensor(positions, dtype=dtype)
    if device is not None and positions.device != device:
        positions = positions.to(device)
    return positions


_checked_call = memoized_checks(check_call, bypass=torch.compiler.is_compiling)
_checked_qk_call = memoized_checks(check_qk_call, bypass=torch.compiler.is_compiling)
_checked_request = memoized_checks(check_table_request, bypass=torch.compiler.is_compiling)
_checked_overlap = memoized_checks(check_no_overlap, bypass=torch.compiler.is_compiling)


def _table_checks(
    shape: Any,
    dtype: torch.dtype,
    cos_shape: Any,
    cos_dtype: Any,
    sin_shape: Any,
    sin_dtype: Any,
    pairing: Any,
    seq_axis: Any,
) -> Layout:
    names = (_torch_dtype_name(d) for d in (dtype, cos_dtype, sin_dtype))
    inputs, cos, sin = (ArrayMeta(n, s) for n, s in zip(names, (shape, cos_shape, sin_shape), strict=True))
    return check_apply_tables(inputs, cos, sin, pairing, seq_axis)


_checked_tables = memoized_checks(_table_checks, bypass=torch.compiler.is_compiling)


# ---------------------------------------------------------------------------------------------
# the fused CUDA route


def _fused(device: torch.device) -> Any:
    """The fused Triton kernel's module where device is CUDA and Triton imports, else None (and in
    the vendored single file, which does not carry it)."""
    if device.type != "cuda":
        return None
    try:
        from p_rope.backends import _triton
    except ImportError:
        return None
    return _triton if _triton.available(device) else None


def _apply(x: torch.Tensor, positions: torch.Tensor, params: CallParams, in_place: bool) -> torch.Tensor:
    """x rotated at positions (checked, on x's device), in place or into a new tensor."""
    fused = _fused(x.device)
    if fused is not None:
        spec = params.spec
        ladder = (spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
        return fused.fused_apply(x, positions, *ladder, params.pairing, params.seq_axis, in_place=in_place)
    cos, sin = torch_tables(positions, params.spec)
    if in_place:
        return rotation_in_place(x, cos, sin, params.pairing, params.seq_axis)
    return rotation(x, cos, sin, params.pairing, params.seq_axis)


# ---------------------------------------------------------------------------------------------
# public API (SPEC.md, "API")


def frequencies(
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The [H/2] angular frequencies (0 for NoPE pairs), float32 unless dtype=torch.float64."""
    spec = _checked_request(head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, "float32")
    dtype_ = _table_dtype(dtype)
    freq = frequency_values(spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
    return torch.tensor(freq, dtype=dtype_, device=device)


def _table_dtype(dtype: object) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        name = _torch_dtype_name(dtype)
    else:  # "float64", numpy.float64, numpy.dtype("float64")
        name = str(getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or dtype)
    return torch.float64 if check_table_dtype(name) == "float64" else torch.float32


def p_rope_tables(
    positions: Any,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    dtype: torch.dtype | None = None,
) -> RopeTables:
    """cos/sin tables positions.shape + (R,) on positions' device; dtype None: float32 (exact)."""
    meta = _positions_meta(positions) if _is_array(positions) else NotAnArray(type(positions).__name__)
    check_positions(meta)
    table_dtype = _table_dtype(dtype)
    spec = _checked_request(
        head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, _torch_dtype_name(table_dtype)
    )
    return torch_tables(_positions_on(positions, meta, None), spec)  # type: ignore[arg-type]


def apply_p_rope_tables(
    inputs: torch.Tensor, tables: RopeTables, *, pairing: str = "split_half", seq_axis: int = -3
) -> torch.Tensor:
    """Rotate inputs by precomputed tables (reusable for q and k and across layers)."""
    check_tables_type(tables)
    if not isinstance(inputs, torch.Tensor):
        check_apply_tables(_meta(inputs), ArrayMeta("", ()), ArrayMeta("", ()), pairing, seq_axis)
    cos, sin = tables
    if not isinstance(cos, torch.Tensor) or not isinstance(sin, torch.Tensor):
        cos, sin = (t if isinstance(t, torch.Tensor) else torch.as_tensor(t) for t in tables)
    layout = _checked_tables(inputs.shape, inputs.dtype, cos.shape, cos.dtype, sin.shape, sin.dtype, pairing, seq_axis)
    if cos.device != inputs.device or sin.device != inputs.device:
        cos, sin = cos.to(inputs.device), sin.to(inputs.device)
    fused = _fused(inputs.device)
    if fused is not None:
        return fused.fused_apply_tables(inputs, cos, sin, layout.pairing, layout.seq_axis)
    return rotation(inputs, cos, sin, layout.pairing, layout.seq_axis)


def apply_p_rope(
    inputs: torch.Tensor,
    positions: Any,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    pairing: str = "split_half",
    seq_axis: int = -3,
) -> torch.Tensor:
    """p-RoPE of inputs [B..., L, N, H] (or [B..., N, L, H] with seq_axis=-2) at positions
    [B..., L]: a new tensor of the input's dtype, shape and device."""
    meta = _positions_meta(positions)
    params = _checked_call(
        _meta(inputs), meta, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis
    )
    return _apply(inputs, _positions_on(positions, cast(ArrayMeta, meta), inputs.device), params, in_place=False)


def apply_p_rope_(
    inputs: torch.Tensor,
    positions: Any,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    pairing: str = "split_half",
    seq_axis: int = -3,
) -> torch.Tensor:
    """In-place apply_p_rope: writes only the 2R rotated lanes of inputs and returns inputs."""
    meta = _positions_meta(positions)
    params = _checked_call(
        _meta(inputs), meta, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis
    )
    _checked_overlap(inputs.shape, inputs.stride())
    return _apply(inputs, _positions_on(positions, cast(ArrayMeta, meta), inputs.device), params, in_place=True)


def apply_p_rope_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: Any,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    pairing: str = "split_half",
    seq_axis: int = -3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """apply_p_rope of q and k (heads may differ; batch axes and L may not), one table build."""
    meta = _positions_meta(positions)
    params = _checked_qk_call(
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
    positions_ = _positions_on(positions, cast(ArrayMeta, meta), q.device)
    if _fused(q.device) is not None:
        return _apply(q, positions_, params, in_place=False), _apply(k, positions_, params, in_place=False)
    cos, sin = torch_tables(positions_, params.spec)
    return rotation(q, cos, sin, params.pairing, params.seq_axis), rotation(
        k, cos, sin, params.pairing, params.seq_axis
    )
