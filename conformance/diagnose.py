"""What is wrong with a failing case: its output compared with models of known mistakes.

Each model is SPEC.md's formula in float64 with one mistake in it (the field notes' bug classes;
the arithmetic is the mutants', conformance/mutants.py). A model *matches* a failing case when it
reproduces the implementation's output within tolerance on every lane and is itself wrong on that
case (a model that agrees with SPEC.md there explains nothing). ``cause`` names the model(s) that
explain the most failing cases of a dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from p_rope.tolerance import ABSOLUTE_TERM, UNIT_ROUNDOFF, compute_unit_roundoff, error_map

from .cases import Case
from .execute import CaseResult
from .mutants import CACHE_LENGTH, TABLE_LENGTH, broken_p_rope


@dataclasses.dataclass(frozen=True)
class Mistake:
    name: str  # "matches <name>"
    line: str  # what it does, in one line
    bug: str  # the mutants' switch
    limit: int | None = None
    float32: bool = False  # compared at float32's compute precision whatever the dtype


LENGTHS = (2048, 4096, 8192, 16384, 32768, 65536, 131072)
MISTAKES: tuple[Mistake, ...] = (
    Mistake("the NeoX partial rotary", "rotates the first 2R lanes as pairs (i, i + R), ladder w ** (-2i / 2R)",
            "one_head_dim"),
    Mistake("the NeoX ladder over the rotated dims", "frequencies w ** (-2i / 2R): the exponent over 2R, not H",
            "neox_denominator"),
    Mistake("compact pairing", "pairs (i, i + R) inside the first 2R lanes instead of (i, i + H/2)", "compact_pairing"),
    Mistake("interleaved pairing", "pairs (2i, 2i + 1) where split-half (i, i + H/2) was asked, or the reverse",
            "interleaved_for_split"),
    Mistake("lowest frequencies kept", "rotates the last R pairs with their own (lowest) frequencies",
            "lowest_kept"),
    Mistake("the width clamp max(2, ...)", "at least one pair rotated: p = 0 or a tiny p still rotates",
            "width_clamp"),
    Mistake("R from int(H * p) pairs rounded up", "R = ceil(int(H * p) / 2) (mlx-lm), not int(p * H // 2)",
            "r_int_hp"),
    Mistake("R rounded from a float product", "R = round(p * H / 2), not int(p * H // 2)", "r_round"),
    Mistake("R computed in float32", "p * H in float32 rounds up (p = 0.58, H = 100: R = 29, not 28)",
            "r_float32"),
    Mistake("partial_rotary_factor applied twice", "R = int(p * (p * H) // 2)", "partial_factor_twice"),
    Mistake("standard RoPE", "every pair rotated: rope_percentage ignored (or partial_rotary_factor dropped)",
            "standard_rope"),
    Mistake("the inverse frequencies tiled", "R frequencies read as H/2: every pair rotates, lanes mispaired",
            "inv_freq_tiled"),
    Mistake("float32 arithmetic on float64 inputs", "positions, frequencies and angles in float32 for float64 data",
            "float32_arithmetic", float32=True),
    Mistake("bf16 positions", "positions rounded to bfloat16 (15962 becomes 15936)", "bf16_positions"),
    Mistake("bf16 inverse frequencies", "frequencies rounded to bfloat16 before the product", "bf16_inv_freq"),
    Mistake("the autocast-bf16 frequency product", "positions x frequencies computed in bfloat16 (autocast)",
            "autocast_bf16_product"),
    Mistake("fp16 angles", "angles rounded to float16", "fp16_angles"),
    Mistake("cos/sin rounded to bfloat16", "cos and sin rounded to bfloat16 before the multiply", "bf16_cos_sin"),
    Mistake("positions from the first row", "every batch row rotated at row 0's positions", "row_offsets_lost"),
    Mistake("KV offsets ignored", "positions taken as 0 .. L-1", "kv_offsets_ignored"),
    Mistake("positions off by one", "position + 1", "positions_off_by_one"),
    Mistake("reversed rotation", "rotation by -angle", "reversed_rotation"),
    Mistake("the exponent off by one pair", "w ** (-2 (i + 1) / H)", "wrong_exponent"),
    Mistake("scale_factor dropped", "the frequencies not divided by scale_factor", "scale_dropped"),
    Mistake("layout transposed", "the heads axis read as the sequence axis", "heads_as_sequence"),
    Mistake("NoPE via huge frequency factors", "NoPE pairs rotated by a tiny angle (factors of 1e30), not 0",
            "nope_huge_factors"),
    Mistake("mscale applied to NoPE lanes", "cos/sin times an attention factor over every lane, NoPE included",
            "mscale_nope"),
    Mistake("NoPE lanes computed", "x * 1 - y * 0 on NoPE lanes (-0.0 becomes +0.0, inf becomes NaN)",
            "nope_lanes_computed"),
    *(Mistake(f"a cos/sin cache clamped beyond {n}", f"positions >= {n} read the cache's last row {n - 1}",
              "cache_clamped", limit=n) for n in LENGTHS),
    *(Mistake(f"positions beyond a {n}-row table left unrotated", f"cos = 1, sin = 0 at positions >= {n}",
              "table_unrotated", limit=n) for n in LENGTHS),
)  # fmt: skip
assert CACHE_LENGTH in LENGTHS and TABLE_LENGTH in LENGTHS


def _model(mistake: Mistake, case: Case, x: np.ndarray, positions: np.ndarray) -> np.ndarray | None:
    try:
        with np.errstate(all="ignore"):
            return broken_p_rope(
                x,
                positions,
                case.head_dim,
                case.max_wavelength,
                case.rope_percentage,
                rotated_pairs=case.rotated_pairs,
                scale_factor=case.scale_factor,
                pairing=case.pairing,
                seq_axis=case.seq_axis,
                bug=mistake.bug,
                limit=mistake.limit,
            )
    except Exception:  # a model that cannot express this case explains nothing
        return None


def _pair_norms(case: Case, x64: np.ndarray) -> np.ndarray:
    """Per lane, the norm of its SPEC.md pair (split-half (i, i + H/2) or interleaved (2i, 2i + 1))."""
    half = case.head_dim // 2
    if case.pairing == "split_half":
        a, b = x64[..., :half], x64[..., half:]
        norms = np.hypot(a, b)
        return np.concatenate([norms, norms], axis=-1)
    norms = np.hypot(x64[..., 0::2], x64[..., 1::2])
    return np.repeat(norms, 2, axis=-1)


def agrees(
    mistake: Mistake, case: Case, out: np.ndarray, model: np.ndarray, x: np.ndarray, positions: np.ndarray
) -> bool:
    """Whether the implementation's output is the model's within the conformant tolerance, lane by lane."""
    o, m, x64 = out.astype(np.float64), model.astype(np.float64), x.astype(np.float64)
    with np.errstate(all="ignore"):
        same = (o == m) | (np.isnan(o) & np.isnan(m)) | (np.isinf(o) & (o == m))
        err = np.abs(o - m)
        dtype = case.dtype
        u_out = UNIT_ROUNDOFF[dtype]
        u_c = UNIT_ROUNDOFF["float32"] if mistake.float32 else compute_unit_roundoff(dtype)
        where = -2 if case.seq_axis == -3 else -3
        pos = np.abs(np.broadcast_to(positions, (*case.batch_shape, case.seq_len)).astype(np.float64))
        theta = np.expand_dims(pos, (where, -1))
        lam = abs(np.log(case.max_wavelength))
        norms = _pair_norms(case, x64)
        allowed = norms * (8 * u_out + 8 * u_c * (1 + theta * (1 + lam))) + 2 * ABSOLUTE_TERM[dtype]
        allowed = np.where(np.isfinite(allowed), allowed, 0.0)
        return bool(np.all(same | (err <= allowed)))


def wrong_itself(case: Case, model: np.ndarray, x: np.ndarray, positions: np.ndarray, level: str) -> bool:
    """Whether the model, rounded to the dtype, fails the case at ``level``."""
    with np.errstate(all="ignore"):
        emap = error_map(
            model.astype(x.dtype),
            x,
            positions,
            case.head_dim,
            case.max_wavelength,
            case.rope_percentage,
            rotated_pairs=case.rotated_pairs,
            scale_factor=case.scale_factor,
            pairing=case.pairing,
            seq_axis=case.seq_axis,
        )
    if not emap.nope_identical:
        return True
    ratio = emap.ratio.get(level)
    return bool(ratio is not None and ratio.size and np.nanmax(ratio) > 1)


def matching(result: CaseResult, level: str) -> list[Mistake]:
    """The models of known mistakes that reproduce a failing case's output."""
    case = result.case
    out = next((v for k, v in result.outputs.items() if k not in ("k", "key")), None)
    if out is None:
        return []
    arrays = case.materialize()
    x, positions = arrays.inputs, arrays.positions
    if out.shape != x.shape:
        return []
    found = []
    x64 = x.astype(np.float64)
    for mistake in MISTAKES:
        model = _model(mistake, case, x64, positions)
        if model is None or model.shape != x.shape:
            continue
        if agrees(mistake, case, out, model, x, positions) and wrong_itself(case, model, x, positions, level):
            found.append(mistake)
    return found


