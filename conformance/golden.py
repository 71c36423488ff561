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
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import numpy as np
import p_rope
from p_rope._params import SPEC_VERSION, positions_target_shape
from p_rope.tolerance import ABSOLUTE_TERM, STRICT_MAX_POSITION, UNIT_ROUNDOFF, compute_unit_roundoff

from .cases import (
    DTYPES,
    Case,
    _scenarios,
    _specials,
    iter_levels,
    make_positions,
    numpy_dtype,
    positions_shape,
    special_inputs,
)

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


# ---------------------------------------------------------------------------------------------
# Inputs without libm: every input, position and parameter is made from integers by exact
# operations (integer draws, exact conversions, scaling by powers of two), so it is bit-identical on
# every CPU and with every C library. Only the outputs (`exact`, `expected`) go through sin and cos.

SIGNIFICAND_BITS = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}
EXPONENTS = (-7, 4)  # each (token, head) row of inputs is below 2**e, e uniform in [-7, 4]


def golden_inputs(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """k * 2**(e - b): k a uniform integer with |k| < 2**b (b the dtype's significand bits), one e per
    row in EXPONENTS: magnitudes from about 2**-15 to 16, every value exact in the dtype."""
    bits = SIGNIFICAND_BITS[dtype]
    k = rng.integers(-(2**bits) + 1, 2**bits, size=shape, dtype=np.int64)
    e = rng.integers(EXPONENTS[0], EXPONENTS[1] + 1, size=(*shape[:-1], 1))
    return np.ldexp(k.astype(np.float64), e - bits).astype(numpy_dtype(dtype))  # exact: |k| < 2**53


def _real_positions(rng: np.random.Generator, low: float, high: float, dtype: str, shape: tuple[int, ...]):
    """Uniform on the grid of multiples of 2**-f in [low, high], f the largest that keeps every grid
    point exact in the dtype (low and high integers)."""
    if not (float(low).is_integer() and float(high).is_integer()):
        raise ValueError(f"real positions need integer bounds; got [{low}, {high}]")
    _, top = math.frexp(max(abs(low), abs(high), 1.0))  # max(|low|, |high|) < 2**top
    frac = SIGNIFICAND_BITS[dtype] - top
    if frac < 0:
        raise ValueError(f"real {dtype} positions up to {max(abs(low), abs(high))} are not all exact")
    steps = rng.integers(0, (int(high) - int(low)) * 2**frac, size=shape, endpoint=True, dtype=np.int64)
    grid = steps + int(low) * 2**frac  # |grid| < 2**53: exact in float64
    return np.ldexp(grid.astype(np.float64), -frac).astype(dtype)


def nearest_integer_root(power: int, root: int) -> int:
    """The integer nearest to 2**(power / root), in integer arithmetic (never a tie)."""
    low, high = 1, 2 ** (power // root + 1)  # low**root <= 2**power < high**root
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if middle**root <= 2**power else (low, middle)
    return low + 1 if (2 * low + 1) ** root < 2 ** (power + root) else low  # compare with low + 1/2


def _sweep_positions(high: float, length: int, rows: int) -> np.ndarray:
    """0, then the integers nearest to 2**(j log2(high) / (length - 2)), j = 0 .. length - 2."""
    mantissa, top = math.frexp(high)
    if mantissa != 0.5 or length < 3:
        raise ValueError(f"a sweep needs a power of two and length >= 3; got {high}, {length}")
    steps = [nearest_integer_root((top - 1) * j, length - 2) for j in range(length - 1)]
    return np.tile(np.array([0, *steps], dtype=np.int64), (rows, 1))


def golden_positions(rng: np.random.Generator, case: Case) -> np.ndarray:
    """The case's positions, drawn without libm: integer kinds as the suite draws them (integers only),
    real positions on an exact binary grid, the sweep in integer arithmetic."""
    spec = case.positions
    shape = positions_shape(case)
    if spec.kind == "real":
        return _real_positions(rng, spec.low, spec.high, spec.dtype, shape)
    if spec.kind == "sweep":
        rows = math.prod(shape[:-1])
        return _sweep_positions(spec.high, shape[-1], rows).reshape(shape).astype(spec.dtype)
    return make_positions(rng, case)  # offsets, random, values: integer draws and given values


def golden_arrays(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """A golden case's inputs and positions, bit-identical on every platform (the seed is the case's)."""
    rng = np.random.default_rng(case.seed)
    x = golden_inputs(rng, case.shape, case.dtype)
    positions = golden_positions(rng, case)
    if case.special:
        x = special_inputs(rng, x, case)  # integer draws and fixed constants
    return x, positions


def abs_log(value: float) -> float:
    """|ln value| correctly rounded from 40 digits (decimal arithmetic: the same on every platform)."""
    with localcontext() as ctx:
        ctx.prec = 40
        return float(abs(Decimal(value).ln()))


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
        x, positions = golden_arrays(case)
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
                    "abs_log_w": abs_log(case.max_wavelength),
                    "strict_eps": 8 * 2.0**-24 if case.dtype != "float64" else None,
                },
                "description": case.describe(),
            }
        )
    manifest = {
        "format": FORMAT,
        "spec_version": SPEC_VERSION,
        "generator": "python -m p_rope.conformance golden --write (the NumPy reference; inputs without libm)",
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


# ---------------------------------------------------------------------------------------------
# Drift: inputs, positions, frequencies and the manifest bit for bit; outputs within what two
# correct evaluations of the reference on different C libraries can differ by (FORMAT.md, SPEC.md §10).

EXACT_ROLES = ("inputs", "positions", "frequencies")  # the same bits on every platform
OUTPUT_ROLES = ("exact", "expected")  # their last bits depend on the platform's sin and cos


def output_tolerance(entry: dict[str, Any], inputs: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """How far two generations' `exact` may differ, per element (0 on NoPE lanes), float64.

    The reference computes each rotated pair as fl(x1 c - x2 s), fl(x2 c + x1 s) with c, s the
    platform's float64 cos and sin of theta' = fl(m * freq), freq correctly rounded. With u = 2**-53:
    theta' is within 2 u theta of the exact angle, which moves the pair by at most nx * 2 u theta;
    cos and sin within 1.5 units in the last place (NumPy's accuracy tests allow 1 unit from the
    correctly rounded value) are each within 3 u of their value relative to it, which moves an output
    by at most nx * 3 u (Cauchy-Schwarz); the product and the sum round twice: 2 u nx. So each output
    is within E = nx * u * (5 + 2 theta) of the true value, and two generations within 2 E, plus the
    float64 absolute term 2**-1020 for results near the subnormals.
    """
    params = entry["parameters"]
    head_dim, pairs, pairing = params["head_dim"], params["rotated_pairs"], params["pairing"]
    seq_axis = params["seq_axis"]
    x = inputs.astype(np.float64)
    i = np.arange(pairs)
    first, second = (i, i + head_dim // 2) if pairing == "split_half" else (2 * i, 2 * i + 1)
    freq = p_rope.frequencies(head_dim, params["max_wavelength"], rotated_pairs=pairs,
                              scale_factor=params["scale_factor"])[:pairs]  # fmt: skip
    m = np.broadcast_to(positions.astype(np.float64), positions_target_shape(x.shape, seq_axis))
    with np.errstate(invalid="ignore", over="ignore"):
        theta = np.expand_dims(np.abs(m)[..., None] * freq, -2 if seq_axis == -3 else -3)
        norm = np.hypot(x[..., first], x[..., second])
        pair = norm * 2.0**-53 * (10.0 + 4.0 * theta) + ABSOLUTE_TERM["float64"]
    tolerance = np.zeros(x.shape)
    tolerance[..., first] = pair
    tolerance[..., second] = pair
    return tolerance


def _same(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Element-wise: the same bits, or both non-finite (SPEC.md section 8: any non-finite output is
    right where the exact value is non-finite)."""
    bits = f"u{old.dtype.itemsize}"
    return (old.view(bits) == new.view(bits)) | (~np.isfinite(old) & ~np.isfinite(new))


def exact_within(old: np.ndarray, new: np.ndarray, tolerance: np.ndarray) -> np.ndarray:
    """Element-wise: `exact` of two generations agree (bit for bit where the tolerance is 0)."""
    with np.errstate(invalid="ignore"):
        close = np.isfinite(old) & np.isfinite(new) & (np.abs(old - new) <= tolerance)
    return _same(old, new) | close


def _ordered(a: np.ndarray) -> np.ndarray:
    """Floats to integers in the same order, neighbours one apart (+0 and -0 both 0)."""
    u = a.view(f"u{a.dtype.itemsize}").astype(np.int64)
    sign = 1 << (8 * a.dtype.itemsize - 1)
    return np.where(u & sign, -(u & (sign - 1)), u)


def expected_within(old: np.ndarray, new: np.ndarray, old_exact: np.ndarray, tolerance: np.ndarray) -> np.ndarray:
    """Element-wise: `expected` (the exact value rounded once) of two generations agree: the same bits,
    or neighbours whose midpoint lies within the tolerance of the stored exact value (where `exact`
    may legitimately move across the rounding boundary)."""
    o, n = old.astype(np.float64), new.astype(np.float64)  # exact conversions (bfloat16 too)
    step = np.abs(_ordered(old) - _ordered(new))
    same = (old.view(f"u{old.dtype.itemsize}") == new.view(f"u{old.dtype.itemsize}")) | (np.isnan(o) & np.isnan(n))
    with np.errstate(invalid="ignore", over="ignore"):
        midpoint = o / 2 + n / 2  # exact: neighbours of a 16- or 32-bit format
        flip = (step == 1) & np.isfinite(o) & np.isfinite(n) & (np.abs(old_exact - midpoint) <= tolerance)
    return same | flip


def _manifest_problems(stored: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """Manifest differences, output checksums aside (their bits follow the platform's sin and cos)."""

    def strip(value: Any, role: str = "") -> Any:
        if isinstance(value, dict):
            if role in OUTPUT_ROLES:
                value = {k: v for k, v in value.items() if k != "sha256"}
            return {k: strip(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    if strip(stored) == strip(fresh):
        return []
    old = {c["id"]: c for c in stored.get("cases", [])}
    new = {c["id"]: c for c in fresh["cases"]}
    changed = sorted(k for k in old.keys() & new.keys() if strip(old[k]) != strip(new[k]))
    parts = [
        f"{len(new.keys() - old.keys())} cases added" if new.keys() - old.keys() else "",
        f"{len(old.keys() - new.keys())} removed" if old.keys() - new.keys() else "",
        f"changed: {', '.join(changed[:5])}" if changed else "",
        "header fields" if not changed and old.keys() == new.keys() else "",
    ]
    return ["manifest differs: " + ", ".join(filter(None, parts))]


def _case_problems(entry: dict[str, Any], stored: dict[str, np.ndarray], fresh: dict[str, np.ndarray]) -> list[str]:
    names = {role: entry["arrays"][role]["name"] for role in EXACT_ROLES + OUTPUT_ROLES}
    problems = []
    for role, name in names.items():
        if name not in stored:
            problems.append(f"{entry['id']}: {name} missing from {VECTORS}")
        elif stored[name].shape != fresh[name].shape or stored[name].dtype != fresh[name].dtype:
            old, new = stored[name], fresh[name]
            problems.append(f"{entry['id']}: {role} is {old.dtype}{old.shape}, expected {new.dtype}{new.shape}")
        elif role in EXACT_ROLES and not np.array_equal(stored[name].view(np.uint8), fresh[name].view(np.uint8)):
            problems.append(f"{entry['id']}: {role} ({name}) is not bit-identical to a fresh generation")
    if problems:
        return problems
    inputs, positions = fresh[names["inputs"]], fresh[names["positions"]]
    if entry["dtype"] == "bfloat16":
        inputs = (inputs.astype(np.uint32) << 16).view(np.float32)
    tolerance = output_tolerance(entry, inputs, positions)
    old_exact = stored[names["exact"]]
    if not exact_within(old_exact, fresh[names["exact"]], tolerance).all():
        problems.append(f"{entry['id']}: exact ({names['exact']}) differs from a fresh generation beyond 2 E")
    if names["expected"] == names["exact"]:  # float64 cases: one array
        return problems
    old, new = stored[names["expected"]], fresh[names["expected"]]
    if entry["dtype"] == "bfloat16":
        import ml_dtypes

        old, new = old.view(ml_dtypes.bfloat16), new.view(ml_dtypes.bfloat16)
    if not expected_within(old, new, old_exact, tolerance).all():
        problems.append(f"{entry['id']}: expected ({names['expected']}) differs from a fresh generation")
    return problems


def drift(directory: Path | None = None) -> list[str]:
    """Differences between the stored golden vectors and a fresh generation (empty: none)."""
    directory = directory or golden_dir()
    try:
        stored_manifest = json.loads((directory / MANIFEST).read_text())
        stored = dict(np.load(directory / VECTORS, allow_pickle=False))
    except (OSError, ValueError) as error:
        return [f"cannot read the golden vectors in {directory}: {error}"]
    manifest, arrays = generate()
    problems: list[str] = []
    if stored_manifest.get("spec_version") != SPEC_VERSION:
        problems.append(
            f"made under SPEC_VERSION {stored_manifest.get('spec_version')}, the spec is {SPEC_VERSION}: "
            "regenerate (golden --write) if the major version changed, else this is drift"
        )
    problems += _manifest_problems(stored_manifest, manifest)
    for entry in manifest["cases"]:
        problems += _case_problems(entry, stored, arrays)
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
