"""check's call conventions (conformance/conventions.py): each grades the cases it can express and
lists the others as not tested; correct outside code written in each library's idiom is accepted,
broken code is rejected with its mistake named. Real libraries run where they are installed
(transformers, rotary-embedding-torch), as conformance/README.md's commands.

Small case subsets keep these fast; the self-test runs every case.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from p_rope.conformance import outside
from p_rope.conformance.__main__ import main
from p_rope.conformance.check import check, grade_line
from p_rope.conformance.conventions import detect_convention

pytest.importorskip("torch")

SUBSET = ("gemma4-global-kv", "llama-hf-layout-packed", "p0-identity", "p0.58-H100-R28", "p0.5-interleaved",
          "scale1.5-p0.25", "rotated-pairs-17", "batch-axes-broadcast", "edge-positions", "special-finite")  # fmt: skip
CLAIMED = ("float16", "bfloat16", "float32")


def _check(function, **kw):
    kw.setdefault("names", SUBSET)
    kw.setdefault("repro_level", None)
    return check(function, **kw)


def test_seq_axis_alone_opts_in_its_own_cases_only():
    """A function adding only seq_axis gets the [B, N, L, H] cases, never [L] positions or 5-D inputs
    (the false reject of issue 12)."""
    import p_rope

    def rope(inputs, positions, head_dim, max_wavelength=10_000, rope_percentage=1.0, *, seq_axis=-3):
        if positions.ndim != 2 or inputs.ndim != 4:
            raise ValueError("[B, L, N, H] inputs and [B, L] positions only")
        return p_rope.apply_p_rope(inputs, positions, head_dim, max_wavelength, rope_percentage, seq_axis=seq_axis)

    outcome = check(rope, framework_name="numpy", repro_level=None)
    assert outcome.signature == "ours" and outcome.keywords == frozenset({"seq_axis"})
    assert outcome.grade == "strict", outcome.causes
    assert any(r.case.seq_axis == -2 for r in outcome.results)
    assert all(len(r.case.shape) == 4 and r.case.positions.form == "full" for r in outcome.results)
    assert any("needs [B, L, N, H] inputs / [B, L] positions" in why for _, why in outcome.untested)


@pytest.mark.parametrize(
    ("function", "convention"),
    [
        (outside.hf_apply_rotary_pos_emb, "hf"),
        (outside.flash_apply_rotary_emb, "flash_attn"),
        (outside.angles_apply_rotary_emb, "angles"),
        (outside.gemma_jax, "gemma"),
        (outside.paper_numpy, "paper"),
    ],
)
def test_conventions_are_detected_from_parameter_names(function, convention: str):
    assert detect_convention(function)[0] == convention


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("hf-tables", dict(function=outside.hf_apply_rotary_pos_emb)),
        ("hf-rotary", dict(function=outside.hf_apply_rotary_pos_emb, rotary=outside.HfProportionalRotary)),
        ("vllm-layer", dict(function=outside.EngineRotary, signature="vllm")),
        ("flash-attn", dict(function=outside.flash_apply_rotary_emb)),
        ("angles", dict(function=outside.angles_apply_rotary_emb, names=("p0.5-interleaved", "H6-interleaved"))),
    ],
)
def test_correct_outside_code_is_accepted_in_each_convention(name: str, kw: dict):
    outcome = _check(**kw, claimed=CLAIMED)
    assert outcome.framework == "torch"
    assert outcome.results, "no case ran"
    assert outcome.grade in ("conformant", "strict"), (name, outcome.causes)
    assert not [p for r in outcome.results for p in r.problems if "(at conformance/" in p]


def _vllm_kernel(positions, query, key, head_size, cos_sin_cache, is_neox):
    """A kernel given the suite's cache (vLLM's ops.rotary_embedding shape), in place, float32 math."""
    import torch

    cos, sin = cos_sin_cache[positions].float().chunk(2, dim=-1)
    for x in (query, key):
        heads = x.view(x.shape[0], -1, head_size)
        x1, x2 = (heads[..., : head_size // 2], heads[..., head_size // 2 :]) if is_neox else (
            heads[..., 0::2], heads[..., 1::2])  # fmt: skip
        a = x1.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        b = x2.to(a.dtype)
        c, s = cos[:, None].to(a.dtype), sin[:, None].to(a.dtype)
        o1, o2 = (a * c - b * s).to(x.dtype), (b * c + a * s).to(x.dtype)
        x1.copy_(o1)
        x2.copy_(o2)


def test_vllm_kernel_with_the_suites_cache_is_accepted():
    outcome = _check(_vllm_kernel, claimed=CLAIMED)
    assert outcome.signature == "vllm"
    assert {r.case.pairing for r in outcome.results} == {"split_half", "interleaved"}
    assert outcome.grade in ("conformant", "strict"), outcome.causes


class _NeoxEngine(outside.EngineRotary):
    """An engine layer applying partial_rotary_factor NeoX-style: the first rotary_dim = 2R lanes as
    pairs (i, i + R), ladder over 2R (what a p-RoPE model loaded as NeoX partial rotary gets)."""

    def __init__(self, head_size, max_position_embeddings, base, partial_rotary_factor=1.0):
        import torch

        self.head_size, self.is_neox_style = head_size, True
        rotary_dim = 2 * int(partial_rotary_factor * head_size // 2)
        inv_freq = base ** -(torch.arange(0, rotary_dim, 2, dtype=torch.float64) / max(rotary_dim, 1))
        angles = torch.arange(max_position_embeddings, dtype=torch.float64)[:, None] * inv_freq
        self.rotary_dim = rotary_dim
        self.cos_sin_cache = torch.cat([angles.cos(), angles.sin()], dim=-1).float()

    def __call__(self, positions, query, key):
        cos, sin = self.cos_sin_cache[positions].chunk(2, dim=-1)
        for x in (query, key):
            part = x.view(x.shape[0], -1, self.head_size)[..., : self.rotary_dim]
            x1, x2 = part[..., : self.rotary_dim // 2].float(), part[..., self.rotary_dim // 2 :].float()
            c, s = cos[:, None], sin[:, None]
            part.copy_(np.concatenate if False else __import__("torch").cat([x1 * c - x2 * s, x2 * c + x1 * s], -1))


class _OffsetsIgnored(outside.EngineRotary):
    def __call__(self, positions, query, key, offsets=None):
        return super().__call__(positions, query, key)


def test_engine_offsets_are_passed_and_an_engine_ignoring_them_is_named():
    names = ("gemma4-global-kv", "p0.58-H100-R28", "decode-L1-N8")
    good = _check(outside.EngineRotary, signature="vllm", dtypes=("float32",), names=names)
    assert good.grade in ("conformant", "strict") and len(good.results) >= 2
    bad = _check(_OffsetsIgnored, signature="vllm", dtypes=("float32",), names=names)
    assert bad.grade == "fail" and "KV offsets ignored" in bad.causes["float32"]


def test_neox_partial_rotary_engine_is_rejected_with_its_mistake_named():
    outcome = _check(_NeoxEngine, signature="vllm", dtypes=("float32",))
    assert outcome.grade == "fail"
    assert "the NeoX partial rotary" in outcome.causes["float32"]
    assert "matches the NeoX partial rotary" in grade_line(outcome)
    failing = {r.case.id for r in outcome.failures("conformant")}
    assert outcome.case_mistakes and set(outcome.case_mistakes) <= failing  # per failing case examined
    assert any("the NeoX partial rotary" in names for names in outcome.case_mistakes.values())


def test_autocast_runs_a_matmul_frequency_product_in_bfloat16():
    """HF's rotary modules take positions x frequencies as a matmul: under torch autocast it runs in
    bfloat16 (diffusers #13920); --autocast grades that path and names the mistake."""
    import torch

    def rope(inputs, positions, head_dim, max_wavelength=10_000, rope_percentage=1.0):
        r = int(rope_percentage * head_dim // 2)
        inv = 1.0 / max_wavelength ** (torch.arange(0, 2 * r, 2).float() / head_dim)
        inv = torch.cat([inv, torch.zeros(head_dim // 2 - r)])
        freqs = (positions.float()[..., None] @ inv[None, :]).float()  # [B, L, H/2]
        cos, sin = freqs.cos()[..., None, :], freqs.sin()[..., None, :]
        x1, x2 = inputs.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(inputs.dtype)

    plain = _check(rope, dtypes=("float32",))
    assert plain.grade == "conformant"
    mixed = _check(rope, dtypes=("float32",), autocast="bfloat16")
    assert mixed.grade == "fail" and mixed.options == ("--autocast bfloat16",)
    assert "autocast-bf16 frequency product" in mixed.causes["float32"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_grades_the_compiled_callable():
    outcome = _check(outside.hf_torch, dtypes=("float32",), names=("gemma4-global-kv",), compile=True)
    assert outcome.options == ("--compile",) and outcome.results
    assert outcome.grade == "conformant", outcome.causes


def test_compile_and_autocast_need_a_framework_that_has_them(capsys):
    impl = "p_rope.conformance.outside:paper_numpy"
    assert main(["check", "--impl", impl, "--compile"]) == 2
    assert main(["check", "--impl", impl, "--autocast", "bf16"]) == 2
    assert "no compiler" in capsys.readouterr().err


def test_config_sets_the_parameters(tmp_path: Path, capsys):
    """--config grades at a Hugging Face config's parameters (p_rope.params_from_hf_config)."""
    config = {
        "model_type": "gemma4_text", "head_dim": 256, "global_head_dim": 512,
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        },
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    args = ["check", "--impl", "p_rope:apply_p_rope", "--config", str(path), "--layer-type", "full_attention",
            "--dtype", "float32"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "parameters: H=512 w=1e+06 p=0.25 scale_factor=1" in out and "GRADE: STRICT" in out
    assert main([*args[:-4], "--layer-type", "sliding_attention", "--dtype", "float32"]) == 0
    assert "parameters: H=256 w=10000 p=1" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Real libraries, as conformance/README.md's commands (skipped, with the reason, where absent)


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed here (conformance/README.md says how to run it)")


def test_transformers_gemma4_proportional_rope(capsys):
    _needs("transformers")
    impl = "transformers.models.gemma4.modeling_gemma4:apply_rotary_pos_emb"
    rotary = "transformers.models.gemma4.modeling_gemma4:Gemma4TextRotaryEmbedding"
    assert main(["check", "--impl", impl, "--rotary", rotary, "--dtypes-claimed", "f16,bf16,f32"]) == 0
    out = capsys.readouterr().out
    assert "convention hf" in out
    assert "GRADE for the claimed float16, bfloat16, float32: CONFORMANT" in out.splitlines()[-1]
    assert "  float64: matches float32 arithmetic on float64 inputs" in out


def test_onnxruntime_rotary_embedding(capsys):
    """ONNX RotaryEmbedding-23 with full-width caches: conformant where onnxruntime implements it, the
    other dtypes reported once as not supported."""
    _needs("onnxruntime")
    _needs("onnx")
    assert main(["check", "--impl", "onnxruntime:InferenceSession", "--dtypes-claimed", "f16,f32"]) == 0
    out = capsys.readouterr().out
    assert "convention onnx" in out and "GRADE for the claimed float16, float32: CONFORMANT" in out
    assert out.count("not supported (") == 2


def test_rotary_embedding_torch(capsys):
    _needs("rotary_embedding_torch")
    args = ["check", "--impl", "rotary_embedding_torch:apply_rotary_emb", "--rotary",
            "rotary_embedding_torch:RotaryEmbedding"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "convention angles" in out and "GRADE: CONFORMANT" in out


def _hub_kernel_module(function, with_signature: bool):
    """What the kernels package makes of a function (use_kernel_func_from_hub): an nn.Module instance whose
    forward(*args, **kwargs) calls it, with the function's signature attached to forward (recent kernels)
    or not (older ones)."""
    import inspect

    import torch

    class Func(torch.nn.Module):
        def forward(self, *args, **kwargs):
            return function(*args, **kwargs)

    if with_signature:
        own = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        Func.forward.__signature__ = inspect.Signature([own, *inspect.signature(function).parameters.values()])
    return Func()


@pytest.mark.parametrize("with_signature", [True, False], ids=["forward-signature", "closure"])
def test_hub_kernel_wrappers_are_unwrapped(with_signature: bool):
    """A (*args, **kwargs) wrapper is read through to the function it calls: the hf convention is detected
    and q, k, cos, sin are passed as Hugging Face's apply_rotary_pos_emb takes them."""
    wrapped = _hub_kernel_module(outside.hf_apply_rotary_pos_emb, with_signature)
    assert detect_convention(wrapped)[0] == "hf"
    outcome = _check(wrapped, dtypes=("float32",))
    assert outcome.signature == "hf" and outcome.grade in ("conformant", "strict"), outcome.causes
    assert any(r.case.seq_axis == -3 for r in outcome.results)  # unsqueeze_dim passed


# ---------------------------------------------------------------------------------------------
# Reproducers of the hf convention: cos/sin as the check made them (the rotary module built with the
# same arguments, or SPEC.md's tables as literals), q and k as the check passed them


class ClampedRotary(outside.HfProportionalRotary):
    """keras-hub's mistake in a rotary module: at least one rotated pair."""

    def __init__(self, head_dim, rope_theta=10_000.0, partial_rotary_factor=1.0, factor=1.0):
        super().__init__(head_dim, rope_theta, max(partial_rotary_factor, 2 / head_dim), factor)


def bf16_tables_apply(q, k, cos, sin, unsqueeze_dim=1):
    """Hugging Face's apply_rotary_pos_emb with cos/sin rounded to bfloat16 first."""
    import torch

    cos, sin = (t.to(torch.bfloat16).to(q.dtype) for t in (cos, sin))
    return outside.hf_apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)


def _hf_reproducer(impl: str, rotary: str | None, case: str, dtype: str = "float32") -> str:
    from p_rope.conformance.targets import load_callable

    function, statement = load_callable(impl)
    extra = {}
    if rotary is not None:
        extra["rotary"], extra["rotary_statement"] = load_callable(rotary)
    outcome = check(function, import_statement=statement, dtypes=(dtype,), names=(case,), max_reproducers=1, **extra)
    assert outcome.signature == "hf" and outcome.grade == "fail", outcome.causes
    return outcome.reproducers[f"apply/{dtype}/{case}"]


def _run_script(text: str, tmp_path: Path) -> tuple[int, str]:
    import subprocess
    import sys

    path = tmp_path / "repro.py"
    path.write_text(text)
    run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    return run.returncode, run.stderr


OUTSIDE = "p_rope.conformance.outside"


def _fails_alone_passes_fixed(text: str, mutant: str, correct: str, message: str, tmp_path: Path) -> None:
    """The script exits 1 with ``message`` as written (calling ``mutant`` of this file) and 0 with
    ``correct`` (a function of conformance/outside.py) in its place."""
    rc, err = _run_script(text, tmp_path)
    assert rc == 1 and message in err, err[-2000:]
    fixed = text.replace(f"impl = _module.{mutant}\n", f"import {OUTSIDE}\nimpl = {OUTSIDE}.{correct}\n")
    assert fixed != text
    rc, err = _run_script(fixed, tmp_path)
    assert rc == 0, err[-2000:]


class TypedRotary(outside.HfProportionalRotary):
    """A rotary module that takes its dtype (as vLLM's and some HF modules do)."""

    def __init__(self, head_dim, rope_theta=10_000.0, partial_rotary_factor=1.0, dtype=None):
        super().__init__(head_dim, rope_theta, partial_rotary_factor)
        self.dtype = dtype


class ClampedTypedRotary(TypedRotary):
    def __init__(self, head_dim, rope_theta=10_000.0, partial_rotary_factor=1.0, dtype=None):
        super().__init__(head_dim, rope_theta, max(partial_rotary_factor, 2 / head_dim), dtype)


@pytest.mark.parametrize(
    ("mutant", "correct", "spelled"),
    [
        ("ClampedRotary", f"{OUTSIDE}.HfProportionalRotary", "partial_rotary_factor=0.0"),
        ("ClampedTypedRotary", "_module.TypedRotary", "dtype=torch.float32"),
    ],
)
def test_hf_reproducer_builds_the_rotary_module_as_the_check_did(mutant, correct, spelled, tmp_path: Path):
    """A clamped rotary module: the script builds it with the keywords the check passed (a dtype as
    torch spells it), calls it on the position ids, applies q and k; it exits 1 alone and 0 with the
    correct module in its place."""
    text = _hf_reproducer(f"{OUTSIDE}:hf_apply_rotary_pos_emb", f"{__file__}:{mutant}", "p0-identity")
    assert f"Rotary = _module.{mutant}\n" in text and spelled in text and "partial_rotary_factor=0.0" in text
    assert "dtype=np.int64" in text and len(text.splitlines()) <= 64, text  # two files imported by path: ten lines
    rc, err = _run_script(text, tmp_path)
    assert rc == 1 and "NoPE lanes are not bit-identical" in err, err[-2000:]
    fixed = text.replace(f"Rotary = _module.{mutant}\n", f"Rotary = {correct}\n")
    rc, err = _run_script(fixed, tmp_path)
    assert rc == 0, err[-2000:]


def test_hf_reproducer_with_spec_tables(tmp_path: Path):
    """No rotary module: the script holds SPEC.md's cos/sin as the check passed them."""
    text = _hf_reproducer(f"{__file__}:bf16_tables_apply", None, "gemma4-global-kv")
    assert "COS = np.array(" in text and "impl = _module.bf16_tables_apply\n" in text
    _fails_alone_passes_fixed(text, "bf16_tables_apply", "hf_apply_rotary_pos_emb", "x the conformant bound", tmp_path)


@pytest.mark.parametrize(
    ("family", "rotary", "case", "dtype", "message"),
    [
        ("gpt_neox", "p_rope.conformance.ecosystem.glue_transformers:gpt_neox_rotary", "p0.58-H100-R28", "float32",
         "NoPE lanes are not bit-identical"),
        ("gemma4", "transformers.models.gemma4.modeling_gemma4:Gemma4TextRotaryEmbedding", "gemma4-global-kv",
         "float64", "x the conformant bound"),
    ],
)  # fmt: skip
def test_transformers_reproducers_fail_on_their_own(family, rotary, case, dtype, message, tmp_path: Path):
    """transformers' GPT-NeoX partial rotary (not p-RoPE) and Gemma 4's float32 tables on float64 inputs,
    as pasteable scripts (Gemma 4's rotary class built from its configuration class)."""
    _needs("transformers")
    impl = f"transformers.models.{family}.modeling_{family}:apply_rotary_pos_emb"
    text = _hf_reproducer(impl, rotary, case, dtype)
    rc, err = _run_script(text, tmp_path)
    assert rc == 1 and message in err, err[-2000:]


class GivenFrequencies(outside.HfProportionalRotary):
    def __init__(self, head_dim, inv_freq):
        self.inv_freq = inv_freq.float()


def test_hf_reproducer_is_not_written_for_a_rotary_module_built_from_arrays():
    """A module taking the suite's frequency tensor cannot be spelled in a script: no reproducer, no error."""
    outcome = check(bf16_tables_apply, rotary=GivenFrequencies, dtypes=("float32",), names=("gemma4-global-kv",))
    assert outcome.grade == "fail" and outcome.reproducers == {} and outcome.repro_notes == {}


INHERITED = """
class Base:
    def rope(self, x, positions, scale=2.0):
        return (self.offset, x, positions, scale)


class Sub(Base):
    offset = 7
"""


def test_an_inherited_method_is_named_through_its_class(tmp_path: Path) -> None:
    """``--impl file:Sub.method`` where Sub inherits the method: the callable is named as Sub's member
    (what the Keras convention builds its layer from: frameworks._owner), same signature, same calls."""
    import inspect

    from p_rope.conformance.frameworks import _owner
    from p_rope.conformance.targets import load_callable

    path = tmp_path / "inherited.py"
    path.write_text(INHERITED)
    function, statement = load_callable(f"{path}:Sub.rope")
    owner = _owner(function)
    assert inspect.isclass(owner) and owner.__name__ == "Sub", owner
    assert function.__qualname__ == "Sub.rope" and "impl = _module.Sub.rope" in statement
    assert list(inspect.signature(function).parameters) == ["self", "x", "positions", "scale"]
    assert function(owner(), 1, 2) == (7, 1, 2, 2.0)
    base, _ = load_callable(f"{path}:Base.rope")
    assert _owner(base).__name__ == "Base" and base.__qualname__ == "Base.rope"


def bf16_angles_apply(freqs, t, seq_dim=-2):
    """rotary-embedding-torch's apply with its angles rounded to bfloat16 first."""
    return outside.angles_apply_rotary_emb(freqs.bfloat16().to(freqs.dtype), t, seq_dim=seq_dim)


def test_angles_reproducer_holds_the_angles_the_check_passed(tmp_path: Path):
    """The angles convention (no rotary module): the script holds the per-lane angles as the check passed
    them (heads axis 1) and calls the function with seq_dim; it exits 1 alone and 0 with the correct one."""
    from p_rope.conformance.targets import load_callable

    function, statement = load_callable(f"{__file__}:bf16_angles_apply")
    outcome = check(function, import_statement=statement, dtypes=("float32",), names=("p0.5-interleaved",),
                    max_reproducers=1)  # fmt: skip
    assert outcome.signature == "angles" and outcome.grade == "fail", outcome.causes
    (text,) = outcome.reproducers.values()
    assert "FREQS = np.array(" in text and "seq_dim=-3" in text and len(text.splitlines()) <= 60, text
    _fails_alone_passes_fixed(text, "bf16_angles_apply", "angles_apply_rotary_emb", "x the conformant bound", tmp_path)


def bf16_tables_flash(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None,
                      max_seqlen=None):  # fmt: skip
    """flash-attn's apply_rotary_emb with its cos/sin rounded to bfloat16 first."""
    cos, sin = cos.bfloat16().to(cos.dtype), sin.bfloat16().to(sin.dtype)
    return outside.flash_apply_rotary_emb(x, cos, sin, interleaved, inplace, seqlen_offsets, cu_seqlens, max_seqlen)


def test_flash_reproducers_call_as_the_check_called(tmp_path: Path):
    """The flash_attn convention: each script holds the tables and seqlen_offsets the check passed and
    the same options (interleaved, inplace on a copy, cu_seqlens over flattened tokens); each exits 1
    alone and 0 with the correct function in its place."""
    from p_rope.conformance.targets import load_callable

    function, statement = load_callable(f"{__file__}:bf16_tables_flash")
    names = ("p0.5-interleaved", "w2-H34", "negative-positions")
    outcome = check(function, import_statement=statement, dtypes=("float32",), names=names, max_reproducers=3)
    assert outcome.signature == "flash_attn" and outcome.grade == "fail", outcome.causes
    texts = list(outcome.reproducers.values())
    assert len(texts) == 3 and all("OFFSETS = np.array(" in t and "seqlen_offsets=" in t for t in texts)
    joined = "".join(texts)
    assert "interleaved=True" in joined and "inplace=True" in joined and "cu_seqlens=" in joined
    for text in texts:
        assert len(text.splitlines()) <= 90, text  # the tables take about H / 16 lines each
        call = text[text.index("def impl(v, p):") :].split("\n\n")[0]
        assert max(len(line) for line in call.splitlines()) <= 120, call
        _fails_alone_passes_fixed(
            text, "bf16_tables_flash", "flash_apply_rotary_emb", "x the conformant bound", tmp_path
        )


class Bf16CacheEngine(outside.EngineRotary):
    """EngineRotary with its cos/sin cache rounded to bfloat16."""

    def __init__(self, head_size, max_position_embeddings, base, is_neox_style=True, rope_proportion=1.0, factor=1.0):
        super().__init__(head_size, max_position_embeddings, base, is_neox_style, rope_proportion, factor)
        self.cos_sin_cache = self.cos_sin_cache.bfloat16().float()


def bf16_cache_kernel(positions, query, key, head_size, cos_sin_cache, is_neox):
    """_vllm_kernel with the cache it is given rounded to bfloat16."""
    _vllm_kernel(positions, query, key, head_size, cos_sin_cache.bfloat16().to(cos_sin_cache.dtype), is_neox)


def test_vllm_reproducers_call_as_the_check_called(tmp_path: Path):
    """The vllm convention: a factory's layer is built with the keywords the check passed and called on
    the token positions (and per-sequence offsets); a kernel gets the cache (SPEC.md's rows, those the
    case reads as the check passed them) and head_size / is_neox. q and k are copies of the flattened
    tokens. Each script exits 1 alone and 0 with the correct engine or kernel in its place."""
    from p_rope.conformance.targets import load_callable

    names = ("p0.58-H100-R28", "p0.5-interleaved")  # offsets: split-half with offsets; interleaved
    layer, statement = load_callable(f"{__file__}:Bf16CacheEngine")
    outcome = check(layer, import_statement=statement, signature="vllm", dtypes=("float32",), names=names,
                    max_reproducers=2)  # fmt: skip
    assert outcome.grade == "fail" and len(outcome.reproducers) == 2, outcome.causes
    texts = list(outcome.reproducers.values())
    assert all("apply = impl(" in t and "max_position_embeddings=" in t and "POSITIONS = np.array(" in t for t in texts)
    assert "is_neox_style=False" in "".join(texts) and "offsets=to_torch(OFFSETS)" in "".join(texts)
    for text in texts:
        assert len(text.splitlines()) <= 80 and max(len(line) for line in text.splitlines()) <= 160, text
        _fails_alone_passes_fixed(text, "Bf16CacheEngine", "EngineRotary", "x the conformant bound", tmp_path)

    kernel, statement = load_callable(f"{__file__}:bf16_cache_kernel")
    outcome = check(kernel, import_statement=statement, dtypes=("float32",), names=names[:1], max_reproducers=1)
    assert outcome.signature == "vllm" and len(outcome.reproducers) == 1, outcome.causes
    for text in outcome.reproducers.values():
        assert "CACHE[READ] = CACHE_ROWS" in text and "is_neox=" in text and "head_size=" in text, text
        rc, err = _run_script(text, tmp_path)
        assert rc == 1 and "x the conformant bound" in err, err[-2000:]
        fixed = text.replace("impl = _module.bf16_cache_kernel\n", "impl = _module._vllm_kernel\n")
        assert fixed != text
        rc, err = _run_script(fixed, tmp_path)
        assert rc == 0, err[-2000:]


class FrequencyEngine(Bf16CacheEngine):
    def __init__(self, head_size, max_position_embeddings, base, inv_freq):
        super().__init__(head_size, max_position_embeddings, base)


def test_vllm_reproducer_is_not_written_for_a_layer_built_from_arrays():
    """A factory taking the suite's frequency tensor cannot be spelled in a script: no reproducer, no error."""
    outcome = check(FrequencyEngine, signature="vllm", dtypes=("float32",), names=("p0.5-interleaved",))
    assert outcome.grade == "fail" and outcome.reproducers == {} and outcome.repro_notes == {}


BF16_SESSION = '''
import ml_dtypes
import onnxruntime


class Bf16CacheSession(onnxruntime.InferenceSession):
    """onnxruntime's session with the caches it is fed rounded to bfloat16."""

    def run(self, names, feeds):
        rounded = {k: v.astype(ml_dtypes.bfloat16).astype(v.dtype) if "cache" in k else v for k, v in feeds.items()}
        return super().run(names, rounded)
'''


def test_onnx_reproducers_run_the_graph_the_check_ran(tmp_path: Path):
    """The onnx convention: each script builds the one-node graph with the check's own function (its
    source, as it is), feeds the caches (and position ids) the check fed, and runs it with the session
    class named; it exits 1 with a session that rounds the caches, 0 with onnxruntime's own."""
    _needs("onnxruntime")
    _needs("onnx")
    from p_rope.conformance.targets import load_callable

    path = tmp_path / "bf16_session.py"
    path.write_text(BF16_SESSION)
    session, statement = load_callable(f"{path}:Bf16CacheSession")
    names = ("gemma4-global-kv", "p0.5-interleaved", "llama-hf-layout-packed")
    outcome = check(session, import_statement=statement, signature="onnx", dtypes=("float32",), names=names,
                    max_reproducers=3)  # fmt: skip
    assert outcome.grade == "fail" and len(outcome.reproducers) == 3, outcome.causes
    joined = "".join(outcome.reproducers.values())
    assert "'interleaved': 1" in joined and "'num_heads': " in joined and "POSITION_IDS = np.array(" in joined
    for text in outcome.reproducers.values():
        assert "def onnx_model(" in text and "COS_CACHE = np.array(" in text, text
        assert len(text.splitlines()) <= 90 and max(len(line) for line in text.splitlines()) <= 160, text
        rc, err = _run_script(text, tmp_path)
        assert rc == 1 and "x the conformant bound" in err, err[-2000:]
        fixed = text.replace(
            "impl = _module.Bf16CacheSession\n", "import onnxruntime\nimpl = onnxruntime.InferenceSession\n"
        )
        assert fixed != text
        rc, err = _run_script(fixed, tmp_path)
        assert rc == 0, err[-2000:]


class AnglesRotary:
    """A rotary module of the angles convention: rotary(positions) -> the angle of each rotated lane
    [..., L, 2R] (pairs interleaved), from float64 frequencies, in the positions' dtype."""

    def __init__(self, dim, theta, rope_percentage=1.0):
        import torch

        pairs = int(rope_percentage * dim // 2)
        self.freqs = theta ** -(torch.arange(pairs, dtype=torch.float64) * 2 / dim)

    def __call__(self, positions):
        angles = positions.double()[..., None] * self.freqs
        return angles.repeat_interleave(2, dim=-1).to(positions.dtype)


class Bf16AnglesRotary(AnglesRotary):
    def __call__(self, positions):
        angles = super().__call__(positions)
        return angles.bfloat16().to(angles.dtype)


def test_angles_reproducer_builds_the_rotary_module_as_the_check_did(tmp_path: Path):
    """The angles convention with a rotary module: the script builds it with the keywords the check
    passed and calls it on the positions as the check did (float32); it exits 1 with a module that
    rounds its angles to bfloat16, 0 with the correct module in its place."""
    from p_rope.conformance.targets import load_callable

    function, statement = load_callable(f"{OUTSIDE}:angles_apply_rotary_emb")
    rotary, rotary_statement = load_callable(f"{__file__}:Bf16AnglesRotary")
    outcome = check(function, import_statement=statement, rotary=rotary, rotary_statement=rotary_statement,
                    dtypes=("float32",), names=("p0.5-interleaved", "H6-interleaved"), max_reproducers=2)  # fmt: skip
    assert outcome.signature == "angles" and outcome.grade == "fail" and outcome.reproducers, outcome.causes
    for text in outcome.reproducers.values():
        assert "Rotary = _module.Bf16AnglesRotary\n" in text and "rotary = Rotary(dim=" in text, text
        assert "ROTARY_POSITIONS = np.array(" in text and "dtype=np.float32" in text, text
        rc, err = _run_script(text, tmp_path)
        assert rc == 1 and "x the conformant bound" in err, err[-2000:]
        fixed = text.replace("Rotary = _module.Bf16AnglesRotary\n", "Rotary = _module.AnglesRotary\n")
        rc, err = _run_script(fixed, tmp_path)
        assert rc == 0, err[-2000:]
