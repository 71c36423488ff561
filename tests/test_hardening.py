"""Adversarial inputs, on every implementation: each bad argument gets SPEC.md's error before any
work, each valid call the reference's answer (SPEC.md §4, §6, §9; the defects of issue 11).

Every test takes the implementation as a pytest parameter (`impl`); expected values come from the
NumPy reference or from SPEC.md's messages, never from the implementation under test.
"""

from __future__ import annotations

import datetime
import importlib
import re
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import p_rope
import pytest

from tests.helpers import assert_conforms, to_numpy


@dataclass(frozen=True)
class Impl:
    """An implementation under test: its module, NumPy -> native arrays, and what it offers."""

    name: str
    module: Any
    native: Any
    in_place: bool
    library: str  # "numpy", "torch" or "jax": the library of its arrays


def _torch_native(array: np.ndarray) -> Any:
    torch = importlib.import_module("torch")
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def _jax_native(array: np.ndarray) -> Any:
    return importlib.import_module("jax.numpy").asarray(array)


def _make(name: str) -> Impl:
    if name == "reference":
        return Impl(name, p_rope, np.copy, True, "numpy")
    library = name.split(":")[-1]
    pytest.importorskip(library)
    native = {"numpy": np.copy, "torch": _torch_native, "jax": _jax_native}[library]
    if name.startswith("array_api:"):
        module = importlib.import_module("p_rope.backends.array_api")
        return Impl(name, module, native, library != "jax", library)
    return Impl(name, importlib.import_module(f"p_rope.backends.{name}"), native, name == "torch", library)


IMPLS = ["reference", "array_api:numpy", "array_api:torch", "array_api:jax", "torch", "jax"]
IN_PLACE = ["reference", "array_api:numpy", "array_api:torch", "torch"]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Impl:
    return _make(request.param)


@pytest.fixture(params=IN_PLACE)
def in_place_impl(request: pytest.FixtureRequest) -> Impl:
    return _make(request.param)


def reference_error(call: Any) -> BaseException:
    with pytest.raises((TypeError, ValueError)) as caught:
        call(p_rope)
    return caught.value


def assert_same_error(impl: Impl, call: Any) -> None:
    """call(impl.module) raises the reference's exception type with the reference's message."""
    expected = reference_error(call)
    with pytest.raises(type(expected), match=f"^{re.escape(str(expected))}$"):
        call(impl.module)


# ---------------------------------------------------------------------------------------------
# in place on memory shared between elements


def _overlapping(impl: Impl, kind: str) -> Any:
    """A writable array whose elements share memory: a batch axis of stride 0 (an expanded view),
    or tokens whose windows overlap (as_strided), over a [1, 8, 2, 16] float32 base."""
    base = np.random.default_rng(0).standard_normal((1, 8, 2, 16)).astype(np.float32)
    if impl.library == "torch":
        tensor = _torch_native(base)
        if kind == "expanded":
            return tensor.expand(2, 8, 2, 16)
        return tensor.as_strided((1, 4, 2, 16), (256, 16, 16, 1))  # token t's 2nd head is t + 1's 1st
    strides = np.array(base.strides)
    if kind == "expanded":
        return np.lib.stride_tricks.as_strided(base, (2, 8, 2, 16), (0, *base.strides[1:]))
    return np.lib.stride_tricks.as_strided(base, (1, 4, 2, 16), tuple(strides[[0, 3, 3, 3]] * [1, 16, 16, 1]))


@pytest.mark.parametrize("kind", ["expanded", "overlapping-tokens"])
def test_in_place_rejects_internal_overlap(in_place_impl: Impl, kind: str) -> None:
    x = _overlapping(in_place_impl, kind)
    before = to_numpy(x).copy()
    with pytest.raises(ValueError, match=r"^inputs has shape .* under which elements may share memory"):
        in_place_impl.module.apply_p_rope_(x, np.arange(x.shape[1]), 16, 10_000.0, 0.25)
    assert np.array_equal(to_numpy(x), before)  # nothing written


