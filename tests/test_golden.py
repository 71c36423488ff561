"""The golden vectors (conformance/golden/): read the way FORMAT.md tells a C++ or Rust implementer to,
graded with FORMAT.md's recipe (written here from the document, not from spec/tolerance.py), and
checked for drift the way SPEC.md section 10 says: inputs, positions and frequencies bit for bit on
every platform (they are made without libm), outputs within what two correct evaluations of the
reference on different C libraries can differ by.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import p_rope
import pytest
from p_rope.conformance import golden
from p_rope.conformance.__main__ import main
from p_rope.conformance.cases import DTYPES


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            arrays[info.filename.removesuffix(".npy")] = np.lib.format.read_array(io.BytesIO(archive.read(info)))
    return arrays


def _decode(stored: dict[str, np.ndarray], entry: dict) -> np.ndarray:
    raw = stored[entry["name"]]
    assert hashlib.sha256(raw.tobytes()).hexdigest() == entry["sha256"]
    if entry["dtype"] == "bfloat16":
        assert entry["storage"] == "uint16"
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])  # exact values
    return raw.reshape(entry["shape"])


OVERFLOW = {"float16": 65520.0, "bfloat16": (2 - 2.0**-8) * 2.0**127, "float32": (2 - 2.0**-24) * 2.0**127}


def _format_md_grade(case: dict, x: np.ndarray, positions: np.ndarray, y: np.ndarray, f: np.ndarray, out):
    """FORMAT.md, "Checking an implementation", steps 3-4; returns {level: passed}."""
    with np.errstate(all="ignore"):  # special values: inf * 0, inf - inf
        return _format_md_grade_(case, x, positions, y, f, out)


def _format_md_grade_(case: dict, x: np.ndarray, positions: np.ndarray, y: np.ndarray, f: np.ndarray, out):
    p = case["parameters"]
    H, R = p["head_dim"], p["rotated_pairs"]
    i = np.arange(R)
    a, b = (i, i + H // 2) if p["pairing"] == "split_half" else (2 * i, 2 * i + 1)
    nope = np.setdiff1d(np.arange(H), np.concatenate([a, b]))
    o, x64 = np.asarray(out, dtype=np.float64), x.astype(np.float64)
    ok_nope = np.array_equal(o[..., nope].view(np.uint64), x64[..., nope].view(np.uint64))
    limit = OVERFLOW.get(case["dtype"], math.inf)

    def lane(k):
        with np.errstate(invalid="ignore"):
            e = np.abs(o[..., k] - y[..., k])
        right = (o[..., k] == y[..., k]) | (~np.isfinite(o[..., k]) & ~np.isfinite(y[..., k]))
        right |= (np.abs(y[..., k]) >= limit) & (o[..., k] == np.sign(y[..., k]) * np.inf)
        return np.where(right, 0.0, np.where(np.isnan(e), np.inf, e))

    err = np.maximum(lane(a), lane(b))
    nx = np.hypot(x64[..., a], x64[..., b])
    m = np.expand_dims(np.abs(positions.astype(np.float64))[..., None], -2 if p["seq_axis"] == -3 else -3)
    theta, lam = m * f[:R], 2.0 * i / H * case["bound"]["abs_log_w"]
    c = case["bound"]
    conformant = nx * (4 * c["u_out"] + 4 * c["u_c"] * (1 + theta * (1 + lam))) + c["s_out"]
    strict = conformant if c["strict_eps"] is None else nx * (c["u_out"] + c["strict_eps"]) + c["s_out"]
    with np.errstate(invalid="ignore"):
        every = case["special"] == "nonfinite"
        result = {
            "conformant": bool(np.all((err == 0) | (err <= conformant) | ~np.isfinite(m))),
            "strict": bool(np.all((err == 0) | (err <= strict) | (~every & ~(m <= 2**24)))),
        }
    return {level: ok and ok_nope for level, ok in result.items() if level in case["levels"]}


def _golden():
    directory = golden.golden_dir()
    manifest = json.loads((directory / "manifest.json").read_text())
    return manifest, _read_npz(directory / "vectors.npz")


def test_golden_vectors_have_not_drifted():
    assert golden.drift() == []


def test_golden_format_size_and_bfloat16_bits():
    directory = golden.golden_dir()
    size = sum((directory / n).stat().st_size for n in ("manifest.json", "vectors.npz", "FORMAT.md"))
    assert size < 1.5e6
    manifest, _ = _golden()
    assert manifest["format"] == "p-rope-golden/1"

    assert manifest["spec_version"] == p_rope.SPEC_VERSION
    assert {c["dtype"] for c in manifest["cases"]} == set(DTYPES)
    bf16 = [c for c in manifest["cases"] if c["dtype"] == "bfloat16"]
    assert bf16 and all(c["arrays"]["inputs"]["storage"] == "uint16" for c in bf16)
    ids = [c["id"] for c in manifest["cases"]]
    assert len(set(ids)) == len(ids)


def test_golden_expected_passes_and_a_nudged_output_fails():
    """The reference's own outputs pass FORMAT.md's recipe at every level; moving one rotated output
    of a float32 case by 2**-16 of itself fails it (the recipe can fail)."""
    manifest, stored = _golden()
    for case in manifest["cases"]:
        arrays = {role: _decode(stored, entry) for role, entry in case["arrays"].items()}
        grade = _format_md_grade(case, arrays["inputs"], arrays["positions"], arrays["exact"], arrays["frequencies"],
                                 arrays["expected"])  # fmt: skip
        assert all(grade.values()), (case["id"], grade)
    case = next(c for c in manifest["cases"] if c["id"] == "float32/apply/gemma4-global-kv")
    arrays = {role: _decode(stored, entry) for role, entry in case["arrays"].items()}
    bad = arrays["expected"].copy()
    bad.reshape(-1)[0] *= np.float32(1 + 2**-16)
    grade = _format_md_grade(case, arrays["inputs"], arrays["positions"], arrays["exact"], arrays["frequencies"], bad)
    assert grade["strict"] is False


@pytest.mark.parametrize("backend", ["array_api:numpy", "torch"])
def test_our_backend_passes_the_golden_vectors(backend: str):
    """A backend checked the way an outside implementation would check itself with the golden files."""
    from p_rope.conformance.targets import backend_target

    try:
        target = backend_target(backend, "cpu")
    except ImportError as error:
        pytest.skip(f"{backend} not importable: {error}")
    module, fw = target.module, target.framework
    manifest, stored = _golden()
    for case in manifest["cases"]:
        arrays = {role: _decode(stored, entry) for role, entry in case["arrays"].items()}
        x = arrays["inputs"]
        if case["dtype"] == "bfloat16":
            x = x.astype(ml_dtypes.bfloat16)
        p = case["parameters"]
        kw = {"scale_factor": p["scale_factor"], "pairing": p["pairing"], "seq_axis": p["seq_axis"]}
        if p["rotated_pairs_argument"] is not None:
            kw["rotated_pairs"] = p["rotated_pairs_argument"]
        with warnings.catch_warnings():
            # NumPy's "invalid value" RuntimeWarnings on NaN positions are not what this test grades
            # (the run command records them per case in its JSON).
            warnings.simplefilter("ignore", RuntimeWarning)
            out = module.apply_p_rope(fw.to_native(x, "cpu"), fw.to_native(arrays["positions"], "cpu"),
                                      p["head_dim"], p["max_wavelength"], p["rope_percentage"], **kw)  # fmt: skip
        out = fw.to_numpy(out)
        assert out.dtype == x.dtype
        out = out.astype(np.float32) if case["dtype"] == "bfloat16" else out
        grade = _format_md_grade(case, arrays["inputs"], arrays["positions"], arrays["exact"], arrays["frequencies"],
                                 out)  # fmt: skip
        assert all(grade.values()), (case["id"], grade)


def test_golden_drift_is_detected(tmp_path: Path):
    copy = tmp_path / "golden"
    shutil.copytree(golden.golden_dir(), copy)
    arrays = dict(np.load(copy / "vectors.npz"))
    arrays["c005.exact"] = arrays["c005.exact"] * (1 + 1e-9)
    (copy / "vectors.npz").write_bytes(golden._npz_bytes(arrays))
    problems = golden.drift(copy)
    assert any("c005.exact" in p for p in problems)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["spec_version"] = "0.9"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert any("SPEC_VERSION 0.9" in p for p in golden.drift(copy))
    assert main(["golden", "--check", "--dir", str(copy)]) == 1


def test_golden_drift_ignores_no_input_bit(tmp_path: Path):
    """Inputs, positions and frequencies are compared bit for bit: one unit in the last place is drift."""
    copy = tmp_path / "golden"
    shutil.copytree(golden.golden_dir(), copy)
    arrays = dict(np.load(copy / "vectors.npz"))
    for name in ("c040.inputs", "c041.positions", "c042.frequencies"):
        changed = arrays[name].copy()
        flat = changed.reshape(-1)
        flat[-1] = np.nextafter(flat[-1], np.inf) if flat.dtype.kind == "f" else flat[-1] + 1
        (copy / "vectors.npz").write_bytes(golden._npz_bytes(arrays | {name: changed}))
        assert any(f"({name}) is not bit-identical" in p for p in golden.drift(copy)), name


# ---------------------------------------------------------------------------------------------
# Inputs without libm: bit-identical on every CPU


def above_baseline_features() -> str:
    """The SIMD extensions NumPy dispatches to on this machine above its baseline (space-separated)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__  # type: ignore[no-redef]
    return " ".join(name for name in __cpu_dispatch__ if __cpu_features__.get(name))


