"""Run one case against one target and grade it at SPEC.md's levels.

Every output is checked for its type (an array of the target's framework), dtype (= the input's),
shape, device (= the input's) and, except in place, that the input was left untouched; then its
values are compared with the float64 reference pair by pair (spec/tolerance.py). A level is graded
on the positions in its range: every finite position for "conformant", |position| <= 2**24 for "strict"; the
special non-finite values count for the strict level only (see cases.SPECIAL_VALUES_LEVELS).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
import warnings
from typing import Any

import numpy as np
from p_rope.tolerance import LEVELS, error_map

from .cases import STRICT_MAX_POSITION, Arrays, Case, iter_levels
from .harness import CaseTimeout, deadline
from .targets import Call, NotApplicable, Target

# The positions each level speaks for (SPEC.md, "Accuracy"): conformant every finite position,
# strict |position| <= 2**24.
LEVEL_RANGE = {"conformant": float("inf"), "strict": float(STRICT_MAX_POSITION)}


@dataclasses.dataclass
class LevelResult:
    graded: int = 0  # rotated pair values graded at this level (0: the case says nothing about it)
    ratio: float = 0.0  # worst error / bound
    passed: bool = True


@dataclasses.dataclass
class Worst:
    """Where the worst error of a case sits (index into the output, position, ratio at a level)."""

    level: str
    ratio: float
    position: float
    index: tuple[int, ...]  # (batch..., seq or head, head or seq, pair) in the array's own layout
    output: str = "out"  # which output: out, q, k, grad


@dataclasses.dataclass
class CaseResult:
    case: Case
    levels: dict[str, LevelResult]
    problems: list[str] = dataclasses.field(default_factory=list)
    worst: Worst | None = None
    first_strict_failure: float | None = None  # smallest |position| failing the strict level
    seconds: float = 0.0
    not_applicable: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    raised: str | None = None  # the exception that escaped the implementation, if one did
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)  # kept when failing

    def passed(self, level: str) -> bool:
        return self.levels[level].passed

    @property
    def status(self) -> str:
        if self.not_applicable:
            return "n/a"
        return "pass" if all(r.passed for r in self.levels.values()) else "fail"

    def to_json(self) -> dict[str, Any]:
        """Compact: id, status, worst ratio and graded count per level; details when it failed."""
        data: dict[str, Any] = {
            "id": self.case.id,
            "status": self.status,
            "ratio": {k: finite_json(v.ratio) for k, v in self.levels.items() if v.graded},
            "graded": {k: v.graded for k, v in self.levels.items()},
            "seconds": round(self.seconds, 4),
        }
        if self.status == "fail":
            data["failed_levels"] = [k for k, v in self.levels.items() if not v.passed]
            data["case"] = self.case.describe()
        if self.problems:
            data["problems"] = self.problems
        if self.worst is not None and (self.status == "fail" or self.worst.ratio > 0.5):
            data["worst"] = dataclasses.asdict(self.worst) | {"ratio": finite_json(self.worst.ratio)}
        if self.first_strict_failure is not None:
            data["first_strict_failure_position"] = finite_json(self.first_strict_failure)
        if self.not_applicable:
            data["not_applicable"] = self.not_applicable
        if self.warnings:
            data["warnings"] = self.warnings
        return data


def finite_json(value: float) -> float | str:
    """JSON has no inf/NaN: write them as strings."""
    if np.isfinite(value):
        return float(value)
    return str(value)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}")


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(_bits(a), _bits(b)))


def needs_64bit(case: Case, arrays: Arrays) -> bool:
    return case.dtype == "float64" or arrays.positions.dtype == np.float64


class Grader:
    """Accumulates the grade of one case over its outputs."""

    def __init__(self, case: Case):
        self.case = case
        self.levels = {level: LevelResult() for level in LEVELS}
        self.graded_levels = tuple(iter_levels(case))
        self.problems: list[str] = []
        self.level_worst: dict[str, Worst] = {}
        self.first_strict_failure: float | None = None
        self.outputs: dict[str, np.ndarray] = {}

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def check_output(
        self, target: Target, value: Any, reference_input: np.ndarray, label: str = "out"
    ) -> np.ndarray | None:
        """Type, dtype, shape and device of one output; returns it as NumPy (None if unusable)."""
        fw = target.framework
        if not fw.is_native(value):
            kind = f"{type(value).__module__}.{type(value).__name__}"
            self.problem(f"{label}: returned a {kind}, not a {fw.name} array")
            try:
                value = np.asarray(value)
            except Exception:
                return None
        else:
            device = fw.device_of(value)
            if device != target.device:
                self.problem(f"{label}: on device {device}, the input on {target.device}")
            value = fw.to_numpy(value)
        if value.dtype != reference_input.dtype:
            self.problem(f"{label}: dtype {value.dtype.name}, expected the input's {reference_input.dtype.name}")
        if value.shape != reference_input.shape:
            self.problem(f"{label}: shape {value.shape}, expected the input's {reference_input.shape}")
            return None
        return value

    def grade_values(self, out: np.ndarray, x: np.ndarray, positions: np.ndarray, label: str = "out") -> None:
        """Compare with the reference; an output of another dtype is graded as rounded to the input's."""
        c = self.case
        self.outputs[label] = out
        emap = error_map(
            out if out.dtype == x.dtype else out.astype(x.dtype),
            x,
            positions,
            c.head_dim,
            c.max_wavelength,
            c.rope_percentage,
            rotated_pairs=c.rotated_pairs,
            scale_factor=c.scale_factor,
            pairing=c.pairing,
            seq_axis=c.seq_axis,
        )
        if not emap.nope_identical:
            self.problem(f"{label}: NoPE lanes are not bit-identical to the input")
        for level in self.graded_levels:
            if self.case.special == "nonfinite":
                in_range = np.ones(emap.ratio[level].shape, dtype=bool)
            else:
                in_range = emap.position <= LEVEL_RANGE[level]
            ratio = np.where(in_range, emap.ratio[level], 0.0)
            result = self.levels[level]
            result.graded += int(in_range.sum())
            if ratio.size == 0:
                continue
            flat = int(np.argmax(ratio))
            worst = float(ratio.reshape(-1)[flat])
            result.ratio = max(result.ratio, worst)
            previous = self.level_worst.get(level)
            if previous is None or worst > previous.ratio:
                index = tuple(int(i) for i in np.unravel_index(flat, ratio.shape))
                self.level_worst[level] = Worst(level, worst, float(emap.position[index]), index, label)
            if level == "strict":
                failing = emap.position[ratio > 1.0]
                if failing.size:
                    low = float(failing.min())
                    if self.first_strict_failure is None or low < self.first_strict_failure:
                        self.first_strict_failure = low

    def result(self, seconds: float) -> CaseResult:
        for level, result in self.levels.items():
            if level not in self.graded_levels:
                result.graded, result.passed = 0, True
            else:
                result.passed = not self.problems and result.ratio <= 1.0
        worst = None
        for level in self.graded_levels:  # the lowest failing level's worst, else the highest level's
            if level in self.level_worst:
                worst = self.level_worst[level]
                if worst.ratio > 1.0:
                    break
        outcome = CaseResult(self.case, self.levels, self.problems, worst, self.first_strict_failure, seconds)
        if outcome.status == "fail":
            outcome.outputs = self.outputs
        return outcome


