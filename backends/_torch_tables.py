"""The PyTorch backend's tables: which of SPEC.md §8's algorithms builds them, where, in what pieces.

``torch_tables(positions, spec)`` returns the cos/sin tables, shape positions.shape + (R,), of
``spec.dtype`` on positions' device:

* float32 on the CPU with ``max_wavelength >= 1``: the float64 reduction (within its contract's
  range there), in chunks of positions whose float64 intermediates stay under ``TABLE_CHUNK_BYTES``
  (a large temporary is mapped afresh by the kernel, page by page, on most calls); one piece under
  torch.compile, which fuses the expression;
* float32 everywhere else (CUDA, MPS, ..., and ``max_wavelength < 1``): the exact reduction, which
  needs no float64;
* float64 (float64 inputs): cos/sin of the float64 angle position * freq_i, as the array API core.

The per-pair constants are Python values
computed once per parameter set (constants to torch.compile) and held per device in eager mode.

Shape letters: L positions (any leading shape), R rotated pairs.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import array_api_compat.torch as xp
import torch
from p_rope._params import RopeTables, TableSpec, frequency_values  # vendor: inline
from p_rope.backends._exact_turns import exact_turn_tables, turn_constants  # vendor: inline
from p_rope.backends._float64_turns import float64_revolutions, float64_turn_tables  # vendor: inline

FLOAT64_TABLE_DEVICES = ("cpu",)  # devices whose float32 tables take the float64 reduction
TABLE_CHUNK_BYTES = 1 << 20  # float64 turns and angles of one piece of positions: 16 bytes a pair


class _Constants(NamedTuple):
    """Per-pair constants of one parameter set: turn_constants' (heads, tails), the float64
    revolutions and the float64 angular frequencies of the R rotated pairs."""

    heads: tuple[tuple[int, ...], ...]
    tails: tuple[tuple[float, ...], ...]
    revolutions: tuple[float, ...]
    freq: tuple[float, ...]


@torch.compiler.assume_constant_result
def _constants(head_dim: int, max_wavelength: float, pairs: int, scale_factor: float) -> _Constants:
    return _cached_constants(head_dim, max_wavelength, pairs, scale_factor)


@functools.lru_cache(maxsize=256)
def _cached_constants(head_dim: int, max_wavelength: float, pairs: int, scale_factor: float) -> _Constants:
    heads, tails = turn_constants(head_dim, max_wavelength, pairs, scale_factor)
    revolutions = float64_revolutions(head_dim, max_wavelength, pairs, scale_factor)
    freq = tuple(frequency_values(head_dim, max_wavelength, pairs, scale_factor)[:pairs])
    return _Constants(heads, tails, revolutions, freq)


@functools.lru_cache(maxsize=256)
def _device_constant(values: tuple[Any, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


def constant_tensor(values: tuple[Any, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor on device: cached in eager mode, a graph constant when compiling."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    return _device_constant(values, dtype, device)


def _float64_turns_in_pieces(positions: torch.Tensor, revolutions: torch.Tensor) -> RopeTables:
    """float64_turn_tables over pieces of positions, written into one [2, ..., R] float32 tensor."""
    pairs = revolutions.shape[-1]
    flat = positions.reshape(-1)
    rows = max(1, TABLE_CHUNK_BYTES // (16 * max(1, pairs)))
    if flat.shape[0] <= rows or torch.compiler.is_compiling():
        return float64_turn_tables(xp, positions, revolutions)
    out = torch.empty((2, flat.shape[0], pairs), dtype=torch.float32, device=positions.device)
    for start in range(0, flat.shape[0], rows):
        cos, sin = float64_turn_tables(xp, flat[start : start + rows], revolutions)
        out[0, start : start + rows], out[1, start : start + rows] = cos, sin
    return RopeTables(*out.view(2, *positions.shape, pairs).unbind(0))


def torch_tables(positions: torch.Tensor, spec: TableSpec) -> RopeTables:
    """cos/sin tables positions.shape + (R,) of spec.dtype on positions' device (module docstring)."""
    constants = _constants(spec.head_dim, spec.max_wavelength, spec.pairs, spec.scale_factor)
    device = positions.device
    if spec.dtype == "float64":
        angle = positions.to(torch.float64)[..., None] * constant_tensor(constants.freq, torch.float64, device)
        return RopeTables(torch.cos(angle), torch.sin(angle))
    if device.type in FLOAT64_TABLE_DEVICES and spec.max_wavelength >= 1.0:
        return _float64_turns_in_pieces(positions, constant_tensor(constants.revolutions, torch.float64, device))
    heads = constant_tensor(constants.heads, torch.int32, device)
    return exact_turn_tables(xp, positions, (heads, constant_tensor(constants.tails, torch.float32, device)))
