"""Grade one library in the environment where it is installed: ``check`` as a subprocess, then a summary.

The summary (``DIR/<key>.json``) keeps what the report shows: the installed versions (which must be
the pins), each dtype's verdict, the mistakes ``check`` matched, the first position where strict
accuracy is lost, one reproducer per finding, and the library's worst error per position decade on
two float32 layers (the accuracy report's, computed by calling the library's own code).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import REPRO_DIR, Library, library

CHECK_TIMEOUT = 600  # seconds for one library's check run
MAX_REPRODUCERS = 4  # per library: one per distinct finding
# The accuracy profile: float32, windows of consecutive positions starting at each decade and near 2**24.
PROFILE_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"label": "H = 128, w = 1e4, p = 1", "H": 128, "w": 1e4, "p": 1.0},
    "gemma4-global": {"label": "H = 512, w = 1e6, p = 0.25", "H": 512, "w": 1e6, "p": 0.25},
}
DECADES = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 2**24 - 7)  # the last window ends at 2**24
DECADE_LABELS = ("1", "10", "100", "1e3", "1e4", "1e5", "1e6", "1e7", "2^24")
WINDOW, HEADS = 8, 4  # as bench/accuracy.py


def cuda_present() -> bool:
    """A CUDA device on this machine (asked of the driver, not of a framework)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def installed_versions(lib: Library) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in lib.pins:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def resolve_impl(spec: str) -> str:
    """``pkgfile:MODULE:PATH:ATTR`` -> ``/site-packages/MODULE/PATH:ATTR``; anything else unchanged."""
    if not spec.startswith("pkgfile:"):
        return spec
    from .glue_gemma import package_file

    _, module, relative, attribute = spec.split(":")
    return f"{package_file(module, relative)}:{attribute}"


def _mistakes(raw: dict[str, Any]) -> list[str]:
    """The named mistakes ``check`` matched, wherever its JSON states them."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("mistake", "matches", "diagnosis", "matched_mistake") and isinstance(item, str):
                    found.append(item)
                elif key in ("mistakes", "diagnoses") and isinstance(item, list):
                    found.extend(str(x.get("name", x)) if isinstance(x, dict) else str(x) for x in item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk({k: v for k, v in raw.items() if k != "reproducers"})
    return sorted(set(found))


def _verdicts(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    verdicts = {}
    for dtype, summary in raw.get("by_dtype", {}).items():
        verdicts[dtype] = {
            "level": summary.get("level"),
            "why": summary.get("cause") or summary.get("why"),
            "mistakes": summary.get("mistakes") or [],
            "conformant_ratio": summary.get("ratio", {}).get("conformant"),
            "strict_ratio": summary.get("ratio", {}).get("strict"),
            "first_strict_failure_position": summary.get("first_strict_failure_position"),
            "special": summary.get("special"),
            "claimed": summary.get("claimed"),
        }
    return verdicts


def _dtype(case_id: str) -> str:
    return case_id.split("/")[1] if case_id.count("/") >= 2 else ""


def _case_stem(case_id: str) -> str:
    """apply/float32/p0-identity -> apply/p0-identity (the finding, whatever the dtype)."""
    parts = case_id.split("/")
    return "/".join(p for p in parts if p not in ("float16", "bfloat16", "float32", "float64"))


def _findings(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Cases failing the conformant level, one per cause (the mistake check matched for the case's dtype,
    else the case name; float32 first), with their reproducer."""
    reproducers = raw.get("reproducers", {})
    unsupported = {d for d, v in raw.get("by_dtype", {}).items() if v.get("level") == "unsupported"}
    failing = [
        c
        for c in raw.get("cases", [])
        if "conformant" in (c.get("failed_levels") or []) and not any(f"/{d}/" in c["id"] for d in unsupported)
    ]
    order = {"float32": 0, "bfloat16": 1, "float16": 2, "float64": 3}
    failing.sort(key=lambda c: min((order[d] for d in order if f"/{d}/" in c["id"]), default=9))
    by_dtype = raw.get("by_dtype", {})
    findings: list[dict[str, Any]] = []
    stems: set[str] = set()
    mistakes: set[str] = set()

    def add(case: dict[str, Any], mistake: str | None) -> None:
        stems.add(_case_stem(case["id"]))
        if mistake:
            mistakes.add(mistake)
        findings.append(
            {
                "case": case["id"],
                "what": case.get("case", ""),
                "problem": _problem(case),
                "mistake": mistake,
                "script": reproducers.get(case["id"]),
            }
        )

    def explained(dtype: str) -> str | None:
        """The one mistake check matched for every failing case of ``dtype`` (not "k of n cases examined")."""
        verdict = by_dtype.get(dtype) or {}
        named = verdict.get("mistakes") or []
        return named[0] if len(named) == 1 and "examined" not in (verdict.get("cause") or "") else None

    for case in failing:  # first, one case per mistake that explains a dtype's failures
        mistake = explained(_dtype(case["id"]))
        if mistake and mistake not in mistakes and _case_stem(case["id"]) not in stems:
            add(case, mistake)
    for case in failing:  # then each other failing case name
        if not explained(_dtype(case["id"])) and _case_stem(case["id"]) not in stems:
            add(case, None)
    return findings


