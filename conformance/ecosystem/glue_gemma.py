"""google-deepmind gemma: ``gemma.gm.math.apply_rope`` loaded from its file in the installed package.

``import gemma.gm`` pulls kauldron (and TensorFlow); ``apply_rope``'s file needs JAX alone, so it is
loaded by path, unchanged. ``check`` is pointed at the same file (``pkgfile:`` in LIBRARIES).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


def package_file(distribution_module: str, relative: str) -> str:
    """The path of ``relative`` inside the installed package ``distribution_module`` (not imported)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec(distribution_module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{distribution_module} is not installed")
    return os.path.join(next(iter(spec.submodule_search_locations)), relative)


@functools.lru_cache(maxsize=1)
def apply_rope() -> Any:
    from pathlib import Path

    from p_rope.conformance.targets import load_file

    path = Path(package_file("gemma", "gm/math/_positional_embeddings.py"))
    return load_file(path, "gemma_positional_embeddings").apply_rope


def profile(x: np.ndarray, positions: np.ndarray, head_dim: int, max_wavelength: float, rope_percentage: float):
    """``apply_rope(x, positions, base_frequency=w, rope_proportion=p)`` on JAX arrays, back to NumPy."""
    import jax.numpy as jnp

    out = apply_rope()(
        jnp.asarray(x), jnp.asarray(positions), base_frequency=max_wavelength, rope_proportion=rope_percentage
    )
    return np.asarray(out)
