"""The implementations a user would pick instead of p_rope, as their authors ship them.

Used by the benchmark (bench/entries.py) and bench/accuracy.py (error against position). Each
computes the rotation angle position * frequency in float32, the approach whose error grows with
position:

* ``paper_jax``: the published JAX function of the p-RoPE paper / google-deepmind/gemma
  (``apply_rope(..., rope_proportion=p)``): float32 timescales w ** (2i/H) padded with +inf for
  the NoPE pairs, angle = position / timescale / scale_factor, sin and cos in float32, split-half
  rotation over ALL H/2 pairs in the promoted dtype, cast to the input dtype. Run under jax.jit.
* ``HFRope``: HF transformers' Gemma 4 path, ``rope_type="proportional"``: the real
  ``Gemma4TextRotaryEmbedding`` (its rope init function) and Gemma 4's ``apply_rotary_pos_emb``
  when transformers with Gemma 4 imports; otherwise a faithful re-implementation of the same two
  functions (``HFRope.source`` says which). cos/sin are built in float32 from float32 angles and
  cast to the activation dtype before the multiply (two roundings in bfloat16).
* ``rotate_half_torch``: the plain PyTorch code people write (the "HF-style torch eager" of the
  field notes): float32 inv_freq with zeros for the NoPE pairs, cos/sin of the float32 angle, and
  x * cos + rotate_half(x) * sin in float32, cast once to the input dtype. Also run under
  torch.compile by bench/run.py.
* ``flash_attn_rotary``: flash-attn's Triton rotary kernel, ``apply_rotary_emb`` (GPU only). It rotates
  the FIRST rotary_dim lanes of heads of at most 256 lanes, pairing lane i with i + rotary_dim / 2, with
  cos/sin tables [positions, rotary_dim / 2] cached in the activation dtype: p-RoPE exactly only at
  p = 1 with H <= 256 (``flash_attn_layout`` says how a layer maps onto it).
* ``liger_rope``: Liger-Kernel's Triton rope (GPU only), HF's rotate_half rotation of q and k in place
  with the cos/sin tables of HF's rotary module (here ``HFRope.tables``).

jax and torch are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

from typing import Any

# ---------------------------------------------------------------------------------------------
# JAX: the paper's function


def paper_jax(inputs: Any, positions: Any, max_wavelength: float, rope_percentage: float, scale_factor: float = 1.0):
    """The published p-RoPE function (float32 angles), inputs [B, L, N, H], positions [B, L]."""
    import jax.numpy as jnp

    head_dim = inputs.shape[-1]
    rope_angles = int(rope_percentage * head_dim // 2)
    nope_angles = head_dim // 2 - rope_angles
    exponents = (2.0 / head_dim) * jnp.arange(0, rope_angles, dtype=jnp.float32)
    timescale = jnp.pad(max_wavelength**exponents, (0, nope_angles), mode="constant", constant_values=(0, jnp.inf))
    angle = positions[..., jnp.newaxis] / timescale[jnp.newaxis, jnp.newaxis, :]
    angle = angle[..., jnp.newaxis, :] / scale_factor
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    first, second = jnp.split(inputs, 2, axis=-1)
    out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return out.astype(inputs.dtype)


def paper_jax_jit():
    """paper_jax under jax.jit (the wavelength, p and scale static, as in the Gemma models)."""
    import jax

    return jax.jit(paper_jax, static_argnums=(2, 3, 4))


def paper_jax_qk_jit():
    """q and k through the paper's function in one jitted call (how a model's attention uses it)."""
    import jax

    def qk(q, k, positions, max_wavelength, rope_percentage, scale_factor=1.0):
        return (
            paper_jax(q, positions, max_wavelength, rope_percentage, scale_factor),
            paper_jax(k, positions, max_wavelength, rope_percentage, scale_factor),
        )

    return jax.jit(qk, static_argnums=(3, 4, 5))


# ---------------------------------------------------------------------------------------------
# PyTorch: HF transformers' Gemma 4 path


def _hf_rotate_half(x):
    import torch

    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _hf_apply_rotary_pos_emb(x, cos, sin, unsqueeze_dim: int = 1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (x * cos) + (_hf_rotate_half(x) * sin)


class HFRope:
    """HF transformers' Gemma 4 rotary path for one attention layer type (rope_type="proportional").

    ``tables(x, positions)`` is Gemma4TextRotaryEmbedding.forward (cos, sin of shape [B, L, H] in
    x's dtype), ``apply(x, cos, sin)`` is Gemma 4's apply_rotary_pos_emb with unsqueeze_dim=2
    (inputs [B, L, N, H], as Gemma 4's attention calls it), ``__call__`` both.
    """

    def __init__(
        self,
        head_dim: int,
        max_wavelength: float,
        rope_percentage: float,
        scale_factor: float = 1.0,
        device: Any = "cpu",
    ):
        import torch

        self.device = torch.device(device)
        self._apply: Any
        try:
            from transformers import __version__ as version
            from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig
            from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRotaryEmbedding, apply_rotary_pos_emb
        except ImportError as error:
            self.source = f"faithful re-implementation of HF's Gemma 4 path (transformers unavailable: {error})"
            self._module = None
            pairs = int(rope_percentage * head_dim // 2)
            # _compute_proportional_rope_parameters: float32 exponents over the full head_dim
            inv = 1.0 / (
                max_wavelength ** (torch.arange(0, 2 * pairs, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim)
            )
            inv = torch.cat((inv, torch.zeros(head_dim // 2 - pairs, dtype=torch.float32)))
            self._inv_freq = (inv / scale_factor).to(self.device)
            self._apply = _hf_apply_rotary_pos_emb
        else:
            rope = {"rope_type": "proportional", "partial_rotary_factor": rope_percentage}
            rope["rope_theta"] = float(max_wavelength)
            if scale_factor != 1.0:
                rope["factor"] = float(scale_factor)
            settings: dict[str, Any] = {
                "num_hidden_layers": 1,
                "layer_types": ["full_attention"],
                "global_head_dim": head_dim,  # Gemma 4's full-attention layers take this head_dim
                "rope_parameters": {"full_attention": rope},
            }
            config = Gemma4TextConfig(**settings)
            self._module = Gemma4TextRotaryEmbedding(config, device=self.device)
            self._apply = apply_rotary_pos_emb
            self.source = (
                f"transformers {version}: Gemma4TextRotaryEmbedding (rope_type='proportional') "
                "+ gemma4 apply_rotary_pos_emb(unsqueeze_dim=2)"
            )

    def tables(self, x, positions):
        """cos, sin [B, L, H] in x's dtype (Gemma4TextRotaryEmbedding.forward)."""
        if self._module is not None:
            return self._module(x, positions, "full_attention")
        import torch

        with torch.no_grad():
            freqs = positions[..., None].float() * self._inv_freq.to(device=x.device, dtype=torch.float)
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos().to(dtype=x.dtype), emb.sin().to(dtype=x.dtype)

    def apply(self, x, cos, sin):
        return self._apply(x, cos, sin, unsqueeze_dim=2)

    def __call__(self, x, positions):
        cos, sin = self.tables(x, positions)
        return self.apply(x, cos, sin)

    def qk(self, q, k, positions):
        cos, sin = self.tables(q, positions)
        return self.apply(q, cos, sin), self.apply(k, cos, sin)


# ---------------------------------------------------------------------------------------------
# PyTorch: the plain rotate_half a user writes


def inv_freq_torch(
    head_dim: int, max_wavelength: float, rope_percentage: float, scale_factor: float = 1.0, device="cpu"
):
    """float32 inverse frequencies [H/2], zeros for the NoPE pairs (p-RoPE's frequency ladder)."""
    import torch

    pairs = int(rope_percentage * head_dim // 2)
    inv = max_wavelength ** (-torch.arange(0, 2 * pairs, 2, dtype=torch.float32) / head_dim)
    inv = torch.cat((inv, torch.zeros(head_dim // 2 - pairs, dtype=torch.float32))) / scale_factor
    return inv.to(device)


def rotate_half_torch(x, positions, inv_freq):
    """x [B, L, N, H] at positions [B, L]: float32 angle, x * cos + rotate_half(x) * sin in float32."""
    import torch

    angle = positions[..., None].to(torch.float32) * inv_freq
    emb = torch.cat((angle, angle), dim=-1)[..., None, :]
    half = x.shape[-1] // 2
    xf = x.to(torch.float32)
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * emb.cos() + rotated * emb.sin()).to(x.dtype)


def rotate_half_torch_qk(q, k, positions, inv_freq):
    import torch

    angle = positions[..., None].to(torch.float32) * inv_freq
    emb = torch.cat((angle, angle), dim=-1)[..., None, :]
    cos, sin = emb.cos(), emb.sin()
    half = q.shape[-1] // 2

    def one(x):
        xf = x.to(torch.float32)
        return (xf * cos + torch.cat((-xf[..., half:], xf[..., :half]), dim=-1) * sin).to(x.dtype)

    return one(q), one(k)


# ---------------------------------------------------------------------------------------------
# flash-attn and Liger-Kernel (GPU)

FLASH_ATTN_MAX_HEAD_DIM = 256


def flash_attn_rotary() -> tuple[Any, str]:
    """flash-attn's ``apply_rotary_emb`` and where it came from; ImportError where it is absent.

    ``flash_attn.layers.rotary`` imports the package, whose ``__init__`` loads the compiled attention
    extension; where only the Python sources are installed, the Triton kernel's own file
    (``flash_attn/ops/triton/rotary.py``, which imports torch and triton only) is loaded by path and
    its ``apply_rotary`` (what ``apply_rotary_emb`` calls, without the autograd wrapper) is used.
    """
    import importlib.util
    from pathlib import Path

    try:
        from flash_attn.layers.rotary import apply_rotary_emb
    except ImportError as error:
        spec = importlib.util.find_spec("flash_attn")
        if spec is None or not spec.submodule_search_locations:
            raise
        path = Path(next(iter(spec.submodule_search_locations))) / "ops" / "triton" / "rotary.py"
        kernel_spec = importlib.util.spec_from_file_location("flash_attn_triton_rotary", path)
        if kernel_spec is None or kernel_spec.loader is None or not path.is_file():
            raise ImportError(f"flash-attn installed without {path}") from error
        module = importlib.util.module_from_spec(kernel_spec)
        kernel_spec.loader.exec_module(module)
        return module.apply_rotary, f"flash_attn/ops/triton/rotary.py apply_rotary (the package: {error})"
    return apply_rotary_emb, "flash_attn.layers.rotary.apply_rotary_emb"


def flash_attn_layout(head_dim: int, rope_percentage: float) -> tuple[int, int, bool]:
    """How a layer maps onto flash-attn's rotary: (pieces, rotary_dim, exact).

    Each head is cut into ``pieces`` heads of head_dim / pieces <= 256 lanes, of which the first
    ``rotary_dim`` are rotated: the same bytes and the same number of rotated lanes as p-RoPE's 2R.
    ``exact``: the result is p-RoPE (one piece, every lane rotated); otherwise the call is a latency
    reference on the same tensor whose output is another rotation. ValueError where no cut fits.
    """
    pairs = int(rope_percentage * head_dim // 2)
    pieces = -(-head_dim // FLASH_ATTN_MAX_HEAD_DIM)
    if head_dim % pieces or (2 * pairs) % (2 * pieces) or pairs == 0:
        raise ValueError(f"head_dim {head_dim} with {pairs} rotated pairs does not cut into heads of <= 256 lanes")
    return pieces, 2 * pairs // pieces, pieces == 1 and 2 * pairs == head_dim


def flash_attn_tables(max_position: int, rotary_dim: int, head_dim: int, max_wavelength: float, dtype, device):
    """flash-attn's cached tables [max_position + 1, rotary_dim / 2] in x's dtype, as its RotaryEmbedding
    builds them (float32 angles), with p-RoPE's frequencies w ** (-2i / H) for the first pairs."""
    import torch

    inv = max_wavelength ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / head_dim)
    t = torch.arange(max_position + 1, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv)
    return torch.cos(freqs).to(dtype), torch.sin(freqs).to(dtype)


def liger_rope() -> tuple[Any, str]:
    """Liger-Kernel's rope, called as ``rope(q, k, cos, sin)`` with q, k [B, N, L, H] views of [B, L, N, H]
    storage (rotated in place there) and cos, sin [B or 1, L, H]; ImportError where it is absent."""
    from liger_kernel.ops.rope import LigerRopeFunction

    return LigerRopeFunction.apply, "liger_kernel.ops.rope.LigerRopeFunction"
