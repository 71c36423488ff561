"""The targets of the benchmark: one table of rows, judged by one loop (``evaluate``).

A row names what is promised (``text``), the device, the cases it holds on (``cases``: a pattern over
"layer mode dtype", e.g. "gemma4-global prefill float32" or "* * *"), the entries of ours it judges,
what they are compared with (``against``: COPY, the copy of the entry's own framework; INPUT, the
input's size; or baselines, the fastest of those present), the bound and how the ratio is formed
(``measure``):

- "time": ours' median time / the reference's, at most ``bound``;
- "bandwidth": the reference's time / ours (the fraction of a copy's bandwidth), at least ``bound``;
- "memory": ours' peak memory of one call / the input's size, at most ``bound``.

Where a row matches several cases or entries, the worst of them is judged. ``strict``: every
judged output must also grade "strict" (SPEC.md's accuracy levels).
"""

from __future__ import annotations

import dataclasses
import fnmatch

from bench.results import (
    COMPUTED,
    DTYPES,
    FLASH_ATTN,
    LAYERS,
    MODES,
    NUMPY_MEMORY_COPY,
    SHORT,
    CaseResult,
    Result,
    fmt_bytes,
    fmt_ms,
    fmt_ratio,
    ratio,
)

COPY = "copy"  # against: the copy in the framework of the entry judged
INPUT = "input"  # against: the size of the input (memory rows)

ISSUE5, ISSUE6, ISSUE11, ISSUE15 = "issue 5 §2", "issue 6 §3", "issue 11 §3", "issue 15 §3"
IN_PLACE_HINT = "only the 2R rotated lanes (a quarter of x at p = 0.25) may be read and written, in one pass"
MEMORY_HINT = "no temporary larger than a block of x besides the output: work in blocks"


@dataclasses.dataclass(frozen=True)
class Target:
    text: str
    device: str
    cases: str
    entries: tuple[str, ...]
    against: tuple[str, ...]
    bound: float
    measure: str = "time"  # time | bandwidth | memory
    strict: bool = False
    source: str = ""
    also: str = ""  # another reference whose ratio the measured text shows beside
    hint: str = ""  # what would close the gap, shown when the row is not met


@dataclasses.dataclass
class Verdict:
    text: str
    case: str
    measured: str
    met: bool | None  # None: not measured (``why``)
    gap: str = ""
    why: str = ""
    source: str = ""


FRAMEWORKS = ("torch", "jax")
FLOAT32_ANGLE = {  # the float32-angle baselines each framework's users pick instead
    "torch": ("HF transformers Gemma 4", "rotate_half, torch eager", "rotate_half, torch.compile"),
    "jax": ("paper / Gemma JAX apply_rope, jax.jit",),
}
HF_DECODE = (
    ("end to end", "apply_p_rope", "HF transformers Gemma 4"),
    ("apply-only", "apply_p_rope_tables", "HF transformers Gemma 4: apply_rotary_pos_emb"),
)
FLASH_DECODE = (("end to end", "apply_p_rope"), ("apply-only", "apply_p_rope_tables"))
OUT_OF_PLACE = {  # every out-of-place entry of each backend
    "NumPy reference": ("ours: NumPy reference (p_rope.reference)",),
    "array_api on NumPy": ("ours: array_api on NumPy",),
    "array_api on torch": ("ours: array_api on torch",),
    "torch": ("ours: torch apply_p_rope", "ours: torch apply_p_rope_tables", "ours: torch apply_p_rope_qk"),
    "jax": (
        "ours: jax apply_p_rope",
        "ours: jax apply_p_rope inside a user's jax.jit",
        "ours: jax apply_p_rope_tables",
        "ours: jax apply_p_rope_qk",
    ),
}
MEMORY_BACKENDS = {
    "cpu": ("NumPy reference", "array_api on NumPy", "torch", "jax"),
    "cuda": ("torch", "array_api on torch", "jax"),
}

