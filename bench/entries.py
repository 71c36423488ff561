"""What one case measures: ours per backend and kind, the baselines, and a copy of the input in each
framework, all on the same inputs; and the accuracy of each output against the NumPy reference.

A case is one layer (results.LAYERS), mode and dtype on one device. Each builder below returns the
entries of one framework (or of the GPU-only baselines) and names in ``skips`` what cannot run, with
the reason; ``run_case`` measures them together (bench.harness) and grades the outputs.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from bench import harness
from bench.harness import Entry
from bench.results import COMPUTED, COPY, FLASH_ATTN, LAYERS, LIGER, NUMPY_MEMORY_COPY, CaseResult, Result, fmt_ms

DECODE_MAX_POSITION = 32_768  # decode tokens sit at random positions below this
GRADE_TOKENS = 256  # tokens graded per output (a subsample of prefill)
NEEDS_CUDA = "not run: needs CUDA"
COMPUTED_NOTES = {
    "cpu": (
        "the least work that writes an output of x's size; XLA:CPU hands it to its worker thread (it runs inline "
        "only what it estimates under 1000 flops, such as the copy): this, not the copy, is the floor of a computed "
        "JAX output here"
    ),
    "cuda": "the least work that writes an output of x's size",
}

Skips = dict[str, str]


class Case:
    """Inputs of one (layer, mode, dtype) case, made once in NumPy and handed to every framework."""

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
        self.nbytes = int(self.x_np.nbytes)
        step = max(1, self.L // GRADE_TOKENS)
        self.grade_index = (slice(None), slice(None, None, step))
        self.hf_source = ""  # what the HF baseline ran, once the torch entries are built

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

        def put(a: Any) -> Any:
            return jax.device_put(a, jax_device)

        return put(self.x_np), put(self.k_np), put(self.positions_np.astype(np.int32))

    def grade(self, output: Any, framework: str) -> str:
        """SPEC.md's accuracy level of an output of x on the subsample of tokens."""
        from p_rope.tolerance import grade

        got = to_numpy(output, framework)[self.grade_index]
        inputs = self.x_np[self.grade_index]
        if got.dtype != inputs.dtype or got.shape != inputs.shape:
            return f"fails (dtype {got.dtype}, shape {got.shape})"
        g = grade(got, inputs, self.positions_np[self.grade_index], self.H, self.w, self.p)
        if not g.nope_identical:
            return "fails (NoPE lanes changed)"
        if g.ratio["strict"] <= 1.0:
            return f"strict ({g.ratio['strict']:.2g} of bound)"
        if g.ratio["conformant"] <= 1.0:
            return f"conformant only ({g.ratio['strict']:.2g}x strict bound)"
        return f"fails ({g.ratio['conformant']:.2g}x conformant bound)"


def import_backend(name: str) -> tuple[Any, str]:
    """p_rope.backends.<name>, or None and why it does not import."""
    try:
        return importlib.import_module(f"p_rope.backends.{name}"), ""
    except Exception as error:
        return None, f"skipped: {type(error).__name__}: {error}"


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


