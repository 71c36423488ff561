"""The golden vectors (conformance/golden/): read the way FORMAT.md tells a C++ or Rust implementer to,
graded with FORMAT.md's recipe (written here from the document, not from spec/tolerance.py), and
checked for drift the way SPEC.md section 10 says: inputs, positions and frequencies bit for bit on
every platform (they are made without libm), outputs within what two correct evaluations of the
reference on different C libraries can differ by.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import p_rope
import pytest
from hypothesis import given
from hypothesis import strategies as st
from p_rope.conformance import golden
from p_rope.conformance.__main__ import main
from p_rope.conformance.cases import DTYPES


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            arrays[info.filename.removesuffix(".npy")] = np.lib.format.read_array(io.BytesIO(archive.read(info)))
    return arrays


def _decode(stored: dict[str, np.ndarray], entry: dict) -> np.ndarray:
    raw = stored[entry["name"]]
    assert hashlib.sha256(raw.tobytes()).hexdigest() == entry["sha256"]
    if entry["dtype"] == "bfloat16":
        assert entry["storage"] == "uint16"
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])  # exact values
    return raw.reshape(entry["shape"])


OVERFLOW = {"float16": 65520.0, "bfloat16": (2 - 2.0**-8) * 2.0**127, "float32": (2 - 2.0**-24) * 2.0**127}


def _format_md_grade(case: dict, x: np.ndarray, positions: np.ndarray, y: np.ndarray, f: np.ndarray, out):
    """FORMAT.md, "Checking an implementation", steps 3-4; returns {level: passed}."""
    with np.errstate(all="ignore"):  # special values: inf * 0, inf - inf
        return _format_md_grade_(case, x, positions, y, f, out)


def _format_md_grade_(case: dict, x: np.ndarray, positions: np.ndarray, y: np.ndarray, f: np.ndarray, out):
    p = case["parameters"]
    H, R = p["head_dim"], p["rotated_pairs"]
    i = np.arange(R)
    a, b = (i, i + H // 2) if p["pairing"] == "split_half" else (2 * i, 2 * i + 1)
    nope = np.setdiff1d(np.arange(H), np.concatenate([a, b]))
    o, x64 = np.asarray(out, dtype=np.float64), x.astype(np.float64)
    ok_nope = np.array_equal(o[..., nope].view(np.uint64), x64[..., nope].view(np.uint64))
    limit = OVERFLOW.get(case["dtype"], math.inf)

    def lane(k):
        with np.errstate(invalid="ignore"):
            e = np.abs(o[..., k] - y[..., k])
        right = (o[..., k] == y[..., k]) | (~np.isfinite(o[..., k]) & ~np.isfinite(y[..., k]))
        right |= (np.abs(y[..., k]) >= limit) & (o[..., k] == np.sign(y[..., k]) * np.inf)
        return np.where(right, 0.0, np.where(np.isnan(e), np.inf, e))

    err = np.maximum(lane(a), lane(b))
    nx = np.hypot(x64[..., a], x64[..., b])
    m = np.expand_dims(np.abs(positions.astype(np.float64))[..., None], -2 if p["seq_axis"] == -3 else -3)
    theta, lam = m * f[:R], 2.0 * i / H * case["bound"]["abs_log_w"]
    c = case["bound"]
    conformant = nx * (4 * c["u_out"] + 4 * c["u_c"] * (1 + theta * (1 + lam))) + c["s_out"]
    strict = conformant if c["strict_eps"] is None else nx * (c["u_out"] + c["strict_eps"]) + c["s_out"]
    with np.errstate(invalid="ignore"):
        every = case["special"] == "nonfinite"
        result = {
            "conformant": bool(np.all((err == 0) | (err <= conformant) | ~np.isfinite(m))),
            "strict": bool(np.all((err == 0) | (err <= strict) | (~every & ~(m <= 2**24)))),
        }
    return {level: ok and ok_nope for level, ok in result.items() if level in case["levels"]}


def _golden():
    directory = golden.golden_dir()
    manifest = json.loads((directory / "manifest.json").read_text())
    return manifest, _read_npz(directory / "vectors.npz")


def test_golden_vectors_have_not_drifted():
    assert golden.drift() == []


def test_golden_format_size_and_bfloat16_bits():
    directory = golden.golden_dir()
    size = sum((directory / n).stat().st_size for n in ("manifest.json", "vectors.npz", "FORMAT.md"))
    assert size < 1.5e6
    manifest, _ = _golden()
    assert manifest["format"] == "p-rope-golden/1"

    assert manifest["spec_version"] == p_rope.SPEC_VERSION
    assert {c["dtype"] for c in manifest["cases"]} == set(DTYPES)
    bf16 = [c for c in manifest["cases"] if c["dtype"] == "bfloat16"]
    assert bf16 and all(c["arrays"]["inputs"]["storage"] == "uint16" for c in bf16)
    ids = [c["id"] for c in manifest["cases"]]
    assert len(set(ids)) == len(ids)


def test_golden_expected_passes_and_a_nudged_output_fails():
    """The reference's own outputs pass FORMAT.md's recipe at every level; moving one rotated output
    of a float32 case by 2**-16 of itself fails it (the recipe can fail)."""
    manifest, stored = _golden()
    for case in manifest["cases"]:
        arrays = {role: _decode(stored, entry) for role, entry in case["arrays"].items()}
        grade = _format_md_grade(case, arrays["inputs"], arrays["positions"], arrays["exact"], arrays["frequencies"],
                                 arrays["expected"])  # fmt: skip
        assert all(grade.values()), (case["id"], grade)
    case = next(c for c in manifest["cases"] if c["id"] == "float32/apply/gemma4-global-kv")
    arrays = {role: _decode(stored, entry) for role, entry in case["arrays"].items()}
    bad = arrays["expected"].copy()
    bad.reshape(-1)[0] *= np.float32(1 + 2**-16)
    grade = _format_md_grade(case, arrays["inputs"], arrays["positions"], arrays["exact"], arrays["frequencies"], bad)
    assert grade["strict"] is False


@pytest.mark.parametrize("backend", ["array_api:numpy", "torch"])
def test_our_backend_passes_the_golden_vectors(backend: str):
    """A backend checked the way an outside implementation would check itself with the golden files."""
    from p_rope.conformance.targets import backend_target

    try:
        target = backend_target(backend, "cpu")
    except ImportError as error:
        pytest.skip(f"{backend} not importable: {error}")
    module, fw = target.module, target.framework
    manifest, stored = _golden()
    for case in manifest["cases"]:
        arrays = {role: _decode(stored, entry) for role, entry in case["arrays"].items()}
        x = arrays["inputs"]
        if case["dtype"] == "bfloat16":
            x = x.astype(ml_dtypes.bfloat16)
        p = case["parameters"]
        kw = {"scale_factor": p["scale_factor"], "pairing": p["pairing"], "seq_axis": p["seq_axis"]}
        if p["rotated_pairs_argument"] is not None:
            kw["rotated_pairs"] = p["rotated_pairs_argument"]
        with warnings.catch_warnings():
            # NumPy's "invalid value" RuntimeWarnings on NaN positions are not what this test grades
            # (the run command records them per case in its JSON).
            warnings.simplefilter("ignore", RuntimeWarning)
            out = module.apply_p_rope(fw.to_native(x, "cpu"), fw.to_native(arrays["positions"], "cpu"),
                                      p["head_dim"], p["max_wavelength"], p["rope_percentage"], **kw)  # fmt: skip
        out = fw.to_numpy(out)
        assert out.dtype == x.dtype
        out = out.astype(np.float32) if case["dtype"] == "bfloat16" else out
        grade = _format_md_grade(case, arrays["inputs"], arrays["positions"], arrays["exact"], arrays["frequencies"],
                                 out)  # fmt: skip
        assert all(grade.values()), (case["id"], grade)


def _golden_copy(directory: Path) -> Path:
    shutil.copytree(golden.golden_dir(), directory)
    return directory


def _edit_consistently(directory: Path, changed: dict[str, np.ndarray]) -> None:
    """Rewrite the copy's vectors.npz with `changed` arrays and their sha256 in the manifest: an edit
    the checksums let through, for the drift check to catch."""
    arrays = dict(np.load(directory / "vectors.npz")) | changed
    (directory / "vectors.npz").write_bytes(golden._npz_bytes(arrays))
    manifest = json.loads((directory / "manifest.json").read_text())
    for case in manifest["cases"]:
        for entry in case["arrays"].values():
            if entry["name"] in changed:
                entry["sha256"] = hashlib.sha256(changed[entry["name"]].tobytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_golden_drift_is_detected(tmp_path: Path):
    copy = _golden_copy(tmp_path / "golden")
    exact = dict(np.load(copy / "vectors.npz"))["c005.exact"]
    _edit_consistently(copy, {"c005.exact": exact * (1 + 1e-9)})
    problems = golden.drift(copy)
    assert any("c005.exact" in p for p in problems)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["spec_version"] = "0.9"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert any("SPEC_VERSION 0.9" in p for p in golden.drift(copy))
    assert main(["golden", "--check", "--dir", str(copy)]) == 1


def test_golden_drift_ignores_no_input_bit(tmp_path: Path):
    """Inputs, positions and frequencies are compared bit for bit: one unit in the last place is drift."""
    for name in ("c040.inputs", "c041.positions", "c042.frequencies"):
        copy = _golden_copy(tmp_path / name)
        changed = dict(np.load(copy / "vectors.npz"))[name].copy()
        flat = changed.reshape(-1)
        flat[-1] = np.nextafter(flat[-1], np.inf) if flat.dtype.kind == "f" else flat[-1] + 1
        _edit_consistently(copy, {name: changed})
        assert any(f"({name}) is not bit-identical" in p for p in golden.drift(copy)), name


# ---------------------------------------------------------------------------------------------
# Verified on load: each NPY entry against the manifest's storage, shape and sha256; a corrupt file
# is one GoldenVectorError naming the file, what is wrong and what was expected.

REMEDY = (
    "the file is corrupt or was edited: restore it from the repository or regenerate the golden vectors "
    "with `python -m p_rope.conformance golden --write`"
)
SPRUNG: list[str] = []


def _spring() -> None:
    SPRUNG.append("unpickled")


class _Trap:
    """An object whose unpickling is recorded in SPRUNG."""

    def __reduce__(self):
        return _spring, ()


def _npy(array: np.ndarray) -> bytes:
    member = io.BytesIO()
    np.lib.format.write_array(member, array, allow_pickle=array.dtype.hasobject)
    return member.getvalue()


def _write_npz(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


DELETE = object()


def _edit_manifest(directory: Path, keys: tuple, value=DELETE) -> str:
    """Set manifest[keys[0]][keys[1]]... to `value` in the copy (DELETE: remove it); returns its path."""
    manifest = json.loads((directory / "manifest.json").read_text())
    holder = manifest
    for key in keys[:-1]:
        holder = holder[key]
    if value is DELETE:
        del holder[keys[-1]]
    else:
        holder[keys[-1]] = value
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return str(directory / "manifest.json")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _truncated_npz(d: Path) -> str:
    data = (d / "vectors.npz").read_bytes()
    (d / "vectors.npz").write_bytes(data[: len(data) // 2])
    return (
        f"{d / 'vectors.npz'}: is not a readable ZIP archive (File is not a zip file); "
        "expected a ZIP archive of NPY files"
    )


def _flipped_byte(d: Path) -> str:
    data = bytearray((d / "vectors.npz").read_bytes())
    at = data.find(dict(np.load(d / "vectors.npz"))["c005.exact"].tobytes())  # entries are stored, not compressed
    data[at + 3] ^= 0x10
    (d / "vectors.npz").write_bytes(bytes(data))
    return (
        f"{d / 'vectors.npz'}: is not a readable ZIP archive (Bad CRC-32 for file "
        "'c005.exact.npy'); expected a ZIP archive of NPY files"
    )


def _edited_array(d: Path) -> str:
    """A valid archive whose c005.inputs differs by one unit in the last place: only the sha256 tells."""
    members = _members(d / "vectors.npz")
    inputs = np.lib.format.read_array(io.BytesIO(members["c005.inputs.npy"]))
    before = _sha(inputs.tobytes())
    inputs.reshape(-1)[7] = np.nextafter(inputs.reshape(-1)[7], np.float16(np.inf))
    _write_npz(d / "vectors.npz", members | {"c005.inputs.npy": _npy(inputs)})
    return (f"{d / 'vectors.npz'}: c005.inputs.npy has sha256 {_sha(inputs.tobytes())}, the manifest says {before} "
            "for cases[5] (float16/apply/p-tiny-H64-R0) arrays.inputs")  # fmt: skip


def _edited_checksum(d: Path) -> str:
    """The manifest's sha256 of a float64 case's exact (also its expected) edited."""
    manifest = json.loads((d / "manifest.json").read_text())
    number = next(i for i, c in enumerate(manifest["cases"]) if c["id"] == "float64/apply/gemma4-global-kv")
    entry = manifest["cases"][number]["arrays"]["exact"]
    true = entry["sha256"]
    _edit_manifest(d, ("cases", number, "arrays", "exact", "sha256"), "0" * 64)
    return (f"{d / 'vectors.npz'}: {entry['name']}.npy has sha256 {true}, the manifest says {'0' * 64} "
            f"for cases[{number}] (float64/apply/gemma4-global-kv) arrays.exact")  # fmt: skip


def _not_json(d: Path) -> str:
    text = (d / "manifest.json").read_text()[:1000]
    (d / "manifest.json").write_text(text)
    try:
        json.loads(text)
    except ValueError as error:
        return f"{d / 'manifest.json'}: is not valid JSON ({error}); expected the golden manifest"
    raise AssertionError("a truncated manifest parsed")


def _top_level_list(d: Path) -> str:
    path = d / "manifest.json"
    path.write_text(f"[{path.read_text()}]")
    return (
        f'{path}: the top level is [{{"format": "p-rope-golden/1", "spec_version": "1.0", '
        '"ge... (list); expected an object'
    )


def _without_cases(d: Path) -> str:
    path = _edit_manifest(d, ("cases",))
    return f"{path}: cases is missing; expected a non-empty list"


def _other_format(d: Path) -> str:
    path = _edit_manifest(d, ("format",), "p-rope-golden/2")
    return f'{path}: format is "p-rope-golden/2" (str); expected "p-rope-golden/1"'


def _without_head_dim(d: Path) -> str:
    path = _edit_manifest(d, ("cases", 2, "parameters", "head_dim"))
    return (
        f"{path}: cases[2] (float16/apply/llama-hf-layout-packed): parameters.head_dim is "
        "missing; expected a positive even integer"
    )


def _head_dim_true(d: Path) -> str:
    path = _edit_manifest(d, ("cases", 2, "parameters", "head_dim"), True)
    return (
        f"{path}: cases[2] (float16/apply/llama-hf-layout-packed): parameters.head_dim is "
        "true (bool); expected a positive even integer"
    )


def _repeated_id(d: Path) -> str:
    path = _edit_manifest(d, ("cases", 7, "id"), "float16/apply/p0-identity")  # the id of cases[3]
    return f"{path}: cases[7] (float16/apply/p0-identity): id is the id of cases[3]; expected each id once"


def _shape_string(d: Path) -> str:
    path = _edit_manifest(d, ("cases", 3, "arrays", "inputs", "shape"), "1,4,1,64")
    return (
        f'{path}: cases[3] (float16/apply/p0-identity): arrays.inputs.shape is "1,4,1,64" '
        "(str); expected a list of non-negative integers"
    )


def _without_expected(d: Path) -> str:
    path = _edit_manifest(d, ("cases", 3, "arrays", "expected"))
    return f"{path}: cases[3] (float16/apply/p0-identity): arrays.expected is missing; expected an object"


def _checksum_number(d: Path) -> str:
    path = _edit_manifest(d, ("cases", 3, "arrays", "positions", "sha256"), 12)
    return (
        f"{path}: cases[3] (float16/apply/p0-identity): arrays.positions.sha256 is 12 "
        "(int); expected 64 lowercase hexadecimal digits"
    )


def _array_missing(d: Path) -> str:
    members = _members(d / "vectors.npz")
    del members["c010.positions.npy"]
    _write_npz(d / "vectors.npz", members)
    return (
        f"{d / 'vectors.npz'}: c010.positions.npy is missing; expected it for cases[10] "
        "(float16/apply/H6-interleaved) arrays.positions"
    )


def _object_array(d: Path) -> str:
    members = _members(d / "vectors.npz")
    _write_npz(d / "vectors.npz", members | {"c000.inputs.npy": _npy(np.array([_Trap()], dtype=object))})
    return (f"{d / 'vectors.npz'}: c000.inputs.npy holds an object array (pickled Python objects, refused); expected "
            "float16 (<f2) data of shape [1, 2, 1, 512] for cases[0] "
            "(float16/apply/gemma4-global-kv) arrays.inputs")  # fmt: skip


def _extra_object_array(d: Path) -> str:
    members = _members(d / "vectors.npz")
    _write_npz(d / "vectors.npz", members | {"payload.npy": _npy(np.array([_Trap()], dtype=object))})
    return (f"{d / 'vectors.npz'}: holds payload.npy, which the manifest does not list; expected only <name>.npy for "
            "the manifest's array names")  # fmt: skip


def _other_dtype(d: Path) -> str:
    members = _members(d / "vectors.npz")
    inputs = np.lib.format.read_array(io.BytesIO(members["c000.inputs.npy"]))
    _write_npz(d / "vectors.npz", members | {"c000.inputs.npy": _npy(inputs.astype(np.float32))})
    return (f"{d / 'vectors.npz'}: c000.inputs.npy holds <f4 data of shape [1, 2, 1, 512] in C order; expected "
            "float16 (<f2) data of shape [1, 2, 1, 512] for cases[0] "
            "(float16/apply/gemma4-global-kv) arrays.inputs")  # fmt: skip


def _npz_absent(d: Path) -> str:
    (d / "vectors.npz").unlink()
    return f"{d / 'vectors.npz'}: cannot be read (No such file or directory); expected the golden vectors"


CORRUPTIONS = {
    "truncated-npz": _truncated_npz,
    "flipped-byte": _flipped_byte,
    "edited-array": _edited_array,
    "edited-checksum": _edited_checksum,
    "manifest-not-json": _not_json,
    "manifest-top-level-list": _top_level_list,
    "manifest-without-cases": _without_cases,
    "manifest-other-format": _other_format,
    "manifest-without-head-dim": _without_head_dim,
    "manifest-head-dim-bool": _head_dim_true,
    "manifest-repeated-id": _repeated_id,
    "manifest-shape-string": _shape_string,
    "manifest-without-expected": _without_expected,
    "manifest-checksum-number": _checksum_number,
    "array-missing": _array_missing,
    "object-array": _object_array,
    "extra-object-array": _extra_object_array,
    "array-of-another-dtype": _other_dtype,
    "npz-absent": _npz_absent,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_golden_file_is_one_clear_error(tmp_path: Path, corruption: str, capsys: pytest.CaptureFixture):
    """Loading, the drift check and `golden --check` each refuse a corrupt file with the same
    GoldenVectorError (a ValueError): the file, what is wrong, what was expected, what to do; the command
    prints it on one line and exits with status 2. Nothing is unpickled."""
    copy = _golden_copy(tmp_path / "golden")
    message = f"{CORRUPTIONS[corruption](copy)}; {REMEDY}"
    for read in (golden.load, golden.drift, golden.read_vectors):
        with pytest.raises(golden.GoldenVectorError) as caught:
            read(copy)
        assert type(caught.value) is golden.GoldenVectorError and isinstance(caught.value, ValueError)
        assert str(caught.value) == message
    capsys.readouterr()
    assert main(["golden", "--check", "--dir", str(copy)]) == 2
    assert capsys.readouterr() == ("", f"p-rope-conformance golden: {message}\n")
    assert SPRUNG == []


def test_pristine_golden_files_load_verified(capsys: pytest.CaptureFixture):
    """The committed files pass every check: load() gives each case's arrays with the manifest's dtype
    and shape, bit-identical to an independent reading of the archive, each a writable array of its own;
    `golden --check` passes and says the checksums were verified."""
    manifest, stored = _golden()
    cases = golden.load()
    assert [c.id for c in cases] == [c["id"] for c in manifest["cases"]]
    for case, entry in zip(cases, manifest["cases"], strict=True):
        assert case.entry == entry and set(case.arrays) == set(entry["arrays"])
        for role, info in entry["arrays"].items():
            array = case.arrays[role]
            assert array.dtype.name == info["dtype"] and list(array.shape) == info["shape"]
            assert array.tobytes() == stored[info["name"]].tobytes()
            assert array.flags.writeable and not any(
                np.shares_memory(array, a) for r, a in case.arrays.items() if r != role
            )
    capsys.readouterr()
    assert main(["golden", "--check"]) == 0
    assert capsys.readouterr().out.endswith(", checksums verified: no drift\n")


@pytest.fixture(scope="module")
def fuzzed_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _golden_copy(tmp_path_factory.mktemp("fuzz") / "golden")


@given(where=st.one_of(st.integers(0, 399), st.integers(-3000, -1), st.integers(400, 10**6)),
       bit=st.integers(0, 7), truncate=st.booleans())  # fmt: skip
def test_any_flipped_bit_or_truncation_is_refused_or_harmless(fuzzed_copy: Path, where: int, bit: int, truncate: bool):
    """One bit flipped anywhere in vectors.npz (or the file cut there): GoldenVectorError, or (a bit of ZIP
    metadata: a time stamp) the very arrays of the pristine file; never another exception."""
    pristine = (golden.golden_dir() / "vectors.npz").read_bytes()
    at = where % len(pristine)
    data = bytearray(pristine[:at] if truncate else pristine)
    if not truncate:
        data[at] ^= 1 << bit
    (fuzzed_copy / "vectors.npz").write_bytes(bytes(data))
    try:
        _, arrays = golden.read_vectors(fuzzed_copy)
    except golden.GoldenVectorError as error:
        assert str(error).startswith(f"{fuzzed_copy / 'vectors.npz'}: ") and "\n" not in str(error)
        return
    _, stored = _golden()
    assert not truncate and arrays.keys() == stored.keys()
    assert all(arrays[name].tobytes() == stored[name].tobytes() for name in stored)


# ---------------------------------------------------------------------------------------------
# Inputs without libm: bit-identical on every CPU


def above_baseline_features() -> str:
    """The SIMD extensions NumPy dispatches to on this machine above its baseline (space-separated)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__  # type: ignore[no-redef]
    return " ".join(name for name in __cpu_dispatch__ if __cpu_features__.get(name))


