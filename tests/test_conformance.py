"""The conformance suite's machinery: the case list, run / report / check on the command line, the
device rules, and the golden vectors read the way FORMAT.md tells a C++ or Rust implementer to.

Expectations come from the NumPy reference, from FORMAT.md's recipe implemented here
independently of conformance/ and spec/tolerance.py, or from hand-built inputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from p_rope.conformance import golden
from p_rope.conformance.__main__ import main
from p_rope.conformance.cases import DTYPES, check_cases, run_cases
from p_rope.conformance.execute import CaseResult, LevelResult
from p_rope.conformance.frameworks import framework
from p_rope.conformance.run import aggregate
from p_rope.conformance.targets import detect_signature

# ---------------------------------------------------------------------------------------------
# the case list


def test_cases_cover_the_matrix():
    cases = run_cases()
    by_dtype = {d: [c for c in cases if c.dtype == d and c.op == "apply"] for d in DTYPES}
    for dtype, apply in by_dtype.items():
        assert {c.rope_percentage for c in apply} >= {0.0, 0.01, 0.25, 0.5, 0.58, 1.0}, dtype
        heads = {c.head_dim for c in apply}
        assert min(heads) == 2 and max(heads) == 512
        assert any(c.pairs == 28 and c.head_dim == 100 for c in apply)  # p = 0.58, H = 100: R = 28
        assert {c.pairing for c in apply} == {"split_half", "interleaved"}
        assert {c.seq_axis for c in apply} == {-3, -2}
        assert {c.scale_factor for c in apply} > {1.0}
        assert any(c.rotated_pairs is not None for c in apply)
        assert {c.positions.dtype for c in apply} == {"int32", "int64", "float32", "float64"}
        assert {c.positions.form for c in apply} == {"full", "seq", "ones"}
        assert all(c.seq_len != c.heads for c in apply if c.seq_len > 1)  # heads read as sequence show
        highs = [np.abs(c.materialize().positions).max() for c in apply]
        assert max(highs) == 2**24
        assert sum(h > 2**17 for h in highs) >= 4 and sum(h <= 2**17 for h in highs) >= 15
    assert {c.op for c in cases} == {"apply", "special", "tables", "qk", "inplace", "grad", "errors"}


def test_per_row_offsets_differ():
    case = next(c for c in run_cases() if c.name == "gemma4-global-kv" and c.op == "apply")
    positions = case.materialize().positions
    assert positions.shape == (2, 6)
    assert positions[0, 0] == 0 and positions[1, 0] != 0
    assert np.all(np.diff(positions, axis=1) == 1)


def test_case_arrays_are_deterministic_and_distinct():
    a, b = check_cases()[:2]
    first, again = a.materialize(), a.materialize()
    assert np.array_equal(first.inputs.view(np.uint8), again.inputs.view(np.uint8))
    assert np.array_equal(first.positions, again.positions)
    assert a.seed != b.seed


# ---------------------------------------------------------------------------------------------
# grading: nothing passes by being skipped


def _result(case, graded: int, ratio: float, not_applicable: str | None = None) -> CaseResult:
    levels = {level: LevelResult(graded, ratio, ratio <= 1.0) for level in ("conformant", "strict")}
    return CaseResult(case, levels, not_applicable=not_applicable)


def test_aggregate_never_passes_on_skipped_or_ungraded_cases():
    case = check_cases()[0]
    assert aggregate([_result(case, 0, 0.0, not_applicable="no such op")])["level"] == "n/a"
    assert aggregate([_result(case, 0, 0.0)])["level"] == "fail"  # ran, graded nothing
    assert aggregate([_result(case, 10, 0.5)])["level"] == "strict"
    mixed = [_result(case, 10, 0.5), _result(case, 10, 0.5, not_applicable="x")]
    assert aggregate(mixed)["cases"] == 1


# ---------------------------------------------------------------------------------------------
# run and report


def test_run_and_report_quick(tmp_path: Path):
    out = tmp_path / "reports"
    status = main(["run", "--backend", "reference", "--backend", "array_api:numpy", "--device", "cpu", "--quick",
                   "--out", str(out)])  # fmt: skip
    assert status == 0
    files = sorted(p.name for p in out.glob("*.json"))
    assert files == ["array_api_numpy-cpu.json", "reference-cpu.json"]
    record = json.loads((out / "reference-cpu.json").read_text())
    assert record["status"] == "ok" and record["errors"]["status"] == "pass"
    assert {record["summary"][d]["level"] for d in DTYPES} == {"strict"}
    assert main(["report", str(out)]) == 0
    report = json.loads((out / "conformance.json").read_text())
    cells = [c for c in report["cells"] if c["backend"] == "reference"]
    assert [c["dtype"] for c in cells] == list(DTYPES)
    assert all(c["status"] == "pass" and c["level"] == "strict" for c in cells)
    assert all(0.0 <= c["ratio"]["strict"] <= 1.0 for c in cells)
    markdown = (out / "conformance.md").read_text()
    assert "| reference | cpu | strict" in markdown


def test_device_asked_for_and_absent_is_a_failure(tmp_path: Path):
    if framework("torch").present("cuda"):
        pytest.skip("cuda is present: an absent device cannot be asked for here")
    status = main(["run", "--backend", "array_api:torch", "--device", "cuda", "--quick", "--out", str(tmp_path)])
    assert status == 1
    record = json.loads((tmp_path / "array_api_torch-cuda.json").read_text())
    assert record["status"] == "device missing"
    assert main(["report", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "conformance.json").read_text())
    assert {c["status"] for c in report["cells"] if c["device"] == "cuda" and c["backend"] == "array_api:torch"} == {
        "device missing"
    }


def test_devices_not_asked_for_are_not_available(tmp_path: Path):
    assert main(["run", "--backend", "array_api:torch", "--quick", "--out", str(tmp_path)]) == 0
    main(["report", str(tmp_path)])
    report = json.loads((tmp_path / "conformance.json").read_text())
    states = {(c["device"], c["status"]) for c in report["cells"] if c["backend"] == "array_api:torch"}
    assert ("cpu", "pass") in states
    for device in ("cuda", "mps"):
        if not framework("torch").present(device):
            assert (device, "not available") in states


def test_numpy_backend_on_an_accelerator_is_not_applicable(tmp_path: Path):
    assert main(["run", "--backend", "reference", "--device", "cuda", "--quick", "--out", str(tmp_path)]) == 0
    assert not list(tmp_path.glob("*.json"))


def test_backend_that_does_not_load_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("P_ROPE_VENDOR_DIR", str(tmp_path / "empty"))
    assert main(["run", "--backend", "vendor:torch", "--quick", "--out", str(tmp_path)]) == 1
    record = json.loads((tmp_path / "vendor_torch-cpu.json").read_text())
    assert record["status"] == "error" and "does not exist" in record["error"]


def test_devices_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("P_ROPE_DEVICES", "cpu")
    monkeypatch.setenv("P_ROPE_BACKENDS", "reference")
    assert main(["run", "--quick", "--out", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.glob("*.json")] == ["reference-cpu.json"]


# ---------------------------------------------------------------------------------------------
# check


def test_signature_detection():
    def paper(inputs, positions, head_dim, max_wavelength=10_000, rope_percentage=1.0): ...
    def gemma(inputs, positions, *, base_frequency, scale_factor=1.0, rope_proportion=1.0): ...
    def partial(inputs, positions, head_dim, max_wavelength, rope_percentage, *, seq_axis=-3): ...
    def anything(inputs, positions, head_dim, *args, **kwargs): ...

    assert detect_signature(paper) == ("paper", frozenset())
    assert detect_signature(gemma) == ("gemma", frozenset({"scale_factor"}))
    assert detect_signature(partial) == ("ours", frozenset({"seq_axis"}))
    assert detect_signature(anything)[0] == "ours" and len(detect_signature(anything)[1]) == 4


def test_check_command_rejects_a_mutant_with_a_runnable_reproducer(tmp_path: Path, capsys):
    impl = "p_rope.conformance.mutants:row_offsets_lost"
    json_path = str(tmp_path / "r.json")
    status = main(["check", "--impl", impl, "--dtype", "float32", "--repro-dir", str(tmp_path), "--json", json_path,
                   "--max-failures", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1
    assert "GRADE: NOT CONFORMANT" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["grade"] == "fail" and result["framework"] == "numpy" and result["signature"] == "ours"
    scripts = sorted(tmp_path.glob("repro_*.py"))
    assert len(scripts) == 2
    # The failure depends on two batch rows: the shrunk reproducer keeps two rows, one token, one head.
    text = scripts[0].read_text()
    assert "row_offsets_lost" in text and "shape=(" in text
    run = subprocess.run([sys.executable, str(scripts[0])], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "AssertionError" in run.stderr and "conformant bound" in run.stderr


def test_check_command_accepts_the_reference_by_path(tmp_path: Path, capsys):
    impl = tmp_path / "my_rope.py"
    impl.write_text(
        "import p_rope\n\n\n"
        "def rope(inputs, positions, head_dim, max_wavelength=10_000, rope_percentage=1.0):\n"
        "    return p_rope.apply_p_rope(inputs, positions, head_dim, max_wavelength, rope_percentage)\n"
    )
    assert main(["check", "--impl", f"{impl}:rope"]) == 0
    out = capsys.readouterr().out
    assert "signature paper" in out and "GRADE: STRICT" in out and "not tested" in out


def test_check_level_strict_exit_status(capsys):
    impl = "p_rope.conformance.outside:paper_numpy"
    assert main(["check", "--impl", impl, "--dtype", "float32"]) == 0
    assert main(["check", "--impl", impl, "--dtype", "float32", "--level", "strict", "--max-failures", "1"]) == 1
    assert "reproducer of" in capsys.readouterr().out


def test_check_needs_an_impl(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("P_ROPE_IMPL", raising=False)
    assert main(["check"]) == 2


# ---------------------------------------------------------------------------------------------
# golden vectors, read as FORMAT.md describes (zip + NPY, bfloat16 from uint16 bits), and graded
# with FORMAT.md's recipe, written here from the document and not from spec/tolerance.py.


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
    import p_rope

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
            import ml_dtypes

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


def test_check_on_a_device_the_framework_lacks_fails(capsys):
    assert main(["check", "--impl", "p_rope.conformance.outside:paper_numpy", "--device", "cuda"]) == 1
    assert "NOT CONFORMANT" in capsys.readouterr().out


def test_check_of_something_that_is_not_p_rope_fails(capsys):
    assert main(["check", "--impl", "builtins:len"]) == 1
    assert "could not call" in capsys.readouterr().out
