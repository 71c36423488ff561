"""``check``: grade any p-RoPE implementation (a NumPy, JAX or PyTorch callable) at SPEC.md's levels.

    p-rope-conformance check --impl mypackage.rope:apply_rope
    p-rope-conformance check --impl path/to/rope.py:apply_rope --framework torch --device cuda

The callable is called with the paper's signature ``f(inputs, positions, head_dim, max_wavelength,
rope_percentage)``, with Gemma's ``f(inputs, positions, *, base_frequency, scale_factor,
rope_proportion)``, or with this project's (the paper's plus keywords ``rotated_pairs``,
``scale_factor``, ``pairing``, ``seq_axis``: those it accepts are tested); cases its signature cannot
express are listed as not tested. The grade, per dtype and overall: strict, conformant, or not
conformant. Each failing case comes with a standalone reproducer script.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import inspect
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from p_rope._params import SPEC_VERSION

from .cases import DTYPES, Case, Positions, check_cases
from .conventions import (
    CONVENTIONS,
    ONNX_PROVIDERS,
    AnglesTarget,
    FlashTarget,
    HfTarget,
    KerasTarget,
    OnnxTarget,
    VllmTarget,
    detect_convention,
    factory_arguments,
    make_target,
    onnx_model,
    spec_frequencies,
)
from .diagnose import _unsupported, cause
from .execute import INVALID_CALLS, CaseResult, execute, finite_json
from .frameworks import Framework, KerasPolicy, framework, uses_keras
from .harness import Watchdog, deadline
from .repro import (
    angles_call,
    angles_rotary_call,
    call_options,
    describe_result,
    flash_call,
    hf_tables,
    keras_layer,
    onnx_call,
    script,
    shrink_candidates,
    shrink_head,
    vllm_call,
)
from .run import LEVEL_ORDER, aggregate
from .targets import OUR_KEYWORDS, SIGNATURES, CallableTarget, ImplementationError, UsageError, load_callable

GRADE_NAMES = {"strict": "STRICT", "conformant": "CONFORMANT", "fail": "NOT CONFORMANT"}


DTYPE_ALIASES = {"f16": "float16", "fp16": "float16", "bf16": "bfloat16", "f32": "float32", "fp32": "float32",
                 "f64": "float64", "fp64": "float64"}  # fmt: skip


def parse_dtypes(text: str) -> tuple[str, ...]:
    """``bf16,f32`` -> ("bfloat16", "float32"); a UsageError for an unknown name."""
    names = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        name = DTYPE_ALIASES.get(item, item)
        if name not in DTYPES:
            raise UsageError(
                f"unknown dtype {item!r} in --dtypes-claimed; known: {', '.join(DTYPES)} (or bf16, f32...)"
            )
        names.append(name)
    return tuple(names)


def _probe_cases() -> list[Case]:
    """One token of one head, in each layout: the smallest call any implementation should accept."""
    one = Positions("values", values=(1,))
    base = dict(name="probe", op="apply", dtype="float32", shape=(1, 1, 1, 4), head_dim=4, positions=one)
    return [
        Case(**base),  # type: ignore[arg-type]
        Case(**base, seq_axis=-2),  # type: ignore[arg-type]
        Case(**base, pairing="interleaved"),  # type: ignore[arg-type]
    ]


def _kind(value: object) -> str | None:
    module = type(value).__module__.split(".")[0]
    if isinstance(value, np.ndarray):
        return "numpy"
    if module in ("jax", "jaxlib"):
        return "jax"
    if module == "torch":
        return "torch"
    return None


def detect_framework(make: Callable[[Framework], CallableTarget], timeout: float | None = None) -> str:
    """The array library the callable works in: call it on a tiny input as NumPy, then PyTorch, then
    JAX arrays, and see what comes back."""
    errors = []
    for name in ("numpy", "torch", "jax"):
        if name != "numpy" and importlib.util.find_spec(name) is None:
            continue
        fw = framework(name)
        target = make(fw)
        case = next((c for c in _probe_cases() if target.supports(c) is None), None)
        if case is None:
            continue
        try:
            with warnings.catch_warnings(), deadline(timeout):
                warnings.simplefilter("ignore")
                call = target.call(case, case.materialize())
        except BaseException as error:  # anything the implementation raises
            errors.append(f"{name}: {type(error).__name__}: {error}")
            continue
        kind = _kind(call.outputs[0].value)
        if kind is not None:
            return kind
        errors.append(f"{name}: returned a {type(call.outputs[0].value).__name__}")
    raise ImplementationError(
        "could not call the implementation with NumPy, PyTorch or JAX arrays: " + " | ".join(errors)
    )


@dataclasses.dataclass
class CheckResult:
    impl: str
    framework: str
    signature: str  # the call convention
    keywords: frozenset[str]
    device: str
    results: list[CaseResult]
    untested: list[tuple[Case, str]]
    seconds: float
    eager_calls: int = 0  # JAX: calls that could not be traced under jit and ran eagerly
    reproducers: dict[str, str] = dataclasses.field(default_factory=dict)  # case id -> script
    repro_notes: dict[str, str] = dataclasses.field(default_factory=dict)  # case id -> what it shows
    claimed: tuple[str, ...] | None = None  # --dtypes-claimed: the dtypes the grade is for
    level: str = "conformant"  # the level the causes and reproducers are about
    causes: dict[str, str] = dataclasses.field(default_factory=dict)  # dtype -> why it fails
    mistakes: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # dtype -> mistakes matched
    case_mistakes: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # case id -> mistakes matched
    errors: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)  # --errors: (what, raised)
    parameters: str = ""  # --config: where the parameters came from
    options: tuple[str, ...] = ()  # --compile, --autocast...

    @property
    def convention(self) -> str:
        return self.signature

    def by_dtype(self) -> dict[str, dict[str, Any]]:
        summary = {}
        for dtype in DTYPES:
            results = [r for r in self.results if r.case.dtype == dtype]
            if not results:
                continue
            raised = _unsupported(results)
            if raised is not None:
                summary[dtype] = {"level": "unsupported", "why": raised, "cases": 0, "special": "-"}
                continue
            special = [r for r in results if r.case.op == "special" and r.not_applicable is None]
            bad = [p for r in special for p in r.problems]
            bad += [
                "a finite output where the exact value is not (or the reverse)"
                for r in special
                if any(v.ratio == float("inf") for v in r.levels.values())
            ]
            summary[dtype] = aggregate(results) | {
                "special": "-" if not special else ("FAIL" if bad else "pass"),
                "special_problems": sorted(set(bad)),
            }
            if dtype in self.causes:
                summary[dtype]["cause"] = self.causes[dtype]
                summary[dtype]["mistakes"] = self.mistakes.get(dtype, [])
        return summary

    def graded_dtypes(self) -> dict[str, dict[str, Any]]:
        """The dtypes the grade is about: those claimed, else every dtype the implementation supports."""
        summary = self.by_dtype()
        if self.claimed is not None:
            return {d: summary.get(d, {"level": "unsupported", "why": "not run"}) for d in self.claimed}
        return {d: s for d, s in summary.items() if s["level"] not in ("unsupported", "n/a")}

    @property
    def grade(self) -> str:
        graded = self.graded_dtypes()
        levels = [s["level"] for s in graded.values() if s["level"] != "n/a"]
        if not levels or any(level == "unsupported" for level in levels):
            return "fail"
        return min(levels, key=LEVEL_ORDER.index)

    def unsupported(self) -> set[str]:
        """The dtypes every case of which raised (shown as not supported, not as failures)."""
        return {d for d in DTYPES if _unsupported([r for r in self.results if r.case.dtype == d]) is not None}

    def failures(self, level: str) -> list[CaseResult]:
        skip = self.unsupported()
        return [
            r for r in self.results if r.not_applicable is None and not r.passed(level) and r.case.dtype not in skip
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "p-rope-conformance-check/1",
            "spec_version": SPEC_VERSION,
            "impl": self.impl,
            "framework": self.framework,
            "signature": self.signature,
            "convention": self.signature,
            "keywords": sorted(self.keywords),
            "device": self.device,
            "grade": self.grade,
            "claimed": list(self.claimed) if self.claimed is not None else None,
            "by_dtype": self.by_dtype(),
            "seconds": round(self.seconds, 2),
            "untested": [{"id": c.id, "why": why} for c, why in self.untested],
            "errors": [{"what": what, "raised": raised} for what, raised in self.errors],
            "case_mistakes": self.case_mistakes,
            "cases": [r.to_json() for r in self.results],
            "reproducers": self.reproducers,
        }


def config_cases(cases: Sequence[Case], params: Any) -> list[Case]:
    """The cases at one configuration's parameters (H, w, p, s): shapes keep their other axes."""
    out, seen = [], set()
    for case in cases:
        if case.rotated_pairs is not None or (case.id in seen):
            continue
        seen.add(case.id)
        shape = (*case.shape[:-1], params.head_dim)
        out.append(
            dataclasses.replace(
                case,
                shape=shape,
                head_dim=params.head_dim,
                max_wavelength=params.max_wavelength,
                rope_percentage=params.rope_percentage,
                scale_factor=params.scale_factor,
            )
        )
    return out


