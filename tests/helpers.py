"""The one assertion helper of the test suite (value, dtype, shape and device checked together),
and the inputs the backend test files share."""

from __future__ import annotations

import sys
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from p_rope import tolerance

MAX_POSITION = tolerance.STRICT_MAX_POSITION
NP_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float64": np.float64}

_PLATFORMS = {"gpu": "cuda", "cuda": "cuda", "rocm": "cuda", "cpu": "cpu", "tpu": "tpu", "mps": "mps"}


def device_of(array: Any) -> str:
    """'cpu', 'cuda', 'tpu' or 'mps' for a NumPy, JAX or torch array (NumPy arrays live on 'cpu')."""
    if isinstance(array, np.ndarray):
        return "cpu"
    if "torch" in sys.modules and isinstance(array, sys.modules["torch"].Tensor):
        return str(array.device.type)
    devices = getattr(array, "devices", None)
    if callable(devices):  # jax.Array (possibly sharded over several devices of one platform)
        platforms = {_PLATFORMS.get(d.platform, d.platform) for d in devices()}
        (platform,) = platforms
        return platform
    device = str(getattr(array, "device", "cpu"))  # e.g. array_api_strict.Device('CPU_DEVICE')
    return "cpu" if "cpu" in device.lower() else device.split(":")[0]


def to_numpy(array: Any) -> np.ndarray:
    """A host NumPy array (NumPy arrays as they are; a copy of anything else, so that a later
    in-place write to the tensor does not show through); bfloat16 as ml_dtypes.bfloat16, bit for bit."""
    if isinstance(array, np.ndarray):
        return array
    if "torch" in sys.modules and isinstance(array, sys.modules["torch"].Tensor):
        torch = sys.modules["torch"]
        array = array.detach().contiguous().cpu()
        if array.dtype == torch.bfloat16:
            return array.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
        return array.numpy().copy()
    try:
        return np.asarray(array)
    except (TypeError, ValueError, RuntimeError):  # array_api_strict: no __array__, but DLPack
        return np.from_dlpack(array)


def dtype_name(array: Any) -> str:
    return str(array.dtype).rsplit(".", 1)[-1]


def assert_conforms(
    out: Any,
    inputs: np.ndarray,
    positions: np.ndarray,
    head_dim: int,
    max_wavelength: float = 10_000,
    rope_percentage: float = 1.0,
    *,
    device: str = "cpu",
    level: str = "conformant",
    **kwargs: Any,
) -> tolerance.Grade:
    """Assert that out is apply_p_rope(inputs, positions, ...) at SPEC.md's level ``level``:
    same shape, same dtype as inputs, on ``device`` ('cpu', 'cuda', 'tpu', 'mps'), NoPE lanes
    bit-identical, rotated lanes within the level's bound of the float64 reference.
    Returns the grade for further checks."""
    assert tuple(out.shape) == inputs.shape, f"shape {tuple(out.shape)} != {inputs.shape}"
    assert dtype_name(out) == inputs.dtype.name, f"dtype {dtype_name(out)} != {inputs.dtype.name}"
    assert device_of(out) == device.split(":")[0], f"device {device_of(out)} != {device}"
    result = tolerance.grade(
        to_numpy(out), inputs, np.asarray(positions), head_dim, max_wavelength, rope_percentage, **kwargs
    )
    assert result.nope_identical, "NoPE lanes differ from the input"
    assert result.ratio[level] <= 1.0, (
        f"error {result.ratio[level]:.3g} x the {level} bound at index {result.worst} "
        f"(max abs error {result.max_abs_error:.3g})"
    )
    return result


# Shared by the backend test files: configurations every backend must agree with the reference on.
# (H, p, w, pairing, seq_axis, scale_factor, rotated_pairs)
AGREEMENT_CONFIGS = [
    pytest.param(2, 1.0, 10_000.0, "split_half", -3, 1.0, None, id="H2-p1"),
    pytest.param(64, 0.0, 10_000.0, "split_half", -3, 1.0, None, id="H64-p0"),
    pytest.param(64, 0.02, 10_000.0, "interleaved", -2, 1.0, None, id="H64-tiny-p"),  # R = 0
    pytest.param(64, 1.0, 500_000.0, "split_half", -3, 1.0, 1, id="H64-R1"),
    pytest.param(512, 0.25, 1e6, "split_half", -3, 1.0, None, id="H512-p0.25-gemma"),
    pytest.param(512, 0.25, 1e6, "split_half", -2, 1.0, None, id="H512-p0.25-hf"),
    pytest.param(128, 0.5, 10_000.0, "interleaved", -3, 4.0, None, id="H128-p0.5-scaled"),
    pytest.param(96, 0.58, 2.0, "split_half", -2, 1.0, None, id="H96-p0.58-w2"),
    pytest.param(1024, 1.0, 1e7, "interleaved", -2, 2.5, None, id="H1024-p1-w1e7"),
    pytest.param(128, 1.0, 10_000.0, "split_half", -3, 1.0, None, id="H128-p1-llama"),
]


def normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return rng.standard_normal(shape).astype(NP_DTYPES[dtype])


def layout(batch: tuple[int, ...], length: int, heads: int, head_dim: int, seq_axis: int) -> tuple[int, ...]:
    """The input shape [B..., L, N, H] (seq_axis=-3) or [B..., N, L, H] (seq_axis=-2)."""
    return (*batch, length, heads, head_dim) if seq_axis == -3 else (*batch, heads, length, head_dim)


def integer_positions(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Positions over the strict range, edges included: 0, +-1, +-2**24, 2**24 - 1."""
    values = rng.integers(-MAX_POSITION, MAX_POSITION + 1, size=shape, dtype=np.int64)
    edges = np.array([0, 1, -1, MAX_POSITION, -MAX_POSITION, MAX_POSITION - 1, 4096, 123_457])
    flat = values.reshape(-1)
    flat[: min(flat.size, edges.size)] = edges[: flat.size]
    return values
