"""spec/_params.py and SPEC.md's tables: R, the frequencies, the revolution chunks, every error.

Expected values come from exact rational arithmetic (fractions.Fraction), hand-derived numbers or
SPEC.md's own tables, never from the code under test.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

import numpy as np
import p_rope
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from p_rope import _params as P
from p_rope import reference

SPEC = Path(__file__).resolve().parents[1] / "spec" / "SPEC.md"
TESTS = Path(__file__).resolve().parent


def spec_text() -> str:
    return SPEC.read_text(encoding="utf-8")


def spec_block(name: str) -> list[list[str]]:
    """Rows (cells stripped) of the Markdown table between <!-- name:begin --> and <!-- name:end -->."""
    text = spec_text()
    block = text[text.index(f"<!-- {name}:begin -->") : text.index(f"<!-- {name}:end -->")]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


# ---------------------------------------------------------------------------------------------
# R


def float_r(p_text: str, head_dim: int) -> int:
    """floor(fl(p * H) / 2) from exact rationals: fl is the binary64 rounding (float(Fraction) rounds correctly)."""
    p = Fraction(float(p_text))  # the binary64 value of the two-decimal literal
    return math.floor(Fraction(float(p * head_dim)) / 2)


def exact_r(p_text: str, head_dim: int) -> int:
    return math.floor(Fraction(p_text) * head_dim / 2)


TWO_DECIMALS = [f"{k // 100}.{k % 100:02d}" for k in range(101)]
HEAD_DIMS = range(2, 1025, 2)


def test_rotated_pair_count_is_the_float_formula() -> None:
    mismatches = [
        (p, h) for p in TWO_DECIMALS for h in HEAD_DIMS if p_rope.rotated_pair_count(h, float(p)) != float_r(p, h)
    ]
    assert mismatches == []


def test_r_exception_table_is_complete() -> None:
    expected = [
        (p, h, float_r(p, h), exact_r(p, h)) for p in TWO_DECIMALS for h in HEAD_DIMS if float_r(p, h) != exact_r(p, h)
    ]
    table = [(p, int(h), int(r), int(e)) for p, h, r, e in spec_block("r-exceptions")]
    assert table == expected
    assert len(expected) == 25
    assert all(r == e - 1 for _, _, r, e in expected)
    assert p_rope.rotated_pair_count(100, 0.58) == 28  # the example


def test_r_common_sizes() -> None:
    for h in (64, 128, 256, 512):
        for p in ("0.25", "0.50", "0.75", "1.00"):
            assert p_rope.rotated_pair_count(h, float(p)) == exact_r(p, h)
    assert p_rope.rotated_pair_count(512, 0.25) == 64  # Gemma 4 global layers
    assert p_rope.rotated_pair_count(8, 0) == 0 and p_rope.rotated_pair_count(8, 1) == 4


def test_rope_percentage_is_binary64() -> None:
    assert float(np.float32(0.58)) == 0.5799999833106995 != 0.58
    assert P.check_rope_percentage(np.float32(0.58)) == 0.5799999833106995
    assert P.check_rope_percentage(Fraction(58, 100)) == 0.58


def test_rotated_pairs_alternative() -> None:
    # p = 0.58, H = 100: the published formula gives 28 pairs; rotated_pairs=29 asks for the exact count.
    assert np.count_nonzero(p_rope.frequencies(100, 10_000, 0.58)) == 28
    assert np.count_nonzero(p_rope.frequencies(100, 10_000, rotated_pairs=29)) == 29
    assert np.count_nonzero(p_rope.frequencies(100, 10_000, 1, rotated_pairs=0)) == 0
    assert P.resolve_rotated_pairs(100, 1.0, np.int64(7)) == 7


# ---------------------------------------------------------------------------------------------
# frequencies


def test_frequencies_hand_values() -> None:
    # w ** (-2i/H) by hand: H = 8, w = 1e4 -> 10 ** -i; w = 16 -> 2 ** -i; H = 4, w = 100, s = 10 -> [0.1, 0.01].
    assert p_rope.frequencies(8, 10_000).tolist() == [1.0, 0.1, 0.01, 0.001]
    assert p_rope.frequencies(8, 16).tolist() == [1.0, 0.5, 0.25, 0.125]
    assert p_rope.frequencies(4, 100, scale_factor=10).tolist() == [0.1, 0.01]
    assert p_rope.frequencies(8, 10_000, 0.5).tolist() == [1.0, 0.1, 0.0, 0.0]
    assert p_rope.frequencies(8, 10_000, rotated_pairs=1).tolist() == [1.0, 0.0, 0.0, 0.0]
    f32 = p_rope.frequencies(8, 10_000, dtype=np.float32)
    assert f32.dtype == np.float32 and f32.tolist() == np.array([1.0, 0.1, 0.01, 0.001], np.float32).tolist()
    assert p_rope.frequencies(8).dtype == np.float64


def correctly_rounded(value: float, head_dim: int, i: int, w: float, s: float) -> bool:
    """Is value the binary64 number nearest to w ** (-2i/H) / s? Decided in exact rationals:
    lo <= v <= hi  <=>  (lo s)^H w^(2i) <= 1 <= (hi s)^H w^(2i)."""
    f = Fraction(value)
    lo = f - (f - Fraction(np.nextafter(value, 0.0))) / 2
    hi = f + (Fraction(np.nextafter(value, np.inf)) - f) / 2
    w_2i = Fraction(w) ** (2 * i)
    return (lo * Fraction(s)) ** head_dim * w_2i <= 1 <= (hi * Fraction(s)) ** head_dim * w_2i


@settings(max_examples=30)
@given(
    half=st.integers(1, 512),
    w=st.floats(2.0, 1e7),
    s=st.one_of(st.just(1.0), st.floats(1.0, 64.0)),
    data=st.data(),
)
def test_frequencies_correctly_rounded(half: int, w: float, s: float, data: st.DataObject) -> None:
    head_dim = 2 * half
    freq = p_rope.frequencies(head_dim, w, scale_factor=s)
    for i in {0, half - 1, data.draw(st.integers(0, half - 1))}:
        assert correctly_rounded(float(freq[i]), head_dim, i, w, s), (head_dim, w, s, i)


def test_frequencies_correctly_rounded_worst_case() -> None:
    # w = 1e7, H = 1000: the paper's 1 / w ** (2i/H) in binary64 is several ulps off here.
    freq = p_rope.frequencies(1000, 1e7)
    for i in (1, 123, 333, 499):
        assert correctly_rounded(float(freq[i]), 1000, i, 1e7, 1.0)


@settings(max_examples=30)
@given(half=st.integers(1, 512), w=st.floats(2.0, 1e7), p=st.floats(0.0, 1.0), s=st.floats(1.0, 8.0))
def test_frequencies_keep_the_highest(half: int, w: float, p: float, s: float) -> None:
    """The R rotated pairs keep the first R values of the full ladder (not a ladder over 2R)."""
    head_dim = 2 * half
    pairs = p_rope.rotated_pair_count(head_dim, p)
    full = p_rope.frequencies(head_dim, w, scale_factor=s)
    partial = p_rope.frequencies(head_dim, w, p, scale_factor=s)
    assert partial.shape == (half,)
    assert np.array_equal(partial[:pairs], full[:pairs])
    assert not partial[pairs:].any()
    assert np.all(np.diff(full) < 0) or half == 1  # decreasing: the kept ones are the highest


def test_revolution_chunks() -> None:
    """r_i = W + c1 + ... + c5 + eps, each c_k a 12-bit multiple of 2**(-12k) below 2**(-12(k-1)), |eps| < 2**-60."""
    with localcontext() as ctx:
        ctx.prec = 60
        two_pi = 2 * Decimal("3.14159265358979323846264338327950288419716939937510582097494")
        for head_dim, w, s in [(128, 10_000.0, 1.0), (1024, 1e7, 3.0), (100, 2.0, 1.7), (2, 5.0, 1.0)]:
            pairs = head_dim // 2
            chunks = P.revolution_chunks(head_dim, w, pairs, s)
            assert len(chunks) == 1 + P.REVOLUTION_CHUNKS
            for i in range(pairs):
                r = (Decimal(w).ln() * Decimal(-2 * i) / head_dim).exp() / (two_pi * Decimal(s))
                assert chunks[0][i] == 0.0  # W_i = 0 whenever w >= 1
                total = Fraction(0)
                for k in range(1, P.REVOLUTION_CHUNKS + 1):
                    c = Fraction(chunks[k][i])
                    digit = c * 2 ** (12 * k)
                    assert digit.denominator == 1 and 0 <= digit < 4096
                    total += c
                assert abs(Decimal(total.numerator) / Decimal(total.denominator) - r) < Decimal(2) ** -60


# ---------------------------------------------------------------------------------------------
# Errors: every row of SPEC.md's table, with its exact message, before any work

X = np.zeros((1, 3, 2, 4), np.float32)
POS = np.arange(3)[None]
TABLES = p_rope.p_rope_tables(POS, 4)


Tab = p_rope.RopeTables

# SPEC.md §9 row id -> the call that triggers it: f(api, x, pos, tables).
CALLS = {
    "head_dim-type": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4.0),
    "head_dim-odd": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 5),
    "head_dim-zero": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 0),
    "inputs-type": lambda api, x, pos, tab: api.apply_p_rope(x.tolist(), pos, 4),
    "inputs-dtype": lambda api, x, pos, tab: api.apply_p_rope(x.astype(np.int32), pos, 4),
    "inputs-rank": lambda api, x, pos, tab: api.apply_p_rope(np.zeros((3, 4), np.float32), pos, 4),
    "head_dim-mismatch": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 8),
    "rotated_pairs-type": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, rotated_pairs=1.0),
    "rotated_pairs-range": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, rotated_pairs=3),
    "rope_percentage-type": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, 10_000, "0.5"),
    "rope_percentage-range": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, 10_000, 1.5),
    "rope_percentage-nan": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, 10_000, float("nan")),
    "rotated_pairs-and-rope_percentage": lambda api, x, pos, tab: api.apply_p_rope(
        x, pos, 4, 10_000, 0.5, rotated_pairs=1
    ),
    "max_wavelength-type": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, None),
    "max_wavelength-nonpositive": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, 0),
    "max_wavelength-nonfinite": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, float("inf")),
    "scale_factor-type": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, scale_factor="2"),
    "scale_factor-below-1": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, scale_factor=0.5),
    "scale_factor-nonfinite": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, scale_factor=float("nan")),
    "frequencies-overflow": lambda api, x, pos, tab: api.apply_p_rope(
        np.zeros((1, 3, 2, 1024), np.float32), pos, 1024, 5e-324
    ),
    "pairing": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, pairing="rotate_half"),
    "seq_axis": lambda api, x, pos, tab: api.apply_p_rope(x, pos, 4, seq_axis=1),
    "positions-dtype": lambda api, x, pos, tab: api.apply_p_rope(x, pos.astype(bool), 4),
    "positions-16bit": lambda api, x, pos, tab: api.apply_p_rope(x, pos.astype(np.float16), 4),
    "positions-ragged": lambda api, x, pos, tab: api.apply_p_rope(x, [[0, 1], [2]], 4),
    "positions-int-range": lambda api, x, pos, tab: api.apply_p_rope(x, [0, 1, 2**63], 4),
    "positions-shape": lambda api, x, pos, tab: api.apply_p_rope(np.zeros((2, 4, 1, 4), np.float32), np.arange(3), 4),
    "in-place-read-only": lambda api, x, pos, tab: api.apply_p_rope_(read_only(x), pos, 4),
    "in-place-overlap": lambda api, x, pos, tab: api.apply_p_rope_(
        np.lib.stride_tricks.as_strided(x, (2, *x.shape[1:]), (0, *x.strides[1:])), pos, 4
    ),
    "qk-batch": lambda api, x, pos, tab: api.apply_p_rope_qk(x, np.zeros((1, 2, 2, 4), np.float32), pos, 4),
    "tables-type": lambda api, x, pos, tab: api.apply_p_rope_tables(x, {"cos": tab.cos, "sin": tab.sin}),
    "tables-odd-head_dim": lambda api, x, pos, tab: api.apply_p_rope_tables(np.zeros((1, 3, 2, 5), np.float32), tab),
    "tables-shape-mismatch": lambda api, x, pos, tab: api.apply_p_rope_tables(
        x, Tab(np.zeros((3, 2)), np.zeros((3, 1)))
    ),
    "tables-too-wide": lambda api, x, pos, tab: api.apply_p_rope_tables(x, Tab(np.zeros((3, 5)), np.zeros((3, 5)))),
    "tables-dtype": lambda api, x, pos, tab: api.apply_p_rope_tables(
        x, Tab(np.zeros((3, 2), np.float16), np.zeros((3, 2), np.float16))
    ),
    "tables-dtype-mismatch": lambda api, x, pos, tab: api.apply_p_rope_tables(
        x, Tab(tab.cos.astype(np.float32), tab.sin.astype(np.float16))
    ),
    "tables-float32-inputs-float64": lambda api, x, pos, tab: api.apply_p_rope_tables(
        x.astype(np.float64), Tab(tab.cos.astype(np.float32), tab.sin.astype(np.float32))
    ),
    "tables-shape": lambda api, x, pos, tab: api.apply_p_rope_tables(x, Tab(np.zeros((4, 2)), np.zeros((4, 2)))),
    "dtype": lambda api, x, pos, tab: api.p_rope_tables(pos, 4, dtype=np.float16),
}


def call(api, ident: str):
    """Make the call of SPEC.md's error row `ident` against api (the reference or a backend module)."""
    return CALLS[ident](api, X.copy(), POS.copy(), Tab(TABLES.cos.copy(), TABLES.sin.copy()))


