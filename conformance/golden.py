"""Golden vectors: inputs and exact outputs made by the NumPy reference with fixed seeds, in a
language-neutral format (conformance/golden/FORMAT.md) that a C++, CUDA, Rust or Triton
implementation can check itself against without any of this project's Python.

    python -m p_rope.conformance golden --check    regenerate in memory; fail on drift
    python -m p_rope.conformance golden --write    rewrite conformance/golden/
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import p_rope
from p_rope._params import SPEC_VERSION
from p_rope.tolerance import ABSOLUTE_TERM, STRICT_MAX_POSITION, UNIT_ROUNDOFF, compute_unit_roundoff

from .cases import DTYPES, Case, _scenarios, _specials, iter_levels

FORMAT = "p-rope-golden/1"
MANIFEST = "manifest.json"
VECTORS = "vectors.npz"
MAX_ELEMENTS = 256  # per case (the sweep case excepted): the whole set stays well under 2 MB


def golden_dir() -> Path:
    return Path(__file__).parent / "golden"


def _small(params: dict[str, Any]) -> dict[str, Any]:
    """A scenario shrunk to golden size: batch axes <= 2, L <= 4 (the sweep keeps 25), N <= 2, L != N."""
    shape = list(params["shape"])
    seq = len(shape) + params.get("seq_axis", -3)
    head = len(shape) - 2 if params.get("seq_axis", -3) == -3 else len(shape) - 3
    for axis in range(len(shape) - 3):
        shape[axis] = min(shape[axis], 2)
    shape[head] = min(shape[head], 2)
    shape[seq] = 25 if params["positions"].kind == "sweep" else min(shape[seq], 4)
    if shape[seq] == shape[head] and shape[seq] > 1:
        shape[seq] -= 1
    limit = max(MAX_ELEMENTS, (25 if params["positions"].kind == "sweep" else 2) * shape[-1])  # >= 2 tokens
    while math.prod(shape) > limit and any(shape[a] > 1 for a in range(len(shape) - 3)):
        axis = next(a for a in range(len(shape) - 3) if shape[a] > 1)
        shape[axis] -= 1
    if math.prod(shape) > limit:
        shape[head] = 1
    while math.prod(shape) > limit and shape[seq] > 2:
        shape[seq] -= 1
    return params | {"shape": tuple(shape)}


def golden_cases() -> list[Case]:
    cases = []
    for dtype in DTYPES:
        cases += [Case(op="apply", dtype=dtype, **_small(s)) for s in _scenarios()]
        cases += [Case(op="special", dtype=dtype, **_small(s)) for s in _specials()]
    return cases


def _store(array: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The array as stored in the npz, and its manifest entry (bfloat16 as its uint16 bits)."""
    dtype = array.dtype.name
    stored = np.ascontiguousarray(array.view(np.uint16) if dtype == "bfloat16" else array)
    stored = stored.astype(stored.dtype.newbyteorder("<"))
    entry = {
        "dtype": dtype,
        "storage": stored.dtype.name,
        "shape": list(array.shape),
        "sha256": hashlib.sha256(stored.tobytes()).hexdigest(),
    }
    return stored, entry


