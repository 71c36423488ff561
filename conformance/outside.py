"""Correct p-RoPE implementations written the way others write them, independently of this project.

The conformance suite must accept each of them at the level SPEC.md assigns it, and report where
each stops meeting the strict level (tests/test_conformance_selftest.py). None of them imports
p_rope: each is written from the formula of the paper (Barbero et al., ICLR 2025) in its own
framework's idiom, with the precision choices its style is known for.

* ``paper_numpy``: the paper's formula in NumPy, angle ``position / timescale`` in float32 (in
  float64 for float64 inputs, as the published JAX code computes under x64), products in the
  promoted dtype, one rounding to the input dtype. Signature: the paper's.
* ``gemma_jax``: Gemma's ``apply_rope`` idiom in JAX (float32 exponents, ``base ** exponent``,
  ``position / timescale``, angle divided by ``scale_factor``), Gemma's keyword signature.
* ``hf_torch``: Hugging Face's idiom in PyTorch (float32 ``inv_freq`` divided by the interpolation
  factor, float32 angles, cos/sin cast to the activation dtype before the multiply, ``rotate_half``),
  with this project's keyword signature minus ``pairing`` (split-half only). For float64 inputs its
  cos/sin are float32 values: SPEC.md requires float64 inputs to be computed in float64, so it is
  not conformant in float64 (the self-test checks that the suite says so).

Expected grades (SPEC.md, "Accuracy"): all three conformant for float16, bfloat16 and float32;
``paper_numpy`` and ``gemma_jax`` fail the strict level from small positions on (their float32 angle
error grows with the position), ``hf_torch`` fails it in 16-bit dtypes at any position (two roundings).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["IMPLEMENTATIONS", "OutsideImplementation", "gemma_jax", "hf_torch", "paper_numpy"]


def paper_numpy(inputs, positions, head_dim, max_wavelength=10_000, rope_percentage=1.0):
    """p-RoPE as the paper writes it, in NumPy; inputs [B, L, N, H], positions [B, L]."""
    angle_dtype = np.float64 if inputs.dtype == np.float64 else np.float32
    rope_angles = int(rope_percentage * head_dim // 2)
    nope_angles = head_dim // 2 - rope_angles
    fraction = (2.0 * np.arange(rope_angles) / head_dim).astype(angle_dtype)
    timescale = np.concatenate(
        [angle_dtype(max_wavelength) ** fraction, np.full(nope_angles, np.inf, dtype=angle_dtype)]
    )
    angle = np.asarray(positions).astype(angle_dtype)[..., None] / timescale
    angle = angle[..., None, :]  # [B, L, 1, H/2]: one angle per head
    sin, cos = np.sin(angle), np.cos(angle)
    x1, x2 = np.split(inputs.astype(np.promote_types(inputs.dtype, angle_dtype)), 2, axis=-1)
    out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(inputs.dtype)


def gemma_jax(inputs, positions, *, base_frequency, scale_factor=1.0, rope_proportion=1.0):
    """Gemma-style RoPE in JAX; inputs [B, L, N, H], positions [B, L]."""
    import jax.numpy as jnp

    if scale_factor < 1.0:
        raise ValueError(f"scale_factor must be >= 1.0, got {scale_factor}")
    head_dim = inputs.shape[-1]
    rope_angles = int(rope_proportion * head_dim // 2)
    nope_angles = head_dim // 2 - rope_angles
    exponents = (2.0 / head_dim) * jnp.arange(rope_angles, dtype=jnp.float32)
    timescale = jnp.concatenate([base_frequency**exponents, jnp.full((nope_angles,), jnp.inf, dtype=jnp.float32)])
    angle = positions[..., None] / timescale[None, None, :]
    angle = angle[..., None, :] / scale_factor
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = jnp.split(inputs, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(inputs.dtype)


def _rotate_half(x):
    import torch

    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def hf_torch(inputs, positions, head_dim, max_wavelength=10_000, rope_percentage=1.0, *, scale_factor=1.0, seq_axis=-3):
    """HF-style proportional RoPE in PyTorch; inputs [B, L, N, H] (seq_axis=-3) or [B, N, L, H] (-2)."""
    import torch

    rope_angles = int(rope_percentage * head_dim // 2)
    exponent = torch.arange(0, 2 * rope_angles, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (max_wavelength**exponent)
    inv_freq = torch.cat([inv_freq, torch.zeros(head_dim // 2 - rope_angles)]) / scale_factor
    inv_freq = inv_freq.to(inputs.device)
    freqs = positions.float()[..., None] * inv_freq  # [B, L, H/2], float32
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(inputs.dtype), emb.sin().to(inputs.dtype)
    unsqueeze_dim = -2 if seq_axis == -3 else -3
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (inputs * cos) + (_rotate_half(inputs) * sin)


class OutsideImplementation:
    """An outside implementation and the grade SPEC.md assigns it."""

    def __init__(self, name: str, function: Any, framework: str, signature: str, dtypes: tuple[str, ...]):
        self.name = name
        self.function = function
        self.framework = framework
        self.signature = signature
        self.dtypes = dtypes  # where it is expected to be conformant

    @property
    def impl(self) -> str:
        return f"p_rope.conformance.outside:{self.function.__name__}"


IMPLEMENTATIONS = (
    OutsideImplementation(
        "paper (NumPy, float32 angle)", paper_numpy, "numpy", "paper", ("float16", "bfloat16", "float32", "float64")
    ),
    OutsideImplementation("Gemma-style (JAX)", gemma_jax, "jax", "gemma", ("float16", "bfloat16", "float32")),
    OutsideImplementation("HF-style (PyTorch)", hf_torch, "torch", "ours", ("float16", "bfloat16", "float32")),
)
