"""``python -m p_rope.conformance.ecosystem run KEY --out DIR | report DIR | drift DIR | list``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import BY_KEY, LIBRARIES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p_rope.conformance.ecosystem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="grade one library here (its environment); write DIR/KEY.json")
    run.add_argument("key", choices=list(BY_KEY))
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--repro-dir", type=Path, default=Path("reports/ecosystem"))
    report = sub.add_parser("report", help="merge DIR/*.json into reports/ecosystem.{md,json}")
    report.add_argument("directory", type=Path)
    drift = sub.add_parser("drift", help="fail if DIR/*.json disagree with the committed report")
    drift.add_argument("directory", type=Path)
    sub.add_parser("list", help="the libraries and their pins")
    args = parser.parse_args(argv)
    if args.command == "run":
        from .run import run as run_library

        summary = run_library(args.key, args.out, args.repro_dir)
        print(f"{args.key}: {summary['status']} {summary.get('grade') or summary.get('why', '')}")
        return 0
    if args.command == "report":
        from .report import write

        return write(args.directory)
    if args.command == "drift":
        from .report import drift as drift_check

        return drift_check(args.directory)
    for lib in LIBRARIES:
        print(f"{lib.key:24} {' '.join((*lib.requirements, *lib.no_deps))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
