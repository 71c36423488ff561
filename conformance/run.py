"""``run``: this project's backends over the case list, on each device, one JSON file per backend and device.

Devices: those asked for (``--device``, or P_ROPE_DEVICES=cpu,cuda), else the CPU and every
accelerator present. A device asked for and absent is a failure; a device not asked for and absent
is recorded as not available. A backend asked for (``--backend``, or P_ROPE_BACKENDS) that cannot
be loaded is a failure; when every backend is run by default, one whose framework is not installed
is recorded as not installed.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from p_rope._params import SPEC_VERSION

from .cases import DTYPES, OPS, Case, run_cases
from .execute import CaseResult, execute, finite_json
from .frameworks import DEVICES, framework
from .targets import BACKENDS, backend_target

SCHEMA = "p-rope-conformance-run/1"
LEVEL_ORDER = ("fail", "conformant", "strict")


def aggregate(results: Sequence[CaseResult]) -> dict[str, Any]:
    """The grade of a group of cases: level reached, worst ratio per level, counts.

    A level is reached only if every applicable case passes it and at least one case graded it:
    a group whose cases were all skipped reaches nothing.
    """
    applicable = [r for r in results if r.not_applicable is None]
    if not applicable:
        reasons = sorted({r.not_applicable or "" for r in results})
        return {"level": "n/a", "cases": 0, "failed": 0, "why": "; ".join(reasons)}
    summary: dict[str, Any] = {"cases": len(applicable), "failed": sum(r.status == "fail" for r in applicable)}
    reached = []
    for level in ("conformant", "strict"):
        graded = sum(r.levels[level].graded for r in applicable)
        ok = graded > 0 and all(r.passed(level) for r in applicable)
        summary.setdefault("ratio", {})[level] = max(r.levels[level].ratio for r in applicable)
        summary.setdefault("graded", {})[level] = graded
        reached.append(ok)
    summary["level"] = "strict" if all(reached) else "conformant" if reached[0] else "fail"
    firsts = [r.first_strict_failure for r in applicable if r.first_strict_failure is not None]
    if firsts:
        summary["first_strict_failure_position"] = min(firsts)
    summary["ratio"] = {level: finite_json(value) for level, value in summary["ratio"].items()}
    return summary


def versions(framework_name: str) -> dict[str, str]:
    names = ["numpy", "ml_dtypes", "array-api-compat", {"array_api_strict": "array-api-strict"}.get(framework_name)]
    names += {"jax": ["jax", "jaxlib"], "torch": ["torch"]}.get(framework_name, [])
    found = {"python": platform.python_version()}
    for name in filter(None, names):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        found["p-rope"] = importlib.metadata.version("p-rope")
    except importlib.metadata.PackageNotFoundError:
        pass
    return found


def _env_list(name: str) -> list[str]:
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


def _write(out: Path, record: dict[str, Any]) -> Path:
    """DIR/<backend>-<device>.json: indented, with one line per case."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{record['backend'].replace(':', '_')}-{record['device']}.json"
    cases = record.get("cases", [])
    head = json.dumps({k: v for k, v in record.items() if k != "cases"} | {"cases": []}, indent=1)
    lines = ",\n".join("  " + json.dumps(c, separators=(",", ":")) for c in cases)
    text = head[: head.rindex("[]")] + ("[\n" + lines + "\n ]" if cases else "[]") + head[head.rindex("[]") + 2 :]
    path.write_text(text + "\n")
    return path


def _base_record(backend: str, device: str, framework_name: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "spec_version": SPEC_VERSION,
        "backend": backend,
        "device": device,
        "framework": framework_name,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": versions(framework_name),
    }


