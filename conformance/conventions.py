"""The call conventions outside p-RoPE code comes in, each as a ``check`` target (``--convention``).

* ``paper``, ``gemma``, ``ours``: one function from inputs and positions (targets.CallableTarget).
* ``hf``: a cos/sin-table API, Hugging Face's ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=...)``
  (or ``(x, cos, sin, unsqueeze_dim=...)``), cos/sin ``[B, L, H]`` built by a rotary module the user
  names (``--rotary``, called ``rotary(x, position_ids)``) or from SPEC.md's tables.
* ``vllm``: an engine's in-place kernel over flattened tokens, ``layer(positions, query, key)`` with
  query ``[T, N*H]``, key ``[T, N_k*H]`` and a cos/sin cache indexed by position: the layer is built
  by the callable named (a factory taking the case's parameters by name), or the callable is the
  kernel itself and takes the cache (``cos_sin_cache``) the suite builds.
* ``flash_attn``: ``apply_rotary_emb(x, cos, sin, interleaved, inplace, seqlen_offsets, cu_seqlens)``
  with cos/sin ``[S, H/2]`` (full width: cos 1, sin 0 on NoPE pairs) indexed by seqlen_offsets + l.
* ``angles``: rotary-embedding-torch's ``apply_rotary_emb(freqs, t, seq_dim=...)``, freqs the angle of
  each lane (pairs interleaved), from ``--rotary`` (``rotary(positions)``) or SPEC.md's frequencies.
* ``keras``: a Keras 3 layer (class or factory), called ``layer(x, positions=...)``, or a method of a
  layer class (``Layer.method``), called on a layer built from the case's parameters; Keras's dtype
  policy is the inputs' dtype (``mixed_bfloat16`` under ``--autocast bf16``).

A rotary module or layer factory receives the case's parameters under the names it declares
(``FACTORY_NAMES``); a transformers class taking a ``config`` gets the configuration it needs, built
from the parameters (``hf_config_arguments``). Cases a convention cannot express are "not tested".
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any

import numpy as np

from .cases import Arrays, Case
from .frameworks import Framework, keras_layer_class
from .targets import Call, CallableTarget, Output, UsageError, detect_signature, parameter_names

CONVENTIONS = {
    "paper": "f(inputs, positions, head_dim, max_wavelength, rope_percentage)",
    "gemma": "f(inputs, positions, *, base_frequency, scale_factor=..., rope_proportion=...)",
    "ours": "f(inputs, positions, head_dim, max_wavelength, rope_percentage, *, <keywords it accepts of "
    "rotated_pairs, scale_factor, pairing, seq_axis>)",
    "hf": "f(q, k, cos, sin, unsqueeze_dim=...) -> (q, k) or f(x, cos, sin, unsqueeze_dim=...) -> x; "
    "cos/sin [B, L, H] from --rotary (rotary(x, position_ids)) or SPEC.md's tables",
    "vllm": "layer(positions, query, key) on [T, N*H] tokens, in place or returning (query, key); the layer "
    "from a factory taking the parameters by name, or a kernel taking cos_sin_cache",
    "flash_attn": "f(x, cos, sin, interleaved=..., inplace=..., seqlen_offsets=..., cu_seqlens=...), cos/sin [S, H/2]",
    "angles": "f(freqs, t, seq_dim=...), freqs [..., L, H] angles (pairs interleaved) from --rotary "
    "(rotary(positions)) or SPEC.md's frequencies",
    "onnx": "ONNX RotaryEmbedding (opset 23) in a one-node graph run by the session class named "
    "(onnxruntime:InferenceSession), full-width cos/sin caches",
    "keras": "a Keras layer built from the parameters it names, layer(x, positions=...), or a method of a layer "
    "class (Layer.method(layer, x, start_index=0, positions=...))",
}

# The names under which a factory (rotary module, engine layer) receives each parameter.
FACTORY_NAMES: dict[str, tuple[str, ...]] = {
    "head_dim": ("head_dim", "head_size", "dim"),
    "rotary_dim": ("rotary_dim",),
    "max_wavelength": (
        "max_wavelength",
        "base",
        "rope_theta",
        "theta",
        "base_frequency",
        "max_timescale",
        "rope_wavelength",
        "rope_max_wavelength",
    ),
    "rope_percentage": (
        "rope_percentage",
        "partial_rotary_factor",
        "rope_proportion",
        "rotary_percent",
        "rope_partial_rotary_factor",
    ),
    "scale_factor": ("scale_factor", "factor", "scaling_factor", "rope_scaling_factor"),
    "max_position": ("max_position", "max_position_embeddings"),
    "is_neox_style": ("is_neox_style", "is_neox"),
    "dtype": ("dtype",),
    "frequencies": ("custom_freqs", "inv_freq"),
}
CACHE_LIMIT = 2**24  # entries of a position-indexed cos/sin cache the suite builds or asks for


def full_tables(case: Case, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SPEC.md's cos and sin of every pair (H/2; cos 1 and sin 0 on NoPE pairs), float64, exact."""
    from p_rope.reference import p_rope_tables

    cos, sin = p_rope_tables(
        np.asarray(positions, dtype=np.float64),
        case.head_dim,
        case.max_wavelength,
        rotated_pairs=case.pairs,
        scale_factor=case.scale_factor,
    )
    nope = case.head_dim // 2 - case.pairs
    pad = [(0, 0)] * (cos.ndim - 1) + [(0, nope)]
    return np.pad(cos, pad, constant_values=1.0), np.pad(sin, pad, constant_values=0.0)


