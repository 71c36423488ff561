"""The PyTorch backend's chunk scheduler: large rotations go in chunks that stay in cache.

``chunks(measure, seq_axis, batched, chunk_bytes, *pieces)`` cuts tensors that share the L axis of
``measure`` (and its first batch axis, where one row of L is larger than a chunk: short sequences in
a large batch) into chunks of about ``chunk_bytes`` of ``measure``. Out of place, each chunk of the
input is copied and rotated while it and its output are in cache (``CHUNK_BYTES`` of input); in
place, the chunk is the rotated lanes alone (``IN_PLACE_CHUNK_BYTES``). Temporaries of one chunk are
bounded by the chunk size whatever B and L.

Shape letters: B... batch axes, L sequence.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

CHUNK_BYTES = 1 << 21
IN_PLACE_CHUNK_BYTES = 1 << 19


def chunks(
    measure: torch.Tensor, seq_axis: int, batched: bool, chunk_bytes: int, *pieces: tuple[torch.Tensor, int]
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Tuples of the pieces (each a tensor and its L dimension, counted from the right) cut in chunks
    of about chunk_bytes of ``measure`` (whose L dimension is seq_axis): along L; where one row of L
    is larger than that and ``batched`` (the first axis is a batch axis), along the first axis too:
    several whole sequences per chunk, or one batch row's sequence cut along L. A piece of size 1 on a
    cut dimension, or without it (a broadcast table), is repeated in every chunk."""
    length = measure.shape[seq_axis]
    row_bytes = measure.numel() // length * measure.element_size() if length else 0
    if row_bytes <= chunk_bytes or not batched or measure.shape[0] <= 1:
        yield from _blocks(max(1, chunk_bytes // row_bytes) if row_bytes else max(1, length), length, *pieces)
        return
    batch = measure.shape[0]
    batch_row_bytes = row_bytes // batch  # one row of L of one batch row
    if batch_row_bytes * length <= chunk_bytes:
        batch_rows, rows = chunk_bytes // (batch_row_bytes * length), length
    else:
        batch_rows, rows = 1, max(1, chunk_bytes // batch_row_bytes)
    lead = measure.dim() + seq_axis  # dimensions before L
    for part in _blocks(batch_rows, batch, *((t, d - lead) for t, d in pieces)):
        yield from _blocks(rows, length, *zip(part, (d for _, d in pieces), strict=True))


def _blocks(rows: int, length: int, *pieces: tuple[torch.Tensor, int]) -> Iterator[tuple[torch.Tensor, ...]]:
    """Tuples of the tensors cut along their given dimension in blocks of ``rows`` of ``length``; a
    tensor of size 1 there, or without that dimension (a broadcast table), is repeated in every tuple."""
    count = max(1, -(-length // rows))
    parts = [t.split(rows, dim) if t.dim() >= -dim and t.shape[dim] != 1 else (t,) * count for t, dim in pieces]
    return zip(*parts, strict=True)
