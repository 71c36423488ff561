"""Model configurations read as SPEC.md's parameters (spec/config.py; SPEC.md §5, "Model configurations").

The config files in tests/data/configs/ are written from the published config.json of each model
(Gemma 4 E2B, 26B-A4B and 31B; Gemma 3 27B in transformers v4's flat form; Phi-2; gpt-oss-20b),
keeping the fields that matter here (vision and audio sub-configs left out). Expected values are
the published ones: Gemma 4 global layers H = 512, w = 1e6, p = 0.25 and local layers H = 256,
w = 1e4, p = 1; Gemma 3's linear factor 8 on global layers only.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Any

import p_rope
import pytest
from p_rope import RopeParams, params_from_gemma_config, params_from_hf_config

CONFIGS = Path(__file__).parent / "data" / "configs"
GEMMA4 = ["gemma-4-E2B-it.json", "gemma-4-26B-A4B-it.json", "gemma-4-31B-it.json"]
GEMMA4_GLOBAL = RopeParams(head_dim=512, max_wavelength=1e6, rope_percentage=0.25, scale_factor=1.0)
GEMMA4_LOCAL = RopeParams(head_dim=256, max_wavelength=1e4, rope_percentage=1.0, scale_factor=1.0)


def load(name: str) -> dict[str, Any]:
    return json.loads((CONFIGS / name).read_text())


# ---------------------------------------------------------------------------------------------
# Hugging Face: Gemma 4


@pytest.mark.parametrize("name", GEMMA4)
def test_gemma4_layer_types(name: str) -> None:
    path = CONFIGS / name
    assert params_from_hf_config(path, layer_type="full_attention") == GEMMA4_GLOBAL
    assert params_from_hf_config(path, layer_type="sliding_attention") == GEMMA4_LOCAL
    global_params = params_from_hf_config(path, layer_type="full_attention")
    assert p_rope.rotated_pair_count(global_params.head_dim, global_params.rope_percentage) == 64


@pytest.mark.parametrize("name", GEMMA4)
def test_gemma4_layer_indices(name: str) -> None:
    """Every layer, by index, gets the parameters of its type (E2B: every 5th layer global; others every 6th)."""
    config = load(name)
    types = config["text_config"]["layer_types"]
    assert types[-1] == "full_attention"
    for index, kind in enumerate(types):
        expected = GEMMA4_GLOBAL if kind == "full_attention" else GEMMA4_LOCAL
        assert params_from_hf_config(config, layer_type=index) == expected
    assert params_from_hf_config(config, layer_type=-1) == GEMMA4_GLOBAL


def test_config_forms_agree() -> None:
    """A path, its str, the dict, an object with to_dict() and the text config alone read the same."""

    class ConfigObject:
        def __init__(self, data: dict[str, Any]) -> None:
            self.data = data

        def to_dict(self) -> dict[str, Any]:
            return self.data

    path = CONFIGS / "gemma-4-31B-it.json"
    data = load("gemma-4-31B-it.json")
    forms = [path, str(path), data, ConfigObject(data), data["text_config"], {"text_config": ConfigObject(data)}]
    forms[-1] = {"text_config": ConfigObject(data["text_config"])}
    for form in forms:
        assert params_from_hf_config(form, layer_type="full_attention") == GEMMA4_GLOBAL


def test_transformers_serialized_per_layer_config() -> None:
    """transformers v5 writes Gemma 4's global head size as per-layer overrides keyed "05", "11", ..."""
    text = load("gemma-4-26B-A4B-it.json")["text_config"]
    text.pop("global_head_dim")
    text["per_layer_config"] = {f"{i:02d}": {"head_dim": 512} for i in (5, 11, 17, 23, 29)}
    assert params_from_hf_config(text, layer_type=5) == GEMMA4_GLOBAL
    assert params_from_hf_config(text, layer_type="full_attention") == GEMMA4_GLOBAL
    assert params_from_hf_config(text, layer_type=4) == GEMMA4_LOCAL


def test_nested_rope_parameters_with_empty_top_level_entries() -> None:
    """Top-level null entries beside the per-type dicts (as some exports write) are ignored."""
    text = load("gemma-4-E2B-it.json")["text_config"]
    text["rope_parameters"] = dict(text["rope_parameters"], rope_theta=None, rope_type="default")
    assert params_from_hf_config(text, layer_type="full_attention") == GEMMA4_GLOBAL


