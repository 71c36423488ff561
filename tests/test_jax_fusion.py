"""What XLA makes of the JAX backend under jit: the output written in one fused pass over the input.

Checked on the optimized HLO that XLA compiles for the device (XLA:CPU here; XLA:GPU where CUDA is
present), in its entry computation: every instruction whose result has as many elements as the
input is the input itself, a free view of it (bitcast), at most one plain copy of it (the NoPE
lanes, which the rotation then overwrites in place, reading and writing only the 2R rotated lanes),
or the root, which must be a fusion. So no intermediate of the input's size is materialized: the
tables ([..., L, R], built once, not per head) and the rotation are fused into the pass that writes
the output. SPEC.md's framework notes ("JAX on accelerators") cite this.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from p_rope.backends import jax as pj  # noqa: E402

_INSTRUCTION = re.compile(r"\s*(ROOT )?%\S+ = \w+\[([\d,]*)\]\S* ([\w-]+)\(")


@pytest.fixture(params=[pytest.param("cpu", id="jax:cpu"), pytest.param("gpu", id="jax:cuda", marks=pytest.mark.cuda)])
def device(request: pytest.FixtureRequest) -> object:
    try:
        return jax.devices(request.param)[0]
    except RuntimeError:
        pytest.skip(f"jax has no {request.param} device")


def _full_size_instructions(hlo: str, size: int) -> list[tuple[bool, str]]:
    """(is root, opcode) of the entry computation's instructions with ``size`` elements (arrays only)."""
    entry = hlo[hlo.index("\nENTRY") :]
    entry = entry[: entry.index("\n}")]
    found = []
    for line in entry.splitlines()[1:]:
        match = _INSTRUCTION.match(line)
        if match and match.group(2) and int(np.prod([int(d) for d in match.group(2).split(",")])) == size:
            found.append((bool(match.group(1)), match.group(3)))
    return found


@pytest.mark.parametrize(
    ("shape", "p", "dtype", "pairing"),
    [
        pytest.param((1, 512, 8, 512), 0.25, "bfloat16", "split_half", id="gemma-global-bf16"),
        pytest.param((1, 512, 8, 512), 0.25, "float32", "interleaved", id="gemma-global-f32-interleaved"),
        pytest.param((2, 256, 8, 128), 1.0, "float32", "split_half", id="llama-f32"),
        pytest.param((2, 256, 8, 128), 1.0, "bfloat16", "split_half", id="llama-bf16"),
        pytest.param((32, 1, 8, 512), 0.25, "bfloat16", "split_half", id="decode-bf16"),
    ],
)
def test_output_written_by_one_fusion(device: object, shape: tuple, p: float, dtype: str, pairing: str) -> None:
    x = jax.device_put(jnp.zeros(shape, dtype), device)
    positions = jax.device_put(jnp.arange(shape[1], dtype=jnp.int32), device)
    call = jax.jit(lambda x, positions: pj.apply_p_rope(x, positions, shape[-1], 1e6, p, pairing=pairing))
    hlo = call.lower(x, positions).compile().as_text()
    full = [
        (root, op)
        for root, op in _full_size_instructions(hlo, int(np.prod(shape)))
        if op not in ("parameter", "bitcast")
    ]
    roots = [op for root, op in full if root]
    others = [op for root, op in full if not root]
    assert roots == ["fusion"], full
    assert others in ([], ["copy"]), full
