"""Which config a PyTorch checkpoint is converted with, and where it came from.

A checkpoint's shapes give most of the architecture, but not the activation (OpenAI's QuickGELU or
open_clip's exact GELU), a head width other than 64, or the pooling. In order of precedence:

1. what the caller says: a CLIPConfig, an open_clip config file or dict (`config=`, `--config`), or an
   open_clip architecture name (`model=`, `--model`: "ViT-B-32", "ViT-B-32-quickgelu", ...);
2. the open_clip config clip_jax's export writes into the file: a .safetensors' metadata
   "open_clip_config", a .pt's record "<root>/open_clip_config.json" beside data.pkl;
3. the `open_clip_config.json` beside the file (a Hugging Face snapshot, open_clip's local-dir layout);
4. inference from the weights, as OpenAI's build_model does: exact for OpenAI's own TorchScript archives;
   for any other file QuickGELU is an assumption, said in an `AssumedActivationWarning`.

The origin is recorded in the converted file (metadata "config_source").
"""

from __future__ import annotations

import difflib
import os
import zipfile
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, NamedTuple

from safetensors import SafetensorError, safe_open

from ..config import MAX_CONFIG_BYTES, CLIPConfig, config_from_open_clip, parse_config_json, read_config_json
from ..errors import ClipJaxError, InputError
from ..pretrained import architectures
from ..siglip_config import (
    SiglipConfig,
    is_open_clip_siglip_config,
    siglip_config_from_open_clip,
    siglip_open_clip_architecture,
)

OPEN_CLIP_CONFIG = "open_clip_config.json"
IN_FILE_KEY = "open_clip_config"  # a .safetensors' metadata key; a .pt's record is <root>/OPEN_CLIP_CONFIG
QUICKGELU_SUFFIX = "-quickgelu"
OPENAI_ATTRIBUTES = ("input_resolution", "context_length", "vocab_size")  # OpenAI's archives carry these


class AssumedActivationWarning(UserWarning):
    """Nothing said which activation a checkpoint was trained with; QuickGELU was assumed."""


class ConfigSource(NamedTuple):
    """config: None to infer it from the weights. origin: where it came from (recorded in the converted
    file). activation_known: False when nothing says QuickGELU or exact GELU."""

    config: CLIPConfig | None
    origin: str
    activation_known: bool = True


ConfigArg = CLIPConfig | ConfigSource | Mapping | str | os.PathLike | None


def resolve_config(path: str | os.PathLike, config: ConfigArg = None, model: str | None = None) -> ConfigSource:
    """The config to convert the checkpoint at `path` with: config= (a CLIPConfig, an open_clip config
    dict, or a JSON file: open_clip_config.json or a bare model config), else model= (an open_clip
    architecture name), else the config export wrote into the file, else an open_clip_config.json beside
    the file, else None (inferred)."""
    if config is not None and model is not None:
        raise InputError("give either a config or a model architecture, not both")
    if isinstance(config, ConfigSource):
        return config
    if isinstance(config, (CLIPConfig, SiglipConfig)):
        return ConfigSource(config, "config given by the caller")
    if isinstance(config, Mapping):
        return ConfigSource(_from_open_clip_json(config, "config"), "open_clip config given by the caller")
    if config is not None:
        return ConfigSource(read_open_clip_config(config), f"config file {Path(config).name}")
    if model is not None:
        return ConfigSource(architecture(model), f"open_clip architecture {model}")
    in_file = config_in_file(path)
    if in_file is not None:
        return ConfigSource(in_file, "open_clip config in the file")
    beside = Path(path).parent / OPEN_CLIP_CONFIG
    if beside.is_file():
        return ConfigSource(read_open_clip_config(beside), f"{OPEN_CLIP_CONFIG} beside the checkpoint")
    return ConfigSource(None, "inferred from the weights' shapes", activation_known=False)


def read_open_clip_config(path: str | os.PathLike, where: str | None = None) -> CLIPConfig:
    """An open_clip_config.json ({"model_cfg": ..., "preprocess_cfg": ...}) or a bare open_clip model
    config ({"embed_dim": ..., "vision_cfg": ..., "text_cfg": ...}) -> CLIPConfig. Errors name `where`
    (default: the file)."""
    where = where or str(path)
    return _from_open_clip_json(read_config_json(path, where), where)


