# keras-hub Gemma 4 attention (Keras 3, torch backend) 0.32.0: out: NoPE lanes are not bit-identical to the input
# graded: keras_hub Gemma4TextAttention._apply_rope
# install: pip install torch==2.13.0 keras==3.15.1 absl-py==2.5.1 rich==15.0.0 packaging==26.4 regex==2026.11.19 numpy==2.4.6 tokenizers==0.23.3 keras-hub==0.32.0
# KERAS_BACKEND=torch
"""p-RoPE conformance failure: apply/bfloat16/p-tiny-H64-R0, conformant level of SPEC.md 1.0, on (1, 1, 1, 4) inputs.
Found by: p-rope-conformance check --impl keras_hub.src.models.gemma4.gemma4_attention:Gemma4TextAttention._apply_rope
Case: apply bfloat16 shape=(1, 1, 1, 4) H=4 p=0.01 (R=0) w=10000 scale_factor=1 pairing=split_half seq_axis=-3 positions=random:int32[0..131072] (full shape)
Observed: out: NoPE lanes are not bit-identical to the input
Run: python this_file.py   (needs numpy, ml_dtypes, keras, torch)
"""

import os
os.environ.setdefault("KERAS_BACKEND", 'torch')
import numpy as np
import ml_dtypes
import keras_hub.src.models.gemma4.gemma4_attention
Layer = keras_hub.src.models.gemma4.gemma4_attention.Gemma4TextAttention

H, W, P, R, SCALE = 4, 10000.0, 0.01, 0, 1.0  # R = int(P * H // 2) rotated pairs
PAIRING, SEQ_AXIS, DEVICE = 'split_half', -3, 'cpu'
x = np.array([-0.05102539, 0.048095703, 0.087402344, 0.02758789,], dtype=np.float32).astype(ml_dtypes.bfloat16).reshape((1, 1, 1, 4))
positions = np.array([42862,], dtype=np.int32).reshape((1, 1))

layer = Layer(  # as check built it for this case
    head_dim=4, rope_wavelength=10000.0, rope_partial_rotary_factor=0.01, rope_scaling_factor=1.0,
    num_query_heads=1, num_key_value_heads=1, dtype='bfloat16')
layer.built or layer.build(x.shape)  # for the inputs' shape, as check did
impl = lambda v, p: Layer._apply_rope(layer, v, start_index=0, positions=p)  # noqa: E731

import torch
bf16 = x.dtype.name == "bfloat16"
to_torch = lambda a: torch.from_numpy(a.astype(np.float32) if a.dtype.name == "bfloat16" else a.copy())  # noqa: E731
back = lambda t: (t.detach().cpu().float() if bf16 else t.detach().cpu()).numpy().astype(x.dtype)  # noqa: E731
x_in = to_torch(x).to(torch.bfloat16 if bf16 else None).to(DEVICE)
out, x_after = back(impl(x_in, to_torch(positions).to(DEVICE))), back(x_in)

# SPEC.md section 2 in float64: pairs (i, i + H/2) or (2i, 2i + 1), i < R, angle position * W ** (-2i/H) / SCALE
i = np.arange(R)
a, b = (i, i + H // 2) if PAIRING == "split_half" else (2 * i, 2 * i + 1)
angle = positions.astype(np.float64)[..., None] * W ** (-2.0 * i / H) / SCALE
angle = np.expand_dims(angle, -2 if SEQ_AXIS == -3 else -3)
x64, o = x.astype(np.float64), out.astype(np.float64)
bits = lambda v: np.ascontiguousarray(v).view(f"u{v.dtype.itemsize}")  # noqa: E731
assert out.dtype == x.dtype and out.shape == x.shape, f"output {out.dtype} {out.shape}, not {x.dtype} {x.shape}"
assert np.array_equal(bits(x_after), bits(x)), "the input was modified"
nope = np.setdiff1d(np.arange(H), np.concatenate([a, b]))
assert np.array_equal(bits(out[..., nope]), bits(x[..., nope])), "NoPE lanes are not bit-identical to the input"
with np.errstate(all="ignore"):
    c, s, xa, xb = np.cos(angle), np.sin(angle), x64[..., a], x64[..., b]
    right = lambda o, y: (o == y) | (~np.isfinite(o) & ~np.isfinite(y))  # noqa: E731
    lane = lambda o, y: np.where(right(o, y), 0.0, np.nan_to_num(abs(o - y), nan=np.inf))  # noqa: E731
    err, nx = np.maximum(lane(o[..., a], xa * c - xb * s), lane(o[..., b], xb * c + xa * s)), np.hypot(xa, xb)
    # SPEC.md section 8, conformant level
    bound = nx * (4 * 0.00390625 + 4 * 5.960464477539063e-08 * (1 + np.abs(angle) * (1 + 2.0 * i / H * 9.210340371976184))) + 4.70197740328915e-38
    ratio = np.where(err == 0, 0.0, err / bound)
    ratio = np.where(np.isnan(angle), 0.0, ratio)  # every finite position counts
where = np.argwhere(ratio > 1)[:1].tolist()
assert ratio.max(initial=0) <= 1, f"error {ratio.max():.3g} x the conformant bound at {where}"
