"""The converted file: one .safetensors holding every parameter (clip_jax names and layouts) and the
model's config as JSON in the safetensors metadata, so the file alone rebuilds the model. No pickle."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..config import CLIPConfig
from ..dtypes import FLOAT_DTYPES
from ..fileio import atomic_write
from .torch_files import CheckpointError, check_safetensors_dtypes

FORMAT = "clip_jax"
FORMAT_VERSION = "1"
# dtypes.FLOAT_DTYPES' names -> numpy types (numpy knows "bfloat16" once ml_dtypes is imported).
NUMPY_DTYPES = {name: np.dtype(name).type for name in FLOAT_DTYPES}


def cast_flat(params: Mapping[str, np.ndarray], dtype: str = "keep") -> dict[str, np.ndarray]:
    """A flat params dict (name -> numpy array) with its floating arrays cast to `dtype` ("keep",
    "float32", "float16", "bfloat16"); other arrays as they are."""
    if dtype == "keep":
        return dict(params)
    if dtype not in NUMPY_DTYPES:
        raise ValueError(f"dtype must be one of keep, {', '.join(NUMPY_DTYPES)}; got {dtype!r}")
    target = NUMPY_DTYPES[dtype]
    return {k: v.astype(target) if np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16 else v
            for k, v in params.items()}


def save(path: str | os.PathLike, params: Mapping[str, np.ndarray], config: CLIPConfig, dtype: str = "keep",
         *, origin: str | None = None) -> None:
    """Write params + config to `path` atomically. origin: where the config came from (metadata
    "config_source", e.g. "open_clip_config.json beside the checkpoint")."""
    # np.asarray, not np.ascontiguousarray, which turns the 0-d logit_scale into shape (1,).
    tensors = {k: np.asarray(v, order="C") for k, v in cast_flat(params, dtype).items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_json()}
    if origin:
        metadata["config_source"] = origin
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def is_converted(path: str | os.PathLike) -> bool:
    """True for a file written by `save` (a .safetensors with our config in its metadata)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError, ValueError):
        return False


def load(path: str | os.PathLike) -> tuple[CLIPConfig, dict[str, np.ndarray]]:
    """-> (config, flat params). The file is memory-mapped; each tensor is copied out once. Anything wrong
    with the file (its header, its config, its tensors) is a CheckpointError naming it."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a converted clip_jax file (no '{FORMAT}' format in its metadata)")
            config = _stored_config(path, metadata)
            try:
                check_safetensors_dtypes(f)
            except CheckpointError as e:
                raise CheckpointError(f"{path}: {e}") from None
            _check_header(path, config, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
            return config, {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path}: unreadable safetensors file: {e}") from None


def _stored_config(path: str | os.PathLike, metadata: Mapping[str, str]) -> CLIPConfig:
    """The config in a converted file's metadata, validated (types, ranges) before anything is built."""
    try:
        return CLIPConfig.from_dict(json.loads(metadata["config"]))
    except KeyError:
        raise CheckpointError(f"{path}: no 'config' in its safetensors metadata") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the config in its metadata is not JSON ({e})") from None
    except RecursionError:  # json's parser recurses once per level of [ or {
        raise CheckpointError(f"{path}: the config in its metadata is nested too deeply") from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def _check_header(path: str | os.PathLike, config: CLIPConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Check the config against the tensors the file's header lists, from the header alone: the number
    of blocks of each tower and the shapes that fix its widths, sizes and vocabulary. The model built
    afterwards checks every tensor; this makes a config that matches no file fail before that."""
    for field_name, prefix, n in _block_counts(config):
        found = {int(m[1]) for name in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", name))}
        if found != set(range(n)):
            raise CheckpointError(f"{path}: config field '{field_name}' says {n} blocks, the file holds "
                                  f"{len(found)} ({prefix}N)")
    for name, want, fields in _implied_shapes(config):
        if shapes.get(name) != want:
            got = shapes[name] if name in shapes else "no such tensor"
            raise CheckpointError(f"{path}: config fields {fields} imply {name} of shape {want}, the file holds {got}")


def _block_counts(c: CLIPConfig) -> list[tuple[str, str, int]]:
    """(config field, tensor name prefix of the blocks, how many) for each tower."""
    text = [("text.layers", "transformer.resblocks.", c.text.layers)]
    if c.vision.is_resnet:
        return text + [(f"vision.layers[{i}]", f"visual.layer{i + 1}.", n) for i, n in enumerate(c.vision.layers)]
    return text + [("vision.layers", "visual.transformer.resblocks.", c.vision.layers)]


def _implied_shapes(c: CLIPConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """(tensor, shape, the config fields that set it) for tensors every model of this config holds."""
    t, v, e = c.text, c.vision, c.embed_dim
    out = [
        ("token_embedding.embedding", (t.vocab_size, t.width), "text.vocab_size, text.width"),
        ("positional_embedding", (t.context_length, t.width), "text.context_length, text.width"),
        ("transformer.resblocks.0.mlp.c_fc.kernel", (t.width, t.mlp_width), "text.width, text.mlp_ratio"),
        ("text_projection.kernel" if t.proj_bias else "text_projection", (t.width, e), "text.width, embed_dim"),
    ]
    tokens = v.grid_size**2 + 1  # the class token (ViT) or the mean token (ResNet) first
    if v.is_resnet:
        return out + [
            ("visual.conv1.kernel", (3, 3, 3, v.width // 2), "vision.width"),
            ("visual.attnpool.positional_embedding", (tokens, v.width * 32), "vision.image_size, vision.width"),
            ("visual.attnpool.c_proj.kernel", (v.width * 32, e), "vision.width, embed_dim"),
        ]
    p = v.patch_size
    return out + [
        ("visual.conv1.kernel", (p, p, 3, v.width), "vision.patch_size, vision.width"),
        ("visual.positional_embedding", (tokens, v.width), "vision.image_size, vision.patch_size, vision.width"),
        ("visual.transformer.resblocks.0.mlp.c_fc.kernel", (v.width, v.mlp_width), "vision.width, vision.mlp_ratio"),
        ("visual.proj", (v.width, e), "vision.width, embed_dim"),
    ]