def check(
    function: Callable[..., Any],
    *,
    impl: str = "<callable>",
    import_statement: str = "",
    framework_name: str = "auto",
    signature: str = "auto",
    device: str = "cpu",
    dtypes: Sequence[str] = DTYPES,
    repro_level: str | None = "conformant",
    max_reproducers: int = 10,
    claimed: Sequence[str] | None = None,
    rotary: Callable[..., Any] | None = None,
    rotary_statement: str = "",
    layer_type: str = "full_attention",
    compile: bool = False,
    autocast: str | None = None,
    timeout: float | None = 60.0,
    errors: bool = False,
    params: Any = None,
    names: Sequence[str] | None = None,
    watchdog: Watchdog | None = None,
    diagnose: bool = True,
) -> CheckResult:
    """Run the check cases on ``function`` and grade it (the ``check`` command without printing).

    signature: the call convention ("auto": detected from the parameter names); params: a RopeParams
    whose (H, w, p, s) replace every case's; names: only the cases whose scenario name is listed (a
    subset, for quick checks); rotary_statement: the import statement a reproducer gets ``rotary`` by
    (load_callable's; by default its module and name). Usage errors raise UsageError; an implementation
    that cannot be called at all raises ImplementationError."""
    start = time.perf_counter()
    detected, keywords = detect_convention(function)
    if signature == "auto":
        signature = detected
    elif signature == "ours" and detected != "ours":
        keywords = frozenset(OUR_KEYWORDS)
    elif signature in ("paper", "gemma") and detected != signature:
        keywords = frozenset()
    if signature not in CONVENTIONS:
        raise UsageError(f"unknown convention {signature!r}; known: {', '.join(CONVENTIONS)}")
    options = (("--compile",) if compile else ()) + ((f"--autocast {autocast}",) if autocast else ())

    def make(fw: Framework, plain: bool = False) -> CallableTarget:
        return make_target(signature, function, fw, device, name=impl, keywords=keywords, rotary=rotary,
                           layer_type=layer_type, compile=compile and not plain,
                           autocast=None if plain else autocast)  # fmt: skip

    framework_name = keras_or(framework_name, signature, function)
    if framework_name == "auto":
        with watchdog.armed("probe (detecting the framework)") if watchdog is not None else contextlib.nullcontext():
            framework_name = detect_framework(lambda fw: make(fw, plain=True), timeout)
    try:
        fw = framework(framework_name)
    except NotImplementedError as error:  # Keras on a backend the suite has no arrays for
        raise UsageError(str(error)) from None
    if not fw.present(device):
        raise UsageError(f"device {device} is not present for {framework_name}")
    if compile:
        _usable(lambda: fw.compile(function))
    if autocast:
        _usable(lambda: _enter_and_leave(fw.autocast(autocast, device)))
    target = make(fw)
    cases = check_cases(tuple(dtypes))
    if params is not None:
        cases = config_cases(cases, params)
    if names is not None:
        cases = [c for c in cases if c.name in names]
    results, untested = [], []
    for case in cases:
        why = target.supports(case)
        if why is not None:
            untested.append((case, why))
            continue
        with watchdog.armed(case.id) if watchdog is not None else contextlib.nullcontext():
            results.append(execute(target, case, timeout=timeout))
    outcome = CheckResult(impl, fw.label(), signature, keywords, device, results, untested, 0.0)
    outcome.claimed = tuple(claimed) if claimed is not None else None
    outcome.level = repro_level or "conformant"
    outcome.options = options
    outcome.eager_calls = getattr(fw, "eager_calls", 0)
    if diagnose:
        for dtype in sorted(set(DTYPES) - outcome.unsupported(), key=DTYPES.index):
            of_dtype = [r for r in results if r.case.dtype == dtype]
            text, mistakes = cause(of_dtype, outcome.level, per_case=outcome.case_mistakes)
            if text:
                outcome.causes[dtype] = text
                outcome.mistakes[dtype] = [m.name for m in mistakes]
    if errors:
        outcome.errors = error_cases(target, timeout)
    if repro_level is not None:  # every convention's call can be written down (reproduce)
        for result in outcome.failures(repro_level)[:max_reproducers]:
            if result.raised is not None and "did not return" in result.raised:
                continue
            with watchdog.armed(f"reproducer of {result.case.id}") if watchdog else contextlib.nullcontext():
                written = reproduce(target, fw, result, repro_level, impl, import_statement, timeout, rotary_statement)
            if written is None:
                continue
            text, note = written
            outcome.reproducers[result.case.id] = text
            outcome.repro_notes[result.case.id] = note
    for result in results:
        result.outputs = {}
    outcome.seconds = time.perf_counter() - start
    return outcome


