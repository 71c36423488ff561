"""The vocabulary of the benchmark: the workloads, the kinds of call, and what one measurement holds.

A run measures cases; a case is one (layer, mode, dtype) with x of shape [B, L, N, H]; a result is
one implementation timed on it (seconds) with its peak memory (bytes) and the accuracy of its output.
Pure Python: the report and the targets read results without importing any framework.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

LAYERS: dict[str, dict[str, Any]] = {
    "gemma4-global": {"label": "Gemma 4 global layer", "H": 512, "p": 0.25, "w": 1e6, "N": 8},
    "llama": {"label": "Llama-like layer", "H": 128, "p": 1.0, "w": 1e4, "N": 32},
}
MODES: dict[str, dict[str, int]] = {"prefill": {"B": 1, "L": 4096}, "decode": {"B": 32, "L": 1}}
QUICK_MODES: dict[str, dict[str, int]] = {"prefill": {"B": 1, "L": 256}, "decode": {"B": 4, "L": 1}}
DTYPES = ("float32", "bfloat16")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}

# How kinds compare: an in-place call replaces an out-of-place one, so both face the e2e baselines.
KIND_GROUP = {
    "e2e": "e2e",
    "inplace": "e2e",
    "apply": "apply",
    "tables": "tables",
    "qk": "qk",
    "copy": "copy",
    "computed": "computed",
}
KIND_LABEL = {
    "e2e": "end to end",
    "inplace": "in place, end to end",
    "apply": "apply-only (precomputed tables)",
    "tables": "tables only",
    "qk": "q and k, end to end",
    "copy": "copy",
    "computed": "computed floor",
}

# The floor of each framework: every row is also shown as a multiple of it.
COPY = {"torch": "copy: torch clone", "jax": "copy: jax.jit(jnp.copy)", "numpy": "copy: numpy.copy"}
NUMPY_MEMORY_COPY = "copy: torch into NumPy-allocated memory (huge pages advised)"
# The least computed output of x's size (x * 2), where it costs a framework more than its copy.
COMPUTED = {"jax": "x * 2: jax.jit(lambda x: x * 2)"}
FLASH_ATTN = "flash-attn apply_rotary_emb (cached tables)"
LIGER = "Liger rope (HF tables + LigerRopeFunction, in place)"

# Short names of the baselines (column heads of the ratio tables, the targets' text).
SHORT = {
    "HF transformers Gemma 4": "HF, end to end",
    "HF transformers Gemma 4: rotary embedding": "HF, tables",
    "HF transformers Gemma 4: apply_rotary_pos_emb": "HF, apply-only",
    "HF transformers Gemma 4: q and k": "HF, q and k",
    "rotate_half, torch eager": "rotate_half eager",
    "rotate_half, torch eager: q and k": "rotate_half eager, q and k",
    "rotate_half, torch.compile": "rotate_half compiled",
    "paper / Gemma JAX apply_rope, jax.jit": "paper JAX jit",
    "paper / Gemma JAX apply_rope, jax.jit: q and k": "paper JAX jit, q and k",
    FLASH_ATTN: "flash-attn, apply-only",
    LIGER: "Liger, q and k",
    NUMPY_MEMORY_COPY: "the copy into NumPy-allocated memory",
    COMPUTED["jax"]: "x * 2 in jax",
}


@dataclasses.dataclass
class Result:
    """One implementation in one case. Times in seconds over the samples; ``peak_bytes``: the memory
    one call allocated at most (output included) by the framework's own meter, None where not measured;
    ``input_bytes``: the size of the arrays it rotates (x, or q and k)."""

    name: str
    framework: str  # torch | jax | numpy ("" for a skipped entry)
    role: str  # ours | baseline | floor | skipped
    kind: str  # a key of KIND_GROUP
    note: str
    median: float | None = None
    q1: float | None = None
    q3: float | None = None
    low: float | None = None
    high: float | None = None
    first: float | None = None  # the first call, compilation included
    inner: int = 0  # calls per sample
    reps: int = 0  # samples
    accuracy: str = "—"
    error: str = ""
    peak_bytes: int | None = None
    input_bytes: int = 0

    @property
    def peak_ratio(self) -> float | None:
        """Peak memory of one call as a multiple of its input's size."""
        if self.peak_bytes is None or self.input_bytes <= 0:
            return None
        return self.peak_bytes / self.input_bytes


@dataclasses.dataclass
class CaseResult:
    layer: str
    mode: str
    dtype: str
    shape: list[int]
    results: list[Result]

    @property
    def label(self) -> str:
        return f"{self.layer} {self.mode} {self.dtype}"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]

    def find(self, name: str) -> Result | None:
        """The result named ``name`` if it was timed."""
        for result in self.results:
            if result.name == name and result.median is not None:
                return result
        return None

    def copy_for(self, framework: str) -> Result | None:
        return self.find(COPY[framework]) if framework in COPY else None


def ratio(a: Result | None, b: Result | None) -> float | None:
    """a's median time over b's."""
    if a is None or b is None or a.median is None or b.median is None or b.median <= 0:
        return None
    return a.median / b.median


def cases_of(section: dict[str, Any]) -> list[CaseResult]:
    """The cases of one device section as read back from its JSON (older files lack the memory fields)."""
    fields = {f.name for f in dataclasses.fields(Result)}
    return [
        CaseResult(
            c["layer"],
            c["mode"],
            c["dtype"],
            c["shape"],
            [Result(**{k: v for k, v in r.items() if k in fields}) for r in c["results"]],
        )
        for c in section["cases"]
    ]


def fmt_ms(seconds: float | None) -> str:
    """Milliseconds to three significant figures."""
    if seconds is None:
        return "—"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3g}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def fmt_bytes(nbytes: float) -> str:
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.3g} MiB"
    return f"{nbytes / 2**10:.3g} KiB"
