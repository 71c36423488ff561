"""The conformance suite's machinery: the case list, run / report / check on the command line, the
device rules (the golden vectors: tests/test_golden.py).

Expectations come from the NumPy reference or from hand-built inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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
    assert detect_signature(gemma) == ("gemma", frozenset({"scale_factor", "rope_proportion"}))
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


def test_reproducers_shrink_the_head_dimension(tmp_path: Path, capsys):
    """A failure on Gemma 4's H = 512 heads is reproduced on a head of a few pairs (the failing pair
    and a NoPE pair), in a script of about 40 lines that fails when run."""
    status = main(["check", "--impl", "p_rope.conformance.mutants:compact_pairing", "--dtype", "float32",
                   "--repro-dir", str(tmp_path)])  # fmt: skip
    capsys.readouterr()
    assert status == 1
    script = tmp_path / "repro_apply_float32_gemma4-global-kv.py"
    text = script.read_text()
    assert "on (1, 1, 1, 8) inputs" in text and "H, W, P, R, SCALE = 8," in text
    assert len(text.splitlines()) <= 45
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "NoPE lanes are not bit-identical" in run.stderr


def test_check_command_accepts_the_reference_by_path(tmp_path: Path, capsys):
    impl = tmp_path / "my_rope.py"
    impl.write_text(
        "import p_rope\n\n\n"
        "def rope(inputs, positions, head_dim, max_wavelength=10_000, rope_percentage=1.0):\n"
        "    return p_rope.apply_p_rope(inputs, positions, head_dim, max_wavelength, rope_percentage)\n"
    )
    assert main(["check", "--impl", f"{impl}:rope"]) == 0
    out = capsys.readouterr().out
    assert "convention paper" in out and "GRADE: STRICT" in out and "not tested" in out


def test_check_level_strict_exit_status(capsys):
    impl = "p_rope.conformance.outside:paper_numpy"
    assert main(["check", "--impl", impl, "--dtype", "float32"]) == 0
    assert main(["check", "--impl", impl, "--dtype", "float32", "--level", "strict", "--max-failures", "1"]) == 1
    assert "reproducer of" in capsys.readouterr().out


def test_check_needs_an_impl(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("P_ROPE_IMPL", raising=False)
    assert main(["check"]) == 2


def test_check_on_a_device_the_framework_lacks_is_a_usage_error(capsys):
    """An absent device is the environment's problem: exit status 2, one line, no grade."""
    assert main(["check", "--impl", "p_rope.conformance.outside:paper_numpy", "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    assert "GRADE" not in captured.out and len(captured.err.strip().splitlines()) == 1
    assert "device cuda is not present" in captured.err


def test_check_of_something_that_is_not_p_rope_fails(capsys):
    assert main(["check", "--impl", "builtins:len"]) == 1
    assert "could not call" in capsys.readouterr().out
