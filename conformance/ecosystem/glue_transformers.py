"""transformers: rotary modules built from SPEC's parameters, and the accuracy profile's calls.

Glue only. ``check --convention hf`` builds Gemma 4's own rotary class from a case's parameters itself
(``--rotary ...:Gemma4TextRotaryEmbedding``); GPT-NeoX's is built here, as a GPT-NeoX config.json
states a partial rotary factor (``gpt_neox_rotary``: that config, not p-RoPE's, is what its users run). The
``*_profile`` functions do what each family's attention does: cos/sin from its rotary module, then
its ``apply_rotary_pos_emb``.
"""

from __future__ import annotations

from typing import Any


def gemma4_rotary(head_dim: int, max_wavelength: float, rope_percentage: float, scale_factor: float = 1.0) -> Any:
    """Gemma 4's ``Gemma4TextRotaryEmbedding`` for a ``full_attention`` layer (``rope_type="proportional"``)."""
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRotaryEmbedding

    config = Gemma4TextConfig(  # type: ignore[call-arg]  # global_head_dim: a keyword its __post_init__ reads
        num_hidden_layers=1,
        layer_types=["full_attention"],
        head_dim=head_dim,
        global_head_dim=head_dim,
        rope_parameters={
            "full_attention": {
                "rope_type": "proportional",
                "rope_theta": float(max_wavelength),
                "partial_rotary_factor": float(rope_percentage),
                "factor": float(scale_factor),
            }
        },
    )
    module = Gemma4TextRotaryEmbedding(config)
    return lambda x, position_ids: module(x, position_ids, "full_attention")


def gpt_neox_rotary(head_dim: int, max_wavelength: float, rope_percentage: float, scale_factor: float = 1.0) -> Any:
    """GPT-NeoX's ``GPTNeoXRotaryEmbedding``: ``partial_rotary_factor`` GPT-NeoX style (the contrast)."""
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding

    rope: dict[str, Any] = {"rope_theta": float(max_wavelength), "partial_rotary_factor": float(rope_percentage)}
    rope |= {"rope_type": "linear", "factor": float(scale_factor)} if scale_factor != 1.0 else {"rope_type": "default"}
    config = GPTNeoXConfig(hidden_size=head_dim, num_attention_heads=1, rope_parameters=rope)
    return GPTNeoXRotaryEmbedding(config)


def _profile(rotary: Any, apply: Any, x: Any, positions: Any, pair: bool) -> Any:
    """The family's attention does this: tables from its rotary module, then its apply ([B, L, N, H])."""
    import numpy as np
    import torch

    xt, pt = torch.from_numpy(x), torch.from_numpy(positions)
    cos, sin = rotary(xt, pt)
    out = apply(xt, xt, cos, sin, unsqueeze_dim=2)[0] if pair else apply(xt, cos, sin, unsqueeze_dim=2)
    return np.asarray(out.detach().numpy())


def gemma4_profile(x: Any, positions: Any, head_dim: int, max_wavelength: float, rope_percentage: float) -> Any:
    from transformers.models.gemma4.modeling_gemma4 import apply_rotary_pos_emb

    rotary = gemma4_rotary(head_dim, max_wavelength, rope_percentage)
    return _profile(rotary, apply_rotary_pos_emb, x, positions, pair=False)


def gpt_neox_profile(x: Any, positions: Any, head_dim: int, max_wavelength: float, rope_percentage: float) -> Any:
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    rotary = gpt_neox_rotary(head_dim, max_wavelength, rope_percentage)
    return _profile(rotary, apply_rotary_pos_emb, x, positions, pair=True)
