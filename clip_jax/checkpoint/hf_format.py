"""Hugging Face transformers' CLIP format, in and out, without transformers or torch.

A transformers checkpoint is a folder: `config.json` (CLIPModel, CLIPTextModel[WithProjection],
CLIPVisionModel[WithProjection]), the weights as `model.safetensors`, `pytorch_model.bin` (read with the
safe reader of torch_files.py) or `flax_model.msgpack` (Flax's msgpack, restored as plain arrays: no
code runs), each possibly sharded with a `*.index.json`, and optionally `preprocessor_config.json`.

Names: transformers' modules are OpenAI's under other names (`text_model.encoder.layers.3.self_attn`,
`vision_model.pre_layrnorm`, ...), and attention keeps q, k and v as three Linears where OpenAI stacks
them in one `in_proj`. `RULES` maps clip_jax names to transformers names, in both directions.

Config: `hidden_act` (quick_gelu or exact gelu), `layer_norm_eps`, `projection_dim`, the widths, depths,
heads, sizes, and the text pooling rule of `eos_token_id`: the legacy value 2 pools at argmax(ids) (the
EOT is the largest id), any other value at the first position holding it. What clip_jax can't build
exactly is refused with `not supported: <field>=<value>`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax.serialization import msgpack_restore

from ..config import (
    MAX_WIDTH,
    OPENAI_MEAN,
    OPENAI_STD,
    CLIPConfig,
    TextConfig,
    VisionConfig,
    check_field,
    field_error,
    read_config_json,
    short_repr,
)
from ..config_fields import source_default, source_keys
from ..errors import ClipJaxError, InputError
from ..fileio import atomic_write
from ..model import param_shapes
from ..param_check import ConversionError, raise_if_any
from .result import FLOAT_NAMES, Checkpoint, check_weight_dtype
from .torch_files import CheckpointError, LazyArray, apply_lazily, copy_into, empty_aligned, load_state_dict
from .torch_names import abstract_as_built
from .torch_writer import write_safetensors

CONFIG = "config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
# transformers' own order of preference.
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "flax_model.msgpack")
INDEX_SUFFIX = ".index.json"
LEGACY_EOS = 2  # before transformers PR #24773 every CLIP config said 2: pooling is argmax(ids)
ARCHITECTURES = {
    "CLIPModel": ("clip", True),
    "CLIPTextModel": ("text", False),
    "CLIPTextModelWithProjection": ("text", True),
    "CLIPVisionModel": ("vision", False),
    "CLIPVisionModelWithProjection": ("vision", True),
}
MODEL_TYPES = {"clip": "clip", "clip_text_model": "text", "clip_vision_model": "vision"}
# Weights of transformers' modules that aren't parameters (a buffer older versions saved).
IGNORED = re.compile(r"(text_model|vision_model)\.embeddings\.position_ids$")
# Tower prefixes: a CLIPModel and the *WithProjection towers name them; transformers 5's CLIPTextModel
# and CLIPVisionModel save without (and read either).
TOWER_PREFIX = {"text": "text_model.", "vision": "vision_model."}
TOWER_TOP = {"text": ("embeddings.", "encoder.", "final_layer_norm."),
             "vision": ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")}


# --- names ----------------------------------------------------------------------------------------

# Inside a block: clip_jax leaf -> transformers leaf, transform. "qkv": in_proj stacks q, k, v.
_BLOCK = [
    ("attn.in_proj.kernel", "self_attn.{}_proj.weight", "qkv"),
    ("attn.in_proj.bias", "self_attn.{}_proj.bias", "qkv"),
    ("attn.out_proj.kernel", "self_attn.out_proj.weight", "T"),
    ("attn.out_proj.bias", "self_attn.out_proj.bias", None),
    ("ln_1.scale", "layer_norm1.weight", None),
    ("ln_1.bias", "layer_norm1.bias", None),
    ("ln_2.scale", "layer_norm2.weight", None),
    ("ln_2.bias", "layer_norm2.bias", None),
    ("mlp.c_fc.kernel", "mlp.fc1.weight", "T"),
    ("mlp.c_fc.bias", "mlp.fc1.bias", None),
    ("mlp.c_proj.kernel", "mlp.fc2.weight", "T"),
    ("mlp.c_proj.bias", "mlp.fc2.bias", None),
]
_TOWERS = [("transformer.resblocks.", "text_model.encoder.layers."),
           ("visual.transformer.resblocks.", "vision_model.encoder.layers.")]
# (clip_jax name, transformers name, transform); blocks are added from _BLOCK and _TOWERS.
RULES: list[tuple[str, str, str | None]] = [
    ("token_embedding.embedding", "text_model.embeddings.token_embedding.weight", None),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight", None),
    ("ln_final.scale", "text_model.final_layer_norm.weight", None),
    ("ln_final.bias", "text_model.final_layer_norm.bias", None),
    ("text_projection", "text_projection.weight", "T"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding", None),
    ("visual.conv1.kernel", "vision_model.embeddings.patch_embedding.weight", "conv"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", None),
    ("visual.ln_pre.scale", "vision_model.pre_layrnorm.weight", None),
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias", None),
    ("visual.ln_post.scale", "vision_model.post_layernorm.weight", None),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias", None),
    ("visual.proj", "visual_projection.weight", "T"),
    ("logit_scale", "logit_scale", "scalar"),
]


def hf_name(name: str) -> tuple[str, str | None]:
    """clip_jax param name -> (transformers name, transform); for "qkv" the name has a {} for q/k/v."""
    for ours, theirs, transform in RULES:
        if name == ours:
            return theirs, transform
    for ours_prefix, theirs_prefix in _TOWERS:
        m = re.fullmatch(re.escape(ours_prefix) + r"(\d+)\.(.+)", name)
        if m:
            for leaf, theirs, transform in _BLOCK:
                if m[2] == leaf:
                    return f"{theirs_prefix}{m[1]}.{theirs}", transform
    raise ConversionError(f"{name}: no transformers name (transformers' CLIP has no such parameter)")


def from_hf(state_dict: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """transformers' state dict (torch layouts) -> flat clip_jax params of the expected names and shapes.
    Every missing, unexpected or mis-shaped tensor is reported at once; LazyArrays stay unread."""
    params, missing, mismatched, used = {}, [], [], set()
    for name, shape in expected.items():
        theirs, transform = hf_name(name)
        sources = [theirs.format(p) for p in "qkv"] if transform == "qkv" else [theirs]
        absent = [s for s in sources if s not in state_dict]
        if absent:
            missing += absent
            continue
        used.update(sources)
        arrays = [a if isinstance(a, LazyArray) else np.asarray(a) for a in (state_dict[s] for s in sources)]
        for source, array in zip(sources, arrays):
            check_weight_dtype(source, array)
        try:  # a LazyArray's layout is changed as it is read (one tensor at a time, as the model is built)
            value = apply_lazily(lambda xs, transform=transform: _to_jax(xs, transform), arrays)
        except ValueError:
            value = None
        if value is None or tuple(value.shape) != shape:
            got = ", ".join(f"{s} {tuple(a.shape)}" for s, a in zip(sources, arrays))
            mismatched.append(f"{got}: expected {name} of shape {shape}")
            continue
        params[name] = value
    unexpected = sorted(k for k in state_dict if k not in used and not IGNORED.match(k))
    raise_if_any(missing, unexpected, mismatched)
    return params


def to_hf(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat clip_jax params -> transformers' state dict (torch layouts)."""
    out = {}
    for name, value in params.items():
        theirs, transform = hf_name(name)
        value = np.asarray(value)
        if transform == "qkv":
            for p, part in zip("qkv", np.split(value, 3, axis=-1)):
                out[theirs.format(p)] = np.ascontiguousarray(part.T if part.ndim == 2 else part)
        elif transform == "T":
            out[theirs] = np.ascontiguousarray(value.T)
        elif transform == "conv":
            out[theirs] = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
        elif transform == "scalar":
            out[theirs] = value.reshape(())
        else:
            out[theirs] = value
    return out


