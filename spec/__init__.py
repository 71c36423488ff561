"""p-RoPE: the reference specification (spec/SPEC.md) and its canonical NumPy implementation.

``import p_rope`` gives the NumPy reference; the framework backends live in
``p_rope.backends.jax``, ``p_rope.backends.torch`` and ``p_rope.backends.array_api``, and are
imported only when asked for.
"""

from ._params import SPEC_VERSION, RopeTables
from .config import RopeParams, params_from_gemma_config, params_from_hf_config
from .reference import (
    apply_p_rope,
    apply_p_rope_,
    apply_p_rope_qk,
    apply_p_rope_tables,
    frequencies,
    p_rope_tables,
    rotated_pair_count,
)

__version__ = "0.1.0"

__all__ = [
    "SPEC_VERSION",
    "RopeParams",
    "RopeTables",
    "__version__",
    "apply_p_rope",
    "apply_p_rope_",
    "apply_p_rope_qk",
    "apply_p_rope_tables",
    "frequencies",
    "p_rope_tables",
    "params_from_gemma_config",
    "params_from_hf_config",
    "rotated_pair_count",
]