class Maker:
    """Builds the entries of one framework in one case: the synchronization, the peak meter and the
    input size of each entry follow from the framework, the device and the kind."""

    def __init__(self, case: Case, framework: str, sync: Callable[[Any], None]):
        self.case, self.framework, self.sync = case, framework, sync

    def floor(self, name: str, run: Callable[[], Any], note: str = "", kind: str = "copy") -> Entry:
        return Entry(name, self.framework, "floor", kind, run, self.sync, note=note)

    def __call__(
        self,
        name: str,
        role: str,
        kind: str,
        run: Callable[[], Any],
        output: Callable[[], Any] | None = None,
        *,
        note: str = "",
        peak: Callable[[], int | None] | None = None,
        in_place: bool = False,
        accuracy: str | None = None,
    ) -> Entry:
        """An entry of ours or a baseline; its peak meter is the framework's own unless ``peak`` is given
        (tables-only calls are not metered: their size is not a multiple of the input's)."""
        if kind == "tables":
            peak = None
        elif peak is None:
            peak = harness.call_meter(self.framework, self.case.device, run)
        input_bytes = (2 if kind == "qk" else 1) * self.case.nbytes
        return Entry(
            name, self.framework, role, kind, run, self.sync, output,
            note=note, peak=peak, input_bytes=input_bytes, in_place=in_place, accuracy=accuracy,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the builders


def numpy_entries(case: Case, skips: Skips) -> list[Entry]:
    """NumPy (CPU only): its copy, the reference, the array API backend on NumPy (float32)."""
    import numpy as np

    if case.device != "cpu":
        return []
    from p_rope import reference as R

    make = Maker(case, "numpy", harness.no_sync)
    x, pos, H, w, p = case.x_np, case.positions_np, case.H, case.w, case.p
    out = [
        make.floor(COPY["numpy"], lambda: np.copy(x)),
        make("ours: NumPy reference (p_rope.reference)", "ours", "e2e", lambda: R.apply_p_rope(x, pos, H, w, p)),
    ]
    name = "ours: array_api on NumPy"
    if case.dtype != "float32":
        skips[name] = "skipped: NumPy has no native bfloat16 arithmetic (ml_dtypes emulates it)"
        return out
    A, why = import_backend("array_api")
    if A is None:
        skips[name] = why
        return out
    buffer = x.copy()
    out += [
        make(name, "ours", "e2e", lambda: A.apply_p_rope(x, pos, H, w, p)),
        make(
            f"{name}, apply_p_rope_",
            "ours",
            "inplace",
            lambda: A.apply_p_rope_(buffer, pos, H, w, p),
            lambda: A.apply_p_rope_(x.copy(), pos, H, w, p),
            in_place=True,
        ),
    ]
    return out


def numpy_memory_copy(x: Any) -> Any:
    """x copied into a buffer NumPy allocates (which it advises as huge pages from 4 MiB on Linux)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.empty(x.nbytes, dtype=np.uint8)).view(x.dtype).view(x.shape).copy_(x)


def torch_entries(case: Case, skips: Skips) -> list[Entry]:
    """torch: its copy, our torch backend (and the array API backend on a GPU), HF's Gemma 4 path and
    a plain rotate_half in eager mode and under torch.compile."""
    import torch

    from bench import baselines

    x, k, pos = case.torch_arrays()
    H, w, p = case.H, case.w, case.p
    make = Maker(case, "torch", harness.cuda_sync if case.device == "cuda" else harness.no_sync)
    if case.device == "cuda":
        out = [make.floor(COPY["torch"], lambda: x.clone(), note="a device-to-device copy of x")]
    else:
        out = [
            make.floor(COPY["torch"], lambda: x.clone()),
            make.floor(NUMPY_MEMORY_COPY, lambda: numpy_memory_copy(x)),
        ]
    T, why = import_backend("torch")
    if T is None:
        skips["ours: torch"] = why
    else:
        buffer = x.clone()
        tables = T.p_rope_tables(pos, H, w, p)
        out += [
            make("ours: torch apply_p_rope", "ours", "e2e", lambda: T.apply_p_rope(x, pos, H, w, p)),
            make(
                "ours: torch apply_p_rope_",
                "ours",
                "inplace",
                lambda: T.apply_p_rope_(buffer, pos, H, w, p),
                lambda: T.apply_p_rope_(x.clone(), pos, H, w, p),
                in_place=True,
            ),
            make("ours: torch p_rope_tables", "ours", "tables", lambda: T.p_rope_tables(pos, H, w, p)),
            make("ours: torch apply_p_rope_tables", "ours", "apply", lambda: T.apply_p_rope_tables(x, tables)),
            make(
                "ours: torch apply_p_rope_qk",
                "ours",
                "qk",
                lambda: T.apply_p_rope_qk(x, k, pos, H, w, p),
                lambda: T.apply_p_rope_qk(x, k, pos, H, w, p)[0],
            ),
        ]
    if case.device == "cuda":
        A, why = import_backend("array_api")
        if A is None:
            skips["ours: array_api on torch"] = why
        else:
            out.append(make("ours: array_api on torch", "ours", "e2e", lambda: A.apply_p_rope(x, pos, H, w, p)))

    hf = baselines.HFRope(H, w, p, device=case.device)
    cos, sin = hf.tables(x, pos)
    case.hf_source = hf.source
    inv = baselines.inv_freq_torch(H, w, p, device=case.device)
    compiled = torch.compile(baselines.rotate_half_torch)
    out += [
        make("HF transformers Gemma 4", "baseline", "e2e", lambda: hf(x, pos)),
        make("HF transformers Gemma 4: rotary embedding", "baseline", "tables", lambda: hf.tables(x, pos)),
        make("HF transformers Gemma 4: apply_rotary_pos_emb", "baseline", "apply", lambda: hf.apply(x, cos, sin)),
        make(
            "HF transformers Gemma 4: q and k", "baseline", "qk", lambda: hf.qk(x, k, pos), lambda: hf.qk(x, k, pos)[0]
        ),
        make("rotate_half, torch eager", "baseline", "e2e", lambda: baselines.rotate_half_torch(x, pos, inv)),
        make(
            "rotate_half, torch eager: q and k",
            "baseline",
            "qk",
            lambda: baselines.rotate_half_torch_qk(x, k, pos, inv),
            lambda: baselines.rotate_half_torch_qk(x, k, pos, inv)[0],
        ),
        make("rotate_half, torch.compile", "baseline", "e2e", lambda: compiled(x, pos, inv)),
    ]
    return out


def gpu_entries(case: Case, skips: Skips) -> list[Entry]:
    """The GPU kernels users pick: flash-attn's rotary and Liger's rope, where they import."""
    if case.device != "cuda":
        skips[FLASH_ATTN] = skips[LIGER] = NEEDS_CUDA
        return []
    x, k, pos = case.torch_arrays()
    make = Maker(case, "torch", harness.cuda_sync)
    return flash_attn_entries(case, make, x, skips) + liger_entries(case, make, x, k, pos, skips)


def flash_attn_entries(case: Case, make: Maker, x: Any, skips: Skips) -> list[Entry]:
    import torch

    from bench import baselines

    try:
        apply, source = baselines.flash_attn_rotary()
        pieces, rotary_dim, exact = baselines.flash_attn_layout(case.H, case.p)
    except (ImportError, ValueError) as error:
        skips[FLASH_ATTN] = f"skipped: {type(error).__name__}: {error}"
        return []
    cos, sin = baselines.flash_attn_tables(
        int(case.positions_np.max()) + case.L, rotary_dim, case.H, case.w, x.dtype, case.device
    )
    offsets: Any = 0
    if case.mode != "prefill":
        offsets = torch.from_numpy(case.positions_np[:, 0].astype("int32")).to(case.device)
    view = x.view(case.B, case.L, case.N * pieces, case.H // pieces)

    def run() -> Any:
        return apply(view, cos, sin, interleaved=False, seqlen_offsets=offsets).view(x.shape)

    note = f"{source}; tables cached up to the largest position, as flash-attn's RotaryEmbedding keeps them"
    accuracy = None
    if not exact:
        note += (
            f"; x viewed as {pieces} heads of {case.H // pieces} lanes per head with rotary_dim {rotary_dim}: "
            "the same bytes and rotated-lane count, another rotation"
        )
        accuracy = "not graded (not p-RoPE: a latency reference)"
    return [make(FLASH_ATTN, "baseline", "apply", run, note=note, accuracy=accuracy)]


def liger_entries(case: Case, make: Maker, x: Any, k: Any, pos: Any, skips: Skips) -> list[Entry]:
    from bench import baselines

    try:
        rope, source = baselines.liger_rope()
    except ImportError as error:
        skips[LIGER] = f"skipped: {type(error).__name__}: {error}"
        return []
    hf = baselines.HFRope(case.H, case.w, case.p, device=case.device)
    q_buffer, k_buffer = x.clone(), k.clone()

    def run() -> Any:
        return rope(q_buffer.transpose(1, 2), k_buffer.transpose(1, 2), *hf.tables(x, pos))

    def output() -> Any:
        q, k_ = x.clone(), k.clone()
        rope(q.transpose(1, 2), k_.transpose(1, 2), *hf.tables(x, pos))
        return q

    note = f"{source} on HF's tables ({hf.source}); q and k rotated in place"
    return [make(LIGER, "baseline", "qk", run, output, note=note, in_place=True)]


def jax_entries(case: Case, skips: Skips) -> list[Entry]:
    """JAX: its jitted copy, our JAX backend (also inside a user's jax.jit), the paper's function under jit."""
    import jax
    import jax.numpy as jnp

    from bench import baselines

    try:
        jax_device = jax.devices("cpu" if case.device == "cpu" else "gpu")[0]
    except RuntimeError as error:
        skips["jax (all entries)"] = f"skipped: jax has no {case.device} device here ({error})"
        return []
    x, k, pos = case.jax_arrays(jax_device)
    H, w, p = case.H, case.w, case.p
    make = Maker(case, "jax", harness.jax_sync)

    def meter(function: Callable[..., Any], *args: Any) -> Callable[[], int | None]:
        return lambda: harness.xla_peak(function, *args)

    copy = jax.jit(jnp.copy)
    doubled = jax.jit(lambda a: a * 2)
    out = [
        make.floor(COPY["jax"], lambda: copy(x)),
        make.floor(COMPUTED["jax"], lambda: doubled(x), note=COMPUTED_NOTES[case.device], kind="computed"),
    ]
    J, why = import_backend("jax")
    if J is None:
        skips["ours: jax"] = why
    else:
        tables = J.p_rope_tables(pos, H, w, p)

        def one(x_: Any, pos_: Any) -> Any:
            return J.apply_p_rope(x_, pos_, H, w, p)

        def qk(x_: Any, k_: Any, pos_: Any) -> Any:
            return J.apply_p_rope_qk(x_, k_, pos_, H, w, p)

        in_jit = jax.jit(one)
        one_peak = functools.cache(meter(one, x, pos))
        out += [
            make("ours: jax apply_p_rope", "ours", "e2e", lambda: one(x, pos), peak=one_peak),
            make(
                "ours: jax apply_p_rope inside a user's jax.jit",
                "ours",
                "e2e",
                lambda: in_jit(x, pos),
                peak=one_peak,  # the same program: compiled once for both
            ),
            make("ours: jax p_rope_tables", "ours", "tables", lambda: J.p_rope_tables(pos, H, w, p)),
            make(
                "ours: jax apply_p_rope_tables",
                "ours",
                "apply",
                lambda: J.apply_p_rope_tables(x, tables),
                peak=meter(J.apply_p_rope_tables, x, tables),
            ),
            make(
                "ours: jax apply_p_rope_qk",
                "ours",
                "qk",
                lambda: qk(x, k, pos),
                lambda: qk(x, k, pos)[0],
                peak=meter(qk, x, k, pos),
            ),
        ]
    paper, paper_qk = baselines.paper_jax_jit(), baselines.paper_jax_qk_jit()

    def paper_one(x_: Any, pos_: Any) -> Any:
        return baselines.paper_jax(x_, pos_, w, p, 1.0)

    def paper_both(x_: Any, k_: Any, pos_: Any) -> Any:
        return (baselines.paper_jax(x_, pos_, w, p, 1.0), baselines.paper_jax(k_, pos_, w, p, 1.0))

    out += [
        make(
            "paper / Gemma JAX apply_rope, jax.jit",
            "baseline",
            "e2e",
            lambda: paper(x, pos, w, p, 1.0),
            peak=meter(paper_one, x, pos),
        ),
        make(
            "paper / Gemma JAX apply_rope, jax.jit: q and k",
            "baseline",
            "qk",
            lambda: paper_qk(x, k, pos, w, p, 1.0),
            lambda: paper_qk(x, k, pos, w, p, 1.0)[0],
            peak=meter(paper_both, x, k, pos),
        ),
    ]
    return out


BUILDERS: tuple[Callable[[Case, Skips], list[Entry]], ...] = (numpy_entries, torch_entries, gpu_entries, jax_entries)


# ---------------------------------------------------------------------------------------------


def run_case(case: Case, reps: int, min_sample_s: float, warmup: int, log: Callable[[str], None]) -> CaseResult:
    """Measure every entry of ``case`` together, grade the outputs; skipped entries keep their reason."""
    skips: Skips = {}
    entries: list[Entry] = []
    for build in BUILDERS:
        try:
            entries += build(case, skips)
        except ImportError as error:  # a framework absent from this environment
            skips[build.__name__] = f"skipped: {type(error).__name__}: {error}"
    results = harness.measure_all(entries, reps, min_sample_s, warmup, every_call=case.device == "cpu")
    for entry, result in zip(entries, results, strict=True):
        if not result.error and entry.role != "floor" and entry.kind != "tables":
            result.accuracy = entry.accuracy or graded(case, entry)
        shown = "failed: " + result.error if result.error else f"{fmt_ms(result.median)} ms  {result.accuracy}"
        if result.peak_ratio is not None:
            shown += f"  peak {result.peak_ratio:.2f}x input"
        log(f"  {entry.name:<50} {shown}")
    for name, why in skips.items():
        results.append(Result(name, "", "skipped", "", "", error=why))
        log(f"  {name:<50} {why}")
    return CaseResult(case.layer, case.mode, case.dtype, case.shape, results)


def graded(case: Case, entry: Entry) -> str:
    try:
        output = (entry.output or entry.run)()
        return case.grade(output, entry.framework)
    except Exception as error:
        return f"not graded ({type(error).__name__}: {error})"