def _to_jax(arrays: list[np.ndarray], transform: str | None) -> np.ndarray:
    if transform == "qkv":  # three Linears [out, in] (or biases [out]) -> in_proj [in, 3 out] ([3 out])
        if len({a.shape for a in arrays}) != 1:
            raise ConversionError("q, k, v differ in shape")
        parts = [a.T if a.ndim == 2 else a for a in arrays]
        # written once, transposed, into the aligned array the model takes as it is (torch_files.owned)
        out = empty_aligned((*parts[0].shape[:-1], 3 * parts[0].shape[-1]), np.result_type(*arrays))
        for i, part in enumerate(np.split(out, 3, axis=-1)):
            copy_into(part, parts[i])
        return out
    (x,) = arrays
    if transform == "T":
        return x.T if x.ndim == 2 else x
    if transform == "conv":  # [O, I, kh, kw] -> (kh, kw, I, O)
        return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x
    if transform == "scalar" and x.size == 1:
        return x.reshape(())
    return x


# --- config.json ----------------------------------------------------------------------------------


def _refuse(field: str, value: Any, why: str = "") -> None:
    raise InputError(f"not supported: {field}={short_repr(value)}" + (f" ({why})" if why else ""))


def architecture_of(cfg: Mapping[str, Any]) -> tuple[str, bool | None]:
    """The transformers class a config.json describes, by its architectures (or model_type), as (kind,
    projection); projection None when the config doesn't say (a bare model_type): the weights decide."""
    if not isinstance(cfg, Mapping):
        raise InputError(f"a config.json must be an object, got {type(cfg).__name__}")
    archs = cfg.get("architectures") or []
    if archs:
        if not isinstance(archs, list) or len(archs) != 1 or not isinstance(archs[0], str) \
                or archs[0] not in ARCHITECTURES:
            _refuse("architectures", archs, f"clip_jax reads {', '.join(ARCHITECTURES)}")
        return ARCHITECTURES[archs[0]]
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        _refuse("model_type", model_type, f"clip_jax reads {', '.join(MODEL_TYPES)}")
    kind = MODEL_TYPES[model_type]
    return kind, (True if kind == "clip" else None)