def keras_or(framework_name: str, convention: str, function: Callable[..., Any]) -> str:
    """The framework "keras" for Keras code (the keras convention, or detected: frameworks.uses_keras)
    when none is named; a UsageError for the keras convention on another framework."""
    if convention == "keras" and framework_name not in ("auto", "keras"):
        raise UsageError(f"the keras convention runs on Keras's backend (KERAS_BACKEND), not {framework_name}")
    if framework_name == "auto" and (convention == "keras" or uses_keras(function)):
        return "keras"
    return framework_name


def _enter_and_leave(context: Any) -> None:
    with context:
        pass


def _usable(step: Callable[[], Any]) -> None:
    try:
        step()
    except NotImplementedError as error:
        raise UsageError(str(error)) from None


def error_cases(target: CallableTarget, timeout: float | None) -> list[tuple[str, str | None]]:
    """SPEC.md section 9's invalid arguments, as far as the convention can pass them: for each, the
    exception raised (None: it silently returned numbers)."""
    if target.signature not in SIGNATURES:
        return []
    fw, device = target.framework, target.device
    found: list[tuple[str, str | None]] = []
    for what, changes, x_dtype, p_dtype, p_shape in invalid_calls(target):
        x = fw.to_native(np.ones((1, 2, 3, 8), dtype=x_dtype), device)
        positions = fw.to_native(np.zeros(p_shape, dtype=p_dtype), device)
        case = Case(name="errors", op="apply", dtype="float32", shape=(1, 2, 3, 8), head_dim=8)
        try:
            with warnings.catch_warnings(), deadline(timeout), fw.precision(False):
                warnings.simplefilter("ignore")
                _call_with(target, case, x, positions, changes)
            found.append((what, None))
        except BaseException as error:  # rejected: how does not matter here
            found.append(
                (what, f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}")
            )
    return found