def test_in_place_on_a_large_expanded_batch_is_refused(in_place_impl: Impl) -> None:
    """Issue 11's case: base.expand(2, 1, 3200, 128) at p = 0.25 was rotated once per chunk."""
    base = np.ones((1, 1, 3200, 128), np.float32)
    if in_place_impl.library == "torch":
        x = _torch_native(base).expand(2, 1, 3200, 128)
    else:
        x = np.lib.stride_tricks.as_strided(base, (2, 1, 3200, 128), (0, *base.strides[1:]))
    with pytest.raises(ValueError, match="may share memory"):
        in_place_impl.module.apply_p_rope_(x, np.arange(3200), 128, 10_000.0, 0.25, seq_axis=-2)
    assert np.all(to_numpy(x) == 1.0)


def test_in_place_on_views_without_overlap_is_allowed(in_place_impl: Impl) -> None:
    """Transposed, sliced and reversed views whose elements are distinct are rotated in place."""
    rng = np.random.default_rng(1)
    full = rng.standard_normal((2, 6, 3, 32)).astype(np.float32)
    expected = p_rope.apply_p_rope(full[:, ::2], np.arange(3), 32, 100.0, 0.5)
    if in_place_impl.library == "torch":
        x = _torch_native(full)[:, ::2]
    else:
        x = full.copy()[:, ::2]
    out = in_place_impl.module.apply_p_rope_(x, np.arange(3), 32, 100.0, 0.5)
    assert_conforms(out, full[:, ::2], np.arange(3), 32, 100.0, 0.5, level="strict")
    assert to_numpy(out).shape == expected.shape


# ---------------------------------------------------------------------------------------------
# positions: every integer dtype, 64-bit integers on JAX without x64, bad values


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32", "uint64"])
def test_every_integer_position_dtype(impl: Impl, dtype: str) -> None:
    """SPEC.md §4: any integer dtype, signed or unsigned, any width."""
    info = np.iinfo(dtype)
    positions = np.array([[0, 1, 2, 7], [info.max, max(info.min, -5), 100, info.max - 1]], dtype=dtype)
    x = np.random.default_rng(2).standard_normal((2, 4, 3, 64)).astype(np.float32)
    if impl.library == "jax" and dtype == "uint64":  # NumPy positions: JAX has no uint64 without x64
        with pytest.raises(ValueError, match="positions of dtype uint64 hold 18446744073709551615, beyond uint32"):
            impl.module.apply_p_rope(impl.native(x), positions, 64, 10_000.0, 0.5)
        positions[1, [0, 3]] = 2**32 - 1
    native = positions if impl.library == "jax" and dtype == "uint64" else impl.native(positions)
    out = impl.module.apply_p_rope(impl.native(x), native, 64, 10_000.0, 0.5)
    assert_conforms(out, x, positions.astype(np.float64), 64, 10_000.0, 0.5)


@pytest.mark.parametrize("impl_name", ["jax", "array_api:jax"])
@pytest.mark.parametrize("given", ["numpy-int64", "python-ints"])
def test_jax_without_x64_never_wraps_positions(impl_name: str, given: str) -> None:
    """With jax_enable_x64 off, 2**32 + 7 would become 7: refused, naming jax_enable_x64."""
    impl = _make(impl_name)
    x = impl.native(np.ones((1, 2, 1, 8), np.float32))
    positions: Any = np.array([[5, 2**32 + 7]]) if given == "numpy-int64" else [[5, 2**32 + 7]]
    with pytest.raises(ValueError, match="jax_enable_x64"):
        impl.module.apply_p_rope(x, positions, 8)
    small = np.array([[5, 2**31 - 1]]) if given == "numpy-int64" else [[5, 2**31 - 1]]
    out = impl.module.apply_p_rope(x, small, 8)
    assert_conforms(out, np.ones((1, 2, 1, 8), np.float32), np.array([[5, 2**31 - 1]]), 8)


BAD_POSITIONS = {
    "None": None,
    "str": "0 1 2",
    "object-array": np.array([0, 1, None], dtype=object),
    "datetime64": np.array(["2026-01-01", "2026-01-02", "2026-01-03"], dtype="datetime64[D]"),
    "datetime-objects": [datetime.date(2026, 1, d) for d in (1, 2, 3)],
    "longdouble": np.arange(3, dtype=np.longdouble),
    "ragged": [[0, 1], [2]],
    "int-2**63": [0, 1, 2**63],
    "int-2**64": 2**64,
    "int-minus-2**63-1": [-(2**63) - 1, 0, 1],
}