def _int(cfg: Mapping[str, Any], key: str, default: int, where: str, field: str) -> int:
    """cfg[key], checked by the rule of clip_jax's config field it becomes (config.check_field): the same
    ranges as every other source, named as the config.json names it."""
    return check_field(field, cfg.get(key, default), f"{where}{key}")


def _section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"config field '{key}': expected an object, got {type(value).__name__}")
    return value


def _eps(cfg: Mapping[str, Any], where: str) -> float:
    return float(check_field("layer_norm_eps", cfg.get("layer_norm_eps", 1e-5), f"{where}layer_norm_eps"))


def _activation(cfg: Mapping[str, Any], where: str) -> str:
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):  # transformers' "gelu" is exact erf GELU
        _refuse(f"{where}hidden_act", act, "clip_jax builds quick_gelu and exact gelu")
    return act


def _mlp_ratio(cfg: Mapping[str, Any], width: int, default: int, where: str) -> float:
    hidden = cfg.get("intermediate_size", default)
    if type(hidden) is not int or not 1 <= hidden <= MAX_WIDTH * 64:
        raise field_error(f"{where}intermediate_size", f"an int in [1, {MAX_WIDTH * 64}]", hidden)
    ratio = hidden / width
    if int(width * ratio) != hidden:
        _refuse(f"{where}intermediate_size", hidden, f"not a width x ratio clip_jax can express for width {width}")
    return ratio


def _copied(cls: type, cfg: Mapping[str, Any], where: str, tower: str) -> dict[str, Any]:
    """The fields transformers holds as clip_jax does (config_fields.source_keys), each checked by its field's
    rule under transformers' name, transformers' default where the config leaves it out."""
    keys = source_keys(cls, "hf", coded=False)
    return {f.name: check_field(f"{tower}.{f.name}", cfg.get(keys[f.name], source_default(f, "hf")),
                                f"{where}{keys[f.name]}")
            for f in dataclasses.fields(cls) if f.name in keys}


