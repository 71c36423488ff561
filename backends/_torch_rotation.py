"""The PyTorch backend's rotation of inputs by cos/sin tables: one eager route, one compiled route.

* ``rotation(x, cos, sin, pairing, seq_axis)``: a new tensor, x [B..., L, N, H] (or [B..., N, L, H]
  with seq_axis=-2) with its 2R rotated lanes turned by the tables [B'..., L, R], computed in the
  tables' dtype and rounded once to x's; NoPE lanes copied bit for bit.
* ``rotation_in_place(x, cos, sin, pairing, seq_axis)``: the same written into x's rotated lanes
  (NoPE lanes untouched); returns x.

Both go through autograd where a gradient is wanted (``_Rotation``: the backward of a rotation is
the inverse rotation; saved are the tables, and x only when the tables need a gradient).

Eager: the first and second lanes of the rotated pairs are two strided views, each rotated by two
tensor operations (x1 c into the output lane, then minus x2 s). Out of place, inputs larger than a
chunk (``_torch_chunks``) go chunk by chunk: each output chunk is first a copy of the input chunk
(where there are NoPE lanes), then its rotated lanes are written while it is in cache; a large CPU
output is allocated on huge pages (``_hugepages``). In place, only the rotated lanes are read and
written, in chunks (one temporary lane per chunk). Under torch.compile the rotation is the array API
core's expression, which the compiler fuses.

Shape letters: B... batch axes, L sequence, N heads, H head_dim, R rotated pairs.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as xp
import torch
from p_rope._params import RopeTables  # vendor: inline
from p_rope.backends._core import rotate, rotate_pairs, rotated_lane_slices  # vendor: inline
from p_rope.backends._hugepages import empty_like  # vendor: inline
from p_rope.backends._torch_chunks import CHUNK_BYTES, IN_PLACE_CHUNK_BYTES, chunks  # vendor: inline


def _lanes(x: torch.Tensor, pairs: int, pairing: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the first and second elements of the R rotated pairs."""
    if pairing == "split_half":
        return x.narrow(-1, 0, pairs), x.narrow(-1, x.shape[-1] // 2, pairs)
    first, second = rotated_lane_slices(x.shape[-1], pairs, pairing)
    return x[..., first], x[..., second]


def _table_view(table: torch.Tensor, seq_axis: int) -> torch.Tensor:
    """A table [B'..., L, R] viewed to broadcast against one lane [B..., L, N, R] (or [B..., N, L, R]
    with seq_axis=-2); a table [R]: L = 1."""
    if table.dim() == 1:
        table = table.unsqueeze(0)
    return table.unsqueeze(-2 if seq_axis == -3 else -3)


def _rotate_lanes(
    x1: torch.Tensor, x2: torch.Tensor, c: torch.Tensor, s: torch.Tensor, o1: torch.Tensor, o2: torch.Tensor, d: float
) -> None:
    """(o1, o2) = (x1 c - d x2 s, x2 c + d x1 s), d = +-1, computed in the tables' dtype and rounded
    once to o1's; (o1, o2) may be (x1, x2) themselves (in place)."""
    if o1.dtype != c.dtype:  # a wider computation dtype: each lane computed there, rounded once
        first = torch.mul(x1, c).addcmul_(x2, s, value=-d)
        if o1 is x1:  # in place: x1 is still read by the second lane
            second = torch.mul(x2, c).addcmul_(x1, s, value=d)
            o1.copy_(first)
            o2.copy_(second)
        else:  # one temporary lane, reused
            o1.copy_(first)
            o2.copy_(torch.mul(x2, c, out=first).addcmul_(x1, s, value=d))
    elif o1 is x1:  # in place: x1 is still read by the second lane
        first = torch.mul(x1, c).addcmul_(x2, s, value=-d)
        x2.mul_(c).addcmul_(x1, s, value=d)
        x1.copy_(first)
    else:
        torch.mul(x1, c, out=o1).addcmul_(x2, s, value=-d)
        torch.mul(x2, c, out=o2).addcmul_(x1, s, value=d)


def _rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, seq_axis: int, direction: float
) -> torch.Tensor:
    """A new tensor: x rotated by the tables (direction -1: the inverse rotation); NoPE lanes copied."""
    if torch.compiler.is_compiling():  # the array API core's expression, which the compiler fuses
        return rotate(xp, x, RopeTables(cos, sin if direction > 0 else -sin), pairing, seq_axis)
    pairs = cos.shape[-1]
    copy = 2 * pairs < x.shape[-1]  # NoPE lanes, copied with the rest
    size = x.numel() * x.element_size()
    small = size <= CHUNK_BYTES
    out = x.clone() if copy and small else empty_like(x)
    if not pairs:
        return out if small else out.copy_(x)
    (x1, x2), (o1, o2) = _lanes(x, pairs, pairing), _lanes(out, pairs, pairing)
    c, s = _table_view(cos, seq_axis), _table_view(sin, seq_axis)
    if small and cos.dtype == x.dtype:
        _rotate_lanes(x1, x2, c, s, o1, o2, direction)
        return out
    # a wider computation dtype holds two temporary lanes (the product, and the other lane widened
    # by addcmul_), each as large as a 16-bit chunk: small inputs go in four chunks, so that output
    # and temporaries stay within twice the input
    whole = (x, out) if copy and not small else ()
    pieces = ((t, seq_axis) for t in (*whole, x1, x2, c, s, o1, o2))
    for block in chunks(x, seq_axis, x.dim() > 3, CHUNK_BYTES if not small else max(1, size // 4), *pieces):
        if whole:
            block[1].copy_(block[0])
        b1, b2, bc, bs, b3, b4 = block[-6:]
        _rotate_lanes(b1, b2, bc, bs, b3, b4, direction)
    return out


def _rotate_in_place(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, seq_axis: int) -> None:
    """Rotate the 2R rotated lanes of x where they are, in chunks; NoPE lanes untouched."""
    pairs = cos.shape[-1]
    if not pairs or x.numel() == 0:
        return
    x1, x2 = _lanes(x, pairs, pairing)
    c, s = _table_view(cos, seq_axis), _table_view(sin, seq_axis)
    if torch.compiler.is_compiling():  # one expression, which the compiler fuses
        o1, o2 = rotate_pairs(x1.to(c.dtype), x2.to(c.dtype), c, s)
        x1.copy_(o1)
        x2.copy_(o2)
        return
    pieces = ((x1, seq_axis), (x2, seq_axis), (c, seq_axis), (s, seq_axis))
    for a, b, cc, sc in chunks(x1, seq_axis, x.dim() > 3, IN_PLACE_CHUNK_BYTES // 2, *pieces):
        _rotate_lanes(a, b, cc, sc, a, b, 1.0)


def _table_gradients(
    grad: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, pairing: str, seq_axis: int, direction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the tables of a rotation of x, given the gradient of its output."""
    pairs = cos.shape[-1]
    g1, g2 = (lane.to(cos.dtype) for lane in _lanes(grad, pairs, pairing))
    x1, x2 = (lane.to(cos.dtype) for lane in _lanes(x, pairs, pairing))
    shape = _table_view(cos, seq_axis).shape
    grad_cos = (g1 * x1 + g2 * x2).sum_to_size(shape).reshape(cos.shape)
    grad_sin = ((g2 * x1 - g1 * x2) * direction).sum_to_size(shape).reshape(cos.shape)
    return grad_cos, grad_sin


class _Rotation(torch.autograd.Function):
    """Rotation by tables whose backward is the inverse rotation (saved: the tables)."""

    @staticmethod
    def forward(
        x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, seq_axis: int, direction: float
    ) -> torch.Tensor:
        return _rotate(x, cos, sin, pairing, seq_axis, direction)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, cos, sin, pairing, seq_axis, direction = inputs
        ctx.pairing, ctx.seq_axis, ctx.direction = pairing, seq_axis, direction
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            ctx.save_for_backward(cos, sin, x)
        else:
            ctx.save_for_backward(cos, sin)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cos, sin = ctx.saved_tensors[:2]
        grad_x = grad_cos = grad_sin = None
        if ctx.needs_input_grad[0]:
            grad_x = _Rotation.apply(grad, cos, sin, ctx.pairing, ctx.seq_axis, -ctx.direction)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            saved_x = ctx.saved_tensors[2]
            grad_cos, grad_sin = _table_gradients(grad, saved_x, cos, ctx.pairing, ctx.seq_axis, ctx.direction)
        return grad_x, grad_cos, grad_sin, None, None, None


def _wants_grad(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad or sin.requires_grad)


def rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, seq_axis: int) -> torch.Tensor:
    """x rotated by the tables, a new tensor (module docstring)."""
    if _wants_grad(x, cos, sin):
        return _Rotation.apply(x, cos, sin, pairing, seq_axis, 1.0)
    return _rotate(x, cos, sin, pairing, seq_axis, 1.0)


def rotation_in_place(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairing: str, seq_axis: int
) -> torch.Tensor:
    """x with its rotated lanes rotated where they are (module docstring); returns x."""
    pairs = cos.shape[-1]
    if _wants_grad(x, cos, sin):
        if pairs:
            rotated = _Rotation.apply(x, cos, sin, pairing, seq_axis, 1.0)
            for target, source in zip(_lanes(x, pairs, pairing), _lanes(rotated, pairs, pairing), strict=True):
                target.copy_(source)
        return x
    _rotate_in_place(x, cos, sin, pairing, seq_axis)
    return x
