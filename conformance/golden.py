"""Golden vectors: inputs and exact outputs made by the NumPy reference with fixed seeds, in a
language-neutral format (conformance/golden/FORMAT.md) that a C++, CUDA, Rust or Triton
implementation can check itself against without any of this project's Python.

    python -m p_rope.conformance golden --check    verify the files, regenerate in memory; fail on drift
    python -m p_rope.conformance golden --write    rewrite conformance/golden/

Reading them back (load, read_vectors, drift) verifies both files first, each NPY entry against the
manifest's sha256 (FORMAT.md, "Verifying the files"), and raises GoldenVectorError for a corrupt one.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import math
import re
import struct
import sys
import warnings
import zipfile
import zlib
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
# Reading the files back, verified (FORMAT.md, "Verifying the files"): the manifest against its
# schema, every NPY entry of the archive against the manifest's storage, shape and sha256.


class GoldenVectorError(ValueError):
    """A golden file that cannot be used: unreadable, not valid JSON or ZIP/NPY, a manifest field
    missing or of the wrong type, an NPY entry missing, unlisted, of another dtype or shape than the
    manifest says, an object (pickle) array, or data whose sha256 is not the manifest's. The message
    names the file, what is wrong and what was expected, on one line."""


_REMEDY = (
    "the file is corrupt or was edited: restore it from the repository or regenerate the golden vectors "
    "with `python -m p_rope.conformance golden --write`"
)
ROLES = ("inputs", "positions", "exact", "expected", "frequencies")
STORAGE = ("float16", "float32", "float64", "int32", "int64", "uint16")  # FORMAT.md; all little-endian


def _corrupt(path: Path, what: str) -> GoldenVectorError:
    """The error for `path`, on one line (characters that do not print, escaped as Python does)."""
    message = f"{path}: {what}; {_REMEDY}"
    return GoldenVectorError("".join(c if c.isprintable() else ascii(c)[1:-1] for c in message))


def _shown(value: Any) -> str:
    """A manifest value as JSON with its Python type, at most 60 characters."""
    text = json.dumps(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_of(*values: Any) -> tuple[str, Any]:
    """A schema rule: one of the given values (JSON spelling in the message; bool never equals 0/1)."""
    return " or ".join(json.dumps(v) for v in values), lambda v: any(type(v) is type(w) and v == w for w in values)


_STRING = ("a string", lambda v: isinstance(v, str))
_NUMBER = ("a number", _is_number)
_OBJECT = ("an object", lambda v: isinstance(v, dict))
_SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {  # the fields FORMAT.md documents; others are ignored
    "manifest": {
        "format": _one_of(FORMAT),
        "spec_version": _STRING,
        "strict_max_position": ("an integer", _is_int),
        "cases": ("a non-empty list", lambda v: isinstance(v, list) and len(v) > 0),
    },
    "case": {
        "id": _STRING,
        "kind": _one_of("apply", "special-values"),
        "special": _one_of(None, "finite", "nonfinite"),
        "dtype": _one_of(*DTYPES),
        "parameters": _OBJECT,
        "arrays": _OBJECT,
        "levels": (
            'a non-empty list of "conformant" and "strict"',
            lambda v: isinstance(v, list) and len(v) > 0 and all(level in ("conformant", "strict") for level in v),
        ),
        "bound": _OBJECT,
        "description": _STRING,
    },
    "parameters": {
        "head_dim": ("a positive even integer", lambda v: _is_int(v) and v > 0 and v % 2 == 0),
        "max_wavelength": _NUMBER,
        "rope_percentage": _NUMBER,
        "rotated_pairs_argument": ("null or an integer", lambda v: v is None or _is_int(v)),
        "rotated_pairs": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
        "scale_factor": _NUMBER,
        "pairing": _one_of("split_half", "interleaved"),
        "seq_axis": _one_of(-3, -2),
    },
    "bound": {
        "u_out": _NUMBER,
        "u_c": _NUMBER,
        "s_out": _NUMBER,
        "abs_log_w": _NUMBER,
        "strict_eps": ("null or a number", lambda v: v is None or _is_number(v)),
    },
    "arrays": {role: _OBJECT for role in ROLES},
    "array": {
        "name": ("a non-empty string without '/'", lambda v: isinstance(v, str) and v != "" and "/" not in v),
        "dtype": _one_of(*sorted(set(DTYPES) | set(STORAGE))),
        "storage": _one_of(*STORAGE),
        "shape": (
            "a list of non-negative integers",
            lambda v: isinstance(v, list) and all(_is_int(n) and n >= 0 for n in v),
        ),
        "sha256": (
            "64 lowercase hexadecimal digits",
            lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v) is not None,
        ),
    },
}


def _check_fields(path: Path, value: Any, schema: str, where: str) -> None:
    """Every field of `schema` present in `value` (an object) and of its type."""
    for field, (expected, valid) in _SCHEMA[schema].items():
        name = f"{where}{field}"
        if field not in value:
            raise _corrupt(path, f"{name} is missing; expected {expected}")
        if not valid(value[field]):
            raise _corrupt(path, f"{name} is {_shown(value[field])}; expected {expected}")


def check_manifest(manifest: Any, path: Path) -> None:
    """Raises GoldenVectorError unless `manifest` (parsed JSON) has every field FORMAT.md documents, of
    its type, and each array entry's dtype matches its storage (bfloat16 stored as uint16)."""
    if not isinstance(manifest, dict):
        raise _corrupt(path, f"the top level is {_shown(manifest)}; expected an object")
    _check_fields(path, manifest, "manifest", "")
    numbers: dict[str, int] = {}
    for number, case in enumerate(manifest["cases"]):
        if not isinstance(case, dict):
            raise _corrupt(path, f"cases[{number}] is {_shown(case)}; expected an object")
        where = f"cases[{number}]" + (f" ({case['id']})" if isinstance(case.get("id"), str) else "")
        _check_fields(path, case, "case", f"{where}: ")
        first = numbers.setdefault(case["id"], number)
        if first != number:
            raise _corrupt(path, f"{where}: id is the id of cases[{first}]; expected each id once")
        for part in ("parameters", "bound", "arrays"):
            _check_fields(path, case[part], part, f"{where}: {part}.")
        for role in ROLES:
            entry = case["arrays"][role]
            _check_fields(path, entry, "array", f"{where}: arrays.{role}.")
            storage = "uint16" if entry["dtype"] == "bfloat16" else entry["dtype"]
            if entry["storage"] != storage:
                raise _corrupt(
                    path,
                    f"{where}: arrays.{role} has dtype {entry['dtype']} and storage {entry['storage']}; "
                    f"expected storage {storage}",
                )


