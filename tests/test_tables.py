"""The float32 table algorithms of SPEC.md §8 ("The exact reduction", "The float64 reduction"),
each checked against one exact evaluation.

The exact value of a table entry: r_i = w**(-2i/H) / (2 pi s) to 80 significant digits (decimal
arithmetic), the position as the exact binary fraction its dtype holds, frac(m r_i) in integer
arithmetic, and cos/sin of 2 pi times that turn in [-1/2, 1/2] in float64 (an error near 1e-16,
a billionth of a float32 unit). Beyond |m| = 2**24 the exact reduction is checked against the same
evaluation with r_i replaced by the 60-bit value r^_i that it is specified with.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from decimal import Decimal, localcontext
from typing import Any

import numpy as np
import pytest
from p_rope._params import revolution_chunks
from p_rope.backends._exact_turns import exact_turn_tables, turn_constants
from p_rope.backends._float64_turns import float64_revolutions, float64_turn_tables

from tests.helpers import to_numpy

UNIT = 2.0**-24  # float32 units of cos/sin
EXACT_TURNS_BOUND = 1.25 * UNIT  # SPEC.md §8, the exact reduction
FLOAT64_TURNS_BOUND = 0.6 * UNIT  # SPEC.md §8, the float64 reduction
_PI = Decimal("3.1415926535897932384626433832795028841971693993751058209749445923078164062862089986")
_BITS = 320  # r_i held to 2**-320 in the exact evaluation

# (H, w, s): the benchmarked layers, extreme wavelengths (w < 1 gives r_i > 1), scale factors
CONFIGS = [(128, 1e4, 1.0), (512, 1e6, 1.0), (64, 1e7, 3.0), (34, 2.0, 1.7), (16, 0.01, 1.0), (2, 10.0, 1.0)]
CONFIG_IDS = [f"H{h}-w{w:g}-s{s:g}" for h, w, s in CONFIGS]


# ---------------------------------------------------------------------------------------------
# the exact evaluation


@functools.cache
def _true_revolutions(head_dim: int, w: float, scale: float) -> tuple[int, ...]:
    """floor(r_i 2**_BITS) for every pair (80 digits: exact far beyond 2**-_BITS)."""
    with localcontext() as ctx:
        ctx.prec = 110
        turn = 2 * _PI * Decimal(scale)
        exact = [Decimal(w) ** (Decimal(-2 * i) / Decimal(head_dim)) / turn for i in range(head_dim // 2)]
        return tuple(int(r * (Decimal(2) ** _BITS)) for r in exact)


@functools.cache
def _fixed_revolutions(head_dim: int, w: float, scale: float) -> tuple[int, ...]:
    """The 60-bit r^_i of p_rope._params (the exact reduction's specified input), as floor(r^ 2**_BITS)."""
    rows = revolution_chunks(head_dim, w, head_dim // 2, scale)
    fixed = [
        (int(rows[0][i]) << 60) + sum(int(math.ldexp(row[i], 60)) for row in rows[1:]) for i in range(head_dim // 2)
    ]
    return tuple(f << (_BITS - 60) for f in fixed)


def exact_tables(positions: np.ndarray, revolutions: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """float64 cos/sin of 2 pi frac(m r_i) for exact m (any integer or float value) and r_i."""
    turns = np.empty((positions.size, len(revolutions)))
    for j, value in enumerate(positions.reshape(-1).tolist()):
        if isinstance(value, float):
            numerator, denominator = value.as_integer_ratio()  # denominator: a power of two
        else:
            numerator, denominator = int(value), 1
        modulus = denominator << _BITS
        for i, r in enumerate(revolutions):
            t = numerator * r % modulus  # frac(m r) * modulus, in [0, modulus)
            turns[j, i] = (t if 2 * t < modulus else t - modulus) / modulus  # in [-1/2, 1/2]
    angle = 2 * np.pi * turns.reshape((*positions.shape, len(revolutions)))
    return np.cos(angle), np.sin(angle)


@functools.cache
def reference(kind: str, head_dim: int, w: float, scale: float) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """positions_of(kind) and their exact tables (shared by every namespace's test)."""
    positions = positions_of(kind, head_dim)
    return positions, exact_tables(positions, _true_revolutions(head_dim, w, scale))


def max_error(tables: tuple[Any, Any], exact: tuple[np.ndarray, np.ndarray]) -> float:
    cos, sin = (to_numpy(t).astype(np.float64) for t in tables)
    assert cos.shape == exact[0].shape and sin.shape == exact[1].shape
    return float(max(np.abs(cos - exact[0]).max(initial=0), np.abs(sin - exact[1]).max(initial=0)))


# ---------------------------------------------------------------------------------------------
# positions of every kind (NumPy arrays; each namespace converts them exactly)


def positions_of(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 2**24
    if kind in ("int32", "int64"):
        values = np.concatenate([rng.integers(-top, top + 1, 300), [0, 1, -1, top, -top, top - 1, 4095, 4096, 65536]])
        return values.astype(kind)
    if kind in ("int8", "uint8", "int16", "uint16"):
        info = np.iinfo(kind)
        return np.concatenate([rng.integers(info.min, info.max, 100, endpoint=True), [info.min, info.max]]).astype(kind)
    if kind == "uint32":
        return np.concatenate([rng.integers(0, top + 1, 100), [0, 1, top]]).astype(kind)
    real = np.concatenate([rng.uniform(-top, top, 150), rng.uniform(-3, 3, 100), rng.uniform(-5000, 5000, 50)])
    real = np.concatenate([real, [0.0, -0.0, 0.5, -0.5, 2.0**-30, -(2.0**-40), top, -top, top - 0.25]])
    return real.astype(kind)


def wide_positions_of(kind: str, seed: int) -> np.ndarray:
    """Positions beyond 2**24, up to the dtype's limits."""
    rng = np.random.default_rng(seed)
    if kind == "int64":
        info = np.iinfo(np.int64)
        values = [info.min, info.max, info.min + 1, 2**60, -(2**60), 2**59 + 12345, 2**31, -(2**31)]
        return np.concatenate([rng.integers(info.min, info.max, 100), values]).astype(np.int64)
    if kind == "uint64":
        edges = np.array([2**64 - 1, 2**63, 2**60 - 1], dtype=np.uint64)
        return np.concatenate([rng.integers(0, 2**64 - 1, 50, dtype=np.uint64), edges])
    if kind == "int32":
        info = np.iinfo(np.int32)
        return np.concatenate([rng.integers(info.min, info.max, 100), [info.min, info.max, info.min + 1]]).astype(kind)
    if kind == "uint32":
        return np.concatenate([rng.integers(2**24, 2**32, 100), [2**32 - 1, 2**31]]).astype(kind)
    magnitudes = 2.0 ** rng.uniform(24, 100, 100)
    values = np.concatenate([magnitudes * rng.choice([-1, 1], 100), [2.0**60, 2.0**64 + 2.0**41, 1e30]])
    return values.astype(kind)


# ---------------------------------------------------------------------------------------------
# the exact reduction in each namespace


def _numpy(positions: np.ndarray, heads: Any, tails: Any) -> Any:
    import array_api_compat.numpy as xp

    constants = (xp.asarray(heads, dtype=xp.int32), xp.asarray(tails, dtype=xp.float32))
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # finite positions: no NaN, no overflow
        return exact_turn_tables(xp, positions, constants)


def _strict(positions: np.ndarray, heads: Any, tails: Any) -> Any:
    xp = pytest.importorskip("array_api_strict")
    constants = (xp.asarray(heads, dtype=xp.int32), xp.asarray(tails, dtype=xp.float32))
    return exact_turn_tables(xp, xp.asarray(positions), constants)


def _jax(positions: np.ndarray, heads: Any, tails: Any) -> Any:
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    constants = (np.asarray(heads, np.int32), np.asarray(tails, np.float32))
    wide = positions.dtype.itemsize == 8
    with jax.enable_x64(wide):  # 64-bit positions exist in JAX only with x64; everything else runs without
        compiled = jax.jit(lambda p: exact_turn_tables(jnp, p, constants))
        cos, sin = compiled(jnp.asarray(positions))
        assert cos.dtype == jnp.float32
        return np.asarray(cos), np.asarray(sin)


def _torch(positions: np.ndarray, heads: Any, tails: Any) -> Any:
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xp

    constants = (torch.tensor(heads, dtype=torch.int32), torch.tensor(tails, dtype=torch.float32))
    return exact_turn_tables(xp, torch.from_numpy(positions), constants)


NAMESPACES: dict[str, Callable[..., Any]] = {"numpy": _numpy, "array_api_strict": _strict, "jax": _jax, "torch": _torch}


def exact_turns(namespace: str, positions: np.ndarray, head_dim: int, w: float, scale: float) -> Any:
    heads, tails = turn_constants(head_dim, w, head_dim // 2, scale)
    return NAMESPACES[namespace](positions, heads, tails)


KINDS = ["int32", "int64", "int8", "uint8", "int16", "uint16", "uint32", "float32", "float64"]


@pytest.mark.parametrize("namespace", list(NAMESPACES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("head_dim", "w", "s"), CONFIGS, ids=CONFIG_IDS)
def test_exact_turns_within_bound(namespace: str, kind: str, head_dim: int, w: float, s: float) -> None:
    """|m| <= 2**24, integer or real, every integer dtype: within EXACT_TURNS_BOUND of the exact
    cos/sin, in every array namespace (JAX with x64 off for 32-bit positions)."""
    positions, exact = reference(kind, head_dim, w, s)
    assert max_error(exact_turns(namespace, positions, head_dim, w, s), exact) <= EXACT_TURNS_BOUND


@pytest.mark.parametrize("namespace", list(NAMESPACES))
@pytest.mark.parametrize(("head_dim", "w"), [(1024, 1e-3), (256, 1e-4)])
def test_exact_turns_real_positions_when_pairs_turn_fast(namespace: str, head_dim: int, w: float) -> None:
    """max_wavelength < 1: pairs turn up to hundreds of times per unit position (r_i up to about
    2**12 here), so a real position's fraction is needed far below 2**-32; within the bound at
    float64 positions with full 52-bit fractions (SPEC.md §8: the fraction to 2**-48)."""
    rng = np.random.default_rng(head_dim)
    positions = np.concatenate([rng.uniform(-3, 3, 200), rng.uniform(-5000, 5000, 100), [1 - 2.0**-52, 2.0**-45]])
    exact = exact_tables(positions, _true_revolutions(head_dim, w, 1.0))
    assert max(_true_revolutions(head_dim, w, 1.0)) >> _BITS >= 2**7  # the pairs that turn fast are there
    assert max_error(exact_turns(namespace, positions, head_dim, w, 1.0), exact) <= EXACT_TURNS_BOUND


@pytest.mark.parametrize("namespace", list(NAMESPACES))
@pytest.mark.parametrize("kind", ["int32", "uint32", "int64", "uint64", "float32", "float64"])
def test_exact_turns_reduce_exactly_at_any_position(namespace: str, kind: str) -> None:
    """Beyond 2**24, up to each dtype's limits: the reduction of m r^_i modulo one turn is exact (the
    integer part taken modulo 2**60), so the tables stay within the same bound of cos/sin of the
    exact turn of the 60-bit r^_i."""
    head_dim, w, s = 128, 1e4, 1.0
    positions = wide_positions_of(kind, 3)
    tables = exact_turns(namespace, positions, head_dim, w, s)
    assert max_error(tables, exact_tables(positions, _fixed_revolutions(head_dim, w, s))) <= EXACT_TURNS_BOUND


def test_fixed_revolutions_within_2_to_minus_60() -> None:
    """The 60-bit r^_i is r_i truncated: 0 <= r_i - r^_i < 2**-60 (hence an angle error below
    |m| 2**-59 pi radians; for |m| <= 2**24 a 2**-35 part of a float32 unit)."""
    for head_dim, w, s in CONFIGS:
        for true, fixed in zip(_true_revolutions(head_dim, w, s), _fixed_revolutions(head_dim, w, s), strict=True):
            assert 0 <= true - fixed < 1 << (_BITS - 60)


@pytest.mark.parametrize("namespace", list(NAMESPACES))
@pytest.mark.parametrize("kind", ["float32", "float64"])
def test_exact_turns_non_finite_positions(namespace: str, kind: str) -> None:
    positions = np.array([np.nan, np.inf, -np.inf, 3.0, -2.5], dtype=kind)
    cos, sin = (to_numpy(t) for t in exact_turns(namespace, positions, 8, 1e4, 1.0))
    assert np.isnan(cos[:3]).all() and np.isnan(sin[:3]).all()
    exact = exact_tables(positions[3:], _true_revolutions(8, 1e4, 1.0))
    assert max_error((cos[3:], sin[3:]), exact) <= EXACT_TURNS_BOUND


def test_exact_turns_shape_and_dtype() -> None:
    """positions [B', L] -> tables [B', L, R], float32; R = 0 gives empty tables."""
    import array_api_compat.numpy as xp

    positions = np.arange(12, dtype=np.int32).reshape(3, 4)
    for pairs in (0, 5):
        heads, tails = turn_constants(64, 1e4, pairs, 1.0)
        constants = (xp.asarray(heads, dtype=xp.int32), xp.asarray(tails, dtype=xp.float32))
        cos, sin = exact_turn_tables(xp, positions, constants)
        assert cos.shape == sin.shape == (3, 4, pairs) and cos.dtype == sin.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# the float64 reduction (devices with native float64)


def _float64_numpy(positions: np.ndarray, revolutions: tuple[float, ...]) -> Any:
    import array_api_compat.numpy as xp

    with np.errstate(invalid="ignore"):  # inf - round(inf): NaN, as SPEC.md requires
        return float64_turn_tables(xp, positions, xp.asarray(revolutions, dtype=xp.float64))


def _float64_torch(positions: np.ndarray, revolutions: tuple[float, ...]) -> Any:
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xp

    return float64_turn_tables(xp, torch.from_numpy(positions), torch.tensor(revolutions, dtype=torch.float64))


FLOAT64_NAMESPACES: dict[str, Callable[..., Any]] = {"numpy": _float64_numpy, "torch": _float64_torch}


FLOAT64_CONFIGS = [config for config in CONFIGS if config[1] >= 1.0]


@pytest.mark.parametrize("namespace", list(FLOAT64_NAMESPACES))
@pytest.mark.parametrize("kind", ["int32", "int64", "int16", "float32", "float64"])
@pytest.mark.parametrize(("head_dim", "w", "s"), FLOAT64_CONFIGS, ids=[f"H{h}-w{w:g}" for h, w, _ in FLOAT64_CONFIGS])
def test_float64_turns_within_bound(namespace: str, kind: str, head_dim: int, w: float, s: float) -> None:
    """|m| <= 2**24, integer or real, w >= 1 (so r_i <= 1/(2 pi)): within FLOAT64_TURNS_BOUND of the
    exact cos/sin."""
    positions, exact = reference(kind, head_dim, w, s)
    tables = FLOAT64_NAMESPACES[namespace](positions, float64_revolutions(head_dim, w, head_dim // 2, s))
    assert to_numpy(tables[0]).dtype == np.float32
    assert max_error(tables, exact) <= FLOAT64_TURNS_BOUND


def test_float64_turns_beyond_the_strict_range() -> None:
    """Beyond 2**24 the turn m r^_i (r^_i: r_i to 60 fractional bits, rounded to float64) carries an
    error below |m r_i| 2**-52 + |m| 2**-60: the table error stays below 2 pi times that plus the
    bound."""
    head_dim, w, s = 128, 1e4, 1.0
    positions = np.abs(wide_positions_of("float64", 4))
    positions = positions[positions < 2.0**40]
    revolutions = float64_revolutions(head_dim, w, head_dim // 2, s)
    cos, sin = (to_numpy(t).astype(np.float64) for t in _float64_numpy(positions, revolutions))
    exact = exact_tables(positions, _true_revolutions(head_dim, w, s))
    turn_error = positions[:, None] * (np.asarray(revolutions) * 2.0**-52 + 2.0**-60)
    allowed = 2 * np.pi * turn_error + FLOAT64_TURNS_BOUND
    assert (np.abs(cos - exact[0]) <= allowed).all() and (np.abs(sin - exact[1]) <= allowed).all()


def test_float64_turns_non_finite_positions() -> None:
    positions = np.array([np.nan, np.inf, -np.inf, 1.5])
    cos, sin = _float64_numpy(positions, float64_revolutions(8, 1e4, 4, 1.0))
    assert np.isnan(cos[:3]).all() and np.isnan(sin[:3]).all() and np.isfinite(cos[3]).all()