def generate() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and the arrays, made from scratch by the reference."""
    arrays: dict[str, np.ndarray] = {}
    entries = []
    for number, case in enumerate(golden_cases()):
        key = f"c{number:03d}"
        data = case.materialize()
        x, positions = data.inputs, data.positions
        pairs = case.pairs
        tables64 = p_rope.p_rope_tables(
            positions, case.head_dim, case.max_wavelength, rotated_pairs=pairs, scale_factor=case.scale_factor
        )
        with np.errstate(invalid="ignore", over="ignore"):
            exact = p_rope.apply_p_rope_tables(
                x.astype(np.float64), tables64, pairing=case.pairing, seq_axis=case.seq_axis
            )
            expected = p_rope.apply_p_rope(
                x,
                positions,
                case.head_dim,
                case.max_wavelength,
                case.rope_percentage,
                rotated_pairs=case.rotated_pairs,
                scale_factor=case.scale_factor,
                pairing=case.pairing,
                seq_axis=case.seq_axis,
            )
        freq = p_rope.frequencies(
            case.head_dim, case.max_wavelength, rotated_pairs=pairs, scale_factor=case.scale_factor
        )
        named = {"inputs": x, "positions": positions, "exact": exact, "frequencies": freq}
        if case.dtype != "float64":
            named["expected"] = expected
        manifest_arrays = {}
        for role, array in named.items():
            stored, entry = _store(array)
            arrays[f"{key}.{role}"] = stored
            manifest_arrays[role] = {"name": f"{key}.{role}"} | entry
        if case.dtype == "float64":
            manifest_arrays["expected"] = dict(manifest_arrays["exact"])
        u_out, u_c = UNIT_ROUNDOFF[case.dtype], compute_unit_roundoff(case.dtype)
        entries.append(
            {
                "id": f"{case.dtype}/{case.op}/{case.name}",
                "kind": "special-values" if case.special else "apply",
                "special": case.special or None,
                "dtype": case.dtype,
                "parameters": {
                    "head_dim": case.head_dim,
                    "max_wavelength": case.max_wavelength,
                    "rope_percentage": case.rope_percentage,
                    "rotated_pairs_argument": case.rotated_pairs,
                    "rotated_pairs": pairs,
                    "scale_factor": case.scale_factor,
                    "pairing": case.pairing,
                    "seq_axis": case.seq_axis,
                },
                "layout": "[B..., L, N, H]" if case.seq_axis == -3 else "[B..., N, L, H]",
                "arrays": manifest_arrays,
                "levels": list(iter_levels(case)),
                "bound": {
                    "u_out": u_out,
                    "u_c": u_c,
                    "s_out": ABSOLUTE_TERM[case.dtype],
                    "abs_log_w": abs(math.log(case.max_wavelength)),
                    "strict_eps": 8 * 2.0**-24 if case.dtype != "float64" else None,
                },
                "description": case.describe(),
            }
        )
    manifest = {
        "format": FORMAT,
        "spec_version": SPEC_VERSION,
        "generator": "python -m p_rope.conformance golden --write (the NumPy reference, fixed seeds)",
        "vectors": VECTORS,
        "documentation": "FORMAT.md",
        "strict_max_position": STRICT_MAX_POSITION,
        "cases": entries,
    }
    return manifest, arrays


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz (a zip of .npy files) with fixed timestamps: the same bytes every time."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, arrays[name], allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def manifest_text(manifest: dict[str, Any]) -> str:
    """JSON, one field per line, with short lists of numbers (shapes) kept on one line."""
    text = json.dumps(manifest, indent=1)
    inline = lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]"
    return re.sub(r"\[\s+([-0-9.e, \n]+?)\s+\]", inline, text) + "\n"


def write_vectors(directory: Path | None = None) -> Path:
    directory = directory or golden_dir()
    directory.mkdir(parents=True, exist_ok=True)
    manifest, arrays = generate()
    (directory / VECTORS).write_bytes(_npz_bytes(arrays))
    (directory / MANIFEST).write_text(manifest_text(manifest))
    return directory


def _exact_close(stored: np.ndarray, fresh: np.ndarray, inputs: np.ndarray) -> bool:
    """Exact values agree to a few float64 units of the largest input (sin/cos differ across libms)."""
    scale = np.nanmax(np.abs(inputs.astype(np.float64)), initial=1.0)
    if not np.isfinite(scale):
        scale = 1.0
    same = (stored == fresh) | (np.isnan(stored) & np.isnan(fresh))
    with np.errstate(invalid="ignore"):
        close = np.abs(stored - fresh) <= 2.0**-48 * max(scale, 1e-300)
    return bool(np.all(same | close))


def drift(directory: Path | None = None) -> list[str]:
    """Differences between the stored golden vectors and a fresh generation (empty: none)."""
    directory = directory or golden_dir()
    problems: list[str] = []
    try:
        stored_manifest = json.loads((directory / MANIFEST).read_text())
        stored = dict(np.load(directory / VECTORS, allow_pickle=False))
    except (OSError, ValueError) as error:
        return [f"cannot read the golden vectors in {directory}: {error}"]
    manifest, arrays = generate()
    if stored_manifest.get("spec_version") != SPEC_VERSION:
        problems.append(
            f"made under SPEC_VERSION {stored_manifest.get('spec_version')}, the spec is {SPEC_VERSION}: "
            "regenerate (golden --write) if the major version changed, else this is drift"
        )
    ignore = {"sha256"}

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ignore}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    if strip(stored_manifest) != strip(manifest):
        old = {c["id"]: c for c in stored_manifest.get("cases", [])}
        new = {c["id"]: c for c in manifest["cases"]}
        changed = sorted(k for k in old.keys() & new.keys() if strip(old[k]) != strip(new[k]))
        problems.append(
            "manifest differs: "
            + ", ".join(
                filter(
                    None,
                    [
                        f"{len(new.keys() - old.keys())} cases added" if new.keys() - old.keys() else "",
                        f"{len(old.keys() - new.keys())} removed" if old.keys() - new.keys() else "",
                        f"changed: {', '.join(changed[:5])}" if changed else "",
                        "header fields" if not changed and old.keys() == new.keys() else "",
                    ],
                )
            )
        )
    for case in manifest["cases"]:
        names = case["arrays"]
        for role in ("inputs", "positions", "frequencies", "expected", "exact"):
            name = names[role]["name"]
            if name not in stored:
                problems.append(f"{case['id']}: {name} missing from {VECTORS}")
                continue
            old, fresh = stored[name], arrays[name]
            if old.shape != fresh.shape or old.dtype != fresh.dtype:
                problems.append(f"{case['id']}: {role} is {old.dtype}{old.shape}, expected {fresh.dtype}{fresh.shape}")
                continue
            if np.array_equal(old.view(np.uint8), fresh.view(np.uint8)):
                continue
            if role == "exact" and _exact_close(old, fresh, arrays[names["inputs"]["name"]].astype(np.float64)):
                continue
            if role == "expected":
                # A rounding may flip only where the fresh exact value differs from the stored one.
                old_exact, new_exact = stored[names["exact"]["name"]], arrays[names["exact"]["name"]]
                differs = np.flatnonzero(old.view(f"u{old.itemsize}") != fresh.view(f"u{old.itemsize}"))
                moved = np.flatnonzero(old_exact.reshape(-1) != new_exact.reshape(-1))
                ulps = np.abs(old.view(f"i{old.itemsize}").astype(np.int64) - fresh.view(f"i{old.itemsize}"))
                if np.isin(differs, moved).all() and ulps.max() <= 1:
                    continue
            problems.append(f"{case['id']}: {role} ({name}) differs from a fresh generation")
    return problems


def golden_command(write: bool = False, directory: Path | None = None) -> int:
    if write:
        where = write_vectors(directory)
        print(f"wrote {where / MANIFEST} and {where / VECTORS}")
        return 0
    problems = drift(directory)
    where = directory or golden_dir()
    if problems:
        print(f"golden vectors in {where} DRIFTED ({len(problems)} problems):")
        for problem in problems[:30]:
            print("  " + problem)
        print("if the change is intended (SPEC.md section 10), regenerate: nox -s golden -- --write")
        return 1
    manifest = json.loads((where / MANIFEST).read_text())
    size = (where / VECTORS).stat().st_size + (where / MANIFEST).stat().st_size
    print(
        f"golden vectors in {where}: {len(manifest['cases'])} cases, SPEC {manifest['spec_version']}, "
        f"{size / 1e6:.2f} MB: no drift"
    )
    return 0


@dataclasses.dataclass
class GoldenCase:
    """One golden case loaded back (for tests and for implementations in Python)."""

    id: str
    entry: dict[str, Any]
    arrays: dict[str, np.ndarray]


def load(directory: Path | None = None) -> list[GoldenCase]:
    """The golden cases with their arrays decoded (bfloat16 from its uint16 bits)."""
    directory = directory or golden_dir()
    manifest = json.loads((directory / MANIFEST).read_text())
    stored = np.load(directory / VECTORS, allow_pickle=False)
    cases = []
    for entry in manifest["cases"]:
        decoded = {}
        for role, info in entry["arrays"].items():
            array = stored[info["name"]]
            if info["dtype"] == "bfloat16":
                import ml_dtypes

                array = array.view(ml_dtypes.bfloat16)
            decoded[role] = array.reshape(info["shape"])
        cases.append(GoldenCase(entry["id"], entry, decoded))
    return cases
