"""Reproducer scripts: one failing case as a standalone Python file to paste into a bug report.

The script holds the (shrunk) inputs and positions as literals, calls the implementation the way
the check did, computes the exact result in float64 from SPEC.md's formula (a dozen lines of NumPy,
without this project), and asserts every requirement the case failed: dtype, shape, input
untouched, NoPE lanes bit-identical, and the error bound of the level.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from typing import Any

import numpy as np
from p_rope._params import SPEC_VERSION
from p_rope.tolerance import ABSOLUTE_TERM, UNIT_ROUNDOFF, compute_unit_roundoff

from .cases import Case

LITERAL_LIMIT = 8192  # elements; larger arrays are regenerated from the case's seed


def _literal(array: np.ndarray) -> str:
    """Exact Python literal of an array's values (shortest round-trip form in its own precision)."""
    flat = array.reshape(-1)
    if array.dtype.kind in "iu":
        items = [str(int(v)) for v in flat]
    else:
        as32 = array.dtype.name in ("bfloat16", "float16", "float32")
        values = flat.astype(np.float32) if as32 else flat.astype(np.float64)
        items = []
        for v in values:
            if np.isnan(v):
                items.append("nan")
            elif np.isinf(v):
                items.append("inf" if v > 0 else "-inf")
            else:
                items.append(np.format_float_positional(v, unique=True, trim="-") if as32 else repr(float(v)))
    if len(", ".join(items)) <= 60:
        return "[" + ", ".join(items) + ",]"
    lines, line = [], "    "
    for item in items:
        if len(line) + len(item) > 96:
            lines.append(line.rstrip())
            line = "    "
        line += item + ", "
    lines.append(line.rstrip())
    return "[\n" + "\n".join(lines) + "\n]"


def _array_source(name: str, array: np.ndarray) -> str:
    dtype = array.dtype.name
    carrier = "np.float32" if dtype in ("bfloat16", "float16", "float32") else f"np.{dtype}"
    cast = f".astype({_np_dtype_expr(dtype)})" if dtype in ("bfloat16", "float16") else ""
    text = f"{name} = np.array({_literal(array)}, dtype={carrier}){cast}.reshape({tuple(array.shape)})\n"
    return text.replace("nan,", "np.nan,").replace("-inf,", "-np.inf,").replace(" inf,", " np.inf,")


def _np_dtype_expr(name: str) -> str:
    return "ml_dtypes.bfloat16" if name == "bfloat16" else f"np.{name}"


_CALL = {
    "numpy": """\
x_in = x.copy()
out, x_after = np.asarray(impl(x_in, positions{args})), x_in
""",
    "torch": """\
import torch
bf16 = x.dtype.name == "bfloat16"
to_torch = lambda a: torch.from_numpy(a.astype(np.float32) if a.dtype.name == "bfloat16" else a.copy())  # noqa: E731
back = lambda t: (t.detach().cpu().float() if bf16 else t.detach().cpu()).numpy().astype(x.dtype)  # noqa: E731
x_in = to_torch(x).to(torch.bfloat16 if bf16 else None).to(DEVICE)
out, x_after = back(impl(x_in, to_torch(positions).to(DEVICE){args})), back(x_in)
""",
    "jax": """\
import jax

jax.config.update("jax_enable_x64", {x64})
device = jax.devices({platform!r})[0]
x_in = jax.device_put(x, device)
out, x_after = np.asarray(impl(x_in, jax.device_put(positions, device){args})), np.asarray(x_in)
""",
}

