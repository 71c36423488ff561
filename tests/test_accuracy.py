"""Exact at any position (issue 6): every backend meets SPEC.md's strict level up to position 2**24.

One parametrized case per backend and device (ids like ``jax:cpu``); a backend whose module does not
import, or a device that is absent, is skipped with the reason. Every expectation comes from the
NumPy reference (float64) through tests/helpers.py and p_rope.tolerance, never from the backend
under test.

- strict level, integer and real positions up to |position| = 2**24, w in [2, 1e7], H up to 1024,
  several p, with scale_factor;
- float16 / bfloat16: out is RN(y) or one of its two neighbours wherever |y| >= 2**-8 nx;
- the relative-position property <f(q, m), f(k, n)> = <f(q, m + d), f(k, n + d)> for shifts d up to
  2**24 - L (hypothesis), within a tolerance derived from the strict bound (see ``property_tolerance``);
  a float32-angle implementation is shown to break it, so the check can fail.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import p_rope
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from p_rope.tolerance import ABSOLUTE_TERM, UNIT_ROUNDOFF

from tests.helpers import assert_conforms, to_numpy

MAX_POSITION = 2**24
STRICT_EPS = 9 * 2.0**-24  # strict level, float32 output: err <= nx (2**-24 + 8 2**-24) + s_out
FLOAT32_ABSOLUTE = ABSOLUTE_TERM["float32"]  # s_out of the strict bound, float32


# ---------------------------------------------------------------------------------------------
# backends under test


@dataclasses.dataclass(frozen=True)
class Backend:
    id: str
    module: str  # the module holding the public API
    array: str  # numpy | strict | jax | torch: the array library of the inputs
    device: str

    def load(self) -> Any:
        """The backend module on a present device, or a visible skip with the reason."""
        if self.device == "cuda":
            self._require_cuda()
        try:
            module = importlib.import_module(self.module)
            if self.array == "strict":
                importlib.import_module("array_api_strict")
        except ImportError as error:
            pytest.skip(f"{self.module} does not import: {error}")
        return module

    def _require_cuda(self) -> None:
        if self.array == "torch":
            torch = pytest.importorskip("torch")
            if not torch.cuda.is_available():
                pytest.skip("cuda not available")
        elif self.array == "jax":
            jax = pytest.importorskip("jax")
            try:
                jax.devices("gpu")
            except RuntimeError:
                pytest.skip("cuda not available (jax has no gpu device)")

    def dtypes(self) -> tuple[str, ...]:
        return ("float32", "float64") if self.array == "strict" else ("float16", "bfloat16", "float32", "float64")

    def native(self, array: np.ndarray) -> Any:
        """A copy of a NumPy array in this backend's array library, on its device."""
        if self.array == "numpy":
            return array.copy()
        if self.array == "strict":
            import array_api_strict

            return array_api_strict.asarray(array.copy())
        if self.array == "jax":
            import jax

            if array.dtype == np.int64:
                array = array.astype(np.int32)  # |position| <= 2**24; jax_enable_x64 stays off
            return jax.device_put(array, jax.devices("cpu" if self.device == "cpu" else "gpu")[0])
        import torch

        if array.dtype.name == "bfloat16":
            tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.int16).copy()).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(array.copy())
        return tensor.to(self.device)


BACKENDS = [
    Backend("reference", "p_rope", "numpy", "cpu"),
    Backend("array_api:numpy", "p_rope.backends.array_api", "numpy", "cpu"),
    Backend("array_api:strict", "p_rope.backends.array_api", "strict", "cpu"),
    Backend("jax:cpu", "p_rope.backends.jax", "jax", "cpu"),
    Backend("jax:cuda", "p_rope.backends.jax", "jax", "cuda"),
    Backend("torch:cpu", "p_rope.backends.torch", "torch", "cpu"),
    Backend("torch:cuda", "p_rope.backends.torch", "torch", "cuda"),
]


def numpy_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


backends = pytest.mark.parametrize("backend", BACKENDS, ids=[b.id for b in BACKENDS])


# ---------------------------------------------------------------------------------------------
# strict level up to 2**24

# (head_dim, max_wavelength, rope_percentage, scale_factor)
CONFIGS = [
    (128, 1e4, 1.0, 1.0),  # Llama-like
    (512, 1e6, 0.25, 1.0),  # Gemma 4 global layer
    (1024, 1e7, 0.5, 1.0),
    (64, 2.0, 1.0, 1.0),
    (256, 5e5, 0.75, 8.0),  # position interpolation
    (1024, 2.0, 0.1, 3.5),
    (10, 1e7, 0.6, 1.0),
]
CONFIG_IDS = [f"H{h}-w{w:g}-p{p:g}-s{s:g}" for h, w, p, s in CONFIGS]