def _text_config(cfg: Mapping[str, Any], where: str) -> tuple[TextConfig, str, float]:
    """transformers' CLIPTextConfig (its defaults) -> (TextConfig, activation, layer_norm_eps)."""
    plain = _copied(TextConfig, cfg, where, "text")
    eos = check_field("text.eos_id", cfg.get("eos_token_id", 49407), f"{where}eos_token_id")
    pooling = {"pool_type": "argmax"} if eos == LEGACY_EOS else {"pool_type": "eos", "eos_id": eos}
    text = TextConfig(mlp_ratio=_mlp_ratio(cfg, plain["width"], 2048, where), **pooling, **plain)
    return text, _activation(cfg, where), _eps(cfg, where)


def _vision_config(cfg: Mapping[str, Any], where: str) -> tuple[VisionConfig, str, float]:
    """transformers' CLIPVisionConfig (its defaults) -> (VisionConfig, activation, layer_norm_eps)."""
    if cfg.get("num_channels", 3) != 3:
        _refuse(f"{where}num_channels", cfg["num_channels"], "RGB only")
    plain = _copied(VisionConfig, cfg, where, "vision")
    if type(plain["layers"]) is not int:  # the rule also takes a ResNet's 4 stage depths; transformers has none
        raise field_error(f"{where}num_hidden_layers", "an int", plain["layers"])
    vision = VisionConfig(mlp_ratio=_mlp_ratio(cfg, plain["width"], 3072, where), **plain)
    return vision, _activation(cfg, where), _eps(cfg, where)


def config_from_transformers(
    cfg: Mapping[str, Any], preprocessor: Mapping[str, Any] | None = None, projection: bool | None = None
) -> tuple[CLIPConfig, str, bool]:
    """A transformers config.json (and preprocessor_config.json) -> (CLIPConfig, kind, projection).

    A single tower's CLIPConfig carries defaults for the tower it lacks; without a projection its
    embed_dim is the tower's width (nothing reads it). projection: what the weights say, for a config
    that doesn't name its class."""
    kind, said = architecture_of(cfg)
    projection = said if said is not None else bool(projection)
    towers: dict[str, tuple] = {}
    if kind == "clip":
        towers["text"] = _text_config(_section(cfg, "text_config"), "text_config.")
        towers["vision"] = _vision_config(_section(cfg, "vision_config"), "vision_config.")
        embed_dim = _int(cfg, "projection_dim", 512, "", "embed_dim")
    else:
        towers[kind] = (_text_config if kind == "text" else _vision_config)(cfg, "")
        embed_dim = _int(cfg, "projection_dim", 512, "", "embed_dim") if projection else towers[kind][0].width
    activations = {name: act for name, (_, act, _) in towers.items()}
    if len(set(activations.values())) > 1:
        _refuse("vision_config.hidden_act", activations["vision"],
                f"with text_config.hidden_act={activations['text']!r}: clip_jax has one activation for both towers")
    eps = {name: e for name, (_, _, e) in towers.items()}
    if len(set(eps.values())) > 1:
        _refuse("vision_config.layer_norm_eps", eps["vision"],
                f"with text_config.layer_norm_eps={eps['text']!r}: clip_jax has one eps for both towers")
    mean, std, interpolation = _preprocessing(preprocessor or {})
    config = CLIPConfig(
        embed_dim=embed_dim,
        vision=towers["vision"][0] if "vision" in towers else VisionConfig(),
        text=towers["text"][0] if "text" in towers else TextConfig(),
        activation=next(iter(activations.values())),
        layer_norm_eps=next(iter(eps.values())),
        image_mean=mean, image_std=std, interpolation=interpolation,
    )
    return config, kind, projection


_RESAMPLE = {3: "bicubic", 2: "bilinear"}  # PIL's numbering, as CLIPImageProcessor's `resample`


