"""Argument checks and parameter arithmetic shared by every p-RoPE implementation.

Pure Python: no array library is imported here. The NumPy reference and every backend call
these functions at their API boundary, before any work, so that all of them raise the same
exception type with the same message (spec/SPEC.md, section "Errors").

Shape letters used throughout the project (spec/SPEC.md, section "Shapes"):
    B...  leading batch axes (zero or more)
    L     sequence length (tokens)
    N     attention heads
    H     head dimension (even)
    R     rotated pairs, 0 <= R <= H/2
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from decimal import Decimal, localcontext
from typing import Any, NamedTuple

SPEC_VERSION = "1.0"

PAIRINGS = ("split_half", "interleaved")
SEQ_AXES = (-3, -2)
INPUT_DTYPES = ("float16", "bfloat16", "float32", "float64")
POSITION_FLOAT_DTYPES = ("float32", "float64")

# The revolutions per position r_i, truncated to 60 fractional bits, in five 12-bit fixed-point
# chunks: the source of the per-pair constants of SPEC.md §8's table algorithms.
CHUNK_BITS = 12
REVOLUTION_CHUNKS = 5
_PI_50 = Decimal("3.14159265358979323846264338327950288419716939937510")


class RopeTables(NamedTuple):
    """cos and sin of the rotation angle, shape positions.shape + (R,) (SPEC.md, "API")."""

    cos: Any
    sin: Any


_INT64_LIMIT = 1 << 63
_REPR_CHARS = 60  # a value shown in a message is cut to this many characters


class ArrayMeta(NamedTuple):
    """What the checks read of an array argument (inputs, q, k, positions, a table): its dtype
    name ('float32', 'bfloat16', 'int64', 'bool', 'object', ...), its shape and, where a check
    compares it, its device (any value with ==; None where it does not matter)."""

    dtype: str
    shape: tuple[int, ...]
    device: Any = None


class NotAnArray(NamedTuple):
    """An argument that is not an array of the implementation's library: the name of its type and
    what was expected ("an array", "a numpy.ndarray", "a torch.Tensor")."""

    type_name: str
    expected: str = "an array"


class BadPositions(NamedTuple):
    """Positions given as Python values that no array holds as SPEC.md says: a ragged nested
    sequence (problem "ragged"), or an int beyond the widest integer (problem "int{bits}")."""

    problem: str
    value: str


class TableSpec(NamedTuple):
    """Everything a table depends on: H, w, R, s and the table (computation) dtype name."""

    head_dim: int
    max_wavelength: float
    pairs: int
    scale_factor: float
    dtype: str


class CallParams(NamedTuple):
    """The checked parameters of one apply_p_rope / apply_p_rope_ / apply_p_rope_qk call."""

    spec: TableSpec
    pairing: str
    seq_axis: int


class Layout(NamedTuple):
    """The checked layout of one apply_p_rope_tables call: R and the computation dtype come from
    the tables."""

    pairing: str
    seq_axis: int
    pairs: int
    dtype: str


def _is_real_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_CHARS else text[: _REPR_CHARS - 3] + "..."


def _as_float(value: object) -> float:
    """float(value); inf (of value's sign) for a real too large for binary64 (a huge int or Fraction)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]


def check_head_dim(head_dim: object) -> int:
    if not _is_integer(head_dim):
        raise TypeError(f"head_dim must be an int; got {_short(head_dim)} of type {type(head_dim).__name__}")
    value = int(head_dim)  # type: ignore[call-overload]
    if value <= 0 or value % 2:
        raise ValueError(f"head_dim must be a positive even integer; got {_short(value)}")
    return value


def check_rope_percentage(rope_percentage: object) -> float:
    if not _is_real_number(rope_percentage):
        raise TypeError(
            "rope_percentage must be a real number in [0, 1]; "
            f"got {_short(rope_percentage)} of type {type(rope_percentage).__name__}"
        )
    value = _as_float(rope_percentage)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"rope_percentage must be in [0, 1]; got {_short(rope_percentage)}")
    return value


