"""The benchmark's machinery without timing anything: the targets table judged by its one loop on
synthetic measurements (time, bandwidth, memory, strictness, the worst of several cases), the peak
memory meters on allocations of known size, the report writer on a tiny run, and the command line's
outputs. Speed itself is measured by ``nox -s bench``, never here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

from bench import harness, report, run, targets
from bench.results import (
    COMPUTED,
    COPY,
    DTYPES,
    FLASH_ATTN,
    LAYERS,
    LIGER,
    MODES,
    NUMPY_MEMORY_COPY,
    CaseResult,
    Result,
    cases_of,
)

ROOT = Path(__file__).resolve().parent.parent
LABELS = [f"{layer} {mode} {dtype}" for layer in LAYERS for mode in MODES for dtype in DTYPES]
MIB = 2**20


def result(name: str, framework: str, median_ms: float | None, **fields) -> Result:
    role = "floor" if name.startswith("copy") else ("ours" if name.startswith("ours") else "baseline")
    kind = fields.pop("kind", "copy" if role == "floor" else "e2e")
    median = None if median_ms is None else median_ms / 1e3
    fields.setdefault("accuracy", "strict (0.25 of bound)" if role != "floor" else "—")
    return Result(
        name,
        framework,
        role,
        kind,
        "",
        median=median,
        q1=median,
        q3=median,
        low=median,
        high=median,
        first=median,
        inner=1,
        reps=1,
        **fields,
    )


def case(label: str, *results: Result) -> CaseResult:
    layer, mode, dtype = label.split()
    spec = LAYERS[layer]
    shape = [1, 4096, spec["N"], spec["H"]] if mode == "prefill" else [32, 1, spec["N"], spec["H"]]
    return CaseResult(layer, mode, dtype, shape, list(results))


def row(text: str, device: str, cases: str = "") -> targets.Target:
    """The row of the table with this text, device and (when given) case pattern."""
    found = [t for t in targets.TARGETS if t.text == text and t.device == device and (not cases or t.cases == cases)]
    assert len(found) == 1, (text, device, cases, found)
    return found[0]


def verdict(target: targets.Target, *cases: CaseResult) -> targets.Verdict:
    return targets.evaluate(list(cases), target.device, (target,))[0]


# ---------------------------------------------------------------------------------------------
# the table


@pytest.mark.parametrize("target", targets.TARGETS, ids=lambda t: f"{t.device}:{t.text}:{t.cases}")
def test_each_row_is_well_formed(target: targets.Target) -> None:
    assert target.device in report.DEVICES
    assert target.measure in ("time", "bandwidth", "memory")
    assert target.bound > 0 and target.entries and target.against and target.source
    assert any(fnmatch.fnmatchcase(label, target.cases) for label in LABELS), target.cases
    assert (target.against == (targets.INPUT,)) == (target.measure == "memory")
    assert all(name.startswith("ours: ") for name in target.entries)


def test_rows_are_unique() -> None:
    keys = [(t.text, t.device, t.cases) for t in targets.TARGETS]
    assert len(keys) == len(set(keys))


def test_gpu_and_memory_targets_are_rows() -> None:
    """The GPU targets (bandwidth, in place, decode against flash-attn) and a memory row per backend."""
    for dtype in DTYPES:
        bandwidth = row("torch out of place ≥ 85% of copy bandwidth", "cuda", f"gemma4-global prefill {dtype}")
        assert (bandwidth.measure, bandwidth.bound, bandwidth.strict) == ("bandwidth", 0.85, True)
        in_place = row("torch in place at p = 0.25 ≤ 0.3x copy", "cuda", f"gemma4-global prefill {dtype}")
        assert (in_place.entries, in_place.bound, in_place.strict) == (("ours: torch apply_p_rope_",), 0.3, True)
        decode = row("torch decode latency ≤ flash-attn's (end to end)", "cuda", f"gemma4-global decode {dtype}")
        assert (decode.against, decode.bound, decode.strict) == ((FLASH_ATTN,), 1.0, True)
    memory = {(t.device, t.text.split(":")[0]) for t in targets.TARGETS if t.measure == "memory"}
    assert memory == {(d, b) for d, backends in targets.MEMORY_BACKENDS.items() for b in backends}
    assert all(t.bound == 2.0 and t.cases == "* * *" for t in targets.TARGETS if t.measure == "memory")


@pytest.fixture(scope="module")
def built_names() -> set[str]:
    """The names of the entries (and skips) a small CPU case builds, nothing timed."""
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    from bench import entries

    built = entries.Case("gemma4-global", "decode", "float32", "cpu", {"decode": {"B": 2, "L": 1}}, seed=0)
    skips: dict[str, str] = {}
    names = {e.name for build in entries.BUILDERS for e in build(built, skips)}
    assert skips == {FLASH_ATTN: entries.NEEDS_CUDA, LIGER: entries.NEEDS_CUDA}
    return names | set(skips)


@pytest.mark.parametrize("device", report.DEVICES)
@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)  # torch.compile's import
def test_rows_name_entries_that_are_built(built_names: set[str], device: str) -> None:
    known = built_names | ({"ours: array_api on torch"} if device == "cuda" else set())
    for target in targets.TARGETS:
        if target.device != device:
            continue
        names = set(target.entries) | set(target.against) - {targets.COPY, targets.INPUT}
        assert names <= known, (target.text, names - known)
        assert not target.also or target.also in known


# ---------------------------------------------------------------------------------------------
# the loop, on synthetic measurements


def test_time_against_copy_met_and_missed() -> None:
    target = row("torch out-of-place ≤ 1.5x copy", "cpu", "gemma4-global prefill float32")
    label = "gemma4-global prefill float32"
    met = verdict(
        target,
        case(
            label,
            result(COPY["torch"], "torch", 20.0),
            result(NUMPY_MEMORY_COPY, "torch", 16.0),
            result("ours: torch apply_p_rope", "torch", 29.0),
        ),
    )
    assert met.met is True and met.measured == "29.0 ms = 1.45x copy (1.81x the copy into NumPy-allocated memory)"
    missed = verdict(
        target, case(label, result(COPY["torch"], "torch", 20.0), result("ours: torch apply_p_rope", "torch", 31.0))
    )
    assert missed.met is False and missed.gap.startswith("needs 30.0 ms")


def test_time_against_the_fastest_baseline() -> None:
    target = row("torch end to end ≤ 1.10x the fastest float32-angle baseline", "cpu", "llama prefill float32")
    baselines = [
        result(name, "torch", ms) for name, ms in zip(targets.FLOAT32_ANGLE["torch"], (50.0, 40.0, 30.0), strict=True)
    ]
    v = verdict(target, case("llama prefill float32", result("ours: torch apply_p_rope", "torch", 34.0), *baselines))
    assert v.met is False and "rotate_half compiled 30.0 ms = 1.13x" in v.measured


def test_a_miss_names_the_computed_floor() -> None:
    """A missed time row of a framework whose least computed output costs more than its copy says
    what that floor costs in the case; without the floor the gap is the budget alone."""
    target = row("jax decode latency ≤ HF's (apply-only)", "cpu", "gemma4-global decode float32")
    label = "gemma4-global decode float32"
    hf = result("HF transformers Gemma 4: apply_rotary_pos_emb", "torch", 0.066)
    ours = result("ours: jax apply_p_rope_tables", "jax", 0.1, kind="apply")
    floor = result(COMPUTED["jax"], "jax", 0.08, kind="computed")
    with_floor = verdict(target, case(label, hf, ours, floor))
    assert with_floor.met is False
    assert "x * 2 in jax alone takes 0.08 ms here (ours: 1.25x it)" in with_floor.gap
    without = verdict(target, case(label, hf, ours))
    assert without.met is False and "x * 2" not in without.gap
    met = verdict(target, case(label, hf, result("ours: jax apply_p_rope_tables", "jax", 0.05, kind="apply"), floor))
    assert met.met is True and met.gap == ""


def test_bandwidth_is_copy_time_over_ours() -> None:
    target = row("torch out of place ≥ 85% of copy bandwidth", "cuda", "gemma4-global prefill bfloat16")
    label = "gemma4-global prefill bfloat16"
    copy = result(COPY["torch"], "torch", 0.016)
    assert verdict(target, case(label, copy, result("ours: torch apply_p_rope", "torch", 0.018))).met is True
    slow = verdict(target, case(label, copy, result("ours: torch apply_p_rope", "torch", 0.020)))
    assert slow.met is False and "80% of the copy's bandwidth" in slow.measured
    assert slow.gap.startswith("needs 0.0188 ms")


def test_strict_rows_need_a_strict_output() -> None:
    target = row("torch in place at p = 0.25 ≤ 0.3x copy", "cuda", "gemma4-global prefill float32")
    ours = result(
        "ours: torch apply_p_rope_", "torch", 0.005, kind="inplace", accuracy="conformant only (2x strict bound)"
    )
    v = verdict(target, case("gemma4-global prefill float32", result(COPY["torch"], "torch", 0.030), ours))
    assert v.met is False and "conformant only" in v.measured and v.gap == "the output must grade strict"


def test_memory_row_judges_the_worst_entry_of_every_case() -> None:
    target = row("torch: out of place, peak ≤ 2x the input", "cpu")

    def torch_results(qk_peak: float) -> list[Result]:
        return [
            result("ours: torch apply_p_rope", "torch", 1.0, peak_bytes=MIB, input_bytes=MIB),
            result(
                "ours: torch apply_p_rope_qk",
                "torch",
                2.0,
                kind="qk",
                peak_bytes=int(qk_peak * 2 * MIB),
                input_bytes=2 * MIB,
            ),
        ]

    fine = case("llama decode float32", *torch_results(1.5))
    over = case("llama prefill bfloat16", *torch_results(2.5))
    v = verdict(target, fine, over)
    assert v.met is False
    assert v.case == "every case (2; worst: llama prefill bfloat16)"
    assert v.measured.startswith("2.50x the input (ours: torch apply_p_rope_qk)")
    assert v.gap.startswith("peak 5 MiB where 2x the input is 4 MiB")
    assert verdict(target, fine).met is True


def test_rows_without_measurements_are_not_measured() -> None:
    verdicts = targets.evaluate([case("llama decode float32", result(COPY["torch"], "torch", 0.01))], "cpu")
    assert verdicts and all(v.met is None and v.why == "not measured" for v in verdicts)


def test_gpu_rows_are_not_run_without_cuda() -> None:
    verdicts = targets.not_run("cuda", report.NEEDS_CUDA)
    assert len(verdicts) == sum(t.device == "cuda" for t in targets.TARGETS)
    assert all(v.met is None and v.why == "not run: needs CUDA" for v in verdicts)


# ---------------------------------------------------------------------------------------------
# the meters


def test_torch_cpu_peak_counts_output_and_temporaries() -> None:
    torch = pytest.importorskip("torch")

    def call():
        scratch = torch.empty(MIB, dtype=torch.uint8)
        out = torch.empty(2 * MIB, dtype=torch.uint8)
        del scratch
        return out

    assert harness.torch_cpu_peak(call) == 3 * MIB


def test_numpy_peak_counts_output_and_temporaries() -> None:
    import numpy as np

    def call():
        scratch = np.ones(MIB, dtype=np.uint8)
        out = scratch * 2
        del scratch
        return out

    assert 2 * MIB <= harness.numpy_peak(call) < 2 * MIB + 64 * 1024


def test_xla_peak_counts_the_output() -> None:
    jnp = pytest.importorskip("jax.numpy")
    peak = harness.xla_peak(lambda a: a * 2, jnp.ones(MIB // 4, dtype=jnp.float32))
    assert peak is not None and MIB <= peak < 2 * MIB


def test_a_meter_that_misses_the_output_is_not_reported() -> None:
    entry = harness.Entry(
        "ours: x", "torch", "ours", "e2e", lambda: None, harness.no_sync, peak=lambda: 10, input_bytes=MIB
    )
    measured = Result(entry.name, entry.framework, entry.role, entry.kind, "", input_bytes=MIB)
    harness.record_peak(entry, measured)
    assert measured.peak_bytes is None and "less than the output" in measured.note
    harness.record_peak(dataclasses.replace(entry, in_place=True), measured)
    assert measured.peak_bytes == 10


def test_flash_attn_layout() -> None:
    from bench import baselines

    assert baselines.flash_attn_layout(512, 0.25) == (2, 64, False)  # Gemma 4 global: same bytes, not p-RoPE
    assert baselines.flash_attn_layout(128, 1.0) == (1, 128, True)  # Llama-like: p-RoPE exactly
    assert baselines.flash_attn_layout(256, 0.5) == (1, 128, False)
    with pytest.raises(ValueError, match="head_dim 512 with 3 rotated pairs"):
        baselines.flash_attn_layout(512, 3 / 256)  # 3 pairs do not split over 2 heads of 256 lanes


# ---------------------------------------------------------------------------------------------
# the report and the command line


def tiny_section(device: str = "cpu") -> dict:
    label = "gemma4-global decode float32"
    results = [
        result(COPY["torch"], "torch", 0.02),
        result("ours: torch apply_p_rope", "torch", 0.3, peak_bytes=600, input_bytes=512),
        result(
            "HF transformers Gemma 4",
            "torch",
            0.4,
            peak_bytes=1600,
            input_bytes=512,
            accuracy="conformant only (3x strict bound)",
        ),
        Result(FLASH_ATTN, "", "skipped", "", "", error=report.NEEDS_CUDA),
    ]
    return {
        "device": device,
        "date": "2026-01-01 00:00 UTC",
        "command": "python bench/run.py --quick",
        "elapsed_s": 1.0,
        "machine": {"CPU": "test", "device": device},
        "hf_source": "test",
        "quick": True,
        "reps": 1,
        "cases": [dataclasses.asdict(case(label, *results))],
    }


def test_report_has_its_sections_and_a_gpu_placeholder() -> None:
    text = report.render([tiny_section()])
    for heading in ("# Benchmarks", "## Device: cpu", "### Targets", "### Results", "## Device: cuda"):
        assert f"\n{heading}\n" in f"\n{text}"
    assert "| ÷ copy (same framework) | peak ÷ input | accuracy |" in text
    assert "| **ours: torch apply_p_rope** | end to end | 0.3 |" in text and "| 1.17x | strict" in text
    assert "Not run on a GPU yet" in text and "| not run: needs CUDA |" in text
    decode = "| torch decode latency ≤ HF's (end to end) | gemma4-global decode float32 | 0.3 ms vs HF, end to end "
    assert decode + "0.4 ms = 0.75x | **met** |" in text


def test_interrupted_run_says_so() -> None:
    assert "Interrupted: only the cases below were measured." in report.render(
        [{**tiny_section(), "interrupted": True}]
    )
    assert "Interrupted" not in report.render([tiny_section()])


def test_report_dir_section_alone() -> None:
    text = report.render([tiny_section("cuda")], expect=())
    assert "## Device: cuda" in text and "## Device: cpu" not in text


def test_json_round_trip(tmp_path: Path) -> None:
    section = tiny_section()
    path = tmp_path / "cpu.json"
    report.write(path, report.section_json(section))
    assert report.read_section(path) == section
    assert report.render([report.read_section(path)]) == report.render([section])


def test_older_json_without_memory_fields() -> None:
    section = tiny_section()
    for r in section["cases"][0]["results"]:
        del r["peak_bytes"], r["input_bytes"]
    assert all(r.peak_bytes is None for r in cases_of(section)[0].results)
    assert "| — | strict" in report.render([section])


def test_render_only(tmp_path: Path) -> None:
    path, out = tmp_path / "cpu.json", tmp_path / "BENCHMARKS.md"
    report.write(path, report.section_json(tiny_section()))
    assert run.main(["--render", "--include", str(path), "--out", str(out)]) == 0
    assert out.read_text() == report.render([tiny_section()])
    assert run.main(["--render", "--include", str(tmp_path / "absent.json"), "--out", str(out)]) == 2


def test_report_dir_outputs(tmp_path: Path) -> None:
    args = run.parse_args(["--device", "cuda", "--report-dir", str(tmp_path)])
    assert run.outputs(args) == (tmp_path / "cuda.json", tmp_path / "BENCHMARKS-gpu.md", [], ())


def test_cuda_asked_for_and_absent_fails(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cuda", "--report-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "torch sees no CUDA device" in done.stderr
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# the GPU entries' plumbing, on the CPU with stand-ins that follow the kernels' documented contracts


def flash_attn_stand_in(x, cos, sin, interleaved=False, seqlen_offsets=0):
    """flash-attn's apply_rotary_emb contract: x [B, L, N, D], cos/sin [positions, rotary_dim / 2] indexed at
    offset + l; the first rotary_dim lanes rotated, lane i with i + rotary_dim / 2; the rest copied."""
    import torch

    assert not interleaved
    half = cos.shape[-1]
    offsets = seqlen_offsets[:, None] if torch.is_tensor(seqlen_offsets) else seqlen_offsets
    rows = torch.arange(x.shape[1])[None, :] + offsets  # [B, L]
    c, s = cos[rows][:, :, None, :].float(), sin[rows][:, :, None, :].float()
    x1, x2 = x[..., :half].float(), x[..., half : 2 * half].float()
    out = x.clone()
    out[..., :half], out[..., half : 2 * half] = (x1 * c - x2 * s).to(x.dtype), (x2 * c + x1 * s).to(x.dtype)
    return out


def liger_stand_in(q, k, cos, sin):
    """Liger's rope contract: q, k [B, N, L, H] views of [B, L, N, H] storage, rotated there in place
    (rotate_half), cos/sin [B or 1, L, H] of which the first H / 2 are read."""
    half = q.shape[-1] // 2
    c, s = cos[..., :half][:, :, None, :], sin[..., :half][:, :, None, :]
    for t in (q, k):
        storage = t.transpose(1, 2)
        x1, x2 = storage[..., :half].clone(), storage[..., half:].clone()
        storage[..., :half], storage[..., half:] = x1 * c - x2 * s, x2 * c + x1 * s
    return q, k, cos, sin


@pytest.mark.parametrize("layer", list(LAYERS))
def test_gpu_entries_plumbing(monkeypatch: pytest.MonkeyPatch, layer: str) -> None:
    """Views, offsets, table sizes and grading of the flash-attn and Liger entries, run on the CPU with
    stand-ins: an output graded "fails" would mean mis-wired arguments."""
    pytest.importorskip("torch")
    from bench import baselines, entries

    monkeypatch.setattr(baselines, "flash_attn_rotary", lambda: (flash_attn_stand_in, "stand-in"))
    monkeypatch.setattr(baselines, "liger_rope", lambda: (liger_stand_in, "stand-in"))
    built = entries.Case(layer, "decode", "float32", "cpu", {"decode": {"B": 3, "L": 1}}, seed=1)
    x, k, pos = built.torch_arrays()
    make = entries.Maker(built, "torch", harness.no_sync)
    skips: dict[str, str] = {}
    made = entries.flash_attn_entries(built, make, x, skips) + entries.liger_entries(built, make, x, k, pos, skips)
    assert not skips and [e.name for e in made] == [FLASH_ATTN, LIGER]
    for entry in made:
        entry.run()
    flash, liger = made
    if layer == "llama":  # p = 1, H = 128: flash-attn computes p-RoPE
        assert flash.accuracy is None and entries.graded(built, flash).startswith(("strict", "conformant only"))
    else:
        assert flash.accuracy == "not graded (not p-RoPE: a latency reference)"
        assert flash.run().shape == x.shape
    assert liger.in_place and liger.input_bytes == 2 * built.nbytes
    assert entries.graded(built, liger).startswith(("strict", "conformant only"))