TARGETS: tuple[Target, ...] = (
    # on this CPU, float32 prefill, end to end; decode latency
    *(
        Target(
            f"{fw} out-of-place ≤ 1.5x copy",
            "cpu",
            f"{layer} prefill float32",
            (f"ours: {fw} apply_p_rope",),
            (COPY,),
            1.5,
            source=ISSUE5,
            also=NUMPY_MEMORY_COPY if fw == "torch" else "",
        )
        for layer in LAYERS
        for fw in FRAMEWORKS
    ),
    Target(
        "torch in-place at p = 0.25 ≤ 0.5x copy",
        "cpu",
        "gemma4-global prefill float32",
        ("ours: torch apply_p_rope_",),
        (COPY,),
        0.5,
        source=ISSUE5,
        hint=IN_PLACE_HINT,
    ),
    *(
        Target(
            f"{fw} decode latency ≤ HF's ({label})",
            "cpu",
            f"{layer} decode float32",
            (f"ours: {fw} {call}",),
            (hf,),
            1.0,
            source=ISSUE5,
        )
        for layer in LAYERS
        for fw in FRAMEWORKS
        for label, call, hf in HF_DECODE
    ),
    # on a GPU: the fused path near a device-to-device copy, flash-attn's latency
    *(
        Target(
            "torch out of place ≥ 85% of copy bandwidth",
            "cuda",
            f"gemma4-global prefill {dtype}",
            ("ours: torch apply_p_rope",),
            (COPY,),
            0.85,
            "bandwidth",
            strict=True,
            source=ISSUE15,
        )
        for dtype in DTYPES
    ),
    *(
        Target(
            f"{fw} out of place ≥ 80% of copy bandwidth",
            "cuda",
            f"{layer} prefill {dtype}",
            (f"ours: {fw} apply_p_rope",),
            (COPY,),
            0.80,
            "bandwidth",
            source=ISSUE5,
        )
        for fw, layer in (("torch", "llama"), ("jax", "gemma4-global"), ("jax", "llama"))
        for dtype in DTYPES
    ),
    *(
        Target(
            "torch in place at p = 0.25 ≤ 0.3x copy",
            "cuda",
            f"gemma4-global prefill {dtype}",
            ("ours: torch apply_p_rope_",),
            (COPY,),
            0.3,
            strict=True,
            source=ISSUE15,
            hint=IN_PLACE_HINT,
        )
        for dtype in DTYPES
    ),
    *(
        Target(
            f"torch decode latency ≤ flash-attn's ({label})",
            "cuda",
            f"gemma4-global decode {dtype}",
            (f"ours: torch {call}",),
            (FLASH_ATTN,),
            1.0,
            strict=True,
            source=ISSUE15,
        )
        for dtype in DTYPES
        for label, call in FLASH_DECODE
    ),
    *(
        Target(
            f"torch not slower than flash-attn's rotary ({label})",
            "cuda",
            f"llama {mode} {dtype}",
            (f"ours: torch {call}",),
            (FLASH_ATTN,),
            1.0,
            source=ISSUE5,
        )
        for mode in MODES
        for dtype in DTYPES
        for label, call in FLASH_DECODE
    ),
    # exact tables at most 10% over the float32-angle approach, end to end, prefill
    *(
        Target(
            f"{fw} end to end ≤ 1.10x the fastest float32-angle baseline",
            device,
            f"{layer} prefill {dtype}",
            (f"ours: {fw} apply_p_rope",),
            FLOAT32_ANGLE[fw],
            1.10,
            source=ISSUE6,
        )
        for device, dtypes in (("cpu", ("float32",)), ("cuda", DTYPES))
        for layer in LAYERS
        for dtype in dtypes
        for fw in FRAMEWORKS
    ),
    # peak memory of every out-of-place call, every case
    *(
        Target(
            f"{backend}: out of place, peak ≤ 2x the input",
            device,
            "* * *",
            OUT_OF_PLACE[backend],
            (INPUT,),
            2.0,
            "memory",
            source=ISSUE11,
            hint=MEMORY_HINT,
        )
        for device, backends in MEMORY_BACKENDS.items()
        for backend in backends
    ),
)


@dataclasses.dataclass
class Measurement:
    case: CaseResult
    result: Result
    against: Result | None  # None for memory rows
    value: float


