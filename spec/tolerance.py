"""The accuracy levels of SPEC.md ("Accuracy") as code: how far an output may be from exact.

NumPy only. Every check compares a candidate output with the float64 reference evaluated on the
float64-cast inputs ("exact"), pair by pair:

    err   = max(|o1 - y1|, |o2 - y2|)            for each rotated pair i at each token
    nx    = sqrt(x1**2 + x2**2)                   of the input values
    theta = |position| * freq_i                   the exact angle's magnitude
    lam   = (2 i / H) * |ln w|                    |ln| of the pair's timescale w ** (2 i / H)
    conformant:  err <= nx * (4 u_out + 4 u_c (1 + theta (1 + lam))) + s_out
    strict:      err <= nx * (u_out + 8 * 2**-24) + s_out       (|position| <= 2**24; 16/32-bit outputs)

u_out is the unit roundoff of the output dtype, u_c that of the computation (2**-53 for float64
outputs, else 2**-24), s_out the absolute term of the output dtype: the larger of its smallest
subnormal and 4 times the smallest normal number of the computation dtype (float16 2**-24,
bfloat16 and float32 2**-124, float64 2**-1020), so that hardware which flushes subnormals to zero
(XLA on CPU and GPU, TPUs) conforms. For float64 outputs the strict level is the conformant one.
NoPE lanes must be bit-identical at both levels.

Why ``lam``: an implementation that computes the timescale w ** (2 i / H) in the computation dtype
(the published code, Gemma, Hugging Face) rounds the exponent 2 i / H, and the relative error u_c
of the exponent becomes a relative error u_c * lam of the frequency, hence of the angle. Without
it, float32 code in the Gemma idiom exceeds the bound by up to 3.4x for H = 1000 and w = 1e6, and
the paper's code by 2.0x for H = 200 and w = 1e7 (tests/test_conformance_selftest.py::
test_conformant_bound_needs_the_log_timescale_term); with it, the worst of the three outside
implementations in conformance/outside.py stays below 0.8 of the bound on H from 2 to 1000 and w
from 2 to 1e7, and 16-bit positions or angles (errors of 2**-9 and 2**-11 of the angle) stay
rejected by orders of magnitude.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _params as P
from .reference import apply_p_rope_tables, frequencies, p_rope_tables

LEVELS = ("conformant", "strict")
STRICT_MAX_POSITION = 2**24

UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
SMALLEST_SUBNORMAL = {"float16": 2.0**-24, "bfloat16": 2.0**-133, "float32": 2.0**-149, "float64": 5e-324}
# |exact| from which round-to-nearest gives an infinity: the largest finite value plus half its ulp.
OVERFLOW_THRESHOLD = {
    "float16": 65520.0,
    "bfloat16": (2.0 - 2.0**-8) * 2.0**127,
    "float32": (2.0 - 2.0**-24) * 2.0**127,
    "float64": float("inf"),
}
# 4 x the smallest normal of the computation dtype (float32: 2**-126, float64: 2**-1022), at least
# the smallest subnormal of the output dtype: a flush-to-zero implementation stays within it.
ABSOLUTE_TERM = {"float16": 2.0**-24, "bfloat16": 2.0**-124, "float32": 2.0**-124, "float64": 2.0**-1020}


class Grade(NamedTuple):
    """Outcome of one comparison: the worst error as a fraction of the level's bound, per level."""

    ratio: dict[str, float]  # level -> max over elements of err / bound (<= 1 passes)
    worst: tuple[int, ...]  # index (..., pair) of the worst element at the strictest failing level
    nope_identical: bool  # NoPE lanes bit-identical to the input
    max_abs_error: float


def compute_unit_roundoff(dtype_name: str) -> float:
    return UNIT_ROUNDOFF["float64"] if dtype_name == "float64" else UNIT_ROUNDOFF["float32"]