_HASH_INPUTS = """
import hashlib, json, sys
from p_rope.conformance import golden
digests = {}
for number, case in enumerate(golden.golden_cases()):
    for role, array in zip(("inputs", "positions"), golden.golden_arrays(case)):
        digests[f"c{number:03d}.{role}"] = golden._store(array)[1]["sha256"]
print(json.dumps(digests))
"""


def test_golden_inputs_are_the_same_on_numpy_baseline_code():
    """Regenerated with every SIMD extension above NumPy's baseline disabled (another libm path for pow,
    exp and log; sin and cos on some CPUs), the inputs and positions keep the manifest's checksums."""
    env = os.environ | {"NPY_DISABLE_CPU_FEATURES": above_baseline_features()}
    run = subprocess.run([sys.executable, "-c", _HASH_INPUTS], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    digests = json.loads(run.stdout)
    manifest, _ = _golden()
    stored = {a["name"]: a["sha256"] for c in manifest["cases"] for a in c["arrays"].values()}
    assert len(digests) == 2 * len(manifest["cases"])
    assert digests == {name: stored[name] for name in digests}


def test_golden_inputs_call_no_transcendental_function(monkeypatch: pytest.MonkeyPatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a transcendental function was called while making golden inputs")

    for name in ("sin", "cos", "tan", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "power", "float_power"):
        monkeypatch.setattr(np, name, forbidden)
    for name in ("sin", "cos", "tan", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "pow"):
        monkeypatch.setattr(math, name, forbidden)
    for case in golden.golden_cases():
        golden.golden_arrays(case)
    assert golden.abs_log(1e6) == 13.815510557964274  # decimal arithmetic, correctly rounded


def test_sweep_positions_are_the_nearest_integers():
    """nearest_integer_root(a, n) is the integer nearest 2**(a / n), against 50-digit decimal powers."""
    with localcontext() as ctx:
        ctx.prec = 50
        for root in (1, 2, 3, 7, 23, 47):
            for power in range(0, 24 * root + 1, max(1, root // 3)):
                exact = Decimal(2) ** (Decimal(power) / Decimal(root))
                assert golden.nearest_integer_root(power, root) == int(exact.to_integral_value()), (power, root)
    sweep = [c for c in golden.golden_cases() if c.positions.kind == "sweep"]
    assert sweep
    for case in sweep:
        positions = golden.golden_arrays(case)[1].reshape(-1)
        assert positions[0] == 0 and positions[1] == 1 and positions[-1] == case.positions.high
        assert np.all(np.diff(positions) >= 0)


def test_real_positions_lie_on_an_exact_grid():
    """Real positions are multiples of a power of two within [low, high], exact in their dtype."""
    real = [c for c in golden.golden_cases() if c.positions.kind == "real"]
    assert {c.positions.dtype for c in real} == {"float32", "float64"}
    denominators = set()
    for case in real:
        positions = golden.golden_arrays(case)[1]
        assert positions.dtype == case.positions.dtype
        spec = case.positions
        assert np.all((positions >= spec.low) & (positions <= spec.high))
        denominators |= {Fraction(float(v)).denominator for v in positions.reshape(-1)}
    assert len(denominators) > 1 and all(d & (d - 1) == 0 for d in denominators)  # powers of two, not all 1


# ---------------------------------------------------------------------------------------------
# Outputs: graded, not bit-identical


def test_output_tolerance_hand_computed():
    """2 E per element of a rotated pair: nx * 2**-53 * (10 + 4 theta) + 2**-1020; NoPE lanes 0."""
    entry = {"parameters": {"head_dim": 4, "rotated_pairs": 1, "pairing": "split_half", "seq_axis": -3,
                            "max_wavelength": 100.0, "scale_factor": 1.0}}  # fmt: skip
    x = np.array([3.0, 1.0, 4.0, 1.0]).reshape(1, 1, 1, 4)  # pair 0 = lanes (0, 2): nx = 5
    tolerance = golden.output_tolerance(entry, x, np.array([[2]]))  # theta = 2 * 1
    pair = 5 * 2.0**-53 * (10 + 8) + 2.0**-1020
    assert tolerance.reshape(-1).tolist() == [pair, 0.0, pair, 0.0]


def _jitter(real, ulps: int):
    """real (np.sin or np.cos) with float64 results moved by `ulps` units in the last place, up or down
    at random: the sin and cos of another C library."""

    def moved(x, *args, **kwargs):
        result = real(x, *args, **kwargs)
        values = np.asarray(result)
        if values.dtype != np.float64 or not values.size:
            return result
        up = np.random.default_rng(values.size).random(values.shape) < 0.5
        shifted = values * np.where(up, 1.0, -1.0)  # sign-symmetric steps in magnitude
        for _ in range(ulps):
            shifted = np.nextafter(shifted, np.inf)
        shifted = np.where(values == 0, values, shifted * np.where(up, 1.0, -1.0))  # sin(0) = 0 everywhere
        if isinstance(result, np.ndarray):
            result[...] = shifted
            return result
        return shifted[()]

    return moved


def test_drift_tolerates_another_libm_and_catches_a_wrong_one(monkeypatch: pytest.MonkeyPatch):
    """Float64 sin and cos one unit in the last place away from this platform's (what another CPU's
    or C library's give) leave no drift; 64 units away (a libm outside its accuracy) is drift."""
    real_sin, real_cos = np.sin, np.cos
    monkeypatch.setattr(np, "sin", _jitter(real_sin, 1))
    monkeypatch.setattr(np, "cos", _jitter(real_cos, 1))
    assert golden.drift() == []
    monkeypatch.setattr(np, "sin", _jitter(real_sin, 64))
    monkeypatch.setattr(np, "cos", _jitter(real_cos, 64))
    problems = golden.drift()
    assert any("exact (" in p for p in problems)
    assert not any("is not bit-identical" in p for p in problems)  # the inputs never move