def _describe_exception(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = ""
    if frames:
        parts = frames[-1].filename.replace("\\", "/").split("/")
        where = f" (at {'/'.join(parts[-2:])}:{frames[-1].lineno})"
    lines = str(error).strip().splitlines()
    return f"raised {type(error).__name__}: {lines[0] if lines else ''}{where}"


def execute(target: Target, case: Case, arrays: Arrays | None = None, timeout: float | None = None) -> CaseResult:
    """Run ``case`` on ``target`` and grade it. Whatever escapes the target (any exception, SystemExit,
    KeyboardInterrupt, a call that does not return within ``timeout`` seconds) is a failure of the case."""
    start = time.perf_counter()
    grader = Grader(case)
    if case.op not in target.ops():
        result = grader.result(0.0)
        result.not_applicable = f"{target.name} has no {case.op}"
        return result
    fw = target.framework
    why = fw.unsupported(case.dtype, target.device)
    if why is not None:
        result = grader.result(0.0)
        result.not_applicable = why
        return result
    arrays = arrays if arrays is not None else case.materialize()
    raised = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fw.precision(needs_64bit(case, arrays)), deadline(timeout):
                if case.op == "errors":
                    _errors(target, grader)
                else:
                    _run(target, case, arrays, grader)
        except NotApplicable as why:
            result = grader.result(0.0)
            result.not_applicable = f"{target.name} has no {why}"
            return result
        except CaseTimeout as error:
            raised = str(error)
            grader.problem(raised)
        except BaseException as error:  # SystemExit, KeyboardInterrupt... of the implementation
            raised = _describe_exception(error)
            grader.problem(raised)
    result = grader.result(time.perf_counter() - start)
    result.raised = raised
    result.warnings = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return result


# Invalid calls (SPEC.md, "Errors"): (what, keyword changes, inputs dtype, positions dtype, positions shape).
INVALID_CALLS: tuple[tuple[str, dict[str, Any], str, str, tuple[int, ...]], ...] = (
    ("odd head_dim", {"head_dim": 7}, "float32", "int32", (1, 2)),
    ("head_dim not the last axis", {"head_dim": 16}, "float32", "int32", (1, 2)),
    ("head_dim a float", {"head_dim": 8.0}, "float32", "int32", (1, 2)),
    ("rope_percentage > 1", {"rope_percentage": 1.5}, "float32", "int32", (1, 2)),
    ("rope_percentage NaN", {"rope_percentage": float("nan")}, "float32", "int32", (1, 2)),
    ("max_wavelength 0", {"max_wavelength": 0.0}, "float32", "int32", (1, 2)),
    ("max_wavelength inf", {"max_wavelength": float("inf")}, "float32", "int32", (1, 2)),
    ("scale_factor < 1", {"scale_factor": 0.5}, "float32", "int32", (1, 2)),
    ("unknown pairing", {"pairing": "rotate_half"}, "float32", "int32", (1, 2)),
    ("seq_axis -1", {"seq_axis": -1}, "float32", "int32", (1, 2)),
    ("rotated_pairs and rope_percentage", {"rotated_pairs": 2, "rope_percentage": 0.5}, "float32", "int32", (1, 2)),
    ("rotated_pairs > H/2", {"rotated_pairs": 5}, "float32", "int32", (1, 2)),
    ("positions do not broadcast", {}, "float32", "int32", (3,)),
    ("integer inputs", {}, "int32", "int32", (1, 2)),
    ("float16 positions", {}, "float32", "float16", (1, 2)),
)


def _errors(target: Target, grader: Grader) -> None:
    """Every invalid call raises the reference's exception type with the reference's message."""
    import p_rope.reference as reference

    fw, device = target.framework, target.device
    shape = (1, 2, 3, 8)
    for what, changes, x_dtype, p_dtype, p_shape in INVALID_CALLS:
        if p_dtype not in fw.dtypes and p_dtype.startswith("float"):
            continue  # e.g. array-api-strict has no float16
        x_np = np.ones(shape, dtype=x_dtype)
        p_np = np.zeros(p_shape, dtype=p_dtype)
        kw: dict[str, Any] = {"head_dim": 8, "max_wavelength": 10_000.0, "rope_percentage": 1.0} | changes

        def call(module: Any, x: Any, positions: Any, kw: dict[str, Any] = kw) -> None:
            kw = dict(kw)
            args = (kw.pop("head_dim"), kw.pop("max_wavelength"), kw.pop("rope_percentage"))
            module.apply_p_rope(x, positions, *args, **kw)

        try:
            call(reference, x_np, p_np)
            expected: tuple[str, str] | None = None
        except (TypeError, ValueError) as error:
            expected = (type(error).__name__, str(error))
        try:
            call(target.module, fw.to_native(x_np, device), fw.to_native(p_np, device))  # type: ignore[attr-defined]
            got: tuple[str, str] | None = None
        except Exception as error:
            got = (type(error).__name__, str(error))
        if got != expected:
            grader.problem(f"{what}: raised {got}, the reference raises {expected}")


def _grade_call(target: Target, call: Call, positions_np: np.ndarray, grader: Grader) -> None:
    """Grade the outputs of one apply-like call; check what it had to leave untouched."""
    fw = target.framework
    for label, native, original in call.untouched:
        now = fw.to_numpy(native)
        if now.dtype != original.dtype and now.dtype.kind == original.dtype.kind:  # e.g. JAX's int64 -> int32
            original = original.astype(now.dtype)
        if not _same_bits(now, original):
            grader.problem(f"{label}: modified by the call (SPEC.md section 5: arguments are never written)")
    for output in call.outputs:
        if not output.in_place and output.native_input is not None and fw.aliases(output.value, output.native_input):
            grader.problem(
                f"{output.label}: the input array itself (or a view of it) was returned; SPEC.md section 5 "
                "requires a new array, even at R = 0"
            )
        got = grader.check_output(target, output.value, output.original, output.label)
        if got is not None:
            grader.grade_values(got, output.original, positions_np, output.label)


def _run(target: Target, case: Case, arrays: Arrays, grader: Grader) -> None:
    op = case.op
    if op in ("apply", "special"):
        _grade_call(target, target.call(case, arrays), arrays.positions, grader)
        return
    fw, device = target.framework, target.device
    x_np, positions_np = arrays.inputs, arrays.positions
    x = fw.to_native(x_np, device)
    positions = fw.to_native(positions_np, device)

    def untouched(native: Any, original: np.ndarray, label: str) -> None:
        if not _same_bits(fw.to_numpy(native), original):
            grader.problem(f"{label}: the input was modified (SPEC.md: inputs are never written)")

    if op == "tables":
        out, tables = target.tables(case, x, positions)
        fw.synchronize(out)
        untouched(x, x_np, "inputs")
        expected = (*np.broadcast_shapes(positions_np.shape), case.pairs)
        for name, table in zip(("cos", "sin"), tables, strict=True):
            if tuple(table.shape) != expected:
                grader.problem(
                    f"tables.{name}: shape {tuple(table.shape)}, expected positions.shape + (R,) = {expected}"
                )
        got = grader.check_output(target, out, x_np)
        if got is not None:
            grader.grade_values(got, x_np, positions_np)
    elif op == "qk":
        assert arrays.k is not None
        k = fw.to_native(arrays.k, device)
        q_out, k_out = target.qk(case, x, k, positions)
        fw.synchronize(q_out)
        untouched(x, x_np, "q")
        untouched(k, arrays.k, "k")
        for label, value, original in (("q", q_out, x_np), ("k", k_out, arrays.k)):
            got = grader.check_output(target, value, original, label)
            if got is not None:
                grader.grade_values(got, original, positions_np, label)
    elif op == "inplace":
        out = fw.synchronize(target.inplace(case, x, positions))
        if out is not x:
            grader.problem("apply_p_rope_ did not return its inputs object")
        got = grader.check_output(target, x, x_np, "inputs (in place)")
        if got is not None:
            grader.grade_values(got, x_np, positions_np, "inputs (in place)")
    elif op == "grad":
        assert arrays.cotangent is not None
        g_np = arrays.cotangent
        g = fw.to_native(g_np, device)
        grad = fw.synchronize(target.grad(case, x, positions, g))
        got = grader.check_output(target, grad, g_np, "grad")
        if got is not None:
            # The vjp of a rotation by +angle is the rotation of the cotangent by -angle.
            grader.grade_values(got, g_np, -positions_np, "grad")
    else:
        raise ValueError(f"unknown op {op!r}")
