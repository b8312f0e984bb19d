"""transformers' SigLIP format, in and out, without transformers or torch.

A folder as `SiglipModel.save_pretrained` writes it (also `SiglipTextModel`, `SiglipVisionModel`):
`config.json`, the weights (`model.safetensors`, `pytorch_model.bin`, each possibly sharded: read by
hf_format.read_weights, lazily for safetensors) and, optionally, `preprocessor_config.json`
(SiglipImageProcessor: mean, std, resample). SigLIP 2's fixed-resolution checkpoints are SiglipModels
too (a Gemma vocabulary); `Siglip2Model` is NaFlex (variable resolution, a Linear patch embedding over
resized position embeddings) and is refused by name.

    checkpoint = read_siglip_folder("siglip-base-patch16-224/")          # -> Checkpoint
    write_siglip_folder("out/", ours, config, "clip")                    # SiglipModel.from_pretrained reads it

Names are siglip_names.HF's; config.json's fields are read by the rules SiglipConfig declares for them
(`config_fields.declare(hf=...)`), each refusal naming the field as config.json names it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..config import field_error
from ..config_fields import source_default, source_keys
from ..errors import ClipJaxError, InputError
from ..siglip_config import HF_ACTIVATIONS, SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .hf_format import (
    _RESAMPLE,
    CONFIG,
    PREPROCESSOR_CONFIG,
    WEIGHTS,
    _refuse,
    _write_json,
    read_json,
    read_weights,
    weights_file,
)
from .result import Checkpoint
from .siglip_names import HF, as_checkpoint, from_ours, to_ours, torch_style
from .torch_writer import write_safetensors

# config.json's class -> checkpoint kind ("clip": both towers and the logit scale and bias)
ARCHITECTURES = {"SiglipModel": "clip", "SiglipTextModel": "text", "SiglipVisionModel": "vision"}
MODEL_TYPES = {"siglip": "clip", "siglip_text_model": "text", "siglip_vision_model": "vision"}
NAFLEX = "NaFlex (SigLIP 2's variable-resolution models: Siglip2Model) is not supported; clip_jax reads the " \
         "fixed-resolution SigLIP 2 checkpoints, which are SiglipModels (model_type 'siglip')"
# transformers' name for each activation clip_jax builds
HF_ACTIVATION_NAMES = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}
# transformers 5 saves a single tower without its prefix; 4.x with
_TOWER_PREFIX = {"text": "text_model.", "vision": "vision_model."}
_UNPREFIXED = re.compile(r"(embeddings|encoder|final_layer_norm|post_layernorm|head)\.")


# --- config.json --------------------------------------------------------------------------------------


def _is_siglip2(cfg: Mapping[str, Any]) -> bool:
    archs = cfg.get("architectures") or []
    named = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    model_type = cfg.get("model_type")
    return any(a.startswith("Siglip2") for a in named) or (isinstance(model_type, str)
                                                           and model_type.startswith("siglip2"))


def siglip_kind(cfg: Mapping[str, Any]) -> str:
    """The checkpoint kind ("clip", "text", "vision") a SigLIP config.json describes, by its architectures
    (or model_type). InputError naming NaFlex for SigLIP 2's variable-resolution models, naming the
    field for any other class."""
    if not isinstance(cfg, Mapping):
        raise InputError(f"a config.json must be an object, got {type(cfg).__name__}")
    if _is_siglip2(cfg):
        raise InputError(f"not supported: model_type={cfg.get('model_type')!r:.40}: {NAFLEX}")
    archs = cfg.get("architectures") or []
    if archs:
        if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in ARCHITECTURES:
            _refuse("architectures", archs, f"clip_jax reads {', '.join(ARCHITECTURES)}")
        return ARCHITECTURES[archs[0]]
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        _refuse("model_type", model_type, f"clip_jax reads {', '.join(MODEL_TYPES)}")
    return MODEL_TYPES[model_type]


def _copied(cls: type, cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The tower's fields transformers holds as clip_jax does, each checked by the rule SiglipConfig
    declares for it, named as config.json names it; transformers' default where the config leaves it out."""
    keys = source_keys(cls, "hf", coded=False)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in keys:
            value = cfg.get(keys[f.name], source_default(f, "hf"))
            check, expected = f.metadata["rule"]
            if not check(value):
                raise field_error(f"{where}{keys[f.name]}", expected, value)
            out[f.name] = value
    act = cfg.get("hidden_act", "gelu_pytorch_tanh")
    if not isinstance(act, str) or act not in HF_ACTIVATIONS:
        _refuse(f"{where}hidden_act", act, f"clip_jax builds {', '.join(HF_ACTIVATIONS)}")
    out["activation"] = HF_ACTIVATIONS[act]
    return out


def _section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = cfg.get(key) or {}
    if not isinstance(value, Mapping):
        raise InputError(f"config field '{key}': expected an object, got {type(value).__name__}")
    return value


