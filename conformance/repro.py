"""Reproducer scripts: one failing case as a standalone Python file to paste into a bug report.

The script holds the (shrunk) inputs and positions as literals, calls the implementation the way
the check did, computes the exact result in float64 from SPEC.md's formula (a dozen lines of NumPy,
without this project), and asserts every requirement the case failed: dtype, shape, input
untouched, NoPE lanes bit-identical, and the error bound of the level.
"""

from __future__ import annotations

import math
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
out = np.asarray(impl(x_in, positions{args}))
x_after = x_in
""",
    "torch": """\
import torch


def to_torch(a):
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16).to(DEVICE)
    return torch.from_numpy(a.copy()).to(DEVICE)


def from_torch(t):
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


x_in = to_torch(x)
out = from_torch(impl(x_in, to_torch(positions){args}))
x_after = from_torch(x_in)
""",
    "jax": """\
import jax

jax.config.update("jax_enable_x64", {x64})
device = jax.devices({platform!r})[0]
x_in = jax.device_put(x, device)
out = np.asarray(impl(x_in, jax.device_put(positions, device){args}))
x_after = np.asarray(x_in)
""",
}

_CHECK = """\
# The exact result (SPEC.md section 2), in float64: pairs (i, i + H/2) (split_half) or (2i, 2i+1)
# (interleaved) for i < R, frequency w ** (-2i/H) / scale_factor, angle = position * frequency.
i = np.arange(R)
first, second = (i, i + H // 2) if PAIRING == "split_half" else (2 * i, 2 * i + 1)
freq = W ** (-2.0 * i / H) / SCALE_FACTOR
angle = np.expand_dims(positions.astype(np.float64)[..., None] * freq, -2 if SEQ_AXIS == -3 else -3)
x64 = x.astype(np.float64)
a, b = x64[..., first], x64[..., second]
with np.errstate(invalid="ignore"):
    y1, y2 = a * np.cos(angle) - b * np.sin(angle), b * np.cos(angle) + a * np.sin(angle)

problems = []
if out.dtype != x.dtype:
    problems.append(f"output dtype {{out.dtype}}, input dtype {{x.dtype}}")
if out.shape != x.shape:
    problems.append(f"output shape {{out.shape}}, input shape {{x.shape}}")
bits = lambda v: np.ascontiguousarray(v).view("u%d" % v.dtype.itemsize)  # noqa: E731
if not np.array_equal(bits(x_after), bits(x)):
    problems.append("the input was modified")
nope = np.ones(H, dtype=bool)
nope[first], nope[second] = False, False
if out.shape == x.shape and out.dtype == x.dtype and not np.array_equal(bits(out[..., nope]), bits(x[..., nope])):
    problems.append("NoPE lanes are not bit-identical to the input")
if out.shape == x.shape:
    o = out.astype(np.float64)


    def lane_error(o, y):
        with np.errstate(invalid="ignore"):
            e = np.abs(o - y)
        right = (o == y) | (~np.isfinite(o) & ~np.isfinite(y))
        return np.where(right, 0.0, np.where(np.isnan(e), np.inf, e))


    err = np.maximum(lane_error(o[..., first], y1), lane_error(o[..., second], y2))
    nx = np.hypot(a, b)
    position = np.expand_dims(np.abs(positions.astype(np.float64))[..., None], -2 if SEQ_AXIS == -3 else -3)
    position = np.broadcast_to(position, err.shape)
    # SPEC.md section 8, level {level!r}
    {bound_line}
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(err == 0, 0.0, err / bound)
    {range_line}
    print("worst error / bound:", ratio.max() if ratio.size else 0.0)
    if ratio.size and ratio.max() > 1:
        where = tuple(int(k) for k in np.unravel_index(np.argmax(ratio), ratio.shape))
        text = f"error {{err[where]:.3g}} = {{ratio[where]:.3g}} x the {level} bound"
        problems.append(f"{{text}} at index {{where}} (last: pair i)")
print("\\n".join(problems) or "no problem")
assert not problems, problems
"""


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
) -> str:
    """The text of a standalone reproducer for ``case`` with the given (shrunk) arrays."""
    needs_ml = x.dtype.name == "bfloat16"
    needs = ", ".join(["numpy"] + (["ml_dtypes"] if needs_ml else []) + ([framework] if framework != "numpy" else []))
    kw = case.keywords()
    if signature == "gemma":
        call_args = ", base_frequency=W, rope_proportion=P" + (
            ", scale_factor=SCALE_FACTOR" if "scale_factor" in kw else ""
        )
    else:
        call_args = ", H, W, P" + "".join(f", {k}={k.upper()}" for k in kw)
    u_out, u_c, s_out = UNIT_ROUNDOFF[case.dtype], compute_unit_roundoff(case.dtype), ABSOLUTE_TERM[case.dtype]
    if level == "strict" and case.dtype != "float64":
        bound_line = f"bound = nx * ({u_out!r} + 8 * 2.0**-24) + {s_out!r}"
        range_line = "ratio = np.where(position <= 2**24, ratio, 0.0)  # the strict level: |position| <= 2**24"
        if case.special == "nonfinite":
            range_line = "# special values: every position counts"
    else:
        lam = f"2.0 * i / H * {abs(math.log(case.max_wavelength))!r}"
        bound_line = f"bound = nx * (4 * {u_out!r} + 4 * {u_c!r} * (1 + np.abs(angle) * (1 + {lam}))) + {s_out!r}"
        range_line = "ratio = np.where(np.isnan(position), 0.0, ratio)  # every position counts"
    platform = {"cpu": "cpu", "cuda": "gpu", "tpu": "tpu"}.get(device, device)
    call = _CALL[framework].format(args=call_args, x64=needs64(case, x, positions), platform=platform)
    header = f'''"""p-RoPE conformance failure, case {case.id} ({level} level, SPEC.md {SPEC_VERSION}).

Found by: p-rope-conformance check --impl {impl}
Case: {case.describe()}
Reproduced here on {x.shape} inputs.
Observed: {observed}
Run: python this_file.py   (needs {needs})
"""
'''
    params = [f"H, W, P = {case.head_dim}, {case.max_wavelength!r}, {case.rope_percentage!r}"]
    params.append(f"R = {case.pairs}  # rotated pairs: int(P * H // 2) in floating point, or rotated_pairs")
    params.append(f"SCALE_FACTOR, PAIRING, SEQ_AXIS = {case.scale_factor!r}, {case.pairing!r}, {case.seq_axis}")
    params += [f"{k.upper()} = {v!r}" for k, v in kw.items() if k not in ("scale_factor", "pairing", "seq_axis")]
    params.append(f"DEVICE = {device!r}")
    body = [
        header,
        "import numpy as np\n" + ("import ml_dtypes\n" if needs_ml else ""),
        import_statement,
        "\n".join(params) + "\n",
        _array_source("x", x) + _array_source("positions", positions),
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


def describe_result(result: Any, level: str) -> str:
    """One line: what went wrong in a case (problems, else the error ratio and where)."""
    if result.problems:
        return "; ".join(result.problems)
    worst = result.worst
    ratio = result.levels[level].ratio
    where = f" at position {worst.position:g}, index {worst.index}" if worst is not None else ""
    return f"error {ratio:.3g} x the {level} bound{where}"