def spec_frequencies(case: Case) -> np.ndarray:
    from p_rope.reference import frequencies

    return frequencies(case.head_dim, case.max_wavelength, rotated_pairs=case.pairs, scale_factor=case.scale_factor)


def table_dtype(case: Case) -> str:
    """The dtype of a cache or angle table the suite builds: float64 for float64 inputs, else float32."""
    return "float64" if case.dtype == "float64" else "float32"


def full_positions(case: Case, positions: np.ndarray) -> np.ndarray:
    return np.broadcast_to(positions, (*case.batch_shape, case.seq_len)).copy()


def _opaque(function: Callable[..., Any]) -> bool:
    """Whether a callable's signature is only ``(*args, **kwargs)`` (it says nothing of its call)."""
    try:
        kinds = [p.kind for p in inspect.signature(function).parameters.values()]
    except (TypeError, ValueError):
        return False
    return inspect.Parameter.VAR_POSITIONAL in kinds and set(kinds) <= {
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    }


def call_signature(function: Callable[..., Any]) -> Callable[..., Any]:
    """The callable whose signature says how ``function`` is called: itself, or, where that is only
    ``(*args, **kwargs)`` (a hub-kernel module, a decorator's wrapper), what it wraps: ``__wrapped__``,
    its ``forward`` method, or the one function that forward closes over."""
    current = function
    for _ in range(4):
        if not _opaque(current):
            break
        inner = getattr(current, "__wrapped__", None) or getattr(current, "forward", None)
        if inner is None:
            cells = getattr(getattr(current, "__func__", current), "__closure__", None) or ()
            functions = [c.cell_contents for c in cells if inspect.isfunction(c.cell_contents)]
            inner = functions[0] if len(functions) == 1 else None
        if inner is None or inner is current:
            break
        current = inner
    return current


def _names(function: Callable[..., Any]) -> tuple[list[str], bool]:
    """parameter_names of what ``function`` wraps, where its own signature says nothing (call_signature)."""
    return parameter_names(call_signature(function))


def _accepts(function: Callable[..., Any], name: str) -> bool:
    names, var_keyword = _names(function)
    return name in names or var_keyword


# ---------------------------------------------------------------------------------------------
# Factories: rotary modules and engine layers built at a case's parameters


def _parameter_values(case: Case, fw: Framework, device: str, max_position: int) -> dict[str, Any]:
    return {
        "head_dim": case.head_dim,
        "rotary_dim": case.head_dim,  # full width: p-RoPE keeps the NoPE pairs in place (cos 1, sin 0)
        "max_wavelength": case.max_wavelength,
        "rope_percentage": case.rope_percentage,
        "scale_factor": case.scale_factor,
        "max_position": max_position,
        "is_neox_style": case.pairing == "split_half",
        "dtype": fw.dtype(case.dtype),
        "frequencies": fw.to_native(spec_frequencies(case).astype(table_dtype(case)), device),
    }


def _config_class(factory: Callable[..., Any]) -> Any:
    """The class annotated for a transformers module's ``config`` argument."""
    init = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # unresolvable annotations: read the module's globals below
        hints = {}
    config = hints.get("config")
    if config is None:
        annotation = inspect.signature(init).parameters["config"].annotation
        module = inspect.getmodule(factory)
        config = getattr(module, str(annotation).strip("'\""), None) if isinstance(annotation, str) else annotation
    if not inspect.isclass(config):
        raise UsageError(f"{getattr(factory, '__name__', factory)} takes a config whose class cannot be found")
    return config


def hf_config_arguments(factory: Callable[..., Any], case: Case, max_position: int, layer_type: str) -> dict[str, Any]:
    """The keywords of the transformers configuration a rotary class needs, from the case's parameters:
    head_dim H, rope_theta w, partial_rotary_factor p and factor s ("proportional" RoPE; "default" at
    p = 1, s = 1), one attention head, per layer type when the configuration has layer types."""
    config_class = _config_class(factory)
    plain = case.rope_percentage == 1.0 and case.scale_factor == 1.0
    rope: dict[str, Any] = {"rope_type": "default" if plain else "proportional", "rope_theta": case.max_wavelength}
    if not plain:
        rope["partial_rotary_factor"] = case.rope_percentage
    if case.scale_factor != 1.0:
        rope["factor"] = case.scale_factor
    fields = set(getattr(config_class, "__dataclass_fields__", {})) | set(getattr(config_class, "__annotations__", {}))
    layered = "layer_types" in fields
    kwargs: dict[str, Any] = {
        "head_dim": case.head_dim,
        "hidden_size": case.head_dim,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "num_hidden_layers": 1,
        "max_position_embeddings": max_position,
        "rope_parameters": {layer_type: rope} if layered else rope,
    }
    if layered:
        kwargs |= {"layer_types": [layer_type], "global_head_dim": case.head_dim}
    return kwargs


