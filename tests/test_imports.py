"""Lazy imports: each module pulls in only the frameworks it is about (checked in fresh interpreters)."""

from __future__ import annotations

import subprocess
import sys

import pytest

FRAMEWORKS = ("jax", "torch", "array_api_compat", "array_api_strict", "ml_dtypes")

CASES = {
    # module imported -> frameworks allowed to be imported with it
    "p_rope": (),
    "p_rope.tolerance": (),
    "p_rope.backends": (),
    "p_rope.conformance": (),
    "p_rope.backends.array_api": ("array_api_compat",),
    "p_rope.backends.jax": ("jax", "array_api_compat", "ml_dtypes"),
    "p_rope.backends.torch": ("torch", "array_api_compat"),
}


def imported_frameworks(module: str) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(' '.join(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


@pytest.mark.parametrize("module", list(CASES))
def test_imports_only_its_framework(module: str) -> None:
    if module.endswith((".jax", ".torch")):
        pytest.importorskip(module.rsplit(".", 1)[1])
    extra = imported_frameworks(module) - set(CASES[module])
    assert not extra, f"importing {module} imported {sorted(extra)}"


def test_reference_needs_numpy_only() -> None:
    """spec/ works when no other third-party package can be imported at all."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {FRAMEWORKS!r}:\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, p_rope\n"
        "from p_rope import tolerance\n"
        "x = np.ones((2, 1, 2, 4), np.float32)\n"
        "out = p_rope.apply_p_rope(x, np.array([[1], [0]]), 4, 100)\n"
        "print(out[0, 0, 0, 0])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(result.stdout) == pytest.approx(-0.30116868, abs=1e-7)