_HASH_INPUTS = """
import hashlib, json, sys
from p_rope.conformance import golden
digests = {}
for number, case in enumerate(golden.golden_cases()):
    for role, array in zip(("inputs", "positions"), golden.golden_arrays(case)):
        digests[f"c{number:03d}.{role}"] = golden._store(array)[1]["sha256"]
print(json.dumps(digests))
"""


def test_golden_inputs_are_the_same_on_numpy_baseline_code():
    """Regenerated with every SIMD extension above NumPy's baseline disabled (another libm path for pow,
    exp and log; sin and cos on some CPUs), the inputs and positions keep the manifest's checksums."""
    env = os.environ | {"NPY_DISABLE_CPU_FEATURES": above_baseline_features()}
    run = subprocess.run([sys.executable, "-c", _HASH_INPUTS], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    digests = json.loads(run.stdout)
    manifest, _ = _golden()
    stored = {a["name"]: a["sha256"] for c in manifest["cases"] for a in c["arrays"].values()}
    assert len(digests) == 2 * len(manifest["cases"])
    assert digests == {name: stored[name] for name in digests}


def test_golden_inputs_call_no_transcendental_function(monkeypatch: pytest.MonkeyPatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a transcendental function was called while making golden inputs")

    for name in ("sin", "cos", "tan", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "power", "float_power"):
        monkeypatch.setattr(np, name, forbidden)
    for name in ("sin", "cos", "tan", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "pow"):
        monkeypatch.setattr(math, name, forbidden)
    for case in golden.golden_cases():
        golden.golden_arrays(case)
    assert golden.abs_log(1e6) == 13.815510557964274  # decimal arithmetic, correctly rounded


def test_sweep_positions_are_the_nearest_integers():
    """nearest_integer_root(a, n) is the integer nearest 2**(a / n), against 50-digit decimal powers."""
    with localcontext() as ctx:
        ctx.prec = 50
        for root in (1, 2, 3, 7, 23, 47):
            for power in range(0, 24 * root + 1, max(1, root // 3)):
                exact = Decimal(2) ** (Decimal(power) / Decimal(root))
                assert golden.nearest_integer_root(power, root) == int(exact.to_integral_value()), (power, root)
    sweep = [c for c in golden.golden_cases() if c.positions.kind == "sweep"]
    assert sweep
    for case in sweep:
        positions = golden.golden_arrays(case)[1].reshape(-1)
        assert positions[0] == 0 and positions[1] == 1 and positions[-1] == case.positions.high
        assert np.all(np.diff(positions) >= 0)


def test_real_positions_lie_on_an_exact_grid():
    """Real positions are multiples of a power of two within [low, high], exact in their dtype."""
    real = [c for c in golden.golden_cases() if c.positions.kind == "real"]
    assert {c.positions.dtype for c in real} == {"float32", "float64"}
    denominators = set()
    for case in real:
        positions = golden.golden_arrays(case)[1]
        assert positions.dtype == case.positions.dtype
        spec = case.positions
        assert np.all((positions >= spec.low) & (positions <= spec.high))
        denominators |= {Fraction(float(v)).denominator for v in positions.reshape(-1)}
    assert len(denominators) > 1 and all(d & (d - 1) == 0 for d in denominators)  # powers of two, not all 1


# ---------------------------------------------------------------------------------------------
# Outputs: graded, not bit-identical


def test_output_tolerance_hand_computed():
    """2 E per element of a rotated pair: nx * 2**-53 * (10 + 4 theta) + 2**-1020; NoPE lanes 0."""
    entry = {"parameters": {"head_dim": 4, "rotated_pairs": 1, "pairing": "split_half", "seq_axis": -3,
                            "max_wavelength": 100.0, "scale_factor": 1.0}}  # fmt: skip
    x = np.array([3.0, 1.0, 4.0, 1.0]).reshape(1, 1, 1, 4)  # pair 0 = lanes (0, 2): nx = 5
    tolerance = golden.output_tolerance(entry, x, np.array([[2]]))  # theta = 2 * 1
    pair = 5 * 2.0**-53 * (10 + 8) + 2.0**-1020
    assert tolerance.reshape(-1).tolist() == [pair, 0.0, pair, 0.0]


def _jitter(real, ulps: int):
    """real (np.sin or np.cos) with float64 results moved by `ulps` units in the last place, up or down
    at random: the sin and cos of another C library."""

    def moved(x, *args, **kwargs):
        result = real(x, *args, **kwargs)
        values = np.asarray(result)
        if values.dtype != np.float64 or not values.size:
            return result
        up = np.random.default_rng(values.size).random(values.shape) < 0.5
        shifted = values * np.where(up, 1.0, -1.0)  # sign-symmetric steps in magnitude
        for _ in range(ulps):
            shifted = np.nextafter(shifted, np.inf)
        shifted = np.where(values == 0, values, shifted * np.where(up, 1.0, -1.0))  # sin(0) = 0 everywhere
        if isinstance(result, np.ndarray):
            result[...] = shifted
            return result
        return shifted[()]

    return moved


def test_drift_tolerates_another_libm_and_catches_a_wrong_one(monkeypatch: pytest.MonkeyPatch):
    """Float64 sin and cos one unit in the last place away from this platform's (what another CPU's
    or C library's give) leave no drift; 64 units away (a libm outside its accuracy) is drift."""
    real_sin, real_cos = np.sin, np.cos
    monkeypatch.setattr(np, "sin", _jitter(real_sin, 1))
    monkeypatch.setattr(np, "cos", _jitter(real_cos, 1))
    assert golden.drift() == []
    monkeypatch.setattr(np, "sin", _jitter(real_sin, 64))
    monkeypatch.setattr(np, "cos", _jitter(real_cos, 64))
    problems = golden.drift()
    assert any("exact (" in p for p in problems)
    assert not any("is not bit-identical" in p for p in problems)  # the inputs never move