def rotated_pair_count(head_dim: int, rope_percentage: float = 1.0) -> int:
    """R = int(rope_percentage * head_dim // 2), evaluated in floating point (SPEC.md §2)."""
    head_dim = check_head_dim(head_dim)
    rope_percentage = check_rope_percentage(rope_percentage)
    return int(rope_percentage * head_dim // 2)


def resolve_rotated_pairs(head_dim: int, rope_percentage: object, rotated_pairs: object) -> int:
    """R from either rope_percentage (the paper's knob) or an explicit integer pair count."""
    return _pairs(check_head_dim(head_dim), rope_percentage, rotated_pairs)


def _pairs(head_dim: int, rope_percentage: object, rotated_pairs: object) -> int:
    """resolve_rotated_pairs for a checked head_dim."""
    if rotated_pairs is None:
        return int(check_rope_percentage(rope_percentage) * head_dim // 2)
    if not _is_integer(rotated_pairs):
        raise TypeError(
            f"rotated_pairs must be an int or None; got {_short(rotated_pairs)} of type {type(rotated_pairs).__name__}"
        )
    count = int(rotated_pairs)  # type: ignore[call-overload]
    if not 0 <= count <= head_dim // 2:
        raise ValueError(f"rotated_pairs must be in [0, head_dim // 2] = [0, {head_dim // 2}]; got {_short(count)}")
    check_rope_percentage(rope_percentage)
    if rope_percentage != 1.0:
        raise ValueError(
            "give either rope_percentage or rotated_pairs, not both; "
            f"got rope_percentage={_short(rope_percentage)} and rotated_pairs={count}"
        )
    return count


def check_max_wavelength(max_wavelength: object) -> float:
    if not _is_real_number(max_wavelength):
        raise TypeError(
            "max_wavelength must be a real number; "
            f"got {_short(max_wavelength)} of type {type(max_wavelength).__name__}"
        )
    value = _as_float(max_wavelength)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"max_wavelength must be finite and > 0; got {_short(max_wavelength)}")
    return value


def check_scale_factor(scale_factor: object) -> float:
    if not _is_real_number(scale_factor):
        raise TypeError(
            f"scale_factor must be a real number >= 1; got {_short(scale_factor)} of type {type(scale_factor).__name__}"
        )
    value = _as_float(scale_factor)
    if not (math.isfinite(value) and value >= 1.0):
        raise ValueError(f"scale_factor must be finite and >= 1; got {_short(scale_factor)}")
    return value


def check_frequencies_finite(head_dim: int, max_wavelength: float, pairs: int, scale_factor: float) -> None:
    """The highest rotated frequency must be a finite binary64 number (only w < 1 can break this:
    freq_i = w ** (-2 i / H) / s grows with i there)."""
    if max_wavelength >= 1.0 or pairs < 2:
        return
    if math.isinf(frequency_values(head_dim, max_wavelength, pairs, scale_factor)[pairs - 1]):
        raise ValueError(
            f"max_wavelength={max_wavelength!r} with head_dim={head_dim} and {pairs} rotated pairs makes "
            f"freq_{pairs - 1} = max_wavelength ** (-2 i / head_dim) / scale_factor overflow float64; "
            "use a larger max_wavelength or fewer rotated pairs"
        )


def check_pairing(pairing: object) -> str:
    if not isinstance(pairing, str) or pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}; got {_short(pairing)}")
    return pairing


def check_seq_axis(seq_axis: object) -> int:
    if not _is_integer(seq_axis) or seq_axis not in SEQ_AXES:
        raise ValueError(
            f"seq_axis must be -3 (inputs [..., L, N, H]) or -2 (inputs [..., N, L, H]); got {_short(seq_axis)}"
        )
    return int(seq_axis)  # type: ignore[call-overload]


def check_input_dtype(name: str, argument: str = "inputs") -> str:
    if name not in INPUT_DTYPES:
        raise TypeError(f"{argument} must have a real floating dtype {INPUT_DTYPES}; got dtype {name}")
    return name