def invalid_calls(target: CallableTarget) -> list[tuple[str, dict[str, Any], str, str, tuple[int, ...]]]:
    """The rows of INVALID_CALLS the target's signature can express (Gemma's names for gemma)."""
    rows = []
    for what, changes, x_dtype, p_dtype, p_shape in INVALID_CALLS:
        keys = set(changes) - {"head_dim", "max_wavelength", "rope_percentage"}
        proportion = {"rope_percentage"} if "rope_proportion" in target.keywords else set()
        gemma_names = {"scale_factor", "max_wavelength"} | proportion
        if target.signature == "gemma" and (set(changes) - gemma_names):
            continue
        if target.signature != "gemma" and keys - set(target.keywords):
            continue
        rows.append((what, changes, x_dtype, p_dtype, p_shape))
    if target.signature != "gemma" or "rope_proportion" in target.keywords:
        wide = ("rotary width above the head: rope_percentage 2", {"rope_percentage": 2.0}, "float32", "int32", (1, 2))
        rows.append(wide)
    return rows


def _call_with(target: CallableTarget, case: Case, x: Any, positions: Any, changes: dict[str, Any]) -> Any:
    params = {"head_dim": 8, "max_wavelength": 10_000.0, "rope_percentage": 1.0} | changes
    f = target.invoke
    if target.signature == "gemma":
        kw = {k: v for k, v in params.items() if k == "scale_factor"}
        if "rope_proportion" in target.keywords:
            kw["rope_proportion"] = params["rope_percentage"]
        return f(x, positions, base_frequency=params["max_wavelength"], **kw)
    args = (params.pop("head_dim"), params.pop("max_wavelength"), params.pop("rope_percentage"))
    return f(x, positions, *args, **params)