@pytest.mark.parametrize("kind", list(BAD_POSITIONS))
def test_bad_positions_get_spec_errors(impl: Impl, kind: str) -> None:
    if kind == "longdouble" and np.dtype(np.longdouble) == np.dtype(np.float64):
        pytest.skip("longdouble is float64 on this platform")
    positions = BAD_POSITIONS[kind]
    x = np.zeros((1, 3, 2, 4), np.float32)

    def call(module: Any) -> Any:
        inputs = x.copy() if module is p_rope else impl.native(x)
        return module.apply_p_rope(inputs, positions, 4)

    if impl.library == "jax" and kind.startswith("int-"):  # without x64, Python ints must fit int32
        with pytest.raises(ValueError, match=r"\(int32, the widest integer JAX holds with jax_enable_x64 off\)"):
            call(impl.module)
        return
    assert_same_error(impl, call)


def test_huge_finite_float64_positions(impl: Impl) -> None:
    """A finite position of 1e300 gives finite values (SPEC.md §6: only non-finite positions give
    NaN); beyond 2**24 the conformant level applies."""
    positions = np.array([[1e300, -1e300, 3.0e38, 2.0**80 + 0.5]], np.float64)
    x = np.random.default_rng(3).standard_normal((1, 4, 2, 16)).astype(np.float32)
    if impl.library == "jax":
        jax = importlib.import_module("jax")
        with jax.enable_x64(True):  # without x64, JAX itself makes float64 data float32 (SPEC.md §5)
            out = to_numpy(impl.module.apply_p_rope(impl.native(x), impl.native(positions), 16))
    else:
        out = impl.module.apply_p_rope(impl.native(x), impl.native(positions), 16)
    assert np.all(np.isfinite(to_numpy(out)))
    assert_conforms(out, x, positions, 16)


@pytest.mark.parametrize("impl_name", ["array_api:torch", "array_api:jax"])
def test_numpy_positions_go_to_the_inputs_library(impl_name: str) -> None:
    impl = _make(impl_name)
    x = np.random.default_rng(4).standard_normal((2, 3, 2, 8)).astype(np.float32)
    for positions in (np.arange(3), np.arange(3, dtype=np.uint8), [[0, 1, 2], [3, 4, 5]], 7):
        out = impl.module.apply_p_rope(impl.native(x), positions, 8)
        assert_conforms(out, x, np.asarray(positions), 8, level="strict")


# ---------------------------------------------------------------------------------------------
# parameters: tiny and huge values


@pytest.mark.parametrize("positions_dtype", ["int64", "float32"])
def test_max_wavelength_below_one(impl: Impl, positions_dtype: str) -> None:
    """w = 0.01 is valid (pairs then turn more than once per unit position)."""
    positions = np.array([[0, 1, 3, 1000, 2**20, -77]]).astype(positions_dtype)
    if positions_dtype == "float32":
        positions = positions + np.float32(0.375)
    x = np.random.default_rng(5).standard_normal((1, 6, 2, 64)).astype(np.float32)
    out = impl.module.apply_p_rope(impl.native(x), impl.native(positions), 64, 0.01, 0.5)
    assert_conforms(out, x, positions, 64, 0.01, 0.5, level="strict")


def test_frequencies_overflowing_float64_are_refused(impl: Impl) -> None:
    """w = 5e-324 with H = 1024: freq_511 = w ** (-1022/1024) is about 1e321, beyond float64."""
    x = np.zeros((1, 2, 1, 1024), np.float32)

    def call(module: Any) -> Any:
        return module.apply_p_rope(x.copy() if module is p_rope else impl.native(x), np.arange(2), 1024, 5e-324)

    assert_same_error(impl, call)
    with pytest.raises(ValueError, match=r"overflow float64"):
        call(impl.module)


