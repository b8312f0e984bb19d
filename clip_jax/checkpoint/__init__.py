"""Checkpoints: the torch-free reader, the name-rule converter, and the converted file format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import CLIPConfig
from . import store
from .convert import ConversionError, from_torch, to_torch_state_dict
from .torch_pickle import CheckpointError, load_state_dict


def read_params(path: str | os.PathLike, config: CLIPConfig | None = None) -> tuple[CLIPConfig, dict[str, np.ndarray]]:
    """Any supported file -> (config, flat clip_jax params): a converted .safetensors as it is; a PyTorch
    checkpoint (TorchScript, torch.save zip or legacy, open_clip .bin/.safetensors) converted in memory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if store.is_converted(path):
        return store.load(path)
    try:
        return from_torch(load_state_dict(path), config)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None


def convert(src: str | os.PathLike, dst: str | os.PathLike | None = None, dtype: str = "keep") -> Path:
    """Convert a PyTorch CLIP checkpoint to a clip_jax .safetensors (default: beside src). -> dst."""
    src = Path(src)
    dst = src.with_suffix(".safetensors") if dst is None else Path(dst)
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the output would overwrite the input; pass another output path")
    config, params = read_params(src)
    store.save(dst, params, config, dtype)
    return dst


__all__ = ["CheckpointError", "ConversionError", "convert", "load_state_dict", "read_params", "store",
           "to_torch_state_dict"]
