"""Vendoring: each backend works as ONE copied file, with only its framework installed.

Every vendored file is copied alone into an empty directory and imported by a fresh interpreter in
which the p_rope project and the other framework cannot be imported; its outputs are graded here
against the NumPy reference at SPEC.md's strict level.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import assert_conforms

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "backends" / "vendor"

# file -> (framework it may import, frameworks that must stay unimportable, to-framework, to-numpy)
FILES = {
    "p_rope_array_api.py": (
        "numpy",
        ("jax", "torch", "p_rope"),
        "import numpy as fw\nto = lambda a, dt: a.astype(dt)\nback = lambda a: np.asarray(a, np.float32)",
    ),
    "p_rope_jax.py": (
        "jax",
        ("torch", "p_rope"),
        "import jax.numpy as fw\nto = lambda a, dt: fw.asarray(a).astype(dt)\n"
        "back = lambda a: np.asarray(a.astype(fw.float32))",
    ),
    "p_rope_torch.py": (
        "torch",
        ("jax", "p_rope"),
        "import torch as fw\nto = lambda a, dt: fw.from_numpy(a).to(getattr(fw, dt))\n"
        "back = lambda a: a.float().numpy()",
    ),
}

# (dtype, H, p, w, pairing, seq_axis, scale_factor, max position)
CASES = [
    ("float32", 64, 1.0, 10_000.0, "split_half", -3, 1.0, 2**24),
    ("float32", 512, 0.25, 1e6, "split_half", -2, 1.0, 2**20),
    ("float16", 32, 0.5, 10_000.0, "interleaved", -3, 4.0, 2**16),
    ("bfloat16", 128, 0.58, 500_000.0, "split_half", -3, 1.0, 2**24),
]

RUNNER = """
import json, sys
import numpy as np

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked for this test: {name}")

sys.meta_path.insert(0, Block())
CONVERT
import MODULE as backend

cases = json.loads(open("cases.json").read())
data = np.load("inputs.npz")
results = {}
for i, (dtype, H, p, w, pairing, seq_axis, scale, _) in enumerate(cases):
    x = to(data[f"x{i}"], dtype)
    out = backend.apply_p_rope(
        x, to(data[f"pos{i}"], "int32"), H, w, p, pairing=pairing, seq_axis=seq_axis, scale_factor=scale
    )
    assert str(out.dtype).endswith(dtype), (out.dtype, dtype)
    results[f"out{i}"] = back(out)
np.savez("outputs.npz", **results)
print(json.dumps(sorted(m for m in ("jax", "torch", "p_rope", "array_api_compat") if m in sys.modules)))
"""


def _inputs() -> tuple[dict[str, np.ndarray], list]:
    import ml_dtypes

    rng = np.random.default_rng(20251123)
    arrays = {}
    for i, (dtype, head_dim, _, _, _, seq_axis, _, top) in enumerate(CASES):
        shape = (2, 5, 3, head_dim) if seq_axis == -3 else (2, 3, 5, head_dim)
        x = rng.uniform(-4, 4, shape).astype(np.float32)
        if dtype == "bfloat16":  # round here exactly as the framework's cast will
            x = x.astype(ml_dtypes.bfloat16).astype(np.float32)
        arrays[f"x{i}"] = x
        arrays[f"pos{i}"] = rng.integers(0, top, (2, 5)).astype(np.int32)
    return arrays, CASES


def test_vendored_files_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "vendor.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


@pytest.mark.parametrize("name", list(FILES))
def test_vendored_file_alone(name: str, tmp_path: Path) -> None:
    framework, blocked, convert = FILES[name]
    pytest.importorskip(framework)
    shutil.copy(VENDOR / name, tmp_path / name)
    arrays, cases = _inputs()
    if framework == "numpy":  # plain NumPy has no bfloat16 without ml_dtypes: not this file's job
        cases = [c if c[0] != "bfloat16" else ("float32", *c[1:]) for c in cases]
    np.savez(tmp_path / "inputs.npz", **arrays)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    code = RUNNER.replace("BLOCKED", repr(blocked)).replace("CONVERT", convert).replace("MODULE", name[:-3])
    result = subprocess.run(
        [sys.executable, "-E", "-s", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    imported = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert not imported & set(blocked), f"{name} imported {sorted(imported & set(blocked))}"
    outputs = np.load(tmp_path / "outputs.npz")
    import ml_dtypes

    for i, (dtype, head_dim, p, w, pairing, seq_axis, scale, _) in enumerate(cases):
        np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
        x = arrays[f"x{i}"].astype(np_dtype)
        out = outputs[f"out{i}"].astype(np_dtype)  # exact: the outputs were widened to float32
        assert_conforms(
            out,
            x,
            arrays[f"pos{i}"],
            head_dim,
            w,
            p,
            level="strict",
            pairing=pairing,
            seq_axis=seq_axis,
            scale_factor=scale,
        )
