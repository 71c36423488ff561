"""The PyTorch backend (p_rope.backends.torch) against the NumPy reference.

Every expected value comes from the NumPy reference (float64) through tests/helpers.py and
p_rope.tolerance, or is hand-derived; outputs of the backend are never compared with other
outputs of the backend except where SPEC.md states an identity (tables reuse, KV-cache slices,
packed sequences). Device-parametrized tests run as ``torch:cpu``, ``torch:cuda`` and
``torch:mps``; absent devices skip visibly.

Covered: agreement at SPEC.md's strict level across dtypes, p (0, tiny, 0.25, 0.5, 0.58, 1), H,
pairing, seq_axis, scale_factor, per-row offsets and integer/real positions up to 2**24; the
tables' accuracy; gradients (the VJP is the reference at -positions applied to the cotangent;
gradcheck in float64); torch.compile with fullgraph and no recompilation when positions change;
the in-place variant; non-contiguous inputs; inference mode; errors and their messages; q/k with
one table build; tables reused across layers; KV-cache decoding and packed sequences.
"""

from __future__ import annotations

import mmap
import sys
import warnings
from typing import Any

import ml_dtypes
import numpy as np
import p_rope
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from p_rope.backends import _hugepages as hugepages
from p_rope.backends import _torch_rotation as torch_rotation
from p_rope.backends import _torch_tables as torch_tables
from p_rope.backends import torch as pt

from tests.helpers import (
    AGREEMENT_CONFIGS,
    MAX_POSITION,
    NP_DTYPES,
    assert_conforms,
    integer_positions,
    layout,
    normal,
    to_numpy,
)

TABLE_BOUND = 2.5 * 2.0**-24  # SPEC.md §8: float32 tables within 2.5 float32 units of cos/sin
CPU_TABLE_BOUND = 0.6 * 2.0**-24  # the CPU's float64 route: one final rounding, 0.5 units, and a little
DTYPES = list(NP_DTYPES)

