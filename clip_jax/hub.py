"""clip_jax.load: a model and its preprocessing from a file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp

from .checkpoint import read_params
from .config import PRESETS
from .model import CLIP, build


def available_models() -> list[str]:
    """The names `load` knows: OpenAI's nine models."""
    return list(PRESETS)


def load(
    name_or_path: str | os.PathLike,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    attention: str | None = None,
) -> tuple[CLIP, Callable]:
    """-> (model, preprocess), like `clip.load`.

    name_or_path: a converted clip_jax .safetensors, or a PyTorch checkpoint (OpenAI's TorchScript .pt,
    open_clip's .bin/.pt/.safetensors), converted in memory. dtype: compute dtype; param_dtype: storage.
    preprocess: PIL image -> float32 [n_px, n_px, 3], as the weights expect.
    """
    from .image import image_transform

    path = Path(name_or_path)
    if not path.exists():
        known = ", ".join(available_models())
        raise FileNotFoundError(f"{name_or_path}: no such file (downloadable models: {known})")
    config, params = read_params(path)
    model = build(config, params, dtype=dtype, param_dtype=param_dtype, attention=attention)
    preprocess = image_transform(
        config.vision.image_size, mean=config.image_mean, std=config.image_std,
        resize_mode=config.resize_mode, interpolation=config.interpolation,
    )
    return model, preprocess