# clip_jax's own config in an open_clip_config.json clip_jax wrote (a SigLIP's: open_clip's model_cfg can't
# say its GELU or preprocessing), read before open_clip's.
CLIP_JAX_CONFIG_KEY = "clip_jax_config"


def _from_open_clip_json(data: Any, where: str) -> CLIPConfig | SiglipConfig:
    if isinstance(data, Mapping) and isinstance(data.get(CLIP_JAX_CONFIG_KEY), Mapping):
        own = dict(data[CLIP_JAX_CONFIG_KEY])
        if own.pop("family", None) != "siglip":
            raise InputError(f"{where}: {CLIP_JAX_CONFIG_KEY} names no family clip_jax writes there")
        try:
            return SiglipConfig.from_dict(own)
        except ClipJaxError as e:
            raise type(e)(f"{where} ({CLIP_JAX_CONFIG_KEY}): {e}") from None
    if not isinstance(data, Mapping) or not ("model_cfg" in data or "vision_cfg" in data):
        raise InputError(f"{where}: not an open_clip config (no 'model_cfg' and no 'vision_cfg')")
    model_cfg, preprocess_cfg = (data["model_cfg"], data.get("preprocess_cfg")) if "model_cfg" in data else (data, None)
    if not isinstance(model_cfg, Mapping) or not isinstance(preprocess_cfg, (Mapping, type(None))):
        raise InputError(f"{where}: 'model_cfg' and 'preprocess_cfg' must be objects")
    try:
        if is_open_clip_siglip_config(model_cfg):
            return siglip_config_from_open_clip(model_cfg, preprocess=preprocess_cfg)
        return config_from_open_clip(model_cfg, preprocess_cfg)
    except ClipJaxError as e:  # keeps its type: LimitError for a value out of range
        raise type(e)(f"{where}: {e}") from None


def config_in_file(path: str | os.PathLike) -> CLIPConfig | None:
    """The open_clip config clip_jax's export wrote into a .safetensors' metadata or a .pt's archive, or
    None (another file, or one a reader will refuse: that reader says why)."""
    text = None
    with suppress(SafetensorError, OSError, ValueError):
        with safe_open(str(path), framework="numpy") as f:
            text = (f.metadata() or {}).get(IN_FILE_KEY)
    with suppress(OSError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, NotImplementedError):
        if text is None and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                info = next((i for i in zf.infolist() if i.filename.count("/") == 1
                             and i.filename.endswith("/" + OPEN_CLIP_CONFIG)), None)
                if info is not None:
                    with zf.open(info) as f:
                        text = f.read(MAX_CONFIG_BYTES + 1)  # parse_config_json refuses more
    return None if text is None else _from_open_clip_json(parse_config_json(text, f"{path} ({IN_FILE_KEY})"),
                                                          f"{path} ({IN_FILE_KEY})")


def architecture(name: str) -> CLIPConfig:
    """An open_clip architecture name -> its config, as open_clip.create_model(name) builds it: exact
    GELU, or QuickGELU for the "-quickgelu" names. From the configs bundled in clip_jax/assets."""
    siglip = siglip_open_clip_architecture(name)
    if siglip is not None:
        return siglip
    models = architectures()
    base = name[: -len(QUICKGELU_SUFFIX)] if name.endswith(QUICKGELU_SUFFIX) else name
    if base not in models:
        known = list(models) + [m + QUICKGELU_SUFFIX for m in models]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(f"unknown open_clip architecture {name!r}; {hint}known: {', '.join(models)} "
                         f"(each also with {QUICKGELU_SUFFIX})")
    return config_from_open_clip(models[base], quick_gelu=name != base)


def is_openai_archive(path: str | os.PathLike, state_dict: Mapping[str, Any]) -> bool:
    """True for OpenAI's released .pt files: a TorchScript archive (compiled code beside the pickle)
    whose module carries OpenAI's input_resolution, context_length and vocab_size."""
    if not all(k in state_dict for k in OPENAI_ATTRIBUTES):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def assumed_activation_message(path: str | os.PathLike) -> str:
    """One line: what was assumed, and how to say otherwise."""
    return (f"{path}: nothing says which activation these weights were trained with; assumed OpenAI's "
            f"QuickGELU. For open_clip's exact-GELU models pass --model ARCH (e.g. ViT-B-32) or --config "
            f"{OPEN_CLIP_CONFIG} (model= or config= in Python), or put {OPEN_CLIP_CONFIG} beside the file")
