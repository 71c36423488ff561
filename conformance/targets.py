"""What the suite runs cases against: this project's backends, or any callable (``check``).

A target knows its framework and device and turns a case's native arrays into the call of one
operation (apply, tables, qk, inplace, grad); it raises ``NotApplicable`` for an operation it
does not have.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .cases import Arrays, Case
from .frameworks import Framework, framework

# name -> (framework, how to load the module); see conformance/README.md to add one.
BACKENDS: dict[str, tuple[str, str]] = {
    "reference": ("numpy", "module:p_rope.reference"),
    "array_api:numpy": ("numpy", "module:p_rope.backends.array_api"),
    "array_api:strict": ("array_api_strict", "module:p_rope.backends.array_api"),
    "array_api:jax": ("jax", "module:p_rope.backends.array_api"),
    "array_api:torch": ("torch", "module:p_rope.backends.array_api"),
    "jax": ("jax", "module:p_rope.backends.jax"),
    "torch": ("torch", "module:p_rope.backends.torch"),
    "vendor:jax": ("jax", "vendor:p_rope_jax.py"),
    "vendor:torch": ("torch", "vendor:p_rope_torch.py"),
}


class NotApplicable(Exception):
    """The target has no such operation (e.g. in-place on JAX, gradients in NumPy)."""


class UsageError(Exception):
    """The command was asked for something that cannot be done (exit status 2, never a grade)."""


class ImplementationError(Exception):
    """The implementation under test failed before a case ran (e.g. its file does not import)."""


@dataclasses.dataclass
class Output:
    """One array an implementation produced for a case, and the input it is graded against.

    value: the native array returned (or, in place, the buffer written, in the input's layout);
    native_input: the native array it was computed from (a returned output must not be that object).
    """

    label: str
    value: Any
    original: np.ndarray
    native_input: Any = None
    in_place: bool = False


@dataclasses.dataclass
class Call:
    """What one call of an apply-like operation produced: outputs to grade, and arrays that the call
    must leave untouched (label, native array, its values before the call)."""

    outputs: list[Output]
    untouched: list[tuple[str, Any, np.ndarray]]


def vendor_dir() -> Path:
    """Where the vendored single files live (P_ROPE_VENDOR_DIR overrides)."""
    override = os.environ.get("P_ROPE_VENDOR_DIR")
    if override:
        return Path(override)
    import p_rope.backends.vendor

    return Path(p_rope.backends.vendor.__file__).parent


def load_file(path: Path, module_name: str) -> ModuleType:
    """Import a Python file as a top-level module of its own (never as a p_rope submodule)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load_backend_module(name: str) -> ModuleType:
    _, where = BACKENDS[name]
    kind, _, target = where.partition(":")
    if kind == "module":
        return importlib.import_module(target)
    return load_file(vendor_dir() / target, "p_rope_vendored_" + Path(target).stem.removeprefix("p_rope_"))


@dataclasses.dataclass
class Target:
    """Base: a framework on a device, and the operations it offers."""

    name: str
    framework: Framework
    device: str

    def ops(self) -> set[str]:
        raise NotImplementedError

    def apply(self, case: Case, x: Any, positions: Any) -> Any:
        raise NotImplementedError

    def call(self, case: Case, arrays: Arrays) -> Call:
        """apply on the case's arrays: the output, and the inputs and positions it must leave alone."""
        fw = self.framework
        x, positions = fw.to_native(arrays.inputs, self.device), fw.to_native(arrays.positions, self.device)
        out = fw.synchronize(self.apply(case, x, positions))
        return Call(
            [Output("out", out, arrays.inputs, x)],
            [("inputs", x, arrays.inputs), ("positions", positions, arrays.positions)],
        )

    def tables(self, case: Case, x: Any, positions: Any) -> tuple[Any, tuple[Any, Any]]:
        raise NotApplicable("tables")

    def qk(self, case: Case, q: Any, k: Any, positions: Any) -> tuple[Any, Any]:
        raise NotApplicable("qk")

    def inplace(self, case: Case, x: Any, positions: Any) -> Any:
        raise NotApplicable("inplace")

    def grad(self, case: Case, x: Any, positions: Any, cotangent: Any) -> Any:
        if not self.framework.has_autodiff:
            raise NotApplicable("grad")
        fw = self.framework
        return fw.call(lambda v, p, g: fw.vjp(lambda u: self._apply(case, u, p), v, g), x, positions, cotangent)

    def _apply(self, case: Case, x: Any, positions: Any) -> Any:
        """apply without compiling (grad compiles the whole vjp)."""
        raise NotImplementedError


def _arguments(case: Case) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (case.head_dim, case.max_wavelength, case.rope_percentage), case.keywords()


@dataclasses.dataclass
class BackendTarget(Target):
    """One of this project's backends: the API of SPEC.md."""

    module: ModuleType | None = None

    def ops(self) -> set[str]:
        ops = {"apply", "special", "errors"}
        if hasattr(self.module, "p_rope_tables") and hasattr(self.module, "apply_p_rope_tables"):
            ops.add("tables")
        if hasattr(self.module, "apply_p_rope_qk"):
            ops.add("qk")
        if hasattr(self.module, "apply_p_rope_") and self.framework.mutable:
            ops.add("inplace")
        if self.framework.has_autodiff:
            ops.add("grad")
        return ops

    def _apply(self, case: Case, x: Any, positions: Any) -> Any:
        args, kw = _arguments(case)
        return self.module.apply_p_rope(x, positions, *args, **kw)  # type: ignore[union-attr]

    def apply(self, case: Case, x: Any, positions: Any) -> Any:
        return self.framework.call(lambda v, p: self._apply(case, v, p), x, positions)

    def tables(self, case: Case, x: Any, positions: Any) -> tuple[Any, tuple[Any, Any]]:
        m = self.module
        dtype = self.framework.dtype("float64") if case.dtype == "float64" else None

        def run(v: Any, p: Any) -> tuple[Any, tuple[Any, Any]]:
            tables = m.p_rope_tables(  # type: ignore[union-attr]
                p,
                case.head_dim,
                case.max_wavelength,
                case.rope_percentage,
                rotated_pairs=case.rotated_pairs,
                scale_factor=case.scale_factor,
                dtype=dtype,
            )
            out = m.apply_p_rope_tables(v, tables, pairing=case.pairing, seq_axis=case.seq_axis)  # type: ignore[union-attr]
            return out, tuple(tables)  # type: ignore[return-value]

        return self.framework.call(run, x, positions)  # type: ignore[no-any-return]

    def qk(self, case: Case, q: Any, k: Any, positions: Any) -> tuple[Any, Any]:
        args, kw = _arguments(case)
        run = lambda a, b, p: self.module.apply_p_rope_qk(a, b, p, *args, **kw)  # type: ignore[union-attr]
        return self.framework.call(run, q, k, positions)  # type: ignore[no-any-return]

    def inplace(self, case: Case, x: Any, positions: Any) -> Any:
        args, kw = _arguments(case)
        return self.module.apply_p_rope_(x, positions, *args, **kw)  # type: ignore[union-attr]


def backend_target(name: str, device: str) -> BackendTarget:
    """Load backend ``name`` (its framework is imported here, not before)."""
    if name not in BACKENDS:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    fw = framework(BACKENDS[name][0])
    return BackendTarget(name, fw, device, load_backend_module(name))


# ---------------------------------------------------------------------------------------------
# Any callable (`check`)

SIGNATURES = ("paper", "gemma", "ours")
OUR_KEYWORDS = ("rotated_pairs", "scale_factor", "pairing", "seq_axis")


def _import_module(where: str, spec: str) -> ModuleType:
    """Import ``where``: a missing module is a usage error, a module that fails while importing is the
    implementation's failure."""
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (where == missing or where.startswith(missing + ".")):
            raise UsageError(
                f"--impl {spec}: no module named {missing!r} (run from the directory that holds it, or give "
                f"the file: --impl path/to/file.py:function)"
            ) from None
        raise ImplementationError(f"importing {where} failed: ModuleNotFoundError: {error}") from error
    except BaseException as error:  # a syntax error, SystemExit... at import: the module's failure
        raise ImplementationError(f"importing {where} failed: {type(error).__name__}: {error}") from error


def load_callable(spec: str) -> tuple[Callable[..., Any], str]:
    """``module:function`` or ``path/to/file.py:function`` (dotted attributes allowed).

    Returns the callable and the import statement a reproducer script uses to get it. Raises
    UsageError when there is no such module, file or attribute, ImplementationError when the module
    fails while it is imported.
    """
    where, sep, attribute = spec.rpartition(":")
    if not sep or not where or not attribute:
        raise UsageError(f"--impl must look like module:function or path/file.py:function; got {spec!r}")
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where).resolve()
        if not path.is_file():
            raise UsageError(f"--impl {spec}: {path} does not exist")
        try:
            obj: Any = load_file(path, "p_rope_impl_under_test")
        except BaseException as error:  # the file's own failure at import
            raise ImplementationError(f"importing {path} failed: {type(error).__name__}: {error}") from error
        statement = (
            "import importlib.util\n"
            f"_spec = importlib.util.spec_from_file_location('impl_under_test', {str(path)!r})\n"
            "_module = importlib.util.module_from_spec(_spec)\n"
            "_spec.loader.exec_module(_module)\n"
            f"impl = _module.{attribute}\n"
        )
    else:
        obj = _import_module(where, spec)
        statement = f"import {where}\nimpl = {where}.{attribute}\n"
    parent = None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"--impl {spec}: {getattr(obj, '__name__', where)} has no attribute {part!r}")
        parent, obj = obj, getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"--impl {spec} is not callable")
    if inspect.isclass(parent) and inspect.isfunction(obj) and obj.__qualname__ != f"{parent.__qualname__}.{part}":
        obj = member_of(parent, part, obj)
    return obj, statement