@pytest.mark.parametrize("parameter", ["rope_percentage", "max_wavelength", "scale_factor"])
def test_huge_python_int_parameters(impl: Impl, parameter: str) -> None:
    """10**400 is a real number that no float holds: SPEC.md's ValueError, not OverflowError."""
    x = np.zeros((1, 3, 2, 4), np.float32)

    def call(module: Any) -> Any:
        return module.apply_p_rope(
            x.copy() if module is p_rope else impl.native(x), np.arange(3), 4, **{parameter: 10**400}
        )

    assert_same_error(impl, call)
    with pytest.raises(ValueError, match=f"^{parameter} must be "):
        call(impl.module)


# ---------------------------------------------------------------------------------------------
# tables


@pytest.mark.parametrize("sin_dtype", ["float16", "int32", "bool", "float64"])
def test_tables_of_two_dtypes_refused(impl: Impl, sin_dtype: str) -> None:
    x = np.zeros((1, 3, 2, 4), np.float32)
    cos = np.ones((3, 2), np.float32)
    sin = np.zeros((3, 2), sin_dtype)

    def call(module: Any) -> Any:  # JAX would make float64 tables float32: they stay NumPy arrays
        convert = np.copy if module is p_rope else impl.native
        keep = np.copy if module is p_rope or impl.library == "jax" else impl.native
        return module.apply_p_rope_tables(convert(x), p_rope.RopeTables(keep(cos), keep(sin)))

    assert_same_error(impl, call)
    with pytest.raises(TypeError, match=r"^tables.cos and tables.sin must have the same dtype"):
        call(impl.module)


@pytest.mark.parametrize("head_dim", [5, 1])
def test_tables_on_odd_head_dim_refused(impl: Impl, head_dim: int) -> None:
    x = np.zeros((1, 3, 2, head_dim), np.float32)
    tables = p_rope.RopeTables(np.ones((3, 0), np.float32), np.zeros((3, 0), np.float32))

    def call(module: Any) -> Any:
        convert = np.copy if module is p_rope else impl.native
        return module.apply_p_rope_tables(convert(x), p_rope.RopeTables(*(convert(t) for t in tables)))

    assert_same_error(impl, call)
    with pytest.raises(ValueError, match=r"must be a positive even head_dim"):
        call(impl.module)


# ---------------------------------------------------------------------------------------------
# special values: NaN payloads in NoPE lanes


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_nan_payloads_in_nope_lanes_kept_bit_for_bit(impl: Impl, dtype: str) -> None:
    """SPEC.md §6: NoPE lanes come back bit for bit, NaN payloads (quiet or signaling) included."""
    rng = np.random.default_rng(6)
    bits = rng.standard_normal((2, 5, 3, 32)).astype(dtype).view(np.uint16)
    payloads = np.array([0x7F81, 0xFFC1, 0x7FC3, 0xFF85] if dtype == "bfloat16" else [0x7C01, 0xFE01, 0x7E03, 0xFC05])
    bits[..., 20:24] = payloads.astype(np.uint16)  # NoPE lanes for H = 32, p = 0.25 (R = 4)
    x = bits.view(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16)
    out = to_numpy(impl.module.apply_p_rope(impl.native(x), np.arange(5), 32, 10_000.0, 0.25))
    got = out.view(np.uint16)
    nope = np.r_[4:16, 20:32]
    assert np.array_equal(got[..., nope], bits[..., nope])


@pytest.mark.parametrize("impl_name", ["jax", "array_api:jax"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_bit_copies_keep_the_derivative(impl_name: str, dtype: str) -> None:
    """The bit copies that keep NaN payloads have no derivative in autodiff: the gradient must
    still be the rotation by -theta of the cotangent (NoPE lanes: the cotangent, bit for bit)."""
    impl = _make(impl_name)
    jax = importlib.import_module("jax")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 3, 32)).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16)
    cotangent = rng.standard_normal(x.shape).astype(x.dtype)
    positions = np.arange(5) * 37

    def call(v: Any) -> Any:
        return impl.module.apply_p_rope(v, positions, 32, 10_000.0, 0.25)

    for function in (call, jax.jit(call)):
        _, pullback = jax.vjp(function, impl.native(x))
        (grad,) = pullback(impl.native(cotangent))
        assert_conforms(grad, cotangent, -positions, 32, 10_000.0, 0.25, level="strict")


