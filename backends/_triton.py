"""p-RoPE for PyTorch tensors in one fused Triton kernel (the torch backend's CUDA route).

One launch per call: each program takes a block of tokens and heads, reads every rotated pair once,
writes the rotated pair, and copies the NoPE lanes (out of place) or leaves them untouched (in
place). The cos/sin of each (token, pair) are computed inside the kernel from the positions, once
per token and shared by the heads of the block (no table tensor in memory), or read from
precomputed tables. Results meet SPEC.md's strict level (§8) for |position| <= 2**24, integer or
real, in every dtype.

Functions (arguments are NOT validated here: the caller, ``p_rope.backends.torch``, has run every
check of SPEC.md §9 first):

* ``available(device)``: whether the functions below can run tensors on ``device``.
* ``fused_apply(x, positions, head_dim, max_wavelength, pairs, scale_factor, pairing, seq_axis,
  in_place=False)``: SPEC.md's ``apply_p_rope`` (``apply_p_rope_`` with ``in_place=True``).
* ``fused_apply_tables(x, cos, sin, pairing, seq_axis, in_place=False)``: ``apply_p_rope_tables``.

Both are ``torch.library.triton_op`` custom ops underneath (namespace ``p_rope``), so
``torch.compile(fullgraph=True)`` traces them without a graph break and inductor launches the same
kernel. Autograd: the gradient of a rotation is the inverse rotation, i.e. the same kernel at
-positions, run as the same kernel with the sine negated (exactly the angle of -position); the
tables entry also gives gradients of cos and sin (plain torch operations). Positions get no gradient.

Tables inside the kernel: float32 tables by SPEC.md §8's "64-bit fixed-point reduction" (its
contract there), for parameters where every pair turns less than once per unit position (r_i < 1:
every max_wavelength >= 1); otherwise SPEC.md §8's exact reduction builds the tables
(``p_rope.backends._torch_tables``) and the kernel reads them. float64 inputs use float64 tables,
cos/sin of the float64 angle position * freq_i, as the other backends do.

Computation dtype: float32 for float16, bfloat16 and float32 inputs, float64 for float64 inputs
(tables entry: the tables' dtype); the result is rounded once to the input's dtype.

Shape letters: B... batch axes, L sequence, N heads, H head_dim, R rotated pairs. Any strides, any
number of batch axes; positions [B'..., L] and tables [B'..., L, R] broadcast to [B..., L] as in
SPEC.md §1.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch
from p_rope._params import TableSpec, frequency_values, revolution_chunks
from p_rope.backends._torch_tables import constant_tensor, torch_tables

try:  # optional dependency (the "triton" extra)
    import triton
    import triton.language as tl
except ImportError:
    triton = None

__all__ = ["available", "fused_apply", "fused_apply_tables"]

_TOKEN_DIMS = 3  # token axes the kernel indexes; more (after merging) are looped over on the host
_TILE_LANES = 4096  # lanes of x per program (tokens x heads x pairs x 2), about 8-16 KiB


# ---------------------------------------------------------------------------------------------
# per-pair constants (pure Python, once per parameter set)

_FIXED_BITS = 60
_HALF_BITS = 30


def _f32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def _hi_bits(value: float, bits: int) -> float:
    """value rounded to ``bits`` significant bits."""
    exponent = math.frexp(value)[1] - bits
    return math.ldexp(round(math.ldexp(value, -exponent)), exponent)


# the rest of a turn, in units of 2**-60 turn, is split at bit 45: rest = hi 2**45 + lo with
# |hi| <= 2**12 (13 bits). hi * _STEP_HI is exact in float32 (13 + 11 bits).
_SPLIT_BITS = 45
_STEP = 2 * math.pi * 2.0 ** (_SPLIT_BITS - _FIXED_BITS)  # radians per unit of hi
_STEP_HI = _hi_bits(_STEP, 11)
_STEP_LO = _f32(_STEP - _STEP_HI)
_UNIT = _f32(2 * math.pi * 2.0**-_FIXED_BITS)  # radians per unit of lo


@functools.lru_cache(maxsize=256)
def _pair_constants_cached(
    head_dim: int, max_wavelength: float, pairs: int, scale_factor: float
) -> tuple[tuple[int, ...] | None, tuple[float, ...]]:
    chunks = revolution_chunks(head_dim, max_wavelength, pairs, scale_factor)
    freq = tuple(frequency_values(head_dim, max_wavelength, pairs, scale_factor)[:pairs])
    if any(whole != 0.0 for whole in chunks[0]):  # some r_i >= 1 (w < 1): not held in 60 fractional bits
        return None, freq
    fixed = [sum(int(math.ldexp(row[i], _FIXED_BITS)) for row in chunks[1:]) for i in range(pairs)]
    halves = tuple(f >> _HALF_BITS for f in fixed) + tuple(f & ((1 << _HALF_BITS) - 1) for f in fixed)
    return halves, freq


@torch.compiler.assume_constant_result
def _pair_constants(
    head_dim: int, max_wavelength: float, pairs: int, scale_factor: float
) -> tuple[tuple[int, ...] | None, tuple[float, ...]]:
    """((fh_0..fh_{R-1}, fl_0..fl_{R-1}), (freq_0..freq_{R-1})): F_i = fh_i 2**30 + fl_i is r_i to
    2**-60 in 60-bit fixed point (None where some r_i >= 1); freq_i the float64 angular frequencies."""
    return _pair_constants_cached(head_dim, max_wavelength, pairs, scale_factor)


# ---------------------------------------------------------------------------------------------
# the kernel

if triton is not None:
    _M30: tl.constexpr = tl.constexpr((1 << 30) - 1)
    _M60: tl.constexpr = tl.constexpr((1 << 60) - 1)
    _EIGHTH: tl.constexpr = tl.constexpr(1 << 57)
    _K_STEP_HI: tl.constexpr = tl.constexpr(_STEP_HI)
    _K_STEP_LO: tl.constexpr = tl.constexpr(_STEP_LO)
    _K_UNIT: tl.constexpr = tl.constexpr(_UNIT)
    _INF: tl.constexpr = tl.constexpr(math.inf)
    _NAN: tl.constexpr = tl.constexpr(math.nan)

    @triton.jit
    def _sincos_f32(a):
        """(cos a, sin a) for float32 a in [-pi/4, pi/4], Taylor polynomials (truncation below
        2e-9); 1 - a^2/2 is formed exactly from a split of a into its 12 leading bits and the rest."""
        z = a * a
        s = a + a * (
            z
            * (
                -0.16666666666666666
                + z * (0.008333333333333333 + z * (-1.984126984126984e-4 + z * 2.755731922398589e-6))
            )
        )
        a_hi = (a.to(tl.int32, bitcast=True) & -4096).to(tl.float32, bitcast=True)
        a_lo = a - a_hi
        half_sq = 0.5 * (a_hi * a_hi)  # exact
        half_sq_lo = 0.5 * (a_lo * (a + a_hi))  # a^2/2 - half_sq
        head = 1.0 - half_sq
        head_err = (1.0 - head) - half_sq  # exact
        c = head + (
            (head_err - half_sq_lo)
            + (z * z)
            * (
                0.041666666666666664
                + z * (-1.3888888888888889e-3 + z * (2.48015873015873e-5 + z * -2.755731922398589e-7))
            )
        )
        return c, s

    @triton.jit
    def _to_bfloat16(v):
        """v (float32) rounded once, to nearest even, to bfloat16, in integers as the hardware does
        (Triton's interpreter truncates); NaN stays NaN."""
        bits = v.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(v != v, (bits >> 16) | 0x40, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)

    @triton.jit
    def _exact_tables(pos, fh, fl, POS_FLOAT: tl.constexpr):
        """float32 (cos, sin) [T, R] of 2 pi frac(pos r_i) for positions pos [T, 1] and the halves
        fh, fl [1, R] of F_i = r_i 2**60; see the module docstring."""
        if POS_FLOAT:
            finite = tl.abs(pos) < _INF
            magnitude = tl.where(finite, tl.abs(pos), 0.0)
            whole = tl.floor(magnitude)
            fraction = magnitude - whole  # exact
            whole = whole - tl.floor(whole * 8.673617379884035e-19) * 1.152921504606847e18  # mod 2**60, exact
            n = whole.to(tl.int64)
            v = fraction * 1073741824.0  # 2**30, exact
            f_floor = tl.floor(v)
            f = f_floor.to(tl.int64) + (v - f_floor >= 0.5).to(tl.int64)  # round(fraction 2**30) <= 2**30
        else:
            n = pos.to(tl.int64) & _M60
        n_hi = n >> 30
        n_lo = n & _M30
        turns = (((n_lo * fh + n_hi * fl) & _M30) << 30) + n_lo * fl  # n F mod 2**60, below 2**61
        if POS_FLOAT:
            turns = turns + f * fh + ((f * fl) >> 30)  # + f F / 2**30
            turns = tl.where(pos < 0, -turns, turns)
        turns = turns & _M60
        quarter = (turns + _EIGHTH) >> 58  # nearest quarter turn, 0..4
        rest = turns - (quarter << 58)  # in [-2**57, 2**57)
        rest_hi = rest >> 45
        rest_lo = rest - (rest_hi << 45)  # in [0, 2**45)
        big = rest_hi.to(tl.float32) * _K_STEP_HI  # exact
        small = rest_hi.to(tl.float32) * _K_STEP_LO + rest_lo.to(tl.float32) * _K_UNIT
        angle = big + small
        b = angle - big
        angle_err = (big - (angle - b)) + (small - b)  # TwoSum: angle + angle_err = big + small
        c, s = _sincos_f32(angle)
        c, s = c - angle_err * s, s + angle_err * c
        odd = (quarter & 1) == 1
        c, s = tl.where(odd, s, c), tl.where(odd, c, s)
        cos = tl.where(((quarter + 1) & 2) != 0, -c, c)
        sin = tl.where((quarter & 2) != 0, -s, s)
        if POS_FLOAT:
            cos = tl.where(finite, cos, _NAN)
            sin = tl.where(finite, sin, _NAN)
        return cos, sin

    @triton.jit
    def _p_rope_kernel(
        x_ptr,
        out_ptr,
        pos_ptr,
        cos_ptr,
        sin_ptr,
        const_ptr,
        tokens,
        size1,
        size2,
        heads,
        xs0,
        xs1,
        xs2,
        xsn,
        xsh,
        os0,
        os1,
        os2,
        osn,
        osh,
        ps0,
        ps1,
        ps2,
        cs0,
        cs1,
        cs2,
        csr,
        ss0,
        ss1,
        ss2,
        ssr,
        HALF: tl.constexpr,
        PAIRS: tl.constexpr,
        INTERLEAVED: tl.constexpr,
        FROM_TABLES: tl.constexpr,
        POS_FLOAT: tl.constexpr,
        F64: tl.constexpr,
        NEGATE: tl.constexpr,
        COPY_NOPE: tl.constexpr,
        OUT_BF16: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_Q: tl.constexpr,
    ):
        """One program: BLOCK_T tokens x BLOCK_N heads. Token t is (i0, i1, i2) over sizes
        (tokens / (size1 size2), size1, size2); x, out, positions and tables each have their own
        strides for those axes (0 where broadcast), heads (n) and lanes (h, r)."""
        t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
        hd = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        t_ok = t < tokens
        i2 = t % size2
        i1 = (t // size2) % size1
        i0 = t // (size2 * size1)
        x_row = (i0 * xs0 + i1 * xs1 + i2 * xs2)[:, None, None] + (hd * xsn)[None, :, None]
        o_row = (i0 * os0 + i1 * os1 + i2 * os2)[:, None, None] + (hd * osn)[None, :, None]
        row_ok = t_ok[:, None, None] & (hd < heads)[None, :, None]
        if INTERLEAVED:
            x_pair, x_member = 2 * xsh, xsh
            o_pair, o_member = 2 * osh, osh
        else:
            x_pair, x_member = xsh, HALF * xsh
            o_pair, o_member = osh, HALF * osh
        if PAIRS > 0:
            j = tl.arange(0, BLOCK_R)
            j_ok = j < PAIRS
            tj_ok = t_ok[:, None] & j_ok[None, :]
            if FROM_TABLES:
                c = tl.load(cos_ptr + ((i0 * cs0 + i1 * cs1 + i2 * cs2)[:, None] + j[None, :] * csr), mask=tj_ok)
                s = tl.load(sin_ptr + ((i0 * ss0 + i1 * ss1 + i2 * ss2)[:, None] + j[None, :] * ssr), mask=tj_ok)
            else:
                pos = tl.load(pos_ptr + (i0 * ps0 + i1 * ps1 + i2 * ps2), mask=t_ok, other=0)[:, None]
                if F64:
                    freq = tl.load(const_ptr + j, mask=j_ok, other=0.0)[None, :]
                    angle = pos.to(tl.float64) * freq
                    c = tl.cos(angle)
                    s = tl.sin(angle)
                else:
                    fh = tl.load(const_ptr + j, mask=j_ok, other=0)[None, :]
                    fl = tl.load(const_ptr + PAIRS + j, mask=j_ok, other=0)[None, :]
                    c, s = _exact_tables(pos, fh, fl, POS_FLOAT)
            if NEGATE:
                s = -s
            c = c[:, None, :]
            s = s[:, None, :]
            ok = row_ok & j_ok[None, None, :]
            jj = j[None, None, :].to(tl.int64)
            if INTERLEAVED:  # lanes 0..2R-1 as one contiguous run (vector loads), then split in pairs
                lane = tl.arange(0, 2 * BLOCK_R)[None, None, :].to(tl.int64)
                lane_ok = row_ok & (lane < 2 * PAIRS)
                x2 = tl.load(x_ptr + x_row + lane * xsh, mask=lane_ok)
                a, b = tl.split(tl.reshape(x2.to(c.dtype), (BLOCK_T, BLOCK_N, BLOCK_R, 2)))
                o1 = a * c - b * s
                o2 = b * c + a * s
                o = tl.reshape(tl.join(o1, o2), (BLOCK_T, BLOCK_N, 2 * BLOCK_R))
                if OUT_BF16:
                    o = _to_bfloat16(o.to(tl.float32))
                o = o.to(out_ptr.dtype.element_ty)
                tl.store(out_ptr + o_row + lane * osh, o, mask=lane_ok)
            else:
                a = tl.load(x_ptr + x_row + jj * x_pair, mask=ok).to(c.dtype)
                b = tl.load(x_ptr + x_row + jj * x_pair + x_member, mask=ok).to(c.dtype)
                o1 = a * c - b * s
                o2 = b * c + a * s
                if OUT_BF16:
                    o1 = _to_bfloat16(o1.to(tl.float32))
                    o2 = _to_bfloat16(o2.to(tl.float32))
                o1 = o1.to(out_ptr.dtype.element_ty)
                o2 = o2.to(out_ptr.dtype.element_ty)
                tl.store(out_ptr + o_row + jj * o_pair, o1, mask=ok)
                tl.store(out_ptr + o_row + jj * o_pair + o_member, o2, mask=ok)
        if COPY_NOPE and INTERLEAVED:  # lanes 2R..H-1, one contiguous run, bit for bit
            lane = 2 * PAIRS + tl.arange(0, 2 * BLOCK_Q)[None, None, :].to(tl.int64)
            lane_ok = row_ok & (lane < 2 * HALF)
            v = tl.load(x_ptr + x_row + lane * xsh, mask=lane_ok)
            tl.store(out_ptr + o_row + lane * osh, v, mask=lane_ok)
        if COPY_NOPE and not INTERLEAVED:  # pairs PAIRS..HALF-1: lanes R..H/2-1 and H/2+R..H-1, bit for bit
            q = PAIRS + tl.arange(0, BLOCK_Q)
            qq = q[None, None, :, None].to(tl.int64)
            k = tl.arange(0, 2)[None, None, None, :].to(tl.int64)
            ok = (row_ok & (q < HALF)[None, None, :])[:, :, :, None]
            v = tl.load(x_ptr + x_row[:, :, :, None] + qq * x_pair + k * x_member, mask=ok)
            tl.store(out_ptr + o_row[:, :, :, None] + qq * o_pair + k * o_member, v, mask=ok)


# ---------------------------------------------------------------------------------------------
# host side: layout of one call


def _token_view(t: torch.Tensor, seq_axis: int) -> tuple[list[int], list[int], int, int, int]:
    """(token sizes, token strides, head stride, lane stride, heads) of x [B..., L, N, H] or
    [B..., N, L, H]: the token axes are the batch axes then L."""
    heads_axis = t.dim() + (-2 if seq_axis == -3 else -3)
    seq = t.dim() + seq_axis
    sizes = [*t.shape[: t.dim() - 3], t.shape[seq]]
    strides = [*t.stride()[: t.dim() - 3], t.stride(seq)]
    return sizes, strides, t.stride(heads_axis), t.stride(-1), t.shape[heads_axis]


def _merge_token_axes(sizes: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 token axes and merge neighbours that every tensor steps through as one axis."""
    keep = [i for i, size in enumerate(sizes) if size != 1]
    out_sizes: list[int] = []
    out_strides: list[list[int]] = [[] for _ in strides]
    for i in keep:
        if out_sizes and all(s[-1] == st[i] * sizes[i] for s, st in zip(out_strides, strides, strict=True)):
            out_sizes[-1] *= sizes[i]
            for s, st in zip(out_strides, strides, strict=True):
                s[-1] = st[i]
            continue
        out_sizes.append(sizes[i])
        for s, st in zip(out_strides, strides, strict=True):
            s.append(st[i])
    return out_sizes, out_strides


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _floor_power_of_2(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def _blocks(heads: int, half: int, pairs: int) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_N, BLOCK_R, BLOCK_Q): about _TILE_LANES lanes of x per program."""
    block_r = _next_power_of_2(max(pairs, 1))
    block_q = _next_power_of_2(max(half - pairs, 1))
    lanes = 2 * (block_r + block_q)
    block_n = min(_next_power_of_2(heads), _floor_power_of_2(max(1, _TILE_LANES // lanes)))
    block_t = _floor_power_of_2(max(1, _TILE_LANES // (lanes * block_n)))
    return block_t, block_n, block_r, block_q


def _launch(
    x: torch.Tensor,
    out: torch.Tensor,
    positions: torch.Tensor | None,
    constants: torch.Tensor | None,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    pairs: int,
    pairing: str,
    seq_axis: int,
    negate: bool,
    copy_nope: bool,
) -> None:
    """Rotate x into out (out may be x: in place); positions (with constants) or tables cos/sin."""
    sizes, x_strides, xsn, xsh, heads = _token_view(x, seq_axis)
    _, o_strides, osn, osh, _ = _token_view(out, seq_axis)
    half = x.shape[-1] // 2
    from_tables = cos is not None
    cos_b = sin_b = x
    if from_tables:
        assert cos is not None and sin is not None
        cos_b = cos.broadcast_to((*sizes, pairs))
        sin_b = sin.broadcast_to((*sizes, pairs))
        table_strides = [list(cos_b.stride()[:-1]), list(sin_b.stride()[:-1])]
        csr, ssr = cos_b.stride(-1), sin_b.stride(-1)
        pos_strides = [0] * len(sizes)
    else:
        assert positions is not None
        table_strides = [[0] * len(sizes), [0] * len(sizes)]
        csr = ssr = 0
        pos_strides = list(positions.broadcast_to(sizes).stride())
    merged, (xs, os_, ps, cs, ss) = _merge_token_axes(sizes, [x_strides, o_strides, pos_strides, *table_strides])
    tokens = math.prod(merged)
    if tokens == 0 or heads == 0 or (pairs == 0 and not copy_nope):
        return
    if len(merged) > _TOKEN_DIMS:  # one launch per index of the first axis (x has 3+ batch axes)
        positions_b = None if positions is None else positions.broadcast_to(sizes)
        for i in range(x.shape[0]):
            _launch(
                x[i],
                out[i],
                None if positions_b is None else positions_b[i],
                constants,
                None if cos is None else cos_b[i],
                None if sin is None else sin_b[i],
                pairs,
                pairing,
                seq_axis,
                negate,
                copy_nope,
            )
        return
    pad = [0] * (_TOKEN_DIMS - len(merged))
    merged = [1] * len(pad) + merged
    xs, os_, ps, cs, ss = (pad + v for v in (xs, os_, ps, cs, ss))
    block_t, block_n, block_r, block_q = _blocks(heads, half, pairs)
    grid = (triton.cdiv(tokens, block_t), triton.cdiv(heads, block_n))
    dummy = x
    _kernel()[grid](
        x,
        out,
        positions if positions is not None else dummy,
        cos_b if from_tables else dummy,
        sin_b if from_tables else dummy,
        constants if constants is not None else dummy,
        tokens,
        merged[1],
        merged[2],
        heads,
        *xs,
        xsn,
        xsh,
        *os_,
        osn,
        osh,
        *ps,
        *cs,
        csr,
        *ss,
        ssr,
        HALF=half,
        PAIRS=pairs,
        INTERLEAVED=pairing == "interleaved",
        FROM_TABLES=from_tables,
        POS_FLOAT=positions is not None and positions.dtype.is_floating_point,
        F64=constants is not None and constants.dtype == torch.float64,
        NEGATE=negate,
        COPY_NOPE=copy_nope and pairs < half,
        OUT_BF16=out.dtype == torch.bfloat16,
        BLOCK_T=block_t,
        BLOCK_N=block_n,
        BLOCK_R=block_r,
        BLOCK_Q=block_q,
    )


def _kernel() -> Any:
    """The kernel as torch.library.triton_op expects it launched (wrap_triton); the bare kernel
    where wrap_triton does not take it (Triton's interpreter with an older torch)."""
    try:
        return torch.library.wrap_triton(_p_rope_kernel)
    except RuntimeError:
        return _p_rope_kernel


# ---------------------------------------------------------------------------------------------
# custom operators (torch.library.triton_op: visible to torch.compile) and their autograd


def _define_ops() -> None:
    """Register p_rope::rotate_at(_) (positions) and p_rope::rotate_by(_) (tables) and the
    autograd of the out-of-place ones. Called once, at import, where Triton imports."""
    from torch.library import register_autograd, triton_op

    @triton_op("p_rope::rotate_at", mutates_args=())
    def rotate_at(
        x: torch.Tensor, positions: torch.Tensor, constants: torch.Tensor, pairing: str, seq_axis: int, negate: bool
    ) -> torch.Tensor:
        out = torch.empty_like(x)
        _launch(x, out, positions, constants, None, None, _pairs_of(constants), pairing, seq_axis, negate, True)
        return out

    @triton_op("p_rope::rotate_at_", mutates_args=("x",))
    def rotate_at_(
        x: torch.Tensor, positions: torch.Tensor, constants: torch.Tensor, pairing: str, seq_axis: int
    ) -> None:
        _launch(x, x, positions, constants, None, None, _pairs_of(constants), pairing, seq_axis, False, False)

    @triton_op("p_rope::rotate_by", mutates_args=())
    def rotate_by(
        x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, seq_axis: int, negate: bool
    ) -> torch.Tensor:
        out = torch.empty_like(x)
        _launch(x, out, None, None, cos, sin, cos.shape[-1], pairing, seq_axis, negate, True)
        return out

    @triton_op("p_rope::rotate_by_", mutates_args=("x",))
    def rotate_by_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, seq_axis: int) -> None:
        _launch(x, x, None, None, cos, sin, cos.shape[-1], pairing, seq_axis, False, False)

    def setup_at(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        _, positions, constants, ctx.pairing, ctx.seq_axis, ctx.negate = inputs
        ctx.save_for_backward(positions, constants)

    def backward_at(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        positions, constants = ctx.saved_tensors
        grad_x = torch.ops.p_rope.rotate_at(grad, positions, constants, ctx.pairing, ctx.seq_axis, not ctx.negate)
        return grad_x, None, None, None, None, None

    def setup_by(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, cos, sin, ctx.pairing, ctx.seq_axis, ctx.negate = inputs
        tables_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        ctx.save_for_backward(cos, sin, x if tables_grad else None)

    def backward_by(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cos, sin, x = ctx.saved_tensors
        grad_x = grad_cos = grad_sin = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.p_rope.rotate_by(grad, cos, sin, ctx.pairing, ctx.seq_axis, not ctx.negate)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_cos, grad_sin = _table_gradients(grad, x, cos, ctx.pairing, ctx.seq_axis)
            if ctx.negate:
                grad_sin = -grad_sin
        return grad_x, grad_cos, grad_sin, None, None, None

    if _INTERPRETED:  # under fake tensors, the interpreted kernel cannot stand in for itself
        for name in ("rotate_at", "rotate_by"):
            torch.library.register_fake(f"p_rope::{name}", _empty_like_first)
        for name in ("rotate_at_", "rotate_by_"):
            torch.library.register_fake(f"p_rope::{name}", _nothing)

    register_autograd("p_rope::rotate_at", backward_at, setup_context=setup_at)
    register_autograd("p_rope::rotate_by", backward_by, setup_context=setup_by)


def _empty_like_first(x: torch.Tensor, *args: Any) -> torch.Tensor:
    return torch.empty_like(x)


def _nothing(*args: Any) -> None:
    return None


def _pairs_of(constants: torch.Tensor) -> int:
    """R from the per-pair constants: [2R] int64 halves (float32 tables) or [R] float64 frequencies."""
    return constants.shape[0] // 2 if constants.dtype == torch.int64 else constants.shape[0]


def _lane_views(t: torch.Tensor, pairs: int, pairing: str) -> tuple[torch.Tensor, torch.Tensor]:
    half = t.shape[-1] // 2
    if pairing == "split_half":
        return t[..., :pairs], t[..., half : half + pairs]
    return t[..., 0 : 2 * pairs : 2], t[..., 1 : 2 * pairs : 2]


def _table_gradients(
    grad: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, pairing: str, seq_axis: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of cos [B'..., L, R] and sin of out = (x1 c - x2 s, x2 c + x1 s), given grad of out."""
    pairs = cos.shape[-1]
    g1, g2 = (lane.to(cos.dtype) for lane in _lane_views(grad, pairs, pairing))
    x1, x2 = (lane.to(cos.dtype) for lane in _lane_views(x, pairs, pairing))
    table = cos if cos.dim() > 1 else cos.unsqueeze(0)  # [R]: one position, L = 1
    shape = table.unsqueeze(-2 if seq_axis == -3 else -3).shape  # [B'..., L, 1, R] or [B'..., 1, L, R]
    grad_cos = (g1 * x1 + g2 * x2).sum_to_size(shape).reshape(cos.shape)
    grad_sin = (g2 * x1 - g1 * x2).sum_to_size(shape).reshape(cos.shape)
    return grad_cos, grad_sin


# ---------------------------------------------------------------------------------------------
# public functions


def available(device: torch.device | str) -> bool:
    """Whether fused_apply and fused_apply_tables run tensors on ``device``: a CUDA device with
    Triton installed (and torch.library.triton_op, torch >= 2.6), or the CPU when Triton's
    interpreter was on (TRITON_INTERPRET=1) as this module was imported (for tests)."""
    if triton is None or not _OPS_DEFINED:
        return False
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available()
    return kind == "cpu" and _INTERPRETED


def fused_apply(
    x: torch.Tensor,
    positions: torch.Tensor,
    head_dim: int,
    max_wavelength: float,
    pairs: int,
    scale_factor: float,
    pairing: str,
    seq_axis: int,
    *,
    in_place: bool = False,
) -> torch.Tensor:
    """SPEC.md's apply_p_rope (in_place=True: apply_p_rope_, returning x) in one kernel launch.

    Contract (checked by the caller, not here): x a float16/bfloat16/float32/float64 tensor
    [B..., L, N, H] (seq_axis=-3) or [B..., N, L, H] (seq_axis=-2), any strides, on a device where
    available() is true; positions an integer, float32 or float64 tensor on x's device,
    broadcastable to [B..., L]; (head_dim, max_wavelength, pairs, scale_factor) = (H, w, R, s)
    resolved and checked (p_rope._params); pairing "split_half" or "interleaved"; seq_axis -3 or -2.
    Out of place: a new tensor like x (x untouched). In place: only the 2R rotated lanes of x are
    written. Differentiable in x (through autograd when x requires a gradient; in place too, by
    the out-of-place kernel then a copy of the rotated lanes, as for any in-place op).
    """
    halves, freq = _pair_constants(head_dim, max_wavelength, pairs, scale_factor)
    if x.dtype == torch.float64:
        constants = constant_tensor(freq, torch.float64, x.device)
    elif halves is None:  # some r_i >= 1: the exact reduction's tables, read by the same kernel
        cos, sin = torch_tables(positions, TableSpec(head_dim, max_wavelength, pairs, scale_factor, "float32"))
        return fused_apply_tables(x, cos, sin, pairing, seq_axis, in_place=in_place)
    else:
        constants = constant_tensor(halves, torch.int64, x.device)
    if not in_place:
        return torch.ops.p_rope.rotate_at(x, positions, constants, pairing, seq_axis, False)
    if torch.is_grad_enabled() and x.requires_grad:
        rotated = torch.ops.p_rope.rotate_at(x, positions, constants, pairing, seq_axis, False)
        for target, source in zip(_lane_views(x, pairs, pairing), _lane_views(rotated, pairs, pairing), strict=True):
            target.copy_(source)
        return x
    torch.ops.p_rope.rotate_at_(x, positions, constants, pairing, seq_axis)
    return x


def fused_apply_tables(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pairing: str,
    seq_axis: int,
    *,
    in_place: bool = False,
) -> torch.Tensor:
    """SPEC.md's apply_p_rope_tables (in_place=True: the in-place rotation by tables, returning x).

    Contract (checked by the caller, not here): x as for fused_apply; cos and sin tensors of one
    shape [B'..., L, R] (or [R]), R <= H/2, float32 (x of at most 32 bits) or float64, on x's device,
    [B'..., L] broadcastable to x's [B..., L]. Computed in the tables' dtype, rounded once to x's.
    Differentiable in x, cos and sin.
    """
    if not in_place:
        return torch.ops.p_rope.rotate_by(x, cos, sin, pairing, seq_axis, False)
    needs_grad = x.requires_grad or cos.requires_grad or sin.requires_grad
    if torch.is_grad_enabled() and needs_grad:
        pairs = cos.shape[-1]
        rotated = torch.ops.p_rope.rotate_by(x, cos, sin, pairing, seq_axis, False)
        for target, source in zip(_lane_views(x, pairs, pairing), _lane_views(rotated, pairs, pairing), strict=True):
            target.copy_(source)
        return x
    torch.ops.p_rope.rotate_by_(x, cos, sin, pairing, seq_axis)
    return x


_INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_OPS_DEFINED = False
if triton is not None and hasattr(torch.library, "triton_op"):
    _define_ops()
    _OPS_DEFINED = True
