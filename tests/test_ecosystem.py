"""The ecosystem report (conformance/ecosystem/, reports/ecosystem.{md,json}): the committed report agrees
with the pins, every finding has its reproducer, the drift check fails on drift, and the runner grades
an implementation end to end through ``check`` (here a correct outside one, in this environment)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from p_rope.conformance import ecosystem
from p_rope.conformance.ecosystem import LIBRARIES, REPORT_JSON, REPORT_MD, REPRO_DIR, Library, groups, load_report
from p_rope.conformance.ecosystem.report import collect, drift
from p_rope.conformance.ecosystem.run import portable, run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "reports" / "ecosystem" / "results"


def committed() -> dict[str, dict]:
    return {entry["key"]: entry for entry in load_report(ROOT / REPORT_JSON)["libraries"]}


def test_every_requirement_pinned_and_torch_is_the_cpu_build() -> None:
    for lib in LIBRARIES:
        assert lib.pins  # raises for a requirement without ==
        assert lib.distribution in lib.pins, f"{lib.key}: its distribution {lib.distribution} is not pinned"
        torch = [r for r in lib.requirements if r.split("==")[0] == "torch"]
        assert torch in ([], ["torch==2.13.0"]), lib.key
        if torch:
            assert lib.requirements[0] == "torch==2.13.0", f"{lib.key}: torch is installed first"
    assert len({lib.key for lib in LIBRARIES}) == len(LIBRARIES)
    assert all(libs for libs in groups().values())


def test_committed_report_matches_the_pins() -> None:
    report = committed()
    assert load_report(ROOT / REPORT_JSON)["schema"] == ecosystem.SCHEMA
    assert set(report) == {lib.key for lib in LIBRARIES}, "regenerate with `nox -s ecosystem`"
    for lib in LIBRARIES:
        entry = report[lib.key]
        assert entry["pins"] == lib.pins, f"{lib.key}: pins changed since the report (nox -s ecosystem)"
        if entry["status"] == "graded":
            assert entry["version"] == lib.pins[lib.distribution]
            assert {name: version.split("+")[0] for name, version in entry["versions"].items()} == lib.pins
        else:
            assert entry["status"] == "not run" and entry["why"]


def test_at_least_six_libraries_graded_and_cuda_ones_marked() -> None:
    report = committed()
    graded = {report[lib.key]["distribution"] for lib in LIBRARIES if report[lib.key]["status"] == "graded"}
    assert len(graded) >= 6, graded
    for lib in LIBRARIES:
        if lib.needs_cuda and report[lib.key]["status"] != "graded":
            assert report[lib.key]["why"] == "needs CUDA"


def test_every_finding_has_its_reproducer_and_no_orphans() -> None:
    """Each finding's reproducer is committed (None only where check writes none for its convention)."""
    listed = set()
    for entry in committed().values():
        for finding in entry.get("findings", []):
            if finding["reproducer"] is None:
                assert entry["convention"].startswith("hf"), entry["key"]
                continue
            path = ROOT / finding["reproducer"]
            assert path.is_file(), path
            assert "/work/" not in path.read_text().split('"""')[0], "reproducer headers name no local path"
            listed.add(path.name)
    on_disk = {p.name for p in (ROOT / REPRO_DIR).glob("*.py")}
    assert on_disk == listed


def test_keras_hub_width_clamp_is_a_finding() -> None:
    """keras-hub's rotary_dim = max(2, ...) rotates a pair at p = 0: SPEC's p0 cases fail, with a reproducer."""
    for key in ("keras-hub-torch", "keras-hub-jax"):
        entry = committed()[key]
        assert entry["status"] == "graded"
        cases = [f["case"] for f in entry["findings"]]
        assert any(c.endswith(("p0-identity", "p-tiny-H64-R0")) for c in cases), cases


def test_markdown_lists_every_library() -> None:
    text = (ROOT / REPORT_MD).read_text()
    for lib in LIBRARIES:
        assert f"| {lib.name} |" in text, lib.name