def factory_arguments(
    factory: Callable[..., Any], case: Case, fw: Framework, device: str, max_position: int, layer_type: str
) -> tuple[Any, dict[str, Any]]:
    """What ``factory`` is called with: (None, the case's parameters under the names it declares
    (FACTORY_NAMES)), or (the transformers configuration class it takes, that configuration's keywords)."""
    names, var_keyword = parameter_names(factory)
    if "config" in names:
        return _config_class(factory), hf_config_arguments(factory, case, max_position, layer_type)
    values = _parameter_values(case, fw, device, max_position)
    kwargs = {}
    for ours, synonyms in FACTORY_NAMES.items():
        found = next((n for n in synonyms if n in names), ours if var_keyword else None)
        if found is not None:
            kwargs[found] = values[ours]
    return None, kwargs


def build(
    factory: Callable[..., Any], case: Case, fw: Framework, device: str, max_position: int, layer_type: str
) -> Any:
    """Call ``factory`` with the case's parameters under the names it declares (FACTORY_NAMES), or with
    the transformers configuration it needs."""
    config_class, kwargs = factory_arguments(factory, case, fw, device, max_position, layer_type)
    module = factory(config_class(**kwargs)) if config_class is not None else factory(**kwargs)
    to = getattr(module, "to", None)
    if callable(to) and fw.name == "torch":
        module = to(device)
    return module


# ---------------------------------------------------------------------------------------------
# The table and engine conventions


