# transformers (Gemma 4, proportional) 5.25.0: error 1.9e+08 x the conformant bound at position 40355.0
# graded: transformers.models.gemma4.modeling_gemma4.apply_rotary_pos_emb + Gemma4TextRotaryEmbedding
# install: pip install torch==2.13.0 transformers==5.25.0
# matches: float32 arithmetic on float64 inputs
"""p-RoPE conformance failure: apply/float64/gemma4-global-kv, conformant level of SPEC.md 1.0, on (1, 1, 1, 8) inputs.
Found by: p-rope-conformance check --impl transformers.models.gemma4.modeling_gemma4:apply_rotary_pos_emb
Case: apply float64 shape=(1, 1, 1, 8) H=8 p=0.25 (R=1) w=1e+06 scale_factor=1 pairing=split_half seq_axis=-3 positions=offsets:int32[0..131072] (full shape)
Observed: error 1.28e+03 x the conformant bound at position 40355, index (0, 0, 0, 0)
Run: python this_file.py   (needs numpy, torch)
"""

import numpy as np
import transformers.models.gemma4.modeling_gemma4
impl = transformers.models.gemma4.modeling_gemma4.apply_rotary_pos_emb
Rotary = transformers.models.gemma4.modeling_gemma4.Gemma4TextRotaryEmbedding
import transformers.models.gemma4.configuration_gemma4

H, W, P, R, SCALE = 8, 1000000.0, 0.25, 1, 1.0  # R = int(P * H // 2) rotated pairs
PAIRING, SEQ_AXIS, DEVICE = 'split_half', -3, 'cpu'
x = np.array([
    -0.05979878399822486, -0.08033259624130645, -0.00030544537108323505, 0.13141015356586433,
    -0.025937347785391578, 0.0766915444115662, 0.06558205881683982, 0.08643708290726516,
], dtype=np.float64).reshape((1, 1, 1, 8))
positions = np.array([40355,], dtype=np.int64).reshape((1, 1))

rotary = Rotary(  # as check built it for this case
    transformers.models.gemma4.configuration_gemma4.Gemma4TextConfig(head_dim=8, hidden_size=8,
    num_attention_heads=1, num_key_value_heads=1, num_hidden_layers=1, max_position_embeddings=40356,
    rope_parameters={'full_attention': {'rope_type': 'proportional', 'rope_theta': 1000000.0,
    'partial_rotary_factor': 0.25}}, layer_types=['full_attention'], global_head_dim=8))
apply = impl


def impl(v, p):  # the check's call
    cos, sin = rotary(v, p, 'full_attention')  # the rotary module's, as check took them
    return apply(v, cos, sin, unsqueeze_dim=2)

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
    bound = nx * (4 * 1.1102230246251565e-16 + 4 * 1.1102230246251565e-16 * (1 + np.abs(angle) * (1 + 2.0 * i / H * 13.815510557964274))) + 8.900295434028806e-308
    ratio = np.where(err == 0, 0.0, err / bound)
    ratio = np.where(np.isnan(angle), 0.0, ratio)  # every finite position counts
where = np.argwhere(ratio > 1)[:1].tolist()
assert ratio.max(initial=0) <= 1, f"error {ratio.max():.3g} x the conformant bound at {where}"
