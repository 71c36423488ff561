"""Large CPU outputs on transparent huge pages, for the PyTorch backend (Linux).

``empty_like(x)`` is ``torch.empty_like(x)``. Where x is on the CPU and at least
``ADVISE_MIN_BYTES``, and the kernel gives transparent huge pages on request (THP "always" or
"madvise"), the new tensor's memory is advised to the kernel as huge pages (``MADV_HUGEPAGE``, as
NumPy does for its arrays) and then first written, one byte per KiB, by every intra-op thread at
once: the page faults of a fresh output are then taken per 2 MiB instead of per 4 KiB. The values
written are zeros in memory that ``empty_like`` leaves undefined anyway; the advice changes nothing
where the kernel refuses it. ``P_ROPE_MADVISE_HUGEPAGE=0`` in the environment switches it off (like
NumPy's ``NUMPY_MADVISE_HUGEPAGE=0``); it is read once per process.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys
from typing import Any

import torch

HUGE_PAGE_BYTES = 1 << 21
ADVISE_MIN_BYTES = 1 << 22  # NumPy's threshold for the same advice
TOUCH_STRIDE = 1 << 10  # bytes between first writes: under a 4 KiB page, and enough writes for every thread
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


@functools.cache
def madvise() -> Any:
    """libc's madvise where the kernel gives transparent huge pages on request, else None (not Linux,
    THP "never", no libc, or P_ROPE_MADVISE_HUGEPAGE=0)."""
    if not sys.platform.startswith("linux") or os.environ.get("P_ROPE_MADVISE_HUGEPAGE", "1") == "0":
        return None
    try:
        with open(THP_SETTING, encoding="ascii") as setting:
            if "[never]" in setting.read():
                return None
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


def empty_like(x: torch.Tensor) -> torch.Tensor:
    """torch.empty_like(x), on huge pages where the module docstring says."""
    out = torch.empty_like(x)
    storage = out.untyped_storage()
    nbytes = storage.nbytes()
    if out.device.type != "cpu" or nbytes < ADVISE_MIN_BYTES:
        return out
    advise = madvise()
    if advise is not None:
        start = storage.data_ptr()
        first = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
        last = (start + nbytes) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
        if last > first and advise(first, last - first, mmap.MADV_HUGEPAGE) == 0:
            torch.empty(0, dtype=torch.uint8).set_(storage)[::TOUCH_STRIDE].zero_()
    return out
