"""Command line of the conformance suite: ``python -m p_rope.conformance`` or ``p-rope-conformance``.

    run     this project's backends on the case list, one JSON file per backend and device
    report  merge the JSON files of a directory into the matrix (terminal, Markdown, JSON)
    check   grade any implementation (a NumPy, JAX or PyTorch callable) at SPEC.md's levels
    golden  check (or rewrite) the golden vectors in conformance/golden/

See conformance/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .cases import DTYPES
from .frameworks import DEVICES
from .targets import BACKENDS, SIGNATURES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p-rope-conformance", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run this project's backends (writes DIR/<backend>-<device>.json)")
    run.add_argument(
        "--backend",
        action="append",
        choices=list(BACKENDS),
        help="backend to run (repeatable; default: P_ROPE_BACKENDS, comma-separated, else all)",
    )
    run.add_argument(
        "--device",
        action="append",
        choices=DEVICES,
        help="device to run on (repeatable; default: P_ROPE_DEVICES, else the CPU and every accelerator "
        "present); a device asked for and absent is a failure",
    )
    run.add_argument("--out", type=Path, default=Path("reports/conformance"), help="output directory")
    run.add_argument("--require", choices=("conformant", "strict"), default="strict", help="level each run must reach")
    run.add_argument("--quick", action="store_true", help="a small sample of the cases (smoke test)")

    rep = sub.add_parser("report", help="merge DIR/*.json into DIR/conformance.md and DIR/conformance.json")
    rep.add_argument("directory", type=Path, nargs="?", default=Path("reports/conformance"))

    check = sub.add_parser("check", help="grade an implementation at SPEC.md's levels")
    check.add_argument(
        "--impl",
        default=os.environ.get("P_ROPE_IMPL"),
        help="module:function or path/to/file.py:function (default: P_ROPE_IMPL)",
    )
    check.add_argument("--framework", choices=("auto", "numpy", "jax", "torch"), default="auto")
    check.add_argument(
        "--signature",
        choices=("auto", *SIGNATURES),
        default="auto",
        help="paper: f(inputs, positions, head_dim, max_wavelength, rope_percentage); gemma: f(inputs, positions, "
        "*, base_frequency, scale_factor, rope_proportion); ours: the paper's plus keywords rotated_pairs, "
        "scale_factor, pairing, seq_axis (those it accepts are tested)",
    )
    check.add_argument("--device", choices=DEVICES, default=os.environ.get("P_ROPE_DEVICE", "cpu"))
    check.add_argument("--dtype", action="append", choices=DTYPES, help="dtypes to check (repeatable; default all)")
    check.add_argument(
        "--level", choices=("conformant", "strict"), default="conformant", help="level required for exit status 0"
    )
    check.add_argument("--repro-dir", type=Path, help="write one reproducer script per failing case here")
    check.add_argument("--json", type=Path, help="write the full result as JSON here")
    check.add_argument("--max-failures", type=int, default=10, help="failing cases shown in detail")

    golden = sub.add_parser("golden", help="check or rewrite the golden vectors")
    mode = golden.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="regenerate in memory and fail on drift (default)")
    mode.add_argument("--write", action="store_true", help="rewrite conformance/golden/")
    golden.add_argument("--dir", type=Path, help="golden directory (default: the package's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        from .run import run

        return run(args.backend, args.device, args.out, quick=args.quick, require=args.require)
    if args.command == "report":
        from .report import report

        return report(args.directory)
    if args.command == "check":
        from .check import check_command

        if not args.impl:
            print("check needs --impl module:function (or P_ROPE_IMPL)", file=sys.stderr)
            return 2
        return check_command(args)
    from .golden import golden_command

    return golden_command(write=args.write, directory=args.dir)


if __name__ == "__main__":
    sys.exit(main())