def read_manifest(directory: Path | None = None) -> dict[str, Any]:
    """manifest.json, parsed and checked against FORMAT.md (check_manifest); raises GoldenVectorError."""
    path = Path(directory or golden_dir()) / MANIFEST
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise _corrupt(path, f"cannot be read ({error.strerror or error}); expected the golden manifest") from None
    except UnicodeDecodeError as error:
        raise _corrupt(path, f"is not UTF-8 ({error}); expected JSON") from None
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise _corrupt(path, f"is not valid JSON ({error}); expected the golden manifest") from None
    check_manifest(manifest, path)
    return manifest


def _listed(manifest: dict[str, Any]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each NPY name the manifest lists -> (where, array entry) for every role that names it."""
    listed: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for number, case in enumerate(manifest["cases"]):
        for role in ROLES:
            entry = case["arrays"][role]
            listed.setdefault(entry["name"], []).append((f"cases[{number}] ({case['id']}) arrays.{role}", entry))
    return listed


def _npy_array(path: Path, member: str, data: bytes, entries: list[tuple[str, dict[str, Any]]]) -> np.ndarray:
    """The array of one NPY entry, after checking its header against the manifest and its data against
    each entry's sha256 (never unpickling anything)."""
    where, entry = entries[0]
    storage = np.dtype(entry["storage"]).newbyteorder("<")
    wanted = f"{entry['storage']} ({storage.str}) data of shape {entry['shape']} for {where}"
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"NPY version {version[0]}.{version[1]}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # NumPy reads a Python 2 header with a warning
            shape, fortran_order, dtype = read_header(stream)
    except (ValueError, TypeError, SyntaxError, RecursionError, UserWarning) as error:
        raise _corrupt(
            path, f"{member} is not an NPY file of version 1.0 or 2.0 ({error}); expected {wanted}"
        ) from None
    if dtype.hasobject:
        raise _corrupt(path, f"{member} holds an object array (pickled Python objects, refused); expected {wanted}")
    if dtype.str != storage.str or tuple(shape) != tuple(entry["shape"]) or fortran_order:
        order = "Fortran" if fortran_order else "C"
        raise _corrupt(
            path, f"{member} holds {dtype.str} data of shape {list(shape)} in {order} order; expected {wanted}"
        )
    payload = data[stream.tell() :]
    size = math.prod(entry["shape"]) * storage.itemsize
    if len(payload) != size:
        raise _corrupt(path, f"{member} holds {len(payload)} bytes of data after its header; expected {size}")
    digest = hashlib.sha256(payload).hexdigest()
    for where, other in entries:
        if (other["storage"], other["shape"]) != (entry["storage"], entry["shape"]):
            raise _corrupt(
                path.with_name(MANIFEST),
                f"{where} names {member} with storage {other['storage']} and shape {other['shape']}; expected "
                f"{entry['storage']} and {entry['shape']}, as {entries[0][0]} says",
            )
        if digest != other["sha256"]:
            raise _corrupt(path, f"{member} has sha256 {digest}, the manifest says {other['sha256']} for {where}")
    return np.frombuffer(payload, dtype=storage).reshape(entry["shape"])


def read_vectors(directory: Path | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and the arrays as stored (bfloat16 as uint16 bits; read-only, keyed by name), every
    one verified against the manifest (FORMAT.md, "Verifying the files"). Raises GoldenVectorError."""
    directory = Path(directory or golden_dir())
    manifest = read_manifest(directory)
    listed = _listed(manifest)
    path = directory / VECTORS
    arrays = {}
    try:
        data = path.read_bytes()
    except OSError as error:
        raise _corrupt(path, f"cannot be read ({error.strerror or error}); expected the golden vectors") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.namelist()
            for member, count in collections.Counter(members).items():
                name = member.removesuffix(".npy")
                if count > 1:
                    raise _corrupt(path, f"holds {member} {count} times; expected each array once")
                if name not in listed or member == name:
                    raise _corrupt(path, f"holds {member}, which the manifest does not list; expected only "
                                         "<name>.npy for the manifest's array names")  # fmt: skip
            for name, entries in listed.items():
                if name + ".npy" not in members:
                    raise _corrupt(path, f"{name}.npy is missing; expected it for {entries[0][0]}")
                arrays[name] = _npy_array(path, name + ".npy", archive.read(name + ".npy"), entries)
    except GoldenVectorError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, ValueError, struct.error) as error:
        raise _corrupt(path, f"is not a readable ZIP archive ({error}); expected a ZIP archive of NPY files") from None
    return manifest, arrays


@dataclasses.dataclass
class GoldenCase:
    """One golden case loaded back (for tests and for implementations in Python)."""

    id: str
    entry: dict[str, Any]
    arrays: dict[str, np.ndarray]


def load(directory: Path | None = None) -> list[GoldenCase]:
    """The golden cases with their arrays decoded (bfloat16 from its uint16 bits; each array a writable
    copy), after read_vectors has verified both files. Raises GoldenVectorError."""
    manifest, stored = read_vectors(directory)
    cases = []
    for entry in manifest["cases"]:
        decoded = {}
        for role in ROLES:
            info = entry["arrays"][role]
            array = stored[info["name"]].copy()
            if info["dtype"] == "bfloat16":
                import ml_dtypes

                array = array.view(ml_dtypes.bfloat16)
            decoded[role] = array
        cases.append(GoldenCase(entry["id"], entry, decoded))
    return cases


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
    """Differences between the stored golden vectors and a fresh generation (empty: none).

    Raises GoldenVectorError when the stored files cannot be used (see read_vectors)."""
    return _drift(*read_vectors(directory))


def _drift(stored_manifest: dict[str, Any], stored: dict[str, np.ndarray]) -> list[str]:
    manifest, arrays = generate()
    problems: list[str] = []
    if stored_manifest["spec_version"] != SPEC_VERSION:
        problems.append(
            f"made under SPEC_VERSION {stored_manifest['spec_version']}, the spec is {SPEC_VERSION}: "
            "regenerate (golden --write) if the major version changed, else this is drift"
        )
    problems += _manifest_problems(stored_manifest, manifest)
    for entry in manifest["cases"]:
        problems += _case_problems(entry, stored, arrays)
    return problems


def golden_command(write: bool = False, directory: Path | None = None) -> int:
    """The ``golden`` command: 0 without drift, 1 on drift, 2 when the stored files cannot be used
    (one line on stderr, the GoldenVectorError's message)."""
    if write:
        where = write_vectors(directory)
        print(f"wrote {where / MANIFEST} and {where / VECTORS}")
        return 0
    where = Path(directory or golden_dir())
    try:
        manifest, stored = read_vectors(where)
    except GoldenVectorError as error:
        print(f"p-rope-conformance golden: {error}", file=sys.stderr)
        return 2
    problems = _drift(manifest, stored)
    if problems:
        print(f"golden vectors in {where} DRIFTED ({len(problems)} problems):")
        for problem in problems[:30]:
            print("  " + problem)
        print("if the change is intended (SPEC.md section 10), regenerate: nox -s golden -- --write")
        return 1
    size = (where / VECTORS).stat().st_size + (where / MANIFEST).stat().st_size
    print(
        f"golden vectors in {where}: {len(manifest['cases'])} cases, SPEC {manifest['spec_version']}, "
        f"{size / 1e6:.2f} MB, checksums verified: no drift"
    )
    return 0