@pytest.mark.parametrize("rope_percentage", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("entry", ["apply_p_rope", "apply_p_rope_tables"])
def test_torch_copies_keep_the_graph(entry: str, rope_percentage: float) -> None:
    """The array API backend on torch copies x into its output with the graph kept (torch.asarray's
    copy dropped it in older torch releases and warns in newer ones): the gradient is the rotation by
    -theta of the cotangent, NoPE lanes the cotangent itself, and no warning is raised."""
    impl = _make("array_api:torch")
    torch = importlib.import_module("torch")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 5, 3, 32))
    cotangent = rng.standard_normal(x.shape)
    positions = np.arange(5) * 37
    inputs = torch.from_numpy(x.copy()).requires_grad_(True)
    if entry == "apply_p_rope":
        out = impl.module.apply_p_rope(inputs, torch.from_numpy(positions), 32, 10_000.0, rope_percentage)
    else:
        tables = impl.module.p_rope_tables(torch.from_numpy(positions), 32, 10_000.0, rope_percentage, dtype="float64")
        out = impl.module.apply_p_rope_tables(inputs, tables)
    out.backward(torch.from_numpy(cotangent))
    assert inputs.grad is not None
    assert_conforms(inputs.grad, cotangent, -positions, 32, 10_000.0, rope_percentage, level="strict")


# ---------------------------------------------------------------------------------------------
# devices


@pytest.mark.parametrize("impl_name", ["torch", "array_api:torch"])
def test_qk_on_two_devices_refused(impl_name: str) -> None:
    impl = _make(impl_name)
    torch = importlib.import_module("torch")
    q = torch.zeros(1, 3, 2, 4)
    k = torch.zeros(1, 3, 2, 4, device="meta")
    with pytest.raises(ValueError, match=r"^q and k must be on the same device; got cpu and meta$"):
        impl.module.apply_p_rope_qk(q, k, torch.arange(3), 4)


def test_jax_qk_on_two_devices_refused() -> None:
    jax = pytest.importorskip("jax")
    pj = importlib.import_module("p_rope.backends.jax")
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("one JAX device only")
    q = jax.device_put(np.zeros((1, 3, 2, 4), np.float32), devices[0])
    k = jax.device_put(np.zeros((1, 3, 2, 4), np.float32), devices[1])
    with pytest.raises(ValueError, match=r"^q and k must be on the same device"):
        pj.apply_p_rope_qk(q, k, np.arange(3), 4)


# ---------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.parametrize("fullgraph", [False, True], ids=["graph-breaks-allowed", "fullgraph"])
@pytest.mark.parametrize(
    "bad", [dict(head_dim=5), dict(pairing="rotate_half"), dict(max_wavelength=-1.0)], ids=["head_dim", "pairing", "w"]
)
def test_compiled_invalid_arguments(fullgraph: bool, bad: dict[str, Any]) -> None:
    """SPEC.md's error under torch.compile; with fullgraph=True dynamo turns any exception raised in
    the compiled region into its Unsupported error, which carries SPEC.md's exception and message."""
    torch = pytest.importorskip("torch")
    pt = importlib.import_module("p_rope.backends.torch")
    x, positions = torch.zeros(1, 3, 2, 4), torch.arange(3)
    kwargs = {"head_dim": 4, **bad}
    expected = reference_error(lambda m: m.apply_p_rope(np.zeros((1, 3, 2, 4), np.float32), np.arange(3), **kwargs))
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: pt.apply_p_rope(a, b, **kwargs), fullgraph=fullgraph, backend="eager")
    if not fullgraph:
        with pytest.raises(type(expected), match=f"^{re.escape(str(expected))}$"):
            compiled(x, positions)
        return
    with pytest.raises(torch._dynamo.exc.Unsupported) as caught:
        compiled(x, positions)
    assert f"{type(expected).__name__}({str(expected)!r})" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# memory: an out-of-place call allocates at most twice its input, output included


def _numpy_peak_bytes(call: Any) -> int:
    """Peak bytes allocated through NumPy (tracemalloc sees every NumPy buffer) while call runs."""
    tracemalloc = importlib.import_module("tracemalloc")
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del out
    return peak