def _vision(cfg: Mapping[str, Any], where: str) -> SiglipVisionConfig:
    if cfg.get("num_channels", 3) != 3:
        _refuse(f"{where}num_channels", cfg["num_channels"], "RGB only")
    if cfg.get("vision_use_head", True) is not True:
        _refuse(f"{where}vision_use_head", cfg["vision_use_head"], "clip_jax's SigLIP pools with its MAP head")
    return SiglipVisionConfig(**_copied(SiglipVisionConfig, cfg, where))


def _eps(sections: list[tuple[str, Mapping[str, Any]]]) -> float:
    """The towers' one LayerNorm eps (clip_jax has one for both), checked by SiglipConfig's rule."""
    (check, expected), first = _RULE["layer_norm_eps"], sections[0][1].get("layer_norm_eps", 1e-6)
    for where, section in sections:
        value = section.get("layer_norm_eps", 1e-6)
        if not check(value):
            raise field_error(f"{where}layer_norm_eps", expected, value)
        if value != first:
            _refuse(f"{where}layer_norm_eps", value, f"with {first!r} in the other tower: clip_jax has one eps")
    return first


_RULE = {f.name: f.metadata["rule"] for f in dataclasses.fields(SiglipConfig)}


def _preprocessing(pp: Mapping[str, Any] | None) -> dict[str, Any]:
    """mean, std and interpolation from a SiglipImageProcessor's preprocessor_config.json (its defaults:
    0.5, 0.5, bicubic); a square resize, as SiglipImageProcessor's."""
    if pp is None:
        return {}
    if not isinstance(pp, Mapping):
        raise InputError(f"a preprocessor_config.json must be an object, got {type(pp).__name__}")
    resample = pp.get("resample", 3)
    if type(resample) is not int or resample not in _RESAMPLE:
        _refuse("preprocessor_config.resample", resample, "bicubic (3) or bilinear (2)")
    out = {"interpolation": _RESAMPLE[resample], "resize_mode": "squash"}
    for key in ("image_mean", "image_std"):
        if pp.get(key) is not None:
            out[key] = pp[key]
    return out


def siglip_config_from_hf(cfg: Mapping[str, Any], where: str = "", preprocessor: Mapping[str, Any] | None = None
                          ) -> SiglipConfig:
    """transformers' SiglipConfig / SiglipTextConfig / SiglipVisionConfig (config.json, as a dict) ->
    SiglipConfig. `where` prefixes messages (the file). A single tower's config carries the other
    tower's defaults (a text tower's stand-in image tower has the projection's width, as SiglipConfig
    requires); preprocessor: preprocessor_config.json's mean, std and resample."""
    try:
        kind = siglip_kind(cfg)
        sections = [("text_config.", _section(cfg, "text_config")), ("vision_config.", _section(cfg, "vision_config"))
                    ] if kind == "clip" else [("", cfg)]
        fields: dict[str, Any] = {"layer_norm_eps": _eps(sections), **_preprocessing(preprocessor)}
        (t_where, t_cfg), (v_where, v_cfg) = sections[0], sections[-1]
        if kind != "vision":
            fields["text"] = SiglipTextConfig(**_copied(SiglipTextConfig, t_cfg, t_where))
            embed_dim = t_cfg.get("projection_size") or fields["text"].width  # transformers: None -> hidden_size
            if type(embed_dim) is not int:
                raise field_error(f"{t_where}projection_size", "an int", embed_dim)
        if kind != "text":
            fields["vision"] = _vision(v_cfg, v_where)
            if kind == "clip" and embed_dim != fields["vision"].width:
                _refuse("text_config.projection_size", embed_dim, "SigLIP compares the text features with the "
                        f"image features, of vision_config.hidden_size {fields['vision'].width}")
            embed_dim = fields["vision"].width
        else:  # a text tower alone: a stand-in image tower of the width SiglipConfig checks
            fields["vision"] = SiglipVisionConfig(width=embed_dim, heads=1, layers=1, mlp_width=embed_dim)
        return SiglipConfig(embed_dim=embed_dim, **fields)
    except ClipJaxError as e:
        raise type(e)(f"{where}{': ' if where else ''}{e}") from None


def _as_hf(tower: SiglipTextConfig | SiglipVisionConfig) -> dict[str, Any]:
    keys = source_keys(type(tower), "hf", coded=False)
    return {key: getattr(tower, name) for name, key in keys.items()} | {
        "hidden_act": HF_ACTIVATION_NAMES[tower.activation]}


def siglip_config_to_hf(config: SiglipConfig, kind: str = "clip") -> dict[str, Any]:
    """The config.json transformers' SiglipModel (or tower of kind) reads for this config."""
    eps = {"layer_norm_eps": config.layer_norm_eps, "attention_dropout": 0.0}
    # SigLIP's SentencePiece vocabularies: </s> (1) ends and pads; no BOS
    text = {"model_type": "siglip_text_model", **_as_hf(config.text), **eps, "projection_size": config.embed_dim,
            "pad_token_id": 1, "eos_token_id": 1, "bos_token_id": None}
    vision = {"model_type": "siglip_vision_model", **_as_hf(config.vision), **eps, "num_channels": 3,
              "vision_use_head": True}
    arch = {v: k for k, v in ARCHITECTURES.items()}[kind]
    if kind == "clip":
        return {"architectures": [arch], "model_type": "siglip", "initializer_factor": 1.0, "text_config": text,
                "vision_config": vision}
    return {"architectures": [arch], **(text if kind == "text" else vision)}


