"""A 0-d position (one position for every token) in either layout, on every backend."""

from __future__ import annotations

import importlib

import numpy as np
import p_rope
import pytest
from p_rope import tolerance

from tests.helpers import assert_conforms

BACKENDS = {
    "reference": ("p_rope", lambda a: a),
    "array_api:numpy": ("p_rope.backends.array_api", lambda a: a),
    "jax:cpu": ("p_rope.backends.jax", lambda a: importlib.import_module("jax.numpy").asarray(a)),
    "torch:cpu": ("p_rope.backends.torch", lambda a: importlib.import_module("torch").from_numpy(a)),
}


@pytest.mark.parametrize("seq_axis", [-3, -2])
@pytest.mark.parametrize("rope_percentage", [1.0, 0.5])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_scalar_position(backend: str, rope_percentage: float, seq_axis: int) -> None:
    module_name, convert = BACKENDS[backend]
    if backend.startswith(("jax", "torch")):
        pytest.importorskip(backend.split(":")[0])
    module = importlib.import_module(module_name)
    x = np.random.default_rng(3).standard_normal((3, 2, 5, 8)).astype(np.float32)
    out = module.apply_p_rope(convert(x), convert(np.array(7)), 8, 100.0, rope_percentage, seq_axis=seq_axis)
    assert_conforms(out, x, np.array(7), 8, 100.0, rope_percentage, level="strict", seq_axis=seq_axis)
    # hand-derived: pair 0 turns by exactly 7 radians at every token
    c, s = np.cos(7.0), np.sin(7.0)
    first, second = 0, 4  # split-half pair 0 of H = 8
    got = np.asarray(out, dtype=np.float64)
    np.testing.assert_allclose(got[..., first], x[..., first] * c - x[..., second] * s, rtol=0, atol=4e-6)


def test_nonfinite_position_must_give_nan() -> None:
    """SPEC.md section 6: a non-finite position gives NaN, not merely some non-finite value."""
    x = np.ones((1, 3, 2, 8), np.float32)
    positions = np.array([[1.0, np.inf, np.nan]], np.float32)
    out = p_rope.apply_p_rope(x, positions, 8)
    assert tolerance.grade(out, x, positions, 8).ratio["strict"] <= 1.0
    wrong = out.copy()
    wrong[0, 1, :, 0] = np.inf
    assert tolerance.grade(wrong, x, positions, 8).ratio["strict"] == np.inf