def check_array(meta: ArrayMeta | NotAnArray, argument: str) -> ArrayMeta:
    """meta itself for an array; SPEC.md's "not an array" TypeError otherwise."""
    if isinstance(meta, NotAnArray):
        raise TypeError(f"{argument} must be {meta.expected}; got {meta.type_name}")
    return meta


def check_inputs(meta: ArrayMeta | NotAnArray, head_dim: int, argument: str = "inputs") -> ArrayMeta:
    """Type, dtype and shape of inputs (row 2 of SPEC.md's errors)."""
    array = check_array(meta, argument)
    check_input_dtype(array.dtype, argument)
    check_input_shape(array.shape, head_dim, argument)
    return array


def is_integer_dtype(name: str) -> bool:
    return name.startswith(("int", "uint"))


def check_positions_dtype(name: str) -> str:
    if is_integer_dtype(name) or name in POSITION_FLOAT_DTYPES:
        return name
    if name in ("float16", "bfloat16"):
        raise TypeError(
            "positions must have an integer dtype or float32/float64 "
            f"(16-bit floats cannot hold positions above 2048 exactly); got dtype {name}"
        )
    raise TypeError(f"positions must have an integer or float32/float64 dtype; got dtype {name}")


def check_positions(meta: ArrayMeta | NotAnArray | BadPositions) -> ArrayMeta:
    """Positions' type, values given as Python numbers, and dtype (row 8 of SPEC.md's errors)."""
    if isinstance(meta, BadPositions):
        if meta.problem == "ragged":
            raise ValueError(
                f"positions must be an array or a nested sequence of numbers of one shape; got the ragged {meta.value}"
            )
        bits = int(meta.problem.removeprefix("int"))
        why = "" if bits == 64 else ", the widest integer JAX holds with jax_enable_x64 off"
        raise ValueError(
            f"positions given as Python ints must lie in [-2**{bits - 1}, 2**{bits - 1}) (int{bits}{why}); "
            f"got {meta.value}"
        )
    array = check_array(meta, "positions")
    check_positions_dtype(array.dtype)
    return array


def check_x64_dtype(name: str, argument: str, x64: bool) -> None:
    """A float64 array handed to JAX while jax_enable_x64 is off (JAX would make it float32)."""
    if name == "float64" and not x64:
        raise TypeError(f"{argument} is float64, which JAX holds only with jax_enable_x64 on; got dtype {name}")


def check_x64_positions(low: int, high: int, name: str, target: str) -> None:
    """Integer positions of dtype name in [low, high] must fit target, the dtype JAX turns them into
    with jax_enable_x64 off (never wrapped)."""
    bits = int(target.removeprefix("u").removeprefix("int"))
    lo, hi = (0, 1 << bits) if target.startswith("u") else (-(1 << (bits - 1)), 1 << (bits - 1))
    if low < lo or high >= hi:
        value = low if low < lo else high
        raise ValueError(
            f"positions of dtype {name} hold {value}, beyond {target}, the widest integer JAX holds with "
            "jax_enable_x64 off; enable jax_enable_x64 or pass positions in "
            f"[{lo}, {hi})"
        )


def _nested_shape(value: object, leaves: list[object]) -> tuple[int, ...] | None:
    """The shape of a nested list/tuple of scalars (appending its leaves), None if ragged."""
    if not isinstance(value, (list, tuple)):
        leaves.append(value)
        return ()
    shapes = {_nested_shape(item, leaves) for item in value}
    if len(shapes) > 1 or None in shapes:
        return None
    inner = shapes.pop() if shapes else ()
    return None if inner is None else (len(value), *inner)


