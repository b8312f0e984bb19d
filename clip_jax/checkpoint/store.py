"""The converted file: one .safetensors holding every parameter (clip_jax names and layouts) and the
model's config as JSON in the safetensors metadata, so the file alone rebuilds the model. No pickle."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..config import CLIPConfig
from ..dtypes import FLOAT_DTYPES
from ..errors import InputError
from ..families import Family, family_of
from ..fileio import atomic_write
from .torch_files import CheckpointError, check_safetensors_dtypes, safetensors_arrays

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
        raise InputError(f"dtype must be one of keep, {', '.join(NUMPY_DTYPES)}; got {dtype!r}")
    target = NUMPY_DTYPES[dtype]
    return {k: v.astype(target) if np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16 else v
            for k, v in params.items()}


def save(path: str | os.PathLike, params: Mapping[str, np.ndarray], config: CLIPConfig, dtype: str = "keep",
         *, origin: str | None = None) -> None:
    """Write params + config to `path` atomically. origin: where the config came from (metadata
    "config_source", e.g. "open_clip_config.json beside the checkpoint")."""
    # np.asarray, not np.ascontiguousarray, which turns the 0-d logit_scale into shape (1,).
    tensors = {k: np.asarray(v, order="C") for k, v in cast_flat(params, dtype).items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "family": family_of(config).name,
                "config": config.to_json()}
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


def load(path: str | os.PathLike, lazy: bool = False) -> tuple[CLIPConfig, dict[str, Any]]:
    """-> (config, flat params). The file is memory-mapped; each tensor is copied out once. Anything wrong
    with the file (its header, its config, its tensors) is a CheckpointError naming it, before any tensor
    is read. lazy: the params as LazyArrays (torch_files), each read when it is used."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a converted clip_jax file (no '{FORMAT}' format in its metadata)")
            family, config = _stored_config(path, metadata)
            try:
                check_safetensors_dtypes(f)
            except CheckpointError as e:
                raise CheckpointError(f"{path}: {e}") from None
            contradiction = family.check_header(config, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
            if contradiction:
                raise CheckpointError(f"{path}: {contradiction}")
            if lazy:
                return config, safetensors_arrays(path)
            return config, {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path}: unreadable safetensors file: {e}") from None


def _stored_config(path: str | os.PathLike, metadata: Mapping[str, str]) -> tuple[Family, Any]:
    """The family and config in a converted file's metadata, validated (types, ranges) before anything is
    built. A file without "family" is a CLIP (the only family before there were others)."""
    try:
        family = family_of(metadata.get("family", "clip"))
    except InputError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        return family, family.config_type.from_dict(json.loads(metadata["config"]))
    except KeyError:
        raise CheckpointError(f"{path}: no 'config' in its safetensors metadata") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the config in its metadata is not JSON ({e})") from None
    except RecursionError:  # json's parser recurses once per level of [ or {
        raise CheckpointError(f"{path}: the config in its metadata is nested too deeply") from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