def integer_positions(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Uniform in [-2**24, 2**24], log-uniform magnitudes, and the extremes 0, +-2**24, 2**24 - 1."""
    count = shape[0] * shape[1]
    uniform = rng.integers(-MAX_POSITION, MAX_POSITION + 1, count)
    spread = np.round(2.0 ** rng.uniform(0, 24, count)).astype(np.int64) * rng.choice([-1, 1], count)
    positions = np.where(rng.random(count) < 0.5, uniform, spread)
    positions[:5] = [0, MAX_POSITION, -MAX_POSITION, MAX_POSITION - 1, 1]
    return positions.reshape(shape)


def real_positions(rng: np.random.Generator, shape: tuple[int, int], dtype: str) -> np.ndarray:
    count = shape[0] * shape[1]
    magnitude = 2.0 ** rng.uniform(-10, 24, count) * rng.choice([-1, 1], count)
    positions = magnitude.astype(dtype)
    positions[:4] = [MAX_POSITION, -MAX_POSITION, 0.5, MAX_POSITION - 0.5 if dtype == "float64" else 2.0**22 + 0.5]
    return positions.reshape(shape)


def inputs(rng: np.random.Generator, head_dim: int, dtype: str, tokens: int = 48, heads: int = 2) -> np.ndarray:
    return rng.standard_normal((2, tokens, heads, head_dim)).astype(numpy_dtype(dtype))


def assert_strict(
    backend: Backend,
    x: np.ndarray,
    positions: np.ndarray,
    head_dim: int,
    max_wavelength: float,
    rope_percentage: float,
    scale_factor: float,
) -> Any:
    """The backend's apply_p_rope on (x, positions) meets SPEC.md's strict level; returns its output."""
    out = backend.load().apply_p_rope(
        backend.native(x),
        backend.native(positions),
        head_dim,
        max_wavelength,
        rope_percentage,
        scale_factor=scale_factor,
    )
    assert_conforms(
        out,
        x,
        positions,
        head_dim,
        max_wavelength,
        rope_percentage,
        scale_factor=scale_factor,
        level="strict",
        device=backend.device,
    )
    return out


@backends
@pytest.mark.parametrize(("head_dim", "max_wavelength", "rope_percentage", "scale_factor"), CONFIGS, ids=CONFIG_IDS)
def test_strict_at_integer_positions_up_to_2_24(
    backend: Backend, head_dim: int, max_wavelength: float, rope_percentage: float, scale_factor: float
) -> None:
    backend.load()  # skips, with the reason, when the backend cannot be imported
    rng = np.random.default_rng(head_dim + int(max_wavelength) % 997)
    x = inputs(rng, head_dim, "float32")
    positions = integer_positions(rng, x.shape[:2])
    assert_strict(backend, x, positions, head_dim, max_wavelength, rope_percentage, scale_factor)


@backends
@pytest.mark.parametrize("positions_dtype", ["float32", "float64"])
def test_strict_at_real_positions_up_to_2_24(backend: Backend, positions_dtype: str) -> None:
    backend.load()  # skips, with the reason, when the backend cannot be imported
    if backend.array == "jax" and positions_dtype == "float64":
        pytest.skip("jax without jax_enable_x64 has no float64 arrays (float32 positions are tested)")
    rng = np.random.default_rng(7)
    for head_dim, max_wavelength, rope_percentage, scale_factor in CONFIGS[:5]:
        x = inputs(rng, head_dim, "float32", tokens=32)
        positions = real_positions(rng, x.shape[:2], positions_dtype)
        assert_strict(backend, x, positions, head_dim, max_wavelength, rope_percentage, scale_factor)


# ---------------------------------------------------------------------------------------------
# float16 / bfloat16: correctly rounded or a neighbour


def ordered(values: np.ndarray) -> np.ndarray:
    """Map floats to integers that count representable values in order (-0 and +0 both 0)."""
    bits = np.ascontiguousarray(values).view(f"i{values.dtype.itemsize}").astype(np.int64)
    magnitude = bits & ((1 << (8 * values.dtype.itemsize - 1)) - 1)
    return np.where(bits < 0, -magnitude, magnitude)


@backends
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_rounded_result_or_a_neighbour(backend: Backend, dtype: str) -> None:
    backend.load()  # skips, with the reason, when the backend cannot be imported
    if dtype not in backend.dtypes():
        pytest.skip(f"{backend.id} has no {dtype} arrays")
    rng = np.random.default_rng(11)
    for head_dim, max_wavelength, rope_percentage, scale_factor in CONFIGS[:5]:
        x = inputs(rng, head_dim, dtype, tokens=32, heads=4)
        positions = integer_positions(rng, x.shape[:2])
        out = assert_strict(backend, x, positions, head_dim, max_wavelength, rope_percentage, scale_factor)
        got = to_numpy(out)
        exact = p_rope.apply_p_rope(
            x.astype(np.float64), positions, head_dim, max_wavelength, rope_percentage, scale_factor=scale_factor
        )
        pairs = p_rope.rotated_pair_count(head_dim, rope_percentage)
        half = head_dim // 2
        lanes = np.r_[0:pairs, half : half + pairs]
        x64 = x.astype(np.float64)
        norm = np.hypot(x64[..., :pairs], x64[..., half : half + pairs])
        norm = np.concatenate([norm, norm], axis=-1)  # the pair norm of each rotated lane
        y = exact[..., lanes]
        nearest = y.astype(numpy_dtype(dtype))  # RN(y): NumPy / ml_dtypes round to nearest even
        steps = np.abs(ordered(got[..., lanes]) - ordered(nearest))
        checked = np.abs(y) >= 2.0**-8 * norm
        assert checked.mean() > 0.9
        worst = int(steps[checked].max())
        assert worst <= 1, f"{dtype} output is {worst} units from RN(y) where |y| >= 2**-8 nx"


# ---------------------------------------------------------------------------------------------
# the relative-position property


def property_tolerance(q: np.ndarray, k: np.ndarray, pairs: int) -> np.ndarray:
    """Bound on |<f(q, m), f(k, n)> - <f(q, m + d), f(k, n + d)>| for float32 outputs at the strict level.

    Exactly, both inner products equal sum_i q_i^T R((n - m) theta_i) k_i. Per rotated pair i the strict
    level gives each output component an error below e nq_i + s (e = 9 2**-24, s = s_out), so the pair's
    error vector has norm at most a_i = sqrt(2) (e nq_i + s), and with |f(k)_i| = nk_i:
        |<f(q)_i + dq, f(k)_i + dk> - <f(q)_i, f(k)_i>| <= a_i nk_i + nq_i b_i + a_i b_i.
    NoPE lanes are bit-identical, so they contribute the same products to both sides. The difference
    of the two inner products is at most twice the sum over pairs, plus the float64 summation error of
    the test itself (H terms of at most nq nk each, relative 2**-53 per addition).
    Shapes: q [..., Lq, H], k [..., Lk, H] -> [..., Lq, Lk].
    """
    half = q.shape[-1] // 2
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    nq = np.hypot(q64[..., :pairs], q64[..., half : half + pairs])
    nk = np.hypot(k64[..., :pairs], k64[..., half : half + pairs])
    aq = math.sqrt(2) * (STRICT_EPS * nq + FLOAT32_ABSOLUTE)
    ak = math.sqrt(2) * (STRICT_EPS * nk + FLOAT32_ABSOLUTE)
    per_pair = (
        np.einsum("...mi,...ni->...mn", aq, nk)
        + np.einsum("...mi,...ni->...mn", nq, ak)
        + np.einsum("...mi,...ni->...mn", aq, ak)
    )
    summation = q.shape[-1] * 2.0**-52 * np.einsum("...mh,...nh->...mn", np.abs(q64), np.abs(k64))
    return 2 * per_pair + 2 * summation


def shifted_scores(apply: Any, q: np.ndarray, k: np.ndarray, start: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """<f(q, m), f(k, n)> for positions start + [0, L) and the same shifted by shift; [N, L, L] each."""
    length = q.shape[1]
    positions = np.stack([start + np.arange(length), start + shift + np.arange(length)]).astype(np.int64)
    fq = apply(np.concatenate([q, q]), positions).astype(np.float64)  # rows: unshifted, shifted
    fk = apply(np.concatenate([k, k]), positions).astype(np.float64)
    scores = np.einsum("blnh,bmnh->bnlm", fq, fk)
    return scores[0], scores[1]


PROPERTY_LAYERS = [(128, 1e4, 1.0, 1.0), (512, 1e6, 0.25, 1.0), (256, 2.0, 0.5, 4.0), (1024, 1e7, 1.0, 1.0)]
PROPERTY_LENGTH = 16


@backends
@settings(max_examples=25)
@given(
    layer=st.sampled_from(PROPERTY_LAYERS),
    shift=st.integers(0, MAX_POSITION - PROPERTY_LENGTH),
    start=st.integers(0, 2**20),
    seed=st.integers(0, 2**32 - 1),
)
def test_relative_position_property_up_to_2_24(
    backend: Backend, layer: tuple[int, float, float, float], shift: int, start: int, seed: int
) -> None:
    api = backend.load()
    head_dim, max_wavelength, rope_percentage, scale_factor = layer
    start = min(start, MAX_POSITION - PROPERTY_LENGTH - shift)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, PROPERTY_LENGTH, 2, head_dim)).astype(np.float32)
    k = rng.standard_normal((1, PROPERTY_LENGTH, 2, head_dim)).astype(np.float32)

    def apply(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        out = api.apply_p_rope(
            backend.native(x),
            backend.native(positions),
            head_dim,
            max_wavelength,
            rope_percentage,
            scale_factor=scale_factor,
        )
        return to_numpy(out)

    before, after = shifted_scores(apply, q, k, start, shift)
    pairs = p_rope.rotated_pair_count(head_dim, rope_percentage)
    tolerance = property_tolerance(q[0].transpose(1, 0, 2), k[0].transpose(1, 0, 2), pairs)
    excess = np.abs(before - after) / tolerance
    assert excess.max() <= 1.0, (
        f"<f(q, m), f(k, n)> changed under a shift of {shift} by {excess.max():.3g}x the tolerance "
        f"(largest difference {np.abs(before - after).max():.3g})"
    )


def float32_angle_rope(x: np.ndarray, positions: np.ndarray, head_dim: int, max_wavelength: float) -> np.ndarray:
    """The published approach: angle = position * frequency rounded to float32 (not ours; must fail)."""
    half = head_dim // 2
    freq = (max_wavelength ** (-2.0 * np.arange(half) / head_dim)).astype(np.float32)
    angle = (positions.astype(np.float32)[..., None] * freq)[..., None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def test_relative_position_check_rejects_float32_angles() -> None:
    """The tolerance above is tight enough to catch the float32-angle error at long range."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, PROPERTY_LENGTH, 2, 128)).astype(np.float32)
    k = rng.standard_normal((1, PROPERTY_LENGTH, 2, 128)).astype(np.float32)
    before, after = shifted_scores(lambda x, pos: float32_angle_rope(x, pos, 128, 1e4), q, k, 0, 2**23 + 12_345)
    tolerance = property_tolerance(q[0].transpose(1, 0, 2), k[0].transpose(1, 0, 2), 64)
    assert (np.abs(before - after) / tolerance).max() > 100


def test_strict_bound_is_nine_float32_units() -> None:
    """STRICT_EPS above is SPEC.md's strict level for float32 outputs."""
    assert STRICT_EPS == UNIT_ROUNDOFF["float32"] + 8 * 2.0**-24


# ---------------------------------------------------------------------------------------------
# the accuracy report across libraries (bench/accuracy.py, from reports/ecosystem.json)


def _bench_accuracy() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / "accuracy.py"
    spec = importlib.util.spec_from_file_location("bench_accuracy_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_library_tables_put_each_library_beside_ours() -> None:
    """Each graded library's decade profile is a row beside ours, at the same windows; a library that
    could not run a layer says so; without profiles the section says how to make them."""
    accuracy = _bench_accuracy()
    starts = accuracy.grid()
    ours = np.zeros((len(starts), 3))
    ours[:, 0], ours[:, 1] = 1e-7, 0.2
    results = {key: ({"ours: reference": ours}, {}) for key in accuracy.CONFIGS}
    labels = list(accuracy.DECADES.values())
    library = {
        "name": "somelib",
        "version": "1.2.3",
        "status": "graded",
        "accuracy": {
            "llama": {"relative": dict.fromkeys(labels, 0.5), "strict": dict.fromkeys(labels, 9e5)},
            "gemma4-global": {"error": "ValueError: head_dim > 256"},
        },
    }
    lines = accuracy.library_tables(results, starts, [library])
    text = "\n".join(lines)
    assert "| ours: reference | 1e-07 (0.2) |" in text
    assert "| somelib 1.2.3 | 0.5 (9e+05) |" in text
    assert "| somelib 1.2.3 | not run: ValueError: head_dim > 256 |" in text
    assert all(int(s) in {int(x) for x in starts} for s in accuracy.DECADES)  # our windows exist in the grid
    assert "run `nox -s ecosystem`" in "\n".join(accuracy.library_tables(results, starts, []))
