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
import dataclasses
import importlib.util
import json
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from p_rope._params import SPEC_VERSION

from .cases import DTYPES, Case, check_cases
from .execute import CaseResult, execute, finite_json
from .frameworks import Framework, framework
from .repro import describe_result, script, shrink_candidates
from .run import LEVEL_ORDER, aggregate
from .targets import CallableTarget, detect_signature, load_callable

GRADE_NAMES = {"strict": "STRICT", "conformant": "CONFORMANT", "fail": "NOT CONFORMANT"}


def _probe() -> tuple[Case, np.ndarray, np.ndarray]:
    """One token of one head: the smallest call any implementation should accept."""
    case = Case(name="probe", op="apply", dtype="float32", shape=(1, 1, 1, 4), head_dim=4)
    x = np.array([0.25, 0.5, 0.75, 1.0], dtype=np.float32).reshape(1, 1, 1, 4)
    return case, x, np.array([[1]], dtype=np.int32)


def _kind(value: object) -> str | None:
    module = type(value).__module__.split(".")[0]
    if isinstance(value, np.ndarray):
        return "numpy"
    if module in ("jax", "jaxlib"):
        return "jax"
    if module == "torch":
        return "torch"
    return None


def detect_framework(function: Callable[..., Any], signature: str, keywords: frozenset[str]) -> str:
    """The array library the callable works in: call it on a tiny input as NumPy, then PyTorch, then
    JAX arrays, and see what comes back."""
    case, x, positions = _probe()
    errors = []
    for name in ("numpy", "torch", "jax"):
        if name != "numpy" and importlib.util.find_spec(name) is None:
            continue
        fw = framework(name)
        target = CallableTarget("probe", fw, "cpu", function, signature, keywords)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = target._apply(case, fw.to_native(x, "cpu"), fw.to_native(positions, "cpu"))
        except Exception as error:
            errors.append(f"{name}: {type(error).__name__}: {error}")
            continue
        kind = _kind(out)
        if kind is not None:
            return kind
        errors.append(f"{name}: returned a {type(out).__name__}")
    raise TypeError("could not call the implementation with NumPy, PyTorch or JAX arrays: " + " | ".join(errors))


@dataclasses.dataclass
class CheckResult:
    impl: str
    framework: str
    signature: str
    keywords: frozenset[str]
    device: str
    results: list[CaseResult]
    untested: list[tuple[Case, str]]
    seconds: float
    eager_calls: int = 0  # JAX: calls that could not be traced under jit and ran eagerly
    reproducers: dict[str, str] = dataclasses.field(default_factory=dict)  # case id -> script
    repro_notes: dict[str, str] = dataclasses.field(default_factory=dict)  # case id -> what it shows

    def by_dtype(self) -> dict[str, dict[str, Any]]:
        summary = {}
        for dtype in DTYPES:
            results = [r for r in self.results if r.case.dtype == dtype]
            if results:
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
        return summary

    @property
    def grade(self) -> str:
        levels = [s["level"] for s in self.by_dtype().values() if s["level"] != "n/a"]
        if not levels:
            return "fail"
        return min(levels, key=LEVEL_ORDER.index)

    def failures(self, level: str) -> list[CaseResult]:
        return [r for r in self.results if r.not_applicable is None and not r.passed(level)]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "p-rope-conformance-check/1",
            "spec_version": SPEC_VERSION,
            "impl": self.impl,
            "framework": self.framework,
            "signature": self.signature,
            "keywords": sorted(self.keywords),
            "device": self.device,
            "grade": self.grade,
            "by_dtype": self.by_dtype(),
            "seconds": round(self.seconds, 2),
            "untested": [{"id": c.id, "why": why} for c, why in self.untested],
            "cases": [r.to_json() for r in self.results],
            "reproducers": self.reproducers,
        }


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
) -> CheckResult:
    """Run the check cases on ``function`` and grade it (the ``check`` command without printing)."""
    start = time.perf_counter()
    detected, keywords = detect_signature(function)
    if signature == "auto":
        signature = detected
    elif signature == "ours" and detected != "ours":
        keywords = frozenset(("rotated_pairs", "scale_factor", "pairing", "seq_axis"))
    if framework_name == "auto":
        framework_name = detect_framework(function, signature, keywords)
    fw = framework(framework_name)
    if not fw.present(device):
        raise RuntimeError(f"device {device} is not present for {framework_name}")
    target = CallableTarget(impl, fw, device, function, signature, keywords)
    results, untested = [], []
    for case in check_cases(tuple(dtypes)):
        why = target.supports(case)
        if why is not None:
            untested.append((case, why))
            continue
        results.append(execute(target, case))
    outcome = CheckResult(impl, framework_name, signature, keywords, device, results, untested, 0.0)
    outcome.eager_calls = getattr(fw, "eager_calls", 0)
    if repro_level is not None:
        for result in outcome.failures(repro_level)[:max_reproducers]:
            text, note = reproduce(target, fw, result, repro_level, impl, import_statement)
            outcome.reproducers[result.case.id] = text
            outcome.repro_notes[result.case.id] = note
    outcome.seconds = time.perf_counter() - start
    return outcome


