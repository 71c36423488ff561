"""``report``: merge the run files of a directory into the conformance matrix (terminal, Markdown, JSON).

One cell per backend, device and dtype: the level reached (strict / conformant / fail) and the
worst error as a fraction of that level's tolerance. Devices without a run file are "not available"
when a run of the same backend found them absent, "n/a" when the backend's array library cannot
use them, and "not run" otherwise. A cell passes only when its run reached the required level on
cases that were really graded: nothing passes by being skipped.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from p_rope._params import SPEC_VERSION

from .cases import DTYPES, OPS
from .frameworks import DEVICES, framework
from .run import LEVEL_ORDER, SCHEMA
from .targets import BACKENDS

REPORT_SCHEMA = "p-rope-conformance-report/1"
ABSENT = ("not available", "n/a", "not run")


def load_runs(directory: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            data["file"] = path.name
            runs.append(data)
    return runs


def _ratio(summary: dict[str, Any], level: str) -> float | str | None:
    ratio = summary.get("ratio", {})
    return ratio.get(level) if isinstance(ratio, dict) else None


def _cell(run: dict[str, Any], dtype: str) -> dict[str, Any]:
    summary = run.get("summary", {}).get(dtype)
    if run.get("status") in ("device missing", "error", "not installed"):
        return {"status": run["status"], "level": None}
    if summary is None or summary.get("level") == "n/a":
        return {"status": "n/a", "level": None, "why": (summary or {}).get("why", "not in this run")}
    level = summary["level"]
    required = run.get("required_level", "strict")
    passed = LEVEL_ORDER.index(level) >= LEVEL_ORDER.index(required)
    shown = "conformant" if level == "fail" else level
    cell = {
        "status": "pass" if passed else "fail",
        "level": level,
        "required": required,
        "ratio": {"conformant": _ratio(summary, "conformant"), "strict": _ratio(summary, "strict")},
        "shown_ratio_level": shown,
        "cases": summary.get("cases", 0),
        "failed": summary.get("failed", 0),
        "ops": {op: c.get("level") for op, c in run.get("cells", {}).get(dtype, {}).items()},
    }
    if "first_strict_failure_position" in summary:
        cell["first_strict_failure_position"] = summary["first_strict_failure_position"]
    return cell


def build(directory: Path) -> dict[str, Any]:
    runs = load_runs(directory)
    by_key = {(r["backend"], r["device"]): r for r in runs}
    backends = list(BACKENDS) + sorted({r["backend"] for r in runs} - set(BACKENDS))
    cells: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for device, backend in ((d, b) for d in DEVICES for b in backends):
        fw_name = BACKENDS.get(backend, ("?", ""))[0]
        fw_devices = framework(fw_name).devices if fw_name in ("numpy", "array_api_strict", "jax", "torch") else DEVICES
        known_absent = {
            d for r in runs if r["backend"] == backend for d, p in (r.get("devices_present") or {}).items() if not p
        }
        run = by_key.get((backend, device))
        if run is None:
            if device not in fw_devices:
                continue  # not applicable: not a row
            state = "not available" if device in known_absent else "not run"
            rows.append({"backend": backend, "device": device, "status": state, "run": None})
            for dtype in DTYPES:
                cells.append({"backend": backend, "device": device, "dtype": dtype, "status": state, "level": None})
            continue
        row = {"backend": backend, "device": device, "status": run.get("status"), "run": run}
        rows.append(row)
        for dtype in DTYPES:
            cells.append({"backend": backend, "device": device, "dtype": dtype} | _cell(run, dtype))
    failing = [c for c in cells if c["status"] in ("fail", "device missing", "error")]
    failing_runs = [r for r in runs if r.get("status") not in ("ok", "not installed")]
    return {
        "schema": REPORT_SCHEMA,
        "spec_version": SPEC_VERSION,
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "status": "fail" if failing or failing_runs else ("pass" if runs else "empty"),
        "cells": cells,
        "runs": [
            {
                k: r.get(k)
                for k in (
                    "file", "backend", "device", "device_description", "status", "error", "seconds", "started",
                    "required_level", "versions", "platform", "errors", "quick",
                )
                if r.get(k) is not None
            }
            | {"failures": [c for c in r.get("cases", []) if c.get("status") == "fail"][:20]}
            | {"warnings": sorted({w for c in r.get("cases", []) for w in c.get("warnings", [])})}
            for r in runs
        ],
        "rows": [{k: v for k, v in row.items() if k != "run"} for row in rows],
    }  # fmt: skip


def _cell_text(cell: dict[str, Any]) -> str:
    status = cell["status"]
    if status in ("pass", "fail"):
        level = cell["level"]
        ratio = cell["ratio"][cell["shown_ratio_level"]]
        value = f"{ratio:.2f}" if isinstance(ratio, float) else str(ratio)
        text = f"{level} {value}" if level != "fail" else f"FAIL {value}"
        if status == "pass" or level == "fail":
            return text
        above = cell["ratio"].get(cell["required"])
        above_text = f"{above:.3g}" if isinstance(above, float) else str(above)
        return f"{text}, FAIL {cell['required']} {above_text}"
    return {"device missing": "MISSING", "error": "ERROR"}.get(status, status)


def matrix_rows(report: dict[str, Any], short: bool = False) -> list[list[str]]:
    """One row per backend and device that ran; the backends a device was absent for share a row."""
    index = {(c["backend"], c["device"], c["dtype"]): c for c in report["cells"]}
    table = []
    absent: dict[tuple[str, str], list[str]] = {}
    for row in report["rows"]:
        if row["status"] in ABSENT:
            absent.setdefault((row["device"], row["status"]), []).append(row["backend"])
    done: set[tuple[str, str]] = set()
    for row in report["rows"]:
        b, d = row["backend"], row["device"]
        if row["status"] in ABSENT:
            if (d, row["status"]) not in done:
                done.add((d, row["status"]))
                names = absent[(d, row["status"])]
                label = f"{len(names)} backends" if short and len(names) > 2 else ", ".join(names)
                table.append([label, d, *[row["status"]] * len(DTYPES), "-", "-"])
            continue
        texts = [_cell_text(index[(b, d, dtype)]) for dtype in DTYPES]
        run: dict[str, Any] = next((r for r in report["runs"] if r["backend"] == b and r["device"] == d), {})
        errors = run.get("errors") or {}
        table.append([b, d, *texts, errors.get("status", "-") if errors else "-", str(run.get("seconds", "-"))])
    return table


HEADER = ["backend", "device", *DTYPES, "errors", "seconds"]


def render_terminal(report: dict[str, Any], directory: Path) -> str:
    rows = matrix_rows(report, short=True)
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows, strict=False)]
    lines = [
        f"p-RoPE conformance matrix (SPEC {report['spec_version']}), {directory}",
        "cell: level reached, then the worst error as a fraction of that level's tolerance (<= 1 passes)",
        "  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"overall: {report['status'].upper()}")
    for run in report["runs"]:
        if run.get("warnings"):
            lines.append(
                f"  note: {run['backend']} on {run['device']} raised warnings: {'; '.join(run['warnings'])[:100]}"
            )
    for run in report["runs"]:
        if run.get("status") not in ("ok", "not installed"):
            lines.append(
                f"  {run['backend']} on {run['device']}: {run.get('status')} {run.get('error') or ''}".rstrip()
            )
            for case in run.get("failures", [])[:5]:
                lines.append(f"    {case['id']}: {'; '.join(case.get('problems', [])) or _case_ratio(case)}")
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _case_ratio(case: dict[str, Any]) -> str:
    parts = [f"{lvl} {_number(case['ratio'].get(lvl))}" for lvl in case.get("failed_levels", [])]
    worst = case.get("worst")
    if worst:
        parts.append(f"worst at position {worst['position']:g} in {worst['output']}")
    return "error / tolerance: " + ", ".join(parts)


def render_markdown(report: dict[str, Any]) -> str:
    rows = matrix_rows(report)
    out = [
        "# p-RoPE conformance matrix",
        "",
        f"SPEC version {report['spec_version']}; generated {report['generated']} by "
        "`python -m p_rope.conformance report`; overall: **" + report["status"].upper() + "**.",
        "",
        "Each cell: the level reached over every case of that backend, device and dtype (SPEC.md, "
        '"Accuracy": strict, conformant, or FAIL), then the worst error as a fraction of that '
        "level's tolerance (1.00 = at the bound). Our backends must reach strict. "
        "`not available`: the device was not present and not asked for; `n/a`: the array library "
        "has no such dtype; `MISSING`: asked for and absent (a failure). *errors*: every invalid "
        "argument raises the reference's exception and message.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    out += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    out += ["", "## Operations", "", "Level reached per operation (`-`: the backend has no such operation).", ""]
    op_header = ["backend", "device", "dtype", *OPS[:-1]]
    out += ["| " + " | ".join(op_header) + " |", "|" + "|".join("---" for _ in op_header) + "|"]
    for cell in report["cells"]:
        if cell["status"] in ("pass", "fail"):
            ops = [cell["ops"].get(op) or "-" for op in OPS[:-1]]
            ops = ["-" if o == "n/a" else o for o in ops]
            out.append("| " + " | ".join([cell["backend"], cell["device"], cell["dtype"], *ops]) + " |")
    out += [
        "",
        "## Runs",
        "",
        "| backend | device | status | cases | seconds | versions |",
        "|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        vers = ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items())
        desc = run.get("device_description")
        device = run["device"] + (f" ({desc})" if desc and desc != run["device"] else "")
        cases = sum(
            c["cases"]
            for c in report["cells"]
            if c["backend"] == run["backend"] and c["device"] == run["device"] and "cases" in c
        )
        out.append(
            f"| {run['backend']} | {device} | {run.get('status')} | {cases} | {run.get('seconds', '-')} | {vers} |"
        )
    failures = [(run, case) for run in report["runs"] for case in run.get("failures", [])]
    if failures:
        out += ["", "## Failures", ""]
        for run, case in failures[:50]:
            detail = "; ".join(case.get("problems", [])) or _case_ratio(case)
            out.append(f"- {run['backend']} on {run['device']}, `{case['id']}` ({case.get('case', '')}): {detail}")
    for run in report["runs"]:
        if run.get("status") in ("device missing", "error"):
            out.append(f"- {run['backend']} on {run['device']}: **{run['status']}**: {run.get('error', '')}")
    warned = [run for run in report["runs"] if run.get("warnings")]
    if warned:
        out += [
            "",
            "## Warnings",
            "",
            "Warnings raised by a backend while it ran its cases (they do not fail a cell):",
            "",
        ]
        for run in warned:
            out.append(f"- {run['backend']} on {run['device']}: " + "; ".join(f"`{w}`" for w in run["warnings"]))
    return "\n".join(out) + "\n"


def report(directory: Path, echo: Any = print) -> int:
    """The ``report`` command: returns 0 when every cell and run passes."""
    data = build(directory)
    if not data["runs"]:
        echo(f"no run files (*.json with schema {SCHEMA}) in {directory}")
        return 1
    (directory / "conformance.json").write_text(json.dumps(data, indent=1) + "\n")
    (directory / "conformance.md").write_text(render_markdown(data))
    echo(render_terminal(data, directory))
    echo(f"wrote {directory / 'conformance.md'} and {directory / 'conformance.json'}")
    return 0 if data["status"] == "pass" else 1
