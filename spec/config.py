"""SPEC.md's parameters read from published model configurations (SPEC.md §5, "Model configurations").

    params_from_hf_config(config, layer_type=None) -> RopeParams      Hugging Face config.json / config object
    params_from_gemma_config(config, layer_type) -> RopeParams        google-deepmind/gemma TransformerConfig

Neither imports a framework or the library the configuration comes from: a Hugging Face configuration
is a dict, a path to a ``config.json`` or any object with ``to_dict()`` (a transformers config); a
Gemma configuration is any object with its fields as attributes (its frozen dataclass) or a dict of
them. Whatever is not p-RoPE (the split-half rotation of the ``R`` highest-frequency pairs, every
frequency divided by one ``scale_factor``) is refused with a ``ValueError`` that says why.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from ._params import check_head_dim, check_max_wavelength, check_rope_percentage, check_scale_factor

__all__ = ["RopeParams", "params_from_gemma_config", "params_from_hf_config"]


@dataclasses.dataclass(frozen=True)
class RopeParams:
    """The arguments of ``apply_p_rope`` for one layer type: ``H``, ``w``, ``p`` and ``s`` (SPEC.md §5).

    Checked on construction with the API's own argument checks (same exceptions and messages).
    """

    head_dim: int
    max_wavelength: float
    rope_percentage: float
    scale_factor: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "head_dim", check_head_dim(self.head_dim))
        object.__setattr__(self, "max_wavelength", check_max_wavelength(self.max_wavelength))
        object.__setattr__(self, "rope_percentage", check_rope_percentage(self.rope_percentage))
        object.__setattr__(self, "scale_factor", check_scale_factor(self.scale_factor))


# ---------------------------------------------------------------------------------------------
# Hugging Face

# rope_type values whose frequencies are not one ladder divided by one factor (or that rescale cos/sin).
_NOT_A_SINGLE_SCALE = {
    "yarn": "YaRN blends interpolated and extrapolated frequencies per pair and scales cos/sin (mscale)",
    "dynamic": "dynamic NTK scaling changes the base with the sequence length",
    "ntk": "NTK scaling changes the base",
    "llama3": "Llama 3 scaling divides low frequencies and keeps high ones, with a smooth band between",
    "longrope": "LongRoPE rescales each pair by its own factor and scales cos/sin",
    "su": "LongRoPE (su) rescales each pair by its own factor and scales cos/sin",
    "mrope": "multimodal RoPE splits the pairs between several position axes",
}
_FULL_LAYER_TYPES = ("full_attention",)  # the layer type global_head_dim belongs to (Gemma 4)


def _load_hf(config: object) -> dict[str, Any]:
    """The configuration as a plain dict (the text model's, for multimodal configurations)."""
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not os.path.isfile(path):
            raise ValueError(f"config must be a dict, a path to config.json or a config object; {path!r} is no file")
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    elif isinstance(config, Mapping):
        data = dict(config)
    elif callable(getattr(config, "to_dict", None)):
        data = config.to_dict()  # type: ignore[attr-defined]
    else:
        raise TypeError(
            "config must be a dict, a path to config.json or an object with to_dict(); "
            f"got {config!r} of type {type(config).__name__}"
        )
    if not isinstance(data, Mapping):
        raise ValueError(f"config must hold a JSON object; got {type(data).__name__}")
    text = data.get("text_config")
    if isinstance(text, Mapping):
        return dict(text)
    if text is not None and callable(getattr(text, "to_dict", None)):
        return dict(text.to_dict())
    return dict(data)


def _nested(rope_parameters: Mapping[str, Any]) -> bool:
    """transformers v5 style: one dict of rope parameters per layer type."""
    return any(isinstance(value, Mapping) for value in rope_parameters.values())


def _layer_types(cfg: Mapping[str, Any]) -> list[str]:
    types = cfg.get("layer_types")
    if types is None:
        return []
    if not isinstance(types, (list, tuple)) or not all(isinstance(t, str) for t in types):
        raise ValueError(f"config's layer_types must be a list of strings; got {types!r}")
    return list(types)


def _resolve_layer(cfg: Mapping[str, Any], layer_type: object) -> tuple[str | None, int | None]:
    """(layer type name, index of its first layer) from a name or a layer index."""
    types = _layer_types(cfg)
    rope_parameters = cfg.get("rope_parameters")
    nested_types = (
        sorted(k for k, v in rope_parameters.items() if isinstance(v, Mapping))
        if isinstance(rope_parameters, Mapping) and _nested(rope_parameters)
        else []
    )
    known = list(dict.fromkeys(types + nested_types))
    if layer_type is None:
        if nested_types:
            raise ValueError(
                f"config has rope parameters per layer type ({', '.join(nested_types)}): "
                "pass layer_type= one of them (or a layer index)"
            )
        return None, None
    if isinstance(layer_type, bool) or not isinstance(layer_type, (int, str)):
        raise TypeError(f"layer_type must be a layer type name or a layer index; got {layer_type!r}")
    if isinstance(layer_type, int):
        if not types:
            raise ValueError(f"layer_type={layer_type} is a layer index, but the config has no layer_types")
        if not -len(types) <= layer_type < len(types):
            raise ValueError(f"layer_type={layer_type} is out of range for {len(types)} layers")
        index = layer_type % len(types)
        return types[index], index
    if layer_type not in known:
        listed = ", ".join(known) if known else "none: the config has no layer_types"
        raise ValueError(f"unknown layer type {layer_type!r}; the config's layer types: {listed}")
    return layer_type, (types.index(layer_type) if layer_type in types else None)


def _layer_overrides(cfg: Mapping[str, Any], index: int | None) -> dict[str, Any]:
    """transformers' per_layer_config entry of one layer (a sparse dict of overridden attributes)."""
    per_layer = cfg.get("per_layer_config")
    if index is None or not isinstance(per_layer, Mapping):
        return {}
    for key, entry in per_layer.items():  # keys: ints, or strings such as "05" once serialized
        if str(key).strip().lstrip("0") == str(index).lstrip("0") and isinstance(entry, Mapping):
            return dict(entry)
    return {}


def _hf_head_dim(cfg: Mapping[str, Any], layer: str | None, overrides: Mapping[str, Any]) -> int:
    if overrides.get("head_dim") is not None:
        return int(overrides["head_dim"])
    if layer in _FULL_LAYER_TYPES and cfg.get("global_head_dim") is not None:
        return int(cfg["global_head_dim"])
    if cfg.get("head_dim") is not None:
        return int(cfg["head_dim"])
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    if hidden is None or heads is None:
        raise ValueError("config states neither head_dim nor hidden_size and num_attention_heads")
    return int(hidden) // int(heads)


def _hf_rope(cfg: Mapping[str, Any], layer: str | None) -> dict[str, Any]:
    """The rope parameters of one layer type, merged from every place transformers has kept them."""
    flat: dict[str, Any] = {}
    if cfg.get("rotary_emb_base") is not None:  # GPT-NeoX's older name of rope_theta
        flat["rope_theta"] = cfg["rotary_emb_base"]
    for key in ("rope_theta", "partial_rotary_factor", "rotary_pct"):
        if cfg.get(key) is not None:
            flat[key] = cfg[key]
    rope_parameters = cfg.get("rope_parameters")
    if isinstance(rope_parameters, Mapping):
        if _nested(rope_parameters):
            defaults = {k: v for k, v in rope_parameters.items() if not isinstance(v, Mapping) and v is not None}
            entry = rope_parameters.get(layer) if layer is not None else None
            if not isinstance(entry, Mapping):
                raise ValueError(f"config's rope_parameters have no entry for layer type {layer!r}")
            return flat | defaults | dict(entry)
        return flat | {k: v for k, v in rope_parameters.items() if v is not None}
    if layer == "sliding_attention" and cfg.get("rope_local_base_freq") is not None:
        # transformers v4 Gemma 3: local layers use their own base and no scaling
        return {"rope_type": "default", "rope_theta": cfg["rope_local_base_freq"]}
    scaling = cfg.get("rope_scaling")
    if isinstance(scaling, Mapping):
        return flat | {k: v for k, v in scaling.items() if v is not None}
    return flat


def params_from_hf_config(config: object, layer_type: str | int | None = None) -> RopeParams:
    """SPEC.md's parameters of one layer type of a Hugging Face transformers configuration.

    ``config``: a dict, a path to ``config.json``, or an object with ``to_dict()``; a multimodal
    configuration's ``text_config`` is read. ``layer_type``: a name from ``layer_types`` or from
    ``rope_parameters`` nested per layer type (``"full_attention"``, ``"sliding_attention"``), or a
    layer index; it may be omitted when every layer has the same rope parameters.

    Read: ``head_dim`` (``global_head_dim`` for ``full_attention`` layers; a ``per_layer_config``
    override of the layer first; else ``hidden_size // num_attention_heads``), ``rope_theta`` as
    ``max_wavelength``, and the rope type: ``default`` (p = 1), ``proportional`` (p =
    ``partial_rotary_factor``, s = ``factor``), ``linear`` (p = 1, s = ``factor``), from
    ``rope_parameters`` (flat or nested per layer type) or the older ``rope_theta`` /
    ``rope_scaling`` / ``partial_rotary_factor`` / ``rope_local_base_freq`` attributes.

    Raises ``ValueError`` for what SPEC's parameters do not describe: ``partial_rotary_factor`` (or
    ``rotary_pct``) below 1 without ``rope_type="proportional"`` (GPT-NeoX-style partial rotary:
    the first dims with a ladder recomputed over the rotated width, keeping the lowest
    frequencies), YaRN / dynamic / Llama 3 / LongRoPE scaling (with or without partial rotation),
    unknown rope types and unknown layer types; ``TypeError`` for a config of another type.
    """
    cfg = _load_hf(config)
    layer, index = _resolve_layer(cfg, layer_type)
    rope = _hf_rope(cfg, layer)
    head_dim = _hf_head_dim(cfg, layer, _layer_overrides(cfg, index))
    where = f"layer type {layer!r}" if layer is not None else "the config"
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    if rope.get("rope_theta") is None:
        raise ValueError(f"{where} states no rope_theta (the model class's default is not read here)")
    partial = rope.get("partial_rotary_factor", rope.get("rotary_pct", 1.0))
    partial = 1.0 if partial is None else float(partial)
    factor = float(rope.get("factor", 1.0) or 1.0)
    if rope_type in _NOT_A_SINGLE_SCALE:
        rotation = f" combined with partial rotation (partial_rotary_factor={partial:g})" if partial != 1.0 else ""
        raise ValueError(
            f"{where}: rope_type {rope_type!r}{rotation} is not p-RoPE: {_NOT_A_SINGLE_SCALE[rope_type]}, "
            "which SPEC's single scale_factor does not describe"
        )
    if rope_type not in ("default", "linear", "proportional"):
        raise ValueError(f"{where}: unknown rope_type {rope_type!r} (known: default, linear, proportional)")
    if rope_type != "proportional" and partial != 1.0:
        raise ValueError(
            f"{where}: partial_rotary_factor={partial:g} with rope_type {rope_type!r} is GPT-NeoX-style partial "
            f"rotary, not p-RoPE: it rotates the first {partial:g}·head_dim dims with frequencies recomputed over "
            "that width, keeping the lowest frequencies, where p-RoPE keeps the highest "
            "(transformers' p-RoPE is rope_type 'proportional')"
        )
    if rope_type == "default" and factor != 1.0:
        raise ValueError(f"{where}: rope_type 'default' with factor={factor:g}: the factor would be ignored")
    return RopeParams(head_dim, rope["rope_theta"], partial, factor)


# ---------------------------------------------------------------------------------------------
# google-deepmind/gemma (JAX)

_GEMMA_LAYERS = {"global": "global", "local_sliding": "local", "local": "local", "sliding": "local"}
_GEMMA_DEFAULT_BASE_FREQUENCY = 10_000  # gemma's DEFAULT_ROPE_BASE_FREQUENCY
_GEMMA_DEFAULT_SCALE_FACTOR = 1.0  # gemma's DEFAULT_ROPE_SCALE_FACTOR


def _gemma_field(config: object, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        value = config.get(name, default)
    else:
        value = getattr(config, name, default)
    return default if value is None else value


def _gemma_kind(config: object, layer_type: object) -> str:
    """'global' or 'local' from a name, a gemma AttentionType member or a layer index."""
    if isinstance(layer_type, int) and not isinstance(layer_type, bool):
        types = list(_gemma_field(config, "attention_types", ()))
        if not -len(types) <= layer_type < len(types) or not types:
            raise ValueError(f"layer_type={layer_type} is out of range for {len(types)} attention_types")
        layer_type = types[layer_type]
    name = getattr(layer_type, "name", layer_type)  # an enum member: GLOBAL, LOCAL_SLIDING
    if not isinstance(name, str) or name.lower() not in _GEMMA_LAYERS:
        raise ValueError(
            f"unknown gemma layer type {layer_type!r}; expected 'global', 'local_sliding', an AttentionType "
            "member or a layer index"
        )
    return _GEMMA_LAYERS[name.lower()]


def params_from_gemma_config(config: object, layer_type: object) -> RopeParams:
    """SPEC.md's parameters of one layer type of a google-deepmind/gemma ``TransformerConfig``.

    ``config``: the config object (its fields read as attributes) or a dict of its fields.
    ``layer_type``: ``"global"`` or ``"local_sliding"`` (also ``"local"``), a gemma
    ``AttentionType`` member, or a layer index into ``attention_types``.

    Read: ``head_dim`` (``global_key_size`` for global layers when set, as Gemma 4's), the
    ``{global,local}_base_frequency`` as ``max_wavelength``, ``{global,local}_rope_proportion`` as
    ``rope_percentage`` (1.0 where the config class has none, as Gemma 2 and 3's) and
    ``{global,local}_scale_factor`` as ``scale_factor``: the arguments gemma passes to its
    ``apply_rope``, which is p-RoPE by construction.
    """
    kind = _gemma_kind(config, layer_type)
    head_dim = _gemma_field(config, "head_dim")
    if head_dim is None:
        raise ValueError("gemma config has no head_dim")
    if kind == "global":
        head_dim = _gemma_field(config, "global_key_size", head_dim)
    return RopeParams(
        head_dim=head_dim,
        max_wavelength=_gemma_field(config, f"{kind}_base_frequency", _GEMMA_DEFAULT_BASE_FREQUENCY),
        rope_percentage=_gemma_field(config, f"{kind}_rope_proportion", 1.0),
        scale_factor=_gemma_field(config, f"{kind}_scale_factor", _GEMMA_DEFAULT_SCALE_FACTOR),
    )