def bound(
    level: str, dtype_name: str, pair_norm: np.ndarray, theta: np.ndarray, log_timescale: np.ndarray | float = 0.0
) -> np.ndarray:
    """The allowed error of each rotated pair (see the module docstring; log_timescale is ``lam``)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
    u_out, u_c = UNIT_ROUNDOFF[dtype_name], compute_unit_roundoff(dtype_name)
    tiny = ABSOLUTE_TERM[dtype_name]
    if level == "strict" and dtype_name != "float64":
        return pair_norm * (u_out + 8 * 2.0**-24) + tiny
    return pair_norm * (4 * u_out + 4 * u_c * (1.0 + theta * (1.0 + np.abs(log_timescale)))) + tiny


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}")


def rotated_mask(head_dim: int, pairs: int, pairing: str = "split_half") -> np.ndarray:
    """Boolean [H]: True on the 2R rotated lanes, False on the NoPE lanes."""
    i = np.arange(pairs)
    mask = np.zeros(head_dim, dtype=bool)
    mask[i if pairing == "split_half" else 2 * i] = True
    mask[i + head_dim // 2 if pairing == "split_half" else 2 * i + 1] = True
    return mask


class ErrorMap(NamedTuple):
    """Element-wise view of a comparison, one entry per rotated pair at each token (shape [..., R])."""

    ratio: dict[str, np.ndarray]  # level -> err / bound (inf where the output is NaN and exact is not)
    error: np.ndarray  # max(|o1 - y1|, |o2 - y2|)
    position: np.ndarray  # |position| of each entry
    nope_identical: bool  # NoPE lanes bit-identical to the input


def error_map(
    outputs: np.ndarray,
    inputs: np.ndarray,
    positions: np.ndarray,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    pairing: str = "split_half",
    seq_axis: int = -3,
) -> ErrorMap:
    """Compare outputs (NumPy, same shape as inputs) of apply_p_rope with the exact result, pair by pair.

    Special values (SPEC.md, "Special values"): where a position is non-finite the output must be NaN;
    where the exact value is non-finite because of a NaN or infinite input in the pair, any non-finite
    output is right; where the exact value
    overflows the output dtype, the infinity of its sign is right. Otherwise a non-finite output is an
    infinite error.
    """
    positions = np.broadcast_to(np.asarray(positions), P.positions_target_shape(inputs.shape, seq_axis))
    pairs = P.resolve_rotated_pairs(head_dim, rope_percentage, rotated_pairs)
    exact = apply_p_rope_tables(
        inputs.astype(np.float64),
        p_rope_tables(positions, head_dim, max_wavelength, rotated_pairs=pairs, scale_factor=scale_factor),
        pairing=pairing,
        seq_axis=seq_axis,
    )
    mask = rotated_mask(head_dim, pairs, pairing)
    nope_identical = bool(np.array_equal(_bits(outputs[..., ~mask]), _bits(inputs[..., ~mask])))
    i = np.arange(pairs)
    first, second = (i, i + head_dim // 2) if pairing == "split_half" else (2 * i, 2 * i + 1)

    out64 = outputs.astype(np.float64)
    x64 = inputs.astype(np.float64)

    overflow = OVERFLOW_THRESHOLD[np.dtype(inputs.dtype).name]
    where = -2 if seq_axis == -3 else -3
    # A non-finite position must give NaN (SPEC.md section 6), not merely a non-finite value.
    bad_position = np.expand_dims(~np.isfinite(positions.astype(np.float64)), (where, -1))

    def lane_error(lanes: np.ndarray) -> np.ndarray:
        o, y = out64[..., lanes], exact[..., lanes]
        with np.errstate(invalid="ignore"):
            e = np.abs(o - y)
            nonfinite_right = np.where(bad_position, np.isnan(o), ~np.isfinite(o)) & ~np.isfinite(y)
            right = (o == y) | nonfinite_right | ((np.abs(y) >= overflow) & (o == np.sign(y) * np.inf))
        e = np.where(right, 0.0, e)
        return np.where(np.isnan(e), np.inf, e)

    err = np.maximum(lane_error(first), lane_error(second))
    with np.errstate(invalid="ignore", over="ignore"):
        norm = np.hypot(x64[..., first], x64[..., second])
    freq = frequencies(head_dim, max_wavelength, rotated_pairs=pairs, scale_factor=scale_factor)[:pairs]
    position = np.expand_dims(np.abs(positions.astype(np.float64)), -1)
    theta = np.expand_dims(position * freq, where)
    position = np.broadcast_to(np.expand_dims(position, where), err.shape)
    log_timescale = 2.0 * np.arange(pairs) / head_dim * abs(np.log(float(max_wavelength)))
    dtype_name = np.dtype(inputs.dtype).name
    ratio = {}
    for level in LEVELS:
        with np.errstate(invalid="ignore", divide="ignore"):
            r = err / bound(level, dtype_name, norm, theta, log_timescale)
        ratio[level] = np.where(err == 0.0, 0.0, np.where(np.isnan(r), np.inf, r))
    return ErrorMap(ratio, err, position, nope_identical)


def grade(
    outputs: np.ndarray,
    inputs: np.ndarray,
    positions: np.ndarray,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    pairing: str = "split_half",
    seq_axis: int = -3,
) -> Grade:
    """Grade outputs (NumPy, same dtype as inputs) of apply_p_rope against the exact result."""
    emap = error_map(
        outputs,
        inputs,
        positions,
        head_dim,
        max_wavelength,
        rope_percentage,
        rotated_pairs=rotated_pairs,
        scale_factor=scale_factor,
        pairing=pairing,
        seq_axis=seq_axis,
    )
    ratios: dict[str, float] = {}
    worst: tuple[int, ...] = ()
    for level in LEVELS:
        r = emap.ratio[level]
        ratios[level] = float(r.max()) if r.size else 0.0
        if r.size and (ratios[level] > 1.0 or not worst):
            worst = tuple(int(j) for j in np.unravel_index(int(np.argmax(r)), r.shape))
    finite = emap.error[np.isfinite(emap.error)]
    max_abs = float(finite.max()) if finite.size else 0.0
    if emap.error.size and not np.isfinite(emap.error).all():
        max_abs = float("inf")
    return Grade(ratios, worst, emap.nope_identical, max_abs)