def evaluate(cases: list[CaseResult], device: str, table: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    """Every row of ``table`` for ``device`` judged on ``cases``."""
    return [judge(target, cases) for target in table if target.device == device]


def not_run(device: str, why: str, table: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    """The rows of ``device``, unjudged, with the reason."""
    return [
        Verdict(t.text, shown_cases(t.cases), "—", None, why=why, source=t.source) for t in table if t.device == device
    ]


def judge(target: Target, cases: list[CaseResult]) -> Verdict:
    matching = [case for case in cases if fnmatch.fnmatchcase(case.label, target.cases)]
    found = [m for case in matching for name in target.entries if (m := measure(target, case, name)) is not None]
    if not found:
        return Verdict(target.text, shown_cases(target.cases), "—", None, why="not measured", source=target.source)
    worst = min(found, key=lambda m: m.value) if target.measure == "bandwidth" else max(found, key=lambda m: m.value)
    within = worst.value >= target.bound if target.measure == "bandwidth" else worst.value <= target.bound
    loose = [m for m in found if target.strict and not m.result.accuracy.startswith("strict")]
    measured = describe(target, worst)
    if loose:
        measured += f"; output of {loose[0].result.name} on {loose[0].case.label}: {loose[0].result.accuracy}"
    where = shown_cases(target.cases)
    if "*" in target.cases:
        where += f" ({len(matching)}; worst: {worst.case.label})"
    met = within and not loose
    gap = "" if met else close_the_gap(target, worst, within)
    return Verdict(target.text, where, measured, met, gap, source=target.source)


def shown_cases(pattern: str) -> str:
    return "every case" if pattern == "* * *" else pattern


def measure(target: Target, case: CaseResult, name: str) -> Measurement | None:
    """The row's ratio for one entry in one case, None where either side was not measured."""
    result = case.find(name)
    if result is None:
        return None
    if target.measure == "memory":
        value = result.peak_ratio
        return None if value is None else Measurement(case, result, None, value)
    reference = reference_for(target, case, result)
    value = ratio(reference, result) if target.measure == "bandwidth" else ratio(result, reference)
    return None if value is None or reference is None else Measurement(case, result, reference, value)


def reference_for(target: Target, case: CaseResult, result: Result) -> Result | None:
    if target.against == (COPY,):
        return case.copy_for(result.framework)
    found = [r for r in (case.find(name) for name in target.against) if r is not None and r.median is not None]
    return min(found, key=lambda r: r.median or 0.0) if found else None


def describe(target: Target, m: Measurement) -> str:
    r, ref = m.result, m.against
    several = f" ({r.name})" if len(target.entries) > 1 else ""
    if target.measure == "memory":
        assert r.peak_bytes is not None
        return f"{m.value:.2f}x the input{several}: {fmt_bytes(r.peak_bytes)} for {fmt_bytes(r.input_bytes)}"
    assert ref is not None
    if target.measure == "bandwidth":
        return f"{fmt_ms(r.median)} ms vs copy {fmt_ms(ref.median)} ms: {100 * m.value:.0f}% of the copy's bandwidth"
    if target.against == (COPY,):
        text = f"{fmt_ms(r.median)} ms = {fmt_ratio(m.value)} copy"
        other = m.case.find(target.also) if target.also else None
        if other is not None:
            text += f" ({fmt_ratio(ratio(r, other))} {SHORT.get(other.name, other.name)})"
        return text
    return f"{fmt_ms(r.median)} ms vs {SHORT.get(ref.name, ref.name)} {fmt_ms(ref.median)} ms = {fmt_ratio(m.value)}"


def close_the_gap(target: Target, m: Measurement, within: bool) -> str:
    """What the worst measurement needs: the budget, the row's hint, where the time goes."""
    r, ref = m.result, m.against
    if not within and target.measure == "memory":
        assert r.peak_bytes is not None
        parts = [
            f"peak {fmt_bytes(r.peak_bytes)} where {target.bound:g}x the input is "
            f"{fmt_bytes(target.bound * r.input_bytes)}"
        ]
    elif not within:
        assert ref is not None and ref.median is not None
        budget = ref.median / target.bound if target.measure == "bandwidth" else ref.median * target.bound
        parts = [f"needs {fmt_ms(budget)} ms"]
        split = decomposition(m.case, r, budget)
        parts += [split] if split else [f"{fmt_ms((r.median or 0.0) - budget)} ms over it"]
    else:
        return "the output must grade strict"
    floor = m.case.find(COMPUTED.get(r.framework, ""))
    if floor is not None and floor.median is not None and r.median is not None and r.role == "ours":
        times = fmt_ratio(r.median / floor.median)
        parts.append(f"{SHORT[floor.name]} alone takes {fmt_ms(floor.median)} ms here (ours: {times} it)")
    return "; ".join([*parts, target.hint] if target.hint else parts)


def decomposition(case: CaseResult, call: Result, budget: float) -> str:
    """Where the time of ``call`` goes (tables, rotation, the rest) and which part has to shrink to fit."""
    if call.kind not in ("e2e", "inplace"):
        return ""
    framework = call.framework
    tables = case.find(f"ours: {framework} p_rope_tables")
    apply = case.find(f"ours: {framework} apply_p_rope_tables")
    copy = case.copy_for(framework)
    if tables is None or apply is None or copy is None or tables.median is None or apply.median is None:
        return ""
    if call.median is None:
        return ""
    t, a, c = tables.median, apply.median, call.median
    if call.kind == "inplace":
        return (
            f"the call splits into tables {fmt_ms(t)} ms + the in-place rotation {fmt_ms(max(c - t, 0.0))} ms: "
            "a fused kernel reading and writing the rotated lanes once, or a cheaper table build"
        )
    parts = [
        f"the call splits into tables {fmt_ms(t)} ms + rotation (apply-only) {fmt_ms(a)} ms "
        f"({fmt_ratio(ratio(apply, copy))} copy) + {fmt_ms(max(c - t - a, 0.0))} ms rest"
    ]
    if a > budget:
        parts.append(
            "the rotation alone is over budget: it needs a single fused pass reading x once and writing the "
            "output once, the NoPE lanes a plain copy"
        )
    elif t > 0.25 * c:
        parts.append(f"the table build is {100 * t / c:.0f}% of the call: it has to get cheaper")
    else:
        parts.append("per-call overhead and separate passes over x add up: fuse tables and rotation")
    return "; ".join(parts)
