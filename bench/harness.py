"""How the benchmark measures one call: threads, synchronization, warm-up, round-robin samples,
quartiles, peak memory, and the machine it ran on.

Timing: the first ``warmup`` calls are synchronized one by one (the first, compilation included, is
reported as "first call"); then ``reps`` rounds in which every entry of a case takes one sample in
turn (round-robin, so a disturbance of the machine falls on all alike); a sample is the mean of a
batch of calls lasting at least ``min_sample_s``. On a CPU every call of a batch is synchronized
(``jax.block_until_ready``; NumPy and torch return finished work); on a GPU the calls of a batch are
queued back to back and synchronized once at its end (``torch.cuda.synchronize``,
``jax.block_until_ready``), so a sample is the time per call of a stream of calls: the larger of the
host's launch time and the device's kernel time. Median, quartiles and min/max over the samples;
the garbage collector off while sampling. Threads are fixed (``fix_threads``) before any framework
loads.

Peak memory: the most memory one call allocates at once, its output included (the input and
anything built before the call excluded), measured once after the samples by the framework's own
allocator records: torch on a CPU, ``torch.profiler`` allocation events replayed in time order;
torch on CUDA, ``torch.cuda.max_memory_allocated`` over the call; NumPy, ``tracemalloc`` (NumPy
reports its buffers to it); JAX, XLA's memory analysis of the call compiled under ``jax.jit``
(output plus temporaries as XLA assigns them). Each is deterministic; none sees memory a library
allocates past its framework's allocator.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import time
import traceback
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.results import Result

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Entry:
    """One thing measured: ``run`` is called repeatedly and ``sync`` waits for what it returned;
    ``output`` (on fresh inputs, default ``run``) is graded unless ``accuracy`` is given; ``peak``
    returns the peak bytes of one call (None: no meter)."""

    name: str
    framework: str  # torch | jax | numpy
    role: str  # ours | baseline | floor
    kind: str  # a key of results.KIND_GROUP
    run: Callable[[], Any]
    sync: Callable[[Any], None]
    output: Callable[[], Any] | None = None
    note: str = ""
    peak: Callable[[], int | None] | None = None
    input_bytes: int = 0
    in_place: bool = False
    accuracy: str | None = None


# ---------------------------------------------------------------------------------------------
# threads and synchronization


def fix_threads(threads: int) -> None:
    """Pin the thread counts through the environment; call before any framework loads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # torch.compile's background compile workers would compete with the timed calls
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    # the profiler behind the torch CPU memory meter logs each start and stop otherwise
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    # JAX would otherwise take most of a GPU's memory up front, beside torch's
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def pin_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def no_sync(value: Any) -> None:
    """NumPy and torch on a CPU return finished work."""


def jax_sync(value: Any) -> None:
    import jax

    jax.block_until_ready(value)


def cuda_sync(value: Any) -> None:
    import torch

    torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# timing


def failure(error: Exception) -> str:
    traceback.print_exc()
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def warm_up(entry: Entry, min_sample_s: float, warmup: int, result: Result) -> int:
    """Synchronized warm-up calls (the first timed as "first call"); returns the calls per sample."""
    start = time.perf_counter()
    entry.sync(entry.run())
    result.first = time.perf_counter() - start
    for _ in range(warmup - 1):
        entry.sync(entry.run())
    start = time.perf_counter()
    entry.sync(entry.run())
    one = time.perf_counter() - start
    return max(1, min(100_000, math.ceil(min_sample_s / max(one, 1e-7))))


def sample(entry: Entry, inner: int, every_call: bool) -> float:
    """Mean seconds per call over a batch of ``inner`` calls, each synchronized or the batch at its end."""
    gc.disable()
    try:
        start = time.perf_counter()
        value = None
        for _ in range(inner):
            value = entry.run()
            if every_call:
                entry.sync(value)
        if not every_call:
            entry.sync(value)
        return (time.perf_counter() - start) / inner
    finally:
        gc.enable()


def summarize(result: Result, samples: list[float], inner: int) -> None:
    samples = sorted(samples)
    quartiles = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else [samples[0]] * 3
    result.median, result.q1, result.q3 = statistics.median(samples), quartiles[0], quartiles[2]
    result.low, result.high, result.inner, result.reps = samples[0], samples[-1], inner, len(samples)