@dataclasses.dataclass
class ConventionTarget(CallableTarget):
    """Base of the conventions that are not one apply call: the rotary module or layer factory
    (``--rotary``) and the layer type passed to a transformers rotary class."""

    rotary: Callable[..., Any] | None = None
    layer_type: str = "full_attention"
    _built: dict[tuple[Any, ...], Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def convention(self) -> str:
        return self.signature

    def built(self, factory: Callable[..., Any], case: Case, max_position: int) -> Any:
        key = (id(factory), case.head_dim, case.max_wavelength, case.rope_percentage, case.pairs,
               case.scale_factor, case.pairing, case.dtype, max_position)  # fmt: skip
        if key not in self._built:
            self._built[key] = build(factory, case, self.framework, self.device, max_position, self.layer_type)
        return self._built[key]

    def common(self, case: Case) -> str | None:
        if len(case.shape) != 4:
            return "needs [B, L, N, H] or [B, N, L, H] inputs"
        return None

    def native(self, array: np.ndarray) -> Any:
        return self.framework.to_native(array, self.device)

    @staticmethod
    def max_position(positions: np.ndarray) -> int:
        """The max_position a rotary module is built with for these positions: the largest |p|, plus one."""
        return int(np.abs(positions).max(initial=0)) + 1

    def second_input(self, case: Case, arrays: Arrays) -> np.ndarray:
        """k for a (q, k) call: the last head of the inputs (one key head, as in grouped attention)."""
        axis = -2 if case.seq_axis == -3 else -3
        return np.take(arrays.inputs, [arrays.inputs.shape[axis] - 1], axis=axis).copy()


@dataclasses.dataclass
class HfTarget(ConventionTarget):
    """cos/sin-table API: f(q, k, cos, sin, unsqueeze_dim=...) or f(x, cos, sin, unsqueeze_dim=...)."""

    def supports(self, case: Case) -> str | None:
        assert self.function is not None
        why = self.common(case)
        if why or case.pairing != "split_half":
            return why or "needs pairing interleaved (rotate_half pairs i with i + H/2)"
        if case.seq_axis == -3 and not _accepts(self.function, "unsqueeze_dim"):
            return "needs unsqueeze_dim ([B, L, N, H] inputs)"
        if self.rotary is not None:
            if case.rotated_pairs is not None:
                return "needs rotated_pairs (a rotary module takes rope_percentage)"
            if case.positions.dtype.startswith("float"):
                return "needs real positions (position_ids are integers)"
        return None

    def passes_layer_type(self, module: Any) -> bool:
        return _accepts(getattr(module, "forward", module), "layer_type")

    def spec_tables(self, case: Case, position_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cos/sin [B, L, H] from SPEC.md's tables, in the inputs' dtype (as Hugging Face's rotary
        modules return them)."""
        cos64, sin64 = full_tables(case, position_ids)
        return tuple(np.concatenate([t, t], axis=-1).astype(arrays_dtype(case)) for t in (cos64, sin64))  # type: ignore[return-value]

    def cos_sin(self, case: Case, x: Any, positions: np.ndarray) -> tuple[Any, Any, list[tuple[str, Any, np.ndarray]]]:
        position_ids = full_positions(case, positions)
        if self.rotary is not None:
            module = self.built(self.rotary, case, max_position=self.max_position(position_ids))
            ids = self.native(position_ids.astype(np.int64))
            if self.passes_layer_type(module):
                cos, sin = module(x, ids, self.layer_type)
            else:
                cos, sin = module(x, ids)
            return cos, sin, [("position_ids", ids, position_ids.astype(np.int64))]
        cos_np, sin_np = self.spec_tables(case, position_ids)
        cos, sin = self.native(cos_np), self.native(sin_np)
        return cos, sin, [("cos", cos, cos_np), ("sin", sin, sin_np)]

    def call_keywords(self, case: Case) -> dict[str, Any]:
        assert self.function is not None
        return {"unsqueeze_dim": 2 if case.seq_axis == -3 else 1} if _accepts(self.function, "unsqueeze_dim") else {}

    @property
    def q_and_k(self) -> bool:
        """Whether the function takes (q, k, cos, sin) (else (x, cos, sin))."""
        assert self.function is not None
        names, _ = _names(self.function)
        return len(names) >= 4 and names[2:4] == ["cos", "sin"]

    def call(self, case: Case, arrays: Arrays) -> Call:
        f = self.invoke
        assert self.function is not None
        q = self.native(arrays.inputs)
        cos, sin, watched = self.cos_sin(case, q, arrays.positions)
        kw = self.call_keywords(case)
        watched = [("q", q, arrays.inputs), *watched]
        if self.q_and_k:
            k_np = self.second_input(case, arrays)
            k = self.native(k_np)
            q_out, k_out = f(q, k, cos, sin, **kw)
            outputs = [Output("q", q_out, arrays.inputs, q), Output("k", k_out, k_np, k)]
            watched.append(("k", k, k_np))
        else:
            outputs = [Output("out", f(q, cos, sin, **kw), arrays.inputs, q)]
        return Call(outputs, watched)


def arrays_dtype(case: Case) -> Any:
    from .cases import numpy_dtype

    return numpy_dtype(case.dtype)


def _cache_rows(case: Case, positions: np.ndarray) -> int | None:
    """Rows of a position-indexed cache for these positions (None: not non-negative integers, or too large)."""
    if case.positions.dtype.startswith("float") or positions.size == 0 or positions.min() < 0:
        return None
    rows = int(positions.max()) + 1
    return rows if rows * case.head_dim <= CACHE_LIMIT else None


@dataclasses.dataclass
class VllmTarget(ConventionTarget):
    """Engine style: layer(positions, query, key) on flattened tokens, in place or returning (query, key)."""

    @property
    def is_kernel(self) -> bool:
        assert self.function is not None
        names, _ = _names(self.function)
        return names[:3] == ["positions", "query", "key"]

    def supports(self, case: Case) -> str | None:
        why = self.common(case)
        if why or case.seq_axis != -3:
            return why or "needs [B, L, N, H] inputs (tokens are flattened [T, N*H])"
        if case.positions.dtype.startswith("float"):
            return "needs real positions (a cache is indexed by integer positions)"
        if case.positions.low < 0:
            return "needs negative positions (a cache is indexed by positions >= 0)"
        if not self.is_kernel and case.rotated_pairs is not None:
            return "needs rotated_pairs (a layer factory takes rope_percentage)"
        if _cache_rows(case, case.materialize().positions) is None:
            return f"needs a cos/sin cache of more than {CACHE_LIMIT} entries"
        return None

    def layer(self, case: Case, rows: int) -> Callable[..., Any]:
        """What is called: the kernel itself, or the layer the factory builds for a cache of ``rows``."""
        assert self.function is not None
        return self.function if self.is_kernel else self.built(self.function, case, max_position=rows)

    def plan(self, case: Case, x_shape: tuple[int, ...], positions: np.ndarray) -> VllmPlan:
        """How the check calls the kernel or layer for this case: the token positions and offsets, the
        cache a kernel is given, the keywords."""
        batch, length, _, head_dim = x_shape
        tokens = full_positions(case, positions).reshape(-1).astype(np.int64)
        rows = _cache_rows(case, tokens)
        assert rows is not None
        offsets = None
        layer = self.layer(case, rows)
        if case.positions.kind == "offsets" and _accepts(getattr(layer, "forward", layer), "offsets"):
            # per-sequence offsets: positions 0 .. L-1 in each row, the row's first position as its offset
            offsets = np.repeat(tokens.reshape(batch, length)[:, :1], length, axis=1).reshape(-1)
            tokens = tokens - offsets
        if not self.is_kernel:
            return VllmPlan(tokens, offsets, rows, None, {})
        names, _ = _names(layer)
        cache = None
        if "cos_sin_cache" in names:
            cos, sin = full_tables(case, np.arange(rows))
            cache = np.concatenate([cos, sin], axis=-1).astype(table_dtype(case))
        keywords = {"head_size": head_dim, "is_neox": case.pairing == "split_half"}
        return VllmPlan(tokens, offsets, rows, cache, {k: v for k, v in keywords.items() if k in names})

    def call(self, case: Case, arrays: Arrays) -> Call:
        x_np, k_np = arrays.inputs, self.second_input(case, arrays)
        batch, length, heads, head_dim = x_np.shape
        plan = self.plan(case, x_np.shape, arrays.positions)
        query = self.native(x_np.reshape(batch * length, heads * head_dim))
        key = self.native(k_np.reshape(batch * length, head_dim))
        pos = self.native(plan.positions)
        extra: dict[str, Any] = {} if plan.offsets is None else {"offsets": self.native(plan.offsets)}
        watched: list[tuple[str, Any, np.ndarray]] = [("positions", pos, plan.positions)]
        if self.is_kernel:
            if plan.cache is not None:
                cache = self.native(plan.cache)
                extra["cos_sin_cache"] = cache
                watched.append(("cos_sin_cache", cache, plan.cache))
            result = self.invoke(pos, query, key, **plan.keywords, **extra)
        else:
            result = self.layer(case, plan.rows)(pos, query, key, **extra)
        if isinstance(result, tuple) and len(result) == 2 and result[0] is not None:
            q_out, k_out = result
            in_place = False
        else:
            q_out, k_out, in_place = query, key, True
        outputs = [
            Output("query", q_out.reshape(x_np.shape), x_np, None, in_place),
            Output("key", k_out.reshape(k_np.shape), k_np, None, in_place),
        ]
        return Call(outputs, watched)


@dataclasses.dataclass(frozen=True)
class VllmPlan:
    """The vllm convention's call of one case: int64 token positions [T] (less the offsets where the
    layer takes per-sequence offsets), those offsets or None, the cache's rows, and for a kernel the
    cos/sin cache [rows, H] (cos then sin, full width; None where it takes none) and the keywords it
    takes of head_size and is_neox."""

    positions: np.ndarray
    offsets: np.ndarray | None
    rows: int
    cache: np.ndarray | None
    keywords: dict[str, Any]


@dataclasses.dataclass
class FlashTarget(ConventionTarget):
    """flash-attn: f(x, cos, sin, interleaved, inplace, seqlen_offsets, cu_seqlens, max_seqlen)."""

    def supports(self, case: Case) -> str | None:
        why = self.common(case)
        if why or case.seq_axis != -3:
            return why or "needs [B, L, N, H] inputs"
        if case.pairing == "interleaved" and not _accepts(self.function, "interleaved"):  # type: ignore[arg-type]
            return "needs interleaved"
        return None

    def plan(self, case: Case, x_shape: tuple[int, ...], positions: np.ndarray) -> FlashPlan:
        """How the check calls the function for this case: the tables, the offsets, the options."""
        batch, length = x_shape[0], x_shape[1]
        positions = full_positions(case, positions)
        rows = _cache_rows(case, positions)
        if case.positions.kind == "offsets" and rows is not None and rows + length <= 2**16:
            cos64, sin64 = full_tables(case, np.arange(int(positions.max()) + 1))
            offsets, indexing = positions[:, 0].astype(np.int32), "cos/sin by position; offsets: each row's first"
        else:
            cos64, sin64 = full_tables(case, positions.reshape(-1))
            offsets, indexing = (np.arange(batch) * length).astype(np.int32), "a cos/sin row per token; offsets: b * L"
        dtype = arrays_dtype(case)
        return FlashPlan(
            cos=cos64.astype(dtype),
            sin=sin64.astype(dtype),
            offsets=offsets,
            indexing=indexing,
            interleaved=case.pairing == "interleaved",
            in_place=_accepts(self.function, "inplace") and case.seed % 2 == 1,  # type: ignore[arg-type]
            varlen=_accepts(self.function, "cu_seqlens") and case.seed % 3 == 0,  # type: ignore[arg-type]
        )

    def call(self, case: Case, arrays: Arrays) -> Call:
        assert self.function is not None
        x_np = arrays.inputs
        batch, length, heads, head_dim = x_np.shape
        plan = self.plan(case, x_np.shape, arrays.positions)
        x, cos, sin = self.native(x_np), self.native(plan.cos), self.native(plan.sin)
        kw: dict[str, Any] = {"seqlen_offsets": self.native(plan.offsets)}
        if plan.interleaved:
            kw["interleaved"] = True
        if plan.in_place:
            kw["inplace"] = True
        arg = x
        if plan.varlen:
            arg = x.reshape(batch * length, heads, head_dim)
            kw |= {"cu_seqlens": self.native((np.arange(batch + 1) * length).astype(np.int32)), "max_seqlen": length}
        out = self.invoke(arg, cos, sin, **kw)
        value = (arg if plan.in_place else out).reshape(x_np.shape)
        watched = [("cos", cos, plan.cos), ("sin", sin, plan.sin)] + ([] if plan.in_place else [("x", x, x_np)])
        label = "x (in place)" if plan.in_place else "out"
        return Call([Output(label, value, x_np, x, plan.in_place)], watched)


@dataclasses.dataclass(frozen=True)
class FlashPlan:
    """The flash_attn convention's call of one case: cos/sin [S, H/2] in the inputs' dtype, the int32
    seqlen_offsets, how rows are indexed (words), and the options passed."""

    cos: np.ndarray
    sin: np.ndarray
    offsets: np.ndarray
    indexing: str
    interleaved: bool
    in_place: bool
    varlen: bool


@dataclasses.dataclass
class AnglesTarget(ConventionTarget):
    """rotary-embedding-torch: f(freqs, t, seq_dim=...) with per-lane angles, pairs interleaved."""

    def supports(self, case: Case) -> str | None:
        why = self.common(case)
        if why or case.pairing != "interleaved":
            return why or "needs pairing split_half (this convention rotates pairs (2i, 2i + 1))"
        if self.rotary is not None and case.rotated_pairs is not None:
            return "needs rotated_pairs (a rotary module takes rope_percentage)"
        return None

    def call(self, case: Case, arrays: Arrays) -> Call:
        assert self.function is not None
        x_np = arrays.inputs
        if self.rotary is not None:
            given = self.rotary_positions(case, arrays.positions)
            module = self.built(self.rotary, case, max_position=self.max_position(given))
            angles = module(self.native(given))
            watched: list[tuple[str, Any, np.ndarray]] = []
        else:
            angles_np = self.spec_angles(case, arrays.positions)
            angles = self.native(angles_np)
            watched = [("freqs", angles, angles_np)]
        freqs = angles.reshape(self.with_heads_axis(case, angles.shape))
        t = self.native(x_np)
        out = self.invoke(freqs, t, **self.call_keywords(case))
        return Call([Output("out", out, x_np, t)], [("t", t, x_np), *watched])

    @staticmethod
    def spec_angles(case: Case, positions: np.ndarray) -> np.ndarray:
        """The angle of every rotated lane, [B..., L, 2R] (lanes 2i and 2i + 1: position x freq_i),
        computed in the table dtype from SPEC's frequencies."""
        dtype = table_dtype(case)
        angles = full_positions(case, positions).astype(dtype)[..., None] * spec_frequencies(case).astype(dtype)
        return np.repeat(angles, 2, axis=-1)

    @staticmethod
    def rotary_positions(case: Case, positions: np.ndarray) -> np.ndarray:
        """The positions a rotary module is called on: [B..., L] in the table dtype."""
        return full_positions(case, positions).astype(table_dtype(case))

    @staticmethod
    def heads_axis(case: Case) -> int:
        """Where the angles get a heads axis of 1: where the inputs have theirs."""
        return 1 if case.seq_axis == -2 else 2

    @classmethod
    def with_heads_axis(cls, case: Case, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The angles' shape with a heads axis of 1 where the inputs have theirs."""
        axis = cls.heads_axis(case)
        return (*shape[:axis], 1, *shape[axis:])

    def call_keywords(self, case: Case) -> dict[str, Any]:
        return {"seq_dim": case.seq_axis} if _accepts(self.function, "seq_dim") else {}  # type: ignore[arg-type]


def onnx_model(inputs: list[tuple[str, np.ndarray]], attributes: dict[str, int]) -> bytes:
    """A one-node ONNX graph (opset 23): RotaryEmbedding of the named inputs (X, cos_cache, sin_cache
    and, where given, position_ids; any leading sizes) into Y, with ``attributes``; serialized.
    Reproducers hold this function's source as it is."""
    import onnx
    from onnx import helper

    def value(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), [None] * array.ndim)

    node = helper.make_node("RotaryEmbedding", [name for name, _ in inputs], ["Y"], **attributes)  # type: ignore[arg-type]
    output = value("Y", inputs[0][1])
    graph = helper.make_graph([node], "p_rope_check", [value(name, array) for name, array in inputs], [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclasses.dataclass
class OnnxTarget(ConventionTarget):
    """ONNX's RotaryEmbedding (opset 23): a one-node graph per parameter set (onnx_model), run by the
    session class named (onnxruntime's ``InferenceSession``), with full-width caches (cos 1, sin 0 on
    NoPE pairs)."""

    def supports(self, case: Case) -> str | None:
        return self.common(case)

    def plan(self, case: Case, x_np: np.ndarray, positions: np.ndarray) -> OnnxPlan:
        """How the check runs this case: the graph's inputs (X, the caches in the inputs' dtype, and
        position_ids where the caches are indexed by position) and attributes."""
        positions = full_positions(case, positions)
        batch, length = positions.shape
        rows = _cache_rows(case, positions)
        by_id = rows is not None and rows * case.head_dim <= 2**22 and case.seed % 2 == 0
        if by_id and rows is not None:  # a position-indexed cache and position_ids
            cos64, sin64 = full_tables(case, np.arange(rows))
        else:  # one cos/sin row per token ([B, L, H/2], no position_ids): any position
            cos64, sin64 = full_tables(case, positions)
        attributes = {"interleaved": int(case.pairing == "interleaved")}
        if case.seq_axis == -3:  # [B, L, N*H] with num_heads
            x = x_np.reshape(batch, length, case.heads * case.head_dim)
            attributes["num_heads"] = case.heads
        else:  # [B, N, L, H]
            x = x_np
        inputs = [("X", x), ("cos_cache", cos64.astype(x_np.dtype)), ("sin_cache", sin64.astype(x_np.dtype))]
        if by_id:
            inputs.append(("position_ids", positions.astype(np.int64)))
        return OnnxPlan(inputs, attributes)

    def _session(self, case: Case, plan: OnnxPlan) -> Any:
        key = ("onnx", case.dtype, tuple((n, a.ndim) for n, a in plan.inputs), tuple(sorted(plan.attributes.items())))
        if key not in self._built:
            self._built[key] = self.invoke(onnx_model(plan.inputs, plan.attributes), providers=ONNX_PROVIDERS)
        return self._built[key]

    def call(self, case: Case, arrays: Arrays) -> Call:
        x_np = arrays.inputs
        plan = self.plan(case, x_np, arrays.positions)
        feeds = {name: array.copy() for name, array in plan.inputs}
        (out,) = self._session(case, plan).run(["Y"], feeds)
        watched = [(name, feeds[name], array) for name, array in plan.inputs]
        return Call([Output("out", np.asarray(out).reshape(x_np.shape), x_np, feeds["X"])], watched)


ONNX_PROVIDERS = ["CPUExecutionProvider"]


@dataclasses.dataclass(frozen=True)
class OnnxPlan:
    """The onnx convention's run of one case: the graph's named inputs and its attributes."""

    inputs: list[tuple[str, np.ndarray]]
    attributes: dict[str, int]


# Keras layers: the parameters a layer's constructor may declare (every synonym declared is passed).
KERAS_NAMES: dict[str, tuple[str, ...]] = {
    **{k: FACTORY_NAMES[k] for k in ("head_dim", "max_wavelength", "rope_percentage", "scale_factor")},
    "heads": ("num_heads", "num_query_heads", "num_key_value_heads"),
    "sequence_axis": ("sequence_axis",),
    "feature_axis": ("feature_axis",),
}
KERAS_CALL_NAMES = {"positions": ("positions", "position_ids"), "start": ("start_index", "cache_update_index")}


def _keras_parameters(case: Case) -> dict[str, Any]:
    return {
        "head_dim": case.head_dim,
        "max_wavelength": case.max_wavelength,
        "rope_percentage": case.rope_percentage,
        "scale_factor": case.scale_factor,
        "heads": case.heads,
        "sequence_axis": 1 if case.seq_axis == -3 else 2,
        "feature_axis": -1,
    }


def _declared(factory: Callable[..., Any]) -> dict[str, str]:
    """Each name ``factory`` declares among KERAS_NAMES' synonyms -> our parameter it receives."""
    names, _ = parameter_names(factory)
    return {name: ours for ours, synonyms in KERAS_NAMES.items() for name in synonyms if name in names}


def _required(function: Callable[..., Any], given: set[str], skip: int = 0) -> list[str]:
    """Parameters of ``function`` without a default that are not in ``given`` (the first ``skip`` aside)."""
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    return [p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in given]  # fmt: skip


@dataclasses.dataclass
class KerasTarget(ConventionTarget):
    """A Keras 3 layer, built from the case's parameters under the names its constructor declares
    (``rope_wavelength``/``max_wavelength``, ``rope_scaling_factor``/``scaling_factor``,
    ``rope_partial_rotary_factor``/``partial_rotary_factor``, ``head_dim``, heads, ``sequence_axis``,
    ``feature_axis``; ``dtype``: the inputs' dtype, or the mixed policy of ``--autocast``) and called
    ``layer(x, positions=...)``; or a method of a layer class, called on such a layer (built for the
    inputs' shape) as ``method(layer, x, start_index=0, positions=...)``."""

    @property
    def method(self) -> bool:
        return not inspect.isclass(self.function) and keras_layer_class(self.function) is not None

    @property
    def factory(self) -> Callable[..., Any]:
        assert self.function is not None
        return keras_layer_class(self.function) if self.method else self.function  # type: ignore[return-value]

    def validate(self) -> None:
        """A UsageError (before any case) when the layer needs an argument this convention does not pass."""
        if self._built.get(("validated",)):
            return
        factory = self.factory
        missing = _required(factory, set(_declared(factory)) | {"dtype"})
        if missing:
            name = getattr(factory, "__name__", factory)
            raise UsageError(f"{name} needs {', '.join(missing)}: not a parameter the keras convention passes")
        call = self.function if self.method else getattr(factory, "call", None)
        if call is not None:  # a class's call (a factory's layer is only known once built)
            self._call_arguments(call, skip=2)
        self._built[("validated",)] = True

    @staticmethod
    def _call_arguments(function: Callable[..., Any], skip: int) -> tuple[str, dict[str, Any]]:
        """The name positions are passed under, and the other keywords (a start index of 0), for the
        layer's call or the method named (its first ``skip`` parameters are self and the inputs)."""
        names = parameter_names(function)[0][skip - 1 :]
        kw: dict[str, Any] = {}
        positions = next((n for n in KERAS_CALL_NAMES["positions"] if n in names), None)
        start = next((n for n in KERAS_CALL_NAMES["start"] if n in names), None)
        label = getattr(function, "__qualname__", function)
        if positions is None:
            raise UsageError(f"{label} takes no positions (positions=...)")
        if start is not None:
            kw[start] = 0
        missing = _required(function, {positions, *kw}, skip=skip)
        if missing:
            raise UsageError(f"{label} needs {', '.join(missing)}: not an argument the keras convention passes")
        return positions, kw

    def supports(self, case: Case) -> str | None:
        self.validate()
        why = self.common(case)
        if why or case.pairing != "split_half":
            return why or "needs pairing interleaved (a Keras rotary layer rotates split-half)"
        declared = set(_declared(self.factory).values())
        if case.seq_axis == -2 and "sequence_axis" not in declared:
            return "needs sequence_axis ([B, N, L, H] inputs)"
        if case.rotated_pairs is not None:
            return "needs rotated_pairs (a layer takes a rotary fraction)"
        if case.rope_percentage != 1.0 and "rope_percentage" not in declared:
            return "needs a rotary fraction (rope_partial_rotary_factor, partial_rotary_factor...)"
        if case.scale_factor != 1.0 and "scale_factor" not in declared:
            return "needs a scaling factor (rope_scaling_factor, scaling_factor...)"
        if "max_wavelength" not in declared:
            return "needs a wavelength (rope_wavelength, max_wavelength...)"
        if self.autocast is not None and case.dtype != self.autocast:
            return f"needs {self.autocast} inputs (a layer under the mixed_{self.autocast} policy computes in it)"
        return None

    def constructor_arguments(self, case: Case) -> dict[str, Any]:
        """The keywords the layer is built with for ``case``: its parameters under the names the
        constructor declares, and its dtype policy (the inputs' dtype, or the mixed policy of --autocast)."""
        factory = self.factory
        values = _keras_parameters(case)
        kwargs = {name: values[ours] for name, ours in _declared(factory).items()}
        if inspect.isclass(factory) or _accepts(factory, "dtype"):  # a Keras layer takes its dtype policy
            kwargs["dtype"] = f"mixed_{self.autocast}" if self.autocast is not None else case.dtype
        return kwargs

    def layer(self, case: Case, shape: tuple[int, ...]) -> Any:
        """The layer at the case's parameters (built for ``shape`` when a method of it is called)."""
        kwargs = self.constructor_arguments(case)
        key = ("keras", case.head_dim, case.max_wavelength, case.rope_percentage, case.scale_factor, case.heads,
               case.seq_axis, case.dtype, shape if self.method else None)  # fmt: skip
        if key not in self._built:
            factory = self.factory
            with self.framework.autocast(self.autocast, self.device):
                layer = factory(**kwargs)
                if self.method and not layer.built:
                    layer.build(shape)
            self._built[key] = layer
        return self._built[key]

    def call_arguments(self, case: Case, shape: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
        """The name positions are passed under and the other keywords of the call, for ``case``'s layer."""
        function = self.function if self.method else self.layer(case, shape).call
        assert function is not None
        return self._call_arguments(function, skip=2 if self.method else 1)

    def rope(self, case: Case, shape: tuple[int, ...]) -> Callable[[Any, Any], Any]:
        """x, positions -> the layer's output: its call, or the method named on it."""
        layer = self.layer(case, shape)
        function = self.function if self.method else layer.call
        assert function is not None
        positions, kw = self.call_arguments(case, shape)
        call = (lambda x, p: function(layer, x, **kw, **{positions: p})) if self.method else (
            lambda x, p: layer(x, **kw, **{positions: p}))  # fmt: skip
        return self.framework.compile(call) if self.compile else call

    def call(self, case: Case, arrays: Arrays) -> Call:
        x_np = arrays.inputs
        positions_np = full_positions(case, arrays.positions)
        x, positions = self.native(x_np), self.native(positions_np)
        rope = self.rope(case, x_np.shape)

        def run(v: Any, p: Any) -> Any:
            with self.framework.autocast(self.autocast, self.device):
                return rope(v, p)

        out = self.framework.call(run, x, positions, allow_eager=not self.compile)
        return Call([Output("out", out, x_np, x)], [("inputs", x, x_np), ("positions", positions, positions_np)])


TARGETS: dict[str, type[CallableTarget]] = {
    "paper": CallableTarget,
    "gemma": CallableTarget,
    "ours": CallableTarget,
    "hf": HfTarget,
    "vllm": VllmTarget,
    "flash_attn": FlashTarget,
    "angles": AnglesTarget,
    "onnx": OnnxTarget,
    "keras": KerasTarget,
}


def detect_convention(function: Callable[..., Any]) -> tuple[str, frozenset[str]]:
    """The convention of a callable from its parameter names, where they say it unambiguously (a Keras
    layer class, or a method of one: keras)."""
    if keras_layer_class(function) is not None and not _is_instance(function):
        return "keras", frozenset()
    names, _ = _names(getattr(function, "forward", None) or function)
    if names[:3] == ["positions", "query", "key"]:
        return "vllm", frozenset()
    if len(names) >= 3 and names[1:3] == ["cos", "sin"] and "seqlen_offsets" in names:
        return "flash_attn", frozenset()
    if len(names) >= 3 and ("cos", "sin") in (tuple(names[1:3]), tuple(names[2:4])):
        return "hf", frozenset()
    if names[:2] == ["freqs", "t"]:
        return "angles", frozenset()
    if names[:1] == ["path_or_bytes"]:
        return "onnx", frozenset()
    return detect_signature(call_signature(function))


def _is_instance(function: Callable[..., Any]) -> bool:
    return not (inspect.isclass(function) or inspect.isfunction(function) or inspect.ismethod(function))


def make_target(
    convention: str,
    function: Callable[..., Any],
    fw: Framework,
    device: str,
    *,
    name: str = "impl",
    keywords: frozenset[str] = frozenset(),
    rotary: Callable[..., Any] | None = None,
    layer_type: str = "full_attention",
    compile: bool = False,
    autocast: str | None = None,
) -> CallableTarget:
    if convention not in TARGETS:
        raise UsageError(f"unknown convention {convention!r}; known: {', '.join(TARGETS)}")
    cls = TARGETS[convention]
    common = dict(function=function, signature=convention, keywords=keywords, compile=compile, autocast=autocast)
    if issubclass(cls, ConventionTarget):
        return cls(name, fw, device, **common, rotary=rotary, layer_type=layer_type)  # type: ignore[arg-type]
    if rotary is not None:
        raise UsageError(f"--rotary is for the table conventions (hf, angles), not {convention}")
    return cls(name, fw, device, **common)  # type: ignore[arg-type]