def _problem(case: dict[str, Any]) -> str:
    problems = case.get("problems") or []
    if problems:
        return str(problems[0])
    if case.get("error"):
        return str(case["error"])
    worst = case.get("worst") or {}
    if worst:
        return f"error {worst.get('ratio', 0):.3g} x the {worst.get('level')} bound at position {worst.get('position')}"
    return case.get("status", "fail")


def _write_reproducers(lib: Library, version: str | None, findings: list[dict[str, Any]], repro_dir: Path) -> None:
    repro_dir.mkdir(parents=True, exist_ok=True)
    for old in repro_dir.glob(f"{lib.key}--*.py"):
        old.unlink()
    install = " ".join(r for r in (*lib.requirements, *lib.no_deps))
    if any(a.startswith("p_rope") for a in (lib.impl, *lib.check_args)):  # glue of this project (--rotary)
        install += " p-rope"
    for finding in findings[:MAX_REPRODUCERS]:
        if not finding["script"]:
            finding["reproducer"] = None  # check wrote none for this case
            continue
        name = f"{lib.key}--" + re.sub(r"[^A-Za-z0-9_.-]+", "-", finding["case"]) + ".py"
        header = [
            f"# {lib.name} {version}: {finding['problem']}",
            f"# graded: {lib.function}",
            f"# install: pip install {install}",
        ]
        if finding["mistake"]:
            header.append(f"# matches: {finding['mistake']}")
        header += [f"# {k}={v}" for k, v in lib.env]
        (repro_dir / name).write_text("\n".join(header) + "\n" + portable(lib, finding["script"]))
        finding["reproducer"] = f"{repro_dir.as_posix()}/{name}"


def portable(lib: Library, script: str) -> str:
    """A reproducer that names a file inside an installed package by the package, not by this machine's path."""
    if not lib.impl.startswith("pkgfile:"):
        return script
    _, module, relative, _ = lib.impl.split(":")
    path = resolve_impl(lib.impl).rpartition(":")[0]
    located = (
        f"__import__('os').path.join(__import__('os').path.dirname(__import__({module!r}).__file__), {relative!r})"
    )
    return script.replace(repr(path), located).replace(path, f"<site-packages>/{module}/{relative}")