def measure_all(entries: list[Entry], reps: int, min_sample_s: float, warmup: int, every_call: bool) -> list[Result]:
    """Warm every entry up, take the samples round-robin, then measure each entry's peak memory."""
    results = [Result(e.name, e.framework, e.role, e.kind, e.note, input_bytes=e.input_bytes) for e in entries]
    inner = [0] * len(entries)
    for i, entry in enumerate(entries):
        try:
            inner[i] = warm_up(entry, min_sample_s, warmup, results[i])
        except Exception as error:  # an entry that fails is reported, the run goes on
            results[i].error = failure(error)
    samples: list[list[float]] = [[] for _ in entries]
    gc.collect()
    for _ in range(reps):
        for i, entry in enumerate(entries):
            if results[i].error:
                continue
            try:
                samples[i].append(sample(entry, inner[i], every_call))
            except Exception as error:
                results[i].error = failure(error)
    for i, entry in enumerate(entries):
        if not results[i].error:
            summarize(results[i], samples[i], inner[i])
            record_peak(entry, results[i])
    return results


# ---------------------------------------------------------------------------------------------
# peak memory


def record_peak(entry: Entry, result: Result) -> None:
    """The entry's peak bytes into ``result``; a meter that fails, or that sees less than the output
    of an out-of-place call (memory allocated past it), leaves None and says so in the note."""
    if entry.peak is None:
        return
    gc.collect()
    try:
        peak = entry.peak()
    except Exception as error:
        result.note = _joined(result.note, f"peak memory not measured ({failure(error)})")
        return
    if peak is not None and not entry.in_place and peak < entry.input_bytes:
        result.note = _joined(
            result.note, f"peak memory not measured: the meter saw {peak} bytes, less than the output"
        )
        return
    result.peak_bytes = peak


def _joined(note: str, addition: str) -> str:
    return f"{note}; {addition}" if note else addition


def torch_cpu_peak(call: Callable[[], Any]) -> int:
    """Peak bytes of one call from the CPU allocator's events (``torch.profiler``): every allocation
    and free, in time order (an operator's own temporaries included, which its net memory hides)."""
    import torch.profiler

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = call()  # held until the profile ends: its memory counts, its release does not
    del out
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, change in events:
        held += change
        peak = max(peak, held)
    return peak


def cuda_peak(call: Callable[[], Any]) -> int:
    """Peak bytes of one call on the current CUDA device (the caching allocator's statistics)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = call()
    torch.cuda.synchronize()
    del out
    return torch.cuda.max_memory_allocated() - before


def numpy_peak(call: Callable[[], Any]) -> int:
    """Peak bytes of one call as ``tracemalloc`` traces them (NumPy's buffers included)."""
    if tracemalloc.is_tracing():
        raise RuntimeError("tracemalloc is already tracing: the NumPy meter needs it to itself")
    tracemalloc.start()
    try:
        out = call()
        peak = tracemalloc.get_traced_memory()[1]
        del out
    finally:
        tracemalloc.stop()
    return peak


def xla_peak(function: Callable[..., Any], *args: Any) -> int | None:
    """Output plus temporary bytes of ``function(*args)`` compiled under ``jax.jit`` (XLA's analysis)."""
    import jax

    stats = jax.jit(function).lower(*args).compile().memory_analysis()
    if stats is None:
        return None
    return int(stats.output_size_in_bytes + stats.temp_size_in_bytes)


CALL_METERS: dict[tuple[str, str], Callable[[Callable[[], Any]], int]] = {
    ("torch", "cpu"): torch_cpu_peak,
    ("torch", "cuda"): cuda_peak,
    ("numpy", "cpu"): numpy_peak,
}


def call_meter(framework: str, device: str, call: Callable[[], Any]) -> Callable[[], int | None] | None:
    """The peak meter of a torch or NumPy call on ``device`` (JAX: ``xla_peak``), None where none fits."""
    meter = CALL_METERS.get((framework, device))
    return None if meter is None else lambda: meter(call)


# ---------------------------------------------------------------------------------------------
# the machine


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


LIBRARIES = (
    "numpy",
    "jax",
    "jaxlib",
    "torch",
    "triton",
    "transformers",
    "flash-attn",
    "liger-kernel",
    "array-api-compat",
    "ml-dtypes",
)


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
    info["libraries"] = ", ".join(f"{name} {version(name)}" for name in LIBRARIES)
    info["p_rope"] = f"{version('p-rope')} at commit {git_commit()}"
    return info