def test_drift_check(tmp_path: Path) -> None:
    fresh = tmp_path / "results"
    shutil.copytree(RESULTS, fresh)
    assert drift(fresh, ROOT / REPORT_JSON) == 0
    graded = next(p for p in sorted(fresh.glob("*.json")) if json.loads(p.read_text())["status"] == "graded")
    summary = json.loads(graded.read_text())
    dtype = next(iter(summary["by_dtype"]))
    summary["by_dtype"][dtype]["level"] = "strict" if summary["by_dtype"][dtype]["level"] != "strict" else "fail"
    graded.write_text(json.dumps(summary))
    assert drift(fresh, ROOT / REPORT_JSON) == 1
    summary["pins"] = {**summary["pins"], summary["distribution"]: "0.0.1"}
    graded.write_text(json.dumps(summary))
    assert drift(fresh, ROOT / REPORT_JSON) == 1


def test_collect_reports_a_missing_library_as_not_run(tmp_path: Path) -> None:
    entries = collect(tmp_path)
    assert [e["key"] for e in entries] == [lib.key for lib in LIBRARIES]
    assert all(e["status"] == "not run" for e in entries)


def test_portable_reproducer_names_the_package() -> None:
    lib = ecosystem.library("gemma")
    from p_rope.conformance.ecosystem import run as runner

    path = "/x/site-packages/gemma/gm/math/_positional_embeddings.py"
    original = runner.resolve_impl
    runner.resolve_impl = lambda spec: f"{path}:apply_rope"  # type: ignore[assignment]
    try:
        text = portable(lib, f"# found by {path}\n_spec = f({path!r})\n")
    finally:
        runner.resolve_impl = original  # type: ignore[assignment]
    assert path not in text
    assert "__import__('gemma').__file__" in text and "<site-packages>/gemma/" in text


def test_glue_imports_no_framework() -> None:
    """The registry and the glue modules import no framework and no library until called."""
    code = (
        "import sys\n"
        "import p_rope.conformance.ecosystem as e, p_rope.conformance.ecosystem.run, "
        "p_rope.conformance.ecosystem.report\n"
        "import importlib\n"
        "for m in ('keras_hub', 'transformers', 'onnxruntime', 'mlx', 'gemma', 'rotary_embedding_torch'):\n"
        "    importlib.import_module('p_rope.conformance.ecosystem.glue_' + m)\n"
        "loaded = {'torch', 'jax', 'keras', 'transformers', 'onnxruntime', 'mlx', 'keras_hub'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.slow
def test_runner_grades_an_outside_implementation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner end to end on the paper's NumPy code (conformant, not strict): check in a subprocess,
    the summary, the reproducers of its findings, the accuracy profile."""
    numpy_version = importlib.metadata.version("numpy")
    lib = Library(
        key="paper-numpy",
        name="the paper's NumPy code",
        distribution="numpy",
        requirements=(f"numpy=={numpy_version}",),
        function="p_rope.conformance.outside.paper_numpy",
        impl="p_rope.conformance.outside:paper_numpy",
        check_args=("--dtype", "float32", "--dtype", "float64"),
        convention="paper signature",
        profile="p_rope.conformance.outside:paper_numpy",
    )
    monkeypatch.setitem(ecosystem.BY_KEY, lib.key, lib)
    summary = run(lib.key, tmp_path / "results", tmp_path / "repro")
    assert summary["status"] == "graded", summary
    assert summary["version"] == numpy_version
    assert summary["by_dtype"]["float32"]["level"] == "conformant"
    assert summary["by_dtype"]["float32"]["first_strict_failure_position"] is not None
    profile = summary["accuracy"]["gemma4-global"]
    assert profile["strict"]["1e7"] > 1e3 > profile["strict"]["1"]  # float32 angles lose strictness
    for finding in summary["findings"]:
        assert Path(finding["reproducer"]).is_file()
    assert json.loads((tmp_path / "results" / "paper-numpy.json").read_text())["key"] == "paper-numpy"
    assert dataclasses.asdict(lib)["key"] == "paper-numpy"
