"""The cases the conformance suite runs: parameters, and the NumPy arrays each one materializes to.

A case is a frozen description (shape, dtype, p, w, scale_factor, layout, positions, seed); its
arrays are generated from that description alone, with a fixed seed, so that every backend, every
device and every run sees the same numbers. The lists are sampled, not exhaustive: each factor of
the matrix (dtype, H from 2 to 512, p in {0, 0.01, 0.25, 0.5, 0.58, 1}, w from 2 to 1e7, with and
without scale_factor, both pairings, both sequence axes, broadcast and per-row positions, integer
and real positions from 0 to 2**24) appears in several combinations, within the time budget of
conformance/README.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

DTYPES = ("float16", "bfloat16", "float32", "float64")
OPS = ("apply", "tables", "qk", "inplace", "grad", "special", "errors")
STRICT_MAX_POSITION = 2**24
# The levels at which the special values of SPEC.md section 6 (inf, NaN and -0.0 in NoPE lanes,
# non-finite inputs in rotated pairs, non-finite positions) are graded. The strict level only: the
# published code and the Gemma and Hugging Face idioms compute x * 1 - y * 0 over the NoPE lanes
# (turning -0.0 into +0.0 and an infinity into NaN) yet are conformant on finite values.
SPECIAL_VALUES_LEVELS = ("strict",)


def numpy_dtype(name: str) -> Any:
    """NumPy dtype for a dtype name; bfloat16 comes from ml_dtypes."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclasses.dataclass(frozen=True)
class Positions:
    """How a case's positions are made.

    kind: "offsets" (row offset + arange(L), one offset per batch row; offsets below ``high``),
    "random" (uniform integers in [low, high]), "real" (uniform reals in [low, high]), "sweep"
    (0 and log-spaced values up to ``high``), "values" (``values``, in order).
    form: "full" (the batch axes and L), "seq" ([L], shared by the batch), "ones" (1 on each batch
    axis, then L).
    """

    kind: str
    high: float = 4096
    low: float = 0
    dtype: str = "int32"
    form: str = "full"
    values: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class Case:
    """One call of an implementation under test, with the parameters that define its arrays."""

    name: str
    op: str
    dtype: str
    shape: tuple[int, ...]
    head_dim: int
    max_wavelength: float = 10_000.0
    rope_percentage: float = 1.0
    rotated_pairs: int | None = None
    scale_factor: float = 1.0
    pairing: str = "split_half"
    seq_axis: int = -3
    positions: Positions = Positions("offsets")
    k_heads: int | None = None  # qk: heads of k
    special: str = ""  # "finite" or "nonfinite": inputs with special values (see special_inputs)

    @property
    def id(self) -> str:
        return f"{self.op}/{self.dtype}/{self.name}"

    @property
    def seed(self) -> int:
        digest = hashlib.sha256(f"{self.name}|{self.dtype}|{self.op}".encode()).digest()
        return int.from_bytes(digest[:4], "little")

    @property
    def pairs(self) -> int:
        from p_rope._params import resolve_rotated_pairs

        return resolve_rotated_pairs(self.head_dim, self.rope_percentage, self.rotated_pairs)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.shape[:-3]

    @property
    def seq_len(self) -> int:
        return self.shape[self.seq_axis]

    @property
    def heads(self) -> int:
        return self.shape[-2 if self.seq_axis == -3 else -3]

    def keywords(self) -> dict[str, Any]:
        """The keyword arguments of this project's signature that differ from their defaults."""
        kw: dict[str, Any] = {}
        if self.rotated_pairs is not None:
            kw["rotated_pairs"] = self.rotated_pairs
        if self.scale_factor != 1.0:
            kw["scale_factor"] = self.scale_factor
        if self.pairing != "split_half":
            kw["pairing"] = self.pairing
        if self.seq_axis != -3:
            kw["seq_axis"] = self.seq_axis
        return kw

    @property
    def paper_compatible(self) -> bool:
        """Expressible with the paper's signature: [B, L, N, H] inputs, [B, L] positions, defaults."""
        return not self.keywords() and len(self.shape) == 4 and self.positions.form == "full"

    def describe(self) -> str:
        p = f"rotated_pairs={self.rotated_pairs}" if self.rotated_pairs is not None else f"p={self.rope_percentage}"
        spec = self.positions
        where = f"{spec.values}" if spec.kind == "values" else f"[{spec.low:g}..{spec.high:g}]"
        text = (
            f"{self.op} {self.dtype} shape={self.shape} H={self.head_dim} {p} (R={self.pairs}) "
            f"w={self.max_wavelength:g} scale_factor={self.scale_factor:g} pairing={self.pairing} "
            f"seq_axis={self.seq_axis} positions={spec.kind}:{spec.dtype}{where} ({spec.form} shape)"
        )
        return text + (f" special={self.special}" if self.special else "")

    def materialize(self) -> Arrays:
        rng = np.random.default_rng(self.seed)
        x = make_inputs(rng, self.shape, self.dtype)
        k = None
        if self.op == "qk":
            k_shape = list(self.shape)
            k_shape[-2 if self.seq_axis == -3 else -3] = self.k_heads or 1
            k = make_inputs(rng, tuple(k_shape), self.dtype)
        positions = make_positions(rng, self)
        cotangent = make_inputs(rng, self.shape, self.dtype) if self.op == "grad" else None
        if self.special:
            x = special_inputs(rng, x, self)
        return Arrays(x, positions, k, cotangent)