def _preprocessing(pp: Mapping[str, Any]) -> tuple[tuple, tuple, str]:
    """mean, std and interpolation from a preprocessor_config.json (CLIPImageProcessor)."""
    if not isinstance(pp, Mapping):
        raise InputError(f"a preprocessor_config.json must be an object, got {type(pp).__name__}")
    resample = pp.get("resample", 3)
    if type(resample) is not int or resample not in _RESAMPLE:
        _refuse("preprocessor_config.resample", resample, "bicubic (3) or bilinear (2)")
    mean, std = pp.get("image_mean") or OPENAI_MEAN, pp.get("image_std") or OPENAI_STD
    for field, value in (("image_mean", mean), ("image_std", std)):
        check_field(field, value, f"preprocessor_config.{field}")
    return tuple(mean), tuple(std), _RESAMPLE[resample]


def config_to_transformers(config: CLIPConfig, kind: str, projection: bool) -> dict[str, Any]:
    """The config.json transformers reads for this model. Refuses what transformers' CLIP can't hold."""
    _check_exportable(config, kind)
    both = {"hidden_act": config.activation, "layer_norm_eps": config.layer_norm_eps,
            "projection_dim": config.embed_dim}
    text = {
        "model_type": "clip_text_model", **_as_transformers(config.text), **both,
        "intermediate_size": config.text.mlp_width,
        # argmax pooling is transformers' legacy rule for eos_token_id 2
        "eos_token_id": LEGACY_EOS if config.text.pool_type == "argmax" else config.text.eos_id,
        "bos_token_id": 49406, "pad_token_id": 1,
    }
    vision = {"model_type": "clip_vision_model", **_as_transformers(config.vision), **both,
              "intermediate_size": config.vision.mlp_width, "num_channels": 3}
    arch = next(a for a, kp in ARCHITECTURES.items() if kp == (kind, projection or kind == "clip"))
    if kind == "clip":
        return {"architectures": [arch], "model_type": "clip", "projection_dim": config.embed_dim,
                "logit_scale_init_value": 2.6592, "text_config": text, "vision_config": vision}
    return {"architectures": [arch], **(text if kind == "text" else vision)}


def _as_transformers(tower: TextConfig | VisionConfig) -> dict[str, Any]:
    """A tower's fields transformers holds as clip_jax does, by transformers' names."""
    return {key: getattr(tower, name) for name, key in source_keys(type(tower), "hf", coded=False).items()}


def _absent(tower: TextConfig | VisionConfig, prefix: str) -> list[tuple[str, Any, Any]]:
    """(field, value, default) for each field transformers' CLIP has no option for (config_fields.declare's hf=None):
    exportable at its default only."""
    return [(prefix + f.name, getattr(tower, f.name), f.default) for f in dataclasses.fields(tower)
            if f.metadata["hf"] is None and "hf" not in f.metadata["coded"]]


def _check_exportable(config: CLIPConfig, kind: str) -> None:
    t, v = config.text, config.vision
    checks = []
    if kind in ("clip", "text"):
        checks += _absent(t, "text.")
        if t.pool_type not in ("argmax", "eos") or (t.pool_type == "eos" and t.eos_id == LEGACY_EOS):
            checks.append(("text.pool_type", t.pool_type, "argmax"))
        if t.mlp_width != t.width * t.mlp_ratio:
            checks.append(("text.mlp_ratio", t.mlp_ratio, 4.0))
    if kind in ("clip", "vision"):
        if v.is_resnet:
            _refuse("vision.layers", v.layers, "transformers has no CLIP ResNet")
        checks += _absent(v, "vision.")
    for field, value, want in checks:
        if value != want:
            _refuse(field, value, "transformers' CLIP has no such option")


def preprocessor_config(config: CLIPConfig) -> dict[str, Any]:
    """A CLIPImageProcessor config for the model's image size, mean and std."""
    if config.resize_mode != "shortest" or config.interpolation not in ("bicubic", "bilinear"):
        _refuse("resize_mode", config.resize_mode, "CLIPImageProcessor resizes the shortest side")
    n = config.vision.image_size
    return {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": n},
        "resample": {v: k for k, v in _RESAMPLE.items()}[config.interpolation], "do_center_crop": True,
        "crop_size": {"height": n, "width": n}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(config.image_mean), "image_std": list(config.image_std),
        "do_convert_rgb": True,
    }


# --- reading a folder -----------------------------------------------------------------------------


