"""The NumPy reference (spec/reference.py) against SPEC.md: hand-derived values, Gemma's published
values, an independent standard-RoPE formula and the properties p-RoPE must have.

Nothing here compares the reference with itself except through a property that relates two
different calls (a permutation, a transpose, a shift of positions, a change of dtype).
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import ml_dtypes
import numpy as np
import p_rope
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
DTYPE_IDS = [d.name for d in DTYPES]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}")


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert np.array_equal(bits(actual), bits(expected))


F64 = np.dtype(np.float64)


def random_inputs(seed: int, shape: tuple[int, ...], dtype: np.dtype = F64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def random_bits(seed: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Arbitrary bit patterns: NaNs with payloads, infinities, -0.0, subnormals, everything."""
    width = np.dtype(dtype).itemsize
    raw = np.random.default_rng(seed).integers(0, 2 ** (8 * width), shape, dtype=np.uint64)
    return raw.astype(f"u{width}").view(dtype)


def rotated_lanes(head_dim: int, pairs: int, pairing: str = "split_half") -> np.ndarray:
    i = np.arange(pairs)
    lanes = np.concatenate([i, i + head_dim // 2] if pairing == "split_half" else [2 * i, 2 * i + 1])
    mask = np.zeros(head_dim, bool)
    mask[lanes] = True
    return mask


head_halves = st.integers(1, 24)
seeds = st.integers(0, 2**32 - 1)
wavelengths = st.sampled_from([2.0, 100.0, 10_000.0, 500_000.0, 1_000_000.0, 1e7])


# ---------------------------------------------------------------------------------------------
# Published and hand-derived values


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_gemma_published_values(dtype: type) -> None:
    """google-deepmind/gemma's test: ones [2, 1, 2, 4], positions [[1], [0]], base 100."""
    x: np.ndarray = np.ones((2, 1, 2, 4), dtype)
    positions = np.array([[1], [0]])
    full = p_rope.apply_p_rope(x, positions, 4, 100)
    half = p_rope.apply_p_rope(x, positions, 4, 100, 0.5)
    for out, expected in [
        (full, [-0.30116868, 0.89517075, 1.3817732, 1.0948375]),
        (half, [-0.30116868, 1.0, 1.3817732, 1.0]),
    ]:
        assert out.dtype == dtype and out.shape == x.shape
        np.testing.assert_allclose(out[0, 0], [expected, expected], rtol=0, atol=1e-7)
        assert np.array_equal(out[1], x[1])  # position 0 returns the input


def exact_rotation(a: float, b: float, angle: Decimal | int) -> tuple[Fraction, Fraction]:
    """(a, b) turned by an exactly given angle, in exact arithmetic (SPEC.md section 2's formula)."""
    cos, sin = exact_cos_sin(angle)
    return Fraction(a) * cos - Fraction(b) * sin, Fraction(b) * cos + Fraction(a) * sin


def assert_within_reference_error(out: np.ndarray, exact: list[Fraction], pairs: list[tuple[float, float, float]]):
    """Each output within E = nx 2**-53 (5 + 2 theta) of the exact value, pairs listing (a, b, theta) per
    output. E is the reference's own error on any platform (SPEC.md section 10: an angle within 2 units
    of 2**-53 theta, float64 cos and sin within 1.5 units in the last place, two roundings)."""
    for got, want, (a, b, theta) in zip(out.tolist(), exact, pairs, strict=True):
        error = abs(Fraction(got) - want)
        assert error <= Fraction(math.hypot(a, b) * 2.0**-53 * (5 + 2 * theta)) * (1 + Fraction(1, 2**40)), (got, want)


def test_hand_derived_h2() -> None:
    """H = 2: one pair (x0, x1), frequency w**0 = 1 whatever w, angle = position / scale_factor."""
    x = np.array([3.0, 4.0]).reshape(1, 1, 1, 2)
    for w in (2.0, 10_000.0):
        out = p_rope.apply_p_rope(x, np.array([[2]]), 2, w)
        assert_within_reference_error(out.ravel(), list(exact_rotation(3, 4, 2)), [(3, 4, 2)] * 2)
    out = p_rope.apply_p_rope(x, np.array([[1]]), 2, scale_factor=2.0)
    assert_within_reference_error(out.ravel(), list(exact_rotation(3, 4, Decimal("0.5"))), [(3, 4, 0.5)] * 2)


def test_hand_derived_h4() -> None:
    """H = 4, w = 100: frequencies [1, 100**-0.5 = 0.1]; position 3 gives angles 3 and 0.3."""
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    pos = np.array([[3]])
    angle = Decimal("0.3")
    rot = exact_rotation

    (o0, o2), (o1, o3) = rot(1, 3, 3), rot(2, 4, angle)  # split_half pairs (0, 2) and (1, 3)
    out = p_rope.apply_p_rope(x, pos, 4, 100)
    thetas = [(1, 3, 3), (2, 4, 0.3), (1, 3, 3), (2, 4, 0.3)]
    assert_within_reference_error(out.ravel(), [o0, o1, o2, o3], thetas)
    (o0, o1), (o2, o3) = rot(1, 2, 3), rot(3, 4, angle)  # interleaved pairs (0, 1) and (2, 3)
    out = p_rope.apply_p_rope(x, pos, 4, 100, pairing="interleaved")
    assert_within_reference_error(out.ravel(), [o0, o1, o2, o3], [(1, 2, 3), (1, 2, 3), (3, 4, 0.3), (3, 4, 0.3)])

    # p = 0.5: R = 1, only pair 0 (the highest frequency) turns; lanes 1 and 3 are NoPE lanes.
    o0, o2 = rot(1, 3, 3)
    for kwargs in ({"rope_percentage": 0.5}, {"rotated_pairs": 1}):
        out = p_rope.apply_p_rope(x, pos, 4, 100, **kwargs).ravel()
        assert out[1] == 2.0 and out[3] == 4.0
        assert_within_reference_error(out[[0, 2]], [o0, o2], [(1, 3, 3)] * 2)

    # H = 8, p = 0.5: pairs (0, 4), (1, 5) at frequencies 1 and w**(-2/8) = 100**-0.25 (the ladder over
    # the full H, not over the 4 rotated lanes, and not the NeoX lanes 0..3).
    x8 = np.arange(1.0, 9.0).reshape(1, 1, 1, 8)
    out = p_rope.apply_p_rope(x8, pos, 8, 100, 0.5).ravel()
    with localcontext() as ctx:
        ctx.prec = 60
        slow = 3 / Decimal(10).sqrt()  # 3 * 100**-0.25
    (a0, a4), (a1, a5) = rot(1, 5, 3), rot(2, 6, slow)
    assert out[[2, 3, 6, 7]].tolist() == [3, 4, 7, 8]
    assert_within_reference_error(
        out[[0, 1, 4, 5]], [a0, a1, a4, a5], [(1, 5, 3), (2, 6, 0.95), (1, 5, 3), (2, 6, 0.95)]
    )


# ---------------------------------------------------------------------------------------------
# Properties


def standard_rope(x: np.ndarray, positions: np.ndarray, w: float) -> np.ndarray:
    """Textbook RoPE, HF's rotate_half form, written independently: x cos(emb) + rotate_half(x) sin(emb)."""
    h = x.shape[-1]
    inv_freq = 1.0 / (w ** (np.arange(0, h, 2, dtype=np.float64) / h))
    angles = positions[..., None].astype(np.float64) * inv_freq
    emb = np.concatenate([angles, angles], axis=-1)[..., None, :]
    rotate_half = np.concatenate([-x[..., h // 2 :], x[..., : h // 2]], axis=-1)
    return x * np.cos(emb) + rotate_half * np.sin(emb)


@settings(max_examples=40)
@given(seed=seeds, half=head_halves, w=wavelengths, dtype=st.sampled_from(DTYPES))
def test_p0_is_identity(seed: int, half: int, w: float, dtype: np.dtype) -> None:
    x = random_bits(seed, (2, 3, 2, 2 * half), dtype)
    pos = np.random.default_rng(seed).integers(-(2**40), 2**40, (2, 3))
    for kwargs in ({"rope_percentage": 0.0}, {"rotated_pairs": 0}):
        out = p_rope.apply_p_rope(x, pos, 2 * half, w, **kwargs)
        assert out is not x and not np.shares_memory(out, x)
        assert_same_bits(out, x)


@settings(max_examples=40)
@given(seed=seeds, half=head_halves, w=wavelengths, max_pos=st.sampled_from([1, 100, 10_000, 1_000_000]))
def test_p1_is_standard_rope(seed: int, half: int, w: float, max_pos: int) -> None:
    h = 2 * half
    x = random_inputs(seed, (2, 5, 3, h))
    pos = np.random.default_rng(seed + 1).integers(-max_pos, max_pos + 1, (2, 5))
    out = p_rope.apply_p_rope(x, pos, h, w, 1.0)
    expected = standard_rope(x, pos, w)
    # Both are float64 evaluations of the same real numbers; their angles differ by a few ulps of max_pos.
    scale = np.abs(x).max() * (1 + max_pos) * 2.0**-53 * 64
    np.testing.assert_allclose(out, expected, rtol=0, atol=scale)


@settings(max_examples=40)
@given(
    seed=seeds,
    half=head_halves,
    w=wavelengths,
    p=st.floats(0, 1),
    pairing=st.sampled_from(["split_half", "interleaved"]),
)
def test_pair_norm_preserved(seed: int, half: int, w: float, p: float, pairing: str) -> None:
    h = 2 * half
    x = random_inputs(seed, (3, 4, 2, h))
    pos = np.random.default_rng(seed).integers(-(10**6), 10**6, (3, 4))
    out = p_rope.apply_p_rope(x, pos, h, w, p, pairing=pairing)
    pairs = p_rope.rotated_pair_count(h, p)
    i = np.arange(pairs)
    a, b = (i, i + half) if pairing == "split_half" else (2 * i, 2 * i + 1)
    np.testing.assert_allclose(np.hypot(out[..., a], out[..., b]), np.hypot(x[..., a], x[..., b]), rtol=1e-14)


@settings(max_examples=40)
@given(
    seed=seeds,
    half=head_halves,
    w=wavelengths,
    p=st.floats(0, 1),
    m=st.integers(-(10**6), 10**6),
    n=st.integers(-(10**6), 10**6),
    d=st.integers(-(10**6), 10**6),
)
def test_inner_product_depends_on_offset(seed: int, half: int, w: float, p: float, m: int, n: int, d: int) -> None:
    """<f(q, m), f(k, n)> = <f(q, m + d), f(k, n + d)> = <f(q, m - n), k> (rotations compose)."""
    h = 2 * half
    q, k = random_inputs(seed, (2, 1, 1, h))

    def f(x: np.ndarray, position: int) -> np.ndarray:
        return p_rope.apply_p_rope(x[None], np.array([[position]]), h, w, p)[0]

    def dot(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sum(a * b))

    reference = dot(f(q, m), f(k, n))
    tol = 1e-13 * (1 + abs(m) + abs(n) + abs(d)) * np.linalg.norm(q) * np.linalg.norm(k)
    assert abs(dot(f(q, m + d), f(k, n + d)) - reference) <= tol
    assert abs(dot(f(q, m - n), k) - reference) <= tol


@settings(max_examples=40)
@given(seed=seeds, half=head_halves, w=wavelengths, p=st.floats(0, 1), s=st.floats(1, 16))
def test_negative_positions_invert(seed: int, half: int, w: float, p: float, s: float) -> None:
    h = 2 * half
    x = random_inputs(seed, (2, 6, 2, h))
    pos = np.random.default_rng(seed).uniform(-(10**6), 10**6, (2, 6))
    there = p_rope.apply_p_rope(x, pos, h, w, p, scale_factor=s)
    back = p_rope.apply_p_rope(there, -pos, h, w, p, scale_factor=s)
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-15 * np.abs(x).max() * 16)


@settings(max_examples=40)
@given(
    seed=seeds,
    half=head_halves,
    p=st.floats(0, 1),
    dtype=st.sampled_from(DTYPES),
    pairing=st.sampled_from(["split_half", "interleaved"]),
    seq_axis=st.sampled_from([-3, -2]),
)
def test_nope_lanes_bit_identical(seed: int, half: int, p: float, dtype: np.dtype, pairing: str, seq_axis: int) -> None:
    """NoPE lanes hold arbitrary bit patterns (NaN payloads, inf, -0.0, subnormals) and come back unchanged."""
    h = 2 * half
    x = random_bits(seed, (2, 3, 4, h), dtype)
    pos = np.random.default_rng(seed).integers(-(10**9), 10**9, (2, 3 if seq_axis == -3 else 4))
    out = p_rope.apply_p_rope(x, pos, h, 10_000, p, pairing=pairing, seq_axis=seq_axis)
    nope = ~rotated_lanes(h, p_rope.rotated_pair_count(h, p), pairing)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert np.array_equal(bits(out[..., nope]), bits(x[..., nope]))


@settings(max_examples=40)
@given(seed=seeds, half=head_halves, p=st.floats(0, 1), dtype=st.sampled_from(DTYPES), w=wavelengths)
def test_interleaved_is_permuted_split_half(seed: int, half: int, p: float, dtype: np.dtype, w: float) -> None:
    h = 2 * half
    perm = np.stack([np.arange(half), np.arange(half) + half], axis=-1).ravel()  # [0, H/2, 1, H/2 + 1, ...]
    x = random_inputs(seed, (2, 3, 2, h), dtype)
    x[..., -1] = -0.0
    pos = np.random.default_rng(seed).integers(-(10**6), 10**6, (2, 3))
    split = p_rope.apply_p_rope(x, pos, h, w, p)
    inter = p_rope.apply_p_rope(x[..., perm], pos, h, w, p, pairing="interleaved")
    assert_same_bits(inter, split[..., perm])


@settings(max_examples=40)
@given(seed=seeds, half=head_halves, p=st.floats(0, 1), w=wavelengths, k=st.integers(1, 10), s=st.floats(1, 100))
def test_scale_factor_divides_positions(seed: int, half: int, p: float, w: float, k: int, s: float) -> None:
    h = 2 * half
    x = random_inputs(seed, (2, 5, 2, h))
    pos = np.random.default_rng(seed).integers(-(10**6), 10**6, (2, 5)).astype(np.float64)
    # A power of two divides exactly: bit-identical results.
    scaled = p_rope.apply_p_rope(x, pos, h, w, p, scale_factor=2.0**k)
    assert_same_bits(scaled, p_rope.apply_p_rope(x, pos / 2.0**k, h, w, p))
    # Any other factor: equal up to the rounding of pos / s and freq / s.
    scaled = p_rope.apply_p_rope(x, pos, h, w, p, scale_factor=s)
    direct = p_rope.apply_p_rope(x, pos / s, h, w, p)
    np.testing.assert_allclose(scaled, direct, rtol=0, atol=1e-15 * 16 * np.abs(x).max() * (1 + 10**6 / s))


# ---------------------------------------------------------------------------------------------
# API relations


@settings(max_examples=25)
@given(
    seed=seeds,
    half=head_halves,
    p=st.floats(0, 1),
    dtype=st.sampled_from(DTYPES),
    pairing=st.sampled_from(["split_half", "interleaved"]),
)
def test_in_place_writes_only_rotated_lanes(seed: int, half: int, p: float, dtype: np.dtype, pairing: str) -> None:
    h = 2 * half
    buffer = random_bits(seed, (2, 5, 3, h + 3), dtype)
    rotated = rotated_lanes(h, p_rope.rotated_pair_count(h, p), pairing)
    buffer[..., :h][..., rotated] = random_inputs(seed, (2, 5, 3, int(rotated.sum())), dtype)
    view = buffer[:, 1:4, :, :h]  # a strided view: the op must write through it and nowhere else
    original = buffer.copy()
    pos = np.random.default_rng(seed).integers(0, 10**5, (2, 3))
    expected = p_rope.apply_p_rope(view.copy(), pos, h, 10_000, p, pairing=pairing)

    returned = p_rope.apply_p_rope_(view, pos, h, 10_000, p, pairing=pairing)
    assert returned is view
    assert_same_bits(view, expected)
    outside = np.ones(buffer.shape, bool)
    outside[:, 1:4, :, :h] = False
    assert np.array_equal(bits(buffer[outside]), bits(original[outside]))
    assert np.array_equal(bits(buffer[:, 1:4, :, :h][..., ~rotated]), bits(original[:, 1:4, :, :h][..., ~rotated]))


@settings(max_examples=25)
@given(
    seed=seeds, half=head_halves, p=st.floats(0, 1), dtype=st.sampled_from(DTYPES), seq_axis=st.sampled_from([-3, -2])
)
def test_tables_reuse_equals_direct_call(seed: int, half: int, p: float, dtype: np.dtype, seq_axis: int) -> None:
    h = 2 * half
    pos = np.random.default_rng(seed).integers(-(10**6), 10**6, (2, 4))
    tables = p_rope.p_rope_tables(pos, h, 500_000, p, scale_factor=4.0)
    assert tables.cos.shape == tables.sin.shape == (2, 4, p_rope.rotated_pair_count(h, p))
    assert tables.cos.dtype == np.float64
    shape = (2, 4, 3, h) if seq_axis == -3 else (2, 3, 4, h)
    for layer in range(2):  # the same tables serve several tensors
        x = random_inputs(seed + layer, shape, dtype)
        direct = p_rope.apply_p_rope(x, pos, h, 500_000, p, scale_factor=4.0, seq_axis=seq_axis)
        assert_same_bits(p_rope.apply_p_rope_tables(x, tables, seq_axis=seq_axis), direct)
    # The [L] tables of positions shared by the batch broadcast too.
    x = random_inputs(seed, (2, 4, 3, h), dtype)
    shared = p_rope.p_rope_tables(pos[0], h, 500_000, p, scale_factor=4.0)
    assert_same_bits(
        p_rope.apply_p_rope_tables(x, shared), p_rope.apply_p_rope(x, pos[0], h, 500_000, p, scale_factor=4.0)
    )


@settings(max_examples=25)
@given(seed=seeds, half=head_halves, p=st.floats(0, 1), nq=st.integers(1, 4), nk=st.integers(1, 4))
def test_qk_equals_two_calls(seed: int, half: int, p: float, nq: int, nk: int) -> None:
    h = 2 * half
    q = random_inputs(seed, (2, 3, nq, h), BF16)
    k = random_inputs(seed + 1, (2, 3, nk, h), np.dtype(np.float32))
    pos = np.random.default_rng(seed).integers(0, 10**6, (2, 3))
    q_out, k_out = p_rope.apply_p_rope_qk(q, k, pos, h, 10_000, p, pairing="interleaved")
    assert_same_bits(q_out, p_rope.apply_p_rope(q, pos, h, 10_000, p, pairing="interleaved"))
    assert_same_bits(k_out, p_rope.apply_p_rope(k, pos, h, 10_000, p, pairing="interleaved"))


@settings(max_examples=25)
@given(seed=seeds, half=head_halves, p=st.floats(0, 1), dtype=st.sampled_from(DTYPES))
def test_seq_axis_minus2_equals_transpose(seed: int, half: int, p: float, dtype: np.dtype) -> None:
    """HF's [B, N, L, H] with position_ids [B, L]: no transpose needed, same bits as transposing."""
    h = 2 * half
    x = random_inputs(seed, (2, 3, 5, h), dtype)  # [B, N, L, H]
    pos = np.random.default_rng(seed).integers(0, 10**6, (2, 5))
    hf = p_rope.apply_p_rope(x, pos, h, 10_000, p, seq_axis=-2)
    gemma = p_rope.apply_p_rope(np.swapaxes(x, 1, 2), pos, h, 10_000, p, seq_axis=-3)
    assert_same_bits(hf, np.ascontiguousarray(np.swapaxes(gemma, 1, 2)))


def test_inputs_untouched() -> None:
    x = random_bits(0, (2, 3, 2, 8), np.dtype(np.float32))
    before = x.copy()
    pos = np.arange(3)
    p_rope.apply_p_rope(x, pos, 8)
    p_rope.apply_p_rope_qk(x, x, pos, 8)
    p_rope.apply_p_rope_tables(x, p_rope.p_rope_tables(pos, 8))
    assert np.array_equal(bits(x), bits(before))


# ---------------------------------------------------------------------------------------------
# Dtypes and rounding


def nearest_bfloat16(values: np.ndarray) -> np.ndarray:
    """Round float64 values to the nearest bfloat16 (ties to even), deciding in exact rationals."""
    out = []
    for v in values.ravel().tolist():
        guess = np.array(v, np.float32).astype(BF16)  # within one bfloat16 unit of the answer
        below = np.nextafter(guess, np.array(-np.inf, BF16))
        above = np.nextafter(guess, np.array(np.inf, BF16))
        candidates = [c for c in (below, guess, above) if np.isfinite(c)]
        best = min(
            candidates,
            key=lambda c: (abs(Fraction(float(c)) - Fraction(v)), int(np.array(c, BF16).view(np.uint16)) & 1),
        )
        out.append(best)
    return np.array(out, BF16).reshape(values.shape)


@settings(max_examples=25)
@given(seed=seeds, half=head_halves, p=st.floats(0, 1), dtype=st.sampled_from(DTYPES[:3]))
def test_16bit_outputs_round_once(seed: int, half: int, p: float, dtype: np.dtype) -> None:
    """16- and 32-bit outputs are the float64 result rounded once to the output dtype."""
    h = 2 * half
    x = random_inputs(seed, (1, 4, 2, h), dtype)
    pos = np.random.default_rng(seed).integers(0, 10**6, (1, 4))
    out = p_rope.apply_p_rope(x, pos, h, 10_000, p)
    exact = p_rope.apply_p_rope(x.astype(np.float64), pos, h, 10_000, p)
    expected = nearest_bfloat16(exact) if dtype == BF16 else exact.astype(dtype)  # NumPy rounds once to f16/f32
    assert_same_bits(out, expected)


def _decimal_pi() -> Decimal:
    """pi to the current decimal precision (the decimal module's documented series)."""
    with localcontext() as ctx:
        ctx.prec += 2
        last, term, total, n, na, d, da = Decimal(0), Decimal(3), Decimal(3), 1, 0, 0, 24
        while total != last:
            last = total
            n, na = n + na, na + 8
            d, da = d + da, da + 32
            term = (term * n) / d
            total += term
    return +total


def exact_cos_sin(angle: Decimal | int) -> tuple[Fraction, Fraction]:
    """cos and sin of an angle given exactly, to 50 significant digits (decimal Taylor series after
    reduction modulo 2 pi with 60-digit pi): no platform function involved."""
    with localcontext() as ctx:
        ctx.prec = 60
        r = Decimal(angle) % (2 * _decimal_pi())
        cos, sin = Decimal(0), Decimal(0)
        term, k = Decimal(1), 0  # r**k / k!
        while k < 2 or abs(term) > Decimal(10) ** -58:
            if k % 2 == 0:
                cos += term if k % 4 == 0 else -term
            else:
                sin += term if k % 4 == 1 else -term
            k += 1
            term = term * r / k
        return Fraction(cos), Fraction(sin)


def round_to_bits(value: Fraction, bits: int) -> Fraction:
    """value rounded to nearest (ties to even) with `bits` significant bits (no exponent limits)."""
    if value == 0:
        return value
    exponent = value.numerator.bit_length() - value.denominator.bit_length()  # 2**e <= |value| < 2**(e+2)
    while abs(value) >= Fraction(2) ** (exponent + 1):
        exponent += 1
    while abs(value) < Fraction(2) ** exponent:
        exponent -= 1
    spacing = Fraction(2) ** (exponent - bits + 1)
    return round(value / spacing) * spacing


# Integer positions m < 600,000 where cos m lies within half a float32 unit of a bfloat16 midpoint, so
# that rounding to float32 lands on the midpoint, yet at least 2**-31 away from it (found once with an
# exact search; each property is re-derived below from exact arithmetic).
BF16_TRAPS = (49043, 50193, 153878, 251372, 306294, 333562, 402433, 419381, 508443, 517966, 582465)


def test_bfloat16_double_rounding_avoided() -> None:
    """Positions m where cos m sits just off a bfloat16 midpoint that float32 rounding lands on exactly:
    rounding through float32 goes the wrong way for some, rounding once does not.

    Expectations come from exact arithmetic. The reference's float64 cos m is within a few units of
    2**-53 of cos m (any libm within 1.5 units in the last place), far inside the 2**-31 margin, so it
    lies on the same side of the midpoint and rounds once to RN(cos m) on every platform."""
    expected, naive = [], []
    for m in BF16_TRAPS:
        cos = exact_cos_sin(m)[0]
        float32 = round_to_bits(cos, 24)
        assert round_to_bits(float32, 9) == float32 != round_to_bits(float32, 8)  # a bfloat16 midpoint
        assert abs(cos - float32) >= Fraction(1, 2**31)  # the margin that makes the test portable
        expected.append(float(round_to_bits(cos, 8)))  # RN(cos m): what rounding once gives
        naive.append(float(round_to_bits(float32, 8)))  # RN(RN32(cos m)): rounding twice
    expected_bits = np.array(expected).astype(BF16).view(np.uint16)  # exact: bfloat16 values
    assert np.any(np.array(expected) != np.array(naive))  # the trap exists: twice goes wrong somewhere
    one = np.array([1 + 2**-8 + 2**-30])  # SPEC.md's example: through float32 it becomes a tie, then 1.0
    assert float(one.astype(np.float32).astype(BF16)[0]) == 1.0
    assert float(p_rope.reference._round_once(one, BF16)[0]) == 1 + 2**-7

    m = np.array(BF16_TRAPS, dtype=np.int64)
    x = np.zeros((1, len(m), 1, 2), BF16)
    x[..., 0] = 1  # pair (1, 0) at angle m (H = 2, frequency 1): y = (cos m, sin m) exactly
    out = p_rope.apply_p_rope(x, m[None], 2)
    assert np.array_equal(out[0, :, 0, 0].view(np.uint16), expected_bits)


def test_position_dtypes_agree() -> None:
    x = random_inputs(0, (2, 5, 2, 8), np.dtype(np.float32))
    pos = np.array([[0, 1, 2, 3, 127], [5, 6, 7, 100, 120]])
    expected = p_rope.apply_p_rope(x, pos.astype(np.float64), 8)
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.float32):
        assert_same_bits(p_rope.apply_p_rope(x, pos.astype(dtype), 8), expected)
    assert_same_bits(p_rope.apply_p_rope(x, pos.tolist(), 8), expected)  # array-likes too


def test_16bit_positions_lose_integers() -> None:
    """Why 16-bit positions are rejected: float16 holds integers exactly to 2048, bfloat16 to 256."""
    for dtype, last in [(np.dtype(np.float16), 2048), (BF16, 256)]:
        exact = np.arange(last + 1)
        assert np.array_equal(exact.astype(dtype).astype(np.int64), exact)
        assert int(np.array(last + 1).astype(dtype).astype(np.int64)) != last + 1
    assert float(np.array(15962).astype(BF16)) == 15936


def test_positions_broadcast() -> None:
    x = random_inputs(1, (3, 4, 2, 8))
    shared = np.array([7, 8, 9, 10])
    assert_same_bits(p_rope.apply_p_rope(x, shared, 8), p_rope.apply_p_rope(x, np.tile(shared, (3, 1)), 8))
    assert_same_bits(p_rope.apply_p_rope(x, np.int64(5), 8), p_rope.apply_p_rope(x, np.full((3, 4), 5), 8))
    per_row = np.array([[3], [40], [500]])  # one position per row, e.g. decoding with per-row offsets
    assert_same_bits(p_rope.apply_p_rope(x, per_row, 8), p_rope.apply_p_rope(x, np.repeat(per_row, 4, 1), 8))
    decode = random_inputs(1, (3, 1, 2, 8))
    rows = [p_rope.apply_p_rope(decode[b : b + 1], per_row[b : b + 1], 8) for b in range(3)]
    assert_same_bits(p_rope.apply_p_rope(decode, per_row, 8), np.concatenate(rows))
    with pytest.raises(ValueError, match=r"^positions of shape \(3,\) do not broadcast to \(3, 1\)"):
        p_rope.apply_p_rope(decode, per_row[:, 0], 8)  # a [B] vector aligns with L, not with B
    x5 = random_inputs(1, (2, 3, 4, 2, 8))  # two batch axes
    pos = np.arange(4)[None, None] + np.array([[0], [10], [20]])[None]  # [1, 3, 4]
    assert_same_bits(p_rope.apply_p_rope(x5, pos, 8), p_rope.apply_p_rope(x5, np.broadcast_to(pos, (2, 3, 4)), 8))


def test_kv_cache_offsets() -> None:
    """A chunk of new tokens at per-row cache offsets equals the matching slice of the full sequence."""
    x = random_inputs(2, (2, 12, 2, 16), np.dtype(np.float32))
    full_pos = np.arange(12)[None] + np.array([[0], [100]])
    full = p_rope.apply_p_rope(x, full_pos, 16, 10_000, 0.25)
    offsets = np.array([8, 8])
    chunk_pos = (np.array([0, 100]) + offsets)[:, None] + np.arange(4)
    chunk = p_rope.apply_p_rope(x[:, 8:], chunk_pos, 16, 10_000, 0.25)
    assert_same_bits(chunk, full[:, 8:])
    # Left padding: the real tokens of row 1 start after 5 pads at position 0.
    padded = p_rope.apply_p_rope(x[1:, 5:], np.arange(7), 16, 10_000, 0.25)
    assert_same_bits(padded, p_rope.apply_p_rope(x[1:, 5:], np.arange(7)[None], 16, 10_000, 0.25))
    unpadded = p_rope.apply_p_rope(x[1:, 5:].copy(), np.arange(7), 16, 10_000, 0.25)
    assert_same_bits(padded, unpadded)


def test_packed_sequences() -> None:
    """Sequences packed in one row restart their positions: same as applying p-RoPE to each one."""
    x = random_inputs(3, (1, 9, 2, 16))
    packed = p_rope.apply_p_rope(x, np.array([[0, 1, 2, 3, 0, 1, 0, 1, 2]]), 16, 10_000, 0.5)
    pieces = [p_rope.apply_p_rope(x[:, a:b], np.arange(b - a), 16, 10_000, 0.5) for a, b in [(0, 4), (4, 6), (6, 9)]]
    assert_same_bits(packed, np.concatenate(pieces, axis=1))


# ---------------------------------------------------------------------------------------------
# Special values


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nonfinite_positions_give_nan(dtype: np.dtype) -> None:
    x = random_inputs(4, (1, 4, 2, 8), dtype)
    pos = np.array([[np.nan, np.inf, -np.inf, 3.0]])
    out = p_rope.apply_p_rope(x, pos, 8, 10_000, 0.5)
    rotated = rotated_lanes(8, 2)
    assert np.isnan(out[0, :3][..., rotated].astype(np.float64)).all()
    assert not np.isnan(out[0, 3].astype(np.float64)).any()
    assert np.array_equal(bits(out[..., ~rotated]), bits(x[..., ~rotated]))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nonfinite_rotated_inputs_stay_nonfinite(dtype: np.dtype) -> None:
    special = [np.inf, -np.inf, np.nan]
    cases = [(a, b) for a in special for b in (0.0, -0.0, 1.5, *special)]
    cases += [(b, a) for a, b in cases]
    x = np.array(cases, np.float64).astype(dtype).reshape(1, 1, len(cases), 2)
    for position in (0, 1, 12345):
        out = p_rope.apply_p_rope(x, np.array([[position]]), 2).astype(np.float64)
        assert not np.isfinite(out).any(), position


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_overflow_rounds_to_infinity(dtype: np.dtype) -> None:
    big = float(ml_dtypes.finfo(dtype).max) if dtype == BF16 else float(np.finfo(dtype).max)
    x = np.array([big, big], np.float64).astype(dtype).reshape(1, 1, 1, 2)
    # angle pi/4 (position pi/4 with frequency 1): y = (0, sqrt(2) * big), beyond the range.
    out = p_rope.apply_p_rope(x, np.array([[math.pi / 4]]), 2)
    assert out.dtype == dtype
    assert abs(float(out[0, 0, 0, 0])) < 1e-6 * big and float(out[0, 0, 0, 1]) == np.inf


@pytest.mark.parametrize("shape", [(2, 0, 3, 8), (2, 4, 0, 8), (0, 4, 3, 8), (0, 0, 0, 8)])
def test_empty_arrays(shape: tuple[int, ...]) -> None:
    x = np.zeros(shape, np.float32)
    pos = np.zeros(shape[:2], np.int64)
    out = p_rope.apply_p_rope(x, pos, 8, 10_000, 0.5)
    assert out.shape == shape and out.dtype == np.float32
    q_out, k_out = p_rope.apply_p_rope_qk(x, x, pos, 8)
    assert q_out.shape == k_out.shape == shape
    assert p_rope.p_rope_tables(pos, 8, 10_000, 0.5).cos.shape == (*shape[:2], 2)