def reproduce(
    target: CallableTarget,
    fw: Framework,
    result: CaseResult,
    level: str,
    impl: str,
    import_statement: str,
    timeout: float | None = None,
    rotary_statement: str = "",
) -> tuple[str, str] | None:
    """Shrink a failing case to the smallest candidate that still fails, and write its script (None:
    the convention's call cannot be written down, e.g. a rotary module built from arrays)."""
    case = result.case
    arrays = case.materialize()
    focus = (
        result.worst.index[:-1] if result.worst is not None and result.worst.ratio > 1 else (0,) * arrays.inputs.ndim
    )
    chosen = None
    for x, positions in shrink_candidates(
        case, arrays.inputs, arrays.positions, tuple(focus[: arrays.inputs.ndim - 1])
    ):
        sub = dataclasses.replace(case, shape=x.shape, positions=dataclasses.replace(case.positions, form="full"))
        if target.supports(sub) is not None:
            continue
        sub_arrays = dataclasses.replace(arrays, inputs=x, positions=positions)
        sub_result = execute(target, sub, sub_arrays, timeout=timeout)
        if not sub_result.passed(level):
            chosen = (sub, x, positions, sub_result)
            break
    if chosen is None:  # only fails in the whole case (e.g. depends on every row): keep it all
        chosen = (case, arrays.inputs, arrays.positions, result)
    sub, x, positions, sub_result = chosen
    for smaller, x_small in shrink_head(sub, x):  # the smallest head dimension that still fails
        if target.supports(smaller) is not None:
            continue
        small_arrays = dataclasses.replace(arrays, inputs=x_small, positions=positions)
        small_result = execute(target, smaller, small_arrays, timeout=timeout)
        if not small_result.passed(level):
            sub, x, sub_result = smaller, x_small, small_result
            break
    observed = describe_result(sub_result, level)
    options = (" --compile" if target.compile else "") + (f" --autocast {target.autocast}" if target.autocast else "")
    keras_backend = fw.backend if isinstance(fw, KerasPolicy) else None
    setup = ""
    if isinstance(target, KerasTarget):  # the layer built and called as the check did, for the shrunk case
        positions_name, keywords = target.call_arguments(sub, x.shape)
        method = getattr(target.function, "__name__", None) if target.method else None
        constructor = target.constructor_arguments(sub)
        import_statement, setup = keras_layer(
            import_statement, method=method, constructor=constructor, positions=positions_name, keywords=keywords
        )
    elif isinstance(target, AnglesTarget) and target.rotary is None:  # the angles as the check made them
        angles = target.spec_angles(sub, positions)
        setup = angles_call(
            framework=fw.name, angles=angles.reshape(target.with_heads_axis(sub, angles.shape)),
            keywords=target.call_keywords(sub),
        )  # fmt: skip
    elif isinstance(target, FlashTarget):  # the tables, offsets and options the check passed
        setup = flash_call(framework=fw.name, plan=target.plan(sub, x.shape, positions), shape=x.shape)
    elif isinstance(target, OnnxTarget):  # the graph built and fed as the check did
        plan = target.plan(sub, x, positions)
        setup = onnx_call(plan=plan, model_source=inspect.getsource(onnx_model), providers=ONNX_PROVIDERS)
    elif isinstance(target, (HfTarget, VllmTarget, AnglesTarget)):  # a module or layer built as the check did
        if isinstance(target, HfTarget):
            found = _hf_source(target, sub, positions, rotary_statement)
        elif isinstance(target, VllmTarget):
            found = _vllm_source(target, sub, x, positions)
        else:
            found = _angles_source(target, sub, positions, rotary_statement)
        if found is None:
            return None
        imports, setup, positions = found
        known = import_statement.splitlines()
        import_statement += "".join(f"{line}\n" for line in imports.splitlines()
                                    if not (line.startswith("import ") and line in known))  # fmt: skip
        if isinstance(target, VllmTarget) or (isinstance(target, HfTarget) and target.q_and_k):  # k appended
            axis = -2 if sub.seq_axis == -3 else -3
            x = np.concatenate([x, np.take(x, [x.shape[axis] - 1], axis=axis)], axis=axis)
    text = script(
        sub,
        x,
        positions,
        level=level,
        import_statement=import_statement,
        framework=fw.name,
        signature=target.signature,
        device=target.device,
        impl=impl + options,
        observed=observed,
        options=call_options(fw.name, autocast=target.autocast, compile=target.compile, keras_backend=keras_backend),
        setup=setup,
    )
    return text, f"{x.shape}: {observed}"


def _hf_source(
    target: HfTarget, case: Case, positions: np.ndarray, rotary_statement: str
) -> tuple[str, str, np.ndarray] | None:
    """repro.hf_tables' source for the hf convention's call of ``case`` (and the positions as the check
    passed them: int64 position_ids to a rotary module); None where the rotary module is built from
    values a script cannot spell (arrays, dtypes)."""
    heads_axis = -2 if case.seq_axis == -3 else -3
    common = dict(framework=target.framework.name, device=target.device, heads_axis=heads_axis, q_and_k=target.q_and_k,
                  keywords=target.call_keywords(case))  # fmt: skip
    if target.rotary is None:
        return (*hf_tables(**common, tables=target.spec_tables(case, positions)), positions)  # type: ignore[arg-type]
    ids = positions.astype(np.int64)
    maximum = target.max_position(ids)
    built = _factory_source(target.rotary, case, target.framework, target.device, maximum, target.layer_type)
    if built is None:
        return None
    imports, arguments = built
    module = target.built(target.rotary, case, max_position=maximum)
    layer_type = target.layer_type if target.passes_layer_type(module) else None
    statement = rotary_statement or _import_statement(target.rotary)
    source = hf_tables(**common, rotary=(statement, arguments, layer_type))  # type: ignore[arg-type]
    return (imports + source[0], source[1], ids)


