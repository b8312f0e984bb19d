"""The converted file: one .safetensors holding every parameter (clip_jax names and layouts) and the
model's config as JSON in the safetensors metadata, so the file alone rebuilds the model. No pickle."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..config import CLIPConfig
from ..fileio import atomic_write

FORMAT = "clip_jax"
FORMAT_VERSION = "1"
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def cast_params(params: Mapping[str, np.ndarray], dtype: str = "keep") -> dict[str, np.ndarray]:
    """Cast floating params to `dtype` ("keep", "float32", "float16", "bfloat16")."""
    if dtype == "keep":
        return dict(params)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of keep, {', '.join(DTYPES)}; got {dtype!r}")
    target = DTYPES[dtype]
    return {k: v.astype(target) if np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16 else v
            for k, v in params.items()}


def save(path: str | os.PathLike, params: Mapping[str, np.ndarray], config: CLIPConfig, dtype: str = "keep") -> None:
    """Write params + config to `path` atomically."""
    # np.asarray, not np.ascontiguousarray, which turns the 0-d logit_scale into shape (1,).
    tensors = {k: np.asarray(v, order="C") for k, v in cast_params(params, dtype).items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_json()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def is_converted(path: str | os.PathLike) -> bool:
    """True for a file written by `save` (a .safetensors with our config in its metadata)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError, ValueError):
        return False


def load(path: str | os.PathLike) -> tuple[CLIPConfig, dict[str, np.ndarray]]:
    """-> (config, flat params). The file is memory-mapped; each tensor is copied out once."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{path}: not a converted clip_jax file (no '{FORMAT}' format in its metadata)")
            config = CLIPConfig.from_dict(json.loads(metadata["config"]))
            return config, {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{path}: unreadable safetensors file: {e}") from None