def siglip_preprocessor_config(config: SiglipConfig) -> dict[str, Any]:
    """SiglipImageProcessor's preprocessor_config.json: a square resize to the image size, then to [-1, 1]
    by the config's mean and std."""
    if config.resize_mode != "squash" or config.interpolation not in _RESAMPLE.values():
        _refuse("resize_mode", config.resize_mode, "SiglipImageProcessor resizes to a square (squash), "
                "bicubic or bilinear")
    n = config.vision.image_size
    return {"image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor", "do_resize": True,
            "size": {"height": n, "width": n}, "resample": {v: k for k, v in _RESAMPLE.items()}[config.interpolation],
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(config.image_mean), "image_std": list(config.image_std), "do_convert_rgb": None}


# --- folders ------------------------------------------------------------------------------------------


def is_siglip_folder(path: str | os.PathLike) -> bool:
    """A folder whose config.json names a SigLIP (model_type siglip*, or a Siglip* architecture): read by
    read_siglip_folder (which refuses SigLIP 2's NaFlex models by name), not hf_format's CLIP reader."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        cfg = read_json(config)
    except (ClipJaxError, OSError):
        return False  # the CLIP reader names what is wrong with it
    archs = cfg.get("architectures")
    model_type = cfg.get("model_type")
    return (isinstance(model_type, str) and model_type.startswith("siglip")) or (
        isinstance(archs, list) and any(isinstance(a, str) and a.startswith("Siglip") for a in archs))


def with_tower_prefix(state_dict: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A single tower's weights under the prefix a SiglipModel names them with (transformers 5 saves a
    SiglipTextModel's as `embeddings...`, 4.x as `text_model.embeddings...`)."""
    if kind == "clip":
        return dict(state_dict)
    return {(_TOWER_PREFIX[kind] if _UNPREFIXED.match(k) else "") + k: v for k, v in state_dict.items()}


def read_siglip_state_dict(folder: str | os.PathLike, lazy: bool = False
                           ) -> tuple[SiglipConfig, dict[str, Any], str]:
    """A transformers SigLIP folder -> (config, our torch-style names -> arrays, kind). The config is
    read and checked before a weight is; lazy: safetensors' tensors as LazyArrays, laid out when read."""
    folder = Path(folder)
    weights = weights_file(folder)
    if weights is None or not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{folder}: not a transformers SigLIP folder ({CONFIG} and {', '.join(WEIGHTS)} "
                                "or an index of its shards)")
    cfg, pp = (read_json(p) if p.is_file() else None for p in (folder / CONFIG, folder / PREPROCESSOR_CONFIG))
    config = siglip_config_from_hf(cfg, str(folder / CONFIG), pp)
    kind = siglip_kind(cfg)
    ours = to_ours(with_tower_prefix(read_weights(weights, lazy), kind), HF, kind, f"{weights}: ")
    return config, ours, kind


def read_siglip_folder(folder: str | os.PathLike, lazy: bool = False) -> Checkpoint:
    """A transformers SigLIP folder -> Checkpoint (config, params, kind "clip" / "text" / "vision",
    projection: whether the tower(s) project, origin)."""
    config, ours, kind = read_siglip_state_dict(folder, lazy)
    return as_checkpoint(ours, config, kind, f"transformers {CONFIG} ({kind})", Path(folder))


def write_siglip_folder(folder: str | os.PathLike, params: Mapping[str, Any], config: SiglipConfig,
                        kind: str = "clip") -> Path:
    """config.json, model.safetensors and (with an image tower) preprocessor_config.json in `folder`
    (created), each written atomically, for transformers' SiglipModel (kind "clip") or SiglipTextModel /
    SiglipVisionModel. params: our torch-style names (siglip_spec), or flat clip_jax names."""
    if kind not in ARCHITECTURES.values():
        raise InputError(f"kind must be one of {tuple(ARCHITECTURES.values())}, got {kind!r}")
    cfg = siglip_config_to_hf(config, kind)
    pp = siglip_preprocessor_config(config) if kind != "text" else None
    heads = (config.vision.heads, config.text.heads)
    state_dict = dict(from_ours(torch_style(params, config, kind), HF, kind, heads))
    if kind != "clip":  # as transformers 5 saves a tower: without its prefix
        prefix = _TOWER_PREFIX[kind]
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / WEIGHTS[0], {k: np.asarray(v) for k, v in state_dict.items()})
    _write_json(folder / CONFIG, cfg)
    if pp is not None:
        _write_json(folder / PREPROCESSOR_CONFIG, pp)
    return folder


__all__ = ["ARCHITECTURES", "MODEL_TYPES", "is_siglip_folder", "read_siglip_folder", "read_siglip_state_dict",
           "siglip_config_from_hf", "siglip_config_to_hf", "siglip_kind", "siglip_preprocessor_config",
           "write_siglip_folder"]