_CHECK = """\
# SPEC.md section 2 in float64: pairs (i, i + H/2) or (2i, 2i + 1), i < R, angle position * W ** (-2i/H) / SCALE
i = np.arange(R)
a, b = (i, i + H // 2) if PAIRING == "split_half" else (2 * i, 2 * i + 1)
angle = positions.astype(np.float64)[..., None] * W ** (-2.0 * i / H) / SCALE
angle = np.expand_dims(angle, -2 if SEQ_AXIS == -3 else -3)
x64, o = x.astype(np.float64), out.astype(np.float64)
bits = lambda v: np.ascontiguousarray(v).view(f"u{{v.dtype.itemsize}}")  # noqa: E731
assert out.dtype == x.dtype and out.shape == x.shape, f"output {{out.dtype}} {{out.shape}}, not {{x.dtype}} {{x.shape}}"
assert np.array_equal(bits(x_after), bits(x)), "the input was modified"
nope = np.setdiff1d(np.arange(H), np.concatenate([a, b]))
assert np.array_equal(bits(out[..., nope]), bits(x[..., nope])), "NoPE lanes are not bit-identical to the input"
with np.errstate(all="ignore"):
    c, s, xa, xb = np.cos(angle), np.sin(angle), x64[..., a], x64[..., b]
    right = lambda o, y: (o == y) | (~np.isfinite(o) & ~np.isfinite(y))  # noqa: E731
    lane = lambda o, y: np.where(right(o, y), 0.0, np.nan_to_num(abs(o - y), nan=np.inf))  # noqa: E731
    err, nx = np.maximum(lane(o[..., a], xa * c - xb * s), lane(o[..., b], xb * c + xa * s)), np.hypot(xa, xb)
    # SPEC.md section 8, {level} level
    {bound_line}
    ratio = np.where(err == 0, 0.0, err / bound)
    {range_line}
where = np.argwhere(ratio > 1)[:1].tolist()
assert ratio.max(initial=0) <= 1, f"error {{ratio.max():.3g}} x the {level} bound at {{where}}"
"""


_KERAS_POLICY = """\
import keras

_impl = impl


def impl(*args, **kwargs):  # under Keras's mixed_{dtype} policy, as check --autocast ran it
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_{dtype}")
    try:
        return _impl(*args, **kwargs)
    finally:
        keras.config.set_dtype_policy(before)
"""

_TORCH_AUTOCAST = """\
import torch

_impl = impl


def impl(*args, **kwargs):  # under torch.autocast, as check --autocast ran it
    with torch.autocast(DEVICE, dtype=torch.{dtype}):
        return _impl(*args, **kwargs)
"""


def keras_layer(
    import_statement: str, *, method: str | None, constructor: dict[str, Any], positions: str, keywords: dict[str, Any]
) -> tuple[str, str]:
    """The keras convention as reproducer source: (the import statement, binding ``Layer`` to the layer
    class instead of ``impl``; lines that build the layer with the constructor keywords the check passed
    and rebind ``impl`` to ``x, positions -> output``, called as the check called it)."""
    lines = import_statement.rstrip("\n").split("\n")
    if lines[-1].startswith("impl = "):
        expr = lines[-1].removeprefix("impl = ")
        lines[-1] = "Layer = " + (expr.removesuffix("." + method) if method else expr)
    arguments = ", ".join(f"{k}={v!r}" for k, v in constructor.items())
    source = _construct("layer = Layer", arguments)
    call = "".join(f"{k}={v!r}, " for k, v in keywords.items()) + f"{positions}=p"
    if method:
        source += "layer.built or layer.build(x.shape)  # for the inputs' shape, as check did\n"
        source += f"impl = lambda v, p: Layer.{method}(layer, v, {call})"
    else:
        source += f"impl = lambda v, p: layer(v, {call})"
    return "\n".join(lines) + "\n", source + "  # noqa: E731\n"


def _construct(head: str, arguments: str) -> str:
    """``head(arguments)`` with a comment, on one line or wrapped within 120 columns."""
    line = f"{head}({arguments})  # as check built it for this case\n"
    if len(line) <= 121:
        return line
    wrapped = textwrap.fill(arguments + ")", 116, initial_indent="    ", subsequent_indent="    ")
    return f"{head}(  # as check built it for this case\n{wrapped}\n"


def _built(variable: str, factory: str, arguments: str, framework: str, device: str) -> str:
    """``variable = factory(arguments)``, as check built it, moved to DEVICE (torch, off the CPU)."""
    source = _construct(f"{variable} = {factory}", arguments)
    if framework == "torch" and device != "cpu":
        source += f"{variable} = {variable}.to(DEVICE) if callable(getattr({variable}, 'to', None)) else {variable}\n"
    return source


