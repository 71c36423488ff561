"""The JAX backend (p_rope.backends.jax) against the NumPy reference.

Every expected value comes from the NumPy reference (float64) through tests/helpers.py and
p_rope.tolerance, or is hand-derived; outputs of the backend are compared with other outputs of the
backend only where SPEC.md states an identity (q/k against two calls, tables reuse, KV-cache slices,
packed sequences). Device-parametrized tests run as ``jax:cpu``, ``jax:cuda`` and ``jax:tpu``;
absent devices skip visibly. float64 runs inside ``jax.enable_x64(True)``; the process-wide x64
flag is never flipped.

Covered: agreement at SPEC.md's strict level across dtypes, p (0, tiny, 0.25, 0.5, 0.58, 1), H
(2 to 1024), pairing, seq_axis, scale_factor, per-row offsets and integer/real positions up to
2**24; the float32 tables' accuracy; jit with static parameters and no retrace when positions
change; vmap; gradients (the VJP is the reference at -positions applied to the cotangent, only
[..., L, R] residuals, exact gradients in float positions and tables, check_grads in float64);
sharded inputs (two host devices, in a subprocess); device placement; errors and their messages,
also under jit; q/k with one table build; tables reused across layers; KV-cache decoding and
packed sequences; special values and empty arrays; XLA's in-place buffer reuse; inline dispatch
(jax_cpu_enable_async_dispatch off) gives the same bits.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import p_rope
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from p_rope.backends import jax as pj

from tests.helpers import (
    AGREEMENT_CONFIGS,
    MAX_POSITION,
    NP_DTYPES,
    assert_conforms,
    integer_positions,
    layout,
    normal,
)

TABLE_BOUND = 2.5 * 2.0**-24  # SPEC.md §8: float32 tables within 2.5 float32 units of cos/sin
DTYPES = list(NP_DTYPES)


# ---------------------------------------------------------------------------------------------
# devices and conversions


@pytest.fixture(
    params=[
        pytest.param("cpu", id="jax:cpu"),
        pytest.param("cuda", id="jax:cuda"),
        pytest.param("tpu", id="jax:tpu"),
    ]
)
def device(request: pytest.FixtureRequest) -> Any:
    name = request.param
    backend = {"cpu": "cpu", "cuda": "gpu", "tpu": "tpu"}[name]
    try:
        return jax.devices(backend)[0]
    except RuntimeError:
        pytest.skip(f"{name} not available (jax has no {backend} device)")


def device_name(device: Any) -> str:
    """The device name tests/helpers.py expects: cpu, cuda or tpu."""
    return {"gpu": "cuda"}.get(device.platform, device.platform)


@contextlib.contextmanager
def x64_if(enabled: bool) -> Iterator[None]:
    """float64 arrays exist in JAX only with x64: enabled for the block, never process-wide."""
    if enabled:
        with jax.enable_x64(True):
            yield
    else:
        yield


def to_jax(array: np.ndarray, device: Any = None) -> jax.Array:
    """A JAX copy of a NumPy array on device (int64 as int32 unless x64 is on)."""
    if array.dtype == np.int64 and not jax.config.read("jax_enable_x64"):
        assert np.abs(array).max(initial=0) < 2**31
        array = array.astype(np.int32)
    return jax.device_put(array, device if device is not None else jax.devices("cpu")[0])


def bits(array: Any) -> np.ndarray:
    """Bit patterns, for bit-for-bit comparisons (NaN payloads, -0.0)."""
    a = np.ascontiguousarray(np.asarray(array))
    return a.view(f"u{a.dtype.itemsize}")


def rotated_lanes(head_dim: int, pairs: int, pairing: str) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(pairs)
    return (i, i + head_dim // 2) if pairing == "split_half" else (2 * i, 2 * i + 1)


# ---------------------------------------------------------------------------------------------
# agreement with the reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("head_dim", "p", "w", "pairing", "seq_axis", "scale", "pairs"), AGREEMENT_CONFIGS)
def test_agrees_with_reference(
    device: Any,
    dtype: str,
    head_dim: int,
    p: float,
    w: float,
    pairing: str,
    seq_axis: int,
    scale: float,
    pairs: int | None,
) -> None:
    if dtype == "float64" and device.platform == "tpu":
        pytest.skip("tpu has no float64")
    rng = np.random.default_rng(head_dim * 7 + len(dtype))
    heads = max(1, 8192 // (head_dim * 16))
    x = normal(rng, layout((2,), 16, heads, head_dim, seq_axis), dtype)
    positions = integer_positions(rng, (2, 16))  # per-row positions
    kwargs: dict[str, Any] = dict(scale_factor=scale, pairing=pairing, seq_axis=seq_axis)
    if pairs is not None:
        kwargs["rotated_pairs"] = pairs
    with x64_if(dtype == "float64"):
        out = pj.apply_p_rope(to_jax(x, device), to_jax(positions, device), head_dim, w, p, **kwargs)
        assert_conforms(out, x, positions, head_dim, w, p, level="strict", device=device_name(device), **kwargs)


@pytest.mark.parametrize(("small_bytes", "slices"), [(0, False), (1 << 40, True)], ids=["one-pass", "lane-slices"])
@pytest.mark.parametrize("pairing", ["split_half", "interleaved"])
def test_both_routes_without_nope_lanes(
    monkeypatch: pytest.MonkeyPatch, small_bytes: int, slices: bool, pairing: str
) -> None:
    """With every lane rotated, inputs above _SMALL_BYTES take one fused pass and smaller ones (on
    the CPU) write each lane's slice into a copy of x: both conform, whatever the size."""
    monkeypatch.setattr(pj, "_SMALL_BYTES", small_bytes)  # read at trace time
    monkeypatch.setattr(pj, "_SMALL_TABLE_ENTRIES", 0)  # tables without their dynamic-update-slice
    jax.clear_caches()
    rng = np.random.default_rng(23)
    for seq_axis in (-3, -2):
        x = normal(rng, layout((3,), 11, 5, 24, seq_axis), "float32")
        positions = integer_positions(rng, (3, 11))
        kwargs: dict[str, Any] = dict(pairing=pairing, seq_axis=seq_axis)
        rotate = functools.partial(pj.apply_p_rope, head_dim=24, max_wavelength=1e4, rope_percentage=1.0, **kwargs)
        jaxpr = str(jax.make_jaxpr(rotate)(x, positions))
        assert ("dynamic_update_slice" in jaxpr) is slices
        out = pj.apply_p_rope(jnp.asarray(x), jnp.asarray(positions), 24, 1e4, 1.0, **kwargs)
        assert_conforms(out, x, positions, 24, 1e4, 1.0, level="strict", device="cpu", **kwargs)
    jax.clear_caches()