def _unsupported(results: Sequence[CaseResult]) -> str | None:
    """Every case of a dtype raised: the implementation does not take that dtype (its first exception)."""
    ran = [r for r in results if r.not_applicable is None]
    if ran and all(r.raised is not None for r in ran):
        return ran[0].raised
    return None


def cause(
    results: Sequence[CaseResult], level: str, limit: int = 6, per_case: dict[str, list[str]] | None = None
) -> tuple[str, list[Mistake]]:
    """One line on why a dtype's cases fail ``level``, and the mistakes that explain them; ``per_case``
    (when given) receives the names of the mistakes matching each failing case examined (at most
    ``limit``), by case id."""
    failing = [r for r in results if r.not_applicable is None and not r.passed(level)]
    if not failing:
        return "", []
    valued = [r for r in failing if r.outputs and all(_about_values(p) for p in r.problems)]
    if len(valued) * 2 < len(failing):  # mostly a wrong dtype, shape, written input, exception...
        return _plain_cause(failing), []
    counts: dict[Mistake, int] = {}
    diagnosed = 0
    for result in valued[:limit]:
        diagnosed += 1
        found = matching(result, level)
        if per_case is not None:
            per_case[result.case.id] = [m.name for m in found]
        for mistake in found:
            counts[mistake] = counts.get(mistake, 0) + 1
    if counts:
        best = max(counts.values())
        names = [m for m, n in counts.items() if n == best]
        text = "matches " + " or ".join(m.name for m in names) + ": " + names[0].line
        if best < diagnosed:
            text += f" ({best} of {diagnosed} failing cases examined)"
        return text, names
    return _plain_cause(failing), []


def _about_values(problem: str) -> bool:
    """A problem a model of a mistake can explain (the values), not the call's form."""
    return problem.endswith("NoPE lanes are not bit-identical to the input")


def _plain_cause(failing: Sequence[CaseResult]) -> str:
    """No model matches: the most common problem, else the size and place of the worst error."""
    problems: dict[str, int] = {}
    for r in failing:
        for p in r.problems:
            text = p.split(": ", 1)[-1] if p.startswith(("out:", "q:", "k:", "query:", "key:")) else p
            problems[text] = problems.get(text, 0) + 1
    if problems:
        return max(problems, key=lambda k: problems[k])
    worst = max(failing, key=lambda r: max(v.ratio for v in r.levels.values()))
    ratio = max(v.ratio for v in worst.levels.values())
    where = f" at position {worst.worst.position:g}" if worst.worst is not None else ""
    return f"error {ratio:.3g} x the bound{where} (no known mistake reproduces it)"