def python_positions(value: object, int_bits: int = 64) -> ArrayMeta | BadPositions:
    """Metadata of positions given as a Python number or nested list/tuple of numbers: the dtype
    they become (bool, int{int_bits} for ints, float64 for reals, "object" for anything else) and
    their shape; ragged nesting and ints beyond int{int_bits} are BadPositions."""
    leaves: list[object] = []
    shape = _nested_shape(value, leaves)
    if shape is None:
        return BadPositions("ragged", f"{type(value).__name__} {_short(value)}")
    if not all(isinstance(leaf, numbers.Number) for leaf in leaves):
        return ArrayMeta("object", shape)
    limit = 1 << (int_bits - 1)
    for leaf in leaves:
        if _is_integer(leaf) and not -limit <= int(leaf) < limit:  # type: ignore[call-overload]
            return BadPositions(f"int{int_bits}", _short(int(leaf)))  # type: ignore[call-overload]
    if not all(isinstance(leaf, numbers.Real) for leaf in leaves):
        return ArrayMeta("complex128", shape)
    if leaves and all(isinstance(leaf, bool) for leaf in leaves):
        return ArrayMeta("bool", shape)
    if leaves and all(isinstance(leaf, numbers.Integral) for leaf in leaves):
        return ArrayMeta(f"int{int_bits}", shape)
    return ArrayMeta("float64", shape)


def check_input_shape(shape: tuple[int, ...], head_dim: int, argument: str = "inputs") -> None:
    if len(shape) < 3:
        raise ValueError(
            f"{argument} must have at least 3 axes ([..., L, N, H] or [..., N, L, H]); got shape {tuple(shape)}"
        )
    if shape[-1] != head_dim:
        raise ValueError(f"head_dim={head_dim} does not match the last axis of {argument}, shape {tuple(shape)}")


def positions_target_shape(inputs_shape: tuple[int, ...], seq_axis: int) -> tuple[int, ...]:
    """The shape positions broadcast to: the batch axes of the input, then L."""
    return (*tuple(inputs_shape[:-3]), inputs_shape[seq_axis])


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False))


def check_positions_shape(
    positions_shape: tuple[int, ...], inputs_shape: tuple[int, ...], seq_axis: int, argument: str = "positions"
) -> tuple[int, ...]:
    target = positions_target_shape(inputs_shape, seq_axis)
    if not _broadcasts_to(tuple(positions_shape), target):
        raise ValueError(
            f"{argument} of shape {tuple(positions_shape)} do not broadcast to {target} "
            f"(the batch axes and L of inputs of shape {tuple(inputs_shape)}, seq_axis={seq_axis})"
        )
    return target


def check_tables_type(tables: object) -> None:
    if not isinstance(tables, tuple) or len(tables) != 2:
        raise TypeError(f"tables must be a RopeTables(cos, sin); got {type(tables).__name__}")


def check_tables(cos_shape: tuple[int, ...], sin_shape: tuple[int, ...], head_dim: int) -> int:
    if tuple(cos_shape) != tuple(sin_shape):
        raise ValueError(
            f"tables.cos and tables.sin must have the same shape; got {tuple(cos_shape)} and {tuple(sin_shape)}"
        )
    if len(cos_shape) < 1 or cos_shape[-1] > head_dim // 2:
        raise ValueError(
            f"tables must have shape [..., L, R] with R <= head_dim // 2 = {head_dim // 2}; got {tuple(cos_shape)}"
        )
    return int(cos_shape[-1])


def check_tables_dtype(cos_dtype: str, sin_dtype: str, inputs_dtype: str) -> str:
    if cos_dtype not in POSITION_FLOAT_DTYPES:
        raise TypeError(f"tables must be float32 or float64; got dtype {cos_dtype}")
    if sin_dtype != cos_dtype:
        raise TypeError(f"tables.cos and tables.sin must have the same dtype; got {cos_dtype} and {sin_dtype}")
    if inputs_dtype == "float64" and cos_dtype != "float64":
        raise TypeError("tables are float32 but inputs are float64; build the tables with dtype float64")
    return cos_dtype


def check_table_dtype(name: str) -> str:
    """The dtype of p_rope_tables or frequencies (row D of SPEC.md's errors)."""
    if name not in POSITION_FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64; got {name}")
    return name


