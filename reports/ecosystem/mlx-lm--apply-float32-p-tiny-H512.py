# mlx-lm ProportionalRoPE (MLX, CPU) 0.32.2: out: NoPE lanes are not bit-identical to the input
# graded: mlx_lm.models.rope_utils.initialize_rope(rope_type="proportional") -> mx.fast.rope
# install: pip install mlx[cpu]==0.32.4 mlx-lm==0.32.2 p-rope
"""p-RoPE conformance failure: apply/float32/p-tiny-H512, conformant level of SPEC.md 1.0, on (1, 1, 1, 8) inputs.
Found by: p-rope-conformance check --impl p_rope.conformance.ecosystem.glue_mlx:proportional_rope
Case: apply float32 shape=(1, 1, 1, 8) H=8 p=0.625 (R=2) w=10000 scale_factor=1 pairing=split_half seq_axis=-3 positions=random:int32[0..131072] (full shape)
Observed: out: NoPE lanes are not bit-identical to the input
Run: python this_file.py   (needs numpy)
"""

import numpy as np
import p_rope.conformance.ecosystem.glue_mlx
impl = p_rope.conformance.ecosystem.glue_mlx.proportional_rope

H, W, P, R, SCALE = 8, 10000.0, 0.625, 2, 1.0  # R = int(P * H // 2) rotated pairs
PAIRING, SEQ_AXIS, DEVICE = 'split_half', -3, 'cpu'
x = np.array([
    -0.2660044, -0.22306986, 0.4338926, 0.37587014, 0.7811053, 0.36769524, -0.6990712,
    -0.52386236,
], dtype=np.float32).reshape((1, 1, 1, 8))
positions = np.array([104272,], dtype=np.int32).reshape((1, 1))

x_in = x.copy()
out, x_after = np.asarray(impl(x_in, positions, H, W, P)), x_in

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
    bound = nx * (4 * 5.960464477539063e-08 + 4 * 5.960464477539063e-08 * (1 + np.abs(angle) * (1 + 2.0 * i / H * 9.210340371976184))) + 4.70197740328915e-38
    ratio = np.where(err == 0, 0.0, err / bound)
    ratio = np.where(np.isnan(angle), 0.0, ratio)  # every finite position counts
where = np.argwhere(ratio > 1)[:1].tolist()
assert ratio.max(initial=0) <= 1, f"error {ratio.max():.3g} x the conformant bound at {where}"
