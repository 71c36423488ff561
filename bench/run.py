"""Speed of p_rope's backends side by side with what users pick instead, in one run; writes BENCHMARKS.md.

    python bench/run.py                      # the full CPU run (about 8 minutes on 2 cores)
    python bench/run.py --quick              # smoke run: small shapes, float32 only, 3 repetitions
    python bench/run.py --device cuda        # on a GPU (adds flash-attn's rotary where head_dim <= 256)
    python bench/run.py --out BENCHMARKS.md --json reports/bench/cpu.json
    python bench/run.py --device cuda --include reports/bench/cpu.json
                                             # on a GPU machine: GPU section + this project's CPU section

Measured for each layer (a Gemma 4 global layer: H = 512, p = 0.25, w = 1e6, N = 8; a Llama-like
layer: H = 128, p = 1, w = 1e4, N = 32), each mode (prefill B = 1, L = 4096; decode B = 32, L = 1)
and each dtype (float32, bfloat16):
- ours: each backend out-of-place end to end (tables + rotation), in place (torch, NumPy), the
  tables alone, apply-only with precomputed tables, and q and k together;
- the baselines (bench/baselines.py): HF transformers' Gemma 4 path, the paper's JAX function under
  jit, a plain rotate_half in torch eager and under torch.compile, flash-attn's rotary on a GPU;
- a plain copy of the input in each framework: the floor of a memory-bound op.

Timing: each call is synchronized (jax.block_until_ready, torch.cuda.synchronize); 3 warm-up calls
(compilation included, its time reported as "first call"); then REPS rounds in which every entry of
the case takes one sample in turn (round-robin, so a disturbance hits all alike), a sample being the
mean of a batch of calls lasting >= 50 ms; median, quartiles and min/max over the samples; the
garbage collector off while timing. Threads are fixed before the frameworks load.
Every output of ours and of the baselines is also graded against the NumPy reference (SPEC.md's
accuracy levels) on a subsample of tokens, so the table shows what each figure buys.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

LAYERS: dict[str, dict[str, Any]] = {
    "gemma4-global": {"label": "Gemma 4 global layer", "H": 512, "p": 0.25, "w": 1e6, "N": 8},
    "llama": {"label": "Llama-like layer", "H": 128, "p": 1.0, "w": 1e4, "N": 32},
}
MODES: dict[str, dict[str, int]] = {"prefill": {"B": 1, "L": 4096}, "decode": {"B": 32, "L": 1}}
QUICK_MODES: dict[str, dict[str, int]] = {"prefill": {"B": 1, "L": 256}, "decode": {"B": 4, "L": 1}}
DTYPES = ("float32", "bfloat16")
DECODE_MAX_POSITION = 32_768  # decode tokens sit at random positions below this
GRADE_TOKENS = 256  # tokens graded per output (a subsample of prefill)

# How kinds compare: an in-place call replaces an out-of-place one, so both face the e2e baselines.
KIND_GROUP = {"e2e": "e2e", "inplace": "e2e", "apply": "apply", "tables": "tables", "qk": "qk", "copy": "copy"}
KIND_LABEL = {
    "e2e": "end to end",
    "inplace": "in place, end to end",
    "apply": "apply-only (precomputed tables)",
    "tables": "tables only",
    "qk": "q and k, end to end",
    "copy": "copy",
}


# column heads of the ratio tables
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
    "flash-attn rotary (cached tables)": "flash-attn, apply-only",
}


@dataclasses.dataclass
class Entry:
    """One thing timed: ``run`` is called repeatedly; ``output`` (fresh inputs) is graded."""

    name: str
    framework: str  # torch | jax | numpy
    role: str  # ours | baseline | floor
    kind: str  # see KIND_GROUP
    run: Callable[[], Any]
    output: Callable[[], Any] | None = None
    note: str = ""


@dataclasses.dataclass
class Result:
    name: str
    framework: str
    role: str
    kind: str
    note: str
    median: float | None = None  # seconds
    q1: float | None = None
    q3: float | None = None
    low: float | None = None
    high: float | None = None
    first: float | None = None  # first call, compilation included
    inner: int = 0
    reps: int = 0
    accuracy: str = "—"
    error: str = ""


@dataclasses.dataclass
class CaseResult:
    layer: str
    mode: str
    dtype: str
    shape: list[int]
    results: list[Result]


# ---------------------------------------------------------------------------------------------
# environment


def fix_threads(threads: int) -> None:
    """Pin the thread counts before any framework loads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # torch.compile's background compile workers would compete with the timed calls
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return "unknown"


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "spec", "backends"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + (" (spec/ or backends/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(device: str, threads: int, load_start: tuple[float, ...]) -> dict[str, str]:
    import torch

    info = {
        "CPU": f"{cpu_model()}, {os.cpu_count()} logical cores, {memory_gib()} memory",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "threads": (
            f"torch intra-op {torch.get_num_threads()} / inter-op {torch.get_num_interop_threads()}; "
            f"OMP/MKL/OpenBLAS {threads}; XLA CPU: its default pool over the {threads} visible cores; "
            "TORCHINDUCTOR_COMPILE_THREADS=1"
        ),
        "load average (1, 5, 15 min)": (
            f"{', '.join(f'{v:.2f}' for v in load_start)} at the start, "
            f"{', '.join(f'{v:.2f}' for v in os.getloadavg())} at the end"
        ),
        "device": device,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["device"] = f"cuda: {props.name}, {props.total_memory / 2**30:.0f} GiB (CUDA {torch.version.cuda})"
    packages = ["numpy", "jax", "jaxlib", "torch", "transformers", "flash-attn", "array-api-compat", "ml-dtypes"]
    info["libraries"] = ", ".join(f"{name} {version(name)}" for name in packages)
    info["p_rope"] = f"{version('p-rope')} at commit {git_commit()}"
    return info


# ---------------------------------------------------------------------------------------------
# timing


def failure(error: Exception) -> str:
    traceback.print_exc()
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def warm_up(entry: Entry, sync: Callable[[Any], None], min_rep_s: float, warmup: int, result: Result) -> int:
    """Warm-up calls (the first timed as "first call"); returns the batch size of one sample."""
    start = time.perf_counter()
    sync(entry.run())
    result.first = time.perf_counter() - start
    for _ in range(warmup - 1):
        sync(entry.run())
    start = time.perf_counter()
    sync(entry.run())
    one = time.perf_counter() - start
    return max(1, min(100_000, math.ceil(min_rep_s / max(one, 1e-7))))


def sample(entry: Entry, sync: Callable[[Any], None], inner: int) -> float:
    """Mean seconds per call over a batch of ``inner`` synchronized calls."""
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(inner):
            sync(entry.run())
        return (time.perf_counter() - start) / inner
    finally:
        gc.enable()


def summarize(result: Result, samples: list[float], inner: int) -> None:
    samples = sorted(samples)
    quartiles = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else [samples[0]] * 3
    result.median, result.q1, result.q3 = statistics.median(samples), quartiles[0], quartiles[2]
    result.low, result.high, result.inner, result.reps = samples[0], samples[-1], inner, len(samples)


def measure_all(entries: list[Entry], device: str, reps: int, min_rep_s: float, warmup: int) -> list[Result]:
    """Warm every entry up, then take the samples round-robin, so that a disturbance of the machine
    (another process, frequency changes) falls on all implementations alike rather than on one."""
    results = [Result(e.name, e.framework, e.role, e.kind, e.note) for e in entries]
    syncs = [make_sync(e.framework, device) for e in entries]
    inner = [0] * len(entries)
    for i, entry in enumerate(entries):
        try:
            inner[i] = warm_up(entry, syncs[i], min_rep_s, warmup, results[i])
        except Exception as error:  # an entry that fails is reported, the run goes on
            results[i].error = failure(error)
    samples: list[list[float]] = [[] for _ in entries]
    gc.collect()
    for _ in range(reps):
        for i, entry in enumerate(entries):
            if results[i].error:
                continue
            try:
                samples[i].append(sample(entry, syncs[i], inner[i]))
            except Exception as error:
                results[i].error = failure(error)
    for i in range(len(entries)):
        if not results[i].error:
            summarize(results[i], samples[i], inner[i])
    return results


# ---------------------------------------------------------------------------------------------
# the entries of one case


def import_backend(name: str) -> tuple[Any, str]:
    try:
        return importlib.import_module(f"p_rope.backends.{name}"), ""
    except Exception as error:
        return None, f"{type(error).__name__}: {error}"


def to_numpy(value: Any, framework: str) -> Any:
    """A NumPy copy of an output (bfloat16 as ml_dtypes.bfloat16, bit for bit)."""
    import numpy as np

    if framework == "torch":
        import ml_dtypes
        import torch

        value = value.detach().contiguous().cpu()
        if value.dtype == torch.bfloat16:
            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)


class Case:
    """Inputs of one (layer, mode, dtype) case in every framework, and the entries that time them."""

    def __init__(self, layer: str, mode: str, dtype: str, device: str, modes: dict[str, dict[str, int]], seed: int):
        import ml_dtypes
        import numpy as np

        self.layer, self.mode, self.dtype, self.device = layer, mode, dtype, device
        spec = LAYERS[layer]
        self.H, self.p, self.w, self.N = spec["H"], spec["p"], spec["w"], spec["N"]
        self.B, self.L = modes[mode]["B"], modes[mode]["L"]
        self.shape = [self.B, self.L, self.N, self.H]
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.shape, dtype=np.float32)
        k = rng.standard_normal(self.shape, dtype=np.float32)
        if mode == "prefill":
            positions = np.broadcast_to(np.arange(self.L, dtype=np.int64), (self.B, self.L)).copy()
        else:
            positions = rng.integers(0, DECODE_MAX_POSITION, size=(self.B, self.L), dtype=np.int64)
        np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
        self.x_np, self.k_np, self.positions_np = x.astype(np_dtype), k.astype(np_dtype), positions
        step = max(1, self.L // GRADE_TOKENS)
        self.grade_index = (slice(None), slice(None, None, step))

    # -- framework arrays ---------------------------------------------------------------------

    def torch_arrays(self) -> tuple[Any, Any, Any]:
        import numpy as np
        import torch

        def tensor(a: Any) -> Any:
            if self.dtype == "bfloat16":
                return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16).to(self.device)
            return torch.from_numpy(np.array(a)).to(self.device)

        return tensor(self.x_np), tensor(self.k_np), torch.from_numpy(self.positions_np.copy()).to(self.device)

    def jax_arrays(self, jax_device: Any) -> tuple[Any, Any, Any]:
        import jax
        import numpy as np

        put = lambda a: jax.device_put(a, jax_device)
        return put(self.x_np), put(self.k_np), put(self.positions_np.astype(np.int32))

    def grade(self, output: Any, framework: str, *, k: bool = False) -> str:
        from p_rope.tolerance import grade

        got = to_numpy(output, framework)[self.grade_index]
        inputs = (self.k_np if k else self.x_np)[self.grade_index]
        g = grade(got, inputs, self.positions_np[self.grade_index], self.H, self.w, self.p)
        if not g.nope_identical:
            return "fails (NoPE lanes changed)"
        if got.dtype != inputs.dtype or got.shape != inputs.shape:
            return f"fails (dtype {got.dtype}, shape {got.shape})"
        if g.ratio["strict"] <= 1.0:
            return f"strict ({g.ratio['strict']:.2g} of bound)"
        if g.ratio["conformant"] <= 1.0:
            return f"conformant only ({g.ratio['strict']:.2g}x strict bound)"
        return f"fails ({g.ratio['conformant']:.2g}x conformant bound)"

    # -- entries --------------------------------------------------------------------------------

    def entries(self, skips: dict[str, str]) -> list[Entry]:
        """Every entry of this case; what cannot run is named in ``skips`` with the reason."""
        out: list[Entry] = []
        out += self._numpy_entries(skips)
        out += self._torch_entries(skips)
        out += self._jax_entries(skips)
        return out

    def _numpy_entries(self, skips: dict[str, str]) -> list[Entry]:
        import numpy as np

        if self.device != "cpu":
            return []
        x = self.x_np
        out = [Entry("copy: numpy.copy", "numpy", "floor", "copy", lambda: np.copy(x))]
        if self.dtype != "float32":
            skips["ours: array_api on NumPy"] = "NumPy has no native bfloat16 arithmetic (ml_dtypes emulates it)"
            return out
        A, why = import_backend("array_api")
        if A is None:
            skips["ours: array_api on NumPy"] = why
            return out
        H, w, p, pos = self.H, self.w, self.p, self.positions_np
        buffer = x.copy()

        def inplace_output() -> Any:
            fresh = x.copy()
            return A.apply_p_rope_(fresh, pos, H, w, p)

        out += [
            Entry("ours: array_api on NumPy", "numpy", "ours", "e2e", lambda: A.apply_p_rope(x, pos, H, w, p)),
            Entry(
                "ours: array_api on NumPy, apply_p_rope_",
                "numpy",
                "ours",
                "inplace",
                lambda: A.apply_p_rope_(buffer, pos, H, w, p),
                inplace_output,
            ),
        ]
        return out

    def _torch_entries(self, skips: dict[str, str]) -> list[Entry]:
        import baselines
        import torch

        x, k, pos = self.torch_arrays()
        H, w, p = self.H, self.w, self.p
        out = [Entry("copy: torch clone", "torch", "floor", "copy", lambda: x.clone())]
        T, why = import_backend("torch")
        if T is None:
            skips["ours: torch"] = why
        else:
            if x.device.type == "cpu":  # the same copy into memory allocated as ours (huge pages, mapped at once)
                out.append(Entry(HUGE_PAGE_COPY, "torch", "floor", "copy", lambda: T._empty_like(x).copy_(x)))
            buffer = x.clone()
            tables = T.p_rope_tables(pos, H, w, p)

            def inplace_output() -> Any:
                return T.apply_p_rope_(x.clone(), pos, H, w, p)

            out += [
                Entry("ours: torch apply_p_rope", "torch", "ours", "e2e", lambda: T.apply_p_rope(x, pos, H, w, p)),
                Entry(
                    "ours: torch apply_p_rope_",
                    "torch",
                    "ours",
                    "inplace",
                    lambda: T.apply_p_rope_(buffer, pos, H, w, p),
                    inplace_output,
                ),
                Entry("ours: torch p_rope_tables", "torch", "ours", "tables", lambda: T.p_rope_tables(pos, H, w, p)),
                Entry(
                    "ours: torch apply_p_rope_tables",
                    "torch",
                    "ours",
                    "apply",
                    lambda: T.apply_p_rope_tables(x, tables),
                ),
                Entry(
                    "ours: torch apply_p_rope_qk",
                    "torch",
                    "ours",
                    "qk",
                    lambda: T.apply_p_rope_qk(x, k, pos, H, w, p),
                    lambda: T.apply_p_rope_qk(x, k, pos, H, w, p)[0],
                ),
            ]
        if self.device == "cuda":
            A, why = import_backend("array_api")
            if A is None:
                skips["ours: array_api on torch"] = why
            else:
                out.append(
                    Entry("ours: array_api on torch", "torch", "ours", "e2e", lambda: A.apply_p_rope(x, pos, H, w, p))
                )

        hf = baselines.HFRope(H, w, p, device=self.device)
        cos, sin = hf.tables(x, pos)
        self.hf_source = hf.source
        inv = baselines.inv_freq_torch(H, w, p, device=self.device)
        compiled = torch.compile(baselines.rotate_half_torch)
        out += [
            Entry("HF transformers Gemma 4", "torch", "baseline", "e2e", lambda: hf(x, pos), note=hf.source),
            Entry(
                "HF transformers Gemma 4: rotary embedding", "torch", "baseline", "tables", lambda: hf.tables(x, pos)
            ),
            Entry(
                "HF transformers Gemma 4: apply_rotary_pos_emb",
                "torch",
                "baseline",
                "apply",
                lambda: hf.apply(x, cos, sin),
            ),
            Entry(
                "HF transformers Gemma 4: q and k",
                "torch",
                "baseline",
                "qk",
                lambda: hf.qk(x, k, pos),
                lambda: hf.qk(x, k, pos)[0],
            ),
            Entry(
                "rotate_half, torch eager", "torch", "baseline", "e2e", lambda: baselines.rotate_half_torch(x, pos, inv)
            ),
            Entry(
                "rotate_half, torch eager: q and k",
                "torch",
                "baseline",
                "qk",
                lambda: baselines.rotate_half_torch_qk(x, k, pos, inv),
                lambda: baselines.rotate_half_torch_qk(x, k, pos, inv)[0],
            ),
            Entry("rotate_half, torch.compile", "torch", "baseline", "e2e", lambda: compiled(x, pos, inv)),
        ]
        if self.device == "cuda":
            out += self._flash_entries(x, pos, skips)
        return out

    def _flash_entries(self, x: Any, pos: Any, skips: dict[str, str]) -> list[Entry]:
        import baselines

        name = "flash-attn rotary (cached tables)"
        if self.H > 256 or self.p != 1.0:
            skips[name] = f"head_dim {self.H} > 256 / p = {self.p} < 1: flash-attn's rotary cannot run this layer"
            return []
        try:
            apply_rotary_emb = baselines.flash_attn_rotary()
        except ImportError as error:
            skips[name] = f"not installed ({error})"
            return []
        cos, sin = baselines.flash_attn_tables(
            int(self.positions_np.max()) + self.L, self.H, self.w, x.dtype, self.device
        )
        if self.mode == "prefill":
            offsets: Any = 0
        else:
            import torch

            offsets = torch.from_numpy(self.positions_np[:, 0].astype("int32")).to(self.device)
        return [
            Entry(
                name,
                "torch",
                "baseline",
                "apply",
                lambda: apply_rotary_emb(x, cos, sin, interleaved=False, seqlen_offsets=offsets),
                note="tables cached up to the largest position, as flash-attn's RotaryEmbedding keeps them",
            )
        ]

    def _jax_entries(self, skips: dict[str, str]) -> list[Entry]:
        import baselines
        import jax
        import jax.numpy as jnp

        platform_ = "cpu" if self.device == "cpu" else "gpu"
        try:
            jax_device = jax.devices(platform_)[0]
        except RuntimeError as error:
            skips["jax (all entries)"] = f"jax has no {self.device} device here ({error})"
            return []
        x, k, pos = self.jax_arrays(jax_device)
        H, w, p = self.H, self.w, self.p
        copy = jax.jit(jnp.copy)
        out = [Entry("copy: jax.jit(jnp.copy)", "jax", "floor", "copy", lambda: copy(x))]
        J, why = import_backend("jax")
        if J is None:
            skips["ours: jax"] = why
        else:
            tables = J.p_rope_tables(pos, H, w, p)
            in_jit = jax.jit(lambda x_, pos_: J.apply_p_rope(x_, pos_, H, w, p))
            out += [
                Entry("ours: jax apply_p_rope", "jax", "ours", "e2e", lambda: J.apply_p_rope(x, pos, H, w, p)),
                Entry("ours: jax apply_p_rope inside a user's jax.jit", "jax", "ours", "e2e", lambda: in_jit(x, pos)),
                Entry("ours: jax p_rope_tables", "jax", "ours", "tables", lambda: J.p_rope_tables(pos, H, w, p)),
                Entry(
                    "ours: jax apply_p_rope_tables", "jax", "ours", "apply", lambda: J.apply_p_rope_tables(x, tables)
                ),
                Entry(
                    "ours: jax apply_p_rope_qk",
                    "jax",
                    "ours",
                    "qk",
                    lambda: J.apply_p_rope_qk(x, k, pos, H, w, p),
                    lambda: J.apply_p_rope_qk(x, k, pos, H, w, p)[0],
                ),
            ]
        paper, paper_qk = baselines.paper_jax_jit(), baselines.paper_jax_qk_jit()
        out += [
            Entry("paper / Gemma JAX apply_rope, jax.jit", "jax", "baseline", "e2e", lambda: paper(x, pos, w, p, 1.0)),
            Entry(
                "paper / Gemma JAX apply_rope, jax.jit: q and k",
                "jax",
                "baseline",
                "qk",
                lambda: paper_qk(x, k, pos, w, p, 1.0),
                lambda: paper_qk(x, k, pos, w, p, 1.0)[0],
            ),
        ]
        return out


