"""check on Keras 3 code (conformance/conventions.py ``keras``, frameworks.py's Keras policy): Keras's
mixed precision under ``--autocast``, layers built from SPEC's parameters by the names they declare,
keras-hub's own layers where keras-hub is installed. Keras runs on its torch backend here (the one
``KERAS_BACKEND`` names when set before keras is first imported; torch otherwise).

Everything here is skipped, with the reason, where keras is not installed.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from p_rope.conformance.__main__ import main
from p_rope.conformance.check import check, grade_line
from p_rope.conformance.conventions import detect_convention
from p_rope.conformance.frameworks import uses_keras

_backend = os.environ.get("KERAS_BACKEND")
os.environ["KERAS_BACKEND"] = _backend or "torch"  # read once, when keras is imported (TensorFlow without it)
try:
    keras = pytest.importorskip("keras", reason="keras is not installed here (pip install keras==3.15.1)")
finally:
    if _backend is None:
        del os.environ["KERAS_BACKEND"]
if keras.backend.backend() not in ("torch", "jax"):
    pytest.skip(f"Keras's {keras.backend.backend()} backend is not one check runs on", allow_module_level=True)
ops = keras.ops

SUBSET = ("gemma4-global-kv", "llama-hf-layout-packed", "p0-identity", "p-tiny-H64-R0", "p0.58-H100-R28",
          "scale1.5-p0.25", "edge-positions")  # fmt: skip


def _check(function, **kw):
    kw.setdefault("names", SUBSET)
    kw.setdefault("repro_level", None)
    kw.setdefault("dtypes", ("float32",))
    return check(function, **kw)


# ---------------------------------------------------------------------------------------------
# Keras-style functions: the paper's signature, Keras ops


def _inv_freq(head_dim, max_wavelength, rope_percentage, scale_factor=1.0, clamp=False):
    r = int(rope_percentage * head_dim // 2)
    r = max(r, 1) if clamp else r
    inv = np.zeros(head_dim // 2)
    inv[:r] = max_wavelength ** (-2.0 * np.arange(r) / head_dim) / scale_factor
    return inv.astype(np.float32)


def _rotate(inputs, angle, heads_axis=-2):
    """Split-half rotation in float32 by angle [B, L, H/2], cast back to the inputs' dtype."""
    cos, sin = (ops.expand_dims(t, heads_axis) for t in (ops.cos(angle), ops.sin(angle)))
    x = ops.cast(inputs, "float32")
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return ops.cast(ops.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1), inputs.dtype)


def keras_rope(inputs, positions, head_dim, max_wavelength=10_000.0, rope_percentage=1.0):
    """Correct: the frequency product in float32 whatever the dtype policy."""
    inv = ops.convert_to_tensor(_inv_freq(head_dim, max_wavelength, rope_percentage))
    return _rotate(inputs, ops.cast(positions, "float32")[..., None] * inv)


def keras_rope_in_compute_dtype(inputs, positions, head_dim, max_wavelength=10_000.0, rope_percentage=1.0):
    """Broken under a mixed policy: positions x frequencies in the policy's compute dtype."""
    compute = keras.config.dtype_policy().compute_dtype
    inv = ops.convert_to_tensor(_inv_freq(head_dim, max_wavelength, rope_percentage))
    angle = ops.cast(positions, compute)[..., None] * ops.cast(inv, compute)
    return _rotate(inputs, ops.cast(angle, "float32"))


def test_keras_code_is_detected():
    assert uses_keras(keras_rope) and uses_keras(keras.layers.Dense)
    assert not uses_keras(np.cos) and not uses_keras(check)
    named = _check(keras_rope, framework_name="keras", names=("gemma4-global-kv",))
    assert named.framework.startswith("keras (") and named.grade in ("conformant", "strict")