def _as_rotary(statement: str) -> str:
    """An import statement that binds ``impl``, binding ``Rotary`` instead (the rotary module's class)."""
    lines = statement.rstrip("\n").split("\n")
    lines[-1] = lines[-1].replace("impl = ", "Rotary = ", 1)
    return "\n".join(lines) + "\n"


_NATIVE = {  # (concatenate, a table as the framework's array in v's dtype) in a reproducer's call
    "numpy": ("np.concatenate", "{0}"),
    "torch": ("torch.cat", "to_torch({0}).to(v.dtype).to(DEVICE)"),
    "jax": ("jax.numpy.concatenate", "jax.device_put({0}, device)"),
}


def hf_tables(
    *,
    framework: str,
    device: str,
    heads_axis: int,
    q_and_k: bool,
    keywords: dict[str, Any],
    rotary: tuple[str, str, str | None] | None = None,
    tables: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[str, str]:
    """The hf convention as reproducer source: (imports, lines after the arrays that rebind ``impl`` to
    ``v, positions -> output``). ``rotary``: (its import statement binding ``impl``, the arguments the
    check built it with as source (its keywords, or its configuration), the layer type passed to it or
    None); else ``tables``: the cos/sin arrays the check passed.
    With ``q_and_k``, v is q with k (the check's: q's last head) appended on the heads axis, and the
    output is q's and k's side by side."""
    imports, setup = "", ""
    cat, native = _NATIVE[framework]
    if rotary is not None:
        statement, arguments, layer_type = rotary
        imports, setup = _as_rotary(statement), _built("rotary", "Rotary", arguments, framework, device)
        tail = f", {layer_type!r}" if layer_type is not None else ""
        cos_sin = f"rotary(v, p{tail})  # the rotary module's, as check took them"
    else:
        assert tables is not None
        setup = _array_source("COS", tables[0]) + _array_source("SIN", tables[1])
        cos_sin = f"{native.format('COS')}, {native.format('SIN')}  # SPEC.md's tables, as check passed them"
    kw = "".join(f", {k}={v!r}" for k, v in keywords.items())
    last = "..., -1:, :" if heads_axis == -2 else "..., -1:, :, :"
    rest = "..., :-1, :" if heads_axis == -2 else "..., :-1, :, :"
    setup += "apply = impl\n\n\ndef impl(v, p):  # the check's call"
    if q_and_k:
        setup += ": q = v but its last head, k = that head; q's and k's outputs side by side\n"
        setup += f"    cos, sin = {cos_sin}\n"
        setup += f"    q_out, k_out = apply(v[{rest}], v[{last}], cos, sin{kw})\n"
        setup += f"    return {cat}([q_out, k_out], {heads_axis})\n"
    else:
        setup += f"\n    cos, sin = {cos_sin}\n    return apply(v, cos, sin{kw})\n"
    return imports, setup


_NATIVE_AS_IS = {  # an array as the framework's array, in its own dtype
    "numpy": "{0}",
    "torch": "to_torch({0}).to(DEVICE)",
    "jax": "jax.device_put({0}, device)",
}


def angles_call(*, framework: str, angles: np.ndarray, keywords: dict[str, Any]) -> str:
    """The angles convention as reproducer source: lines after the arrays that rebind ``impl`` to
    ``v, positions -> output``, passing the per-lane angles the check passed (``angles``, heads axis
    included) and the input."""
    kw = "".join(f", {k}={v!r}" for k, v in keywords.items())
    return (
        _array_source("FREQS", angles)
        + "apply = impl  # called as the check called it: per-lane angles of SPEC's frequencies, heads axis 1\n"
        + f"impl = lambda v, p: apply({_NATIVE_AS_IS[framework].format('FREQS')}, v{kw})  # noqa: E731\n"
    )


def angles_rotary_call(
    *,
    framework: str,
    device: str,
    statement: str,
    arguments: str,
    positions: np.ndarray,
    heads_axis: int,
    keywords: dict[str, Any],
) -> tuple[str, str]:
    """The angles convention with a rotary module as reproducer source: (imports, lines after the
    arrays that rebind ``impl`` to ``v, positions -> output``). The module (``statement`` binds it to
    ``impl``) is built with ``arguments`` (source) and called on ``positions`` as the check passed
    them; its angles get a heads axis of 1 at ``heads_axis`` and are passed with the input."""
    setup = _array_source("ROTARY_POSITIONS", positions) + _built("rotary", "Rotary", arguments, framework, device)
    kw = "".join(f", {k}={v!r}" for k, v in keywords.items())
    setup += (
        "apply = impl\n\n\n"
        "def impl(v, p):  # the check's call: the rotary module's angles, a heads axis of 1 inserted\n"
        f"    angles = rotary({_NATIVE_AS_IS[framework].format('ROTARY_POSITIONS')})\n"
        f"    freqs = angles.reshape(tuple(angles.shape[:{heads_axis}]) + (1,) + tuple(angles.shape[{heads_axis}:]))\n"
        f"    return apply(freqs, v{kw})\n"
    )
    return _as_rotary(statement), setup


_COPY = {"numpy": "{0}.copy()", "torch": "{0}.clone()", "jax": "{0}"}


def flash_call(*, framework: str, plan: Any, shape: tuple[int, ...]) -> str:
    """The flash_attn convention as reproducer source: lines after the arrays that rebind ``impl`` to
    ``v, positions -> output``, calling it as the check did (``plan``: conventions.FlashPlan, its
    tables, seqlen_offsets and options; x [B, L, N, H] of ``shape``)."""
    batch, length, heads, head_dim = shape
    as_is, table = _NATIVE_AS_IS[framework], _NATIVE[framework][1]
    keywords = [f"seqlen_offsets={as_is.format('OFFSETS')}"]
    keywords += ["interleaved=True"] if plan.interleaved else []
    keywords += ["inplace=True"] if plan.in_place else []
    arg = _COPY[framework].format("v") if plan.in_place else "v"
    if plan.varlen:
        arg += f".reshape({batch * length}, {heads}, {head_dim})"
        cu_seqlens = as_is.format(f"np.arange({batch + 1}, dtype=np.int32) * {length}")
        keywords += [f"cu_seqlens={cu_seqlens}", f"max_seqlen={length}"]
    body = [
        f"arg = {arg}" + ("  # a copy: inplace=True rotates its argument" if plan.in_place else ""),
        f"cos, sin = {table.format('COS')}, {table.format('SIN')}",
        "out = apply(arg, cos, sin, " + ", ".join(keywords) + ")",
        f"return {'arg' if plan.in_place else 'out'}.reshape(v.shape)",
    ]
    if len(body[2]) > 112:  # one keyword a line
        body[2:3] = ["out = apply(", "    arg,", "    cos,", "    sin,", *(f"    {k}," for k in keywords), ")"]
    return (
        _array_source("COS", plan.cos)
        + _array_source("SIN", plan.sin)
        + _array_source("OFFSETS", plan.offsets)
        + "apply = impl\n\n\n"
        + f"def impl(v, p):  # the check's call ({plan.indexing})\n"
        + "".join(f"    {line}\n" for line in body)
    )


def vllm_call(
    *, framework: str, device: str, plan: Any, shape: tuple[int, ...], frequencies: np.ndarray, layer: str | None
) -> str:
    """The vllm convention as reproducer source: lines after the arrays that rebind ``impl`` to
    ``v, positions -> output``. q (v but its last head) and k (that head) are flattened to [T, N*H]
    and [T, H] as copies and passed with the token positions, offsets, cache and keywords the check
    passed (``plan``: conventions.VllmPlan; x [B, L, N, H] of ``shape``); the output is q's and k's
    side by side. ``layer``: the arguments a factory built the layer with, as source (None: ``impl``
    is the kernel). A cache is written as SPEC.md's cos/sin of every row from ``frequencies``
    (float64 NumPy, rounded to the cache's dtype), the rows the case reads as the check passed them."""
    batch, length, heads, head_dim = shape
    as_is, copy, cat = _NATIVE_AS_IS[framework], _COPY[framework], _NATIVE[framework][0]
    source = _array_source("POSITIONS", plan.positions)
    keywords = [f"{k}={v!r}" for k, v in plan.keywords.items()]
    if plan.offsets is not None:
        source += _array_source("OFFSETS", plan.offsets)
        keywords.append(f"offsets={as_is.format('OFFSETS')}")
    if plan.cache is not None:
        read = plan.positions + (0 if plan.offsets is None else plan.offsets)
        rows = np.unique(read)
        source += _array_source("FREQ", frequencies.astype(np.float64))
        source += _array_source("READ", rows) + _array_source("CACHE_ROWS", plan.cache[rows])
        source += (
            f"angle = np.arange({plan.rows}, dtype=np.float64)[:, None] * FREQ  # SPEC.md's angles, every row\n"
            f"CACHE = np.concatenate([np.cos(angle), np.sin(angle)], axis=-1).astype(np.{plan.cache.dtype.name})\n"
            "CACHE[READ] = CACHE_ROWS  # the rows this case reads, as the check passed them\n"
        )
        keywords.append(f"cos_sin_cache={as_is.format('CACHE')}")
    source += "apply = impl  # the kernel\n" if layer is None else _built("apply", "impl", layer, framework, device)
    tokens = batch * length
    call = "result = apply(" + ", ".join([as_is.format("POSITIONS"), "query", "key", *keywords]) + ")"
    if len(call) > 112:  # one argument a line
        arguments = [as_is.format("POSITIONS"), "query", "key", *keywords]
        call = "result = apply(\n" + "".join(f"        {a},\n" for a in arguments) + "    )"
    body = [
        f"query = {copy.format(f'v[..., :-1, :].reshape({tokens}, {heads * head_dim})')}",
        f"key = {copy.format(f'v[..., -1:, :].reshape({tokens}, {head_dim})')}",
        call,
        "in_place = not (isinstance(result, tuple) and len(result) == 2 and result[0] is not None)",
        "q_out, k_out = (query, key) if in_place else result",
        f"return {cat}([q_out.reshape({shape}), k_out.reshape({(batch, length, 1, head_dim)})], -2)",
    ]
    return (
        source
        + "\n\ndef impl(v, p):  # the check's call: q = v but its last head, k = that head, as copies\n"
        + "".join(f"    {line}\n" for line in body)
    )


def onnx_call(*, plan: Any, model_source: str, providers: list[str]) -> str:
    """The onnx convention as reproducer source: ``model_source`` (the function that builds the graph,
    conventions.onnx_model), the caches and position ids the check fed (``plan``: conventions.OnnxPlan),
    and ``impl`` rebound to ``v, positions -> output``: the session class named runs the graph on v
    (as [B, L, N*H] with num_heads where the check did so)."""
    (_, x), *rest = plan.inputs
    source = "\n" + model_source.rstrip("\n") + "\n\n\n" + "".join(_array_source(n.upper(), a) for n, a in rest)
    feeds = [f"('X', v.reshape({x.shape}))", *(f"({n!r}, {n.upper()})" for n, _ in rest)]
    body = [
        *(["inputs = [" + ", ".join(feeds) + "]"] if len(", ".join(feeds)) <= 100 else
          ["inputs = [", *(f"    {f}," for f in feeds), "]"]),
        f"session = apply(onnx_model(inputs, {plan.attributes!r}), providers={providers!r})",
        "(out,) = session.run(['Y'], dict(inputs))",
        "return np.asarray(out).reshape(v.shape)",
    ]  # fmt: skip
    return (
        source
        + "apply = impl  # the session class\n\n\n"
        + "def impl(v, p):  # the check's run: the one-node graph on v, the caches as the check fed them\n"
        + "".join(f"    {line}\n" for line in body)
    )


def call_options(
    framework: str, *, autocast: str | None = None, compile: bool = False, keras_backend: str | None = None
) -> tuple[str, str]:
    """What the check ran around the implementation, as reproducer source: (lines before the import
    statement, lines after the parameters that rebind ``impl``). Keras code gets its backend before it
    is imported; --autocast becomes Keras's mixed policy or torch.autocast around each call;
    --compile, torch.compile (JAX reproducers call eagerly)."""
    before = f'import os\nos.environ.setdefault("KERAS_BACKEND", {keras_backend!r})\n' if keras_backend else ""
    after = ""
    if compile and framework == "torch":
        after += "import torch\n\nimpl = torch.compile(impl)  # as check --compile ran it\n"
    if autocast is not None:
        after += (_KERAS_POLICY if keras_backend else _TORCH_AUTOCAST).format(dtype=autocast)
    return before, after


def script(
    case: Case,
    x: np.ndarray,
    positions: np.ndarray,
    *,
    level: str,
    import_statement: str,
    framework: str,
    signature: str,
    device: str,
    impl: str,
    observed: str,
    options: tuple[str, str] = ("", ""),
    setup: str = "",
) -> str:
    """The text of a standalone reproducer for ``case`` with the given (shrunk) arrays; ``options``:
    call_options' source around the implementation; ``setup``: source after the arrays that rebinds
    ``impl`` to ``x, positions -> output`` (a convention's call, e.g. keras_layer's), the call then
    passing only those two."""
    needs_ml = x.dtype.name == "bfloat16"
    extra = {"keras": ["keras"], "onnx": ["onnx"]}.get(signature, [])
    needs = ", ".join(
        ["numpy"] + (["ml_dtypes"] if needs_ml else []) + extra + ([framework] if framework != "numpy" else [])
    )
    kw = case.keywords()
    if setup:
        call_args = ""
    elif signature == "gemma":
        call_args = ", base_frequency=W, rope_proportion=P" + (", scale_factor=SCALE" if "scale_factor" in kw else "")
    else:
        names = {"scale_factor": "SCALE", "pairing": "PAIRING", "seq_axis": "SEQ_AXIS", "rotated_pairs": "R"}
        call_args = ", H, W, P" + "".join(f", {k}={names[k]}" for k in kw)
    u_out, u_c, s_out = UNIT_ROUNDOFF[case.dtype], compute_unit_roundoff(case.dtype), ABSOLUTE_TERM[case.dtype]
    if level == "strict" and case.dtype != "float64":
        bound_line = f"bound = nx * ({u_out!r} + 8 * 2.0**-24) + {s_out!r}"
        range_line = "ratio = np.where(np.abs(angle) * 0 + np.abs(positions[..., None, None]) <= 2**24, ratio, 0.0)"
        if case.special == "nonfinite":
            range_line = "pass  # special values: every position counts"
        if case.seq_axis != -3:
            range_line = range_line.replace("[..., None, None]", "[..., None, :, None]")
    else:
        lam = f"2.0 * i / H * {abs(math.log(case.max_wavelength))!r}"
        bound_line = f"bound = nx * (4 * {u_out!r} + 4 * {u_c!r} * (1 + np.abs(angle) * (1 + {lam}))) + {s_out!r}"
        range_line = "ratio = np.where(np.isnan(angle), 0.0, ratio)  # every finite position counts"
    platform = {"cpu": "cpu", "cuda": "gpu", "tpu": "tpu"}.get(device, device)
    call = _CALL[framework].format(args=call_args, x64=needs64(case, x, positions), platform=platform)
    header = f'''"""p-RoPE conformance failure: {case.id}, {level} level of SPEC.md {SPEC_VERSION}, on {x.shape} inputs.
Found by: p-rope-conformance check --impl {impl}
Case: {case.describe()}
Observed: {observed}
Run: python this_file.py   (needs {needs})
"""'''
    params = (
        f"H, W, P, R, SCALE = {case.head_dim}, {case.max_wavelength!r}, {case.rope_percentage!r}, {case.pairs}, "
        f"{case.scale_factor!r}  # R = int(P * H // 2) rotated pairs\n"
        f"PAIRING, SEQ_AXIS, DEVICE = {case.pairing!r}, {case.seq_axis}, {device!r}"
    )
    body = [
        header,
        options[0] + "import numpy as np\n" + ("import ml_dtypes\n" if needs_ml else "") + import_statement,
        params + "\n" + _array_source("x", x) + _array_source("positions", positions),
        *([setup] if setup else []),
        *([options[1]] if options[1] else []),
        call,
        _CHECK.format(level=level, bound_line=bound_line, range_line=range_line),
    ]
    return "\n".join(part.rstrip("\n") + "\n" for part in body)


def needs64(case: Case, x: np.ndarray, positions: np.ndarray) -> bool:
    return case.dtype == "float64" or positions.dtype.itemsize == 8


def shrink_candidates(
    case: Case, x: np.ndarray, positions: np.ndarray, focus: tuple[int, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Smaller versions of a failing case around ``focus`` = (batch..., axis -3, axis -2) of the inputs:
    one token of one head; all heads at that token; that token in every batch row; the whole row."""
    batch_rank = x.ndim - 3
    full_positions = np.broadcast_to(positions, (*x.shape[:batch_rank], x.shape[case.seq_axis])).copy()
    b = focus[:batch_rank]
    seq = focus[batch_rank + (0 if case.seq_axis == -3 else 1)]
    head = focus[batch_rank + (1 if case.seq_axis == -3 else 0)]
    keep_b = tuple(slice(i, i + 1) for i in b)
    every_b = tuple(slice(None) for _ in b)

    def take(batch: tuple[slice, ...], s: slice, h: slice) -> tuple[np.ndarray, np.ndarray]:
        index = (*batch, s, h) if case.seq_axis == -3 else (*batch, h, s)
        return x[index].copy(), full_positions[(*batch, s)].copy()

    one, all_ = slice(seq, seq + 1), slice(None)
    return [
        take(keep_b, one, slice(head, head + 1)),
        take(keep_b, one, all_),
        take(every_b, one, slice(head, head + 1)),
        take(keep_b, all_, slice(head, head + 1)),
        (x, full_positions),
    ]


def shrink_head(case: Case, x: np.ndarray) -> list[tuple[Case, np.ndarray]]:
    """The case at smaller head dimensions H' = 4, 8, 16... < H with the same w and layout, on the first
    H'/2 pairs of x (split-half: both halves' first H'/2 lanes): with the same p, then with the p that
    keeps R rotated pairs (and one NoPE pair at least)."""
    out = []
    size = 4
    while size < case.head_dim:
        for keep in (False, True):
            if keep and (case.rotated_pairs is not None or 2 * case.pairs + 2 > size):
                continue
            p = (2 * case.pairs + 1) / size if keep else case.rope_percentage
            out += _at_head_dim(dataclasses.replace(case, rope_percentage=p), x, size)
        size *= 2
    return out


def _at_head_dim(case: Case, x: np.ndarray, size: int) -> list[tuple[Case, np.ndarray]]:
    """The case on the first size/2 pairs of x, as a case of head dimension ``size``."""
    half = case.head_dim // 2
    if case.pairing == "split_half":
        lanes = np.concatenate([np.arange(size // 2), half + np.arange(size // 2)])
    else:
        lanes = np.arange(size)
    pairs = None if case.rotated_pairs is None else min(case.rotated_pairs, size // 2)
    sub = dataclasses.replace(case, head_dim=size, shape=(*x.shape[:-1], size), rotated_pairs=pairs)
    return [(sub, x[..., lanes].copy())]


def describe_result(result: Any, level: str) -> str:
    """One line: what went wrong in a case (problems, else the error ratio and where)."""
    if result.problems:
        return "; ".join(result.problems)
    worst = result.worst
    ratio = result.levels[level].ratio
    where = f" at position {worst.position:g}, index {worst.index}" if worst is not None else ""
    return f"error {ratio:.3g} x the {level} bound{where}"
