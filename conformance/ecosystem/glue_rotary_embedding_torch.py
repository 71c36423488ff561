"""rotary-embedding-torch (lucidrains): ``RotaryEmbedding`` makes angles, ``apply_rotary_emb`` rotates.

Glue only: the module is built as its README builds partial rotary embeddings,
``RotaryEmbedding(dim=rotary_dim, theta=w)`` with ``rotary_dim = 2R`` (SPEC's R), its angles are
taken at the given positions (``rotary(positions)``), given a heads axis, and applied to the inputs
with the library's ``apply_rotary_emb``. Its ``interpolate_factor`` only acts on positions it
generates itself, so ``scale_factor`` is not offered (those cases are not tested).
"""

from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=64)
def _rotary(rotary_dim: int, max_wavelength: float) -> Any:
    from rotary_embedding_torch import RotaryEmbedding

    return RotaryEmbedding(dim=rotary_dim, theta=max_wavelength)


def apply_rope(inputs: Any, positions: Any, head_dim: int, max_wavelength: float, rope_percentage: float) -> Any:
    """``apply_rotary_emb(rotary(positions)[..., None, :], inputs, seq_dim=-3)`` on [B, L, N, H] inputs."""
    from p_rope import rotated_pair_count
    from rotary_embedding_torch import apply_rotary_emb

    rotary = _rotary(2 * rotated_pair_count(head_dim, rope_percentage), float(max_wavelength))
    angles = rotary(positions)[..., None, :]  # [B, L, 1, rotary_dim]: one row of angles per token, all heads
    return apply_rotary_emb(angles, inputs, seq_dim=-3)


def profile(x: Any, positions: Any, head_dim: int, max_wavelength: float, rope_percentage: float) -> Any:
    """``apply_rope`` on NumPy arrays (the accuracy profile's calls), back to NumPy."""
    import numpy as np
    import torch

    out = apply_rope(torch.from_numpy(x), torch.from_numpy(positions), head_dim, max_wavelength, rope_percentage)
    return np.asarray(out.numpy())
