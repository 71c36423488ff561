"""The fused Triton kernel of the torch backend (backends/_triton.py) against the NumPy reference, at
SPEC.md's strict level: every dtype, pairing, seq_axis and position kind, in place and out of place,
both entry points (positions, tables), any strides and batch axes, special values, autograd and
torch.compile; and the kernel's own float32 tables against tests/test_tables.py's exact evaluation
(SPEC.md §8, "The 64-bit fixed-point reduction").

Where it runs: on CUDA in this process (skipped, visibly, without a GPU); on the CPU in Triton's
interpreter, which must be switched on (TRITON_INTERPRET=1) before Triton is imported. So the CPU
cases run in a child pytest process of their own (test_interpreter_cases), with the variable set there
only: it never reaches the other tests of this process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from tests import test_tables as exact_check
from tests.helpers import assert_conforms, integer_positions, layout, normal, to_numpy

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from p_rope import reference  # noqa: E402
from p_rope.backends import _torch_tables, _triton  # noqa: E402
from p_rope.backends import torch as torch_backend  # noqa: E402

_CHILD_FLAG = "P_ROPE_TRITON_INTERPRETER_CHILD"
IN_CHILD = os.environ.get(_CHILD_FLAG) == "1"
ROOT = Path(__file__).resolve().parent.parent

if IN_CHILD:
    DEVICES = [pytest.param("cpu", id="triton:interpreter")]
else:
    DEVICES = [pytest.param("cuda", id="triton:cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    name = request.param
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("cuda not available (the CPU cases run in Triton's interpreter: test_interpreter_cases)")
    assert _triton.available(name), f"the fused kernel is not available on {name}"
    return name


# ---------------------------------------------------------------------------------------------
# conversions


def _tensor(array: np.ndarray, device: str) -> Any:
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16).to(device)
    return torch.from_numpy(array.copy()).to(device)  # a copy: in-place calls must not write into array


def _positions(kind: str, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """Positions of one kind, over the strict range |m| <= 2**24 (edges included)."""
    if kind == "int64-[L]":
        return integer_positions(rng, (length,))
    if kind == "int32-[B,L]":
        return integer_positions(rng, (batch, length)).astype(np.int32)
    if kind == "uint8-[L]":
        return rng.integers(0, 256, size=(length,)).astype(np.uint8)
    if kind == "float32-[B,1]":  # one decoded token per row: real, negative too
        values = rng.uniform(-(2.0**24), 2.0**24, size=(batch, 1)) * rng.choice([1.0, 1e-6], size=(batch, 1))
        return values.astype(np.float32)
    if kind == "float64-[B,L]":
        values = rng.uniform(-(2.0**24), 2.0**24, size=(batch, length))
        values[0, :3] = [-0.3, 2.0**-30, -(2.0**24) + 0.5]
        return values
    if kind == "int64-scalar":
        return np.asarray(-12_345_678, dtype=np.int64)
    raise AssertionError(kind)


POSITION_KINDS = ["int64-[L]", "int32-[B,L]", "uint8-[L]", "float32-[B,1]", "float64-[B,L]", "int64-scalar"]
LAYOUTS = [
    pytest.param("split_half", -3, id="split_half-L,N"),
    pytest.param("split_half", -2, id="split_half-N,L"),
    pytest.param("interleaved", -3, id="interleaved-L,N"),
    pytest.param("interleaved", -2, id="interleaved-N,L"),
]
DTYPES = ["float16", "bfloat16", "float32", "float64"]
# (H, p, w, s) with R = 8 of 32 pairs (Gemma-like NoPE lanes)
PARAMS = (64, 0.25, 1e6, 1.0)


def _run(
    x: np.ndarray, positions: np.ndarray, device: str, params: tuple, pairing: str, seq_axis: int, in_place: bool
) -> tuple[Any, Any]:
    """(result, the tensor passed in) of fused_apply."""
    head_dim, p, w, scale = params
    pairs = reference.rotated_pair_count(head_dim, p)
    xt, pt = _tensor(x, device), _tensor(positions, device)
    out = _triton.fused_apply(xt, pt, head_dim, w, pairs, scale, pairing, seq_axis, in_place=in_place)
    return out, xt


# ---------------------------------------------------------------------------------------------
# the positions entry


@pytest.mark.parametrize("in_place", [False, True], ids=["out-of-place", "in-place"])
@pytest.mark.parametrize("kind", POSITION_KINDS)
@pytest.mark.parametrize(("pairing", "seq_axis"), LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_strict_every_dtype_layout_and_position_kind(
    device: str, dtype: str, pairing: str, seq_axis: int, kind: str, in_place: bool
) -> None:
    """Strict against the reference; out of place the input is untouched, in place the input itself
    is returned, rotated, its NoPE lanes bit-identical (assert_conforms checks them)."""
    rng = np.random.default_rng([DTYPES.index(dtype), POSITION_KINDS.index(kind), -seq_axis, in_place])
    batch, length = 2, 3
    x = normal(rng, layout((batch,), length, 2, PARAMS[0], seq_axis), dtype)
    positions = _positions(kind, rng, batch, length)
    out, xt = _run(x, positions, device, PARAMS, pairing, seq_axis, in_place)
    if in_place:
        assert out is xt
    else:
        assert out is not xt
        np.testing.assert_array_equal(to_numpy(xt).view(np.uint8), x.view(np.uint8))
    _, p, w, scale = PARAMS
    assert_conforms(
        out,
        x,
        positions,
        PARAMS[0],
        w,
        p,
        device=device,
        level="strict",
        scale_factor=scale,
        pairing=pairing,
        seq_axis=seq_axis,
    )


@pytest.mark.parametrize(
    ("head_dim", "p", "w", "scale"),
    [
        pytest.param(2, 1.0, 10_000.0, 1.0, id="H2-p1"),
        pytest.param(64, 0.0, 10_000.0, 1.0, id="H64-p0"),
        pytest.param(128, 1.0, 10_000.0, 4.0, id="H128-p1-scaled"),
        pytest.param(96, 0.58, 2.0, 1.0, id="H96-p0.58-w2"),
        pytest.param(512, 0.25, 1e6, 1.0, id="H512-p0.25-gemma"),
        pytest.param(1024, 1.0, 1e7, 2.5, id="H1024-p1-w1e7"),
    ],
)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_strict_across_parameters(device: str, dtype: str, head_dim: int, p: float, w: float, scale: float) -> None:
    """R = 0, R = H/2 (no NoPE lanes), a non-power-of-two R, large H, w and scale_factor."""
    rng = np.random.default_rng([head_dim, int(p * 100)])
    x = normal(rng, (2, 4, 2, head_dim), dtype)
    positions = integer_positions(rng, (2, 4))
    out, _ = _run(x, positions, device, (head_dim, p, w, scale), "split_half", -3, False)
    assert_conforms(out, x, positions, head_dim, w, p, device=device, level="strict", scale_factor=scale)


def _strided(x: np.ndarray, device: str) -> tuple[Any, np.ndarray]:
    """A tensor with x's values whose every axis has a stride no neighbour can merge with
    (a slice of a larger buffer with its axes permuted), and x itself."""
    big = _tensor(np.repeat(x, 2, axis=0), device)[::2]  # stride 2 on the first axis
    permuted = big.permute(*range(x.ndim - 1, -1, -1)).contiguous().permute(*range(x.ndim - 1, -1, -1))
    return permuted, x


@pytest.mark.parametrize("in_place", [False, True], ids=["out-of-place", "in-place"])
@pytest.mark.parametrize("batch", [(3,), (2, 3, 2, 2)], ids=["B", "B4"])
def test_any_strides_and_batch_axes(device: str, batch: tuple[int, ...], in_place: bool) -> None:
    """Strided views (reversed memory order, a stepped first axis) and four batch axes (more token
    axes than the kernel indexes: one launch per index of the first); positions broadcast [B'..., L]."""
    rng = np.random.default_rng(len(batch))
    head_dim, p, w, scale = PARAMS
    x = normal(rng, (*batch, 3, 2, head_dim), "float32")
    positions = integer_positions(rng, (*batch[1:], 3))
    xt, _ = _strided(x, device)
    assert not xt.is_contiguous()
    pairs = reference.rotated_pair_count(head_dim, p)
    out = _triton.fused_apply(
        xt, _tensor(positions, device), head_dim, w, pairs, scale, "interleaved", -3, in_place=in_place
    )
    assert (out is xt) == in_place
    assert_conforms(out, x, positions, head_dim, w, p, device=device, level="strict", pairing="interleaved")


def test_special_values(device: str) -> None:
    """SPEC.md §6: NaN (with payload), infinities and -0.0 in NoPE lanes come back bit for bit;
    non-finite positions give NaN in the rotated lanes; a non-finite rotated input stays non-finite."""
    rng = np.random.default_rng(6)
    head_dim, p, w, _ = PARAMS
    x = normal(rng, (2, 4, 2, head_dim), "float32")
    nope = np.array([np.nan, np.inf, -np.inf, -0.0], dtype=np.float32)
    nope[0] = np.frombuffer(np.uint32(0x7FC0_1234).tobytes(), dtype=np.float32)[0]  # NaN with a payload
    x[0, 0, 0, 20:24] = nope
    x[1, 1, 1, 0] = np.inf  # a rotated lane
    positions = np.array([[0.0, np.nan, np.inf, 5.5], [-np.inf, 1.0, 2.0, 3.0]], dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        out, _ = _run(x, positions, device, PARAMS, "split_half", -3, False)
        assert_conforms(out, x, positions, head_dim, w, p, device=device, level="strict")
    got = to_numpy(out)
    np.testing.assert_array_equal(got[0, 0, 0, 20:24].view(np.uint32), x[0, 0, 0, 20:24].view(np.uint32))
    assert np.isnan(got[0, 1, :, :8]).all() and np.isnan(got[1, 0, :, 32:40]).all()
    assert not np.isfinite(got[1, 1, 1, [0, 32]]).any()


def test_empty(device: str) -> None:
    for shape in [(0, 3, 2, 8), (2, 0, 2, 8), (2, 3, 0, 8)]:
        x = torch.zeros(shape, device=device)
        positions = torch.zeros(shape[:2], dtype=torch.int64, device=device)
        out = _triton.fused_apply(x, positions, 8, 1e4, 2, 1.0, "split_half", -3)
        assert out.shape == shape and out is not x


# ---------------------------------------------------------------------------------------------
# the tables entry


@pytest.mark.parametrize("in_place", [False, True], ids=["out-of-place", "in-place"])
@pytest.mark.parametrize(
    ("table_shape", "positions_shape"),
    [
        pytest.param("L", (3,), id="[L,R]"),
        pytest.param("BL", (2, 3), id="[B,L,R]"),
        pytest.param("B1", (2, 1), id="[B,1,R]"),
        pytest.param("scalar", (), id="[R]"),
    ],
)
@pytest.mark.parametrize(("pairing", "seq_axis"), LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tables_strict(
    device: str, dtype: str, pairing: str, seq_axis: int, table_shape: str, positions_shape: tuple, in_place: bool
) -> None:
    """Tables from the torch backend's p_rope_tables (float32, or float64 for float64 inputs), of
    every rank, against the reference at the positions they were built from."""
    rng = np.random.default_rng([DTYPES.index(dtype), len(positions_shape), -seq_axis])
    head_dim, p, w, _ = PARAMS
    x = normal(rng, layout((2,), 3, 2, head_dim, seq_axis), dtype)
    positions = integer_positions(rng, positions_shape) if positions_shape else np.asarray(77_777)
    table_dtype = torch.float64 if dtype == "float64" else torch.float32
    cos, sin = torch_backend.p_rope_tables(_tensor(positions, device), head_dim, w, p, dtype=table_dtype)
    xt = _tensor(x, device)
    out = _triton.fused_apply_tables(xt, cos, sin, pairing, seq_axis, in_place=in_place)
    assert (out is xt) == in_place
    assert_conforms(
        out, x, positions, head_dim, w, p, device=device, level="strict", pairing=pairing, seq_axis=seq_axis
    )


def test_tables_float64_with_16bit_inputs(device: str) -> None:
    """float64 tables with bfloat16 inputs: computed in float64, rounded once to bfloat16."""
    rng = np.random.default_rng(8)
    head_dim, p, w, _ = PARAMS
    x = normal(rng, (2, 3, 2, head_dim), "bfloat16")
    positions = integer_positions(rng, (2, 3))
    cos, sin = torch_backend.p_rope_tables(_tensor(positions, device), head_dim, w, p, dtype=torch.float64)
    out = _triton.fused_apply_tables(_tensor(x, device), cos, sin, "split_half", -3)
    assert_conforms(out, x, positions, head_dim, w, p, device=device, level="strict")


# ---------------------------------------------------------------------------------------------
# autograd and torch.compile


@pytest.mark.parametrize(("pairing", "seq_axis"), LAYOUTS[::3])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_gradient_is_the_inverse_rotation(device: str, dtype: str, pairing: str, seq_axis: int) -> None:
    """The gradient with respect to x for a cotangent g is the reference's rotation of g at -positions
    (SPEC.md §4: f(f(x, m), -m) = x), strict; positions get none."""
    rng = np.random.default_rng([DTYPES.index(dtype), -seq_axis])
    head_dim, p, w, _ = PARAMS
    x = normal(rng, layout((2,), 3, 2, head_dim, seq_axis), dtype)
    g = normal(rng, x.shape, dtype)
    positions = integer_positions(rng, (2, 3))
    xt = _tensor(x, device).requires_grad_(True)
    pairs = reference.rotated_pair_count(head_dim, p)
    out = _triton.fused_apply(xt, _tensor(positions, device), head_dim, w, pairs, 1.0, pairing, seq_axis)
    (grad,) = torch.autograd.grad(out, xt, _tensor(g, device))
    assert_conforms(
        grad, g, -positions, head_dim, w, p, device=device, level="strict", pairing=pairing, seq_axis=seq_axis
    )


def test_tables_gradients(device: str) -> None:
    """Gradients of x (the inverse rotation), cos and sin (hand-derived: d out1 / d cos = x1, ...)
    through the tables entry, against float64 sums."""
    rng = np.random.default_rng(9)
    head_dim, p, w, _ = PARAMS
    pairs = reference.rotated_pair_count(head_dim, p)
    x = normal(rng, (2, 3, 2, head_dim), "float64")
    g = normal(rng, x.shape, "float64")
    positions = integer_positions(rng, (3,))
    cos, sin = reference.p_rope_tables(positions, head_dim, w, p)
    xt, ct, st = (_tensor(a, device).requires_grad_(True) for a in (x, cos, sin))
    out = _triton.fused_apply_tables(xt, ct, st, "split_half", -3)
    grad_x, grad_cos, grad_sin = torch.autograd.grad(out, (xt, ct, st), _tensor(g, device))
    np.testing.assert_allclose(to_numpy(grad_x), reference.apply_p_rope(g, -positions, head_dim, w, p), atol=1e-12)
    x1, x2 = x[..., :pairs], x[..., head_dim // 2 : head_dim // 2 + pairs]
    g1, g2 = g[..., :pairs], g[..., head_dim // 2 : head_dim // 2 + pairs]
    np.testing.assert_allclose(to_numpy(grad_cos), (g1 * x1 + g2 * x2).sum(axis=(0, 2)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(grad_sin), (g2 * x1 - g1 * x2).sum(axis=(0, 2)), rtol=1e-12, atol=1e-12)


def test_in_place_with_gradient(device: str) -> None:
    """In place on a tensor that requires a gradient (a non-leaf): rotated lanes written, the
    gradient flows back through the inverse rotation."""
    rng = np.random.default_rng(10)
    head_dim, p, w, _ = PARAMS
    pairs = reference.rotated_pair_count(head_dim, p)
    x = normal(rng, (2, 3, 2, head_dim), "float32")
    positions = integer_positions(rng, (2, 3))
    leaf = _tensor(x, device).requires_grad_(True)
    xt = leaf * 1.0
    out = _triton.fused_apply(xt, _tensor(positions, device), head_dim, w, pairs, 1.0, "split_half", -3, in_place=True)
    assert out is xt
    assert_conforms(out, x, positions, head_dim, w, p, device=device, level="strict")
    g = normal(rng, x.shape, "float32")
    (grad,) = torch.autograd.grad(out, leaf, _tensor(g, device))
    assert_conforms(grad, g, -positions, head_dim, w, p, device=device, level="strict")


def test_torch_compile_fullgraph(device: str) -> None:
    """torch.compile(fullgraph=True) sees the custom ops (no graph break); on CUDA inductor launches
    the kernel itself; on the CPU (the interpreter, which no tracer can enter) dynamo's graph runs eagerly."""
    rng = np.random.default_rng(11)
    head_dim, p, w, _ = PARAMS
    pairs = reference.rotated_pair_count(head_dim, p)
    x = normal(rng, (2, 3, 2, head_dim), "bfloat16")
    positions = integer_positions(rng, (2, 3))

    def f(xt: Any, pt: Any) -> Any:
        return _triton.fused_apply(xt, pt, head_dim, w, pairs, 1.0, "split_half", -3) * 1.0

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="inductor" if device == "cuda" else "eager")
    out = compiled(_tensor(x, device), _tensor(positions, device))
    assert_conforms(out, x, positions, head_dim, w, p, device=device, level="strict")


def test_registered_ops_pass_opcheck(device: str) -> None:
    """torch.library.opcheck on both out-of-place ops: schema, fake tensors, autograd registration, and
    on CUDA AOT dispatch (which traces into the kernel launch: not the interpreter's)."""
    rng = np.random.default_rng(12)
    x = _tensor(normal(rng, (2, 3, 2, 16), "float32"), device).requires_grad_(True)
    positions = _tensor(integer_positions(rng, (2, 3)), device)
    constants = _torch_tables.constant_tensor(_triton._pair_constants(16, 1e4, 4, 1.0)[0], torch.int64, x.device)
    utils = None if device == "cuda" else ("test_schema", "test_autograd_registration", "test_faketensor")
    kwargs = {} if utils is None else {"test_utils": utils}
    torch.library.opcheck(torch.ops.p_rope.rotate_at, (x, positions, constants, "split_half", -3, False), **kwargs)
    cos, sin = torch_backend.p_rope_tables(positions, 16, 1e4, 0.5)
    torch.library.opcheck(torch.ops.p_rope.rotate_by, (x, cos, sin, "interleaved", -3, False), **kwargs)


# ---------------------------------------------------------------------------------------------
# the in-kernel float32 tables: SPEC.md §8, "The 64-bit fixed-point reduction"

FIXED_POINT_BOUND = 1.5 * 2.0**-24  # SPEC.md §8, the 64-bit fixed-point reduction's contract
# (H, w, s) with every r_i < 1 (the kernel's own tables): w < 1 too (w = 0.5: r_i < 1 / pi)
FIXED_POINT_CONFIGS = [(128, 1e4, 1.0), (64, 1e7, 3.0), (34, 2.0, 1.7), (16, 0.5, 1.0), (2, 10.0, 1.0)]
FIXED_POINT_IDS = [f"H{h}-w{w:g}-s{s:g}" for h, w, s in FIXED_POINT_CONFIGS]


def _kernel_tables(positions: np.ndarray, device: str, head_dim: int, w: float, scale: float) -> tuple[Any, Any]:
    """The kernel's float32 tables at positions [L], read exactly off its output: float32 x = (1, 0)
    in every pair (R = H/2) gives x1 c - x2 s = c and x2 c + x1 s = s, each exact in float32."""
    pairs = head_dim // 2
    x = np.zeros((positions.size, 1, head_dim), dtype=np.float32)
    x[..., :pairs] = 1.0
    out = _triton.fused_apply(
        _tensor(x, device), _tensor(positions, device), head_dim, w, pairs, scale, "split_half", -3
    )
    rows = to_numpy(out)[:, 0]
    return rows[:, :pairs], rows[:, pairs:]


@pytest.mark.parametrize("kind", ["int32", "int64", "int16", "uint8", "float32", "float64"])
@pytest.mark.parametrize(("head_dim", "w", "s"), FIXED_POINT_CONFIGS, ids=FIXED_POINT_IDS)
def test_fixed_point_tables_within_bound(device: str, head_dim: int, w: float, s: float, kind: str) -> None:
    """|m| <= 2**24, integer of several dtypes or real float32/float64, negative too (edges 0, +-1,
    +-2**24, +-2**-30...): the kernel's tables within FIXED_POINT_BOUND of the exact cos/sin of
    2 pi m r_i (tests/test_tables.py's evaluation)."""
    positions, exact = exact_check.reference(kind, head_dim, w, s)
    error = exact_check.max_error(_kernel_tables(positions, device, head_dim, w, s), exact)
    assert error <= FIXED_POINT_BOUND, f"{error / 2.0**-24:.3f} float32 units"


@pytest.mark.parametrize("kind", ["int32", "uint32", "int64", "uint64", "float32", "float64"])
@pytest.mark.parametrize(("head_dim", "w", "s"), [(128, 1e4, 1.0), (16, 0.5, 1.0)], ids=["H128-w1e4", "H16-w0.5"])
def test_fixed_point_tables_at_any_position(device: str, head_dim: int, w: float, s: float, kind: str) -> None:
    """Beyond 2**24, up to each dtype's limits: the integer part is reduced modulo 2**60 exactly and a
    float64 fraction rounded as below 2**24, so the tables stay within FIXED_POINT_BOUND of cos/sin
    of 2 pi m r^_i (r^_i: r_i truncated to 60 fractional bits)."""
    positions = exact_check.wide_positions_of(kind, 5)
    exact = exact_check.exact_tables(positions, exact_check._fixed_revolutions(head_dim, w, s))
    error = exact_check.max_error(_kernel_tables(positions, device, head_dim, w, s), exact)
    assert error <= FIXED_POINT_BOUND, f"{error / 2.0**-24:.3f} float32 units"


@pytest.mark.parametrize("in_place", [False, True], ids=["out-of-place", "in-place"])
@pytest.mark.parametrize("positions_dtype", ["int64", "float32"])
def test_pairs_turning_more_than_once_per_position(device: str, positions_dtype: str, in_place: bool) -> None:
    """w = 0.01: some r_i >= 1, beyond the kernel's 60 fractional bits; the exact reduction's tables,
    read by the same kernel, meet the strict level."""
    rng = np.random.default_rng(13)
    x = normal(rng, (2, 6, 2, 64), "float32")
    positions = np.array([[0, 1, 3, 1000, 2**20, -77], [5, -(2**24), 2**24, 7, 8, 9]]).astype(positions_dtype)
    if positions_dtype == "float32":
        positions = positions + np.float32(0.375)
    out, _ = _run(x, positions, device, (64, 0.5, 0.01, 1.0), "split_half", -3, in_place)
    assert_conforms(out, x, positions, 64, 0.01, 0.5, device=device, level="strict")


# ---------------------------------------------------------------------------------------------
# the compiled kernel for Hopper (sm_90), built on the CPU with Triton's own ptxas: no GPU needed

_TRITON_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}


def _hopper_ptx(dtype: str, pairing: str, from_tables: bool, positions: str) -> str:
    """PTX of the kernel for an input of dtype [B, L, 8, 512] at p = 0.25 (contiguous: lane strides of
    1 and 16-divisible strides, as Triton specializes them at launch), compiled for sm_90."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _triton._p_rope_kernel
    table = "fp64" if dtype == "float64" else "fp32"
    pointers = {"x_ptr": dtype, "out_ptr": dtype, "cos_ptr": table, "sin_ptr": table, "pos_ptr": positions}
    ones = {"xsh": 1, "osh": 1, "size1": 1}
    block_t, block_n, block_r, block_q = _triton._blocks(8, 256, 64)
    constants: dict[str, Any] = {
        **ones,
        "HALF": 256, "PAIRS": 64, "INTERLEAVED": pairing == "interleaved", "FROM_TABLES": from_tables,
        "POS_FLOAT": positions.startswith("fp"), "F64": dtype == "float64", "NEGATE": False, "COPY_NOPE": True,
        "OUT_BF16": dtype == "bfloat16", "BLOCK_T": block_t, "BLOCK_N": block_n, "BLOCK_R": block_r,
        "BLOCK_Q": block_q,
    }  # fmt: skip
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constants:
            signature[name] = "constexpr"
            continue
        if name in pointers:
            signature[name] = "*" + _TRITON_TYPES.get(pointers[name], pointers[name])
        elif name == "const_ptr":
            signature[name] = "*fp64" if dtype == "float64" else "*i64"
        else:
            signature[name] = "i64"
        if name not in ("tokens", "heads", "size2"):
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": True})
    return compiled.asm["ptx"]


@pytest.mark.parametrize(
    ("dtype", "pairing", "from_tables", "positions"),
    [
        pytest.param("bfloat16", "split_half", False, "i64", id="bf16-split-int64"),
        pytest.param("float16", "interleaved", False, "fp32", id="fp16-interleaved-float32"),
        pytest.param("float32", "split_half", True, "i64", id="fp32-split-tables"),
        pytest.param("float64", "interleaved", False, "fp64", id="fp64-interleaved-float64"),
        pytest.param("bfloat16", "interleaved", True, "i32", id="bf16-interleaved-tables"),
    ],
)
def test_compiles_for_hopper(dtype: str, pairing: str, from_tables: bool, positions: str) -> None:
    """The kernel compiles for sm_90 in each entry, layout and dtype, with no approximate sin/cos
    (float32 tables are polynomials; float64 calls libdevice), no local memory outside libdevice's
    argument reduction, and 16-byte global loads and stores (a memory-bound kernel near copy speed
    needs them)."""
    ptx = _hopper_ptx(dtype, pairing, from_tables, positions)
    assert "sin.approx" not in ptx and "cos.approx" not in ptx
    assert ("ld.local" in ptx) == (dtype == "float64" and not from_tables)
    assert re.search(r"ld\.global(\.\w+)*\.v[24]\.", ptx), "no vector loads"
    assert re.search(r"st\.global(\.\w+)*\.v[24]\.", ptx), "no vector stores"


# ---------------------------------------------------------------------------------------------
# the interpreter run (CPU)


@pytest.mark.slow
def test_interpreter_cases() -> None:
    """Every test above on the CPU in Triton's interpreter, in a child pytest process that sets
    TRITON_INTERPRET=1 before importing Triton (the variable never enters this process)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", _CHILD_FLAG: "1"}
    command = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider", "-x"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    summary = result.stdout.strip().splitlines()[-1:] or [""]
    assert result.returncode == 0, f"interpreter run failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert " passed" in summary[0] and "skipped" not in summary[0], summary[0]


if IN_CHILD:  # the child runs the cases on a device, not itself (nor the compilation, which needs no device)
    del test_interpreter_cases, test_compiles_for_hopper
