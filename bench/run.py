"""Speed and memory of p_rope's backends side by side with what users pick instead, in one run;
writes BENCHMARKS.md and the raw results as JSON.

    python bench/run.py                      # the full CPU run: BENCHMARKS.md, reports/bench/cpu.json
    python bench/run.py --quick              # smoke run: small shapes, float32 only, 3 samples (temp files)
    python bench/run.py --device cuda --report-dir DIR
                                             # on a GPU machine: DIR/cuda.json and DIR/BENCHMARKS-gpu.md
    python bench/run.py --render             # BENCHMARKS.md again from reports/bench/*.json, nothing measured

Options:
    --quick             small shapes (prefill L = 256, decode B = 4), float32 only, 3 samples
    --device D          cpu (default), cuda, or auto (cuda when torch sees one); cuda without a GPU fails
    --out FILE          the Markdown report (default BENCHMARKS.md; --quick: a temp file)
    --json FILE         this run's raw results (default reports/bench/<device>.json; --quick: a temp file)
    --include FILE      a --json file of another run to add as its device's section (repeatable); by
                        default BENCHMARKS.md takes the other devices' reports/bench/<device>.json
    --report-dir DIR    write DIR/<device>.json and DIR/BENCHMARKS-<gpu|cpu>.md (this device's section
                        alone) instead of the defaults, rewritten after every case (a run cut short
                        keeps the cases it finished, marked interrupted); what tools/device_check.sh
                        collects
    --render            measure nothing: render --out from reports/bench/<device>.json (or --include)
    --reps N            samples per implementation (default 21; 3 with --quick)
    --sample-ms MS      the least duration of one sample's batch of calls (default 50)
    --threads N         CPU threads (default: the cores this process may use)
    --only TEXT         only the cases whose "layer mode dtype" contains TEXT

Measured for each layer (a Gemma 4 global layer: H = 512, p = 0.25, w = 1e6, N = 8; a Llama-like
layer: H = 128, p = 1, w = 1e4, N = 32), each mode (prefill B = 1, L = 4096; decode B = 32, L = 1)
and each dtype (float32, bfloat16): ours, the baselines and a copy of the input in each framework
(bench.entries), timed and metered by bench.harness; targets in bench.targets; the report in
bench.report. A GPU machine runs the GPU entries (flash-attn's and Liger's kernels where they import)
and the GPU targets; a CPU run lists them as not run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import the package bench from the repository root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import harness, report
from bench.results import DTYPES, LAYERS, MODES, QUICK_MODES, CaseResult

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports" / "bench"
REPORT_NAMES = {"cpu": "BENCHMARKS-cpu.md", "cuda": "BENCHMARKS-gpu.md"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small shapes, float32 only, 3 samples")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="auto: cuda when present")
    parser.add_argument("--out", type=Path, default=None, help="the Markdown report (default BENCHMARKS.md)")
    parser.add_argument("--json", type=Path, default=None, help="raw results (default reports/bench/<device>.json)")
    parser.add_argument("--include", type=Path, action="append", default=None, help="another run's --json file")
    parser.add_argument("--report-dir", type=Path, default=None, help="write DIR/<device>.json, DIR/BENCHMARKS-*.md")
    parser.add_argument("--render", action="store_true", help="measure nothing: render the report from JSON")
    parser.add_argument("--reps", type=int, default=None, help="samples per entry (default 21; 3 with --quick)")
    parser.add_argument("--sample-ms", type=float, default=50.0, help="least duration of one sample (ms)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads")
    parser.add_argument("--only", default="", help="run only the cases whose 'layer mode dtype' contains this")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def committed_sections(skip: str = "") -> list[Path]:
    """reports/bench/<device>.json of every device but ``skip``, where present."""
    return [
        REPORTS / f"{device}.json"
        for device in report.DEVICES
        if device != skip and (REPORTS / f"{device}.json").is_file()
    ]


def render_only(args: argparse.Namespace) -> int:
    paths = args.include if args.include is not None else committed_sections()
    missing = [path for path in paths if not path.is_file()]
    if missing or not paths:
        log(f"--render: no such file: {', '.join(map(str, missing)) or 'reports/bench/*.json'}")
        return 2
    out = args.out or ROOT / "BENCHMARKS.md"
    report.write(out, report.render([report.read_section(path) for path in paths]))
    log(f"wrote {out} from {', '.join(map(str, paths))}")
    return 0


def measure(args: argparse.Namespace, argv: list[str] | None, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """One run on one device: every case measured, as a section of the report; ``save`` gets the
    section so far, marked interrupted, after each case."""
    from bench import entries

    reps = args.reps or (3 if args.quick else 21)
    modes = QUICK_MODES if args.quick else MODES
    started, load_start = time.perf_counter(), os.getloadavg()
    cases: list[CaseResult] = []
    hf_source = ""

    def section(interrupted: bool) -> dict[str, Any]:
        return {
            "device": args.device,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
            "elapsed_s": time.perf_counter() - started,
            "machine": harness.machine_info(args.device, args.threads, load_start),
            "hf_source": hf_source,
            "quick": args.quick,
            "reps": reps,
            "interrupted": interrupted,
            "cases": [dataclasses.asdict(c) for c in cases],
        }

    for layer in LAYERS:
        for mode in modes:
            for dtype in ("float32",) if args.quick else DTYPES:
                if args.only and args.only not in f"{layer} {mode} {dtype}":
                    continue
                case = entries.Case(layer, mode, dtype, args.device, modes, seed=len(cases))
                log(f"{layer} {mode} {dtype} {case.shape}")
                cases.append(entries.run_case(case, reps, args.sample_ms / 1e3, 3, log))
                hf_source = case.hf_source or hf_source
                del case
                gc.collect()
                save(section(interrupted=True))
    return section(interrupted=False)


def outputs(args: argparse.Namespace) -> tuple[Path, Path, list[Path], tuple[str, ...]]:
    """Where this run writes (JSON, Markdown), the sections it adds, the devices given a placeholder."""
    if args.report_dir is not None:
        json_path = args.json or args.report_dir / f"{args.device}.json"
        return json_path, args.out or args.report_dir / REPORT_NAMES[args.device], args.include or [], ()
    if args.quick:
        scratch = Path(tempfile.gettempdir())
        return (
            args.json or scratch / f"{args.device}.json",
            args.out or scratch / "BENCHMARKS-quick.md",
            args.include or [],
            report.DEVICES,
        )
    includes = args.include if args.include is not None else committed_sections(skip=args.device)
    return args.json or REPORTS / f"{args.device}.json", args.out or ROOT / "BENCHMARKS.md", includes, report.DEVICES


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_only(args)
    for included in args.include or []:
        if not included.is_file():
            log(f"--include {included}: no such file")
            return 2
    harness.fix_threads(args.threads)  # before any framework loads
    harness.pin_torch_threads(args.threads)
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        log("--device cuda: torch sees no CUDA device")
        return 2
    json_path, out_path, includes, expect = outputs(args)
    others = [report.read_section(path) for path in includes if path.resolve() != json_path.resolve()]

    def save(section: dict[str, Any]) -> None:
        report.write(json_path, report.section_json(section))
        report.write(out_path, report.render([section, *others], expect))

    section = measure(args, argv, save if args.report_dir is not None else lambda section: None)
    save(section)
    log(f"wrote {out_path} and {json_path} in {section['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
