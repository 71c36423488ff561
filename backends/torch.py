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
* speed (eager, the default): the sin/cos tables are built once per call at [..., L, R]. The two
  lanes of the rotated pairs are one strided [..., 2, R] view, so a rotation is three tensor
  operations (x c into the output, then the two sin terms) with no float32 temporaries; small
  inputs (2 MiB or less) take a clone and four one-lane operations, on views that are cheaper to
  make, per-call overhead dominating there. Out of place, inputs over 2 MiB go in chunks along L
  (and along the first batch axis where one row of L is larger: short sequences in a large batch),
  each copied whole (a plain copy) and its rotated lanes then overwritten while the chunk is in
  cache; with no NoPE lanes there is no copy, x c is written straight into the output. On a Linux
  CPU, outputs of 4 MiB and more are advised to the kernel as huge pages and first written by all
  intra-op threads at once (_empty_like; off with P_ROPE_MADVISE_HUGEPAGE=0). In place, only the
  rotated lanes are read and written, in chunks of 512 KiB of them. Temporaries (one lane of a
  chunk in place; the float32 rotated lanes of a chunk for 16-bit inputs) are bounded by the chunk
  size whatever B and L (the batch cut is along the first axis only). Checks are
  memoized per argument layout. Under torch.compile the rotation is the array-API core's
  expression, which the compiler fuses.

Tables (float32, SPEC.md's exact reduction modulo one turn; no float64 except on the CPU). The
revolutions of pair i per unit position, r_i = w**(-2i/H) / (2 pi s) < 1, come from the 50-digit
evaluation of p_rope._params as a 60-bit fixed-point integer F_i (exact to 2**-60).

* every device but the CPU (no float64: MPS has none, many GPUs run it slowly): for an integer
  position p, p F_i mod 2**60 is computed EXACTLY in int64 (F_i in two 30-bit halves, so that no
  product overflows for |p| < 2**33); real positions add their fraction on a 2**-30 grid. Both
  cos and sin come from one float32 sine, cos(2 pi t) = sin(2 pi (t + 1/4)): the turn fraction is
  reflected, exactly in integers, into [-1/4, 1/4] (sin(2 pi t) = sin(2 pi (1/2 - t))), converted
  to float32 once and multiplied by 2 pi held as two float32 numbers. Within SPEC.md's 2.5 float32
  units of the exact cos/sin (measured: at most 1.63 up to |p| = 2**24); 13 operations per entry.
* the CPU: the turns p * r_i in float64 (error below 2**-30 turn for |p| <= 2**24), their exact
  fraction, and sin in float64 rounded once to float32: within 0.6 float32 units; 5 operations,
  in chunks of positions whose float64 intermediates stay under 1 MiB (_TABLE_CHUNK_BYTES).

Both meet SPEC.md's strict level for |p| <= 2**24, integer or real. float64 computation (float64
inputs) uses float64 tables, cos/sin(p * freq), as the array-API core does.