def test_mixed_policy_runs_a_compute_dtype_frequency_product_in_bfloat16():
    """--autocast bf16 on Keras code sets Keras's global policy to mixed_bfloat16 during the calls (and
    restores it): a frequency product in the policy's compute dtype is graded and its mistake named."""
    before = keras.config.dtype_policy().name
    plain = _check(keras_rope_in_compute_dtype)
    assert plain.framework == f"keras ({keras.backend.backend()} backend)"
    assert plain.grade == "conformant", plain.causes
    mixed = _check(keras_rope_in_compute_dtype, autocast="bfloat16")
    assert mixed.grade == "fail" and mixed.options == ("--autocast bfloat16",)
    if keras.backend.backend() == "torch":  # XLA may keep the bf16 product in float32 (no model for it)
        assert "autocast-bf16 frequency product" in mixed.causes["float32"]
    assert keras.config.dtype_policy().name == before
    good = _check(keras_rope, autocast="bfloat16")
    assert good.grade == "conformant", good.causes


# ---------------------------------------------------------------------------------------------
# The keras convention: layers built from SPEC's parameters by the names they declare


class PRopeLayer(keras.layers.Layer):
    """p-RoPE as a Keras layer, written the way keras-hub writes its layers (float32 angles)."""

    clamp = False

    def __init__(self, head_dim, rope_wavelength=10_000.0, rope_partial_rotary_factor=1.0,
                 rope_scaling_factor=1.0, sequence_axis=1, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.inv = _inv_freq(head_dim, rope_wavelength, rope_partial_rotary_factor, rope_scaling_factor, self.clamp)
        self.sequence_axis = sequence_axis

    def call(self, inputs, positions):
        angle = ops.cast(positions, "float32")[..., None] * ops.convert_to_tensor(self.inv)
        return _rotate(inputs, angle, heads_axis=-2 if self.sequence_axis == 1 else -3)


class ClampedPRopeLayer(PRopeLayer):
    """keras-hub Gemma 4's mistake: at least one rotated pair."""

    clamp = True


def test_keras_convention_builds_the_layer_from_the_names_it_declares():
    assert detect_convention(PRopeLayer)[0] == "keras"
    outcome = _check(PRopeLayer)
    assert outcome.signature == "keras" and outcome.grade == "conformant", outcome.causes
    cases = {r.case.name for r in outcome.results}
    assert {"llama-hf-layout-packed", "scale1.5-p0.25", "p0-identity"} <= cases  # sequence_axis, s, p
    bad = _check(ClampedPRopeLayer)
    assert bad.grade == "fail" and "the width clamp max(2, ...)" in grade_line(bad)


def test_keras_convention_lists_what_a_layer_cannot_express():
    """keras.layers-style constructors without a rotary fraction or sequence axis: those cases are not tested."""

    class PlainRope(keras.layers.Layer):
        def __init__(self, max_wavelength=10_000.0, **kwargs):
            super().__init__(**kwargs)
            self.w = max_wavelength

        def call(self, inputs, positions):
            return keras_rope(inputs, positions, inputs.shape[-1], self.w)

    outcome = _check(PlainRope)
    reasons = {why for _, why in outcome.untested}
    assert any("needs a rotary fraction" in why for why in reasons)
    assert any("needs sequence_axis" in why for why in reasons)
    assert outcome.grade == "conformant" and all(r.case.rope_percentage == 1.0 for r in outcome.results)


def test_keras_convention_under_a_mixed_policy_grades_bfloat16_inputs():
    outcome = _check(PRopeLayer, dtypes=("bfloat16", "float32"), autocast="bfloat16")
    assert {r.case.dtype for r in outcome.results} == {"bfloat16"}
    assert any("mixed_bfloat16 policy" in why for _, why in outcome.untested)
    assert outcome.grade == "conformant", outcome.causes


def test_keras_convention_needs_keras_backend_arrays(capsys):
    impl = f"{__file__}:PRopeLayer"
    assert main(["check", "--impl", impl, "--framework", "numpy", "--dtype", "float32"]) == 2
    assert "runs on Keras's backend" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# keras-hub, with no glue: its layer class, or its Gemma 4 attention's rope method, named


def _needs_keras_hub() -> None:
    if importlib.util.find_spec("keras_hub") is None:
        pytest.skip("keras_hub is not installed here (pip install --no-deps keras-hub==0.32.0; conformance/README.md)")


def test_keras_hub_gemma4_attention_width_clamp(capsys):
    """Gemma4TextAttention._apply_rope named as is: the layer is built from SPEC's parameters
    (rope_wavelength, rope_scaling_factor, rope_partial_rotary_factor, head_dim, heads) and its
    rotary_dim = max(2, ...) is named at p = 0."""
    _needs_keras_hub()
    impl = "keras_hub.src.models.gemma4.gemma4_attention:Gemma4TextAttention._apply_rope"
    args = ["check", "--impl", impl, "--dtype", "float32", "--max-failures", "1"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "convention keras" in out and "    matches the width clamp max(2, ...)\n" in out  # the case shown
    assert "GRADE: NOT CONFORMANT (float32: matches the width clamp max(2, ...)" in out.splitlines()[-1]


def test_keras_hub_rotary_embedding(capsys):
    _needs_keras_hub()
    args = ["check", "--impl", "keras_hub.layers:RotaryEmbedding", "--dtypes-claimed", "f32"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "convention keras" in out and "needs a rotary fraction" in out
    assert "GRADE for the claimed float32: CONFORMANT" in out.splitlines()[-1]


def test_reproducer_runs_under_the_mixed_policy(tmp_path):
    """The reproducer of an --autocast failure sets Keras's backend and runs the call under the same
    mixed policy: it fails on its own, as the check did."""
    import subprocess
    import sys

    from p_rope.conformance.targets import load_callable

    function, statement = load_callable(f"{__file__}:keras_rope_in_compute_dtype")
    outcome = check(function, import_statement=statement, dtypes=("float32",), names=("gemma4-global-kv",),
                    autocast="bfloat16", max_reproducers=1)  # fmt: skip
    (text,) = outcome.reproducers.values()
    assert "--autocast bfloat16" in text and 'set_dtype_policy("mixed_bfloat16")' in text
    path = tmp_path / "repro.py"
    path.write_text(text)
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1 and "x the conformant bound" in run.stderr, run.stderr[-2000:]


class NeedsVocabulary(PRopeLayer):
    def __init__(self, head_dim, vocabulary_size, **kwargs):
        super().__init__(head_dim, **kwargs)


class TakesNoPositions(PRopeLayer):
    def call(self, inputs):
        return inputs


@pytest.mark.parametrize(("layer", "message"), [("NeedsVocabulary", "needs vocabulary_size"),
                                                ("TakesNoPositions", "takes no positions")])  # fmt: skip
def test_keras_layer_the_convention_cannot_call_is_a_usage_error(layer, message, capsys):
    assert main(["check", "--impl", f"{__file__}:{layer}", "--dtype", "float32"]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Reproducers of the keras convention: the layer built with the keywords the check passed, called
# the same way, graded by the script's own float64 reference


class Bf16PositionsLayer(PRopeLayer):
    """Positions rounded to bfloat16 before the frequency product (keras-hub's bf16 finding)."""

    def call(self, inputs, positions):
        positions = ops.cast(ops.cast(positions, "bfloat16"), "float32")
        return super().call(inputs, positions)


class ClampedAttention(keras.layers.Layer):
    """An attention layer whose own rope method clamps the width (named as ``ClampedAttention._apply_rope``)."""

    def __init__(self, head_dim, num_query_heads, rope_wavelength=10_000.0, rope_partial_rotary_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.inv = _inv_freq(head_dim, rope_wavelength, rope_partial_rotary_factor, clamp=True)
        self.heads = num_query_heads

    def _apply_rope(self, x, start_index, positions):
        assert x.shape[-2] == self.heads, "built for another number of heads"
        return _rotate(x, ops.cast(positions + start_index, "float32")[..., None] * ops.convert_to_tensor(self.inv))


def _reproducer(name: str, case: str, dtype: str) -> str:
    from p_rope.conformance.targets import load_callable

    function, statement = load_callable(f"{__file__}:{name}")
    outcome = check(function, import_statement=statement, dtypes=(dtype,), names=(case,), max_reproducers=1)
    assert outcome.signature == "keras" and outcome.grade == "fail", outcome.causes
    (text,) = outcome.reproducers.values()
    assert outcome.repro_notes[f"apply/{dtype}/{case}"].startswith("(1, 1, 1, ")  # one token of one head
    return text


def _run(text: str, tmp_path) -> tuple[int, str]:
    import subprocess
    import sys

    path = tmp_path / "repro.py"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # the script sets its own
    run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300)
    return run.returncode, run.stderr


@pytest.mark.parametrize(
    ("name", "case", "dtype", "message"),
    [
        ("ClampedPRopeLayer", "p0-identity", "float32", "NoPE lanes are not bit-identical"),
        ("Bf16PositionsLayer", "gemma4-global-kv", "bfloat16", "x the conformant bound"),
    ],
)
def test_keras_reproducer_fails_on_its_own_and_passes_on_the_fixed_layer(name, case, dtype, message, tmp_path):
    """The script builds the layer class named with the constructor keywords the check passed (the
    shrunk case's, dtype policy included) and exits 1 on its own; the same script with the correct
    layer (PRopeLayer) in its place exits 0."""
    text = _reproducer(name, case, dtype)
    assert f"Layer = _module.{name}\n" in text and "rope_partial_rotary_factor=" in text
    assert f"dtype={dtype!r}" in text and f'"KERAS_BACKEND", {keras.backend.backend()!r}' in text
    assert len(text.splitlines()) <= 60, text  # about 50 lines; importing a file by path takes five more
    rc, err = _run(text, tmp_path)
    assert rc == 1 and message in err, err[-2000:]
    rc, err = _run(text.replace(f"Layer = _module.{name}\n", "Layer = _module.PRopeLayer\n"), tmp_path)
    assert rc == 0, err[-2000:]


def test_keras_reproducer_of_a_method_builds_its_layer_and_calls_the_method(tmp_path):
    text = _reproducer("ClampedAttention._apply_rope", "p0-identity", "float32")
    assert "Layer = _module.ClampedAttention\n" in text and "num_query_heads=1" in text
    assert "Layer._apply_rope(layer, v, start_index=0, positions=p)" in text
    rc, err = _run(text, tmp_path)
    assert rc == 1 and "NoPE lanes are not bit-identical" in err, err[-2000:]


class UnclampedAttention(ClampedAttention):
    """Inherits ClampedAttention._apply_rope; its constructor builds the right frequencies."""

    def __init__(self, head_dim, num_query_heads, rope_wavelength=10_000.0, rope_partial_rotary_factor=1.0, **kwargs):
        super().__init__(head_dim, num_query_heads, rope_wavelength, rope_partial_rotary_factor, **kwargs)
        self.inv = _inv_freq(head_dim, rope_wavelength, rope_partial_rotary_factor)


def test_an_inherited_method_builds_the_class_it_was_named_through():
    """``--impl file:Sub.method`` where Sub inherits the method: the check builds Sub (whose fix is
    in its constructor), not the base class that defines the method."""
    assert main(["check", "--impl", f"{__file__}:UnclampedAttention._apply_rope", "--dtype", "float32"]) == 0
    assert main(["check", "--impl", f"{__file__}:ClampedAttention._apply_rope", "--dtype", "float32"]) == 1


def test_keras_hub_gemma4_reproducer_fails_on_its_own(tmp_path):
    """keras-hub's width clamp, as a pasteable script: Gemma4TextAttention built as the check built it,
    its _apply_rope called, on one token of a head of 4 (the script sets KERAS_BACKEND itself)."""
    _needs_keras_hub()
    from p_rope.conformance.targets import load_callable

    function, statement = load_callable("keras_hub.src.models.gemma4.gemma4_attention:Gemma4TextAttention._apply_rope")
    outcome = check(function, import_statement=statement, dtypes=("float32",), names=("p0-identity",))
    text = outcome.reproducers["apply/float32/p0-identity"]
    assert "Layer = keras_hub.src.models.gemma4.gemma4_attention.Gemma4TextAttention\n" in text
    assert "on (1, 1, 1, 4) inputs" in text and len(text.splitlines()) <= 54
    rc, err = _run(text, tmp_path)
    assert rc == 1 and "NoPE lanes are not bit-identical" in err, err[-2000:]