def _load(spec: str) -> Any:
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def accuracy_profile(lib: Library) -> dict[str, Any]:
    """Worst relative error (and its multiple of the strict bound) per position decade, float32."""
    import p_rope
    from p_rope.tolerance import error_map

    assert lib.profile is not None
    function = _load(lib.profile)
    starts = np.array(DECADES, dtype=np.int64)
    positions = np.minimum(starts[:, None] + np.arange(WINDOW), 2**24).reshape(1, -1)
    profile: dict[str, Any] = {}
    for seed, (key, config) in enumerate(PROFILE_CONFIGS.items()):
        H, w, p = config["H"], config["w"], config["p"]
        R = p_rope.rotated_pair_count(H, p)
        x = np.random.default_rng(seed).standard_normal((1, positions.shape[1], HEADS, H), dtype=np.float32)
        x64 = x.astype(np.float64)
        norm = np.hypot(x64[..., :R], x64[..., H // 2 : H // 2 + R])
        try:
            out = np.asarray(function(x, positions, H, w, p), dtype=np.float32)
            emap = error_map(out, x, positions, H, w, p)
        except Exception as error:  # the library cannot run this layer: say so, once
            profile[key] = {"error": f"{type(error).__name__}: {error}"[:300]}
            continue
        rel = (emap.error / norm).reshape(len(starts), -1).max(axis=1)
        strict = emap.ratio["strict"].reshape(len(starts), -1).max(axis=1)
        nope_ok = bool(np.array_equal(out[..., R : H // 2], x[..., R : H // 2]))
        nope_ok &= bool(np.array_equal(out[..., H // 2 + R :], x[..., H // 2 + R :]))
        profile[key] = {
            "relative": {label: float(v) for label, v in zip(DECADE_LABELS, rel, strict=True)},
            "strict": {label: float(v) for label, v in zip(DECADE_LABELS, strict, strict=True)},
            "nope_lanes_exact": nope_ok,
        }
    return profile


def run(key: str, out_dir: Path, repro_dir: Path = REPRO_DIR) -> dict[str, Any]:
    """Grade library ``key`` here; write ``out_dir/<key>.json`` and its reproducers; return the summary."""
    lib = library(key)
    summary: dict[str, Any] = {
        "key": lib.key,
        "name": lib.name,
        "distribution": lib.distribution,
        "pins": lib.pins,
        "function": lib.function,
        "convention": lib.convention,
        "needs_cuda": lib.needs_cuda,
        "note": lib.note,
    }
    start = time.perf_counter()
    os.environ.update(dict(lib.env))  # for the accuracy profile in this process too (e.g. KERAS_BACKEND)
    if lib.needs_cuda and not cuda_present():
        summary |= {"status": "not run", "why": "needs CUDA", "version": lib.pins.get(lib.distribution)}
        return _save(summary, out_dir)
    versions = installed_versions(lib)
    summary["versions"] = versions  # as installed: a local label such as torch's "+cpu" included
    summary["version"] = versions.get(lib.distribution)
    wrong = {n: (v, lib.pins[n]) for n, v in versions.items() if (v or "").split("+")[0] != lib.pins[n]}
    if wrong:
        listed = ", ".join(f"{n} {v} (pinned {pin})" for n, (v, pin) in wrong.items())
        summary |= {"status": "error", "why": f"installed versions differ from the pins: {listed}"}
        return _save(summary, out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "check.json"
        command = [sys.executable, "-m", "p_rope.conformance", "check", "--impl", resolve_impl(lib.impl)]
        command += [*lib.check_args, "--json", str(raw_path), "--max-failures", "50"]
        summary["command"] = "python -m p_rope.conformance check --impl " + " ".join([lib.impl, *lib.check_args])
        env = os.environ | dict(lib.env)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT, env=env)
        except subprocess.TimeoutExpired:
            summary |= {"status": "error", "why": f"check did not finish in {CHECK_TIMEOUT} s"}
            return _save(summary, out_dir)
        summary["exit_status"] = done.returncode
        if not raw_path.exists():
            last = (done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or [""])[-1]
            summary |= {"status": "not run", "why": f"check exited {done.returncode}: {last[:300]}"}
            return _save(summary, out_dir)
        raw = json.loads(raw_path.read_text())
    summary |= {
        "status": "graded",
        "grade": raw.get("grade"),
        "signature": raw.get("convention") or raw.get("signature"),
        "cases": len(raw.get("cases", [])),
        "untested": len(raw.get("untested", [])),
        "by_dtype": _verdicts(raw),
        "mistakes": _mistakes(raw),
    }
    findings = _findings(raw)
    _write_reproducers(lib, summary["version"], findings, repro_dir)
    summary["findings"] = [{k: v for k, v in f.items() if k != "script"} for f in findings[:MAX_REPRODUCERS]]
    summary["more_findings"] = max(0, len(findings) - MAX_REPRODUCERS)
    if lib.profile is not None:
        summary["accuracy"] = accuracy_profile(lib)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return _save(summary, out_dir)


def _save(summary: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{summary['key']}.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary
