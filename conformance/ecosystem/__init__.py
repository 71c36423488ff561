"""The ecosystem report: public p-RoPE and partial-RoPE code graded by ``check`` (reports/ecosystem.md).

    nox -s ecosystem                       every library in its own environment, then the report
    python -m p_rope.conformance.ecosystem run KEY --out DIR      one library, in its environment
    python -m p_rope.conformance.ecosystem report DIR             reports/ecosystem.{md,json}
    python -m p_rope.conformance.ecosystem drift DIR              a fresh run against the committed report

``LIBRARIES`` is the one list: each library's exact pins (what its environment installs), the code
graded (named, never re-implemented: the glue modules beside this file only name the callable,
build a library's config or layer from SPEC's parameters and move arrays in and out), the
``check`` arguments, and whether it needs a CUDA device. Nothing here imports a framework.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SCHEMA = "p-rope-ecosystem/1"
TORCH = "torch==2.13.0"  # every environment with torch gets this CPU build first, and keeps it
JAX = ("jax==0.10.2", "jaxlib==0.10.2")
REPORT_JSON = Path("reports/ecosystem.json")
REPORT_MD = Path("reports/ecosystem.md")
REPRO_DIR = Path("reports/ecosystem")
GLUE = "p_rope.conformance.ecosystem"
# keras-hub without TensorFlow: what importing its Gemma 4 attention needs (tensorflow-text is left out)
KERAS_HUB_DEPS = (
    "keras==3.15.1",
    "absl-py==2.5.1",
    "rich==15.0.0",
    "packaging==26.4",
    "regex==2026.11.19",
    "numpy==2.4.6",
    "tokenizers==0.23.3",
)


@dataclasses.dataclass(frozen=True)
class Library:
    """One graded library: how its environment is made and how ``check`` calls its code."""

    key: str  # file stem of its results and reproducers
    name: str  # as the report shows it
    distribution: str  # the PyPI distribution whose version is reported
    requirements: tuple[str, ...]  # exact pins, installed after torch (when torch is among them)
    function: str  # the library's own code that is graded
    impl: str  # check --impl; "pkgfile:DIST:PATH:ATTR" names a file inside an installed package
    check_args: tuple[str, ...] = ()  # the convention and its options
    convention: str = ""  # as the report shows it
    no_deps: tuple[str, ...] = ()  # pins installed with --no-deps (heavy optional imports avoided)
    env: tuple[tuple[str, str], ...] = ()  # environment variables of the check run
    needs_cuda: bool = False
    profile: str | None = None  # glue "module:function" f(x, positions, H, w, p) -> NumPy, for accuracy
    note: str = ""
    group: str = ""  # the nox environment (one per library; default: the key)

    @property
    def pins(self) -> dict[str, str]:
        """distribution -> exact version, of every pinned requirement."""
        pins = {}
        for requirement in (*self.requirements, *self.no_deps):
            name, sep, version = requirement.partition("==")
            if not sep:
                raise ValueError(f"{self.key}: requirement {requirement!r} is not pinned with ==")
            pins[name.split("[")[0].lower()] = version
        return pins


LIBRARIES: tuple[Library, ...] = (
    Library(
        key="gemma",
        name="google-deepmind gemma",
        distribution="gemma",
        requirements=(*JAX, "numpy==2.4.6"),
        no_deps=("gemma==3.3.0",),
        function="gemma.gm.math.apply_rope",
        impl="pkgfile:gemma:gm/math/_positional_embeddings.py:apply_rope",
        check_args=("--signature", "gemma"),
        convention="gemma signature",
        profile=f"{GLUE}.glue_gemma:profile",
        note="loaded from its file (gemma.gm imports kauldron and TensorFlow; apply_rope needs JAX only)",
    ),
    Library(
        key="transformers-gemma4",
        group="transformers",
        name="transformers (Gemma 4, proportional)",
        distribution="transformers",
        requirements=(TORCH, "transformers==5.25.0"),
        function="transformers.models.gemma4.modeling_gemma4.apply_rotary_pos_emb + Gemma4TextRotaryEmbedding",
        impl="transformers.models.gemma4.modeling_gemma4:apply_rotary_pos_emb",
        check_args=(
            "--convention",
            "hf",
            "--rotary",
            "transformers.models.gemma4.modeling_gemma4:Gemma4TextRotaryEmbedding",
            "--framework",
            "torch",
        ),
        convention="hf: cos/sin from its rotary module",
        profile=f"{GLUE}.glue_transformers:gemma4_profile",
    ),
    Library(
        key="transformers-gpt-neox",
        group="transformers",
        name="transformers (GPT-NeoX, partial_rotary_factor)",
        distribution="transformers",
        requirements=(TORCH, "transformers==5.25.0"),
        function="transformers.models.gpt_neox.modeling_gpt_neox.apply_rotary_pos_emb + GPTNeoXRotaryEmbedding",
        impl="transformers.models.gpt_neox.modeling_gpt_neox:apply_rotary_pos_emb",
        check_args=(
            "--convention",
            "hf",
            "--rotary",
            f"{GLUE}.glue_transformers:gpt_neox_rotary",
            "--framework",
            "torch",
        ),
        convention="hf: cos/sin from its rotary module (config partial_rotary_factor = p)",
        profile=f"{GLUE}.glue_transformers:gpt_neox_profile",
        note="GPT-NeoX-style partial rotary (Pythia, StableLM, Phi): the contrast, not p-RoPE by design",
    ),
    Library(
        key="keras-hub-torch",
        name="keras-hub Gemma 4 attention (Keras 3, torch backend)",
        distribution="keras-hub",
        requirements=(TORCH, *KERAS_HUB_DEPS),
        no_deps=("keras-hub==0.32.0",),
        function="keras_hub Gemma4TextAttention._apply_rope",
        impl="keras_hub.src.models.gemma4.gemma4_attention:Gemma4TextAttention._apply_rope",
        check_args=("--convention", "keras"),
        convention="keras: Gemma4TextAttention built from SPEC parameters, its _apply_rope called",
        env=(("KERAS_BACKEND", "torch"),),
        profile=f"{GLUE}.glue_keras_hub:gemma4_apply_rope",
    ),
    Library(
        key="keras-hub-jax",
        name="keras-hub Gemma 4 attention (Keras 3, jax backend)",
        distribution="keras-hub",
        requirements=(*JAX, *KERAS_HUB_DEPS),
        no_deps=("keras-hub==0.32.0",),
        function="keras_hub Gemma4TextAttention._apply_rope",
        impl="keras_hub.src.models.gemma4.gemma4_attention:Gemma4TextAttention._apply_rope",
        check_args=("--convention", "keras"),
        convention="keras: Gemma4TextAttention built from SPEC parameters, its _apply_rope called",
        env=(("KERAS_BACKEND", "jax"),),
        profile=f"{GLUE}.glue_keras_hub:gemma4_apply_rope",
    ),
    Library(
        key="rotary-embedding-torch",
        name="rotary-embedding-torch",
        distribution="rotary-embedding-torch",
        requirements=(TORCH, "rotary-embedding-torch==0.9.1"),
        function="rotary_embedding_torch.RotaryEmbedding(dim=2R) + apply_rotary_emb",
        impl=f"{GLUE}.glue_rotary_embedding_torch:apply_rope",
        convention="angles module + apply_rotary_emb, paper signature",
        profile=f"{GLUE}.glue_rotary_embedding_torch:profile",
        note="a RoPE library whose partial rotary rotates a prefix, interleaved: the contrast",
    ),
    Library(
        key="onnxruntime",
        name="onnxruntime (ONNX RotaryEmbedding-23)",
        distribution="onnxruntime",
        requirements=("numpy==2.4.6", "onnx==1.23.2", "onnxruntime==1.32.0"),
        function="ONNX RotaryEmbedding (opset 23), full-width cos/sin caches from SPEC's tables",
        impl=f"{GLUE}.glue_onnxruntime:rotary_embedding",
        convention="one-node graph, caches [B, L, H/2], paper signature + scale_factor",
        profile=f"{GLUE}.glue_onnxruntime:rotary_embedding",
    ),
    Library(
        key="mlx-lm",
        name="mlx-lm ProportionalRoPE (MLX, CPU)",
        distribution="mlx-lm",
        requirements=("mlx[cpu]==0.32.4", "mlx-lm==0.32.2"),
        function='mlx_lm.models.rope_utils.initialize_rope(rope_type="proportional") -> mx.fast.rope',
        impl=f"{GLUE}.glue_mlx:proportional_rope",
        convention="rope module built from SPEC parameters, token by token offsets",
        profile=f"{GLUE}.glue_mlx:proportional_rope",
        note="MLX rotates from an integer offset: real-valued positions raise (part of its verdict)",
    ),
    # GPU-only: run where a CUDA device is present; "not run: needs CUDA" elsewhere.
    Library(
        key="vllm",
        name="vLLM rotary layer",
        distribution="vllm",
        requirements=("vllm==0.34.0",),
        function="vllm.model_executor.layers.rotary_embedding.get_rope(...).forward(positions, query, key)",
        impl="vllm.model_executor.layers.rotary_embedding:get_rope",
        check_args=("--convention", "vllm", "--device", "cuda"),
        convention="vllm: layer(positions, query, key), in place",
        needs_cuda=True,
    ),
    Library(
        key="flash-attn",
        name="flash-attn rotary kernel",
        distribution="flash-attn",
        requirements=("flash-attn==2.8.3.post2",),
        function="flash_attn.layers.rotary.apply_rotary_emb",
        impl="flash_attn.layers.rotary:apply_rotary_emb",
        check_args=("--convention", "flash_attn", "--device", "cuda"),
        convention="flash_attn: apply_rotary_emb(x, cos, sin, ...)",
        needs_cuda=True,
    ),
    Library(
        key="flashinfer",
        name="FlashInfer rope",
        distribution="flashinfer-python",
        requirements=("flashinfer-python==0.7.4",),
        function="flashinfer.rope.apply_rope_with_cos_sin_cache_inplace",
        impl="flashinfer.rope:apply_rope_with_cos_sin_cache_inplace",
        check_args=("--convention", "vllm", "--device", "cuda"),
        convention="vllm kernel: (positions, query, key, cos_sin_cache), in place",
        needs_cuda=True,
    ),
    Library(
        key="liger-kernel",
        name="Liger Kernel rope",
        distribution="liger-kernel",
        requirements=("liger-kernel==0.8.5",),
        function="liger_kernel.transformers.rope.liger_rotary_pos_emb",
        impl="liger_kernel.transformers.rope:liger_rotary_pos_emb",
        check_args=("--convention", "hf", "--device", "cuda"),
        convention="hf: cos/sin from SPEC tables",
        needs_cuda=True,
    ),
    Library(
        key="sglang",
        name="SGLang rotary layer",
        distribution="sglang",
        requirements=("sglang==0.5.23",),
        function="sglang.srt.layers.rotary_embedding.get_rope(...).forward(positions, query, key)",
        impl="sglang.srt.layers.rotary_embedding:get_rope",
        check_args=("--convention", "vllm", "--device", "cuda"),
        convention="vllm: layer(positions, query, key), in place",
        needs_cuda=True,
    ),
)

BY_KEY = {library.key: library for library in LIBRARIES}


def groups() -> dict[str, list[Library]]:
    """nox environment -> the libraries graded in it (same requirements), in LIBRARIES order."""
    out: dict[str, list[Library]] = {}
    for lib in LIBRARIES:
        out.setdefault(lib.group or lib.key, []).append(lib)
    for name, libs in out.items():
        if len({(lib.requirements, lib.no_deps, lib.needs_cuda) for lib in libs}) != 1:
            raise ValueError(f"environment {name}: its libraries must share their requirements")
    return out


def library(key: str) -> Library:
    if key not in BY_KEY:
        raise KeyError(f"unknown library {key!r}; known: {', '.join(BY_KEY)}")
    return BY_KEY[key]


def load_report(path: Path = REPORT_JSON) -> dict[str, Any]:
    """The committed report (reports/ecosystem.json)."""
    return json.loads(Path(path).read_text())