def check_same_batch(q_shape: tuple[int, ...], k_shape: tuple[int, ...], seq_axis: int) -> None:
    if positions_target_shape(q_shape, seq_axis) != positions_target_shape(k_shape, seq_axis):
        raise ValueError(
            f"q of shape {tuple(q_shape)} and k of shape {tuple(k_shape)} must share their batch axes and L"
        )


def check_writable(writable: bool, argument: str = "inputs") -> None:
    if not writable:
        raise ValueError(f"{argument} is read-only; apply_p_rope_ writes into it")


def check_no_overlap(shape: tuple[int, ...], strides: tuple[int, ...], argument: str = "inputs") -> None:
    """In-place writes need every element at its own address. Strides in elements (any sign) are
    accepted when, sorted by magnitude, each exceeds the span of the smaller ones (which proves that
    no two elements share an address); a stride-0 broadcast, an expanded view or overlapping
    as_strided windows are refused (and so, conservatively, are the rare interleaved layouts that
    this test cannot prove free of overlap)."""
    if any(size == 0 for size in shape):
        return
    reach = 0  # the largest offset spanned by the axes of smaller strides
    for stride, size in sorted((abs(st), n) for n, st in zip(shape, strides, strict=True) if n > 1):
        if stride <= reach:
            raise ValueError(
                f"{argument} has shape {tuple(shape)} and strides {tuple(strides)} (in elements), under which "
                "elements may share memory (an expanded or stride-0 view, overlapping windows); apply_p_rope_ "
                "cannot write into it: pass a copy, or use apply_p_rope"
            )
        reach += stride * (size - 1)


def check_same_device(q_device: object, k_device: object) -> None:
    if q_device is not None and k_device is not None and q_device != k_device:
        raise ValueError(f"q and k must be on the same device; got {q_device} and {k_device}")


def compute_dtype_name(*inputs_dtypes: str) -> str:
    """float64 if any input is float64, else float32 (float16, bfloat16, float32 compute in float32)."""
    return "float64" if "float64" in inputs_dtypes else "float32"


def _table_spec(
    head_dim: int,
    max_wavelength: object,
    rope_percentage: object,
    rotated_pairs: object,
    scale_factor: object,
    dtype: str,
) -> TableSpec:
    """Rows 3, 4 and 5 of SPEC.md's errors, head_dim being checked."""
    pairs = _pairs(head_dim, rope_percentage, rotated_pairs)
    w = check_max_wavelength(max_wavelength)
    scale = check_scale_factor(scale_factor)
    check_frequencies_finite(head_dim, w, pairs, scale)
    return TableSpec(head_dim, w, pairs, scale, dtype)


def check_table_request(
    head_dim: object,
    max_wavelength: object,
    rope_percentage: object,
    rotated_pairs: object,
    scale_factor: object,
    dtype: str = "float64",
) -> TableSpec:
    """Every check of frequencies and p_rope_tables (after positions): rows 1, 3, 4, 5, then D."""
    spec = _table_spec(check_head_dim(head_dim), max_wavelength, rope_percentage, rotated_pairs, scale_factor, dtype)
    check_table_dtype(dtype)
    return spec


def check_call(
    inputs: ArrayMeta | NotAnArray,
    positions: ArrayMeta | NotAnArray | BadPositions,
    head_dim: object,
    max_wavelength: object,
    rope_percentage: object,
    rotated_pairs: object,
    scale_factor: object,
    pairing: object,
    seq_axis: object,
    argument: str = "inputs",
) -> CallParams:
    """Every check of apply_p_rope and apply_p_rope_ (rows 1 to 9 of SPEC.md's errors, in order),
    on the metadata of the arrays; the table dtype is the computation dtype of the inputs."""
    head_dim_ = check_head_dim(head_dim)
    array = check_inputs(inputs, head_dim_, argument)
    spec = _table_spec(
        head_dim_, max_wavelength, rope_percentage, rotated_pairs, scale_factor, compute_dtype_name(array.dtype)
    )
    pairing_ = check_pairing(pairing)
    seq_axis_ = check_seq_axis(seq_axis)
    check_positions_shape(check_positions(positions).shape, array.shape, seq_axis_)
    return CallParams(spec, pairing_, seq_axis_)


