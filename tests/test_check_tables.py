"""check-tables: frequency vectors, frequency-factor lists and cos/sin caches graded against SPEC.md's
tables; right values in the wrong lanes and known mistakes named. Tables are built here by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from p_rope.conformance.__main__ import main
from p_rope.conformance.tables import grade_cache, grade_factors, grade_frequencies

H, W, P = 512, 1e6, 0.25  # Gemma 4's global layers: R = 64
R = int(P * H // 2)


def _ladder(denominator: int = H, count: int = R) -> np.ndarray:
    return W ** (-2.0 * np.arange(count) / denominator)


def test_spec_frequencies_pass_full_width_or_compact():
    full = np.concatenate([_ladder(), np.zeros(H // 2 - R)]).astype(np.float32)
    assert grade_frequencies(full, H, W, P, 1.0) == []
    assert grade_frequencies(full[:R], H, W, P, 1.0) == []


def test_neox_ladder_is_named():
    neox = np.concatenate([_ladder(2 * R), np.zeros(H // 2 - R)]).astype(np.float32)
    problems = grade_frequencies(neox, H, W, P, 1.0)
    assert "matches the NeoX ladder over the rotated dims" in problems


def test_right_values_in_wrong_lanes_are_caught():
    moved = np.concatenate([np.zeros(H // 2 - R), _ladder()])  # the right R values on the last R pairs
    problems = grade_frequencies(moved, H, W, P, 1.0)
    assert problems and "the right frequencies in the wrong lanes" in problems


def test_bf16_frequencies_are_named():
    import ml_dtypes

    full = np.concatenate([_ladder(), np.zeros(H // 2 - R)]).astype(ml_dtypes.bfloat16).astype(np.float32)
    assert "matches bf16 inverse frequencies" in grade_frequencies(full, H, W, P, 1.0)


def test_factors_inf_pass_and_llama_cpp_1e30_is_named():
    good = np.concatenate([np.ones(R), np.full(H // 2 - R, np.inf)])
    assert grade_factors(good, H, W, P, 1.0) == []
    huge = np.concatenate([np.ones(R), np.full(H // 2 - R, 1e30)]).astype(np.float32)
    problems = grade_factors(huge, H, W, P, 1.0)
    assert len(problems) == 1 and problems[0].startswith("matches NoPE via huge frequency factors")


def _cache(rows: int, width_pairs: int = H // 2, clamp: int | None = None) -> np.ndarray:
    positions = np.arange(rows, dtype=np.float64)
    if clamp is not None:
        positions = np.minimum(positions, clamp - 1)
    freq = np.concatenate([_ladder(), np.zeros(H // 2 - R)])[:width_pairs]
    angles = positions[:, None] * freq
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=-1).astype(np.float32)


def test_full_width_cache_passes_compact_and_clamped_fail():
    assert grade_cache(_cache(4096), H, W, P, 1.0) == []
    compact = grade_cache(_cache(4096, width_pairs=R), H, W, P, 1.0)
    assert "compact pairing" in compact[0]
    clamped = grade_cache(_cache(4096, clamp=1000), H, W, P, 1.0)
    assert any("matches a cos/sin cache clamped beyond 1000" in p for p in clamped)


def test_hf_style_cos_sin_pair_is_read():
    cache = _cache(4096)
    cos, sin = cache[:, : H // 2], cache[:, H // 2 :]
    assert grade_cache((np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)), H, W, P, 1.0) == []


def test_command_on_a_file_and_on_a_builder(tmp_path: Path, capsys):
    factors = tmp_path / "factors.json"
    factors.write_text(json.dumps([1.0] * R + [1e30] * (H // 2 - R)))
    args = ["check-tables", "--kind", "freq_factors", "--file", str(factors), "--head-dim", str(H),
            "--max-wavelength", str(W), "--rope-percentage", str(P)]  # fmt: skip
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "matches NoPE via huge frequency factors" in out and "GRADE: NOT CONFORMANT" in out
    builder = tmp_path / "build.py"
    builder.write_text(
        "import numpy as np\n\n\n"
        "def inv_freq(head_dim, base, partial_rotary_factor, factor):\n"
        "    r = int(partial_rotary_factor * head_dim // 2)\n"
        "    f = 1.0 / base ** (np.arange(0, 2 * r, 2, dtype=np.float32) / head_dim)\n"
        "    return np.concatenate([f, np.zeros(head_dim // 2 - r, np.float32)]) / factor\n"
    )
    assert main(["check-tables", "--kind", "inv_freq", "--impl", f"{builder}:inv_freq"]) == 0
    assert capsys.readouterr().out.count(": pass") == 5


def test_file_needs_parameters(tmp_path: Path, capsys):
    path = tmp_path / "t.npy"
    np.save(path, np.ones(4))
    assert main(["check-tables", "--kind", "inv_freq", "--file", str(path)]) == 2
    assert "needs the parameters" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["inv_freq", "freq_factors", "cos_sin_cache"])
def test_wrong_length_is_reported(kind: str):
    from p_rope.conformance.tables import GRADERS

    assert GRADERS[kind](np.ones((3, 7)) if kind == "cos_sin_cache" else np.ones(7), H, W, P, 1.0)
