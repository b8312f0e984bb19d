"""Export a clip_jax model back to PyTorch, without torch: `.pt` in torch.save's zip format, or
`.safetensors`, both with OpenAI/open_clip names and layouts.

    export(model, "finetuned.pt")                    # torch.load(..., weights_only=True) -> OrderedDict
    export(model, "finetuned.safetensors")           # safetensors.torch.load_file -> dict
    export(model, "release.pt", dtype="fp16_mix")    # OpenAI's release mix: fp16 weights, fp32 norms

Either file loads into open_clip's CLIP with `load_state_dict(sd, strict=True)` (and into OpenAI's
`build_model`). A model's config goes with it, as open_clip's Hub snapshots carry theirs: in
`open_clip_config.json` beside the file (what `open_clip.create_model("local-dir:FOLDER")` reads) and
in the file itself (a .safetensors' metadata, a record of the .pt's archive), so `clip_jax.load` and
`convert` read back the same model, params bit for bit, whatever else the folder holds. The files
themselves are written by torch_writer.py; transformers' folders by hf_format.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from ..config import CLIPConfig, config_to_open_clip
from ..dtypes import FLOAT_DTYPES
from ..errors import ClipJaxError, InputError
from ..families import family_of
from ..fileio import atomic_write, output_target
from ..model import flat_params, model_declarations
from ..roles import Declared
from ..siglip_config import SiglipConfig
from ..towers import kind_of
from .big_vision import write_big_vision
from .config_source import CLIP_JAX_CONFIG_KEY, IN_FILE_KEY, OPEN_CLIP_CONFIG, read_open_clip_config
from .declared import declared_by_name
from .hf_format import write_folder
from .siglip_hf import write_siglip_folder
from .siglip_names import OPEN_CLIP, from_ours, siglip_config_to_open_clip, siglip_preprocess_cfg, torch_style
from .store import cast_flat
from .torch_names import to_torch_state_dict
from .torch_writer import write_safetensors, write_torch_zip
from .vocabulary import carry_vocabulary

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
FP16_MIX = "fp16_mix"
EXPORT_DTYPES = ("keep", *FLOAT_DTYPES, FP16_MIX)
EXPORT_FORMATS = ("torch", "open_clip", "transformers")


# --- the state dict ---------------------------------------------------------------------------------


def fp16_mix(params: Mapping[str, np.ndarray], declared: Mapping[str, Declared] | None = None) -> dict[str, np.ndarray]:
    """OpenAI's release mix on flat clip_jax params (open_clip.model.convert_weights_to_lp): float16
    where the param's declared role says so (Linear and conv weights and biases, attention in_proj,
    the projections `proj`/`text_projection`); float32 for norms, BatchNorm statistics, embeddings and
    logit_scale. declared: the model's declarations (model_declarations); None: looked up by name."""
    out = {}
    for name, value in params.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) or value.dtype == ml_dtypes.bfloat16:
            info = declared[name] if declared is not None else declared_by_name(name)
            value = value.astype(np.float16 if info.role.fp16_in_release else np.float32)
        out[name] = value
    return out


def _flat(model_or_params) -> tuple[dict[str, np.ndarray], dict[str, Declared] | None]:
    """A model or flat params -> (flat numpy params, the model's declarations or None for a dict)."""
    if isinstance(model_or_params, Mapping):
        return {k: np.asarray(v) for k, v in model_or_params.items()}, None
    return {k: np.asarray(v) for k, v in flat_params(model_or_params).items()}, model_declarations(model_or_params)


def _cast(params: dict[str, np.ndarray], dtype: str, declared: Mapping[str, Declared] | None) -> dict[str, np.ndarray]:
    if dtype not in EXPORT_DTYPES:
        raise InputError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}; got {dtype!r}")
    return fp16_mix(params, declared) if dtype == FP16_MIX else cast_flat(params, dtype)