def check_qk_call(
    q: ArrayMeta | NotAnArray,
    k: ArrayMeta | NotAnArray,
    positions: ArrayMeta | NotAnArray | BadPositions,
    head_dim: object,
    max_wavelength: object,
    rope_percentage: object,
    rotated_pairs: object,
    scale_factor: object,
    pairing: object,
    seq_axis: object,
) -> CallParams:
    """Every check of apply_p_rope_qk: rows 1 to 9 on q and positions, row 2 on k, qk-batch, qk-device.
    The table dtype is float64 if q or k is float64."""
    params = check_call(
        q, positions, head_dim, max_wavelength, rope_percentage, rotated_pairs, scale_factor, pairing, seq_axis, "q"
    )
    q_, k_ = check_array(q, "q"), check_inputs(k, params.spec.head_dim, "k")
    check_same_batch(q_.shape, k_.shape, params.seq_axis)
    check_same_device(q_.device, k_.device)
    return params._replace(spec=params.spec._replace(dtype=compute_dtype_name(q_.dtype, k_.dtype)))


def check_apply_tables(
    inputs: ArrayMeta | NotAnArray,
    cos: ArrayMeta | NotAnArray,
    sin: ArrayMeta | NotAnArray,
    pairing: object,
    seq_axis: object,
) -> Layout:
    """Every check of apply_p_rope_tables after tables-type: row 2 (H from the inputs' last axis, which
    must be a valid head_dim), rows 6 and 7, then T2, T3, T4."""
    array = check_array(inputs, "inputs")
    head_dim = array.shape[-1] if array.shape else 0
    check_inputs(array, head_dim)
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"inputs' last axis (H) must be a positive even head_dim; got shape {tuple(array.shape)}")
    pairing_ = check_pairing(pairing)
    seq_axis_ = check_seq_axis(seq_axis)
    cos_, sin_ = check_array(cos, "tables.cos"), check_array(sin, "tables.sin")
    pairs = check_tables(cos_.shape, sin_.shape, head_dim)
    dtype = check_tables_dtype(cos_.dtype, sin_.dtype, array.dtype)
    check_positions_shape(tuple(cos_.shape[:-1]), array.shape, seq_axis_, "tables")
    return Layout(pairing_, seq_axis_, pairs, dtype)


MIN_BLOCK_BYTES = 1 << 14