def make_sync(framework: str, device: str) -> Callable[[Any], None]:
    if framework == "jax":
        import jax

        return lambda value: jax.block_until_ready(value)
    if framework == "torch" and device == "cuda":
        import torch

        return lambda value: torch.cuda.synchronize()
    return lambda value: None


def run_case(case: Case, reps: int, min_rep_s: float, warmup: int, log: Callable[[str], None]) -> CaseResult:
    skips: dict[str, str] = {}
    entries = case.entries(skips)
    results = measure_all(entries, case.device, reps, min_rep_s, warmup)
    for entry, result in zip(entries, results, strict=True):
        if not result.error and entry.kind not in ("copy", "tables"):
            try:
                output = (entry.output or entry.run)()
                result.accuracy = case.grade(output, entry.framework)
            except Exception as error:
                result.accuracy = f"not graded ({type(error).__name__}: {error})"
        shown = "failed: " + result.error if result.error else f"{fmt_ms(result.median)} ms  {result.accuracy}"
        log(f"  {entry.name:<50} {shown}")
    for name, why in skips.items():
        results.append(Result(name, "", "skipped", "", "", error=f"skipped: {why}"))
        log(f"  {name:<50} skipped: {why}")
    return CaseResult(case.layer, case.mode, case.dtype, case.shape, results)


