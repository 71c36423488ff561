"""tools/device_check.sh, the one-command GPU check: it fails loudly without CUDA, and its CPU
rehearsal (--dry-run) runs every step (install, the conformance runs and matrix, the CUDA test
selection, the benchmarks, the archive) and writes every file into the one output folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "device_check.sh"
STEPS = ["install", "conformance torch", "conformance jax", "cuda tests", "conformance matrix", "gpu benchmarks"]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_without_cuda_fails_loudly(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("cuda is present: the check would run")
    result = _run(str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "FAILED: torch sees no CUDA device" in result.stderr
    assert (tmp_path / "out" / "summary.txt").read_text().startswith("FAILED")


@pytest.mark.slow
def test_dry_run_rehearses_every_step(tmp_path: Path) -> None:
    out, archive = tmp_path / "device-check", tmp_path / "packed" / "device-check.tar.gz"
    result = _run("--dry-run", "--archive", str(archive), str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]
    summary = (out / "summary.txt").read_text().splitlines()  # steps run side by side finish in any order
    assert sorted(line.split("(")[0].split(None, 1) for line in summary) == sorted(["ok", f"{s} "] for s in STEPS)
    written = {
        "conformance/torch-cpu.json",
        "conformance/jax-cpu.json",
        "conformance/conformance.md",
        "conformance/conformance.json",
        "tests.txt",
        "bench/cpu.json",
        "bench/BENCHMARKS-cpu.md",
        "log.txt",
        "summary.txt",
    }
    assert all((out / name).is_file() for name in written), sorted(p.name for p in out.rglob("*"))
    with tarfile.open(archive) as packed:
        names = set(packed.getnames())
    assert {f"device-check/{name}" for name in written} <= names