def member_of(owner: type, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a method ``owner`` inherits) named as ``owner``'s member, so that whatever is
    built around the method (a Keras layer: frameworks.keras_layer_class) is ``owner``, not the base
    class that defines it. Calls go straight to ``function``; its signature is read through."""

    @functools.wraps(function)
    def member(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    member.__module__ = owner.__module__
    member.__qualname__ = f"{owner.__qualname__}.{name}"
    return member


def parameter_names(function: Callable[..., Any]) -> tuple[list[str], bool]:
    """The parameter names of a callable (a class: its __init__; an object: its __call__), and whether
    it takes **kwargs. ([], False) when they cannot be read."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return [], False
    names = [n for n, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def detect_signature(function: Callable[..., Any]) -> tuple[str, frozenset[str]]:
    """("paper" | "gemma" | "ours", the keywords of this project's signature it accepts).

    Each keyword opts in its own cases only; a function with **kwargs (or all four keywords) is taken
    to have this project's whole signature, batch axes and broadcast positions included."""
    names, var_keyword = parameter_names(function)
    if "base_frequency" in names:
        return "gemma", frozenset({"scale_factor", "rope_proportion"} & set(names))
    if var_keyword:
        return "ours", frozenset(OUR_KEYWORDS)
    accepted = frozenset(k for k in OUR_KEYWORDS if k in names)
    return ("ours" if accepted else "paper"), accepted


@dataclasses.dataclass
class CallableTarget(Target):
    """A third party's p-RoPE function, called with the paper's, Gemma's or this project's signature."""

    function: Callable[..., Any] | None = None
    signature: str = "paper"
    keywords: frozenset[str] = frozenset()
    compile: bool = False  # --compile: torch.compile around the callable (JAX: jax.jit, never eagerly)
    autocast: str | None = None  # --autocast bfloat16: the call runs under the framework's autocast
    _compiled: Callable[..., Any] | None = dataclasses.field(default=None, repr=False)

    @property
    def convention(self) -> str:
        return self.signature

    def ops(self) -> set[str]:
        return {"apply", "special"}

    def supports(self, case: Case) -> str | None:
        """None if the case can be expressed with this signature, else why not. Each keyword of this
        project's signature opts in the cases that need it; batch axes other than one and positions
        broadcast over the batch need the whole signature (all four keywords, or **kwargs)."""
        missing = set(case.keywords()) - set(self.keywords)
        if self.signature == "gemma" and case.pairs != case.head_dim // 2 and "rope_proportion" not in self.keywords:
            missing.add("rope_proportion")
        if missing:
            return "needs keyword " + ", ".join(sorted(missing))
        whole = self.signature == "ours" and set(self.keywords) == set(OUR_KEYWORDS)
        if not whole and (len(case.shape) != 4 or case.positions.form != "full"):
            return "needs [B, L, N, H] inputs / [B, L] positions"
        return None

    def callable(self) -> Callable[..., Any]:
        """The function under test, compiled once when --compile asks for it."""
        assert self.function is not None
        if not self.compile:
            return self.function
        if self._compiled is None:
            self._compiled = self.framework.compile(self.function)
        return self._compiled

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function under test (compiled, under autocast, as asked)."""
        with self.framework.autocast(self.autocast, self.device):
            return self.callable()(*args, **kwargs)

    def _apply(self, case: Case, x: Any, positions: Any) -> Any:
        f = self.invoke
        if self.signature == "gemma":
            kw: dict[str, Any] = {"scale_factor": case.scale_factor} if case.scale_factor != 1.0 else {}
            if "rope_proportion" in self.keywords:
                kw["rope_proportion"] = case.rope_percentage
            return f(x, positions, base_frequency=case.max_wavelength, **kw)
        args, kw = _arguments(case)
        return f(x, positions, *args, **kw)

    def apply(self, case: Case, x: Any, positions: Any) -> Any:
        allow_eager = not self.compile
        return self.framework.call(lambda v, p: self._apply(case, v, p), x, positions, allow_eager=allow_eager)
