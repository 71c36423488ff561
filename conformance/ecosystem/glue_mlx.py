"""mlx-lm: ``initialize_rope(..., {"rope_type": "proportional", ...})``, Gemma 4's p-RoPE on MLX.

Glue only: the rope module is built from SPEC's parameters as mlx-lm builds it from a config's
``rope_parameters`` (``partial_rotary_factor`` = p, ``factor`` = s). MLX rotates ``[..., L, D]``
from a position ``offset``, so each token is rotated alone at its own position as the offset (a
length-1 sequence in ``[1, N, 1, H]``); arrays cross between NumPy and MLX unchanged (bfloat16 by
way of float32, which is exact).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=64)
def _rope(head_dim: int, max_wavelength: float, rope_percentage: float, scale_factor: float) -> Any:
    from mlx_lm.models.rope_utils import initialize_rope

    config = {"rope_type": "proportional", "partial_rotary_factor": rope_percentage, "factor": scale_factor}
    return initialize_rope(head_dim, max_wavelength, False, config)


def _to_mlx(array: np.ndarray) -> Any:
    import mlx.core as mx

    if array.dtype.name == "bfloat16":
        return mx.array(array.astype(np.float32)).astype(mx.bfloat16)
    return mx.array(array)


def _to_numpy(array: Any, dtype: np.dtype) -> np.ndarray:
    import mlx.core as mx

    if dtype.name == "bfloat16":
        return np.array(array.astype(mx.float32)).astype(dtype)
    return np.array(array)


def proportional_rope(
    inputs: np.ndarray,
    positions: np.ndarray,
    head_dim: int,
    max_wavelength: float,
    rope_percentage: float,
    *,
    scale_factor: float = 1.0,
) -> np.ndarray:
    """mlx-lm's ProportionalRoPE on [B, L, N, H] inputs, token by token with ``offset`` = its position."""
    rope = _rope(head_dim, float(max_wavelength), float(rope_percentage), float(scale_factor))
    positions = np.broadcast_to(positions, inputs.shape[:2])
    out = np.empty_like(inputs)
    for b in range(inputs.shape[0]):
        for t in range(inputs.shape[1]):
            token = _to_mlx(inputs[b, t][None, :, None, :])  # [1, N, 1, H]: heads, then a sequence of one
            offset = positions[b, t].item()
            out[b, t] = _to_numpy(rope(token, offset=offset), inputs.dtype)[0, :, 0, :]
    return out