def reproduce(
    target: CallableTarget, fw: Framework, result: CaseResult, level: str, impl: str, import_statement: str
) -> tuple[str, str]:
    """Shrink a failing case to the smallest candidate that still fails, and write its script."""
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
        sub_arrays = dataclasses.replace(arrays, inputs=x, positions=positions)
        sub_result = execute(target, sub, sub_arrays)
        if not sub_result.passed(level):
            chosen = (sub, x, positions, sub_result)
            break
    if chosen is None:  # only fails in the whole case (e.g. depends on every row): keep it all
        chosen = (case, arrays.inputs, arrays.positions, result)
    sub, x, positions, sub_result = chosen
    observed = describe_result(sub_result, level)
    text = script(
        sub,
        x,
        positions,
        level=level,
        import_statement=import_statement,
        framework=fw.name,
        signature=target.signature,
        device=target.device,
        impl=impl,
        observed=observed,
    )
    return text, f"{x.shape}: {observed}"


def _ratio(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def render(outcome: CheckResult, level: str, max_failures: int = 10) -> str:
    sig = {
        "paper": "paper: f(inputs, positions, head_dim, max_wavelength, rope_percentage)",
        "gemma": "gemma: f(inputs, positions, *, base_frequency, scale_factor, rope_proportion)",
        "ours": "ours: f(inputs, positions, head_dim, max_wavelength, rope_percentage, *, "
        + ", ".join(sorted(outcome.keywords))
        + ")",
    }[outcome.signature]
    lines = [
        f"p-RoPE conformance check of {outcome.impl} (SPEC.md {SPEC_VERSION})",
        f"framework {outcome.framework}, device {outcome.device}, signature {sig}",
        f"{len(outcome.results)} cases in {outcome.seconds:.1f} s",
    ]
    if outcome.untested:
        reasons: dict[str, int] = {}
        for _, why in outcome.untested:
            reasons[why] = reasons.get(why, 0) + 1
        listed = "; ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        lines.append(f"not tested ({len(outcome.untested)} cases its signature cannot express): {listed}")
    lines.append("")
    header = f"{'dtype':9} {'cases':>5}  {'conformant':22} {'strict':38} {'special values':15} level"
    lines += [header, "-" * len(header)]
    for dtype, s in outcome.by_dtype().items():
        if s["level"] == "n/a":
            lines.append(f"{dtype:9} {'':>5}  n/a ({s.get('why', '')})")
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
    problems = sorted(
        {p.split(": ", 1)[-1] for s in outcome.by_dtype().values() for p in s.get("special_problems", [])}
    )
    for problem in problems[:5]:
        lines.append(f"  special values: {problem}")
    failing = outcome.failures(level)
    if failing:
        lines += ["", f"{len(failing)} cases fail the {level} level; the first {min(len(failing), max_failures)}:"]
        for r in failing[:max_failures]:
            lines.append(f"- {r.case.id}: {describe_result(r, level)}")
            lines.append(f"    {r.case.describe()}")
            if r.case.id in outcome.repro_notes:
                lines.append(f"    reproducer on {outcome.repro_notes[r.case.id]}")
    if outcome.eager_calls:
        lines.append(f"\nnote: {outcome.eager_calls} calls ran eagerly (the function cannot be traced under jax.jit)")
    grade = GRADE_NAMES[outcome.grade]
    lines += ["", f"GRADE: {grade}" + ("" if outcome.grade == "strict" else _why_not_strict(outcome))]
    return "\n".join(lines)


def _why_not_strict(outcome: CheckResult) -> str:
    if outcome.grade == "fail":
        return ""
    firsts = {
        d: s.get("first_strict_failure_position") for d, s in outcome.by_dtype().items() if s["level"] != "strict"
    }
    parts = [f"{d} from position {p:g}" if p is not None else d for d, p in firsts.items()]
    return " (not strict: " + ", ".join(parts) + ")"


def check_command(args: argparse.Namespace) -> int:
    try:
        function, statement = load_callable(args.impl)
    except (ImportError, AttributeError, OSError, ValueError, TypeError) as error:
        print(f"cannot load {args.impl}: {type(error).__name__}: {error}")
        return 2
    dtypes = tuple(args.dtype or DTYPES)
    try:
        outcome = check(
            function,
            impl=args.impl,
            import_statement=statement,
            framework_name=args.framework,
            signature=args.signature,
            device=args.device,
            dtypes=dtypes,
            repro_level=args.level,
            max_reproducers=max(args.max_failures, 1),
        )
    except (TypeError, RuntimeError) as error:  # not callable with any array library; device absent
        print(f"p-RoPE conformance check of {args.impl}: {error}\nGRADE: NOT CONFORMANT")
        return 1
    print(render(outcome, args.level, args.max_failures))
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
    passed = LEVEL_ORDER.index(outcome.grade) >= LEVEL_ORDER.index(args.level)
    return 0 if passed else 1
