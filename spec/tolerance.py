"""The accuracy levels of SPEC.md ("Accuracy") as code: how far an output may be from exact.

NumPy only. Every check compares a candidate output with the float64 reference evaluated on the
float64-cast inputs ("exact"), pair by pair:

    err   = max(|o1 - y1|, |o2 - y2|)            for each rotated pair at each token
    nx    = sqrt(x1**2 + x2**2)                   of the input values
    theta = |position| * freq_i                   the exact angle's magnitude
    conformant:  err <= nx * (4 u_out + 4 u_c (1 + theta)) + s_out
    strict:      err <= nx * (u_out + 8 * 2**-24) + s_out       (|position| <= 2**24; 16/32-bit outputs)

u_out is the unit roundoff of the output dtype, u_c that of the computation (2**-53 for float64
outputs, else 2**-24), s_out the smallest positive subnormal of the output dtype. For float64
outputs the strict level is the conformant one. NoPE lanes must be bit-identical at both levels.
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


class Grade(NamedTuple):
    """Outcome of one comparison: the worst error as a fraction of the level's bound, per level."""

    ratio: dict[str, float]  # level -> max over elements of err / bound (<= 1 passes)
    worst: tuple[int, ...]  # index (..., pair) of the worst element at the strictest failing level
    nope_identical: bool  # NoPE lanes bit-identical to the input
    max_abs_error: float


def compute_unit_roundoff(dtype_name: str) -> float:
    return UNIT_ROUNDOFF["float64"] if dtype_name == "float64" else UNIT_ROUNDOFF["float32"]


def bound(level: str, dtype_name: str, pair_norm: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The allowed error of each rotated pair (see the module docstring)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
    u_out, u_c = UNIT_ROUNDOFF[dtype_name], compute_unit_roundoff(dtype_name)
    tiny = SMALLEST_SUBNORMAL[dtype_name]
    if level == "strict" and dtype_name != "float64":
        return pair_norm * (u_out + 8 * 2.0**-24) + tiny
    return pair_norm * (4 * u_out + 4 * u_c * (1.0 + theta)) + tiny


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}")


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
    positions = np.asarray(positions)
    pairs = P.resolve_rotated_pairs(head_dim, rope_percentage, rotated_pairs)
    kwargs = dict(rotated_pairs=pairs, scale_factor=scale_factor)
    exact = apply_p_rope_tables(
        inputs.astype(np.float64),
        p_rope_tables(positions, head_dim, max_wavelength, **kwargs),  # type: ignore[arg-type]
        pairing=pairing,
        seq_axis=seq_axis,
    )
    half = head_dim // 2
    i = np.arange(pairs)
    first, second = (i, i + half) if pairing == "split_half" else (2 * i, 2 * i + 1)
    rotated = np.zeros(head_dim, dtype=bool)
    rotated[first], rotated[second] = True, True
    nope_identical = bool(np.array_equal(_bits(outputs[..., ~rotated]), _bits(inputs[..., ~rotated])))

    out64 = outputs.astype(np.float64)
    x64 = inputs.astype(np.float64)
    with np.errstate(invalid="ignore"):
        err = np.maximum(np.abs(out64[..., first] - exact[..., first]), np.abs(out64[..., second] - exact[..., second]))
    err = np.where(np.isnan(exact[..., first]) & np.isnan(out64[..., first]), 0.0, err)
    norm = np.hypot(x64[..., first], x64[..., second])
    freq = frequencies(head_dim, max_wavelength, rotated_pairs=pairs, scale_factor=scale_factor)[:pairs]
    theta = np.abs(positions.astype(np.float64))[..., None] * freq
    theta = np.expand_dims(theta, -2 if seq_axis == -3 else -3)
    ratios: dict[str, float] = {}
    worst: tuple[int, ...] = ()
    dtype_name = np.dtype(inputs.dtype).name
    for level in LEVELS:
        r = err / bound(level, dtype_name, norm, theta)
        r = np.where(np.isnan(r), np.inf, r)  # a NaN where the exact value is finite fails
        ratios[level] = float(r.max()) if r.size else 0.0
        if r.size and (ratios[level] > 1.0 or not worst):
            worst = tuple(int(j) for j in np.unravel_index(int(np.argmax(r)), r.shape))
    max_abs = float(np.nanmax(err)) if err.size else 0.0
    return Grade(ratios, worst, nope_identical, max_abs)