def _angles_source(
    target: AnglesTarget, case: Case, positions: np.ndarray, rotary_statement: str
) -> tuple[str, str, np.ndarray] | None:
    """repro.angles_rotary_call's source for the angles convention with a rotary module (imports, setup,
    positions); None where the module is built from values a script cannot spell."""
    assert target.rotary is not None
    given = target.rotary_positions(case, positions)
    maximum = target.max_position(given)
    built = _factory_source(target.rotary, case, target.framework, target.device, maximum, target.layer_type)
    if built is None:
        return None
    imports, arguments = built
    statement = rotary_statement or _import_statement(target.rotary)
    setup = angles_rotary_call(
        framework=target.framework.name, device=target.device, statement=statement, arguments=arguments,
        positions=given, heads_axis=target.heads_axis(case), keywords=target.call_keywords(case),
    )  # fmt: skip
    return imports + setup[0], setup[1], positions


def _vllm_source(
    target: VllmTarget, case: Case, x: np.ndarray, positions: np.ndarray
) -> tuple[str, str, np.ndarray] | None:
    """repro.vllm_call's source for the vllm convention's call of ``case`` (imports, setup, positions);
    None where a factory's layer is built from values a script cannot spell (arrays)."""
    plan = target.plan(case, x.shape, positions)
    fw, imports, layer = target.framework, "", None
    if not target.is_kernel:
        assert target.function is not None
        built = _factory_source(target.function, case, fw, target.device, plan.rows, target.layer_type)
        if built is None:
            return None
        imports, layer = built
    frequencies = spec_frequencies(case)
    return (
        imports,
        vllm_call(
            framework=fw.name, device=target.device, plan=plan, shape=x.shape, frequencies=frequencies, layer=layer
        ),
        positions,
    )


def _import_statement(function: Callable[..., Any]) -> str:
    """Source that binds ``impl`` to ``function`` by its module and qualified name."""
    return f"import {function.__module__}\nimpl = {function.__module__}.{function.__qualname__}\n"


def _factory_source(
    factory: Callable[..., Any], case: Case, fw: Framework, device: str, max_position: int, layer_type: str
) -> tuple[str, str] | None:
    """(imports, the arguments) of the call that built ``factory``'s module or layer for ``case``
    (conventions.factory_arguments), as source: its keywords, or the transformers configuration built
    from them; None where one is a value a script cannot spell (the suite's frequency array)."""
    config, kwargs = factory_arguments(factory, case, fw, device, max_position, layer_type)
    spelled: dict[str, str] = {}
    for name, value in kwargs.items():
        source = _spelled(value, fw)
        if source is None:
            return None
        spelled[name] = source
    arguments = ", ".join(f"{k}={v}" for k, v in spelled.items())
    modules = {v.rpartition(".")[0] for v in spelled.values() if v.startswith(("torch.", "jax.numpy."))}
    if config is not None:
        modules.add(config.__module__)
        arguments = f"{config.__module__}.{config.__qualname__}({arguments})"
    return "".join(f"import {m}\n" for m in sorted(modules)), arguments


_DTYPE_SOURCE = {"torch": "torch.{0}", "jax": "jax.numpy.{0}", "numpy": "np.{0}"}


def _spelled(value: Any, fw: Framework) -> str | None:
    """Python source for a factory argument: ``repr`` of a literal, or the framework's dtype of that
    name (``torch.float32``); None for anything else (an array)."""
    if _literal(value):
        return repr(value)
    if fw.name not in _DTYPE_SOURCE:
        return None
    for name in DTYPES:
        if value is fw.dtype(name):
            bfloat16 = fw.name == "numpy" and name == "bfloat16"
            return "ml_dtypes.bfloat16" if bfloat16 else _DTYPE_SOURCE[fw.name].format(name)
    return None