Shape letters: B... batch axes, L sequence, N heads, H head_dim, R rotated pairs.
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import array_api_compat.torch
import torch
from p_rope._params import (  # vendor: inline
    ArrayMeta,
    BadPositions,
    Layout,
    NotAnArray,
    RopeTables,
    TableSpec,
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
    revolution_chunks,
    rotated_pair_count,
)
from p_rope.backends._core import (  # vendor: inline
    memoized_checks,
    rotate,
    rotate_pairs,
    rotated_lane_slices,
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
# per-pair constants: pure Python on static values, computed once per parameter set, outside any
# traced region (torch.compile takes the result as a constant)

_FIXED_BITS = 60
_HALF_BITS = 30
_HALF_MASK = (1 << _HALF_BITS) - 1
_TURN_MASK = (1 << _FIXED_BITS) - 1  # one turn = 2**60 units
_HALF_TURN = 1 << (_FIXED_BITS - 1)
_QUARTER_TURN = 1 << (_FIXED_BITS - 2)
_SINE_OFFSETS = (_HALF_TURN, _QUARTER_TURN)  # v = t + 1/4 for cos (t + 1/4) and sin (t)
_TURN_F32 = float(torch.tensor(2 * math.pi, dtype=torch.float32))  # 2 pi rounded to float32
_UNIT_ANGLE_HI = math.ldexp(_TURN_F32, -_FIXED_BITS)  # radians per 2**-60 turn, exact in float32
_UNIT_ANGLE_LO = math.ldexp(2 * math.pi - _TURN_F32, -_FIXED_BITS)
_FRACTION_BITS = 30  # real positions: fraction held on a 2**-30 grid (angle error < 2**-31 rad)


@functools.lru_cache(maxsize=256)
def _pair_constants_cached(head_dim: int, max_wavelength: float, pairs: int, scale_factor: float) -> _PairConstants:
    chunks = revolution_chunks(head_dim, max_wavelength, pairs, scale_factor)
    high: list[int] = []
    low: list[int] = []
    revolutions: list[float] = []
    for i in range(pairs):
        fixed = sum(int(math.ldexp(row[i], _FIXED_BITS)) for row in chunks[1:])
        high.append(fixed >> _HALF_BITS)
        low.append(fixed & _HALF_MASK)
        revolutions.append(math.ldexp(float(fixed), -_FIXED_BITS))  # correctly rounded: int -> float
    whole = tuple(chunks[0]) if any(chunks[0]) else None  # w < 1 only: a pair turns more than once
    whole_mod = None if whole is None else tuple(int(w) & _HALF_MASK for w in whole)
    freq = tuple(frequency_values(head_dim, max_wavelength, pairs, scale_factor)[:pairs])
    return _PairConstants(tuple(high), tuple(low), tuple(revolutions), whole, whole_mod, freq)


class _PairConstants(NamedTuple):
    """Per-pair constants of the R rotated pairs: the revolutions per unit position r_i = W_i + F_i,
    F_i as 60-bit fixed point F = high * 2**30 + low (to 2**-60) and as float64 numbers, the whole
    turns W_i (float64, and modulo 2**30) where some W_i is not 0 (w < 1; None otherwise), and the
    float64 angular frequencies."""

    high: tuple[int, ...]
    low: tuple[int, ...]
    revolutions: tuple[float, ...]
    whole: tuple[float, ...] | None
    whole_mod: tuple[int, ...] | None
    freq: tuple[float, ...]


@torch.compiler.assume_constant_result
def _pair_constants(head_dim: int, max_wavelength: float, pairs: int, scale_factor: float) -> _PairConstants:
    """_PairConstants of (H, w, R, s), computed once per parameter set."""
    return _pair_constants_cached(head_dim, max_wavelength, pairs, scale_factor)


@functools.lru_cache(maxsize=256)
def _device_constant(values: tuple[Any, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


def _constant(values: tuple[Any, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor on device: cached in eager mode, a graph constant when compiling."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    return _device_constant(values, dtype, device)


# ---------------------------------------------------------------------------------------------
# tables


def _turns_fixed(n: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """n * F mod 2**60 (up to a multiple of 2**60) for int64 n [..., 1] and F = high * 2**30 + low
    [R], exact in int64 for |n| < 2**33: (n high mod 2**30) 2**30 + n low < 2**61."""
    wrapped = torch.bitwise_and(n * high, _HALF_MASK)
    return torch.add(n * low, wrapped, alpha=1 << _HALF_BITS)


def _exact_float32_tables(
    positions: torch.Tensor, high: torch.Tensor, low: torch.Tensor, whole_mod: torch.Tensor | None
) -> RopeTables:
    """float32 cos/sin of 2 pi frac(position * r_i), within 2.5 float32 units; see the module docstring.

    Both come from one sine: cos(2 pi t) = sin(2 pi (t + 1/4)). With v = (t + 1/4) mod 1 and
    d = v - 1/2 in [-1/2, 1/2), sin(2 pi t) = sin(2 pi (1/4 - |d|)) (a reflection, exact in
    integers), whose argument lies in [-pi/2, pi/2]: one conversion to float32, one product by
    2 pi (in two float32 pieces) and one float32 sine.
    """
    device = positions.device
    finite = None
    if positions.dtype.is_floating_point:
        whole = torch.floor(positions)
        fraction = positions - whole  # exact
        finite = torch.isfinite(positions)[..., None]
        # n F mod 2**60 depends on n mod 2**60 only; fmod is exact
        whole = torch.fmod(whole, float(1 << _FIXED_BITS)).nan_to_num(0.0, 0.0, 0.0).to(torch.int64)
        turns = _turns_fixed(whole[..., None], high, low)
        f = torch.round(fraction * float(1 << _FRACTION_BITS)).nan_to_num(0.0, 0.0, 0.0).to(torch.int64)[..., None]
        turns = turns + f * high + torch.bitwise_right_shift(f * low, _FRACTION_BITS)  # + f F / 2**30
        if whole_mod is not None:  # + f W / 2**30 (w < 1), which depends on W mod 2**30 only
            turns = turns + torch.bitwise_and(f * whole_mod, _HALF_MASK) * (1 << _HALF_BITS)
    else:
        turns = _turns_fixed(positions.to(torch.int64)[..., None], high, low)
    # [2, ..., R]: v = (t + 1/2) mod 1 (cos), (t + 1/4) mod 1 (sin); then d = v - 1/2
    offsets = _constant(_nested(_SINE_OFFSETS, turns.dim()), torch.int64, device)  # [2, 1, ...]
    shifted = torch.bitwise_and(turns + offsets, _TURN_MASK)
    reduced = torch.abs(shifted.sub_(_HALF_TURN)).neg_().add_(_QUARTER_TURN).to(torch.float32)  # 1/4 - |d|
    angle = reduced * _UNIT_ANGLE_HI
    values = torch.sin_(angle.add_(reduced, alpha=_UNIT_ANGLE_LO))
    if finite is not None:  # non-finite positions give NaN (SPEC.md)
        values = torch.where(finite, values, math.nan)
    return RopeTables(values[0], values[1])


def _float64_turns(positions: torch.Tensor, revolutions: torch.Tensor, whole: torch.Tensor | None) -> torch.Tensor:
    """frac(p F_i) (+ frac(frac(p) W_i) for real positions where some W_i is not 0: the whole
    turns of n W_i drop out for an integer n), in float64; NaN for non-finite positions."""
    turns = torch.mul(positions, revolutions).frac_()
    if whole is not None and positions.dtype.is_floating_point:
        turns += torch.mul(positions - positions.floor(), whole).frac_()
    return turns


def _float64_turn_tables(positions: torch.Tensor, revolutions: torch.Tensor, whole: torch.Tensor | None) -> RopeTables:
    """float32 cos/sin of 2 pi frac(position * r_i) through float64 (the CPU route, where float64
    runs at full speed): the turns p r_i carry an error below 2**-30 turn for |p| <= 2**24, their
    fraction is exact, so the tables are within 0.6 float32 units. Five operations, in chunks of
    positions whose float64 intermediates stay under _TABLE_CHUNK_BYTES."""
    pairs = revolutions.shape[-1]
    offsets = _constant(_nested(_ANGLE_OFFSETS, 2), torch.float64, revolutions.device)  # [2, 1, 1]
    flat = positions.reshape(-1, 1)
    rows = max(1, _TABLE_CHUNK_BYTES // (16 * max(1, pairs)))  # float64 angles [2, rows, R]: 16 bytes a pair
    if flat.shape[0] <= rows or torch.compiler.is_compiling():  # one chunk; a compiler fuses the expression
        turns = _float64_turns(flat, revolutions, whole)
        values = torch.sin_(torch.add(offsets, turns, alpha=2 * math.pi)).to(torch.float32)
        return RopeTables(*values.view(2, *positions.shape, pairs).unbind(0))
    out = torch.empty((2, *positions.shape, pairs), dtype=torch.float32, device=revolutions.device)
    flat_out = out.view(2, flat.shape[0], pairs)
    for start in range(0, flat.shape[0], rows):
        turns = _float64_turns(flat[start : start + rows], revolutions, whole)
        flat_out[:, start : start + rows].copy_(torch.add(offsets, turns, alpha=2 * math.pi).sin_())
    return RopeTables(out[0], out[1])


# The CPU table build goes in chunks of positions whose float64 intermediates take at most this
# many bytes: the allocator hands back small blocks warm, while a large one is mapped afresh by the
# kernel on most calls, a page fault per 4 KiB, which costs as much as the build (BENCHMARKS.md).
_TABLE_CHUNK_BYTES = 1 << 20


def _nested(values: tuple[Any, ...], depth: int) -> tuple[Any, ...]:
    """values as a tuple nested to shape (len(values), 1, ..., 1) with depth ones."""
    nested = _NESTED.get((values, depth))
    if nested is not None:
        return nested
    for _ in range(depth):
        values = tuple((value,) for value in values)
    return values


_ANGLE_OFFSETS = (math.pi / 2, 0.0)  # cos(a) = sin(a + pi/2)
_NESTED: dict[tuple[tuple[Any, ...], int], tuple[Any, ...]] = {}
_NESTED.update({(v, d): _nested(v, d) for v in (_ANGLE_OFFSETS, _SINE_OFFSETS) for d in range(1, 9)})
_FLOAT64_TABLE_DEVICES = ("cpu",)  # devices whose float32 tables go through float64 (fast there)


def _tables(positions: torch.Tensor, spec: TableSpec) -> RopeTables:
    """cos/sin tables positions.shape + (R,) of spec.dtype, on positions' device.

    float32: the exact reduction modulo one turn, in float64 on the CPU and in int64/float32
    elsewhere (no float64: MPS has none, many GPUs run it slowly); float64: cos/sin of the float64
    angle position * freq, as the array-API core computes it.
    """
    constants = _pair_constants(spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
    device = positions.device
    if spec.dtype == "float64":
        angle = positions.to(torch.float64)[..., None] * _constant(constants.freq, torch.float64, device)
        return RopeTables(torch.cos(angle), torch.sin(angle))
    if device.type in _FLOAT64_TABLE_DEVICES:
        whole = None if constants.whole is None else _constant(constants.whole, torch.float64, device)
        return _float64_turn_tables(positions, _constant(constants.revolutions, torch.float64, device), whole)
    whole_mod = None if constants.whole_mod is None else _constant(constants.whole_mod, torch.int64, device)
    high, low = (_constant(c, torch.int64, device) for c in (constants.high, constants.low))
    return _exact_float32_tables(positions, high, low, whole_mod)


# ---------------------------------------------------------------------------------------------
# rotation


def _heads_first_lanes(x: torch.Tensor, pairs: int, pairing: str, seq_axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, B..., L, R] views of the first and second elements of the R rotated pairs of x
    [B..., L, N, H] (or [B..., N, L, H] with seq_axis=-2): heads first, tables [B'..., L, R]
    broadcast against them as they are, with no view of their own. Eager mode only."""
    shape, stride, offset = x.shape, x.stride(), x.storage_offset()
    heads, lane = x.dim() + (-2 if seq_axis == -3 else -3), stride[-1]
    size = (shape[heads], *shape[:heads], *shape[heads + 1 : -1], pairs)
    strides = (stride[heads], *stride[:heads], *stride[heads + 1 : -1], lane if pairing == "split_half" else 2 * lane)
    second = offset + (lane * (shape[-1] // 2) if pairing == "split_half" else lane)
    return x.as_strided(size, strides, offset), x.as_strided(size, strides, second)


def _lanes(x: torch.Tensor, pairs: int, pairing: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the first and second elements of the R rotated pairs."""
    first, second = rotated_lane_slices(x.shape[-1], pairs, pairing)
    return x[..., first], x[..., second]


def _pair_view(x: torch.Tensor, pairs: int, pairing: str) -> torch.Tensor:
    """[..., 2, R] view of the rotated lanes of x [..., H]: [..., 0, :] the first elements of the
    pairs, [..., 1, :] the second (one tensor, so that one operation covers both lanes)."""
    if torch.compiler.is_compiling():  # no strides or storage offsets in a traced graph
        if pairing == "split_half":
            return x.unflatten(-1, (2, x.shape[-1] // 2))[..., :pairs]
        return x[..., : 2 * pairs].unflatten(-1, (pairs, 2)).transpose(-1, -2)
    stride = x.stride()  # one as_strided call, where unflatten and slicing take three
    lane = stride[-1]
    tail = (lane * (x.shape[-1] // 2), lane) if pairing == "split_half" else (lane, 2 * lane)
    return x.as_strided((*x.shape[:-1], 2, pairs), stride[:-1] + tail, x.storage_offset())


def _expand(table: torch.Tensor, seq_axis: int) -> torch.Tensor:
    """[B'..., L, R] -> [B'..., L, 1, R] (seq_axis=-3) or [B'..., 1, L, R] (seq_axis=-2); [R]: L = 1."""
    if table.dim() == 1:
        table = table.unsqueeze(0)
    return table.unsqueeze(-2 if seq_axis == -3 else -3)


def _table_views(cos: torch.Tensor, sin: torch.Tensor, seq_axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(c2, s): cos [B'..., L, R] viewed to broadcast against a pair view [B..., L, N, 2, R] (or
    [B..., N, L, 2, R] with seq_axis=-2), sin against one lane [..., R]; tables [R]: L = 1. Views
    that only insert dimensions of size 1 exist for any strides."""
    shape = cos.shape
    lead, length, pairs = shape[:-2], (shape[-2] if len(shape) > 1 else 1), shape[-1]
    if seq_axis == -3:
        return cos.view(*lead, length, 1, 1, pairs), sin.view(*lead, length, 1, pairs)
    return cos.view(*lead, 1, length, 1, pairs), sin.view(*lead, 1, length, pairs)


# Inputs are cut along L (and the first batch axis, _chunks) into chunks of about this many bytes:
# out of place, each chunk is copied, then rotated while it and its output are still in cache.
# Larger chunks fall out of cache; smaller ones pay more per-call overhead (a few microseconds per
# operation) and leave an intra-op thread idle (torch splits an operation only above 32768
# elements). Measured best on the 2-core CPU of BENCHMARKS.md. In place, the chunk is the rotated
# lanes alone.
_CHUNK_BYTES = 1 << 21
_IN_PLACE_CHUNK_BYTES = 1 << 19


def _chunks(
    measure: torch.Tensor, seq_axis: int, batched: bool, chunk_bytes: int, *pieces: tuple[torch.Tensor, int]
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Tuples of the pieces (each a tensor and its L dimension, counted from the right) cut in chunks
    of about chunk_bytes of ``measure`` (whose L dimension is seq_axis): along L; where one row of L
    is larger than that (a short sequence in a large batch) and ``batched`` (the first axis is a
    batch axis), along the first axis too: several whole sequences per chunk, or one batch row's
    sequence cut along L. A piece of size 1 on a cut dimension, or without it (a broadcast table), is
    repeated in every chunk."""
    length = measure.shape[seq_axis]
    row_bytes = measure.numel() // length * measure.element_size() if length else 0
    if row_bytes <= chunk_bytes or not batched or measure.shape[0] <= 1:
        yield from _blocks(max(1, chunk_bytes // row_bytes) if row_bytes else max(1, length), length, *pieces)
        return
    batch = measure.shape[0]
    batch_row_bytes = row_bytes // batch  # one row of L of one batch row
    if batch_row_bytes * length <= chunk_bytes:
        batch_rows, rows = chunk_bytes // (batch_row_bytes * length), length
    else:
        batch_rows, rows = 1, max(1, chunk_bytes // batch_row_bytes)
    lead = measure.dim() + seq_axis  # dimensions before L
    for part in _blocks(batch_rows, batch, *((t, d - lead) for t, d in pieces)):
        yield from _blocks(rows, length, *zip(part, (d for _, d in pieces), strict=True))


def _blocks(rows: int, length: int, *pieces: tuple[torch.Tensor, int]) -> Iterator[tuple[torch.Tensor, ...]]:
    """Tuples of the tensors cut along their given dimension in blocks of ``rows`` of ``length``; a
    tensor of size 1 there, or without that dimension (a broadcast table), is repeated in every tuple."""
    count = max(1, -(-length // rows))
    parts = [t.split(rows, dim) if t.dim() >= -dim and t.shape[dim] != 1 else (t,) * count for t, dim in pieces]
    return zip(*parts, strict=True)


def _rotate_block(
    xr: torch.Tensor, c2: torch.Tensor, s: torch.Tensor, out: torch.Tensor | None, direction: float
) -> torch.Tensor:
    """out = xr rotated, (x1 c - d x2 s, x2 c + d x1 s) with d = direction = +-1, for pair views
    xr, out [..., 2, R] (_pair_view) and tables c2, s (_table_views); computed in the tables' dtype
    and rounded once to out's. out may be xr itself (in place), or None: a new tensor in the
    tables' dtype. Returns out."""
    a, b = xr.unbind(-2)
    if out is xr and a.dtype == c2.dtype:  # in place: x1 is still read after x2 is written
        c = c2.select(-2, 0)
        t1 = torch.mul(a, c).addcmul_(b, s, value=-direction)
        b.mul_(c).addcmul_(a, s, value=direction)
        a.copy_(t1)
        return out
    direct = out is not None and out.dtype == c2.dtype and out is not xr
    t = torch.mul(xr, c2, out=out) if direct else torch.mul(xr, c2)  # 16-bit x: promoted to float32
    o1, o2 = t.unbind(-2)
    o1.addcmul_(b, s, value=-direction)
    o2.addcmul_(a, s, value=direction)
    if out is None:
        return t
    if not direct:  # a wider computation dtype, rounded once; or in place
        out.copy_(t)
    return out


def _rotate_lanes(
    x1: torch.Tensor,
    x2: torch.Tensor,
    c: torch.Tensor,
    s: torch.Tensor,
    o1: torch.Tensor,
    o2: torch.Tensor,
    direction: float,
) -> None:
    """(o1, o2) = (x1 c - d x2 s, x2 c + d x1 s), d = direction, for heads-first lane views x1, x2,
    o1, o2 [N, B..., L, R] (_heads_first_lanes) and the tables c, s [B'..., L, R] as they are;
    computed in the tables' dtype and rounded once to o1's; the o lanes must not overlap the x
    lanes. Four operations and four views, against three operations and six views (two pair views,
    their lanes, two table views) for the pair view: small inputs, where per-call overhead
    dominates."""
    if o1.dtype == c.dtype:
        torch.mul(x1, c, out=o1).addcmul_(x2, s, value=-direction)
        torch.mul(x2, c, out=o2).addcmul_(x1, s, value=direction)
    else:  # a wider computation dtype, rounded once
        o1.copy_(torch.mul(x1, c).addcmul_(x2, s, value=-direction))
        o2.copy_(torch.mul(x2, c).addcmul_(x1, s, value=direction))


_HUGE_PAGE_BYTES = 1 << 21
_ADVISE_MIN_BYTES = 1 << 22  # NumPy's threshold for the same advice
_TOUCH_STRIDE = 1 << 10  # bytes between first writes: under a 4 KiB page, and enough writes for every thread
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


@functools.cache
def _madvise() -> Any:
    """libc's madvise where the kernel gives transparent huge pages on request (Linux, THP "always" or
    "madvise"), else None. Off when the environment sets P_ROPE_MADVISE_HUGEPAGE=0 (as NumPy's
    NUMPY_MADVISE_HUGEPAGE=0 does for NumPy's arrays)."""
    if not sys.platform.startswith("linux") or os.environ.get("P_ROPE_MADVISE_HUGEPAGE", "1") == "0":
        return None
    try:
        with open(_THP_SETTING, encoding="ascii") as setting:
            if "[never]" in setting.read():
                return None
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    """torch.empty_like(x); on the CPU, a large output's memory is advised to the kernel as huge
    pages (as NumPy does for its arrays), then first written by every intra-op thread at once (one
    byte per KiB). A first write to fresh memory takes a page fault, per 4 KiB page otherwise, which
    costs about as much as a copy of the data; taken chunk by chunk, with two threads meeting on the
    same huge page, more (BENCHMARKS.md). Advice only: a kernel that refuses it changes nothing."""
    out = torch.empty_like(x)
    storage = out.untyped_storage()
    nbytes = storage.nbytes()
    if out.device.type != "cpu" or nbytes < _ADVISE_MIN_BYTES:
        return out
    madvise = _madvise()
    if madvise is not None:
        start = storage.data_ptr()
        first = -(-start // _HUGE_PAGE_BYTES) * _HUGE_PAGE_BYTES
        last = (start + nbytes) // _HUGE_PAGE_BYTES * _HUGE_PAGE_BYTES
        if last > first and madvise(first, last - first, mmap.MADV_HUGEPAGE) == 0:
            torch.empty(0, dtype=torch.uint8).set_(storage)[::_TOUCH_STRIDE].zero_()
    return out


def _rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, seq_axis: int, direction: float
) -> torch.Tensor:
    """A new tensor: x rotated by the tables (direction -1: the inverse rotation); NoPE lanes copied.

    Small inputs: a clone, then four operations on its rotated lanes (per-call overhead dominates).
    Large inputs go in chunks (_chunks): each chunk is copied whole (a plain copy of contiguous rows),
    then its rotated lanes are overwritten while it is in cache; without NoPE lanes, no copy.
    """
    pairs = cos.shape[-1]
    if torch.compiler.is_compiling():  # the array-API core, which the compiler fuses
        return rotate(array_api_compat.torch, x, RopeTables(cos, sin if direction > 0 else -sin), pairing, seq_axis)
    if pairs == 0 or x.numel() * x.element_size() <= _CHUNK_BYTES:
        if 2 * pairs == x.shape[-1] and pairing == "split_half" and x.dtype == cos.dtype:
            # every lane rotated: no copy; the product x c, laid out as x, becomes the output
            c2, s = _table_views(cos, sin, seq_axis)
            return _rotate_block(_pair_view(x, pairs, pairing), c2, s, None, direction).flatten(-2)
        out = x.clone()
        if pairs:
            lanes = _heads_first_lanes(x, pairs, pairing, seq_axis) + _heads_first_lanes(out, pairs, pairing, seq_axis)
            _rotate_lanes(lanes[0], lanes[1], cos, sin, lanes[2], lanes[3], direction)
        return out
    c2, s = _table_views(cos, sin, seq_axis)
    out = _empty_like(x)
    copy = 2 * pairs < x.shape[-1]  # NoPE lanes to copy
    xr, outr = _pair_view(x, pairs, pairing), _pair_view(out, pairs, pairing)
    pieces = (
        (x, seq_axis),
        (out, seq_axis),
        (xr, seq_axis - 1),
        (outr, seq_axis - 1),
        (c2, seq_axis - 1),
        (s, seq_axis),
    )
    for xc, oc, xrc, orc, cc, sc in _chunks(x, seq_axis, x.dim() > 3, _CHUNK_BYTES, *pieces):
        if copy:
            oc.copy_(xc)
        _rotate_block(xrc, cc, sc, orc, direction)
    return out


def _rotate_in_place(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, seq_axis: int) -> None:
    """Rotate the 2R rotated lanes of x where they are, in chunks (_chunks); NoPE lanes untouched."""
    pairs = cos.shape[-1]
    if not pairs or x.numel() == 0:
        return
    xr = _pair_view(x, pairs, pairing)
    c2, s = _table_views(cos, sin, seq_axis)
    if torch.compiler.is_compiling():
        a, b = xr.to(c2.dtype).unbind(-2)
        o1, o2 = rotate_pairs(a, b, c2.select(-2, 0), s)
        xr.copy_(torch.stack((o1, o2), -2))
        return
    pieces = ((xr, seq_axis - 1), (c2, seq_axis - 1), (s, seq_axis))
    for xrc, cc, sc in _chunks(xr, seq_axis - 1, x.dim() > 3, _IN_PLACE_CHUNK_BYTES, *pieces):
        _rotate_block(xrc, cc, sc, xrc, 1.0)


def _table_gradients(
    grad: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, pairing: str, seq_axis: int, direction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the tables of a rotation of x, given the gradient of its output."""
    pairs = cos.shape[-1]
    g1, g2 = (lane.to(cos.dtype) for lane in _lanes(grad, pairs, pairing))
    x1, x2 = (lane.to(cos.dtype) for lane in _lanes(x, pairs, pairing))
    shape = _expand(cos, seq_axis).shape
    grad_cos = (g1 * x1 + g2 * x2).sum_to_size(shape).reshape(cos.shape)
    grad_sin = ((g2 * x1 - g1 * x2) * direction).sum_to_size(shape).reshape(cos.shape)
    return grad_cos, grad_sin


class _Rotation(torch.autograd.Function):
    """Rotation by tables whose backward is the inverse rotation (saved: the tables)."""

    @staticmethod
    def forward(
        x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, seq_axis: int, direction: float
    ) -> torch.Tensor:
        return _rotate(x, cos, sin, pairing, seq_axis, direction)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, cos, sin, pairing, seq_axis, direction = inputs
        ctx.pairing, ctx.seq_axis, ctx.direction = pairing, seq_axis, direction
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            ctx.save_for_backward(cos, sin, x)
        else:
            ctx.save_for_backward(cos, sin)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cos, sin = ctx.saved_tensors[:2]
        grad_x = grad_cos = grad_sin = None
        if ctx.needs_input_grad[0]:
            grad_x = _Rotation.apply(grad, cos, sin, ctx.pairing, ctx.seq_axis, -ctx.direction)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_cos, grad_sin = _table_gradients(
                grad, ctx.saved_tensors[2], cos, ctx.pairing, ctx.seq_axis, ctx.direction
            )
        return grad_x, grad_cos, grad_sin, None, None, None


def _apply_rotation(x: torch.Tensor, tables: RopeTables, pairing: str, seq_axis: int) -> torch.Tensor:
    cos, sin = tables
    return _rotation(x, cos, sin, pairing, seq_axis)


def _rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, seq_axis: int) -> torch.Tensor:
    """x rotated by the tables: through autograd where a gradient is wanted, else directly."""
    if torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad or sin.requires_grad):
        return _Rotation.apply(x, cos, sin, pairing, seq_axis, 1.0)
    return _rotate(x, cos, sin, pairing, seq_axis, 1.0)


def _apply_rotation_in_place(x: torch.Tensor, tables: RopeTables, pairing: str, seq_axis: int) -> torch.Tensor:
    cos, sin = tables
    if torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad or sin.requires_grad):
        pairs = cos.shape[-1]
        if pairs:
            rotated = _Rotation.apply(x, cos, sin, pairing, seq_axis, 1.0)
            for target, source in zip(_lanes(x, pairs, pairing), _lanes(rotated, pairs, pairing), strict=True):
                target.copy_(source)
        return x
    _rotate_in_place(x, cos, sin, pairing, seq_axis)
    return x


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
    freq = _pair_constants(spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor).freq
    return torch.tensor(freq + (0.0,) * (spec.head_dim // 2 - spec.pairs), dtype=dtype_, device=device)


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
    return _tables(_positions_on(positions, meta, None), spec)  # type: ignore[arg-type]


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
    return _rotation(inputs, cos, sin, layout.pairing, layout.seq_axis)


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
    tables = _tables(_positions_on(positions, meta, inputs.device), params.spec)  # type: ignore[arg-type]
    return _apply_rotation(inputs, tables, params.pairing, params.seq_axis)


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
    tables = _tables(_positions_on(positions, meta, inputs.device), params.spec)  # type: ignore[arg-type]
    return _apply_rotation_in_place(inputs, tables, params.pairing, params.seq_axis)


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
    tables = _tables(_positions_on(positions, meta, q.device), params.spec)  # type: ignore[arg-type]
    return _apply_rotation(q, tables, params.pairing, params.seq_axis), _apply_rotation(
        k, tables, params.pairing, params.seq_axis
    )
