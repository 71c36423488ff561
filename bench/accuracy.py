"""Error against position, 1 to 2**24, for every backend and the float32-angle baselines.

    python bench/accuracy.py                  # writes reports/accuracy.md and reports/accuracy.png
    python bench/accuracy.py --out-dir DIR

Needs matplotlib (the project's ``plot`` extra: ``pip install ".[plot]"``) for the figure.

For two float32 configurations (a Llama-like layer, H = 128, w = 1e4, p = 1, and a Gemma 4 global
layer, H = 512, w = 1e6, p = 0.25), random inputs are rotated at windows of consecutive integer
positions log-spaced from 1 to 2**24 (plus a few windows ending at 2**24) by:
- the NumPy reference with a float32 output (float64 inside, rounded once: the best a float32
  output can be), p_rope.backends.array_api on NumPy, p_rope.backends.jax, p_rope.backends.torch;
- the paper's JAX function (float32 angles) and HF transformers' Gemma 4 path (float32 angles),
  from bench/baselines.py.
The error of each rotated pair is max(|o1 - y1|, |o2 - y2|) against the exact result y (the
reference in float64 on the same inputs), divided by the pair's norm nx; each window reports the
maximum over its tokens, heads and pairs, both as that relative error and as a multiple of
SPEC.md's strict bound (err <= nx (u_out + 8 2**-24) + s_out, i.e. about 9 float32 ulps of nx).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MAX_POSITION = 2**24
CONFIGS = {
    "llama": {"label": "Llama-like: H = 128, w = 1e4, p = 1", "H": 128, "w": 1e4, "p": 1.0},
    "gemma4-global": {"label": "Gemma 4 global: H = 512, w = 1e6, p = 0.25", "H": 512, "w": 1e6, "p": 0.25},
}
WINDOW = 8  # consecutive positions per grid point
HEADS = 4
GRID_POINTS = 49  # log-spaced window starts in [1, 2**24]
NEAR_END = (MAX_POSITION - 4096, MAX_POSITION - 64, MAX_POSITION - WINDOW + 1)  # windows near 2**24
HF_SOURCE: list[str] = []  # what the HF baseline ran (bench/baselines.py, HFRope.source)
TABLE_ROWS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, MAX_POSITION - WINDOW + 1)


def grid() -> np.ndarray:
    """Window starts: log-spaced integers from 1 to 2**24 - WINDOW + 1, the table's rows, the near-end windows."""
    starts = np.unique(np.round(np.geomspace(1, MAX_POSITION - WINDOW + 1, GRID_POINTS)).astype(np.int64))
    return np.unique(np.concatenate([starts, np.array(TABLE_ROWS + NEAR_END, dtype=np.int64)]))


def require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        sys.exit(
            "bench/accuracy.py draws reports/accuracy.png with matplotlib, which is not installed: "
            'pip install ".[plot]" (or pip install matplotlib), or run `nox -s accuracy`'
        )
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------
# the implementations: (x float32 [1, T, N, H], positions int64 [1, T]) -> float32 NumPy output


def implementations(H: int, w: float, p: float) -> tuple[dict[str, Callable[[Any, Any], Any]], dict[str, str]]:
    """Name -> function, and name -> why it is missing."""
    import p_rope

    funcs: dict[str, Callable[[Any, Any], Any]] = {}
    missing: dict[str, str] = {}
    funcs["reference (float32 output)"] = lambda x, pos: p_rope.apply_p_rope(x, pos, H, w, p)

    def backend(name: str) -> Any:
        try:
            return importlib.import_module(f"p_rope.backends.{name}")
        except Exception as error:
            missing[f"ours: {name}"] = f"{type(error).__name__}: {error}"
            return None

    A = backend("array_api")
    if A is not None:
        funcs["ours: array_api (NumPy)"] = lambda x, pos: A.apply_p_rope(x, pos, H, w, p)
    J = backend("jax")
    if J is not None:
        import jax.numpy as jnp

        funcs["ours: jax"] = lambda x, pos: np.asarray(J.apply_p_rope(jnp.asarray(x), jnp.asarray(pos), H, w, p))
    T = backend("torch")
    if T is not None:
        import torch

        funcs["ours: torch"] = lambda x, pos: T.apply_p_rope(
            torch.from_numpy(x), torch.from_numpy(pos), H, w, p
        ).numpy()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import baselines

    try:
        import jax
        import jax.numpy as jnp

        paper = baselines.paper_jax_jit()
        funcs["paper JAX (float32 angle)"] = lambda x, pos: np.asarray(
            paper(jnp.asarray(x), jnp.asarray(pos, dtype=jnp.int32), w, p, 1.0)
        )
        del jax
    except ImportError as error:
        missing["paper JAX (float32 angle)"] = str(error)
    try:
        import torch

        hf = baselines.HFRope(H, w, p)
        funcs["HF Gemma 4 (float32 angle)"] = lambda x, pos: hf(torch.from_numpy(x), torch.from_numpy(pos)).numpy()
        HF_SOURCE.append(hf.source)
    except ImportError as error:
        missing["HF Gemma 4 (float32 angle)"] = str(error)
    return funcs, missing


