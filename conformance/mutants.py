"""Deliberately broken p-RoPE implementations: the suite must reject every one (its self-test).

Each mutant is the same small float64 NumPy implementation of SPEC.md with one bug switched on:
every bug class of the field notes (bugs other projects shipped, each silent: valid shapes, no
error) plus a few classic slips. ``MUTANTS`` lists them with the verdict the suite must reach:

* ``"reject"``: not conformant (some case fails the conformant level);
* ``"conformant"``: accepted at the conformant level and rejected at the strict level, for the
  dtypes listed (the bug is within the conformant tolerance there; see each entry's note).

Each mutant is also a module attribute, so that the command line can check it:
``p-rope-conformance check --impl p_rope.conformance.mutants:compact_pairing``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

TABLE_LENGTH = 4096  # the precomputed table of the "table_unrotated" mutant
CACHE_LENGTH = 8192  # the cos/sin cache of the "cache_clamped" mutant (max_position_embeddings)
NOPE_FACTOR = 1e30  # llama.cpp's frequency factor for NoPE pairs (a tiny angle, not zero)


def _mscale(scale_factor: float) -> float:
    """YaRN's attention factor 0.1 ln(s) + 1 (1 at s = 1)."""
    return 0.1 * float(np.log(scale_factor)) + 1.0 if scale_factor > 1 else 1.0


def _bfloat16() -> Any:
    import ml_dtypes

    return ml_dtypes.bfloat16