def read_only(x: np.ndarray) -> np.ndarray:
    x.flags.writeable = False
    return x


ERROR_ROWS = {row[1].strip("`"): row for row in spec_block("errors")}


def expected_message(ident: str, backend: bool) -> str:
    text = ERROR_ROWS[ident][4]
    if backend and "(backends:" in text:
        return re.search(r"\(backends: `(.*)`\)", text).group(1)  # type: ignore[union-attr]
    return text.split("`")[1]


def test_error_table_ids_match_tests() -> None:
    assert set(ERROR_ROWS) == set(CALLS)
    for ident, row in ERROR_ROWS.items():
        assert row[3] in ("TypeError", "ValueError"), ident


class Converted:
    """A backend module whose functions take the NumPy arguments of CALLS, converted to the
    backend's arrays (tables element by element) first."""

    def __init__(self, module: object, convert) -> None:
        self.module, self.convert = module, convert

    def _arg(self, value: object) -> object:
        if isinstance(value, np.ndarray):
            return self.convert(value)
        if isinstance(value, Tab):
            return Tab(*(self._arg(t) for t in value))
        return value

    def __getattr__(self, name: str):
        function = getattr(self.module, name)
        return lambda *args, **kwargs: function(
            *(self._arg(a) for a in args), **{key: self._arg(v) for key, v in kwargs.items()}
        )


def _torch_module():
    torch = pytest.importorskip("torch")
    return Converted(pytest.importorskip("p_rope.backends.torch"), torch.from_numpy)


def _jax_module():
    jnp = pytest.importorskip("jax.numpy")
    return Converted(pytest.importorskip("p_rope.backends.jax"), jnp.asarray)


# implementation -> (module maker, work functions to trip, rows that do not apply to it)
IMPLEMENTATIONS = {
    "reference": (lambda: reference, ("_cos_sin", "_rotate_into"), ()),
    "array_api:numpy": (
        lambda: pytest.importorskip("p_rope.backends.array_api"),
        ("build_tables", "rotate_immutable", "rotate_into"),
        (),
    ),
    "torch": (
        _torch_module,
        ("torch_tables", "rotation", "rotation_in_place"),
        ("in-place-read-only",),  # tensors have no read-only flag
    ),
    "jax": (
        _jax_module,
        ("_apply_jit", "_apply_qk_jit", "_tables_jit", "_apply_tables_jit"),
        # no apply_p_rope_ (JAX arrays are immutable); with jax_enable_x64 off no float64 inputs, and
        # Python ints held to int32 (SPEC.md §9's backend-specific row)
        ("in-place-read-only", "in-place-overlap", "tables-float32-inputs-float64", "positions-int-range"),
    ),
}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """(implementation name, module under test), its work functions replaced by tripwires."""

    def tripwire(*args, **kwargs):
        raise AssertionError("work started before every argument was checked")

    make, work, _ = IMPLEMENTATIONS[request.param]
    module = make()
    for name in work:
        monkeypatch.setattr(getattr(module, "module", module), name, tripwire)
    return request.param, module


@pytest.mark.parametrize("ident", list(ERROR_ROWS))
def test_error_raised_before_work(api, ident: str) -> None:
    name, api = api
    if ident in IMPLEMENTATIONS[name][2]:
        pytest.skip(f"row {ident} does not apply to {name}")
    backend = api is not reference
    before = X.copy()
    kind = {"TypeError": TypeError, "ValueError": ValueError}[ERROR_ROWS[ident][3]]
    with pytest.raises(kind, match=f"^{re.escape(expected_message(ident, backend))}$"):
        call(api, ident)
    assert np.array_equal(X, before)


def test_check_order() -> None:
    """With several invalid arguments, the first in SPEC.md's order is reported (rows 1 to 9)."""
    x = np.zeros((2, 4, 1, 4), np.float32)
    valid = dict(inputs=x, positions=np.arange(4), head_dim=4, max_wavelength=10_000, rope_percentage=1.0)
    broken: list[tuple[str, dict[str, object]]] = [
        ("head_dim-odd", dict(head_dim=5)),
        ("inputs-dtype", dict(inputs=x.astype(np.int32))),
        ("rope_percentage-range", dict(rope_percentage=1.5)),
        ("max_wavelength-nonpositive", dict(max_wavelength=0)),
        ("scale_factor-below-1", dict(scale_factor=0.5)),
        ("pairing", dict(pairing="rotate_half")),
        ("seq_axis", dict(seq_axis=1)),
        ("positions-16bit", dict(positions=np.arange(3, dtype=np.float16))),
        ("positions-shape", dict(positions=np.arange(3))),
    ]
    for start in range(len(broken)):
        kwargs: dict[str, object] = dict(valid)
        for _, change in reversed(broken[start:]):  # an earlier row wins where two change one argument
            kwargs.update(change)
        ident = broken[start][0]
        kind = {"TypeError": TypeError, "ValueError": ValueError}[ERROR_ROWS[ident][3]]
        with pytest.raises(kind, match=f"^{re.escape(expected_message(ident, backend=False))}$"):
            p_rope.apply_p_rope(**kwargs)


def test_qk_checks_q_before_k() -> None:
    with pytest.raises(TypeError, match=r"^q must have a real floating dtype"):
        p_rope.apply_p_rope_qk(X.astype(np.int8), X.astype(np.int8), POS, 4)
    with pytest.raises(TypeError, match=r"^k must have a real floating dtype"):
        p_rope.apply_p_rope_qk(X, X.astype(np.int8), POS, 4)


def test_rotated_pair_count_errors() -> None:
    with pytest.raises(ValueError, match=r"^head_dim must be a positive even integer; got 3$"):
        p_rope.rotated_pair_count(3, 0.5)
    with pytest.raises(TypeError, match=r"^rope_percentage must be a real number in \[0, 1\]; got True of type bool$"):
        p_rope.rotated_pair_count(4, True)
    with pytest.raises(TypeError, match=r"^head_dim must be an int; got True of type bool$"):
        p_rope.rotated_pair_count(True, 0.5)


# ---------------------------------------------------------------------------------------------
# SPEC.md's bookkeeping


def test_spec_version_matches() -> None:
    match = re.search(r"^Spec version: \*\*(\d+\.\d+)\*\*", spec_text(), re.MULTILINE)
    assert match is not None and match.group(1) == p_rope.SPEC_VERSION


def test_spec_cites_existing_tests() -> None:
    cited = set(re.findall(r"tests/(test_\w+\.py)::(test_\w+)", spec_text()))
    assert len(cited) >= 30
    missing = []
    for filename, name in sorted(cited):
        source = (TESTS / filename).read_text(encoding="utf-8") if (TESTS / filename).exists() else ""
        if not re.search(rf"^def {name}\(", source, re.MULTILINE):
            missing.append(f"{filename}::{name}")
    assert missing == []


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple),
    width=st.sampled_from([2, 4, 8]),
    budget=st.integers(1, 4096),
)
def test_token_blocks_cover_the_array_once_in_bounds(shape: tuple[int, ...], width: int, budget: int) -> None:
    """Every element in exactly one block, in order, every slice within its axis (array-api-strict
    refuses out-of-bounds stops), no block above the budget unless it is one row."""
    seen = np.zeros(shape, dtype=int)
    order = np.arange(np.prod(shape)).reshape(shape)
    last = -1
    for index in P.token_blocks(shape, width, budget):
        for axis, i in enumerate(index):
            if isinstance(i, slice):
                assert 0 <= i.start < i.stop <= shape[axis]
        block = order[index]
        cut = index[-1] if index else None
        one_row = block.size == shape[-1] or (cut is not None and cut.stop - cut.start == 1)
        assert block.size * width <= budget or one_row
        assert block.min() == last + 1
        last = int(block.max())
        seen[index] += 1
    assert (seen == 1).all()