def block_budget(cap: int, input_bytes: int) -> int:
    """The bytes of one rotated lane per block (token_blocks' budget) for inputs of input_bytes: cap,
    or a tenth of the input where that is smaller, so that a block's temporaries (about six lanes of
    it) stay within the input's size and an out-of-place call holds at most about twice the input,
    its output included; never below MIN_BLOCK_BYTES (tiny inputs are one block)."""
    return min(cap, max(MIN_BLOCK_BYTES, input_bytes // 10))


def token_blocks(shape: tuple[int, ...], bytes_per_element: int, budget: int) -> list[tuple[Any, ...]]:
    """Index tuples (ints for the leading axes, then one slice) that cut an array of ``shape`` into
    blocks of about ``budget`` bytes at ``bytes_per_element`` bytes per element, its last axis kept
    whole (a block is at least one row of it). The blocks cover the array once, in order; an array
    within the budget is one block, the index ()."""
    axes = tuple(shape[:-1])
    row = bytes_per_element * (shape[-1] if shape else 1)
    inner, cut = max(1, row), len(axes)
    while cut > 0 and inner * axes[cut - 1] <= budget:
        inner *= axes[cut - 1]
        cut -= 1
    if cut == 0:
        return [()]
    rows = max(1, budget // inner)
    return [
        (*lead, slice(start, min(start + rows, axes[cut - 1])))  # in bounds (array-api-strict)
        for lead in itertools.product(*(range(n) for n in axes[: cut - 1]))
        for start in range(0, axes[cut - 1], rows)
    ]


def token_shape(shape: tuple[int, ...], rank: int, seq_axis: int, trailing: int) -> tuple[int, ...]:
    """The shape of positions [B'..., L] (trailing=0) or of a table [B'..., L, R] (trailing=1) laid
    out against inputs of rank ``rank``: leading axes of size 1 added, and a heads axis of size 1
    after L (seq_axis=-3) or before it (seq_axis=-2); a scalar position has L = 1."""
    shape = (1,) * (1 + trailing - len(shape)) + tuple(shape)
    lead, tail = shape[: len(shape) - trailing], shape[len(shape) - trailing :]
    tokens = (*lead, 1) if seq_axis == -3 else (*lead[:-1], 1, lead[-1])
    return (1,) * (rank - 1 - len(tokens)) + tokens + tail


def block_of(index: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[Any, ...]:
    """A block index of the inputs' token axes (token_blocks) for an array of ``shape`` laid out by
    token_shape: an axis of size 1 (broadcast) is taken whole; the remaining axes by an Ellipsis."""
    picked = ((slice(None) if isinstance(i, slice) else 0) if n == 1 else i for i, n in zip(index, shape, strict=False))
    return (*picked, Ellipsis)


@functools.lru_cache(maxsize=256)
def _revolutions(head_dim: int, max_wavelength: float, rotated_pairs: int, scale_factor: float) -> tuple[Decimal, ...]:
    """Revolutions per unit position of each rotated pair, to 50 significant digits."""
    with localcontext() as ctx:
        ctx.prec = 50
        w = Decimal(max_wavelength)
        turn = 2 * _PI_50 * Decimal(scale_factor)
        return tuple(w ** (Decimal(-2 * i) / Decimal(head_dim)) / turn for i in range(rotated_pairs))


def frequency_values(
    head_dim: int, max_wavelength: float, rotated_pairs: int, scale_factor: float = 1.0
) -> list[float]:
    """Angular frequency (radians per unit position) of every pair, 0.0 for NoPE pairs.

    freq_i = max_wavelength ** (-2 i / head_dim) / scale_factor for i < R, correctly rounded to
    float64 from a 50-digit evaluation.
    """
    with localcontext() as ctx:
        ctx.prec = 50
        turn = 2 * _PI_50
        rotated = [float(r * turn) for r in _revolutions(head_dim, max_wavelength, rotated_pairs, scale_factor)]
    return rotated + [0.0] * (head_dim // 2 - rotated_pairs)


@functools.lru_cache(maxsize=256)
def revolution_chunks(
    head_dim: int, max_wavelength: float, rotated_pairs: int, scale_factor: float
) -> tuple[tuple[float, ...], ...]:
    """The fractional part of each pair's revolutions per position, as REVOLUTION_CHUNKS fixed-point
    chunks of CHUNK_BITS bits: frac(r_i) = sum_k chunks[k][i] (to 2**-60), where chunks[k][i] is a
    multiple of 2**-(12 (k + 1)) below 2**-(12 k). Each chunk has at most 12 significant bits, so its
    product with a 12-bit integer is exact in float32. The integer part of r_i drops out of the angle
    for integer positions, and is carried by the integer chunk (k = -1, first row) for the others.
    """
    rows: list[list[float]] = [[] for _ in range(REVOLUTION_CHUNKS + 1)]
    scale = 1 << CHUNK_BITS
    for r in _revolutions(head_dim, max_wavelength, rotated_pairs, scale_factor):
        whole = int(r)  # r > 0
        rows[0].append(float(whole))
        rest = r - whole
        for k in range(REVOLUTION_CHUNKS):
            rest *= scale
            digit = int(rest)
            rest -= digit
            rows[k + 1].append(math.ldexp(digit, -CHUNK_BITS * (k + 1)))
    return tuple(tuple(row) for row in rows)
