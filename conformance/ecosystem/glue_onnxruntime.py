"""onnxruntime: the ONNX ``RotaryEmbedding`` operator (opset 23) with full-width caches.

ONNX computes no tables: the caller passes cos/sin caches. For p-RoPE they are full width
(``[B, L, H/2]``): SPEC's tables (``p_rope.p_rope_tables``, the reference) for the ``R`` rotated
pairs, then cos = 1 and sin = 0 for the NoPE pairs, in the inputs' dtype, with
``rotary_embedding_dim = 0`` (the whole head) and ``interleaved = 0``. Glue only: the one-node graph
is built with onnx's helper, the operator is onnxruntime's.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

OPSET = 23


@functools.lru_cache(maxsize=16)
def _session(dtype: str, num_heads: int) -> Any:
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype)) if dtype != "bfloat16" else TensorProto.BFLOAT16
    node = helper.make_node(
        "RotaryEmbedding", ["x", "cos", "sin"], ["y"], interleaved=0, num_heads=num_heads, rotary_embedding_dim=0
    )
    graph = helper.make_graph(
        [node],
        "p_rope",
        [
            helper.make_tensor_value_info("x", elem, ["B", "L", "D"]),
            helper.make_tensor_value_info("cos", elem, ["B", "L", "P"]),
            helper.make_tensor_value_info("sin", elem, ["B", "L", "P"]),
        ],
        [helper.make_tensor_value_info("y", elem, ["B", "L", "D"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def rotary_embedding(
    inputs: np.ndarray,
    positions: np.ndarray,
    head_dim: int,
    max_wavelength: float,
    rope_percentage: float,
    *,
    scale_factor: float = 1.0,
) -> np.ndarray:
    """ONNX RotaryEmbedding-23 on [B, L, N, H] inputs (fed as [B, L, N*H]) with full-width caches."""
    import p_rope

    batch, length, heads, _ = inputs.shape
    cos, sin = p_rope.p_rope_tables(positions, head_dim, max_wavelength, rope_percentage, scale_factor=scale_factor)
    pad = [(0, 0)] * (cos.ndim - 1) + [(0, head_dim // 2 - cos.shape[-1])]
    cos = np.broadcast_to(np.pad(cos, pad, constant_values=1.0), (batch, length, head_dim // 2))
    sin = np.broadcast_to(np.pad(sin, pad, constant_values=0.0), (batch, length, head_dim // 2))
    session = _session(inputs.dtype.name, heads)
    feed = {
        "x": np.ascontiguousarray(inputs.reshape(batch, length, heads * head_dim)),
        "cos": np.ascontiguousarray(cos.astype(inputs.dtype)),
        "sin": np.ascontiguousarray(sin.astype(inputs.dtype)),
    }
    (out,) = session.run(None, feed)
    return np.asarray(out).reshape(inputs.shape)