# ---------------------------------------------------------------------------------------------


def errors(config: dict[str, Any], starts: np.ndarray, seed: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """name -> [relative error, ÷ strict bound, ÷ conformant bound] per window start, shape [len(starts), 3]."""
    import p_rope
    from p_rope.tolerance import error_map

    H, w, p = config["H"], config["w"], config["p"]
    R = p_rope.rotated_pair_count(H, p)
    positions = np.minimum(starts[:, None] + np.arange(WINDOW), MAX_POSITION).reshape(1, -1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, positions.shape[1], HEADS, H), dtype=np.float32)
    x64 = x.astype(np.float64)
    norm = np.hypot(x64[..., :R], x64[..., H // 2 : H // 2 + R])
    funcs, missing = implementations(H, w, p)
    out: dict[str, np.ndarray] = {}
    for name, func in funcs.items():
        emap = error_map(np.asarray(func(x, positions)), x, positions, H, w, p)
        per_window = [
            values.reshape(len(starts), WINDOW * HEADS * R).max(axis=1)
            for values in (emap.error / norm, emap.ratio["strict"], emap.ratio["conformant"])
        ]
        rel, mult = per_window[0], per_window[1]
        out[name] = np.stack(per_window, axis=1)
        print(f"  {name:<30} worst {rel.max():.3g} (x{mult.max():.3g} strict bound)", file=sys.stderr)
    return out, missing


def first_failure(starts: np.ndarray, mult: np.ndarray) -> str:
    bad = np.nonzero(mult > 1.0)[0]
    return "never" if bad.size == 0 else f"{int(starts[bad[0]]):,}"


def fmt(value: float) -> str:
    return "0" if value == 0 else f"{value:.2g}"


def report(results: dict[str, tuple[dict[str, np.ndarray], dict[str, str]]], starts: np.ndarray) -> str:
    strict_rel = 9 * 2.0**-24
    lines = [
        "# Accuracy against position",
        "",
        "Generated by `nox -s accuracy` (`python bench/accuracy.py`); do not edit by hand. Figure:",
        "[accuracy.png](accuracy.png).",
        "",
        f"float32 inputs (standard normal), {HEADS} heads, windows of {WINDOW} consecutive integer positions",
        f"starting at {len(starts)} points log-spaced from 1 to 2**24 (the last windows end at 2**24).",
        "Error of a rotated pair: max(|o1 - y1|, |o2 - y2|) against the exact result (the NumPy reference",
        "in float64), divided by the pair's input norm nx; each cell is the maximum over the window's",
        "tokens, heads and rotated pairs (p_rope.tolerance.error_map). SPEC.md's strict bound is",
        f"nx (2**-24 + 8 2**-24) + s_out, a relative error of {strict_rel:.3g}; the multiple of it is in",
        "parentheses (<= 1 passes). The conformant bound, nx (4 2**-24 + 4 2**-24 (1 + theta (1 + lam))) + s_out,",
        "grows with the angle theta: it admits the float32-angle error at training positions. The paper's JAX",
        "function and HF's path round the same float32 angle: their curves coincide in the figure.",
        "",
    ]
    for key, (errs, missing) in results.items():
        names = list(errs)
        lines += [f"## {CONFIGS[key]['label']}", ""]
        lines += [
            "| implementation | worst relative error | worst ÷ strict bound | strict bound first exceeded "
            "(window start) | worst ÷ conformant bound |"
        ]
        lines += ["|---|---:|---:|---|---:|"]
        for name in names:
            rel, mult, conf = errs[name][:, 0], errs[name][:, 1], errs[name][:, 2]
            lines.append(
                f"| {name} | {fmt(rel.max())} | {mult.max():.2g} | {first_failure(starts, mult)} | {conf.max():.2g} |"
            )
        for name, why in missing.items():
            lines.append(f"| {name} | — | — | not run: {why} | — |")
        lines += ["", "Relative error (÷ strict bound) by window start:", ""]
        lines += ["| position | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for row in [i for i, s in enumerate(starts) if s in TABLE_ROWS + NEAR_END]:
            cells = [f"{fmt(errs[n][row, 0])} ({errs[n][row, 1]:.2g})" for n in names]
            lines.append(f"| {int(starts[row]):,} | " + " | ".join(cells) + " |")
        lines.append("")
    if HF_SOURCE:
        lines += [f"HF baseline: {HF_SOURCE[0]}.", ""]
    lines += library_tables(results, starts, load_ecosystem())
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# other libraries, from the ecosystem report (their own code, run by `nox -s ecosystem` in their environments)

ECOSYSTEM_JSON = ROOT / "reports" / "ecosystem.json"
DECADES = dict(zip(TABLE_ROWS, ("1", "10", "100", "1e3", "1e4", "1e5", "1e6", "1e7", "2^24"), strict=True))


def load_ecosystem(path: Path = ECOSYSTEM_JSON) -> list[dict[str, Any]]:
    """The graded libraries of reports/ecosystem.json with their accuracy profile (none if absent)."""
    if not path.exists():
        return []
    libraries = json.loads(path.read_text()).get("libraries", [])
    return [lib for lib in libraries if lib.get("status") == "graded" and lib.get("accuracy")]


Results = dict[str, tuple[dict[str, np.ndarray], dict[str, str]]]


def library_tables(results: Results, starts: np.ndarray, libraries: list[dict[str, Any]]) -> list[str]:
    """Worst error per position decade: this project's implementations (this run) beside each library of
    the ecosystem report (its run), on the same windows: 8 positions from each decade, 4 heads."""
    lines = [
        "## Across libraries: worst error per position decade",
        "",
        "As the CORE-MATH tables do for libm: the worst relative error (÷ strict bound) of each implementation",
        "on the window of 8 positions starting at each decade (the last ending at 2**24), float32. Our rows",
        "come from this run; the libraries' from reports/ecosystem.json (`nox -s ecosystem`: each library's",
        "own code in its own environment at its pinned version, same windows, its own random inputs).",
        "",
    ]
    if not libraries:
        return [*lines, "reports/ecosystem.json is absent or has no accuracy profiles: run `nox -s ecosystem`.", ""]
    rows = [i for i, start in enumerate(starts) if int(start) in DECADES]
    labels = [DECADES[int(starts[i])] for i in rows]
    for key, (errs, _) in results.items():
        lines += [f"### {CONFIGS[key]['label']}", ""]
        lines += ["| implementation | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        for name, values in errs.items():
            cells = [f"{fmt(values[i, 0])} ({values[i, 1]:.2g})" for i in rows]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for lib in libraries:
            profile = lib["accuracy"].get(key, {})
            name = f"{lib['name']} {lib.get('version', '')}"
            if "relative" not in profile:
                lines.append(f"| {name} | not run: {profile.get('error', 'no profile')} |" + " |" * (len(labels) - 1))
                continue
            cells = [f"{fmt(profile['relative'][d])} ({profile['strict'][d]:.2g})" for d in labels]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plot(plt: Any, results: dict[str, tuple[dict[str, np.ndarray], dict[str, str]]], starts: np.ndarray, path: Path):
    floor = 2.0**-30  # exact results (error 0) are drawn here
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (key, (errs, _)) in zip(axes, results.items(), strict=True):
        for name, values in errs.items():
            style = "--" if "angle" in name else "-"
            ax.plot(starts, np.maximum(values[:, 0], floor), style, marker=".", label=name)
        ax.axhline(9 * 2.0**-24, color="black", linewidth=1.5, label="strict bound (9 x 2**-24 of nx)")
        # the conformant bound of the highest frequency pair (freq = 1 / scale_factor = 1): theta = position
        ax.plot(
            starts,
            (4 + 4 * (1.0 + starts)) * 2.0**-24,
            color="gray",
            linestyle=":",
            label="conformant bound, highest frequency",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(CONFIGS[key]["label"])
        ax.set_xlabel("position (window start)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("max error / pair norm (float32 output)")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("p-RoPE error against position (0 drawn at 2**-30)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "reports")
    args = parser.parse_args(argv)
    plt = require_matplotlib()
    starts = grid()
    results = {}
    for seed, key in enumerate(CONFIGS):
        print(CONFIGS[key]["label"], file=sys.stderr)
        results[key] = errors(CONFIGS[key], starts, seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "accuracy.md").write_text(report(results, starts))
    plot(plt, results, starts, args.out_dir / "accuracy.png")
    print(f"wrote {args.out_dir / 'accuracy.md'} and {args.out_dir / 'accuracy.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