def broken_p_rope(
    inputs: np.ndarray,
    positions: Any,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    rotated_pairs: int | None = None,
    scale_factor: float = 1.0,
    pairing: str = "split_half",
    seq_axis: int = -3,
    bug: str = "",
    limit: int | None = None,
) -> np.ndarray:
    """SPEC.md's p-RoPE in float64 NumPy (rounded once to the input dtype), with ``bug`` switched on.

    ``limit``: the table length of "table_unrotated" and "cache_clamped" (default TABLE_LENGTH and
    CACHE_LENGTH)."""
    x = inputs
    H = head_dim
    R = rotated_pairs if rotated_pairs is not None else int(rope_percentage * H // 2)
    if rotated_pairs is None:
        if bug == "r_int_hp":  # mlx-lm: int(H * p) rotated dims, arange(0, dims, 2): pairs rounded up
            R = -(-int(H * rope_percentage) // 2)
        elif bug == "r_float32":  # p * H in float32 arithmetic
            R = int(np.float32(rope_percentage) * np.float32(H) // np.float32(2))
        elif bug == "r_round":  # R rounded from the float product
            R = round(rope_percentage * H / 2)
        elif bug == "standard_rope":  # p ignored: every pair rotated
            R = H // 2
        elif bug == "partial_factor_twice":  # rotary_dim = p * H, then p applied to it again
            R = int(rope_percentage * (rope_percentage * H) // 2)
        R = min(R, H // 2)
    if bug == "width_clamp":  # "at least one rotated pair": p = 0 or a tiny p rotates anyway
        R = max(R, 1)
    if bug == "head_dim_limit" and H > 256:  # flash-attn's rotary kernel
        raise ValueError("head_dim must be <= 256")
    pos = np.asarray(positions)
    if bug == "bf16_positions":
        pos = pos.astype(_bfloat16())
    pos = pos.astype(np.float64)
    if bug == "positions_off_by_one":
        pos = pos + 1
    length, batch = x.shape[seq_axis], x.shape[:-3]
    pos = np.broadcast_to(pos, (*batch, length))
    if bug == "kv_offsets_ignored":  # positions taken as 0 .. L-1 whatever the cache offset
        pos = np.broadcast_to(np.arange(length, dtype=np.float64), pos.shape)
    if bug == "row_offsets_lost":  # every batch row gets the first row's positions
        pos = np.broadcast_to(pos.reshape(-1, length)[0], pos.shape)
    if bug == "cache_clamped":  # a cache of `limit` rows indexed with min(position, limit - 1)
        pos = np.minimum(pos, (limit or CACHE_LENGTH) - 1)

    i = np.arange(R, dtype=np.float64)
    offset = H // 2 - R if bug == "lowest_kept" else 0  # the R lowest frequencies, on the last R pairs
    denominator = 2 * R if bug in ("neox_denominator", "one_head_dim") else H
    exponent = 2 * (i + 1) / denominator if bug == "wrong_exponent" else 2 * (i + offset) / denominator
    freq = float(max_wavelength) ** -exponent
    if bug != "scale_dropped":
        freq = freq / scale_factor
    if bug in ("bf16_inv_freq", "autocast_bf16_product"):
        freq = freq.astype(_bfloat16()).astype(np.float64)
    if bug == "inv_freq_tiled" and R:  # a vector of R frequencies read as H/2: every pair rotates
        freq, R = np.resize(freq, H // 2), H // 2
    if bug == "nope_huge_factors":  # every pair rotates; NoPE pairs' frequencies divided by 1e30
        tiny = float(max_wavelength) ** (-2.0 * np.arange(R, H // 2) / H) / scale_factor / NOPE_FACTOR
        freq, R = np.concatenate([freq, tiny]), H // 2
    if bug == "float32_arithmetic":  # positions and frequencies in float32, their product rounded to it
        angle = (pos.astype(np.float32)[..., None] * freq.astype(np.float32)).astype(np.float64)
    elif bug == "autocast_bf16_product":  # the "float32" product run in bfloat16 under autocast
        product = pos.astype(_bfloat16()).astype(np.float64)[..., None] * freq
        angle = product.astype(np.float32).astype(_bfloat16()).astype(np.float64)
    else:
        angle = pos[..., None] * freq  # [B..., L, R]
    if bug == "table_unrotated":  # cos = 1, sin = 0 outside a precomputed table, as flash-attn loads
        angle = np.where((pos[..., None] >= 0) & (pos[..., None] < (limit or TABLE_LENGTH)), angle, 0.0)
    if bug == "fp16_angles":
        angle = angle.astype(np.float16).astype(np.float64)
    cos, sin = np.cos(angle), np.sin(angle)
    if bug == "float32_arithmetic":
        cos, sin = (t.astype(np.float32).astype(np.float64) for t in (cos, sin))
    if bug == "bf16_cos_sin":
        cos, sin = (t.astype(_bfloat16()).astype(np.float64) for t in (cos, sin))
    if bug == "reversed_rotation":
        sin = -sin
    heads_axis_first = (seq_axis == -3) == (bug != "heads_as_sequence")
    cos, sin = (np.expand_dims(t, -2 if heads_axis_first else -3) for t in (cos, sin))

    interleaved = (pairing == "interleaved") != (bug == "interleaved_for_split")
    k = np.arange(R) + offset
    if bug in ("compact_pairing", "one_head_dim"):  # pairs (i, i + R) inside the first 2R lanes
        first, second = k, k + R
    elif interleaved:
        first, second = 2 * k, 2 * k + 1
    else:
        first, second = k, k + H // 2
    x64 = x.astype(np.float64)
    out = x64.copy() if bug == "widened_output" else x.copy()
    x1, x2 = x64[..., first], x64[..., second]
    out[..., first] = x1 * cos - x2 * sin
    out[..., second] = x2 * cos + x1 * sin
    if bug == "mscale_nope" and scale_factor > 1:  # full-width cos/sin times the attention factor
        out = (out.astype(np.float64) * _mscale(scale_factor)).astype(out.dtype)
    if bug == "nope_lanes_computed":  # the paper's x * 1 - y * 0 over the NoPE lanes
        nope = np.arange(R, H // 2)
        a, b = (nope, nope + H // 2) if not interleaved else (2 * nope, 2 * nope + 1)
        with np.errstate(invalid="ignore"):
            out[..., a] = (x[..., a] * x.dtype.type(1) - x[..., b] * x.dtype.type(0)).astype(x.dtype)
            out[..., b] = (x[..., b] * x.dtype.type(1) + x[..., a] * x.dtype.type(0)).astype(x.dtype)
    if bug == "overwrites_input":
        inputs[...] = out
        return inputs
    return out


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    bug_class: str  # what was shipped (field notes) or the classic slip
    verdict: str  # "reject" or "conformant" (then rejected at strict)
    conformant_dtypes: tuple[str, ...] = ()  # where a "reject" mutant still meets the conformant level
    note: str = ""
    named: str = ""  # what check's verdict must say of every failing dtype (a mistake's name, a problem)

    @property
    def function(self) -> Callable[..., np.ndarray]:
        return globals()[self.name]  # type: ignore[no-any-return]

    @property
    def impl(self) -> str:
        return f"p_rope.conformance.mutants:{self.name}"


# What check's verdict names for each mutant (a mistake of conformance/diagnose.py, or a problem).
NAMED = {
    "compact_pairing": "compact pairing",
    "inv_freq_tiled": "the inverse frequencies tiled",
    "one_head_dim": "the NeoX partial rotary",
    "neox_denominator": "the NeoX ladder over the rotated dims",
    "width_clamp": "the width clamp max(2, ...)",
    "bf16_positions": "bf16 positions",
    "fp16_angles": "fp16 angles",
    "bf16_cos_sin": "cos/sin rounded to bfloat16",
    "scale_dropped": "scale_factor dropped",
    "table_unrotated": f"positions beyond a {TABLE_LENGTH}-row table left unrotated",
    "kv_offsets_ignored": "KV offsets ignored",
    "row_offsets_lost": "positions from the first row",
    "reversed_rotation": "reversed rotation",
    "wrong_exponent": "the exponent off by one pair",
    "positions_off_by_one": "positions off by one",
    "widened_output": "dtype float64, expected the input's",
    "overwrites_input": "the input array itself (or a view of it) was returned",
    "heads_as_sequence": "raised ValueError",
    "interleaved_for_split": "interleaved pairing",
    "head_dim_limit": "raised ValueError: head_dim must be <= 256",
    "bf16_inv_freq": "bf16 inverse frequencies",
    "cache_clamped": f"a cos/sin cache clamped beyond {CACHE_LENGTH}",
    "r_int_hp": "R from int(H * p) pairs rounded up",
    "r_float32": "R computed in float32",
    "nope_huge_factors": "NoPE via huge frequency factors",
    "mscale_nope": "mscale applied to NoPE lanes",
    "autocast_bf16_product": "the autocast-bf16 frequency product",
    "partial_factor_twice": "partial_rotary_factor applied twice",
    "lowest_kept": "lowest frequencies kept",
    "nope_lanes_computed": "NoPE lanes computed",
}

_MUTANTS = (
    Mutant("compact_pairing", "pairing i with i + R/2 inside a compact rotated slice", "reject"),
    Mutant("inv_freq_tiled", "inv_freq built with the wrong length (R read as H/2): lanes mispaired", "reject"),
    Mutant("one_head_dim", "one head_dim argument (2R) driving both the exponent and the split", "reject"),
    Mutant(
        "neox_denominator", "exponent denominator = rotary_dim (NeoX style, keeps the lowest frequencies)", "reject"
    ),
    Mutant("width_clamp", "rotated width clamped to at least 2 dims (p = 0 or tiny p rotates)", "reject"),
    Mutant("bf16_positions", "positions held in bfloat16 (15962 becomes 15936)", "reject"),
    Mutant("fp16_angles", "angles held in float16", "reject"),
    Mutant(
        "bf16_cos_sin",
        "cos/sin cast to bfloat16 before the multiply (two roundings)",
        "reject",
        conformant_dtypes=("bfloat16",),
        note="for bfloat16 outputs the HF/MaxText habit is within the conformant bound (SPEC.md section 8) "
        "and rejected at the strict level; in every other dtype it is rejected outright",
    ),
    Mutant("scale_dropped", "position-interpolation scale_factor silently dropped", "reject"),
    Mutant("table_unrotated", f"positions beyond a precomputed table ({TABLE_LENGTH}) left unrotated", "reject"),
    Mutant("kv_offsets_ignored", "KV-cache offsets ignored (positions taken as 0 .. L-1)", "reject"),
    Mutant("row_offsets_lost", "per-row offsets lost (every row gets row 0's positions)", "reject"),
    Mutant("reversed_rotation", "rotation by -angle (sin sign flipped)", "reject"),
    Mutant("wrong_exponent", "exponent off by one pair: w ** (-2 (i + 1) / H)", "reject"),
    Mutant("positions_off_by_one", "positions off by one", "reject"),
    Mutant(
        "widened_output",
        "output returned in the computation dtype (float64) instead of the input dtype",
        "reject",
        conformant_dtypes=("float64",),
        note="float64 inputs have nothing wider to widen to",
    ),
    Mutant("overwrites_input", "the input array written over with the result", "reject"),
    Mutant("heads_as_sequence", "the heads axis read as the sequence axis", "reject"),
    Mutant("interleaved_for_split", "interleaved pairs (2i, 2i+1) where split-half was asked (and back)", "reject"),
    Mutant("head_dim_limit", "head_dim > 256 refused (flash-attn's limit; Gemma 4 global layers use 512)", "reject"),
    Mutant("bf16_inv_freq", "inverse frequencies cast to bfloat16 before the phase (sglang-jax #1472)", "reject"),
    Mutant(
        "cache_clamped",
        f"cos/sin cache of {CACHE_LENGTH} rows (max_position_embeddings), clamped to its last row beyond it",
        "reject",
    ),
    Mutant(
        "r_int_hp", "R from int(H * p) rotated dims, pairs rounded up (mlx-lm: R = 29 for p = 0.58, H = 100)", "reject"
    ),
    Mutant("r_float32", "R computed in float32 arithmetic (p * H rounds up to 58 for p = 0.58, H = 100)", "reject"),
    Mutant(
        "nope_huge_factors",
        f"NoPE as frequency factors of {NOPE_FACTOR:g} (llama.cpp): a tiny angle, not zero",
        "reject",
        conformant_dtypes=("float16",),
        note="the tiny angle changes a NoPE lane only where the other lane of its pair is huge next to it "
        "(the special-value cases); float16's largest finite values are too small for that to show at the "
        "conformant level, and its special values fail the strict level",
    ),
    Mutant(
        "mscale_nope",
        "an attention factor (YaRN's 0.1 ln s + 1) multiplying full-width cos/sin: NoPE lanes scaled too",
        "reject",
    ),
    Mutant(
        "autocast_bf16_product",
        "the float32 frequency product run in bfloat16 under autocast (diffusers #13920)",
        "reject",
    ),
    Mutant(
        "partial_factor_twice", "partial_rotary_factor applied twice (vllm #29966): R = int(p * p * H // 2)", "reject"
    ),
    Mutant("lowest_kept", "the R lowest frequencies kept (on the last R pairs) instead of the highest", "reject"),
    Mutant(
        "nope_lanes_computed",
        "NoPE lanes computed as x * 1 - y * 0 (the published code's way)",
        "conformant",
        conformant_dtypes=("float16", "bfloat16", "float32", "float64"),
        note="exact on finite values, but -0.0 becomes +0.0 and inf becomes NaN in NoPE lanes: "
        "SPEC.md section 6 forbids it, graded at the strict level (cases.SPECIAL_VALUES_LEVELS)",
    ),
)


MUTANTS = tuple(dataclasses.replace(m, named=NAMED[m.name]) for m in _MUTANTS)


def _make(bug: str, name: str, doc: str) -> Callable[..., np.ndarray]:
    """broken_p_rope with ``bug`` switched on ("" for none) under the public signature, named ``name``."""

    def mutant(
        inputs: np.ndarray,
        positions: Any,
        head_dim: int,
        max_wavelength: float = 10_000,
        rope_percentage: float = 1.0,
        *,
        rotated_pairs: int | None = None,
        scale_factor: float = 1.0,
        pairing: str = "split_half",
        seq_axis: int = -3,
    ) -> np.ndarray:
        return broken_p_rope(
            inputs,
            positions,
            head_dim,
            max_wavelength,
            rope_percentage,
            rotated_pairs=rotated_pairs,
            scale_factor=scale_factor,
            pairing=pairing,
            seq_axis=seq_axis,
            bug=bug,
        )

    mutant.__name__ = mutant.__qualname__ = name
    mutant.__doc__ = doc
    return mutant


correct_p_rope = _make(
    "", "correct_p_rope", "The mutants' common code with no bug: the control (the suite must grade it strict)."
)
for _m in MUTANTS:
    globals()[_m.name] = _make(_m.name, _m.name, f"p-RoPE with the bug {_m.name!r} (see MUTANTS).")
del _m