# ---------------------------------------------------------------------------------------------
# report


def fmt_ms(seconds: float | None) -> str:
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


def find(case: CaseResult, name: str) -> Result | None:
    for result in case.results:
        if result.name == name and result.median is not None:
            return result
    return None


def copy_for(case: CaseResult, framework: str) -> Result | None:
    return find(
        case, {"torch": "copy: torch clone", "jax": "copy: jax.jit(jnp.copy)", "numpy": "copy: numpy.copy"}[framework]
    )


def ratio(a: Result | None, b: Result | None) -> float | None:
    if a is None or b is None or a.median is None or b.median is None:
        return None
    return a.median / b.median


def case_title(case: CaseResult) -> str:
    spec = LAYERS[case.layer]
    nbytes = math.prod(case.shape) * (4 if case.dtype == "float32" else 2)
    size = f"{nbytes / 2**20:.0f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KiB"
    return (
        f"{spec['label']}, {case.mode}, {case.dtype}: x [{', '.join(map(str, case.shape))}] ({size}), "
        f"H = {spec['H']}, p = {spec['p']:g}, w = {spec['w']:.0e}".replace("e+0", "e")
    )


def case_tables(case: CaseResult) -> list[str]:
    lines = [f"#### {case_title(case)}", ""]
    lines += [
        "| implementation | kind | median ms | IQR ms | min-max ms | first call ms | ÷ copy (same framework) "
        "| accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in case.results:
        if r.role == "skipped" or r.error:
            lines.append(f"| {r.name} | {KIND_LABEL.get(r.kind, '')} | — | — | — | — | — | {r.error} |")
            continue
        base = copy_for(case, r.framework)
        lines.append(
            f"| {'**' + r.name + '**' if r.role == 'ours' else r.name} | {KIND_LABEL[r.kind]} | {fmt_ms(r.median)} "
            f"| {fmt_ms(r.q1)}-{fmt_ms(r.q3)} | {fmt_ms(r.low)}-{fmt_ms(r.high)} | {fmt_ms(r.first)} "
            f"| {fmt_ratio(ratio(r, base))} | {r.accuracy} |"
        )
    ours = [r for r in case.results if r.role == "ours" and r.median is not None]
    others = [r for r in case.results if r.role == "baseline" and r.median is not None]
    if ours and others:
        lines += ["", "ours ÷ each baseline of the same kind (below 1: ours is faster):", ""]
        lines.append("| ours \\ baseline | " + " | ".join(SHORT.get(b.name, b.name) for b in others) + " |")
        lines.append("|---|" + "---:|" * len(others))
        for r in ours:
            cells = [fmt_ratio(ratio(r, b)) if KIND_GROUP[r.kind] == KIND_GROUP[b.kind] else "" for b in others]
            lines.append(f"| {r.name} ({KIND_LABEL[r.kind]}) | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


HUGE_PAGE_COPY = "copy: torch clone into huge-page memory (allocated as ours)"


@dataclasses.dataclass
class Target:
    text: str
    case: str
    measured: str
    met: bool | None  # None: could not be measured
    gap: str = ""


def get_case(cases: list[CaseResult], layer: str, mode: str, dtype: str) -> CaseResult | None:
    for case in cases:
        if (case.layer, case.mode, case.dtype) == (layer, mode, dtype):
            return case
    return None


def decomposition(case: CaseResult, framework: str, call: Result, budget: float) -> str:
    """Where the time of ``call`` goes (tables, rotation, the rest) and which part has to shrink to fit ``budget``."""
    tables = find(case, f"ours: {framework} p_rope_tables")
    apply = find(case, f"ours: {framework} apply_p_rope_tables")
    copy = copy_for(case, framework)
    if tables is None or apply is None or copy is None or None in (tables.median, apply.median, call.median):
        return ""
    t, a, c = tables.median, apply.median, call.median
    assert t is not None and a is not None and c is not None
    parts = [
        f"the call splits into tables {fmt_ms(t)} ms + rotation (apply-only) {fmt_ms(a)} ms "
        f"({fmt_ratio(ratio(apply, copy))} copy) + {fmt_ms(max(c - t - a, 0.0))} ms rest"
    ]
    if a > budget:
        parts.append(
            "the rotation alone is over budget: it needs a single fused pass reading x once and writing the "
            "output once (XLA fusion, torch.compile or a hand-written kernel), the NoPE lanes a plain copy"
        )
    elif t > 0.25 * c:
        parts.append(f"the table build is {100 * t / c:.0f}% of the call: it has to get cheaper")
    else:
        parts.append("per-call overhead and separate passes over x add up: fuse tables and rotation")
    return "; ".join(parts)


def targets(cases: list[CaseResult], device: str) -> list[Target]:
    out: list[Target] = []
    if device == "cpu":
        for layer in LAYERS:
            case = get_case(cases, layer, "prefill", "float32")
            if case is None:
                continue
            for framework, name in (("torch", "ours: torch apply_p_rope"), ("jax", "ours: jax apply_p_rope")):
                r, copy = find(case, name), copy_for(case, framework)
                value = ratio(r, copy)
                where = f"{layer} prefill float32"
                if value is None:
                    out.append(Target(f"{framework} out-of-place ≤ 1.5x copy", where, "not measured", None))
                    continue
                assert r is not None and copy is not None
                gap = ""
                if value > 1.5:
                    budget = 1.5 * copy.median  # type: ignore[operator]
                    gap = f"needs {fmt_ms(budget)} ms (1.5x the {fmt_ms(copy.median)} ms copy); " + decomposition(
                        case, framework, r, budget
                    )
                measured = f"{fmt_ms(r.median)} ms = {fmt_ratio(value)} copy"
                huge = find(case, HUGE_PAGE_COPY) if framework == "torch" else None
                if huge is not None and ratio(r, huge) is not None:
                    measured += f" ({fmt_ratio(ratio(r, huge))} the copy into huge-page memory)"
                out.append(Target(f"{framework} out-of-place ≤ 1.5x copy", where, measured, value <= 1.5, gap))
        case = get_case(cases, "gemma4-global", "prefill", "float32")
        if case is not None:
            r, copy = find(case, "ours: torch apply_p_rope_"), copy_for(case, "torch")
            value = ratio(r, copy)
            if value is None or r is None or copy is None:
                out.append(
                    Target(
                        "torch in-place at p = 0.25 ≤ 0.5x copy", "gemma4-global prefill float32", "not measured", None
                    )
                )
            else:
                gap = ""
                if value > 0.5:
                    budget = 0.5 * copy.median  # type: ignore[operator]
                    tables = find(case, "ours: torch p_rope_tables")
                    split = ""
                    if tables is not None and tables.median is not None and r.median is not None:
                        split = (
                            f"; the call splits into tables {fmt_ms(tables.median)} ms + the in-place rotation "
                            f"{fmt_ms(max(r.median - tables.median, 0.0))} ms: a fused kernel reading and writing "
                            "the rotated lanes once, or a cheaper table build"
                        )
                    gap = (
                        f"needs {fmt_ms(budget)} ms: only the 2R rotated lanes (a quarter of x at p = 0.25) may be "
                        "read and written, in one pass" + split
                    )
                out.append(
                    Target(
                        "torch in-place at p = 0.25 ≤ 0.5x copy",
                        "gemma4-global prefill float32",
                        f"{fmt_ms(r.median)} ms = {fmt_ratio(value)} copy",
                        value <= 0.5,
                        gap,
                    )
                )
        for layer in LAYERS:
            case = get_case(cases, layer, "decode", "float32")
            if case is None:
                continue
            for framework in ("torch", "jax"):
                for ours_name, hf_name, label in (
                    (f"ours: {framework} apply_p_rope", "HF transformers Gemma 4", "end to end"),
                    (
                        f"ours: {framework} apply_p_rope_tables",
                        "HF transformers Gemma 4: apply_rotary_pos_emb",
                        "apply-only",
                    ),
                ):
                    r, hf = find(case, ours_name), find(case, hf_name)
                    value = ratio(r, hf)
                    text = f"{framework} decode latency ≤ HF's ({label})"
                    if value is None or r is None or hf is None:
                        out.append(Target(text, f"{layer} decode float32", "not measured", None))
                        continue
                    gap = "" if value <= 1 else f"{fmt_ms(r.median - hf.median)} ms of per-call overhead to remove"  # type: ignore[operator]
                    out.append(
                        Target(
                            text,
                            f"{layer} decode float32",
                            f"{fmt_ms(r.median)} ms vs HF {fmt_ms(hf.median)} ms = {fmt_ratio(value)}",
                            value <= 1.0,
                            gap,
                        )
                    )
    if device == "cuda":
        for layer in LAYERS:
            for dtype in DTYPES:
                case = get_case(cases, layer, "prefill", dtype)
                if case is None:
                    continue
                for framework in ("torch", "jax"):
                    r, copy = find(case, f"ours: {framework} apply_p_rope"), copy_for(case, framework)
                    value = ratio(copy, r)
                    text = f"{framework} prefill ≥ 80% of copy bandwidth"
                    where = f"{layer} prefill {dtype}"
                    if value is None or r is None or copy is None:
                        out.append(Target(text, where, "not measured", None))
                        continue
                    out.append(
                        Target(
                            text,
                            where,
                            f"{fmt_ms(r.median)} ms vs copy {fmt_ms(copy.median)} ms: "
                            f"{100 * value:.0f}% of the copy's bandwidth",
                            value >= 0.8,
                            "" if value >= 0.8 else decomposition(case, framework, r, copy.median / 0.8),  # type: ignore[operator]
                        )
                    )
        for mode in MODES:
            for dtype in DTYPES:
                case = get_case(cases, "llama", mode, dtype)
                if case is None:
                    continue
                flash = find(case, "flash-attn rotary (cached tables)")
                for ours_name in ("ours: torch apply_p_rope_tables", "ours: torch apply_p_rope"):
                    r = find(case, ours_name)
                    value = ratio(r, flash)
                    text = f"not slower than flash-attn's rotary ({ours_name.split(' ', 2)[2]})"
                    where = f"llama {mode} {dtype}"
                    if value is None or r is None or flash is None:
                        out.append(Target(text, where, "not measured (flash-attn or ours missing)", None))
                        continue
                    out.append(
                        Target(
                            text,
                            where,
                            f"{fmt_ms(r.median)} ms vs {fmt_ms(flash.median)} ms = {fmt_ratio(value)}",
                            value <= 1.0,
                        )
                    )
    # issue 6 section 3: the exact tables cost at most 10% over the float32-angle approach, end to end, prefill
    for layer in LAYERS:
        for dtype in ("float32",) if device == "cpu" else DTYPES:
            case = get_case(cases, layer, "prefill", dtype)
            if case is None:
                continue
            for framework, rivals in (
                ("torch", ["HF transformers Gemma 4", "rotate_half, torch eager", "rotate_half, torch.compile"]),
                ("jax", ["paper / Gemma JAX apply_rope, jax.jit"]),
            ):
                r = find(case, f"ours: {framework} apply_p_rope")
                found = [b for b in (find(case, name) for name in rivals) if b is not None]
                text = f"{framework} end to end ≤ 1.10x the fastest float32-angle baseline"
                where = f"{layer} prefill {dtype}"
                if r is None or not found:
                    out.append(Target(text, where, "not measured", None))
                    continue
                best = min(found, key=lambda b: b.median)  # type: ignore[arg-type,return-value]
                value = ratio(r, best)
                assert value is not None
                out.append(
                    Target(
                        text,
                        where,
                        f"{fmt_ms(r.median)} ms vs {best.name} {fmt_ms(best.median)} ms = {fmt_ratio(value)}",
                        value <= 1.10,
                        "" if value <= 1.10 else decomposition(case, framework, r, 1.10 * best.median),  # type: ignore[operator]
                    )
                )
    return out


def render_section(section: dict[str, Any]) -> list[str]:
    cases = [CaseResult(**{**c, "results": [Result(**r) for r in c["results"]]}) for c in section["cases"]]
    device = section["device"]
    lines = [f"## Device: {section['machine']['device']}", ""]
    lines += [
        f"Measured {section['date']} with `{section['command']}` in {section['elapsed_s']:.0f} s, "
        f"{section['reps']} samples per implementation.",
        "",
    ]
    lines += ["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in section["machine"].items()]
    lines += ["", f"HF baseline: {section.get('hf_source', 'not run')}.", ""]
    lines += ["### Targets", ""]
    if device == "cpu":
        lines += ["Issue 5 §2 (on this CPU, float32 prefill, end to end; decode latency) and issue 6 §3.", ""]
    else:
        lines += ["Issue 5 §2 on a GPU (prefill bandwidth, flash-attn) and issue 6 §3.", ""]
    lines += ["| target | case | measured | verdict | what would close the gap |", "|---|---|---|---|---|"]
    for t in targets(cases, device):
        verdict = "not measured" if t.met is None else ("**met**" if t.met else "**not met**")
        lines.append(f"| {t.text} | {t.case} | {t.measured} | {verdict} | {t.gap} |")
    lines += ["", "### Results", ""]
    for case in cases:
        lines += case_tables(case)
    return lines


HEADER = """# Benchmarks

Generated by `nox -s bench` (`python bench/run.py`); do not edit by hand. Every figure in one
device section comes from one run of the harness, all implementations side by side on the same
inputs. p-RoPE is memory-bound: a plain copy of the input is the floor, so each row is also shown
as a multiple of the copy in the same framework (NumPy, torch and JAX allocate their outputs
differently; all three copies are listed).

Method: each call synchronized (`jax.block_until_ready`; `torch.cuda.synchronize` on a GPU);
3 warm-up calls (the first, compilation included, is the "first call" column); then rounds in
which every implementation of the case takes one sample in turn (so a disturbance of the machine
falls on all alike), a sample being the mean of a batch of calls lasting at least 50 ms (decode
latencies are averaged over hundreds of calls); median, interquartile range and min-max over the
samples (their count is in each device section); the garbage collector off while timing. Threads
are fixed before the frameworks load (machine table).
"Accuracy" grades each output against the NumPy reference on a subsample of tokens with SPEC.md's
levels: "strict" (a few float32 ulps of each pair's norm at any position up to 2**24),
"conformant only" (the float32-angle error allowed at training positions), or "fails".
Kinds: "end to end" builds the tables from positions and rotates; "apply-only" rotates with
tables built beforehand (reusable across q, k and layers); "q and k" rotates both with one
table build. Ours: `p_rope.backends.torch`, `p_rope.backends.jax` and `p_rope.backends.array_api`
called with their default arguments (no flag needed for the fast path).
Allocation: on a CPU, much of a large copy's time is the kernel mapping fresh output memory, one
page fault per 4 KiB page. The torch backend asks for huge pages on outputs of 4 MiB and more and
maps them in one call (as NumPy advises huge pages for its arrays); torch's `clone` does not. The
row "copy: torch clone into huge-page memory" is the same copy into memory allocated as ours: the
floor for our allocation, and the torch out-of-place target row gives our ratio to it as well.
"""


def render(sections: list[dict[str, Any]]) -> str:
    lines = [*HEADER.splitlines(), ""]
    for section in sections:
        lines += render_section(section)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small shapes, float32 only, 3 repetitions")
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default="cpu", help="auto: cuda when torch sees one, else cpu"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="the Markdown report (default BENCHMARKS.md; with --quick a temp file)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="raw results (default reports/bench/<device>.json; --quick: temp)"
    )
    parser.add_argument(
        "--include", type=Path, action="append", default=[], help="a --json file of another run to add as a section"
    )
    parser.add_argument("--reps", type=int, default=None, help="samples per entry (default 21; 3 with --quick)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads")
    parser.add_argument("--only", default="", help="run only the cases whose 'layer mode dtype' contains this")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fix_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/baselines.py
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    for included in args.include:
        if not included.is_file():
            print(f"--include {included}: no such file", file=sys.stderr)
            return 2
    reps = args.reps or (3 if args.quick else 21)
    modes = QUICK_MODES if args.quick else MODES
    dtypes = ("float32",) if args.quick else DTYPES
    log = lambda message: print(message, file=sys.stderr, flush=True)
    started, load_start = time.perf_counter(), os.getloadavg()
    cases: list[CaseResult] = []
    hf_source = ""
    for layer in LAYERS:
        for mode in modes:
            for dtype in dtypes:
                if args.only and args.only not in f"{layer} {mode} {dtype}":
                    continue
                case = Case(layer, mode, dtype, args.device, modes, seed=len(cases))
                log(f"{layer} {mode} {dtype} {case.shape}")
                cases.append(run_case(case, reps, 0.05, 3, log))
                hf_source = getattr(case, "hf_source", hf_source)
                del case
                gc.collect()
    elapsed = time.perf_counter() - started
    section = {
        "device": args.device,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "elapsed_s": elapsed,
        "machine": machine_info(args.device, args.threads, load_start),
        "hf_source": hf_source,
        "quick": args.quick,
        "reps": reps,
        "cases": [dataclasses.asdict(c) for c in cases],
    }
    scratch = Path(tempfile.gettempdir())
    json_path = args.json or (scratch if args.quick else ROOT / "reports" / "bench") / f"{args.device}.json"
    out_path = args.out or (scratch / "BENCHMARKS-quick.md" if args.quick else ROOT / "BENCHMARKS.md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(section, indent=1) + "\n")
    sections = [section] + [json.loads(path.read_text()) for path in args.include]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render(sections))
    log(f"wrote {out_path} and {json_path} in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