@dataclasses.dataclass
class Arrays:
    inputs: np.ndarray
    positions: np.ndarray
    k: np.ndarray | None = None
    cotangent: np.ndarray | None = None


# The reproducer scripts (repro.py) regenerate inputs with this exact code: keep them in sync.
MAKE_INPUTS_SOURCE = """\
def make_inputs(rng, shape, dtype):
    scale = 10.0 ** rng.uniform(-2.0, 1.0, size=tuple(shape[:-1]) + (1,))
    return (rng.standard_normal(tuple(shape)) * scale).astype(numpy_dtype(dtype))
"""


def make_inputs(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Standard normal values scaled per (token, head) by 10**U(-2, 1): magnitudes from 0.01 to 30."""
    scale = 10.0 ** rng.uniform(-2.0, 1.0, size=(*tuple(shape[:-1]), 1))
    return (rng.standard_normal(tuple(shape)) * scale).astype(numpy_dtype(dtype))


def positions_shape(case: Case) -> tuple[int, ...]:
    batch, length = case.batch_shape, case.seq_len
    if case.positions.form == "seq":
        return (length,)
    if case.positions.form == "ones":
        return (*(1 for _ in batch), length)
    return (*batch, length)


def make_positions(rng: np.random.Generator, case: Case) -> np.ndarray:
    spec = case.positions
    shape = positions_shape(case)
    length = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    if spec.kind == "offsets":
        top = max(int(spec.high) - length + 2, int(spec.low) + 1)  # the last position <= high
        offsets = rng.integers(int(spec.low), top, size=(rows, 1))
        if rows > 1:
            offsets[0, 0] = int(spec.low)  # the first row starts at the lowest position (a prefill)
        values: np.ndarray = offsets + np.arange(length)
    elif spec.kind == "random":
        values = rng.integers(int(spec.low), int(spec.high), size=(rows, length), endpoint=True)
    elif spec.kind == "real":
        values = rng.uniform(spec.low, spec.high, size=(rows, length))
    elif spec.kind == "sweep":
        steps = np.exp2(np.linspace(0.0, math.log2(spec.high), length - 1))
        values = np.tile(np.concatenate([[0.0], np.round(steps)]), (rows, 1))
    elif spec.kind == "values":
        values = np.tile(np.resize(np.array(spec.values, dtype=np.float64), length), (rows, 1))
    else:
        raise ValueError(f"unknown positions kind {spec.kind!r}")
    return values.reshape(shape).astype(spec.dtype)


def special_inputs(rng: np.random.Generator, x: np.ndarray, case: Case) -> np.ndarray:
    """Inputs with special values (SPEC.md section 6).

    "finite": subnormals, signed zeros and large magnitudes in the rotated lanes, large magnitudes
    in the NoPE lanes (graded at both levels).
    "nonfinite": inf, -inf, NaN, -0.0 and subnormals in the NoPE lanes (they must come back bit for
    bit), and an inf or a NaN in one rotated pair per row (both outputs of that pair must be
    non-finite); graded at SPECIAL_VALUES_LEVELS.
    """
    from p_rope.tolerance import rotated_mask

    x = x.copy()
    tiny = 2.0**-24 if case.dtype == "float16" else 2.0**-133 if case.dtype == "bfloat16" else 2.0**-149
    tiny = 2.0**-1074 if case.dtype == "float64" else tiny
    big = {"float16": 3.0e4, "bfloat16": 1.0e30, "float32": 1.0e30, "float64": 1.0e200}[case.dtype]
    mask = rotated_mask(case.head_dim, case.pairs, case.pairing)
    rotated, nope = np.flatnonzero(mask), np.flatnonzero(~mask)
    flat = x.reshape(-1, case.head_dim)
    for row in range(flat.shape[0]):
        if case.special == "finite":
            lanes = rotated[rng.random(rotated.size) < 0.3]
            pool = np.array([tiny, -3 * tiny, big, -big / 3, 0.0, -0.0], dtype=np.float64)
            flat[row, lanes] = pool[rng.integers(0, pool.size, size=lanes.size)].astype(x.dtype)
            lanes = nope[rng.random(nope.size) < 0.3]
            flat[row, lanes] = np.array([big, -big / 3], dtype=np.float64)[rng.integers(0, 2, lanes.size)]
        else:
            lanes = nope[rng.random(nope.size) < 0.5]
            pool = np.array([np.inf, -np.inf, np.nan, -0.0, tiny, -tiny], dtype=np.float64)
            flat[row, lanes] = pool[rng.integers(0, pool.size, size=lanes.size)].astype(x.dtype)
            if rotated.size:
                flat[row, rotated[rng.integers(0, rotated.size)]] = x.dtype.type(pool[row % 3])
    return flat.reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# The scenarios: what a case looks like, independently of its dtype and op.


def _scenarios() -> list[dict[str, Any]]:
    """Each scenario is applied to every dtype. Shapes keep L != N (heads read as sequence show)."""
    P = Positions
    return [
        # Gemma 4 global layer: H = 512, p = 0.25, w = 1e6; KV-cache rows with different offsets.
        dict(name="gemma4-global-kv", shape=(2, 6, 3, 512), head_dim=512, rope_percentage=0.25,
             max_wavelength=1e6, positions=P("offsets", high=2**17)),
        # Gemma 4 local layer, prefill from 0, positions shared by the batch.
        dict(name="gemma4-local-prefill", shape=(2, 12, 2, 256), head_dim=256, max_wavelength=1e4,
             positions=P("offsets", high=11, form="seq")),
        # Llama-like, HF layout [B, N, L, H] served without a transpose; packed (arbitrary) positions.
        dict(name="llama-hf-layout-packed", shape=(2, 4, 10, 128), head_dim=128, max_wavelength=5e5,
             seq_axis=-2, positions=P("random", high=2**17, dtype="int64")),
        dict(name="p0-identity", shape=(2, 5, 3, 64), head_dim=64, rope_percentage=0.0,
             positions=P("random", high=2**17)),
        dict(name="p-tiny-H512", shape=(1, 7, 2, 512), head_dim=512, rope_percentage=0.01,
             positions=P("random", high=2**17)),
        dict(name="p-tiny-H64-R0", shape=(1, 7, 2, 64), head_dim=64, rope_percentage=0.01,
             positions=P("random", high=2**17)),
        dict(name="p0.58-H100-R28", shape=(2, 5, 3, 100), head_dim=100, rope_percentage=0.58,
             positions=P("offsets", high=70_000)),
        dict(name="p0.5-interleaved", shape=(2, 6, 4, 128), head_dim=128, rope_percentage=0.5,
             pairing="interleaved", positions=P("offsets", high=2**17)),
        dict(name="p0.25-interleaved-hf-layout", shape=(3, 2, 5, 32), head_dim=32, rope_percentage=0.25,
             pairing="interleaved", seq_axis=-2, positions=P("random", high=2**17, form="ones")),
        dict(name="H2", shape=(3, 5, 7, 2), head_dim=2, positions=P("random", high=2**17)),
        dict(name="H6-interleaved", shape=(2, 9, 3, 6), head_dim=6, pairing="interleaved",
             positions=P("random", high=5000)),
        dict(name="scale8", shape=(2, 6, 2, 64), head_dim=64, scale_factor=8.0, positions=P("random", high=2**17)),
        dict(name="scale1.5-p0.25", shape=(1, 8, 2, 256), head_dim=256, rope_percentage=0.25,
             max_wavelength=1e6, scale_factor=1.5, positions=P("offsets", high=2**17)),
        dict(name="rotated-pairs-17", shape=(2, 4, 3, 96), head_dim=96, rotated_pairs=17,
             positions=P("random", high=2**17)),
        dict(name="w2-H34", shape=(2, 7, 3, 34), head_dim=34, max_wavelength=2.0,
             positions=P("random", high=2**17)),
        dict(name="w1e7-p0.5", shape=(1, 9, 2, 256), head_dim=256, rope_percentage=0.5, max_wavelength=1e7,
             positions=P("random", high=2**17)),
        dict(name="batch-axes-broadcast", shape=(2, 3, 5, 2, 64), head_dim=64, rope_percentage=0.5,
             positions=P("offsets", high=4096, form="ones")),
        dict(name="negative-positions", shape=(2, 6, 3, 64), head_dim=64,
             positions=P("random", low=-(2**17), high=0)),
        dict(name="real-positions-f32", shape=(2, 6, 2, 128), head_dim=128, rope_percentage=0.5,
             positions=P("real", high=4096.0, dtype="float32")),
        dict(name="real-positions-f64", shape=(2, 6, 2, 64), head_dim=64,
             positions=P("real", high=2.0**17, dtype="float64")),
        dict(name="negative-real-positions-f32", shape=(1, 8, 2, 128), head_dim=128,
             positions=P("real", low=-5000.0, high=0.0, dtype="float32")),
        dict(name="edge-positions", shape=(1, 14, 2, 128), head_dim=128,
             positions=P("values", values=(0, 1, 1044, 2047, 2048, 2049, 4095, 4096, 8193, 15962, 65535, 65537,
                                           131071, 131072))),
        dict(name="decode-rows-hf-layout", shape=(4, 3, 1, 64), head_dim=64, rope_percentage=0.5,
             seq_axis=-2, positions=P("offsets", high=2**17, dtype="int64")),
        dict(name="decode-L1-N8", shape=(3, 1, 8, 128), head_dim=128, rope_percentage=0.25, max_wavelength=1e6,
             positions=P("offsets", high=2**17)),
        # The strict level's range: integer and real positions up to 2**24.
        dict(name="long-int-2^24", shape=(2, 8, 2, 128), head_dim=128,
             positions=P("random", low=2**23, high=2**24, dtype="int64")),
        dict(name="long-gemma4-global", shape=(1, 8, 2, 512), head_dim=512, rope_percentage=0.25,
             max_wavelength=1e6, positions=P("offsets", low=2**24 - 7, high=2**24)),
        dict(name="long-real-f64", shape=(1, 8, 2, 64), head_dim=64, rope_percentage=0.5,
             positions=P("real", low=2.0**20, high=2.0**24, dtype="float64")),
        dict(name="long-scale4-interleaved", shape=(1, 6, 2, 64), head_dim=64, scale_factor=4.0,
             pairing="interleaved", positions=P("random", low=2**22, high=2**24)),
        dict(name="sweep-0-2^24", shape=(1, 49, 2, 64), head_dim=64, positions=P("sweep", high=2**24)),
    ]  # fmt: skip


def _specials() -> list[dict[str, Any]]:
    P = Positions
    return [
        dict(name="special-finite", shape=(2, 4, 3, 64), head_dim=64, rope_percentage=0.5,
             positions=P("random", high=8), special="finite"),
        dict(name="special-nonfinite-nope", shape=(2, 4, 3, 64), head_dim=64, rope_percentage=0.25,
             positions=P("random", high=8), special="nonfinite"),
        dict(name="special-nonfinite-positions", shape=(1, 5, 2, 32), head_dim=32, rope_percentage=0.5,
             positions=P("values", values=(0.0, np.nan, 3.0, np.inf, -np.inf), dtype="float64"),
             special="nonfinite"),
    ]  # fmt: skip


# Which scenarios each op variant of the run covers (all dtypes each).
_VARIANTS = {
    "tables": ("gemma4-global-kv", "llama-hf-layout-packed", "p0.5-interleaved", "scale1.5-p0.25",
               "rotated-pairs-17", "batch-axes-broadcast", "long-int-2^24", "p0-identity"),
    "qk": ("gemma4-global-kv", "llama-hf-layout-packed", "p0.25-interleaved-hf-layout", "long-real-f64"),
    "inplace": ("gemma4-global-kv", "p0.25-interleaved-hf-layout", "scale8", "long-gemma4-global",
                "p-tiny-H512"),
    "grad": ("gemma4-global-kv", "llama-hf-layout-packed", "p0.5-interleaved", "scale1.5-p0.25",
             "long-int-2^24", "real-positions-f64"),
}  # fmt: skip


def _case(op: str, dtype: str, params: dict[str, Any]) -> Case:
    params = dict(params)
    if op == "qk":
        params["k_heads"] = 1 if params["shape"][-2 if params.get("seq_axis", -3) == -3 else -3] != 1 else 2
    return Case(op=op, dtype=dtype, **params)


def check_cases(dtypes: tuple[str, ...] = DTYPES) -> list[Case]:
    """The cases of `check` (any implementation): apply, and the special values."""
    cases = []
    for dtype in dtypes:
        cases += [_case("apply", dtype, s) for s in _scenarios()]
        cases += [_case("special", dtype, s) for s in _specials()]
    return cases


def run_cases(dtypes: tuple[str, ...] = DTYPES, quick: bool = False) -> list[Case]:
    """The cases of `run` (this project's backends): check_cases plus tables, qk, in-place, grad, errors.

    quick: a small sample (one scenario per op and dtype), for the test suite.
    """
    scenarios = {s["name"]: s for s in _scenarios()}
    cases = []
    for dtype in dtypes:
        apply = list(scenarios.values())
        specials = _specials()
        if quick:
            apply = [scenarios[n] for n in ("gemma4-global-kv", "p0.25-interleaved-hf-layout", "long-int-2^24")]
            specials = specials[1:2]
        cases += [_case("apply", dtype, s) for s in apply]
        cases += [_case("special", dtype, s) for s in specials]
        for op, names in _VARIANTS.items():
            for name in names[:1] if quick else names:
                cases.append(_case(op, dtype, scenarios[name]))
    cases.append(Case(name="invalid-arguments", op="errors", dtype="float32", shape=(1, 2, 3, 8), head_dim=8))
    return cases


def iter_levels(case: Case) -> Iterator[str]:
    """The levels a case is graded at (special non-finite values: SPECIAL_VALUES_LEVELS)."""
    if case.special != "nonfinite":
        yield from ("conformant", "strict")
    else:
        yield from SPECIAL_VALUES_LEVELS
