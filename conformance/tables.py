"""``check-tables``: grade the tables converters and engines write, against SPEC.md's.

    p-rope-conformance check-tables --kind inv_freq --impl mypackage.rope:inv_freq
    p-rope-conformance check-tables --kind freq_factors --file factors.json --head-dim 512 \\
        --max-wavelength 1e6 --rope-percentage 0.25

Kinds (each of one parameter set H, w, p, s; SPEC.md section 2):

* ``inv_freq``: the frequency of every pair, ``[H/2]`` (NoPE pairs exactly 0), or of the ``R`` rotated
  pairs only, ``[R]``: ``w ** (-2i / H) / s``.
* ``freq_factors``: per-pair divisors of the standard ladder ``w ** (-2i / H)`` (llama.cpp's
  ``rope_freq_factors``), ``[H/2]``: ``1`` (or ``s``) on rotated pairs, ``+inf`` on NoPE pairs (angle 0).
* ``cos_sin_cache``: a position-indexed cache, row ``m`` for position ``m``: ``[S, H]`` (cos of the H/2
  pairs, then their sin: vLLM's layout at full width), or a pair ``(cos, sin)`` of ``[S, H/2]`` or
  ``[S, H]`` (each value twice, Hugging Face's layout). NoPE pairs must hold cos 1 and sin 0 exactly.

A function given with ``--impl`` is called with the parameters it names (``head_dim``/``head_size``/
``dim``, ``base``/``rope_theta``..., ``partial_rotary_factor``..., ``factor``..., ``max_position``;
conventions.FACTORY_NAMES) at several parameter sets; a ``--file`` is graded at the parameters given.
A table that is wrong is compared with the tables of known mistakes ("matches ...").
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .conventions import FACTORY_NAMES
from .mutants import NOPE_FACTOR
from .targets import UsageError, parameter_names

PARAMETER_SETS = (  # (H, w, p, s): Gemma 4 global and local layers, R = 28 of H = 100, NoPE, scaled
    (512, 1e6, 0.25, 1.0),
    (256, 1e4, 1.0, 1.0),
    (100, 1e4, 0.58, 1.0),
    (64, 1e4, 0.0, 1.0),
    (128, 5e5, 0.5, 8.0),
)
CACHE_ROWS = 4096  # max_position asked of a cache builder


def _pairs(head_dim: int, p: float) -> int:
    return int(p * head_dim // 2)


def spec_frequencies(head_dim: int, w: float, p: float, s: float, pairs: int | None = None) -> np.ndarray:
    """SPEC.md's H/2 frequencies (zeros for NoPE pairs), float64."""
    r = _pairs(head_dim, p) if pairs is None else pairs
    i = np.arange(head_dim // 2, dtype=np.float64)
    return np.where(i < r, float(w) ** (-2.0 * i / head_dim) / s, 0.0)


def _bf16(a: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return a.astype(ml_dtypes.bfloat16).astype(np.float64)


def frequency_mistakes(head_dim: int, w: float, p: float, s: float) -> list[tuple[str, np.ndarray]]:
    """Frequency vectors [H/2] of known mistakes, named as in conformance/diagnose.py."""
    half, r = head_dim // 2, _pairs(head_dim, p)
    i = np.arange(half, dtype=np.float64)
    ladder = float(w) ** (-2.0 * i / head_dim)
    right = spec_frequencies(head_dim, w, p, s)
    up = -(-int(head_dim * p) // 2)
    out = [
        ("standard RoPE (every pair rotated)", ladder / s),
        ("the NeoX ladder over the rotated dims", np.where(i < r, float(w) ** (-2.0 * i / max(2 * r, 1)), 0) / s),
        ("lowest frequencies kept", np.where(i >= half - r, ladder, 0.0) / s),
        ("bf16 inverse frequencies", _bf16(right)),
        ("scale_factor dropped", right * s),
        ("NoPE via huge frequency factors", np.where(i < r, ladder, ladder / NOPE_FACTOR) / s),
        ("the width clamp max(2, ...)", spec_frequencies(head_dim, w, p, s, max(r, 1))),
        ("R from int(H * p) pairs rounded up", spec_frequencies(head_dim, w, p, s, min(up, half))),
        ("R computed in float32", spec_frequencies(head_dim, w, p, s, int(np.float32(p) * np.float32(head_dim) // 2))),
        ("partial_rotary_factor applied twice", spec_frequencies(head_dim, w, p, s, int(p * (p * head_dim) // 2))),
        ("the exponent off by one pair", np.where(i < r, float(w) ** (-2.0 * (i + 1) / head_dim), 0) / s),
    ]  # fmt: skip
    return [(name, f) for name, f in out if not np.array_equal(f, right)]


def _close(got: np.ndarray, expected: np.ndarray, head_dim: int, w: float, u: float) -> np.ndarray:
    """Per entry: within a few units of the table's precision (the exponent's rounding amplified by ln w)."""
    lam = 2.0 * np.arange(expected.size) / head_dim * abs(math.log(w))
    with np.errstate(invalid="ignore"):
        return (got == expected) | (np.abs(got - expected) <= 4 * u * (1 + lam) * np.abs(expected))


def _unit(table: np.ndarray) -> float:
    return 2.0**-53 if table.dtype == np.float64 else 2.0**-24 if table.dtype == np.float32 else 2.0**-8


def grade_frequencies(got: np.ndarray, head_dim: int, w: float, p: float, s: float) -> list[str]:
    """Problems of a frequency vector ([H/2] or [R]); [] when it is SPEC.md's."""
    half, r = head_dim // 2, _pairs(head_dim, p)
    u = _unit(got)
    values = got.astype(np.float64).reshape(-1)
    right = spec_frequencies(head_dim, w, p, s)
    if values.size == r and r < half:
        values = np.concatenate([values, np.zeros(half - r)])
    elif values.size != half:
        return [f"{values.size} entries, expected H/2 = {half} (or R = {r}, the rotated pairs only)"]
    ok = _close(values, right, head_dim, w, u)
    if ok.all():
        return []
    bad = np.flatnonzero(~ok)
    problems = [f"pairs {_span(bad)} differ from w ** (-2i / H) / s (and 0 on NoPE pairs i >= R = {r})"]
    nonzero = np.sort(values[values != 0])
    if nonzero.size == r and r and np.all(_close(nonzero, np.sort(right[:r]), head_dim, w, u)):
        problems.append("the right frequencies in the wrong lanes")
    problems += _matches(values, frequency_mistakes(head_dim, w, p, s), head_dim, w, u)
    return problems


def _matches(
    values: np.ndarray, mistakes: list[tuple[str, np.ndarray]], head_dim: int, w: float, u: float
) -> list[str]:
    for name, table in mistakes:
        if np.all(_close(values, table, head_dim, w, max(u, 2.0**-24))):
            return [f"matches {name}"]
    return []


def _span(index: np.ndarray) -> str:
    return f"{index[0]}..{index[-1]}" if index.size > 1 else str(index[0])


def grade_factors(got: np.ndarray, head_dim: int, w: float, p: float, s: float) -> list[str]:
    """Problems of a per-pair factor list [H/2] (frequency_i = w ** (-2i / H) / factor_i)."""
    half, r = head_dim // 2, _pairs(head_dim, p)
    values = got.astype(np.float64).reshape(-1)
    if values.size != half:
        return [f"{values.size} entries, expected H/2 = {half}"]
    problems = []
    rotated, nope = values[:r], values[r:]
    if not (np.all(rotated == 1.0) or np.all(rotated == s)):
        problems.append(f"rotated pairs 0..{r - 1} hold factors other than 1 (or s = {s:g})")
    if nope.size and not np.all(np.isposinf(nope)):
        finite = nope[np.isfinite(nope)]
        if finite.size and np.all(finite >= 1e20):
            problems.append(
                f"matches NoPE via huge frequency factors: NoPE pairs divided by {finite.min():g}, a tiny angle "
                "(not 0): exact at most positions, wrong where a NoPE lane is 0, -0.0 or small next to its partner "
                "and at large positions; SPEC.md's NoPE pairs have angle 0 (factor +inf)"
            )
        else:
            problems.append(f"NoPE pairs {r}..{half - 1} hold finite factors: they rotate")
    if not problems:
        return []
    frequencies = np.where(np.isposinf(values), 0.0, float(w) ** (-2.0 * np.arange(half) / head_dim) / values)
    if not any(p.startswith("matches") for p in problems):
        problems += _matches(frequencies, frequency_mistakes(head_dim, w, p, s), head_dim, w, 2.0**-24)
    return problems


def _split_cache(table: Any, head_dim: int) -> tuple[np.ndarray, np.ndarray] | str:
    half = head_dim // 2
    if isinstance(table, tuple | list) and len(table) == 2:
        cos, sin = (_numpy(t) for t in table)
        if cos.shape[-1] == head_dim and np.array_equal(cos[..., :half], cos[..., half:]):
            cos, sin = cos[..., :half], sin[..., :half]
        return cos.reshape(-1, cos.shape[-1]), sin.reshape(-1, sin.shape[-1])
    cache = _numpy(table)
    width = cache.shape[-1]
    if width == head_dim:
        return cache[..., :half].reshape(-1, half), cache[..., half:].reshape(-1, half)
    return (
        f"a cache of width {width} (rotary_dim {width}): p-RoPE needs the full width H = {head_dim} with "
        f"cos 1, sin 0 on NoPE pairs; a compact cache of the 2R rotated dims is applied with pairs (i, i + R) "
        f"by engines (matches compact pairing)"
    )


def grade_cache(table: Any, head_dim: int, w: float, p: float, s: float) -> list[str]:
    """Problems of a cos/sin cache indexed by position (row m: position m)."""
    split = _split_cache(table, head_dim)
    if isinstance(split, str):
        return [split]
    cos, sin = split
    half, r = head_dim // 2, _pairs(head_dim, p)
    if cos.shape[-1] != half:
        return [f"cos/sin of width {cos.shape[-1]}, expected H/2 = {half} pairs"]
    rows = cos.shape[0]
    u = _unit(cos)
    c, sn = cos.astype(np.float64), sin.astype(np.float64)
    problems = []
    if not (np.all(c[:, r:] == 1.0) and np.all(sn[:, r:] == 0.0)):
        problems.append(f"NoPE pairs {r}..{half - 1} do not hold cos 1, sin 0 exactly")
    right = spec_frequencies(head_dim, w, p, s)
    positions = np.arange(rows, dtype=np.float64)[:, None]
    theta = positions * right
    lam = 2.0 * np.arange(half) / head_dim * abs(math.log(w))
    allowed = 4 * u + 4 * max(u, 2.0**-53) * (1 + theta * (1 + lam))
    err = np.maximum(np.abs(c - np.cos(theta)), np.abs(sn - np.sin(theta)))[:, :r]
    if err.size and np.any(err > allowed[:, :r]):
        first = int(np.argmax(np.any(err > allowed[:, :r], axis=1)))
        problems.append(f"cos/sin of the rotated pairs wrong from position {first} (error {err.max():.3g})")
        last = np.flatnonzero(np.all(c == c[-1], axis=1) & np.all(sn == sn[-1], axis=1))
        if last.size > 1 and last[0] < rows - 1:
            problems.append(f"matches a cos/sin cache clamped beyond {last[0] + 1}: rows {last[0]}.. are all equal")
        elif rows > 1:
            estimated = np.where(np.arange(half) < half, np.arctan2(sn[1], c[1]), 0.0)
            problems += _matches(estimated, frequency_mistakes(head_dim, w, p, s), head_dim, w, 2.0**-20)
    if not problems and rows < CACHE_ROWS:
        return [f"only {rows} rows: positions >= {rows} are outside the cache (SPEC.md: positions are unbounded)"]
    return problems


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        import torch

        if value.dtype == torch.bfloat16:
            value = value.float()
        return np.asarray(value.numpy())
    return np.asarray(value)


GRADERS: dict[str, Callable[..., list[str]]] = {
    "inv_freq": lambda t, *a: grade_frequencies(_numpy(t), *a),
    "freq_factors": lambda t, *a: grade_factors(_numpy(t), *a),
    "cos_sin_cache": grade_cache,
}


def _call(function: Callable[..., Any], head_dim: int, w: float, p: float, s: float) -> Any:
    names, var_keyword = parameter_names(function)
    values = {"head_dim": head_dim, "max_wavelength": w, "rope_percentage": p, "scale_factor": s,
              "max_position": CACHE_ROWS, "rotary_dim": head_dim}  # fmt: skip
    kwargs = {}
    for ours, synonyms in FACTORY_NAMES.items():
        if ours not in values:
            continue
        found = next((n for n in synonyms if n in names), ours if var_keyword else None)
        if found is not None:
            kwargs[found] = values[ours]
    return function(**kwargs)


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise UsageError(f"--file {path} does not exist")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and {"cos", "sin"} <= set(data):
            return np.asarray(data["cos"], dtype=np.float64), np.asarray(data["sin"], dtype=np.float64)
        return np.asarray(data, dtype=np.float64)
    loaded = np.load(path)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        names = loaded.files
        if {"cos", "sin"} <= set(names):
            return loaded["cos"], loaded["sin"]
        return loaded[names[0]]
    return loaded


def check_tables(kind: str, table_for: Callable[[int, float, float, float], Any],
                 parameter_sets: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Grade the table of each parameter set: [{"parameters", "problems"}]."""
    results = []
    for head_dim, w, p, s in parameter_sets:
        try:
            table = table_for(head_dim, w, p, s)
            problems = GRADERS[kind](table, head_dim, w, p, s)
        except Exception as error:  # the builder's failure is the table's
            problems = [f"raised {type(error).__name__}: {error}"]
        notes = [q for q in problems if q.startswith("only ")]
        results.append({
            "parameters": {"head_dim": head_dim, "max_wavelength": w, "rope_percentage": p, "scale_factor": s},
            "problems": [q for q in problems if q not in notes],
            "notes": notes,
        })  # fmt: skip
    return results


def tables_command(args: argparse.Namespace) -> int:
    import sys

    from .check import _load

    try:
        if args.config is not None:
            from .check import _params

            params, _ = _params(args)
            sets: Any = [(params.head_dim, params.max_wavelength, params.rope_percentage, params.scale_factor)]
        elif args.head_dim is not None:
            sets = [(args.head_dim, args.max_wavelength, args.rope_percentage, args.scale_factor)]
        elif args.file is not None:
            raise UsageError("--file needs the parameters it was built for (--head-dim ... or --config)")
        else:
            sets = PARAMETER_SETS
        if args.file is not None:
            table = _load_file(args.file)
            source, table_for = str(args.file), lambda *a: table
        else:
            function, _ = _load(args.impl)
            source, table_for = args.impl, lambda *a: _call(function, *a)
    except UsageError as error:
        print(f"p-rope-conformance check-tables: {error}", file=sys.stderr)
        return 2
    results = check_tables(args.kind, table_for, sets)
    print(f"p-RoPE table check of {source} ({args.kind}) against SPEC.md's tables")
    for result in results:
        q = result["parameters"]
        head = f"H={q['head_dim']} w={q['max_wavelength']:g} p={q['rope_percentage']:g} s={q['scale_factor']:g}"
        print(f"{head}: " + ("pass" if not result["problems"] else "FAIL"))
        for problem in result["problems"] + result["notes"]:
            print(f"  {problem}")
    ok = not any(r["problems"] for r in results)
    print("GRADE: " + ("CONFORMANT" if ok else "NOT CONFORMANT"))
    if args.json is not None:
        args.json.write_text(json.dumps({"kind": args.kind, "source": source, "results": results}, indent=1) + "\n")
    return 0 if ok else 1