def run_backend_on_device(
    backend: str, device: str, cases: Iterable[Case], require: str, target: Any = None, echo: Any = print
) -> dict[str, Any]:
    """Run every case on one backend and device; returns the record written to JSON."""
    fw_name = BACKENDS[backend][0]
    record = _base_record(backend, device, fw_name)
    start = time.perf_counter()
    target = target or backend_target(backend, device)
    record["device_description"] = target.framework.device_description(device)
    record["module_file"] = getattr(target.module, "__file__", None)
    results = [execute(target, case) for case in cases]
    record["seconds"] = round(time.perf_counter() - start, 2)
    cells: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {}
    for dtype in DTYPES:
        of_dtype = [r for r in results if r.case.dtype == dtype and r.case.op != "errors"]
        if not of_dtype:
            continue
        summary[dtype] = aggregate(of_dtype)
        cells[dtype] = {op: aggregate([r for r in of_dtype if r.case.op == op]) for op in OPS if op != "errors"}
    errors = [r for r in results if r.case.op == "errors"]
    record["errors"] = {"status": errors[0].status, "problems": errors[0].problems} if errors else None
    record["summary"] = summary
    record["cells"] = cells
    below = [
        d
        for d, s in summary.items()
        if s["level"] != "n/a" and LEVEL_ORDER.index(s["level"]) < LEVEL_ORDER.index(require)
    ]
    failed_errors = bool(errors) and errors[0].status == "fail"
    record["required_level"] = require
    record["status"] = "fail" if below or failed_errors else "ok"
    record["cases"] = [r.to_json() for r in results]
    failures = [r for r in results if r.status == "fail"]
    line = " | ".join(f"{d} {s['level']}" + _ratio_text(s) for d, s in summary.items())
    echo(f"{backend} on {device}: {len(results)} cases in {record['seconds']:.1f} s: {line}")
    for r in failures[:10]:
        echo(f"  FAIL {r.case.id}: " + "; ".join(r.problems or [_fail_text(r)]))
    if len(failures) > 10:
        echo(f"  ... and {len(failures) - 10} more failing cases (see the JSON)")
    return record


def _ratio_text(summary: dict[str, Any]) -> str:
    if summary["level"] == "n/a":
        return ""
    level = "conformant" if summary["level"] == "fail" else summary["level"]
    value = summary["ratio"][level]
    return f" ({value:.2g})" if isinstance(value, float) else f" ({value})"


def _fail_text(r: CaseResult) -> str:
    parts = [f"{level} {v.ratio:.3g}x the bound" for level, v in r.levels.items() if not v.passed]
    if r.worst is not None:
        parts.append(f"worst at position {r.worst.position:g}, index {r.worst.index} of {r.worst.output}")
    return ", ".join(parts)


def run(
    backends: Sequence[str] | None,
    devices: Sequence[str] | None,
    out: Path,
    *,
    quick: bool = False,
    require: str = "strict",
    echo: Any = print,
) -> int:
    """The ``run`` command; returns the exit status (0: every run reached ``require``)."""
    asked_backends = list(backends or _env_list("P_ROPE_BACKENDS"))
    asked_devices = list(devices or _env_list("P_ROPE_DEVICES"))
    for device in asked_devices:
        if device not in DEVICES:
            echo(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
            return 2
    for backend in asked_backends:
        if backend not in BACKENDS:
            echo(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
            return 2
    cases = run_cases(quick=quick)
    status = 0
    for backend in asked_backends or list(BACKENDS):
        fw_name = BACKENDS[backend][0]
        fw = framework(fw_name)
        try:
            present = {d: fw.present(d) for d in fw.devices}
        except ImportError as error:
            present = {}
            load_error: BaseException | None = error
        else:
            load_error = None
        target = None
        if load_error is None:
            try:
                target = backend_target(backend, "cpu")
            except Exception as error:
                load_error = error
        if load_error is not None:
            if not asked_backends and isinstance(load_error, ModuleNotFoundError):
                echo(f"{backend}: not installed ({load_error}); skipped, not passed")
                record = _base_record(backend, "cpu", fw_name) | {"status": "not installed", "error": str(load_error)}
                _write(out, record)
                continue
            echo(f"{backend}: FAILED to load: {type(load_error).__name__}: {load_error}")
            for device in asked_devices or ["cpu"]:
                record = _base_record(backend, device, fw_name)
                record |= {"status": "error", "error": f"{type(load_error).__name__}: {load_error}"}
                record["devices_present"] = present
                _write(out, record)
            status = 1
            continue
        assert target is not None
        for device in asked_devices or [d for d in fw.devices if present.get(d)]:
            if device not in fw.devices:
                echo(f"{backend}: {device} not applicable ({fw.name} runs on {', '.join(fw.devices)})")
                continue
            if not present.get(device):
                echo(f"{backend}: FAILED: device {device} was asked for and is not present")
                record = _base_record(backend, device, fw_name)
                record |= {"status": "device missing", "devices_present": present, "error": f"{device} not present"}
                _write(out, record)
                status = 1
                continue
            target.device = device
            record = run_backend_on_device(backend, device, cases, require, target, echo)
            record["devices_present"] = present
            if quick:
                record["quick"] = True
            _write(out, record)
            status = status or int(record["status"] != "ok")
    return status