@pytest.mark.parametrize("positions_dtype", ["float32", "float64"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_real_positions_strict(device: Any, dtype: str, positions_dtype: str) -> None:
    rng = np.random.default_rng(3)
    x = normal(rng, (3, 40, 2, 256), dtype)
    positions = rng.uniform(-MAX_POSITION, MAX_POSITION, size=(3, 40))
    positions[0] = rng.uniform(-4, 4, size=40)  # small, with many fraction bits
    positions[1, :8] = [0.5, -0.5, 1e-7, -1e-30, 2.0**24, -(2.0**24), 4096.25, -12345.678]
    positions = positions.astype(positions_dtype)
    with x64_if(positions_dtype == "float64"):
        if positions_dtype == "float64" and device.platform == "tpu":
            pytest.skip("tpu has no float64")
        out = pj.apply_p_rope(to_jax(x, device), to_jax(positions, device), 256, 1e6, 0.5, scale_factor=1.5)
        assert out.dtype == x.dtype
        assert_conforms(out, x, positions, 256, 1e6, 0.5, scale_factor=1.5, level="strict", device=device_name(device))


@pytest.mark.parametrize(("head_dim", "w", "scale"), [(8, 2.0, 1.0), (512, 1e6, 8.0), (1024, 1e7, 1.0)])
def test_float32_tables_within_spec_bound(head_dim: int, w: float, scale: float) -> None:
    """float32 tables (built under jit, where XLA could reassociate) within SPEC.md's bound of the
    exact cosine and sine, for integer and real positions up to 2**24 in magnitude."""
    rng = np.random.default_rng(head_dim)
    integers = np.concatenate(
        [rng.integers(-MAX_POSITION, MAX_POSITION + 1, 4000), MAX_POSITION - np.arange(64), [0, 1, -1]]
    )
    reals = np.concatenate([rng.uniform(-MAX_POSITION, MAX_POSITION, 2000), rng.uniform(-3, 3, 500)])
    for positions in (integers, reals.astype(np.float32)):
        tables = pj.p_rope_tables(to_jax(positions), head_dim, w, scale_factor=scale)
        exact = p_rope.p_rope_tables(positions, head_dim, w, scale_factor=scale)
        assert tables.cos.dtype == jnp.float32 and tables.cos.shape == exact.cos.shape
        assert np.abs(np.asarray(tables.cos, np.float64) - exact.cos).max() <= TABLE_BOUND
        assert np.abs(np.asarray(tables.sin, np.float64) - exact.sin).max() <= TABLE_BOUND


@pytest.mark.parametrize("positions_dtype", ["int8", "uint16", "uint32", "int64"])
def test_integer_position_dtypes(positions_dtype: str) -> None:
    rng = np.random.default_rng(11)
    info = np.iinfo(positions_dtype)
    positions = rng.integers(max(info.min, -MAX_POSITION), min(info.max, MAX_POSITION), (2, 24))
    positions = positions.astype(positions_dtype)
    x = normal(rng, (2, 24, 2, 64), "float32")
    with x64_if(positions_dtype == "int64"):
        out = pj.apply_p_rope(to_jax(x), jax.device_put(positions), 64, 10_000.0, 0.75)
        assert_conforms(out, x, positions, 64, 10_000.0, 0.75, level="strict", device="cpu")


def test_float32_positions_beyond_int32_are_conformant() -> None:
    """Beyond 2**24 only the conformant level applies; the reduction stays exact to 2**32 and
    keeps conforming far beyond."""
    rng = np.random.default_rng(5)
    positions = np.concatenate([rng.uniform(2**24, 2**32, 16), -rng.uniform(2**31, 2**40, 16)]).astype(np.float32)
    x = normal(rng, (32, 2, 128), "float32")
    out = pj.apply_p_rope(to_jax(x), to_jax(positions), 128)
    assert_conforms(out, x, positions, 128, level="conformant", device="cpu")


# ---------------------------------------------------------------------------------------------
# jit, vmap


def test_jit_no_retrace_when_positions_change() -> None:
    rng = np.random.default_rng(0)
    x = normal(rng, (2, 8, 3, 64), "float32")
    traces = 0

    @jax.jit
    def rope(inputs: jax.Array, positions: jax.Array) -> jax.Array:
        nonlocal traces
        traces += 1
        return pj.apply_p_rope(inputs, positions, 64, 10_000.0, 0.5, seq_axis=-3)

    for offset in (0, 17, 2**20, MAX_POSITION - 8):
        positions = offset + np.arange(8)[None] + np.array([[0], [3]])
        out = rope(to_jax(x), to_jax(positions))
        assert_conforms(out, x, positions, 64, 10_000.0, 0.5, level="strict", device="cpu")
    assert traces == 1


def test_eager_calls_compile_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager calls run one cached program: the tables are traced once, not once per call."""
    builds = 0
    build = pj._build_tables

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal builds
        builds += 1
        return build(*args, **kwargs)

    monkeypatch.setattr(pj, "_build_tables", counting)
    x = to_jax(normal(np.random.default_rng(1), (5, 2, 32), "float32"))
    pj.apply_p_rope(x, to_jax(np.arange(5)), 32, 3210.0)  # parameters unused elsewhere: a new trace
    traced = builds
    assert traced > 0
    for offset in (1, 99, 12345):
        pj.apply_p_rope(x, to_jax(np.arange(5) + offset), 32, 3210.0)
    assert builds == traced


def test_jit_with_static_parameters() -> None:
    rope = jax.jit(
        pj.apply_p_rope, static_argnames=("head_dim", "max_wavelength", "rope_percentage", "pairing", "seq_axis")
    )
    rng = np.random.default_rng(2)
    x = normal(rng, (1, 4, 6, 16), "bfloat16")
    positions = np.arange(6)[None] + 1000
    out = rope(to_jax(x), to_jax(positions), head_dim=16, max_wavelength=100.0, rope_percentage=0.5, seq_axis=-2)
    assert_conforms(out, x, positions, 16, 100.0, 0.5, seq_axis=-2, level="strict", device="cpu")


def test_vmap_matches_reference_per_row() -> None:
    rng = np.random.default_rng(4)
    x = normal(rng, (3, 10, 2, 32), "float32")
    positions = integer_positions(rng, (3, 10))
    out = jax.vmap(lambda a, b: pj.apply_p_rope(a, b, 32, 10_000.0, 0.5))(to_jax(x), to_jax(positions))
    for row in range(3):
        assert_conforms(out[row], x[row], positions[row], 32, 10_000.0, 0.5, level="strict", device="cpu")
    shared = jax.vmap(lambda a: pj.apply_p_rope(a, to_jax(positions[0]), 32, pairing="interleaved"))(to_jax(x))
    for row in range(3):
        assert_conforms(shared[row], x[row], positions[0], 32, pairing="interleaved", level="strict", device="cpu")


# ---------------------------------------------------------------------------------------------
# autodiff


@pytest.mark.parametrize(
    ("dtype", "pairing", "seq_axis"), [("float32", "split_half", -3), ("bfloat16", "interleaved", -2)]
)
def test_vjp_is_the_reference_at_negated_positions(device: Any, dtype: str, pairing: str, seq_axis: int) -> None:
    """The transpose of a rotation is the rotation by the opposite angle: the VJP of a cotangent g
    is p-RoPE of g at -positions (SPEC.md §4), graded like any output."""
    rng = np.random.default_rng(7)
    x = normal(rng, layout((2,), 12, 3, 128, seq_axis), dtype)
    g = normal(rng, x.shape, dtype)
    positions = integer_positions(rng, (2, 12))
    kwargs: dict[str, Any] = dict(pairing=pairing, seq_axis=seq_axis, scale_factor=2.0)
    pos = to_jax(positions, device)
    out, vjp = jax.vjp(lambda v: pj.apply_p_rope(v, pos, 128, 1e6, 0.25, **kwargs), to_jax(x, device))
    assert_conforms(out, x, positions, 128, 1e6, 0.25, level="strict", device=device_name(device), **kwargs)
    (g_x,) = vjp(to_jax(g, device))
    assert_conforms(g_x, g, -positions, 128, 1e6, 0.25, level="strict", device=device_name(device), **kwargs)


def test_vjp_saves_only_the_tables() -> None:
    rng = np.random.default_rng(8)
    x = to_jax(normal(rng, (2, 16, 4, 64), "float32"))
    positions = to_jax(np.arange(16)[None] + np.array([[0], [100]]))
    pairs = pj.rotated_pair_count(64, 0.5)
    for fn in (
        lambda v: pj.apply_p_rope(v, positions, 64, 10_000.0, 0.5),
        lambda v: pj.apply_p_rope_tables(v, pj.p_rope_tables(positions, 64, 10_000.0, 0.5)),
        lambda v: pj.apply_p_rope_qk(v, v[..., :2, :], positions, 64, 10_000.0, 0.5)[0],
    ):
        _, vjp = jax.vjp(fn, x)
        residuals = [leaf for leaf in jax.tree_util.tree_leaves(vjp) if hasattr(leaf, "shape")]
        assert residuals, "expected the tables as residuals"
        for leaf in residuals:
            assert leaf.shape == (2, 16, pairs), leaf.shape  # positions.shape + (R,), nothing of x's size


def test_grad_in_float_positions_and_tables() -> None:
    """d/dm <g, f(x, m)> = sum freq_i (g2 y1 - g1 y2) and d/dcos, d/dsin by hand, from the reference."""
    rng = np.random.default_rng(9)
    head_dim, w, p = 32, 500.0, 0.5
    x = normal(rng, (2, 6, 3, head_dim), "float32")
    g = normal(rng, x.shape, "float32")
    positions = rng.uniform(-300, 300, (2, 6)).astype(np.float32)
    first, second = rotated_lanes(head_dim, pj.rotated_pair_count(head_dim, p), "split_half")
    freq = p_rope.frequencies(head_dim, w, p)[: first.size]
    y = p_rope.apply_p_rope(x.astype(np.float64), positions, head_dim, w, p)
    g64, x64 = g.astype(np.float64), x.astype(np.float64)
    expect = ((g64[..., second] * y[..., first] - g64[..., first] * y[..., second]) * freq).sum(axis=(-1, -2))

    def loss(m: jax.Array) -> jax.Array:
        return jnp.sum(pj.apply_p_rope(to_jax(x), m, head_dim, w, p) * to_jax(g))

    got = np.asarray(jax.grad(loss)(to_jax(positions)), np.float64)
    scale = (np.abs(g64[..., first]) * np.abs(y[..., second]) * freq).sum(axis=(-1, -2)) + 1.0
    np.testing.assert_array_less(np.abs(got - expect), 64 * 2.0**-24 * scale)

    tables = pj.p_rope_tables(to_jax(positions), head_dim, w, p)
    g_cos, g_sin = jax.grad(
        lambda c, s: jnp.sum(pj.apply_p_rope_tables(to_jax(x), pj.RopeTables(c, s)) * to_jax(g)), argnums=(0, 1)
    )(tables.cos, tables.sin)
    x1, x2, g1, g2 = x64[..., first], x64[..., second], g64[..., first], g64[..., second]
    np.testing.assert_allclose(np.asarray(g_cos), (g1 * x1 + g2 * x2).sum(-2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g_sin), (g2 * x1 - g1 * x2).sum(-2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("pairing", "order"), [("split_half", 2), ("interleaved", 1)])
def test_check_grads_float64(pairing: str, order: int) -> None:
    """Numerical against analytic derivatives in float64, in the inputs, float positions and tables
    (order 2: the backward pass is itself differentiable)."""
    rng = np.random.default_rng(10)
    with jax.enable_x64(True):
        x = to_jax(rng.standard_normal((2, 5, 3, 8)))
        positions = to_jax(rng.uniform(-50, 50, (2, 5)))
        tables = pj.p_rope_tables(positions, 8, 100.0, 0.5, dtype=jnp.float64)
        check_grads(
            lambda v, m: pj.apply_p_rope(v, m, 8, 100.0, 0.5, pairing=pairing), (x, positions), 1, modes=("rev",)
        )
        if order == 2:
            check_grads(
                lambda v: pj.apply_p_rope(v, positions, 8, 100.0, 0.5, pairing=pairing), (x,), 2, modes=("rev",)
            )
        check_grads(
            lambda v, c, s: pj.apply_p_rope_tables(v, pj.RopeTables(c, s), pairing=pairing, seq_axis=-2),
            (x.transpose(0, 2, 1, 3), tables.cos, tables.sin),
            1,
            modes=("rev",),
        )


def test_forward_mode_is_not_available() -> None:
    """A custom VJP excludes jax.jvp; say so loudly rather than differentiate the kernel."""
    x = to_jax(normal(np.random.default_rng(0), (1, 2, 1, 4), "float32"))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda v: pj.apply_p_rope(v, to_jax(np.arange(2)), 4), (x,), (x,))


# ---------------------------------------------------------------------------------------------
# devices and sharding


def test_outputs_follow_the_inputs_device() -> None:
    cpu = jax.devices("cpu")[0]
    x = normal(np.random.default_rng(12), (1, 3, 2, 8), "float16")
    out = pj.apply_p_rope(jax.device_put(x, cpu), [[5, 6, 7]], 8, 100.0)
    assert out.devices() == {cpu}
    assert_conforms(out, x, np.array([[5, 6, 7]]), 8, 100.0, level="strict", device="cpu")


SHARDING_SCRIPT = textwrap.dedent(
    """
    import numpy as np, jax, p_rope
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from p_rope import tolerance
    from p_rope.backends import jax as pj

    devices = jax.devices()
    assert len(devices) == 2, devices
    mesh = Mesh(np.array(devices), ("d",))
    rng = np.random.default_rng(0)

    def check(out, x, positions, **kwargs):
        grade = tolerance.grade(np.asarray(out), x, positions, 128, 1e6, 0.25, **kwargs)
        assert grade.nope_identical and grade.ratio["strict"] <= 1.0, grade

    # batch-sharded and head-sharded inputs keep their sharding, eagerly and under jit
    rope = jax.jit(pj.apply_p_rope, static_argnums=(2, 3, 4), static_argnames="seq_axis")
    for spec, seq_axis, fn in ((P("d"), -3, rope), (P(None, None, "d"), -3, pj.apply_p_rope), (P(None, "d"), -2, rope)):
        x = rng.standard_normal((4, 6, 6, 128)).astype(np.float32)
        positions = rng.integers(0, 2**24, (4, 6))
        xs = jax.device_put(x, NamedSharding(mesh, spec))
        pos = jax.device_put(positions.astype(np.int32), NamedSharding(mesh, P("d"))) if fn is rope else positions
        out = fn(xs, pos, 128, 1e6, 0.25, seq_axis=seq_axis)
        assert out.sharding.is_equivalent_to(xs.sharding, x.ndim), (spec, out.sharding)
        check(out, x, positions, seq_axis=seq_axis)
    _, vjp = jax.vjp(lambda v: pj.apply_p_rope(v, positions, 128, 1e6, 0.25, seq_axis=seq_axis), xs)
    (g,) = vjp(xs)
    assert g.sharding.is_equivalent_to(xs.sharding, x.ndim), (spec, g.sharding)
    check(g, x, -positions, seq_axis=seq_axis)

    # single-device inputs stay on their device, wherever the positions live
    x = rng.standard_normal((2, 5, 2, 128)).astype(np.float32)
    positions = np.arange(5)[None] + np.array([[0], [9]])
    for here, there in ((devices[1], devices[0]), (devices[0], devices[1])):
        out = pj.apply_p_rope(jax.device_put(x, here), jax.device_put(positions, there), 128, 1e6, 0.25)
        assert out.devices() == {here}, (out.devices(), here)
        check(out, x, positions)
        tables = pj.p_rope_tables(jax.device_put(positions, there), 128, 1e6, 0.25)
        out = pj.apply_p_rope_tables(jax.device_put(x, here), tables)
        assert out.devices() == {here}, (out.devices(), here)
        check(out, x, positions)

    # q and k on different devices: SPEC's error (the one check that reads devices)
    try:
        pj.apply_p_rope_qk(jax.device_put(x, devices[0]), jax.device_put(x, devices[1]), positions, 128)
    except ValueError as error:
        assert "q and k must be on the same device" in str(error), error
    else:
        raise AssertionError("q and k on different devices were accepted")
    print("sharding ok")
    """
)


def test_sharded_inputs_keep_their_sharding() -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sharding ok" in result.stdout


INLINE_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    import p_rope.backends.jax as pj

    jax.config.update("jax_cpu_enable_async_dispatch", False)  # before JAX's first computation
    rng = np.random.default_rng(7)
    x = rng.standard_normal((32, 1, 8, 512)).astype(np.float32)
    positions = rng.integers(0, 32768, (32, 1))
    tables = pj.p_rope_tables(positions, 512, 1e6, 0.25)
    outputs = (pj.apply_p_rope(x, positions, 512, 1e6, 0.25), pj.apply_p_rope_tables(x, tables), *tables)
    np.save(sys.stdout.buffer, np.concatenate([np.asarray(o).reshape(-1) for o in outputs]))
    """
)


def test_inline_dispatch_gives_the_same_bits() -> None:
    """SPEC.md's JAX note: with jax_cpu_enable_async_dispatch off (computations inline on the calling
    thread), the outputs are bit for bit those of the default dispatch (checked here, on XLA:CPU)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", INLINE_SCRIPT], capture_output=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    inline = np.load(io.BytesIO(result.stdout))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((32, 1, 8, 512)).astype(np.float32)
    positions = rng.integers(0, 32768, (32, 1))
    cpu = jax.devices("cpu")[0]
    x, positions = jax.device_put(x, cpu), jax.device_put(positions.astype(np.int32), cpu)
    tables = pj.p_rope_tables(positions, 512, 1e6, 0.25)
    outputs = (pj.apply_p_rope(x, positions, 512, 1e6, 0.25), pj.apply_p_rope_tables(x, tables), *tables)
    default = np.concatenate([np.asarray(o).reshape(-1) for o in outputs])
    assert inline.dtype == default.dtype == np.float32
    np.testing.assert_array_equal(inline.view(np.uint32), default.view(np.uint32))
    assert_conforms(outputs[0], np.asarray(x), np.asarray(positions), 512, 1e6, 0.25, level="strict")


# ---------------------------------------------------------------------------------------------
# errors (SPEC.md §9): the reference's exception type and message, raised before any work


def error_cases() -> list[Any]:
    x = np.zeros((1, 3, 2, 4), np.float32)
    pos = np.arange(3)
    tables = p_rope.p_rope_tables(pos, 4, dtype=np.float32)
    cases: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = [
        ("head_dim-type", "apply_p_rope", (x, pos, 4.0), {}),
        ("head_dim-odd", "apply_p_rope", (x, pos, 5), {}),
        ("head_dim-zero", "apply_p_rope", (x, pos, 0), {}),
        ("inputs-dtype", "apply_p_rope", (x.astype(np.int32), pos, 4), {}),
        ("inputs-rank", "apply_p_rope", (np.zeros((3, 4), np.float32), pos, 4), {}),
        ("head_dim-mismatch", "apply_p_rope", (x, pos, 8), {}),
        ("rotated_pairs-type", "apply_p_rope", (x, pos, 4), {"rotated_pairs": 1.0}),
        ("rotated_pairs-range", "apply_p_rope", (x, pos, 4), {"rotated_pairs": 3}),
        ("rope_percentage-type", "apply_p_rope", (x, pos, 4, 100.0, "0.5"), {}),
        ("rope_percentage-range", "apply_p_rope", (x, pos, 4, 100.0, 1.5), {}),
        ("rope_percentage-nan", "apply_p_rope", (x, pos, 4, 100.0, float("nan")), {}),
        ("rotated_pairs-and-rope_percentage", "apply_p_rope", (x, pos, 4, 100.0, 0.5), {"rotated_pairs": 1}),
        ("max_wavelength-type", "apply_p_rope", (x, pos, 4, None), {}),
        ("max_wavelength-nonpositive", "apply_p_rope", (x, pos, 4, 0), {}),
        ("max_wavelength-nonfinite", "apply_p_rope", (x, pos, 4, float("inf")), {}),
        ("scale_factor-type", "apply_p_rope", (x, pos, 4), {"scale_factor": "2"}),
        ("scale_factor-below-1", "apply_p_rope", (x, pos, 4), {"scale_factor": 0.5}),
        ("scale_factor-nonfinite", "apply_p_rope", (x, pos, 4), {"scale_factor": float("nan")}),
        ("pairing", "apply_p_rope", (x, pos, 4), {"pairing": "rotate_half"}),
        ("seq_axis", "apply_p_rope", (x, pos, 4), {"seq_axis": 1}),
        ("positions-dtype", "apply_p_rope", (x, pos.astype(bool), 4), {}),
        ("positions-complex", "apply_p_rope", (x, pos.astype(np.complex64), 4), {}),
        ("positions-16bit", "apply_p_rope", (x, pos.astype(np.float16), 4), {}),
        ("positions-bfloat16", "apply_p_rope", (x, pos.astype(ml_dtypes.bfloat16), 4), {}),
        ("positions-shape", "apply_p_rope", (np.zeros((2, 4, 1, 4), np.float32), pos, 4), {}),
        ("qk-batch", "apply_p_rope_qk", (x, np.zeros((1, 2, 2, 4), np.float32), pos, 4), {}),
        ("qk-k-dtype", "apply_p_rope_qk", (x, x.astype(np.int8), pos, 4), {}),
        ("tables-type", "apply_p_rope_tables", (x, {"cos": 1}), {}),
        ("tables-shape-mismatch", "apply_p_rope_tables", (x, p_rope.RopeTables(tables.cos, tables.sin[:, :1])), {}),
        ("tables-too-wide", "apply_p_rope_tables", (x, p_rope.RopeTables(*p_rope.p_rope_tables(pos, 10))), {}),
        ("tables-dtype", "apply_p_rope_tables", (x, p_rope.RopeTables(*(t.astype(np.float16) for t in tables))), {}),
        ("tables-shape", "apply_p_rope_tables", (x, p_rope.p_rope_tables(np.arange(4), 4, dtype=np.float32)), {}),
        ("tables-pairing", "apply_p_rope_tables", (x, tables), {"pairing": "neox"}),
        ("dtype", "p_rope_tables", (pos, 4), {"dtype": np.float16}),
        ("tables-rope_percentage", "p_rope_tables", (pos, 4, 10.0, -0.1), {}),
        ("frequencies-dtype", "frequencies", (4,), {"dtype": np.int32}),
        ("frequencies-head_dim", "frequencies", (3,), {}),
        ("count-rope_percentage", "rotated_pair_count", (4, 2.0), {}),
    ]
    return [pytest.param(name, args, kwargs, id=case) for case, name, args, kwargs in cases]


def as_jax_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    def convert(value: Any) -> Any:
        if isinstance(value, np.ndarray) and value.dtype != np.int64:
            return jnp.asarray(value)
        if isinstance(value, np.ndarray):
            return jnp.asarray(value.astype(np.int32))
        if isinstance(value, tuple) and type(value) is not tuple:  # RopeTables
            return type(value)(*(convert(v) for v in value))
        return value

    return tuple(convert(a) for a in args)


def reference_error(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BaseException:
    with pytest.raises((TypeError, ValueError)) as caught:
        getattr(p_rope, name)(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize(("name", "args", "kwargs"), error_cases())
def test_errors_match_the_reference(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    expected = reference_error(name, args, kwargs)
    with pytest.raises(type(expected), match=re.escape(str(expected))):
        getattr(pj, name)(*as_jax_args(args), **kwargs)


@pytest.mark.parametrize(("name", "args", "kwargs"), [c for c in error_cases() if c.values[0] == "apply_p_rope"])
def test_errors_under_jit(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Under jit the static checks (shapes, dtypes, parameters) raise at trace time, with the
    reference's message; arrays are traced, everything else is static."""
    expected = reference_error(name, args, kwargs)
    inputs, positions, *rest = as_jax_args(args)
    traced = jax.jit(lambda a, b: pj.apply_p_rope(a, b, *rest, **kwargs))
    with pytest.raises(type(expected), match=re.escape(str(expected))):
        traced(inputs, positions)


@pytest.mark.parametrize("head_dim", [8.0, True, np.float64(8.0)])
def test_memoized_checks_keep_the_errors(head_dim: object) -> None:
    """The backend memoizes its checks on the arguments and their types: a value equal to one that
    passed (8.0 == True * 8 == 8) still raises the reference's error, and unhashable arguments are
    checked unmemoized."""
    x, positions = jnp.zeros((2, 3, 1, 8)), jnp.arange(6).reshape(2, 3)
    pj.apply_p_rope(x, positions, 8)
    expected = reference_error("apply_p_rope", (np.zeros((2, 3, 1, 8)), np.arange(6).reshape(2, 3), head_dim), {})
    with pytest.raises(type(expected), match=re.escape(str(expected))):
        pj.apply_p_rope(x, positions, head_dim)
    expected = reference_error("apply_p_rope", (np.zeros((2, 3, 1, 8)), np.arange(6).reshape(2, 3), 8), {"pairing": []})
    with pytest.raises(type(expected), match=re.escape(str(expected))):
        pj.apply_p_rope(x, positions, 8, pairing=[])  # type: ignore[arg-type]


def test_backend_specific_errors() -> None:
    """SPEC.md §9, backend-specific rows: non-arrays, float64 without x64; and no in-place variant."""
    x = jnp.zeros((1, 3, 2, 4))
    with pytest.raises(TypeError, match=re.escape("inputs must be an array; got list")):
        pj.apply_p_rope([[[[0.0] * 4] * 2] * 3], np.arange(3), 4)
    with pytest.raises(TypeError, match=re.escape("positions must be an array; got list")):
        pj.p_rope_tables([0, 1, 2], 4)
    message = "is float64, which JAX holds only with jax_enable_x64 on; got dtype float64"
    with pytest.raises(TypeError, match=re.escape("inputs " + message)):
        pj.apply_p_rope(np.zeros((1, 3, 2, 4)), np.arange(3), 4)  # float64 NumPy inputs, x64 off
    with pytest.raises(TypeError, match=re.escape("k " + message)):
        pj.apply_p_rope_qk(x, np.zeros((1, 3, 2, 4)), np.arange(3), 4)
    with pytest.raises(TypeError, match="jax_enable_x64"):
        pj.p_rope_tables(jnp.arange(3), 4, dtype=np.float64)
    with pytest.raises(TypeError, match="jax_enable_x64"):
        pj.frequencies(4, dtype=np.float64)
    assert not hasattr(pj, "apply_p_rope_")  # JAX arrays are immutable (SPEC.md §5)
    with jax.enable_x64(True):
        x64 = jnp.zeros((1, 3, 2, 4), jnp.float64)
        tables = pj.p_rope_tables(jnp.arange(3), 4)
        with pytest.raises(TypeError, match=re.escape("tables are float32 but inputs are float64")):
            pj.apply_p_rope_tables(x64, tables)


# ---------------------------------------------------------------------------------------------
# q and k, tables across layers, decoding, packed sequences


def test_qk_one_table_build(device: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(13)
    q = normal(rng, (2, 9, 4, 64), "bfloat16")
    k = normal(rng, (2, 9, 2, 64), "float32")  # fewer heads, another dtype
    positions = integer_positions(rng, (2, 9))
    q_out, k_out = pj.apply_p_rope_qk(to_jax(q, device), to_jax(k, device), to_jax(positions, device), 64, 5e5, 0.5)
    assert_conforms(q_out, q, positions, 64, 5e5, 0.5, level="strict", device=device_name(device))
    assert_conforms(k_out, k, positions, 64, 5e5, 0.5, level="strict", device=device_name(device))
    # SPEC.md §5: equals two calls of apply_p_rope
    q_ref = pj.apply_p_rope(to_jax(q, device), to_jax(positions, device), 64, 5e5, 0.5)
    k_ref = pj.apply_p_rope(to_jax(k, device), to_jax(positions, device), 64, 5e5, 0.5)
    assert np.array_equal(bits(q_out), bits(q_ref)) and np.array_equal(bits(k_out), bits(k_ref))
    # one table build per call, as for a single input: counted while tracing fresh parameters
    builds: list[int] = []
    build = pj._build_tables

    def counting(*args: Any, **kwargs: Any) -> Any:
        builds.append(1)
        return build(*args, **kwargs)

    monkeypatch.setattr(pj, "_build_tables", counting)
    jax.make_jaxpr(lambda a, b, m: pj.apply_p_rope(a, m, 64, 7777.0))(q, k, positions.astype(np.int32))
    single = len(builds)
    jax.make_jaxpr(lambda a, b, m: pj.apply_p_rope_qk(a, b, m, 64, 7778.0))(q, k, positions.astype(np.int32))
    assert single > 0 and len(builds) == 2 * single


def test_tables_reused_across_layers(device: Any) -> None:
    rng = np.random.default_rng(14)
    positions = integer_positions(rng, (1, 20))
    tables = pj.p_rope_tables(to_jax(positions, device), 512, 1e6, 0.25)
    for layer, seq_axis in enumerate((-3, -2, -3)):
        x = normal(rng, layout((1,), 20, 2 + layer, 512, seq_axis), "float32")
        out = pj.apply_p_rope_tables(to_jax(x, device), tables, seq_axis=seq_axis)
        where = device_name(device)
        assert_conforms(out, x, positions, 512, 1e6, 0.25, seq_axis=seq_axis, level="strict", device=where)
        direct = pj.apply_p_rope(to_jax(x, device), to_jax(positions, device), 512, 1e6, 0.25, seq_axis=seq_axis)
        assert np.array_equal(bits(out), bits(direct))

    def layers(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        def layer(h: jax.Array, _: None) -> tuple[jax.Array, None]:
            return pj.apply_p_rope_tables(h, pj.RopeTables(cos, sin)) * 1.0, None

        return jax.lax.scan(layer, x, None, length=3)[0]

    x = normal(rng, (1, 20, 2, 512), "float32")
    out = jax.jit(layers)(to_jax(x, device), tables.cos, tables.sin)
    assert_conforms(out, x, 3 * positions, 512, 1e6, 0.25, level="strict", device=device_name(device))


def test_kv_cache_decoding(device: Any) -> None:
    """One token per row at per-row cache offsets equals the slice of the full-sequence result."""
    rng = np.random.default_rng(15)
    offsets = np.array([0, 5, 2**20, MAX_POSITION - 40])
    length = 32
    x = normal(rng, (4, length, 8, 512), "bfloat16")
    positions = offsets[:, None] + np.arange(length)
    full = pj.apply_p_rope(to_jax(x, device), to_jax(positions, device), 512, 1e6, 0.25)
    assert_conforms(full, x, positions, 512, 1e6, 0.25, level="strict", device=device_name(device))
    step = jax.jit(lambda a, m: pj.apply_p_rope(a, m, 512, 1e6, 0.25))
    for t in (0, 1, length - 1):
        token = step(to_jax(x[:, t : t + 1], device), to_jax(positions[:, t : t + 1], device))
        assert np.array_equal(bits(token), bits(np.asarray(full)[:, t : t + 1]))


def test_packed_sequences(device: Any) -> None:
    """Positions restart at each packed sequence: the result equals each sequence on its own."""
    rng = np.random.default_rng(16)
    lengths = [5, 1, 26]
    positions = np.concatenate([np.arange(n) for n in lengths])[None].repeat(2, 0)
    positions[1] += 1000  # per-row offsets
    x = normal(rng, (2, 32, 4, 128), "float32")
    out = np.asarray(pj.apply_p_rope(to_jax(x, device), to_jax(positions, device), 128, 1e4, 0.5, seq_axis=-3))
    assert_conforms(out, x, positions, 128, 1e4, 0.5, level="strict", device="cpu")
    start = 0
    for n in lengths:
        piece = slice(start, start + n)
        alone = pj.apply_p_rope(to_jax(x[:, piece], device), to_jax(positions[:, piece], device), 128, 1e4, 0.5)
        assert np.array_equal(bits(alone), bits(out[:, piece]))
        start += n


# ---------------------------------------------------------------------------------------------
# special values, empty arrays, XLA buffer reuse


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_special_values(dtype: str) -> None:
    head_dim, p = 16, 0.5
    first, second = rotated_lanes(head_dim, 4, "split_half")
    x = normal(np.random.default_rng(17), (1, 4, 2, head_dim), dtype)
    nope = np.setdiff1d(np.arange(head_dim), np.concatenate([first, second]))
    x[..., nope[0]] = -0.0
    x[..., nope[1]] = np.inf
    x[..., nope[2]] = np.float32("nan")
    x[0, 0, 0, first[0]] = np.inf  # a non-finite rotated input
    positions = np.array([0.0, np.nan, np.inf, 7.5], np.float32)
    out = np.asarray(pj.apply_p_rope(to_jax(x), to_jax(positions), head_dim, 100.0, p))
    assert np.array_equal(bits(out[..., nope]), bits(x[..., nope]))  # NoPE lanes bit for bit
    assert np.isnan(out[:, 1:3][..., first]).all() and np.isnan(out[:, 1:3][..., second]).all()
    assert not np.isfinite(out[0, 0, 0, [first[0], second[0]]]).any()
    finite = np.array([0, 3])
    assert_conforms(out[:, finite], x[:, finite], positions[finite], head_dim, 100.0, p, level="strict", device="cpu")


def test_overflow_rounds_to_infinity() -> None:
    x = np.full((1, 1, 1, 2), 60000.0, np.float16)
    out = np.asarray(pj.apply_p_rope(to_jax(x), to_jax(np.array([1])), 2, 4.0))  # angle 1: y2 = 60000 (c + s)
    assert np.isposinf(out[..., 1]).all()


@pytest.mark.parametrize("shape", [(2, 0, 3, 8), (2, 5, 0, 8), (0, 5, 3, 8)])
def test_empty_arrays(shape: tuple[int, ...]) -> None:
    x = np.zeros(shape, np.float32)
    positions = np.zeros(shape[:2], np.int32)
    out = pj.apply_p_rope(to_jax(x), to_jax(positions), 8)
    assert out.shape == shape and out.dtype == jnp.float32
    q, k = pj.apply_p_rope_qk(to_jax(x), to_jax(x), to_jax(positions), 8, pairing="interleaved")
    assert q.shape == k.shape == shape


@pytest.mark.parametrize(
    ("head_dim", "p", "pairing", "dtype"),
    [
        (512, 0.25, "split_half", "float32"),
        (64, 1.0, "split_half", "float32"),
        (512, 0.25, "split_half", "bfloat16"),
        (64, 0.5, "interleaved", "bfloat16"),
    ],
)
def test_in_place_buffer_reuse_is_safe(device: Any, head_dim: int, p: float, pairing: str, dtype: str) -> None:
    """XLA writes the rotated lanes into the input's buffer when it can (an intermediate, a donated
    argument); the results must not change (XLA:CPU once miscompiled a related form: an in-place
    update reading its own buffer through a reshape)."""
    rng = np.random.default_rng(head_dim)
    x = normal(rng, (2, 33, 3, head_dim), dtype)
    positions = integer_positions(rng, (2, 33))
    m, where = to_jax(positions, device), device_name(device)
    doubled = jax.jit(lambda a: pj.apply_p_rope(a * 2.0, m, head_dim, 1e6, p, pairing=pairing))(to_jax(x, device))
    assert_conforms(doubled, x * 2, positions, head_dim, 1e6, p, pairing=pairing, level="strict", device=where)
    donated = jax.jit(lambda a: pj.apply_p_rope(a, m, head_dim, 1e6, p, pairing=pairing), donate_argnums=0)
    out = donated(to_jax(x, device))
    assert_conforms(out, x, positions, head_dim, 1e6, p, pairing=pairing, level="strict", device=where)


def test_numpy_and_python_arguments() -> None:
    x = normal(np.random.default_rng(19), (2, 3, 1, 8), "float32")
    out = pj.apply_p_rope(x, [[0, 1, 2], [3, 4, 5]], 8, 100.0, 0.5)  # NumPy inputs, nested-list positions
    assert isinstance(out, jax.Array)
    assert_conforms(out, x, np.array([[0, 1, 2], [3, 4, 5]]), 8, 100.0, 0.5, level="strict", device="cpu")
    out = pj.apply_p_rope(to_jax(x), 12, 8, 100.0)  # a scalar position for every token
    assert_conforms(out, x, np.array(12), 8, 100.0, level="strict", device="cpu")


# ---------------------------------------------------------------------------------------------
# the rest of the API, and the property users rely on


def test_frequencies_count_and_tables_type() -> None:
    for head_dim, w, p, scale in ((8, 2.0, 1.0, 1.0), (512, 1e6, 0.25, 1.0), (96, 1e4, 0.58, 3.0)):
        freq = pj.frequencies(head_dim, w, p, scale_factor=scale)
        exact = p_rope.frequencies(head_dim, w, p, scale_factor=scale)
        assert freq.dtype == jnp.float32 and freq.shape == (head_dim // 2,)
        np.testing.assert_allclose(np.asarray(freq), exact, rtol=2.0**-23, atol=0)
        assert pj.rotated_pair_count(head_dim, p) == p_rope.rotated_pair_count(head_dim, p)
    with jax.enable_x64(True):
        assert pj.frequencies(64, dtype=jnp.float64).dtype == jnp.float64
    assert pj.RopeTables is p_rope.RopeTables
    assert isinstance(pj.p_rope_tables(jnp.arange(3), 8), p_rope.RopeTables)


@jax.jit
def rotated_dot(q: jax.Array, k: jax.Array, m: jax.Array, n: jax.Array) -> jax.Array:
    return jnp.sum(pj.apply_p_rope(q, m, 128, 1e4) * pj.apply_p_rope(k, n, 128, 1e4))


@settings(max_examples=25)
@given(
    m=st.integers(0, 4096),
    n=st.integers(0, 4096),
    shift=st.integers(0, MAX_POSITION - 4096),
    seed=st.integers(0, 2**16),
)
def test_inner_product_depends_on_offset_only(m: int, n: int, shift: int, seed: int) -> None:
    """<f(q, m), f(k, n)> = <f(q, m + d), f(k, n + d)> within float32 rounding, d up to 2**24 - L."""
    rng = np.random.default_rng(seed)
    q = normal(rng, (1, 1, 1, 128), "float32")
    k = normal(rng, (1, 1, 1, 128), "float32")
    near = float(rotated_dot(q, k, jnp.array([m]), jnp.array([n])))
    far = float(rotated_dot(q, k, jnp.array([m + shift]), jnp.array([n + shift])))
    q_m = p_rope.apply_p_rope(q.astype(np.float64), np.array([m]), 128)
    k_n = p_rope.apply_p_rope(k.astype(np.float64), np.array([n]), 128)
    exact = float(np.sum(q_m * k_n))
    tolerance = 40 * 2.0**-24 * float(np.linalg.norm(q) * np.linalg.norm(k))
    assert abs(near - exact) <= tolerance and abs(far - exact) <= tolerance
