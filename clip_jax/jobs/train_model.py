"""What `clip-jax train --model M` trains: M resolved to a model, its preprocessing, its tokenizer and
its config.

    resolve_model("ViT-B-32")                    an open_clip architecture: from scratch, random init from seed
    resolve_model("ViT-B-16-SigLIP", tokenizer="spiece.model")   a SigLIP from scratch needs its vocabulary
    resolve_model("my_model.json")               an open_clip model config ({"embed_dim", "vision_cfg",
                                                 "text_cfg"}, or an open_clip_config.json): from scratch
    resolve_model("ViT-B-32/laion2b_s34b_b79k")  anything clip_jax.load takes: fine-tuning those weights
    resolve_model("model.safetensors")           (a file, a folder, "hf-hub:org/repo", "ViT-B/32", ...)

A bare open_clip architecture name means random init, as `open_clip_train --model ViT-B-32` without
`--pretrained` does; pretrained weights are named with their tag ("ViT-B-32/openai", "RN50/openai"),
OpenAI's spelling ("ViT-B/32"), a file or a hub repo. A `.json` file is an architecture, never weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from ..checkpoint.config_source import architecture, read_open_clip_config
from ..checkpoint.vocabulary import with_vocabulary
from ..dtypes import FLOAT_DTYPES, one_of
from ..errors import InputError
from ..families import family_of
from ..hub import HF_PREFIX, load
from ..model import build
from ..pretrained import architectures
from ..siglip_config import siglip_open_clip_architecture

__all__ = ["ResolvedModel", "resolve_model", "is_architecture"]


@dataclass
class ResolvedModel:
    """model: the two-tower model to train (a CLIP or a Siglip), in the compute dtype, float32 params.
    preprocess: its image transform (`preprocess.pixels(bytes)` -> uint8 [n_px, n_px, 3]).
    tokenizer: texts -> int32 [N, context_length] (`tokenizer(texts, truncate=True)` cuts long captions).
    config: its config (what final.safetensors records). pretrained: weights were loaded (fine-tuning),
    else random init. origin: one line saying which, for the log."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    config: Any
    pretrained: bool
    origin: str


def is_architecture(name: str) -> bool:
    """An open_clip architecture name (CLIP's bundled configs, their "-quickgelu" variants, SigLIP's
    released shapes): what `--model` trains from scratch."""
    base = name.removesuffix("-quickgelu")
    return base in architectures() or siglip_open_clip_architecture(name) is not None


def resolve_model(spec: str | os.PathLike, *, seed: int = 0, dtype: str = "float32",
                  tokenizer: str | os.PathLike | None = None, progress: bool = True) -> ResolvedModel:
    """M -> ResolvedModel. From scratch: an open_clip architecture name or a model-config JSON file,
    random init from `seed`. Else anything clip_jax.load takes, its weights loaded (fine-tuning).
    tokenizer: a SigLIP's vocabulary file or folder (needed from scratch; load finds a checkpoint's own).
    Bad input raises InputError (or FileNotFoundError) naming what is wrong."""
    if dtype not in FLOAT_DTYPES:
        raise InputError(f"dtype must be {one_of(FLOAT_DTYPES)}, got {dtype!r}")
    spec = os.fspath(spec)
    if not spec:
        raise InputError("no model: pass --model (an open_clip architecture, a model-config JSON, or weights)")
    config = _architecture_config(spec)
    if config is None:
        model, preprocess = _load(spec, dtype, tokenizer, progress)
        _check_two_towers(model, spec)
        return _resolved(model, preprocess, model.config, True, f"{spec}: pretrained weights (fine-tuning)")
    config = with_vocabulary(config, None, tokenizer)
    family = family_of(config)
    family.tokenizer(config)  # a SigLIP without its vocabulary fails here, before the model is built
    model = build(config, dtype=jnp.dtype(dtype), seed=seed)
    return _resolved(model, family.transform(config), config, False, f"{spec}: random init from seed {seed}")


def _architecture_config(spec: str) -> Any | None:
    """The config of a from-scratch spec (a .json file, an architecture name), or None for weights."""
    path = Path(spec)
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: no such model-config file")
        return read_open_clip_config(path)
    if path.exists() or spec.startswith(HF_PREFIX) or "/" in spec or ":" in spec:
        return None
    return architecture(spec) if is_architecture(spec) else None


def _load(spec: str, dtype: str, tokenizer, progress: bool) -> tuple[Any, Callable]:
    """clip_jax.load(spec); a bare name it doesn't know is said to be no architecture either."""
    try:
        return load(spec, dtype=jnp.dtype(dtype), tokenizer=tokenizer, progress=progress)
    except InputError as e:
        if Path(spec).exists() or "/" in spec or ":" in spec:
            raise
        raise InputError(f"{spec!r} is no open_clip architecture (to train from scratch) and no pretrained model "
                         f"({e}); see clip_jax.pretrained.architectures(), or give a model-config JSON file"
                         ) from None


def _check_two_towers(model: Any, spec: str) -> None:
    if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
        raise InputError(f"{spec}: a single {type(model).__name__}; training needs both towers (a CLIP or a SigLIP)")


def _resolved(model: Any, preprocess: Callable, config: Any, pretrained: bool, origin: str) -> ResolvedModel:
    return ResolvedModel(model, preprocess, family_of(config).tokenizer(config), config, pretrained, origin)
