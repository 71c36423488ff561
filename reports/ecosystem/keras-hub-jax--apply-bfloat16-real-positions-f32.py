# keras-hub Gemma 4 attention (Keras 3, jax backend) 0.32.0: error 125 x the conformant bound at position 2167.2158203125
# graded: keras_hub Gemma4TextAttention._apply_rope
# install: pip install jax==0.10.2 jaxlib==0.10.2 keras==3.15.1 absl-py==2.5.1 rich==15.0.0 packaging==26.4 regex==2026.11.19 numpy==2.4.6 tokenizers==0.23.3 keras-hub==0.32.0
# KERAS_BACKEND=jax
"""p-RoPE conformance failure: apply/bfloat16/real-positions-f32, conformant level of SPEC.md 1.0, on (1, 1, 1, 4) inputs.
Found by: p-rope-conformance check --impl keras_hub.src.models.gemma4.gemma4_attention:Gemma4TextAttention._apply_rope
Case: apply bfloat16 shape=(1, 1, 1, 4) H=4 p=0.5 (R=1) w=10000 scale_factor=1 pairing=split_half seq_axis=-3 positions=real:float32[0..4096] (full shape)
Observed: error 47 x the conformant bound at position 2167.22, index (0, 0, 0, 0)
Run: python this_file.py   (needs numpy, ml_dtypes, keras, jax)
"""

import os
os.environ.setdefault("KERAS_BACKEND", 'jax')
import numpy as np
import ml_dtypes
import keras_hub.src.models.gemma4.gemma4_attention
Layer = keras_hub.src.models.gemma4.gemma4_attention.Gemma4TextAttention

H, W, P, R, SCALE = 4, 10000.0, 0.5, 1, 1.0  # R = int(P * H // 2) rotated pairs
PAIRING, SEQ_AXIS, DEVICE = 'split_half', -3, 'cpu'
x = np.array([-0.453125, 0.33984375, -0.18457031, -0.6484375,], dtype=np.float32).astype(ml_dtypes.bfloat16).reshape((1, 1, 1, 4))
positions = np.array([2167.2158,], dtype=np.float32).reshape((1, 1))

layer = Layer(  # as check built it for this case
    head_dim=4, rope_wavelength=10000.0, rope_partial_rotary_factor=0.5, rope_scaling_factor=1.0, num_query_heads=1,
    num_key_value_heads=1, dtype='bfloat16')
layer.built or layer.build(x.shape)  # for the inputs' shape, as check did
impl = lambda v, p: Layer._apply_rope(layer, v, start_index=0, positions=p)  # noqa: E731

import jax

jax.config.update("jax_enable_x64", False)
device = jax.devices('cpu')[0]
x_in = jax.device_put(x, device)
out, x_after = np.asarray(impl(x_in, jax.device_put(positions, device))), np.asarray(x_in)

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