def torch_state_dict(model_or_params, dtype: str = "keep") -> dict[str, np.ndarray]:
    """A CLIP (or flat clip_jax params) -> {OpenAI/open_clip name: numpy array in torch's layout}.
    BatchNorm layers also get the `num_batches_tracked` counter torch's modules keep (0), so that
    `load_state_dict(strict=True)` finds every key.

    dtype: "keep" (each param's own dtype), "float32", "float16", "bfloat16", or "fp16_mix" (OpenAI's).
    """
    params, declared = _flat(model_or_params)
    state_dict = to_torch_state_dict(_cast(params, dtype, declared), declared)
    for name in list(state_dict):
        if name.endswith(".running_mean"):
            state_dict[name[: -len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return state_dict


def export(model, path: str | os.PathLike, *, dtype: str = "keep", compress: bool = False,
           format: str = "torch") -> Path:
    """Write a CLIP (or flat clip_jax params) as a PyTorch checkpoint with OpenAI/open_clip names, or
    in transformers' format.

    path: `.pt`, `.pth` or `.bin` -> torch.save's zip format (an OrderedDict of tensors);
      `.safetensors` -> safetensors. The file is written atomically; a model's (not a params dict's)
      open_clip config goes into the file and into open_clip_config.json beside it. With format="transformers", a
      folder: config.json, model.safetensors and preprocessor_config.json that transformers'
      CLIPModel.from_pretrained reads (CLIPTextModel[WithProjection] / CLIPVisionModel[WithProjection]
      for a single tower). A ResNet, or an open_clip option transformers' CLIP lacks, is refused.
    dtype: "keep" (as stored in the params), "float32", "float16", "bfloat16", or "fp16_mix" (OpenAI's
      release mix: fp16 weights, fp32 norms and embeddings).
    compress: deflate a .pt's entries (see write_torch_zip).
    format "open_clip": the same as "torch" (open_clip's names are OpenAI's).
    A SigLIP: "torch" / "open_clip" -> open_clip's state dict (timm's trunk names) in a .pt / .safetensors
    with its open_clip config; a `.npz` path -> big_vision's layout; "transformers" -> a SiglipModel
    folder (SiglipTextModel / SiglipVisionModel for a tower) with the vocabulary files the model's
    config names.
    -> the path written.
    """
    if format not in EXPORT_FORMATS:
        raise InputError(f"format must be one of {EXPORT_FORMATS}; got {format!r}")
    if isinstance(getattr(model, "config", None), SiglipConfig):
        return _export_siglip(model, Path(path), dtype, compress, format)
    if format == "transformers":
        return _export_transformers(model, path, dtype)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*TORCH_SUFFIXES, ".safetensors"):
        raise InputError(f"{path}: unknown checkpoint suffix {path.suffix!r}; use one of "
                         f"{', '.join(TORCH_SUFFIXES)} (torch.save format) or .safetensors")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such directory")
    output_target(path)  # refuse a FIFO or device before the work
    if suffix == ".safetensors" and compress:
        raise InputError(f"{path}: compress applies to .pt files only")
    state_dict = torch_state_dict(model, dtype)
    config = None if isinstance(model, Mapping) else model.config
    text = None if config is None else json.dumps(config_to_open_clip(config), indent=2) + "\n"
    if suffix == ".safetensors":
        write_safetensors(path, state_dict, None if text is None else {IN_FILE_KEY: text})
    else:
        write_torch_zip(path, state_dict, compress=compress, extra=None if text is None else {OPEN_CLIP_CONFIG: text})
    if config is not None:
        _write_beside(path, config, text)
    return path


def _write_beside(path: Path, config: CLIPConfig, text: str) -> None:
    """open_clip_config.json beside `path`, as open_clip's Hub snapshots and local-dir folders keep it. One
    that described another model is replaced, with a warning: open_clip reads the folder's one config."""
    beside = path.parent / OPEN_CLIP_CONFIG
    if beside.is_file():
        try:
            other = read_open_clip_config(beside)
        except (ClipJaxError, OSError):
            other = None  # not a config clip_jax reads: replaced by one it does
        if other is not None and other != config:
            warnings.warn(f"{beside}: described another model; now {path.name}'s (files exported earlier carry "
                          "their own config for clip_jax; give open_clip each model its own folder)", stacklevel=3)
    atomic_write(beside, lambda tmp: Path(tmp).write_text(text))


def _export_siglip(model, path: Path, dtype: str, compress: bool, format: str) -> Path:
    """SigLIP's formats: transformers' folder, big_vision's .npz, open_clip's state dict."""
    config = model.config
    kind = family_of(config).kind_of(model)
    flat, declared = _flat(model)
    params = _cast(flat, dtype, declared)
    if format == "transformers":
        folder = write_siglip_folder(path, params, config, kind)
        if config.tokenizer is not None:
            carry_vocabulary(config, Path(config.tokenizer), folder)
        return folder
    if path.suffix.lower() == ".npz":
        if kind != "clip":
            raise InputError(f"{path}: big_vision's .npz holds both towers; this is a single {kind} tower")
        write_big_vision(path, params, config)
        if config.tokenizer is not None:  # beside it: big_vision keeps its vocabularies apart from weights
            carry_vocabulary(config, Path(config.tokenizer), path.parent)
        return path
    if path.suffix.lower() not in (*TORCH_SUFFIXES, ".safetensors"):
        raise InputError(f"{path}: unknown checkpoint suffix {path.suffix!r}; use .safetensors, .pt or .bin "
                         "(open_clip's state dict), .npz (big_vision's) or format='transformers'")
    heads = (config.vision.heads, config.text.heads)
    state_dict = {k: np.asarray(v) for k, v in from_ours(torch_style(params, config, kind), OPEN_CLIP, kind, heads)}
    text = json.dumps(_siglip_open_clip_json(config), indent=2) + "\n"
    if path.suffix.lower() == ".safetensors":
        write_safetensors(path, state_dict, {IN_FILE_KEY: text})
    else:
        write_torch_zip(path, state_dict, compress=compress, extra={OPEN_CLIP_CONFIG: text})
    _write_beside(path, config, text)
    if config.tokenizer is not None:  # beside the weights, as open_clip's Hub snapshots ship it
        carry_vocabulary(config, Path(config.tokenizer), path.parent)
    return path


def _siglip_open_clip_json(config: SiglipConfig) -> dict:
    """open_clip_config.json for a SigLIP: open_clip's model_cfg and preprocess_cfg where open_clip builds
    this model exactly (a timm trunk of its shapes and GELU), and always clip_jax's own config, which
    clip_jax reads first: the round trip is exact whatever open_clip can build."""
    out = {}
    try:
        out = {"model_cfg": siglip_config_to_open_clip(config), "preprocess_cfg": siglip_preprocess_cfg(config)}
    except InputError as e:
        warnings.warn(f"open_clip can't build this SigLIP ({e}); the file carries clip_jax's config only",
                      stacklevel=4)
    return {**out, CLIP_JAX_CONFIG_KEY: {"family": "siglip", **dataclasses.replace(config, tokenizer=None).to_dict()}}


def _export_transformers(model, folder: str | os.PathLike, dtype: str) -> Path:
    if isinstance(model, Mapping):
        raise TypeError("format='transformers' needs the model (its config goes into config.json), not params")
    kind, projection = kind_of(model)
    params, declared = _flat(model)
    return write_folder(folder, _cast(params, dtype, declared), model.config, kind, projection)


__all__ = ["EXPORT_DTYPES", "FP16_MIX", "export", "fp16_mix", "torch_state_dict", "write_safetensors",
           "write_torch_zip"]  # the writers are torch_writer's, kept importable from here
