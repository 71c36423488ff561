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
import math
import numbers
from decimal import Decimal, localcontext
from typing import Any, NamedTuple

SPEC_VERSION = "1.0"

PAIRINGS = ("split_half", "interleaved")
SEQ_AXES = (-3, -2)
INPUT_DTYPES = ("float16", "bfloat16", "float32", "float64")
POSITION_FLOAT_DTYPES = ("float32", "float64")

# Positions are split into 12-bit chunks and the revolutions per position into 12-bit
# fixed-point chunks, so that every chunk product is exact in float32 (SPEC.md, "Accuracy").
CHUNK_BITS = 12
REVOLUTION_CHUNKS = 5
_PI_50 = Decimal("3.14159265358979323846264338327950288419716939937510")


class RopeTables(NamedTuple):
    """cos and sin of the rotation angle, shape positions.shape + (R,) (SPEC.md, "API")."""

    cos: Any
    sin: Any


def _is_real_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_head_dim(head_dim: object) -> int:
    if not _is_integer(head_dim):
        raise TypeError(f"head_dim must be an int; got {head_dim!r} of type {type(head_dim).__name__}")
    value = int(head_dim)  # type: ignore[call-overload]
    if value <= 0 or value % 2:
        raise ValueError(f"head_dim must be a positive even integer; got {value}")
    return value


def check_rope_percentage(rope_percentage: object) -> float:
    if not _is_real_number(rope_percentage):
        raise TypeError(
            "rope_percentage must be a real number in [0, 1]; "
            f"got {rope_percentage!r} of type {type(rope_percentage).__name__}"
        )
    value = float(rope_percentage)  # type: ignore[arg-type]
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"rope_percentage must be in [0, 1]; got {rope_percentage!r}")
    return value


def rotated_pair_count(head_dim: int, rope_percentage: float = 1.0) -> int:
    """R = int(rope_percentage * head_dim // 2), evaluated in floating point (SPEC.md §2)."""
    head_dim = check_head_dim(head_dim)
    rope_percentage = check_rope_percentage(rope_percentage)
    return int(rope_percentage * head_dim // 2)


def resolve_rotated_pairs(head_dim: int, rope_percentage: object, rotated_pairs: object) -> int:
    """R from either rope_percentage (the paper's knob) or an explicit integer pair count."""
    head_dim = check_head_dim(head_dim)
    if rotated_pairs is None:
        return rotated_pair_count(head_dim, check_rope_percentage(rope_percentage))
    if not _is_integer(rotated_pairs):
        raise TypeError(
            f"rotated_pairs must be an int or None; got {rotated_pairs!r} of type {type(rotated_pairs).__name__}"
        )
    count = int(rotated_pairs)  # type: ignore[call-overload]
    if not 0 <= count <= head_dim // 2:
        raise ValueError(f"rotated_pairs must be in [0, head_dim // 2] = [0, {head_dim // 2}]; got {count}")
    check_rope_percentage(rope_percentage)
    if rope_percentage != 1.0:
        raise ValueError(
            "give either rope_percentage or rotated_pairs, not both; "
            f"got rope_percentage={rope_percentage!r} and rotated_pairs={count}"
        )
    return count


def check_max_wavelength(max_wavelength: object) -> float:
    if not _is_real_number(max_wavelength):
        raise TypeError(
            f"max_wavelength must be a real number; got {max_wavelength!r} of type {type(max_wavelength).__name__}"
        )
    value = float(max_wavelength)  # type: ignore[arg-type]
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"max_wavelength must be finite and > 0; got {max_wavelength!r}")
    return value


def check_scale_factor(scale_factor: object) -> float:
    if not _is_real_number(scale_factor):
        raise TypeError(
            f"scale_factor must be a real number >= 1; got {scale_factor!r} of type {type(scale_factor).__name__}"
        )
    value = float(scale_factor)  # type: ignore[arg-type]
    if not (math.isfinite(value) and value >= 1.0):
        raise ValueError(f"scale_factor must be finite and >= 1; got {scale_factor!r}")
    return value


def check_pairing(pairing: object) -> str:
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}; got {pairing!r}")
    return str(pairing)


def check_seq_axis(seq_axis: object) -> int:
    if not _is_integer(seq_axis) or seq_axis not in SEQ_AXES:
        raise ValueError(f"seq_axis must be -3 (inputs [..., L, N, H]) or -2 (inputs [..., N, L, H]); got {seq_axis!r}")
    return int(seq_axis)  # type: ignore[call-overload]


def check_input_dtype(name: str, argument: str = "inputs") -> str:
    if name not in INPUT_DTYPES:
        raise TypeError(f"{argument} must have a real floating dtype {INPUT_DTYPES}; got dtype {name}")
    return name


def check_positions_dtype(name: str, is_integer: bool) -> str:
    if is_integer or name in POSITION_FLOAT_DTYPES:
        return name
    raise TypeError(
        "positions must have an integer dtype or float32/float64 "
        f"(16-bit floats cannot hold positions above 2048 exactly); got dtype {name}"
    )


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


def check_tables(cos_shape: tuple[int, ...], sin_shape: tuple[int, ...], head_dim: int) -> int:
    if tuple(cos_shape) != tuple(sin_shape):
        raise ValueError(f"tables.cos and tables.sin must have the same shape; got {cos_shape} and {sin_shape}")
    if len(cos_shape) < 1 or cos_shape[-1] > head_dim // 2:
        raise ValueError(
            f"tables must have shape [..., L, R] with R <= head_dim // 2 = {head_dim // 2}; got {tuple(cos_shape)}"
        )
    return int(cos_shape[-1])


def check_tables_dtype(tables_dtype: str, inputs_dtype: str) -> None:
    if tables_dtype not in POSITION_FLOAT_DTYPES:
        raise TypeError(f"tables must be float32 or float64; got dtype {tables_dtype}")
    if inputs_dtype == "float64" and tables_dtype != "float64":
        raise TypeError("tables are float32 but inputs are float64; build the tables with dtype float64")


def check_same_batch(q_shape: tuple[int, ...], k_shape: tuple[int, ...], seq_axis: int) -> None:
    if positions_target_shape(q_shape, seq_axis) != positions_target_shape(k_shape, seq_axis):
        raise ValueError(
            f"q of shape {tuple(q_shape)} and k of shape {tuple(k_shape)} must share their batch axes and L"
        )


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
