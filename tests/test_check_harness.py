"""check's harness: nothing an implementation does escapes it (SystemExit, KeyboardInterrupt, hangs,
crashes at import, its input returned as the output, positions written), usage and environment
errors exit with status 2 and one line, and the grade follows the dtypes claimed.

Each bad implementation is written here on purpose; expectations are the statuses and verdicts of
conformance/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from p_rope.conformance.__main__ import main

GOOD = """
import p_rope


def rope(inputs, positions, head_dim, max_wavelength=10_000, rope_percentage=1.0):
    return p_rope.apply_p_rope(inputs, positions, head_dim, max_wavelength, rope_percentage)
"""


def _impl(tmp_path: Path, body: str, name: str = "impl.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return f"{path}:rope"


def _check(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["check", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_system_exit_is_a_failure_of_the_implementation(tmp_path: Path, capsys):
    body = GOOD.replace("    return p_rope", "    if head_dim == 512:\n        raise SystemExit(0)\n    return p_rope")
    status, out, _ = _check(capsys, "--impl", _impl(tmp_path, body), "--dtype", "float32")
    assert status == 1
    assert "raised SystemExit" in out and "GRADE: NOT CONFORMANT" in out


def test_keyboard_interrupt_is_a_failure_of_the_implementation(tmp_path: Path, capsys):
    body = GOOD.replace(
        "    return p_rope", "    if head_dim == 512:\n        raise KeyboardInterrupt\n    return p_rope"
    )
    status, out, _ = _check(capsys, "--impl", _impl(tmp_path, body), "--dtype", "float32")
    assert status == 1 and "raised KeyboardInterrupt" in out


def test_a_hang_in_python_code_times_out(tmp_path: Path, capsys):
    body = GOOD.replace("    return p_rope", "    while head_dim == 512:\n        pass\n    return p_rope")
    status, out, _ = _check(capsys, "--impl", _impl(tmp_path, body), "--dtype", "float32", "--timeout", "0.5")
    assert status == 1
    assert "did not return within 0.5 s" in out and "GRADE: NOT CONFORMANT" in out


def test_a_hang_that_ignores_the_alarm_is_stopped_by_the_watchdog(tmp_path: Path):
    """Code that takes the alarm away (as native code that never returns to Python does) is stopped by
    the watchdog thread: the check reports the case and exits 1 instead of hanging."""
    body = GOOD.replace(
        "    return p_rope",
        "    import signal, time\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "    while head_dim == 512:\n        time.sleep(0.05)\n    return p_rope",
    )
    impl = _impl(tmp_path, body)
    run = subprocess.run(
        [sys.executable, "-m", "p_rope.conformance", "check", "--impl", impl, "--dtype", "float32", "--timeout", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "could not be interrupted" in run.stdout and "GRADE: NOT CONFORMANT" in run.stdout


def test_syntax_error_at_import_is_a_failure_not_a_crash(tmp_path: Path, capsys):
    status, out, _ = _check(capsys, "--impl", _impl(tmp_path, "def rope(:\n"))
    assert status == 1
    assert "SyntaxError" in out and "GRADE: NOT CONFORMANT" in out


def test_returning_the_input_at_r0_fails(tmp_path: Path, capsys):
    early = "    if int(rope_percentage * head_dim // 2) == 0:\n        return inputs\n"
    body = GOOD.replace("    return p_rope", early + "    return p_rope")
    status, out, _ = _check(capsys, "--impl", _impl(tmp_path, body), "--dtype", "float32")
    assert status == 1
    assert "apply/float32/p0-identity" in out and "requires a new array, even at R = 0" in out


def test_writing_into_positions_fails(tmp_path: Path, capsys):
    write = "    out = p_rope.apply_p_rope(inputs, positions, head_dim, max_wavelength, rope_percentage)\n"
    write += "    positions[...] = 0\n    return out\n"
    body = GOOD.replace("    return p_rope", write + "    return p_rope")
    status, out, _ = _check(capsys, "--impl", _impl(tmp_path, body), "--dtype", "float32")
    assert status == 1 and "positions: modified by the call" in out


def test_module_not_found_is_a_usage_error_with_the_path_form(capsys):
    status, out, err = _check(capsys, "--impl", "no_such_module_here:rope")
    assert status == 2 and "GRADE" not in out
    assert len(err.strip().splitlines()) == 1 and "path/to/file.py:function" in err


@pytest.mark.parametrize(
    "args",
    [["--convention", "nonsense"], ["--signature", "nonsense"], ["--dtypes-claimed", "f33"], ["--layer-type", "x"]],
    ids=["convention", "signature", "dtype", "layer-type-without-config"],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], capsys):
    try:
        status = main(["check", "--impl", "p_rope.conformance.outside:paper_numpy", *args])
    except SystemExit as stop:  # argparse's errors
        status = stop.code  # type: ignore[assignment]
    captured = capsys.readouterr()
    assert status == 2
    assert "GRADE" not in captured.out and len(captured.err.strip().splitlines()) == 1


def test_the_console_script_finds_modules_in_the_working_directory(tmp_path: Path):
    """Like `python -m`, the console script imports --impl module:function from the working directory."""
    (tmp_path / "my_rope_module.py").write_text(GOOD)
    code = "import sys; from p_rope.conformance.__main__ import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run(
        [sys.executable, "-P", "-c", code, "check", "--impl", "my_rope_module:rope", "--dtype", "float32"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "GRADE: STRICT" in run.stdout


def test_unsupported_dtype_is_reported_once_not_failed(tmp_path: Path, capsys):
    body = GOOD.replace("    return p_rope", "    if inputs.dtype.name == 'bfloat16':\n"
                        "        raise TypeError('bfloat16 is not supported')\n    return p_rope")  # fmt: skip
    impl = _impl(tmp_path, body)
    status, out, _ = _check(capsys, "--impl", impl)
    assert status == 0
    assert out.count("not supported (TypeError: bfloat16 is not supported") == 1
    assert "GRADE: STRICT (bfloat16 not supported)" in out
    status, out, _ = _check(capsys, "--impl", impl, "--dtypes-claimed", "bf16,f32")
    assert status == 1 and "GRADE for the claimed bfloat16, float32: NOT CONFORMANT" in out


def test_claimed_dtypes_decide_the_exit_status(capsys):
    """Float32 arithmetic: not conformant in float64 (named), conformant where it claims to be."""
    impl = "p_rope.conformance.outside:hf_torch"
    status, out, _ = _check(capsys, "--impl", impl)
    assert status == 1
    assert "float64: matches float32 arithmetic on float64 inputs" in out.splitlines()[-1]
    status, out, _ = _check(capsys, "--impl", impl, "--dtypes-claimed", "f16,bf16,f32")
    assert status == 0
    assert "float64" in out and out.splitlines()[-1].startswith("GRADE for the claimed float16, bfloat16, float32:")


def test_errors_are_reported_and_graded_only_when_required(tmp_path: Path, capsys):
    impl = "p_rope.conformance.outside:paper_numpy"
    status, out, _ = _check(capsys, "--impl", impl, "--dtype", "float32", "--errors")
    assert status == 0
    assert "max_wavelength 0: SILENTLY PRODUCED NUMBERS" in out
    assert "positions do not broadcast: rejected (ValueError" in out
    assert _check(capsys, "--impl", impl, "--dtype", "float32", "--require-errors")[0] == 1
    status, out, _ = _check(capsys, "--impl", "p_rope:apply_p_rope", "--dtype", "float32", "--errors")
    assert "odd head_dim: rejected (ValueError" in out


def test_json_records_convention_and_causes(tmp_path: Path, capsys):
    path = tmp_path / "r.json"
    main(["check", "--impl", "p_rope.conformance.mutants:compact_pairing", "--dtype", "float32", "--json", str(path)])
    capsys.readouterr()
    data = json.loads(path.read_text())
    assert data["convention"] == "ours"
    assert data["by_dtype"]["float32"]["mistakes"] == ["compact pairing"]
