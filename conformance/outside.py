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

The other call conventions of conformance/conventions.py, each in its library's idiom (PyTorch):
``hf_apply_rotary_pos_emb`` with ``HfProportionalRotary`` (Hugging Face's cos/sin API and a
proportional rotary module), ``EngineRotary`` (an engine layer with a float32 cos/sin cache,
vLLM's shape), ``flash_apply_rotary_emb`` (flash-attn's interface) and ``angles_apply_rotary_emb``
(rotary-embedding-torch's); tests/test_check_conventions.py requires each to be accepted.

Expected grades (SPEC.md, "Accuracy"): all three conformant for float16, bfloat16 and float32;
``paper_numpy`` and ``gemma_jax`` fail the strict level from small positions on (their float32 angle
error grows with the position), ``hf_torch`` fails it in 16-bit dtypes at any position (two roundings).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "IMPLEMENTATIONS",
    "EngineRotary",
    "HfProportionalRotary",
    "OutsideImplementation",
    "angles_apply_rotary_emb",
    "flash_apply_rotary_emb",
    "gemma_jax",
    "hf_apply_rotary_pos_emb",
    "hf_torch",
    "paper_numpy",
]


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


# ---------------------------------------------------------------------------------------------
# The other call conventions (conformance/conventions.py), each written in its library's idiom.


def hf_apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """Hugging Face's apply_rotary_pos_emb: cos/sin [B, L, H] unsqueezed at the heads axis."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


class HfProportionalRotary:
    """A Hugging Face style rotary module with proportional RoPE: ``rotary(x, position_ids)`` returns
    cos/sin [B, L, H] in x's dtype (float32 frequencies and angles, as transformers computes them)."""

    def __init__(self, head_dim, rope_theta=10_000.0, partial_rotary_factor=1.0, factor=1.0):
        import torch

        rope_angles = int(partial_rotary_factor * head_dim // 2)
        exponent = torch.arange(0, 2 * rope_angles, 2, dtype=torch.int64).float() / head_dim
        inv_freq = torch.cat([1.0 / (rope_theta**exponent), torch.zeros(head_dim // 2 - rope_angles)])
        self.inv_freq = inv_freq / factor

    def __call__(self, x, position_ids):
        import torch

        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class EngineRotary:
    """An inference engine's rotary layer (vLLM's shape): a float32 cos/sin cache of
    ``max_position_embeddings`` rows, full width (cos 1, sin 0 on NoPE pairs), and
    ``layer(positions, query, key, offsets=None)`` rotating flattened [T, N*H] tokens in place."""

    def __init__(self, head_size, max_position_embeddings, base, is_neox_style=True, rope_proportion=1.0, factor=1.0):
        import torch

        rope_angles = int(rope_proportion * head_size // 2)
        exponent = torch.arange(0, 2 * rope_angles, 2, dtype=torch.float64) / head_size
        inv_freq = torch.cat([base**-exponent, torch.zeros(head_size // 2 - rope_angles, dtype=torch.float64)])
        angles = torch.arange(max_position_embeddings, dtype=torch.float64)[:, None] * (inv_freq / factor)
        self.cos_sin_cache = torch.cat([angles.cos(), angles.sin()], dim=-1).float()
        self.head_size, self.is_neox_style = head_size, is_neox_style

    def __call__(self, positions, query, key, offsets=None):
        import torch

        if offsets is not None:  # per-token offsets added to the positions (vLLM's older API)
            positions = positions + offsets
        cos, sin = self.cos_sin_cache[positions].chunk(2, dim=-1)  # [T, H/2] each
        for x in (query, key):
            heads = x.view(x.shape[0], -1, self.head_size)
            if self.is_neox_style:
                x1, x2 = heads[..., : self.head_size // 2], heads[..., self.head_size // 2 :]
            else:
                x1, x2 = heads[..., 0::2], heads[..., 1::2]
            a, b = x1.to(torch.float64 if x.dtype == torch.float64 else torch.float32), x2.to(x1.dtype)
            c, s = cos[:, None, :].to(a.dtype), sin[:, None, :].to(a.dtype)
            rotated = torch.stack([a * c - b * s, b * c + a * s]).to(x.dtype)
            x1.copy_(rotated[0])
            x2.copy_(rotated[1])


def flash_apply_rotary_emb(
    x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None, max_seqlen=None
):
    """flash-attn's apply_rotary_emb in PyTorch: x [B, L, N, H] (or [T, N, H] with cu_seqlens), cos/sin
    [S, rotary_dim / 2], row seqlen_offsets[b] + l for token l of sequence b."""
    import torch

    rotary_dim = cos.shape[-1] * 2
    if cu_seqlens is None:
        batch, length = x.shape[0], x.shape[1]
        starts = torch.zeros(batch, dtype=torch.int64)
        tokens = x.reshape(batch * length, *x.shape[2:])
        seq = torch.arange(batch).repeat_interleave(length)
        local = torch.arange(length).repeat(batch)
    else:
        starts = cu_seqlens[:-1].long()
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        tokens = x
        seq = torch.arange(len(lengths)).repeat_interleave(lengths)
        local = torch.arange(x.shape[0]) - starts[seq]
    offsets = seqlen_offsets if torch.is_tensor(seqlen_offsets) else torch.full((len(starts),), seqlen_offsets)
    rows = offsets.long()[seq] + local
    c, s = cos[rows][:, None, :], sin[rows][:, None, :]
    part = tokens[..., :rotary_dim]
    x1, x2 = (part[..., 0::2], part[..., 1::2]) if interleaved else part.chunk(2, dim=-1)
    a, b = x1.float() if x.dtype != torch.float64 else x1, x2.float() if x.dtype != torch.float64 else x2
    c, s = c.to(a.dtype), s.to(a.dtype)
    o1, o2 = (a * c - b * s).to(x.dtype), (b * c + a * s).to(x.dtype)
    out = tokens if inplace else tokens.clone()
    if interleaved:
        out[..., 0:rotary_dim:2], out[..., 1:rotary_dim:2] = o1, o2
    else:
        out[..., : rotary_dim // 2], out[..., rotary_dim // 2 : rotary_dim] = o1, o2
    return out.reshape(x.shape)


def angles_apply_rotary_emb(freqs, t, start_index=0, scale=1.0, seq_dim=-2):
    """rotary-embedding-torch's apply_rotary_emb: freqs the angle of every lane, pairs (2i, 2i + 1)."""
    import torch

    rot_dim = freqs.shape[-1]
    middle = t[..., start_index : start_index + rot_dim]
    pairs = middle.reshape(*middle.shape[:-1], -1, 2)
    rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(middle.shape)
    out = middle * freqs.cos() * scale + rotated_half * freqs.sin() * scale
    return torch.cat((t[..., :start_index], out, t[..., start_index + rot_dim :]), dim=-1).type(t.dtype)
