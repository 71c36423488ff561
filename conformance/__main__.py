"""Command line of the conformance suite: ``python -m p_rope.conformance`` or ``p-rope-conformance``.

    run     this project's backends on the case list, one JSON file per backend and device
    report  merge the JSON files of a directory into the matrix (terminal, Markdown, JSON)
    check   grade any implementation (a NumPy, JAX or PyTorch callable) at SPEC.md's levels
    check-tables  grade a frequency vector, a cos/sin cache or a frequency-factor list against SPEC.md
    golden  check (or rewrite) the golden vectors in conformance/golden/

See conformance/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from .cases import DTYPES
from .conventions import CONVENTIONS
from .frameworks import DEVICES
from .targets import BACKENDS


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line (exit status 2), without the usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="p-rope-conformance", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
    check.add_argument(
        "--framework",
        choices=("auto", "numpy", "jax", "torch", "keras"),
        default="auto",
        help="array library (default: detected; keras: Keras 3 code on KERAS_BACKEND's arrays, --autocast as "
        "Keras's mixed policy)",
    )
    check.add_argument(
        "--convention",
        "--signature",
        dest="convention",
        choices=("auto", *CONVENTIONS),
        default="auto",
        help="how the callable is called (default: detected from its parameter names): "
        + "; ".join(f"{k}: {v}" for k, v in CONVENTIONS.items()),
    )
    check.add_argument(
        "--rotary",
        help="module:factory or path/file.py:factory building the rotary module of the table conventions (hf, "
        "angles) from the parameters it names (head_dim, base, partial_rotary_factor, ... or a transformers config)",
    )
    check.add_argument("--layer-type", help="layer type of a transformers rotary class, and of --config")
    check.add_argument("--config", type=Path, help="grade at this Hugging Face config.json's parameters")
    check.add_argument("--device", choices=DEVICES, default=os.environ.get("P_ROPE_DEVICE", "cpu"))
    check.add_argument("--dtype", action="append", choices=DTYPES, help="dtypes to check (repeatable; default all)")
    check.add_argument(
        "--dtypes-claimed",
        help="the dtypes the implementation claims, e.g. bf16,f32: the exit status follows them (all four rows "
        "are still shown)",
    )
    check.add_argument(
        "--level", choices=("conformant", "strict"), default="conformant", help="level required for exit status 0"
    )
    check.add_argument("--timeout", type=float, default=60.0, help="seconds one case may take (default 60)")
    check.add_argument("--compile", action="store_true", help="torch.compile / jax.jit around the callable")
    check.add_argument(
        "--autocast",
        choices=("bf16", "bfloat16", "f16", "float16"),
        help="run under torch autocast, or Keras's mixed policy for Keras code",
    )
    check.add_argument(
        "--errors", action="store_true", help="also feed SPEC.md section 9's invalid arguments (informative)"
    )
    check.add_argument("--require-errors", action="store_true", help="--errors, and fail unless all are rejected")
    check.add_argument("--repro-dir", type=Path, help="write one reproducer script per failing case here")
    check.add_argument("--json", type=Path, help="write the full result as JSON here")
    check.add_argument("--max-failures", type=int, default=10, help="failing cases shown in detail")

    tables = sub.add_parser("check-tables", help="grade a frequency vector, cos/sin cache or factor list")
    tables.add_argument("--kind", choices=("inv_freq", "cos_sin_cache", "freq_factors"), required=True)
    source = tables.add_mutually_exclusive_group(required=True)
    source.add_argument("--impl", help="module:function building the table from parameters it names")
    source.add_argument("--file", type=Path, help="a .npy, .npz (first array) or .json table")
    tables.add_argument("--head-dim", type=int, help="H of --file (or a single parameter set for --impl)")
    tables.add_argument("--max-wavelength", type=float, default=10_000.0)
    tables.add_argument("--rope-percentage", type=float, default=1.0)
    tables.add_argument("--scale-factor", type=float, default=1.0)
    tables.add_argument("--config", type=Path, help="parameters from a Hugging Face config.json")
    tables.add_argument("--layer-type", help="layer type of --config")
    tables.add_argument("--json", type=Path, help="write the result as JSON here")

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
            print("p-rope-conformance check: needs --impl module:function (or P_ROPE_IMPL)", file=sys.stderr)
            return 2
        return check_command(args)
    if args.command == "check-tables":
        from .tables import tables_command

        return tables_command(args)
    from .golden import golden_command

    return golden_command(write=args.write, directory=args.dir)


if __name__ == "__main__":
    sys.exit(main())