def _torch_peak_bytes(call: Any) -> int:
    """Peak bytes held by the CPU allocator while call runs: every allocation and free the profiler
    records (profile_memory), summed in time order."""
    torch = importlib.import_module("torch")
    profiler = torch.profiler
    with profiler.profile(activities=[profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = call()
    del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    total = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        total += event.nbytes()
        peak = max(peak, total)
    return peak


MEMORY_CASES = [
    ("reference", "float32"),
    ("reference", "bfloat16"),
    ("array_api:numpy", "float32"),
    ("array_api:torch", "float32"),
    ("array_api:torch", "bfloat16"),
    ("torch", "float32"),
    ("torch", "bfloat16"),
]


@pytest.mark.parametrize(("impl_name", "dtype"), MEMORY_CASES)
@pytest.mark.parametrize("rope_percentage", [1.0, 0.25])
def test_out_of_place_peak_memory_at_most_twice_the_input(impl_name: str, dtype: str, rope_percentage: float) -> None:
    """Issue 11's layout, [1, L, 8, 512], with L = 4096 (32 MiB in float32): the output plus every
    temporary stays within 2x the input (float64 work is done in blocks)."""
    impl = _make(impl_name)
    x_np = np.ones((1, 4096, 8, 512), dtype=ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)
    x, positions = impl.native(x_np), impl.native(np.arange(4096))
    measure = _torch_peak_bytes if impl.library == "torch" else _numpy_peak_bytes
    peak = measure(lambda: impl.module.apply_p_rope(x, positions, 512, 1e6, rope_percentage))
    assert peak <= 2 * x_np.nbytes, f"peak {peak / x_np.nbytes:.2f}x the input"
    assert peak >= x_np.nbytes  # the output itself: the measurement sees the allocations


@pytest.mark.parametrize(("impl_name", "dtype"), MEMORY_CASES)
@pytest.mark.parametrize("shape", [(32, 1, 32, 128), (32, 1, 8, 512)], ids=["llama-decode", "gemma4-decode"])
def test_decode_peak_memory_at_most_twice_the_input(impl_name: str, dtype: str, shape: tuple[int, ...]) -> None:
    """Small inputs too (a decode step: 256-512 KiB): blocks scale down with the input, and a wider
    computation dtype goes in chunks, so output plus temporaries stay within 2x the input."""
    impl = _make(impl_name)
    head_dim = shape[-1]
    x_np = np.ones(shape, dtype=ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)
    x, positions = impl.native(x_np), impl.native(np.arange(32)[:, None] + 5000)
    call = lambda: impl.module.apply_p_rope(x, positions, head_dim, 1e4, 1.0)
    call()  # per-parameter constants are cached on the first call: not per-call memory
    measure = _torch_peak_bytes if impl.library == "torch" else _numpy_peak_bytes
    peak = measure(call)
    assert peak <= 2 * x_np.nbytes, f"peak {peak / x_np.nbytes:.2f}x the input"
    assert peak >= x_np.nbytes


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize(("pairing", "seq_axis"), [("split_half", -3), ("interleaved", -2)])
def test_reference_blocks_leave_every_bit_unchanged(
    monkeypatch: pytest.MonkeyPatch, dtype: str, pairing: str, seq_axis: int
) -> None:
    """The reference's float64 work in blocks gives the bits of one block (every operation is
    elementwise), for positions and tables broadcast over batch axes and heads."""
    reference = importlib.import_module("p_rope.reference")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 2, 5, 6, 16)).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    positions = rng.integers(-(2**20), 2**20, size=(2, 1 if seq_axis == -3 else 6))
    tables = p_rope.p_rope_tables(positions, 16, 500.0, 0.75)

    def calls() -> list[np.ndarray]:
        kw = dict(pairing=pairing, seq_axis=seq_axis)
        q = x.copy()
        return [
            p_rope.apply_p_rope(x, positions, 16, 500.0, 0.75, **kw),
            p_rope.apply_p_rope_tables(x, tables, **kw),
            p_rope.apply_p_rope_(q, positions, 16, 500.0, 0.75, **kw),
        ]

    monkeypatch.setattr(reference, "_BLOCK_BYTES", 1 << 40)
    whole = calls()
    monkeypatch.setattr(reference, "_BLOCK_BYTES", 24)  # one row (or less) per block
    for one, blocked in zip(whole, calls(), strict=True):
        assert np.array_equal(one.view(np.uint8), blocked.view(np.uint8))