def _literal(value: Any) -> bool:
    """Whether ``repr(value)`` is Python source for it (numbers, strings, lists and dicts of them)."""
    if isinstance(value, (list, tuple)):
        return all(_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_literal(k) and _literal(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def _ratio(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _convention_line(outcome: CheckResult) -> str:
    if outcome.signature == "ours":
        return (
            "ours: f(inputs, positions, head_dim, max_wavelength, rope_percentage, *, "
            + ", ".join(sorted(outcome.keywords))
            + ")"
        )
    return f"{outcome.signature}: {CONVENTIONS[outcome.signature]}"


def render(outcome: CheckResult, level: str, max_failures: int = 10, grade: bool = True) -> str:
    lines = [
        f"p-RoPE conformance check of {outcome.impl} (SPEC.md {SPEC_VERSION})",
        f"framework {outcome.framework}, device {outcome.device}, convention {_convention_line(outcome)}"
        + (f", {' '.join(outcome.options)}" if outcome.options else ""),
    ]
    if outcome.parameters:
        lines.append(f"parameters: {outcome.parameters}")
    lines.append(f"{len(outcome.results)} cases in {outcome.seconds:.1f} s")
    if outcome.untested:
        reasons: dict[str, int] = {}
        for _, why in outcome.untested:
            reasons[why] = reasons.get(why, 0) + 1
        listed = "; ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        lines.append(f"not tested ({len(outcome.untested)} cases its convention cannot express): {listed}")
    lines.append("")
    header = f"{'dtype':9} {'cases':>5}  {'conformant':22} {'strict':38} {'special values':15} level"
    lines += [header, "-" * len(header)]
    summary = outcome.by_dtype()
    for dtype, s in summary.items():
        if s["level"] == "n/a":
            lines.append(f"{dtype:9} {'':>5}  n/a ({s.get('why', '')})")
            continue
        if s["level"] == "unsupported":
            lines.append(f"{dtype:9} {'':>5}  not supported ({s['why'].removeprefix('raised ')})")
            continue
        ok_c = s["level"] in ("conformant", "strict")
        conf = ("pass " if ok_c else "FAIL ") + _ratio(s["ratio"]["conformant"])
        strict = ("pass " if s["level"] == "strict" else "FAIL ") + _ratio(s["ratio"]["strict"])
        first = s.get("first_strict_failure_position")
        if first is not None:
            strict += f" (fails from position {first:g})"
        elif s["level"] != "strict" and ok_c:
            strict += " (special values)"
        lines.append(f"{dtype:9} {s['cases']:>5}  {conf:22} {strict:38} {s['special']:15} {s['level']}")
    lines += ["", "cells: pass/FAIL, then the worst error as a fraction of the level's tolerance (<= 1 passes)"]
    lines.append("special values: SPEC.md section 6 (inf, NaN, -0.0 in NoPE lanes; non-finite positions), strict level")
    problems = sorted({p.split(": ", 1)[-1] for s in summary.values() for p in s.get("special_problems", [])})
    for problem in problems[:5]:
        lines.append(f"  special values: {problem}")
    if outcome.causes:
        lines += ["", f"why cases fail the {outcome.level} level:"]
        lines += [f"  {dtype}: {text}" for dtype, text in outcome.causes.items()]
    failing = outcome.failures(level)
    if failing:
        lines += ["", f"{len(failing)} cases fail the {level} level; the first {min(len(failing), max_failures)}:"]
        for r in failing[:max_failures]:
            lines.append(f"- {r.case.id}: {describe_result(r, level)}")
            lines.append(f"    {r.case.describe()}")
            if outcome.case_mistakes.get(r.case.id):
                lines.append(f"    matches {' or '.join(outcome.case_mistakes[r.case.id])}")
            if r.case.id in outcome.repro_notes:
                lines.append(f"    reproducer on {outcome.repro_notes[r.case.id]}")
    if outcome.errors:
        lines += ["", "invalid arguments (SPEC.md section 9; informative unless --require-errors):"]
        for what, raised in outcome.errors:
            lines.append(f"  {what}: " + (f"rejected ({raised})" if raised else "SILENTLY PRODUCED NUMBERS"))
    if outcome.eager_calls:
        lines.append(f"\nnote: {outcome.eager_calls} calls ran eagerly (the function cannot be traced under jax.jit)")
    if grade:
        lines += ["", grade_line(outcome)]
    return "\n".join(lines)


def grade_line(outcome: CheckResult) -> str:
    """GRADE: the level reached over the graded dtypes, and what keeps each dtype below strict."""
    graded = outcome.graded_dtypes()
    head = "GRADE" if outcome.claimed is None else f"GRADE for the claimed {', '.join(outcome.claimed)}"
    parts = []
    for dtype, s in outcome.by_dtype().items():
        level = s["level"]
        if level == "unsupported":
            parts.append(f"{dtype} not supported" + (" (claimed)" if dtype in graded else ""))
        elif level == "fail":
            parts.append(f"{dtype}: {s.get('cause') or 'fails'}")
        elif level == "conformant":
            first = s.get("first_strict_failure_position")
            parts.append(
                f"{dtype} not strict" + (f" from position {first:g}" if first is not None else " (special values)")
            )
    if outcome.claimed is not None:
        parts = [p for p in parts if p.split(":")[0].split(" ")[0] in outcome.claimed]
    text = f"{head}: {GRADE_NAMES[outcome.grade]}"
    return text + (f" ({'; '.join(parts)})" if parts else "")


def _load(spec: str) -> tuple[Callable[..., Any], str]:
    """load_callable with the working directory importable, as ``python -m`` has it."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return load_callable(spec)


def _params(args: argparse.Namespace) -> tuple[Any, str]:
    if args.config is None:
        if args.layer_type is not None:
            raise UsageError("--layer-type needs --config")
        return None, ""
    try:
        from p_rope.config import params_from_hf_config
    except ImportError as error:
        raise UsageError(f"--config needs p_rope.config.params_from_hf_config ({error})") from None
    try:
        params = params_from_hf_config(str(args.config), layer_type=args.layer_type)
    except (ValueError, TypeError, OSError) as error:
        raise UsageError(f"--config {args.config}: {error}") from None
    where = f"{args.config}" + (f", layer type {args.layer_type}" if args.layer_type else "")
    return params, (
        f"H={params.head_dim} w={params.max_wavelength:g} p={params.rope_percentage:g} "
        f"scale_factor={params.scale_factor:g} from {where}"
    )


def check_command(args: argparse.Namespace) -> int:
    """The ``check`` command: 0 when the level asked for is reached, 1 when not (or the implementation
    failed before any case), 2 for a usage or environment error (one line, never a grade)."""
    try:
        function, statement = _load(args.impl)
        rotary, rotary_statement = _load(args.rotary) if args.rotary else (None, "")
        claimed = parse_dtypes(args.dtypes_claimed) if args.dtypes_claimed else None
        params, where = _params(args)
        dtypes = tuple(args.dtype or DTYPES)
        if claimed is not None:
            dtypes = tuple(d for d in DTYPES if d in set(dtypes) | set(claimed))

        def on_hang(label: str) -> None:
            print(f"p-RoPE conformance check of {args.impl}: case {label} did not return within "
                  f"{args.timeout:g} s and could not be interrupted; the check stops here", flush=True)  # fmt: skip
            print(f"GRADE: {GRADE_NAMES['fail']} ({label}: hangs)", flush=True)
            os._exit(1)

        outcome = check(
            function,
            impl=args.impl,
            import_statement=statement,
            framework_name=args.framework,
            signature=args.convention,
            device=args.device,
            dtypes=dtypes,
            repro_level=args.level,
            max_reproducers=max(args.max_failures, 1),
            claimed=claimed,
            rotary=rotary,
            rotary_statement=rotary_statement,
            layer_type=args.layer_type or "full_attention",
            compile=args.compile,
            autocast=DTYPE_ALIASES.get(args.autocast, args.autocast) if args.autocast else None,
            timeout=args.timeout,
            errors=args.errors or args.require_errors,
            params=params,
            watchdog=Watchdog(args.timeout, on_hang),
        )
        outcome.parameters = where
    except UsageError as error:
        print(f"p-rope-conformance check: {error}", file=sys.stderr)
        return 2
    except ImplementationError as error:
        print(f"p-RoPE conformance check of {args.impl}: {error}\nGRADE: {GRADE_NAMES['fail']}")
        return 1
    print(render(outcome, args.level, args.max_failures, grade=False))
    if outcome.reproducers:
        if args.repro_dir is not None:
            args.repro_dir.mkdir(parents=True, exist_ok=True)
            for case_id, text in outcome.reproducers.items():
                path = args.repro_dir / ("repro_" + case_id.replace("/", "_") + ".py")
                path.write_text(text)
            print(f"\nreproducers: {len(outcome.reproducers)} scripts in {args.repro_dir}")
        else:
            first_id, first = next(iter(outcome.reproducers.items()))
            print(f"\nreproducer of {first_id} (--repro-dir DIR writes one per failing case):\n")
            print(first)
    if args.json is not None:
        args.json.write_text(json.dumps(outcome.to_json(), indent=1, default=finite_json) + "\n")
    print("\n" + grade_line(outcome))
    passed = LEVEL_ORDER.index(outcome.grade) >= LEVEL_ORDER.index(args.level)
    if args.require_errors and any(raised is None for _, raised in outcome.errors):
        passed = False
    return 0 if passed else 1