def is_transformers_folder(path: str | os.PathLike) -> bool:
    """A folder with a config.json and transformers' weights (any of WEIGHTS, or its index)."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file() and weights_file(path) is not None


def weights_file(folder: Path) -> Path | None:
    """The weights transformers would read: the first of WEIGHTS present, whole or as an index."""
    for name in WEIGHTS:
        for candidate in (folder / name, folder / (name + INDEX_SUFFIX)):
            if candidate.is_file():
                return candidate
    return None


MAX_SHARDS = 4096  # the largest released checkpoints have a few hundred shards


def shard_files(index: Path) -> list[str]:
    """The shard file names an `*.index.json` lists (its weight_map's values), each once, checked to be
    plain file names in the index's folder that are weights, not an index (itself or another): reading
    them can't recurse or leave the folder. CheckpointError naming the index and the shard otherwise."""
    try:
        weight_map = read_config_json(index)["weight_map"]
    except (ClipJaxError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a sharded checkpoint index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: not a sharded checkpoint index (weight_map is not an object of file names)")
    files = sorted(set(weight_map.values()))
    if len(files) > MAX_SHARDS:
        raise CheckpointError(f"{index}: names {len(files)} shards (at most {MAX_SHARDS})")
    for name in files:
        if Path(name).name != name or name in ("", ".", "..") or "\\" in name or "\0" in name:
            raise CheckpointError(f"{index}: shard {name[:200]!r} is not a file name in the same folder")
        if name.endswith(INDEX_SUFFIX) or name == index.name:
            raise CheckpointError(f"{index}: shard {name[:200]!r} is an index, not a weights file")
    return files


def read_weights(path: Path, lazy: bool = False) -> dict[str, Any]:
    """One weights file, or every shard of an index, -> transformers' state dict (torch names, layouts).
    lazy: safetensors' tensors as LazyArrays (torch_files), read when used."""
    if not path.name.endswith(INDEX_SUFFIX):
        return _read_weights_file(path, lazy)
    out: dict[str, np.ndarray] = {}
    for name in shard_files(path):  # plain weights files: no recursion
        shard = _read_weights_file(path.parent / name, lazy)
        twice = set(shard) & set(out)
        if twice:
            raise CheckpointError(f"{path}: {sorted(twice)[0]!r} is in more than one shard")
        out.update(shard)
    return out


def _read_weights_file(path: Path, lazy: bool) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".msgpack":
        return read_flax_msgpack(path)
    return load_state_dict(path, lazy)


def read_flax_msgpack(path: Path) -> dict[str, np.ndarray]:
    """FlaxCLIPModel's flax_model.msgpack -> transformers' torch-style state dict. The file is restored
    with flax.serialization.msgpack_restore (plain msgpack of nested dicts and arrays; nothing runs),
    then each Flax leaf is renamed and laid out as transformers' PyTorch<->Flax conversion does."""
    return flax_state_dict(path.read_bytes(), path)


def flax_state_dict(data: bytes, path: str | os.PathLike = "flax msgpack") -> dict[str, np.ndarray]:
    """read_flax_msgpack on the file's bytes (`path` names it in errors): CheckpointError for anything
    that isn't a tree of named arrays at most MAX_TREE_DEPTH deep."""
    try:
        tree = msgpack_restore(data)
    except Exception as e:  # malformed input surfaces as many exception types  # noqa: BLE001
        raise CheckpointError(f"{path}: not a Flax msgpack checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(tree, Mapping) and set(tree) == {"params"}:
        tree = tree["params"]
    out = {}
    for name, value in _flatten(tree, path):
        *parents, leaf = name.split(".")
        if leaf == "kernel":  # Dense [in, out] -> [out, in]; Conv (kh, kw, I, O) -> [O, I, kh, kw]
            leaf, value = "weight", value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        out[".".join([*parents, leaf])] = np.ascontiguousarray(value)
    return out


MAX_TREE_DEPTH = 16  # FlaxCLIPModel's params nest 7 deep


def _flatten(tree: Any, path: str | os.PathLike, prefix: str = "", depth: int = 0):
    if not isinstance(tree, Mapping):
        if not isinstance(tree, np.ndarray):
            raise CheckpointError(f"{path}: {prefix[:-1][:200] or 'the root'} is a {type(tree).__name__}, "
                                  "not an array")
        if tree.dtype.name not in FLOAT_NAMES:  # a bool, int, object or string array is no weight
            raise CheckpointError(f"{path}: {prefix[:-1][:200]} is of dtype {tree.dtype}, not floating point")
        yield prefix[:-1], tree
        return
    if depth >= MAX_TREE_DEPTH:
        raise CheckpointError(f"{path}: {prefix[:200]}... nested over {MAX_TREE_DEPTH} deep, not a Flax checkpoint")
    for key, value in tree.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: {prefix}{key!r:.60} is not a parameter name")
        yield from _flatten(value, path, f"{prefix}{key}.", depth + 1)


def with_tower_prefix(state_dict: Mapping[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """transformers 5 saves a CLIPTextModel's weights as `embeddings...`, 4.x as `text_model.embeddings...`:
    the latter form (as CLIPModel names them) either way."""
    if kind == "clip":
        return dict(state_dict)
    prefix, top = TOWER_PREFIX[kind], TOWER_TOP[kind]
    return {prefix + k if k.startswith(top) else k: v for k, v in state_dict.items()}


def read_json(path: Path) -> dict[str, Any]:
    """A config.json or preprocessor_config.json, bounded in size and nesting (config.read_config_json)."""
    data = read_config_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_folder(folder: str | os.PathLike, lazy: bool = False) -> Checkpoint:
    """A transformers CLIP folder -> Checkpoint (config, flat clip_jax params, kind, projection, origin).
    lazy: safetensors weights as LazyArrays, each read (and laid out) when the model is built from it."""
    folder = Path(folder)
    weights = weights_file(folder)
    if not (folder / CONFIG).is_file() or weights is None:
        raise FileNotFoundError(f"{folder}: not a transformers checkpoint (needs {CONFIG} and one of "
                                f"{', '.join(WEIGHTS)}, whole or sharded)")
    cfg = read_json(folder / CONFIG)
    pp = read_json(folder / PREPROCESSOR_CONFIG) if (folder / PREPROCESSOR_CONFIG).is_file() else None
    try:  # every field checked before a weight is read or a model is traced
        kind = config_from_transformers(cfg, pp)[1]
    except ClipJaxError as e:
        raise type(e)(f"{folder / CONFIG}: {e}") from None
    state_dict = with_tower_prefix(read_weights(weights, lazy), kind)
    has_projection = any(k in state_dict for k in ("text_projection.weight", "visual_projection.weight"))
    try:
        config, kind, projection = config_from_transformers(cfg, pp, projection=has_projection)
        expected = param_shapes(abstract_as_built(config, kind, projection))
        params = from_hf(state_dict, expected)
    except ClipJaxError as e:  # anything else is a bug: it keeps its traceback
        raise type(e)(f"{folder}: {e}") from None
    return Checkpoint(config, params, kind, projection, f"transformers {CONFIG} ({cfg.get('architectures')})")


# --- writing a folder -----------------------------------------------------------------------------


def write_folder(folder: str | os.PathLike, params: Mapping[str, np.ndarray], config: CLIPConfig, kind: str,
                 projection: bool) -> Path:
    """config.json, model.safetensors and preprocessor_config.json in `folder` (created), each written
    atomically, for transformers' CLIPModel (kind "clip") or the tower class of kind and projection."""
    kinds = tuple(dict.fromkeys(kind for kind, _ in ARCHITECTURES.values()))
    if kind not in kinds:
        raise InputError(f"kind must be one of {kinds}, got {kind!r}")
    cfg = config_to_transformers(config, kind, projection)
    state_dict = to_hf(params)
    pp = preprocessor_config(config) if kind != "text" else None
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / WEIGHTS[0], state_dict)
    _write_json(folder / CONFIG, cfg)
    if pp is not None:
        _write_json(folder / PREPROCESSOR_CONFIG, pp)
    return folder


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