def test_proportional_with_linear_factor_and_default_proportion() -> None:
    config = {
        "head_dim": 128,
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {
            "full_attention": {
                "rope_type": "proportional",
                "rope_theta": 5e5,
                "partial_rotary_factor": 0.5,
                "factor": 4,
            },
            "sliding_attention": {"rope_type": "proportional", "rope_theta": 1e4},
        },
    }
    assert params_from_hf_config(config, layer_type="full_attention") == RopeParams(128, 5e5, 0.5, 4.0)
    assert params_from_hf_config(config, layer_type="sliding_attention") == RopeParams(128, 1e4, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Hugging Face: linear scaling on the right layer type


def test_gemma3_flat_linear_scaling_on_global_layers_only() -> None:
    path = CONFIGS / "gemma-3-27b-it.json"
    assert params_from_hf_config(path, layer_type="full_attention") == RopeParams(128, 1e6, 1.0, 8.0)
    assert params_from_hf_config(path, layer_type="sliding_attention") == RopeParams(128, 1e4, 1.0, 1.0)


def test_gemma3_nested_linear_scaling_on_global_layers_only() -> None:
    """The same model in transformers v5's form: rope_parameters nested per layer type."""
    config = {
        "head_dim": 128,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    }
    assert params_from_hf_config(config, layer_type=5) == RopeParams(128, 1e6, 1.0, 8.0)
    assert params_from_hf_config(config, layer_type=0) == RopeParams(128, 1e4, 1.0, 1.0)


def test_flat_config_without_layer_types() -> None:
    """A Llama-style config: one set of parameters, no layer_type needed; head_dim from hidden_size."""
    config = {"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 500000.0}
    assert params_from_hf_config(config) == RopeParams(128, 5e5, 1.0, 1.0)
    flat_v5 = {"head_dim": 64, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}
    assert params_from_hf_config(flat_v5) == RopeParams(64, 1e4, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Hugging Face: refusals


def test_phi2_neox_partial_rotary_refused() -> None:
    with pytest.raises(ValueError, match=r"partial_rotary_factor=0\.4 .*GPT-NeoX-style.*proportional"):
        params_from_hf_config(CONFIGS / "phi-2.json")


def test_gpt_neox_rotary_pct_refused() -> None:
    pythia = {"hidden_size": 512, "num_attention_heads": 8, "rotary_pct": 0.25, "rotary_emb_base": 10000}
    with pytest.raises(ValueError, match="GPT-NeoX-style"):
        params_from_hf_config(pythia)


def test_nested_neox_partial_rotary_refused() -> None:
    config = {
        "head_dim": 128,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
    }
    with pytest.raises(ValueError, match="GPT-NeoX-style"):
        params_from_hf_config(config)


def test_gpt_oss_yarn_refused() -> None:
    for layer_type in ("full_attention", "sliding_attention", 0):
        with pytest.raises(ValueError, match="rope_type 'yarn' is not p-RoPE: YaRN"):
            params_from_hf_config(CONFIGS / "gpt-oss-20b.json", layer_type=layer_type)


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic", "llama3", "longrope"])
def test_scaling_with_partial_rotation_refused(rope_type: str) -> None:
    config = {
        "head_dim": 256,
        "layer_types": ["full_attention"],
        "rope_parameters": {
            "full_attention": {"rope_type": rope_type, "rope_theta": 1e6, "factor": 8.0, "partial_rotary_factor": 0.25}
        },
    }
    with pytest.raises(
        ValueError, match=rf"'{rope_type}' combined with partial rotation \(partial_rotary_factor=0.25\)"
    ):
        params_from_hf_config(config, layer_type="full_attention")


def test_unknown_rope_type_and_missing_theta_refused() -> None:
    with pytest.raises(ValueError, match="unknown rope_type 'spiral'"):
        params_from_hf_config({"head_dim": 64, "rope_theta": 1e4, "rope_scaling": {"rope_type": "spiral"}})
    with pytest.raises(ValueError, match="states no rope_theta"):
        params_from_hf_config({"head_dim": 64})


def test_layer_type_errors() -> None:
    path = CONFIGS / "gemma-4-E2B-it.json"
    with pytest.raises(ValueError, match=r"per layer type .*full_attention, sliding_attention.*pass layer_type="):
        params_from_hf_config(path)
    with pytest.raises(ValueError, match=r"unknown layer type 'chunked_attention'.*sliding_attention, full_attention"):
        params_from_hf_config(path, layer_type="chunked_attention")
    with pytest.raises(ValueError, match="layer_type=35 is out of range for 35 layers"):
        params_from_hf_config(path, layer_type=35)
    with pytest.raises(TypeError, match="layer_type must be"):
        params_from_hf_config(path, layer_type=True)
    with pytest.raises(ValueError, match=r"unknown layer type 'full_attention'.*no layer_types"):
        params_from_hf_config({"head_dim": 64, "rope_theta": 1e4}, layer_type="full_attention")


def test_bad_config_argument() -> None:
    with pytest.raises(TypeError, match=r"config must be a dict, a path to config\.json or an object with to_dict"):
        params_from_hf_config(42)
    with pytest.raises(ValueError, match="is no file"):
        params_from_hf_config(CONFIGS / "no-such-model.json")


def test_real_transformers_config_objects() -> None:
    """Where transformers is installed: its own Gemma 4 and Gemma 3 config objects (read through to_dict)."""
    transformers = pytest.importorskip("transformers", minversion="5")
    gemma4 = transformers.Gemma4TextConfig()
    assert params_from_hf_config(gemma4, layer_type="full_attention") == GEMMA4_GLOBAL
    assert params_from_hf_config(gemma4, layer_type="sliding_attention") == GEMMA4_LOCAL
    gemma3 = transformers.Gemma3TextConfig(rope_scaling={"rope_type": "linear", "factor": 8.0})
    assert params_from_hf_config(gemma3, layer_type="full_attention") == RopeParams(256, 1e6, 1.0, 8.0)


# ---------------------------------------------------------------------------------------------
# google-deepmind/gemma


class AttentionType(enum.Enum):  # the names of gemma's gm.nn AttentionType
    GLOBAL = 1
    LOCAL_SLIDING = 2


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """The rope fields of gemma's TransformerConfig (gm.nn.gemma4), with its defaults."""

    head_dim: int
    attention_types: tuple[AttentionType, ...]
    global_key_size: int | None = None
    global_rope_proportion: float | None = None
    local_rope_proportion: float | None = None
    local_base_frequency: int = 10_000
    global_base_frequency: int = 10_000
    local_scale_factor: float = 1.0
    global_scale_factor: float = 1.0


GEMMA4_E2B_JAX = GemmaConfig(  # gemma's Gemma4 E2B values (_gemma4.py)
    head_dim=256,
    attention_types=(AttentionType.LOCAL_SLIDING,) * 4 + (AttentionType.GLOBAL,),
    global_key_size=512,
    global_rope_proportion=0.25,
    local_rope_proportion=1.0,
    local_base_frequency=10_000,
    global_base_frequency=1_000_000,
)


def test_gemma_jax_gemma4() -> None:
    for layer_type in ("global", AttentionType.GLOBAL, 4, -1):
        assert params_from_gemma_config(GEMMA4_E2B_JAX, layer_type) == GEMMA4_GLOBAL
    for layer_type in ("local_sliding", "local", AttentionType.LOCAL_SLIDING, 0):
        assert params_from_gemma_config(GEMMA4_E2B_JAX, layer_type) == GEMMA4_LOCAL
    as_dict = dataclasses.asdict(GEMMA4_E2B_JAX)
    assert params_from_gemma_config(as_dict, "global") == GEMMA4_GLOBAL


def test_gemma_jax_gemma3_scale_factor_on_global_layers() -> None:
    """Gemma 3's config class has no rope proportion (p = 1) and scales global layers by 8."""
    gemma3 = {
        "head_dim": 128,
        "local_base_frequency": 10_000,
        "global_base_frequency": 1_000_000,
        "global_scale_factor": 8.0,
    }
    assert params_from_gemma_config(gemma3, "global") == RopeParams(128, 1e6, 1.0, 8.0)
    assert params_from_gemma_config(gemma3, "local_sliding") == RopeParams(128, 1e4, 1.0, 1.0)


def test_gemma_jax_errors() -> None:
    with pytest.raises(ValueError, match="unknown gemma layer type 'full_attention'"):
        params_from_gemma_config(GEMMA4_E2B_JAX, "full_attention")
    with pytest.raises(ValueError, match="out of range for 5 attention_types"):
        params_from_gemma_config(GEMMA4_E2B_JAX, 5)
    with pytest.raises(ValueError, match="rope_percentage must be in"):
        params_from_gemma_config(dataclasses.replace(GEMMA4_E2B_JAX, global_rope_proportion=1.5), "global")


# ---------------------------------------------------------------------------------------------
# RopeParams


def test_rope_params_checked_and_frozen() -> None:
    params = RopeParams(512, 1_000_000, 0.25)
    assert (params.max_wavelength, params.scale_factor) == (1e6, 1.0)
    assert isinstance(params.max_wavelength, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.head_dim = 256  # type: ignore[misc]
    with pytest.raises(ValueError, match="head_dim must be a positive even integer; got 7"):
        RopeParams(7, 1e4, 1.0)
    with pytest.raises(ValueError, match="scale_factor must be finite and >= 1"):
        RopeParams(64, 1e4, 1.0, 0.5)
    with pytest.raises(TypeError, match="head_dim must be an int"):
        RopeParams(64.0, 1e4, 1.0)  # type: ignore[arg-type]


def test_exported_from_the_package() -> None:
    assert {"RopeParams", "params_from_hf_config", "params_from_gemma_config"} <= set(p_rope.__all__)
