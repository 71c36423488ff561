# transformers (GPT-NeoX, partial_rotary_factor) 5.25.0: q: NoPE lanes are not bit-identical to the input
# graded: transformers.models.gpt_neox.modeling_gpt_neox.apply_rotary_pos_emb + GPTNeoXRotaryEmbedding
# install: pip install torch==2.13.0 transformers==5.25.0 p-rope
"""p-RoPE conformance failure: apply/float32/p0.58-H100-R28, conformant level of SPEC.md 1.0, on (1, 1, 2, 4) inputs.
Found by: p-rope-conformance check --impl transformers.models.gpt_neox.modeling_gpt_neox:apply_rotary_pos_emb
Case: apply float32 shape=(1, 1, 1, 4) H=4 p=0.58 (R=1) w=10000 scale_factor=1 pairing=split_half seq_axis=-3 positions=offsets:int32[0..70000] (full shape)
Observed: q: NoPE lanes are not bit-identical to the input; k: NoPE lanes are not bit-identical to the input
Run: python this_file.py   (needs numpy, torch)
"""

import numpy as np
import transformers.models.gpt_neox.modeling_gpt_neox
impl = transformers.models.gpt_neox.modeling_gpt_neox.apply_rotary_pos_emb
import p_rope.conformance.ecosystem.glue_transformers
Rotary = p_rope.conformance.ecosystem.glue_transformers.gpt_neox_rotary

H, W, P, R, SCALE = 4, 10000.0, 0.58, 1, 1.0  # R = int(P * H // 2) rotated pairs
PAIRING, SEQ_AXIS, DEVICE = 'split_half', -3, 'cpu'
x = np.array([
    0.02453831, 0.004708614, -0.023015654, 0.07627005, 0.02453831, 0.004708614, -0.023015654,
    0.07627005,
], dtype=np.float32).reshape((1, 1, 2, 4))
positions = np.array([4,], dtype=np.int64).reshape((1, 1))

rotary = Rotary(  # as check built it for this case
    head_dim=4, max_wavelength=10000.0, rope_percentage=0.58, scale_factor=1.0)
apply = impl


def impl(v, p):  # the check's call: q = v but its last head, k = that head; q's and k's outputs side by side
    cos, sin = rotary(v, p)  # the rotary module's, as check took them
    q_out, k_out = apply(v[..., :-1, :], v[..., -1:, :], cos, sin, unsqueeze_dim=2)
    return torch.cat([q_out, k_out], -2)

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
    bound = nx * (4 * 5.960464477539063e-08 + 4 * 5.960464477539063e-08 * (1 + np.abs(angle) * (1 + 2.0 * i / H * 9.210340371976184))) + 4.70197740328915e-38
    ratio = np.where(err == 0, 0.0, err / bound)
    ratio = np.where(np.isnan(angle), 0.0, ratio)  # every finite position counts
where = np.argwhere(ratio > 1)[:1].tolist()
assert ratio.max(initial=0) <= 1, f"error {ratio.max():.3g} x the conformant bound at {where}"