# dynamo's own internals warn (torch 2.13): its autograd.Function support instantiates Function,
# and importing inductor imports torch.jit.script_method; neither comes from this project.
COMPILE_WARNINGS = [
    pytest.mark.filterwarnings("ignore:<class 'torch.autograd.function.Function'> should not be instantiated"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]


# ---------------------------------------------------------------------------------------------
# devices and conversions


@pytest.fixture(
    params=[
        pytest.param("cpu", id="torch:cpu"),
        pytest.param("cuda", id="torch:cuda"),
        pytest.param("mps", id="torch:mps"),
    ]
)
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.param
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("cuda not available")
    if name == "mps" and not torch.backends.mps.is_available():
        pytest.skip("mps not available")
    return torch.device(name)


@pytest.fixture(
    params=[pytest.param("float64", id="tables:cpu-float64"), pytest.param("int64", id="tables:int64-float32")]
)
def table_route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both float32 table algorithms: the float64 reduction (the CPU's) and the exact reduction (every
    other device's), the latter forced on the CPU too."""
    if request.param == "int64":
        monkeypatch.setattr(torch_tables, "FLOAT64_TABLE_DEVICES", ())
    return str(request.param)


def skip_unsupported(device: torch.device, dtype: str) -> None:
    if device.type == "mps" and dtype == "float64":
        pytest.skip("mps has no float64")


def to_torch(array: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A torch copy of a NumPy array (bfloat16 bit for bit)."""
    if array.dtype == ml_dtypes.bfloat16:
        tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.int16).copy()).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(np.array(array, copy=True))
    return tensor.to(device)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a floating tensor, for bit-for-bit comparisons (NaN payloads, -0.0)."""
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.detach().contiguous().cpu().view(view)


# ---------------------------------------------------------------------------------------------
# agreement with the reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("head_dim", "p", "w", "pairing", "seq_axis", "scale", "pairs"), AGREEMENT_CONFIGS)
def test_agrees_with_reference(
    table_route: str,
    device: torch.device,
    dtype: str,
    head_dim: int,
    p: float,
    w: float,
    pairing: str,
    seq_axis: int,
    scale: float,
    pairs: int | None,
) -> None:
    skip_unsupported(device, dtype)
    rng = np.random.default_rng(head_dim * 7 + len(dtype))
    heads = max(1, 8192 // (head_dim * 16))
    x = normal(rng, layout((2,), 16, heads, head_dim, seq_axis), dtype)
    positions = integer_positions(rng, (2, 16))  # per-row positions
    kwargs: dict[str, Any] = dict(scale_factor=scale, pairing=pairing, seq_axis=seq_axis)
    if pairs is not None:
        kwargs["rotated_pairs"] = pairs
    inputs = to_torch(x, device)
    out = pt.apply_p_rope(inputs, to_torch(positions, device), head_dim, w, p, **kwargs)
    assert_conforms(out, x, positions, head_dim, w, p, level="strict", device=device.type, **kwargs)
    assert bits(inputs).equal(bits(to_torch(x))), "inputs modified"


@pytest.mark.parametrize("positions_dtype", ["float32", "float64"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_real_positions_strict(table_route: str, device: torch.device, dtype: str, positions_dtype: str) -> None:
    skip_unsupported(device, positions_dtype)
    rng = np.random.default_rng(3)
    x = normal(rng, (3, 40, 2, 256), dtype)
    positions = rng.uniform(-MAX_POSITION, MAX_POSITION, size=(3, 40))
    positions[0] = rng.uniform(-4, 4, size=40)  # small, with many fraction bits
    positions[1, :8] = [0.5, -0.5, 1e-7, -1e-30, 2.0**24, -(2.0**24), 4096.25, 12345.678]
    positions = positions.astype(positions_dtype)
    out = pt.apply_p_rope(to_torch(x, device), to_torch(positions, device), 256, 1e6, 0.5, scale_factor=1.5)
    assert_conforms(out, x, positions, 256, 1e6, 0.5, scale_factor=1.5, level="strict", device=device.type)


@pytest.mark.parametrize(
    ("head_dim", "w", "scale"), [(8, 2.0, 1.0), (128, 10_000.0, 1.0), (512, 1e6, 8.0), (1024, 1e7, 1.0)]
)
def test_float32_tables_within_spec_bound(table_route: str, head_dim: int, w: float, scale: float) -> None:
    rng = np.random.default_rng(head_dim)
    integers = np.concatenate([np.arange(-3, 5000), integer_positions(rng, (4000,))])
    reals = np.concatenate([rng.uniform(-MAX_POSITION, MAX_POSITION, 2000), rng.uniform(-2, 2, 500)])
    for positions in (integers, reals, reals.astype(np.float32)):
        cos, sin = pt.p_rope_tables(torch.from_numpy(positions), head_dim, w, scale_factor=scale)
        assert cos.dtype == sin.dtype == torch.float32
        assert cos.shape == sin.shape == (positions.size, head_dim // 2)
        exact = p_rope.p_rope_tables(positions, head_dim, w, scale_factor=scale)
        bound = CPU_TABLE_BOUND if table_route == "float64" else TABLE_BOUND
        assert np.abs(cos.double().numpy() - exact.cos).max() <= bound
        assert np.abs(sin.double().numpy() - exact.sin).max() <= bound


def test_float64_tables_match_reference() -> None:
    positions = np.array([[0, 1, -7, 4096, 2**24, 2**30]])
    cos, sin = pt.p_rope_tables(torch.from_numpy(positions), 64, 1e4, 0.5, dtype=torch.float64)
    exact = p_rope.p_rope_tables(positions, 64, 1e4, 0.5)
    theta = np.abs(positions[..., None]) * p_rope.frequencies(64, 1e4, 0.5)[:16]
    allowed = 4 * 2.0**-53 * (1 + theta)
    assert cos.dtype == torch.float64 and cos.shape == (1, 6, 16)
    assert (np.abs(cos.numpy() - exact.cos) <= allowed).all()
    assert (np.abs(sin.numpy() - exact.sin) <= allowed).all()


def test_frequencies_match_reference() -> None:
    for dtype in ("float64", np.float64, np.dtype("float64")):
        assert pt.frequencies(8, dtype=dtype).dtype == torch.float64
    freq64 = pt.frequencies(512, 1e6, 0.25, dtype=torch.float64)
    freq32 = pt.frequencies(512, 1e6, 0.25)
    exact = p_rope.frequencies(512, 1e6, 0.25)
    assert freq64.dtype == torch.float64 and freq32.dtype == torch.float32 and freq32.shape == (256,)
    np.testing.assert_array_equal(freq64.numpy(), exact)
    np.testing.assert_array_equal(freq32.numpy(), exact.astype(np.float32))
    scaled = pt.frequencies(64, rotated_pairs=3, scale_factor=2.0, dtype=torch.float64)
    np.testing.assert_array_equal(scaled.numpy(), p_rope.frequencies(64, rotated_pairs=3, scale_factor=2.0))
    assert pt.rotated_pair_count(512, 0.25) == 64 and pt.RopeTables is p_rope.RopeTables


@given(
    head_dim=st.sampled_from([2, 4, 6, 16, 30, 64, 200]),
    p=st.floats(0.0, 1.0),
    log_w=st.floats(np.log(2.0), np.log(1e7)),
    scale=st.floats(1.0, 16.0),
    pairing=st.sampled_from(["split_half", "interleaved"]),
    seq_axis=st.sampled_from([-3, -2]),
    dtype=st.sampled_from(DTYPES),
    batch=st.lists(st.integers(1, 2), max_size=2),
    length=st.integers(1, 9),
    heads=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_random_calls_agree_with_reference(
    head_dim: int,
    p: float,
    log_w: float,
    scale: float,
    pairing: str,
    seq_axis: int,
    dtype: str,
    batch: list[int],
    length: int,
    heads: int,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    w = float(np.exp(log_w))
    x = normal(rng, layout(tuple(batch), length, heads, head_dim, seq_axis), dtype)
    positions = integer_positions(rng, (*batch, length))[..., rng.permutation(length)]
    kwargs: dict[str, Any] = dict(scale_factor=scale, pairing=pairing, seq_axis=seq_axis)
    out = pt.apply_p_rope(to_torch(x), to_torch(positions), head_dim, w, p, **kwargs)
    assert_conforms(out, x, positions, head_dim, w, p, level="strict", device="cpu", **kwargs)


def test_chunked_rotation_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long sequences are rotated in chunks along L, tables broadcast or not; every chunk conforms."""
    monkeypatch.setattr(torch_rotation, "CHUNK_BYTES", 2000)  # 2 or 5 rows of L per chunk
    monkeypatch.setattr(torch_rotation, "IN_PLACE_CHUNK_BYTES", 1000)
    rng = np.random.default_rng(5)
    cases = [
        ("float32", -3, (2, 37), 0.75),
        ("bfloat16", -2, (37,), 0.75),
        ("float64", -2, (), 1.0),
        ("float32", -3, (37,), 1.0),
    ]
    for dtype, seq_axis, positions_shape, p in cases:
        x = normal(rng, layout((2,), 37, 3, 32, seq_axis), dtype)
        positions = integer_positions(rng, positions_shape) if positions_shape else np.array(9_999_991)
        graded = np.broadcast_to(positions, (2, 37))
        kwargs: dict[str, Any] = dict(seq_axis=seq_axis, level="strict", device="cpu")
        out = pt.apply_p_rope(to_torch(x), to_torch(positions), 32, 1e4, p, seq_axis=seq_axis)
        assert_conforms(out, x, graded, 32, 1e4, p, **kwargs)
        inplace = to_torch(x)
        pt.apply_p_rope_(inplace, to_torch(positions), 32, 1e4, p, seq_axis=seq_axis)
        assert_conforms(inplace, x, graded, 32, 1e4, p, **kwargs)


@pytest.mark.parametrize(
    ("seq_axis", "length", "positions_batched"), [(-3, 1, True), (-3, 3, False), (-2, 1, True), (-2, 5, True)]
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_short_sequences_in_a_large_batch_go_in_bounded_chunks(
    monkeypatch: pytest.MonkeyPatch, seq_axis: int, length: int, positions_batched: bool, dtype: str
) -> None:
    """Where one row of L is larger than a chunk (decode with a large batch), the batch axis is cut
    too: every rotated block stays within its chunk's bytes (so do the temporaries, SPEC.md's memory
    rule), tables shared across the batch or not, and every output conforms."""
    monkeypatch.setattr(torch_rotation, "CHUNK_BYTES", 1500)
    monkeypatch.setattr(torch_rotation, "IN_PLACE_CHUNK_BYTES", 1000)
    blocks: list[tuple[int, bool]] = []
    rotate_lanes = torch_rotation._rotate_lanes

    def recorded(x1: torch.Tensor, x2: torch.Tensor, c: Any, s: Any, o1: Any, o2: Any, direction: float) -> Any:
        blocks.append((2 * x1.numel() * x1.element_size(), o1 is x1))
        return rotate_lanes(x1, x2, c, s, o1, o2, direction)

    monkeypatch.setattr(torch_rotation, "_rotate_lanes", recorded)
    rng = np.random.default_rng(13)
    x = normal(rng, layout((23,), length, 2, 32, seq_axis), dtype)  # one row of L: 23 * 2 * 32 lanes
    positions = integer_positions(rng, (23, length) if positions_batched else (length,))
    graded = np.broadcast_to(positions, (23, length))
    out = pt.apply_p_rope(to_torch(x), to_torch(positions), 32, 1e4, 0.5, seq_axis=seq_axis)
    inplace = to_torch(x)
    pt.apply_p_rope_(inplace, to_torch(positions), 32, 1e4, 0.5, seq_axis=seq_axis)
    for result in (out, inplace):
        assert_conforms(result, x, graded, 32, 1e4, 0.5, seq_axis=seq_axis, level="strict", device="cpu")
    out_of_place = [size for size, in_place in blocks if not in_place]
    in_place = [size for size, in_place in blocks if in_place]
    assert len(out_of_place) > 1 and len(in_place) > 1
    assert max(out_of_place) <= 1500 // 2  # the rotated half (p = 0.5) of a chunk of x
    assert max(in_place) <= 1000  # a chunk of the rotated lanes
    assert sum(in_place) == sum(out_of_place) == 23 * length * 2 * 16 * np.dtype(x.dtype).itemsize


@pytest.mark.parametrize("positions_shape", [(), (4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("pairing", ["split_half", "interleaved"])
@pytest.mark.parametrize("seq_axis", [-3, -2])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_small_inputs_with_tables_of_every_rank(
    positions_shape: tuple[int, ...], pairing: str, seq_axis: int, dtype: str
) -> None:
    """Small inputs (one chunk) with tables of any rank (shared across batch axes or not); inputs
    with two batch axes and a strided (non-contiguous) input too."""
    rng = np.random.default_rng(len(positions_shape) * 4 - seq_axis)
    x = normal(rng, layout((2, 3), 4, 5, 24, seq_axis), dtype)
    positions = integer_positions(rng, positions_shape) if positions_shape else np.array(77_777)
    graded = np.broadcast_to(positions, (2, 3, 4))
    tables = pt.p_rope_tables(to_torch(positions), 24, 1e4, 0.5)
    inputs = to_torch(x)
    out = pt.apply_p_rope_tables(inputs, tables, pairing=pairing, seq_axis=seq_axis)
    assert_conforms(out, x, graded, 24, 1e4, 0.5, pairing=pairing, seq_axis=seq_axis, level="strict", device="cpu")
    strided = inputs.transpose(0, 1).contiguous().transpose(0, 1)  # same values, batch axes swapped in memory
    out = pt.apply_p_rope_tables(strided, tables, pairing=pairing, seq_axis=seq_axis)
    assert_conforms(out, x, graded, 24, 1e4, 0.5, pairing=pairing, seq_axis=seq_axis, level="strict", device="cpu")


@pytest.mark.parametrize("kind", ["integer", "real", "non-contiguous", "scalar"])
def test_chunked_cpu_tables_agree(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The CPU's table build goes in chunks of positions (7 here, the last one short); every chunk,
    batch axes, strided positions and non-finite ones included, matches the reference."""
    monkeypatch.setattr(torch_tables, "TABLE_CHUNK_BYTES", 7 * 16 * 12)  # 7 positions of R = 12 pairs
    rng = np.random.default_rng(11)
    positions: np.ndarray = {
        "integer": integer_positions(rng, (3, 17)),
        "real": np.concatenate([rng.uniform(-MAX_POSITION, MAX_POSITION, 40), [np.nan, np.inf, -np.inf]]),
        "non-contiguous": integer_positions(rng, (17, 6))[:, ::2].T,  # torch keeps these strides
        "scalar": np.array(123_456_789),
    }[kind]
    tensor = torch.from_numpy(positions)
    cos, sin = pt.p_rope_tables(tensor, 48, 1e4, 0.5)
    assert cos.shape == sin.shape == (*positions.shape, 12)
    exact = p_rope.p_rope_tables(positions, 48, 1e4, 0.5)
    for table, reference in ((cos, exact.cos), (sin, exact.sin)):
        values = table.double().numpy()
        finite = np.isfinite(positions)
        assert np.abs(values[finite] - reference[finite]).max() <= CPU_TABLE_BOUND
        assert np.isnan(values[~finite]).all()


# ---------------------------------------------------------------------------------------------
# special values, dtypes, empty arrays


def test_large_outputs_advised_as_huge_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """An output of 4 MiB or more gets huge-page advice on the 2 MiB-aligned part of its own memory,
    before it is written; smaller ones get none; the values are the same either way (the recorder
    answers 0, success, so the first writes that follow the advice run too)."""
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(hugepages, "madvise", lambda: lambda *args: calls.append(args) or 0)
    rng = np.random.default_rng(11)
    x = normal(rng, layout((1,), 600, 4, 512, -3), "float32")  # 4.7 MiB
    positions = integer_positions(rng, (1, 600))
    out = pt.apply_p_rope(to_torch(x), to_torch(positions), 512, 1e6, 0.25)
    assert_conforms(out, x, positions, 512, 1e6, 0.25, level="strict", device="cpu")
    ((start, length, advice),) = calls
    begin, nbytes = out.untyped_storage().data_ptr(), out.untyped_storage().nbytes()
    assert advice == mmap.MADV_HUGEPAGE and start % (1 << 21) == 0 and length % (1 << 21) == 0
    assert begin <= start and start + length <= begin + nbytes and length >= nbytes - (1 << 22)
    calls.clear()
    pt.apply_p_rope(to_torch(x[:, :100]), to_torch(positions[:, :100]), 512, 1e6, 0.25)  # 0.8 MiB
    assert calls == []


@pytest.mark.parametrize(
    ("platform", "thp", "setting", "expected"),
    [
        ("linux", "always [madvise] never", None, True),
        ("linux", "[always] madvise never", "1", True),
        ("linux", "always madvise [never]", None, False),
        ("linux", None, None, False),
        ("linux", "always [madvise] never", "0", False),
        ("darwin", "always [madvise] never", None, False),
    ],
)
def test_huge_page_advice_where_available(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    platform: str,
    thp: str | None,
    setting: str | None,
    expected: bool,
) -> None:
    """Linux with transparent huge pages not "never", and not P_ROPE_MADVISE_HUGEPAGE=0."""
    monkeypatch.setattr(sys, "platform", platform)
    thp_file = tmp_path / "enabled"
    if thp is not None:
        thp_file.write_text(thp + "\n", encoding="ascii")
    monkeypatch.setattr(hugepages, "THP_SETTING", str(thp_file))
    if setting is None:
        monkeypatch.delenv("P_ROPE_MADVISE_HUGEPAGE", raising=False)
    else:
        monkeypatch.setenv("P_ROPE_MADVISE_HUGEPAGE", setting)
    hugepages.madvise.cache_clear()
    try:
        found = hugepages.madvise() is not None
    finally:
        hugepages.madvise.cache_clear()
    assert found is expected


def test_special_values(table_route: str, device: torch.device) -> None:
    x = np.full((1, 3, 1, 8), 1.5, dtype=np.float32)
    x[0, :, 0, 2] = [np.inf, np.nan, -0.0]  # NoPE lanes (R = 2 of 4 pairs)
    x[0, :, 0, 7] = [-np.inf, 2.0**-140, -0.0]
    x[0, 0, 0, 0] = np.inf  # a rotated pair with an infinity
    positions = np.array([3.0, np.nan, np.inf], dtype=np.float32)
    out = to_numpy(pt.apply_p_rope(to_torch(x, device), to_torch(positions, device), 8, rope_percentage=0.5))
    nope = [2, 3, 6, 7]
    assert np.array_equal(out[..., nope].view(np.int32), x[..., nope].view(np.int32))
    assert not np.isfinite(out[0, 0, 0, [0, 4]]).any()  # the pair holding inf
    assert np.isnan(out[0, 1:, 0, [0, 1, 4, 5]]).all()  # non-finite positions
    assert np.isfinite(out[0, 0, 0, [1, 5]]).all()


@pytest.mark.parametrize("shape", [(0, 4, 8), (2, 0, 3, 8), (2, 5, 0, 8)])
def test_empty_arrays(shape: tuple[int, ...]) -> None:
    x = torch.zeros(shape)
    positions = torch.zeros(shape[:-2], dtype=torch.int64)
    for fn in (pt.apply_p_rope, pt.apply_p_rope_):
        out = fn(x, positions, 8, rope_percentage=0.5)
        assert out.shape == shape and out.dtype == torch.float32


def test_qk_dtypes_and_float64_inputs(device: torch.device) -> None:
    skip_unsupported(device, "float64")
    rng = np.random.default_rng(9)
    q = normal(rng, (2, 6, 4, 64), "bfloat16")
    k = normal(rng, (2, 6, 1, 64), "float64")
    positions = integer_positions(rng, (2, 6))
    q_out, k_out = pt.apply_p_rope_qk(to_torch(q, device), to_torch(k, device), to_torch(positions, device), 64, 1e4)
    assert q_out.dtype == torch.bfloat16 and k_out.dtype == torch.float64
    assert_conforms(q_out, q, positions, 64, 1e4, level="strict", device=device.type)
    assert_conforms(k_out, k, positions, 64, 1e4, level="strict", device=device.type)


# ---------------------------------------------------------------------------------------------
# q and k, tables reuse, KV cache, packed sequences


def test_qk_one_table_build(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []
    build = pt.torch_tables

    def counted(*args: Any) -> Any:
        builds.append(args)
        return build(*args)

    monkeypatch.setattr(pt, "torch_tables", counted)
    rng = np.random.default_rng(1)
    q, k = normal(rng, (1, 4, 8, 10, 512), "float32"), normal(rng, (1, 4, 2, 10, 512), "float32")
    positions = integer_positions(rng, (4, 10))
    q_out, k_out = pt.apply_p_rope_qk(to_torch(q), to_torch(k), to_torch(positions), 512, 1e6, 0.25, seq_axis=-2)
    assert len(builds) == 1
    for out, x in ((q_out, q), (k_out, k)):
        assert_conforms(out, x, positions, 512, 1e6, 0.25, seq_axis=-2, level="strict", device="cpu")


def test_tables_reused_across_layers(device: torch.device) -> None:
    rng = np.random.default_rng(2)
    positions = integer_positions(rng, (2, 12))
    tables = pt.p_rope_tables(to_torch(positions, device), 256, 1e6, 0.25)
    assert tables.cos.device.type == device.type and tables.cos.shape == (2, 12, 32)
    for layer, dtype in enumerate(["float32", "bfloat16", "float16"]):
        x = normal(rng, (2, 12, 1 + layer, 256), dtype)
        out = pt.apply_p_rope_tables(to_torch(x, device), tables)
        assert_conforms(out, x, positions, 256, 1e6, 0.25, level="strict", device=device.type)
        direct = pt.apply_p_rope(to_torch(x, device), to_torch(positions, device), 256, 1e6, 0.25)
        assert bits(out).equal(bits(direct))  # SPEC.md §5: the same call


def test_float64_tables_on_float32_inputs() -> None:
    rng = np.random.default_rng(4)
    x, positions = normal(rng, (1, 5, 2, 16), "float32"), integer_positions(rng, (5,))
    tables = pt.p_rope_tables(to_torch(positions), 16, dtype=torch.float64)
    out = pt.apply_p_rope_tables(to_torch(x), tables)
    assert_conforms(out, x, positions, 16, level="strict", device="cpu")


def test_kv_cache_decode_equals_full_sequence(table_route: str, device: torch.device) -> None:
    """Per-row offsets, one new token per row (L = 1): equal to the full-sequence result's slice."""
    rng = np.random.default_rng(6)
    batch, length, heads, head_dim = 3, 20, 2, 512
    x = normal(rng, (batch, length, heads, head_dim), "float32")
    offsets = np.array([0, 1_000_000, MAX_POSITION - length])
    positions = offsets[:, None] + np.arange(length)
    full = pt.apply_p_rope(to_torch(x, device), to_torch(positions, device), head_dim, 1e6, 0.25)
    assert_conforms(full, x, positions, head_dim, 1e6, 0.25, level="strict", device=device.type)
    for t in (0, 7, length - 1):
        step = to_torch(np.ascontiguousarray(x[:, t : t + 1]), device)
        out = pt.apply_p_rope(step, to_torch(positions[:, t : t + 1], device), head_dim, 1e6, 0.25)
        assert bits(out).equal(bits(full[:, t : t + 1]))
        hf = to_torch(np.ascontiguousarray(x[:, t : t + 1].transpose(0, 2, 1, 3)), device)  # [B, N, 1, H]
        out_hf = pt.apply_p_rope_(hf, to_torch(positions[:, t : t + 1], device), head_dim, 1e6, 0.25, seq_axis=-2)
        assert bits(out_hf.transpose(1, 2)).equal(bits(full[:, t : t + 1]))


def test_packed_sequences_equal_separate_calls() -> None:
    rng = np.random.default_rng(8)
    lengths = [5, 1, 9]
    x = normal(rng, (1, sum(lengths), 2, 64), "bfloat16")
    positions = np.concatenate([np.arange(n) for n in lengths])[None]
    packed = pt.apply_p_rope(to_torch(x), to_torch(positions), 64, 1e4, 0.5, pairing="interleaved")
    assert_conforms(packed, x, positions, 64, 1e4, 0.5, pairing="interleaved", level="strict", device="cpu")
    start = 0
    for n in lengths:
        part = pt.apply_p_rope(to_torch(x[:, start : start + n]), torch.arange(n), 64, 1e4, 0.5, pairing="interleaved")
        assert bits(part).equal(bits(packed[:, start : start + n]))
        start += n


# ---------------------------------------------------------------------------------------------
# in place, non-contiguous inputs, placement, inference mode


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pairing", ["split_half", "interleaved"])
def test_in_place_writes_only_rotated_lanes(device: torch.device, dtype: str, pairing: str) -> None:
    skip_unsupported(device, dtype)
    rng = np.random.default_rng(10)
    buffer = normal(rng, (2, 9, 4, 64), dtype)
    positions = integer_positions(rng, (2, 9))
    whole = to_torch(buffer, device)
    view = whole[:, :, 1:3]  # a non-contiguous view inside a larger tensor
    result = pt.apply_p_rope_(view, to_torch(positions, device), 64, 1e6, 0.25, pairing=pairing)
    assert result is view
    assert_conforms(
        view, buffer[:, :, 1:3], positions, 64, 1e6, 0.25, pairing=pairing, level="strict", device=device.type
    )
    outside = np.ones(4, dtype=bool)
    outside[1:3] = False
    assert bits(whole[:, :, outside]).equal(bits(to_torch(buffer[:, :, outside])))


def test_in_place_does_nothing_on_errors() -> None:
    x = torch.randn(2, 3, 1, 8)
    before = x.clone()
    with pytest.raises(ValueError, match="do not broadcast"):
        pt.apply_p_rope_(x, torch.arange(4), 8)
    assert bits(x).equal(bits(before))


def test_non_contiguous_inputs(device: torch.device) -> None:
    rng = np.random.default_rng(12)
    batch, length, heads, head_dim = 2, 7, 3, 128
    positions = integer_positions(rng, (batch, length))
    # a slice of a fused qkv projection [B, L, 3 N H]: q and k are strided views
    qkv = to_torch(normal(rng, (batch, length, 3 * heads * head_dim), "float32"), device)
    q = qkv[..., : heads * head_dim].unflatten(-1, (heads, head_dim))
    k = qkv[..., heads * head_dim : 2 * heads * head_dim].unflatten(-1, (heads, head_dim))
    assert not q.is_contiguous()
    q_out, k_out = pt.apply_p_rope_qk(q, k, to_torch(positions, device), head_dim, 1e4, 0.58)
    for out, view in ((q_out, q), (k_out, k)):
        assert_conforms(out, to_numpy(view), positions, head_dim, 1e4, 0.58, level="strict", device=device.type)
    # a transposed view: HF's [B, N, L, H] seen as [B, L, N, H], and the reverse
    hf = to_torch(normal(rng, (batch, heads, length, head_dim), "float16"), device)
    for view, seq_axis in ((hf.transpose(1, 2), -3), (hf.transpose(1, 2).contiguous().transpose(1, 2), -2)):
        expected = to_numpy(view)
        out = pt.apply_p_rope(view, to_torch(positions, device), head_dim, 1e4, 1.0, seq_axis=seq_axis)
        assert_conforms(out, expected, positions, head_dim, 1e4, level="strict", device=device.type, seq_axis=seq_axis)
        pt.apply_p_rope_(view, to_torch(positions, device), head_dim, 1e4, 1.0, seq_axis=seq_axis)
        assert bits(view).equal(bits(out))
    # a broadcast (stride-0) input out of place
    row = to_torch(normal(rng, (1, length, 1, 16), "float32"), device).expand(batch, length, heads, 16)
    out = pt.apply_p_rope(row, to_torch(positions, device), 16)
    assert_conforms(out, to_numpy(row), positions, 16, level="strict", device=device.type)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuda not available")
def test_positions_and_tables_moved_to_the_inputs_device() -> None:
    x = torch.randn(2, 5, 3, 32, device="cuda")
    positions = torch.arange(5)  # on the CPU
    out = pt.apply_p_rope(x, positions, 32, rope_percentage=0.5)
    assert out.device == x.device
    tables = pt.p_rope_tables(positions, 32, rope_percentage=0.5)
    assert tables.cos.device.type == "cpu"
    assert bits(pt.apply_p_rope_tables(x, tables)).equal(bits(out))
    assert_conforms(out, to_numpy(x), positions.numpy(), 32, rope_percentage=0.5, level="strict", device="cuda")


def test_positions_as_python_values() -> None:
    x = np.ones((1, 3, 1, 4), dtype=np.float32)
    out = pt.apply_p_rope(to_torch(x), [[1, 2, 10**6]], 4)
    assert_conforms(out, x, np.array([[1, 2, 10**6]]), 4, level="strict", device="cpu")
    out = pt.apply_p_rope(to_torch(x), 2.5, 4)  # a Python float: the reference's float64 value
    assert_conforms(out, x, np.array(2.5), 4, level="strict", device="cpu")


def test_gemma_reference_values() -> None:
    """google-deepmind/gemma's own test (field notes): ones (2, 1, 2, 4), positions [[1], [0]], base 100."""
    x = torch.ones(2, 1, 2, 4)
    positions = torch.tensor([[1], [0]])
    full = pt.apply_p_rope(x, positions, 4, 100)
    half = pt.apply_p_rope(x, positions, 4, 100, 0.5)
    expected_full = torch.tensor([-0.30116868, 0.89517075, 1.3817732, 1.0948375])
    expected_half = torch.tensor([-0.30116868, 1.0, 1.3817732, 1.0])
    torch.testing.assert_close(full[0, 0], expected_full.expand(2, 4), rtol=0, atol=2e-7)
    torch.testing.assert_close(half[0, 0], expected_half.expand(2, 4), rtol=0, atol=2e-7)
    assert bits(full[1]).equal(bits(x[1])) and bits(half[1]).equal(bits(x[1]))


def test_inference_mode(device: torch.device) -> None:
    rng = np.random.default_rng(13)
    x, positions = normal(rng, (2, 6, 2, 48), "float32"), integer_positions(rng, (2, 6))
    # a parameter set seen first under inference mode: its cached constants must serve autograd later
    with torch.inference_mode():
        inputs = to_torch(x, device)
        out = pt.apply_p_rope(inputs, to_torch(positions, device), 48, 777.0, 0.5)
        pt.apply_p_rope_(inputs, to_torch(positions, device), 48, 777.0, 0.5)
        q_out, _ = pt.apply_p_rope_qk(
            to_torch(x, device), to_torch(x, device), to_torch(positions, device), 48, 777.0, 0.5
        )
        tables = pt.p_rope_tables(to_torch(positions, device), 48, 777.0, 0.5)
        from_tables = pt.apply_p_rope_tables(to_torch(x, device), tables)
    for result in (out, inputs, q_out, from_tables):
        assert result.is_inference()
        assert_conforms(result, x, positions, 48, 777.0, 0.5, level="strict", device=device.type)
    leaf = to_torch(x, device).requires_grad_()
    pt.apply_p_rope(leaf, to_torch(positions, device), 48, 777.0, 0.5).sum().backward()
    assert leaf.grad is not None


# ---------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("pairing", "seq_axis"), [("split_half", -3), ("interleaved", -2)])
def test_vjp_is_the_reference_at_negated_positions(
    device: torch.device, dtype: str, pairing: str, seq_axis: int
) -> None:
    """d<g, f(x, m)>/dx = f(g, -m): the backward is the inverse rotation (strict level)."""
    skip_unsupported(device, dtype)
    rng = np.random.default_rng(14)
    x = normal(rng, layout((2,), 6, 3, 64, seq_axis), dtype)
    cotangent = normal(rng, x.shape, dtype)
    positions = integer_positions(rng, (2, 6))
    kwargs: dict[str, Any] = dict(pairing=pairing, seq_axis=seq_axis)
    for call in ("apply_p_rope", "apply_p_rope_", "apply_p_rope_qk", "apply_p_rope_tables"):
        inputs = to_torch(x, device).requires_grad_()
        start = inputs * 1 if call == "apply_p_rope_" else inputs  # in place needs a non-leaf
        pos = to_torch(positions, device)
        if call == "apply_p_rope_tables":
            table_dtype = torch.float64 if dtype == "float64" else None
            out = pt.apply_p_rope_tables(start, pt.p_rope_tables(pos, 64, 1e6, 0.25, dtype=table_dtype), **kwargs)
        elif call == "apply_p_rope_qk":
            out = pt.apply_p_rope_qk(start, start, pos, 64, 1e6, 0.25, **kwargs)[1]
        else:
            out = getattr(pt, call)(start, pos, 64, 1e6, 0.25, **kwargs)
        (grad,) = torch.autograd.grad(out, inputs, to_torch(cotangent, device))
        assert grad.dtype == inputs.dtype
        assert_conforms(grad, cotangent, -positions, 64, 1e6, 0.25, level="strict", device=device.type, **kwargs)


def test_backward_saves_only_the_tables() -> None:
    x = torch.randn(1, 4, 2, 16, requires_grad=True)
    positions = torch.arange(4)
    saved: list[tuple[int, ...]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = pt.apply_p_rope(x, positions, 16, rope_percentage=0.5)
    assert saved == [(4, 4), (4, 4)]  # cos and sin, [L, R]
    out.sum().backward()


def test_gradcheck_float64() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor([[0, 5, -9], [70_000, 3, 2**24]])
    for kwargs in ({}, {"pairing": "interleaved", "seq_axis": -2}, {"rotated_pairs": 1}):
        inputs = x.transpose(1, 2) if kwargs.get("seq_axis") == -2 else x
        assert torch.autograd.gradcheck(lambda t, kw=kwargs: pt.apply_p_rope(t, positions, 8, 500.0, **kw), (inputs,))
        assert torch.autograd.gradgradcheck(
            lambda t, kw=kwargs: pt.apply_p_rope(t, positions, 8, 500.0, **kw), (inputs,)
        )
    # gradients of the tables too, when they require one
    cos, sin = pt.p_rope_tables(positions, 8, 500.0, rotated_pairs=3, dtype=torch.float64)
    cos.requires_grad_()
    sin.requires_grad_()
    assert torch.autograd.gradcheck(lambda t, c, s: pt.apply_p_rope_tables(t, pt.RopeTables(c, s)), (x, cos, sin))
    broadcast = pt.RopeTables(cos[:1].detach().requires_grad_(), sin[:1].detach().requires_grad_())
    assert torch.autograd.gradcheck(
        lambda t, c, s: pt.apply_p_rope_tables(t, pt.RopeTables(c, s), seq_axis=-2, pairing="interleaved"),
        (x.transpose(1, 2), *broadcast),
    )


# ---------------------------------------------------------------------------------------------
# torch.compile


def compile_counted(fn: Any, backend: str = "eager") -> tuple[Any, Any]:
    import torch._dynamo.testing

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    return torch.compile(fn, fullgraph=True, backend=counter), counter


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("call", ["apply_p_rope", "apply_p_rope_", "apply_p_rope_qk", "tables"])
@pytest.mark.filterwarnings(*COMPILE_WARNINGS[0].args)
def test_compile_fullgraph_no_recompile(backend: str, call: str) -> None:
    import torch._dynamo

    def fn(x: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> Any:
        if call == "apply_p_rope_qk":
            return pt.apply_p_rope_qk(x, k, positions, 64, 1e6, 0.25, seq_axis=-2)
        if call == "tables":
            tables = pt.p_rope_tables(positions, 64, 1e6, 0.25)
            return pt.apply_p_rope_tables(x, tables, seq_axis=-2), pt.apply_p_rope_tables(k, tables, seq_axis=-2)
        return getattr(pt, call)(x, positions, 64, 1e6, 0.25, seq_axis=-2)

    compiled, counter = compile_counted(fn, backend)
    rng = np.random.default_rng(15)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):  # new position values, same shapes and dtypes: no recompilation
            x, k = normal(rng, (2, 4, 5, 64), "float32"), normal(rng, (2, 1, 5, 64), "bfloat16")
            positions = integer_positions(rng, (2, 5))
            xt, kt = to_torch(x), to_torch(k)
            out = compiled(xt, kt, to_torch(positions))
            outs = out if isinstance(out, tuple) else (xt if call == "apply_p_rope_" else out,)
            for got, expected in zip(outs, (x, k)[: len(outs)], strict=True):
                assert_conforms(got, expected, positions, 64, 1e6, 0.25, seq_axis=-2, level="strict", device="cpu")
    assert counter.frame_count == 1


@pytest.mark.filterwarnings(*COMPILE_WARNINGS[0].args)
def test_compile_real_positions(table_route: str) -> None:
    compiled, counter = compile_counted(lambda x, p: pt.apply_p_rope(x, p, 32, 1e4, 0.5), "aot_eager")
    rng = np.random.default_rng(18)
    for _ in range(2):
        x = normal(rng, (2, 6, 1, 32), "float16")
        positions = rng.uniform(-MAX_POSITION, MAX_POSITION, (2, 6)).astype(np.float32)
        positions[0, 0] = np.nan
        out = compiled(to_torch(x), to_torch(positions))
        assert_conforms(out, x, positions, 32, 1e4, 0.5, level="strict", device="cpu")
    assert counter.frame_count == 1


@pytest.mark.filterwarnings(*COMPILE_WARNINGS[0].args)
def test_compile_gradients() -> None:
    def loss(x: torch.Tensor, positions: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (pt.apply_p_rope(x, positions, 32, 1e4, 0.5, pairing="interleaved") * g).sum()

    compiled, counter = compile_counted(loss, "aot_eager")
    rng = np.random.default_rng(16)
    for _ in range(2):
        x, g = normal(rng, (3, 4, 2, 32), "float32"), normal(rng, (3, 4, 2, 32), "float32")
        positions = integer_positions(rng, (3, 4))
        inputs = to_torch(x).requires_grad_()
        compiled(inputs, to_torch(positions), to_torch(g)).backward()
        assert_conforms(inputs.grad, g, -positions, 32, 1e4, 0.5, pairing="interleaved", level="strict", device="cpu")
    assert counter.frame_count == 1


@pytest.mark.filterwarnings(*COMPILE_WARNINGS[0].args)
def test_compile_with_parameters_changing_needs_dynamic_false() -> None:
    """Two layers with different max_wavelength through one compiled function (module docstring)."""
    import torch._dynamo
    import torch._dynamo.testing

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(
        lambda x, p, w: pt.apply_p_rope(x, p, 16, w, 0.5), fullgraph=True, backend=counter, dynamic=False
    )
    x, positions = np.ones((1, 3, 1, 16), dtype=np.float32), np.array([1, 2, 3])
    for w in (1e4, 1e6, 1e4):
        out = compiled(to_torch(x), to_torch(positions), w)
        assert_conforms(out, x, positions, 16, w, 0.5, level="strict", device="cpu")
    assert counter.frame_count == 2


@pytest.mark.slow
@pytest.mark.filterwarnings(*COMPILE_WARNINGS[1].args)
def test_compile_inductor() -> None:
    import torch._dynamo

    compiled, counter = compile_counted(lambda x, p: pt.apply_p_rope(x, p, 64, 1e6, 0.25), "inductor")
    rng = np.random.default_rng(17)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            x, positions = normal(rng, (2, 5, 3, 64), "bfloat16"), integer_positions(rng, (2, 5))
            out = compiled(to_torch(x), to_torch(positions))
            assert_conforms(out, x, positions, 64, 1e6, 0.25, level="strict", device="cpu")
    assert counter.frame_count == 1


# ---------------------------------------------------------------------------------------------
# errors: the reference's types and messages, before any work


ERROR_CASES: list[tuple[str, dict[str, Any]]] = [
    ("head_dim-type", dict(head_dim=4.0)),
    ("head_dim-odd", dict(head_dim=5)),
    ("head_dim-zero", dict(head_dim=0)),
    ("inputs-dtype", dict(x=np.zeros((1, 3, 2, 4), dtype=np.int32))),
    ("inputs-rank", dict(x=np.zeros((3, 4), dtype=np.float32))),
    ("head_dim-mismatch", dict(head_dim=8)),
    ("rotated_pairs-type", dict(rotated_pairs=1.0)),
    ("rotated_pairs-range", dict(rotated_pairs=3)),
    ("rope_percentage-type", dict(rope_percentage="0.5")),
    ("rope_percentage-range", dict(rope_percentage=1.5)),
    ("rope_percentage-nan", dict(rope_percentage=float("nan"))),
    ("rotated_pairs-and-rope_percentage", dict(rope_percentage=0.5, rotated_pairs=1)),
    ("max_wavelength-type", dict(max_wavelength=None)),
    ("max_wavelength-nonpositive", dict(max_wavelength=0)),
    ("max_wavelength-nonfinite", dict(max_wavelength=float("inf"))),
    ("scale_factor-type", dict(scale_factor="2")),
    ("scale_factor-below-1", dict(scale_factor=0.5)),
    ("scale_factor-nonfinite", dict(scale_factor=float("nan"))),
    ("pairing", dict(pairing="rotate_half")),
    ("seq_axis", dict(seq_axis=1)),
    ("positions-dtype", dict(positions=np.array([True, False, True]))),
    ("positions-16bit", dict(positions=np.arange(3, dtype=np.float16))),
    ("positions-shape", dict(positions=np.arange(4))),
]


def _call(module: Any, name: str, convert: Any, case: dict[str, Any]) -> Exception:
    x = case.get("x", np.zeros((1, 3, 2, 4), dtype=np.float32))
    positions = case.get("positions", np.arange(3))
    kwargs = {key: case[key] for key in ("rotated_pairs", "scale_factor", "pairing", "seq_axis") if key in case}
    args = (case.get("head_dim", 4), case.get("max_wavelength", 10_000), case.get("rope_percentage", 1.0))
    with pytest.raises((TypeError, ValueError)) as error:
        if name == "apply_p_rope_qk":
            module.apply_p_rope_qk(convert(x), convert(x), convert(positions), *args, **kwargs)
        else:
            getattr(module, name)(convert(x), convert(positions), *args, **kwargs)
    return error.value


def _torch_convert(value: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(value.copy())


@pytest.mark.parametrize("name", ["apply_p_rope", "apply_p_rope_", "apply_p_rope_qk"])
@pytest.mark.parametrize(("case_id", "case"), ERROR_CASES, ids=[case_id for case_id, _ in ERROR_CASES])
def test_errors_match_reference(name: str, case_id: str, case: dict[str, Any]) -> None:
    expected = _call(p_rope, name, lambda a: a.copy(), case)
    got = _call(pt, name, _torch_convert, case)
    assert type(got) is type(expected) and str(got) == str(expected), case_id


def test_other_errors() -> None:
    x = torch.zeros(1, 3, 2, 4)
    with pytest.raises(TypeError, match=r"^inputs must be an array; got list$"):
        pt.apply_p_rope([[[[0.0] * 4]]], [0], 4)
    with pytest.raises(TypeError, match=r"^q must be a torch.Tensor; got ndarray$"):
        pt.apply_p_rope_qk(np.zeros((1, 3, 2, 4)), x, [0, 1, 2], 4)
    with pytest.raises(TypeError, match=r"^k must have a real floating dtype"):
        pt.apply_p_rope_qk(x, x.to(torch.complex64), [0, 1, 2], 4)
    with pytest.raises(ValueError, match=r"^q of shape \(1, 3, 2, 4\) and k of shape \(1, 2, 2, 4\) must share"):
        pt.apply_p_rope_qk(x, torch.zeros(1, 2, 2, 4), [0, 1, 2], 4)
    with pytest.raises(TypeError, match=r"^positions must be an array; got list$"):
        pt.p_rope_tables([0, 1], 4)
    for fn in (pt.p_rope_tables, pt.frequencies):
        args = (torch.arange(3), 4) if fn is pt.p_rope_tables else (4,)
        with pytest.raises(TypeError, match=r"^dtype must be float32 or float64; got float16$"):
            fn(*args, dtype=torch.float16)
    tables = pt.p_rope_tables(torch.arange(3), 4)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        (dict(tables={"cos": 1}), TypeError, r"^tables must be a RopeTables\(cos, sin\); got dict$"),
        (dict(tables=(tables.cos, tables.sin[:, :1])), ValueError, r"^tables.cos and tables.sin must have the same"),
        (dict(tables=(torch.zeros(3, 3), torch.zeros(3, 3))), ValueError, r"^tables must have shape \[..., L, R\]"),
        (dict(tables=(tables.cos.half(), tables.sin.half())), TypeError, r"^tables must be float32 or float64"),
        (dict(x=x.double()), TypeError, r"^tables are float32 but inputs are float64"),
        (dict(tables=(torch.zeros(4, 2), torch.zeros(4, 2))), ValueError, r"^tables of shape \(4,\) do not broadcast"),
        (dict(x=x.long()), TypeError, r"^inputs must have a real floating dtype"),
    ]
    for case, error, message in cases:
        with pytest.raises(error, match=message):
            pt.apply_p_rope_tables(case.get("x", x), case.get("tables", tables))


def test_errors_raised_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work(*args: object) -> None:
        raise AssertionError("work started before the checks finished")

    monkeypatch.setattr(pt, "torch_tables", no_work)
    monkeypatch.setattr(pt, "rotation", no_work)
    monkeypatch.setattr(pt, "rotation_in_place", no_work)
    for name in ("apply_p_rope", "apply_p_rope_", "apply_p_rope_qk"):
        for _, case in ERROR_CASES:
            _call(pt, name, _torch_convert, case)


def test_no_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = torch.randn(1, 2, 1, 8, dtype=torch.bfloat16)
        pt.apply_p_rope_(x, torch.tensor([1.0, float("nan")]), 8)
