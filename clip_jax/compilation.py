"""Start-up: JAX's persistent compilation cache, and compiling fixed shapes ahead of the first batch."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import jax
import numpy as np

from .calls import lower
from .model import CLIP
from .tokenizer import DEFAULT_BUCKETS


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Keep compiled XLA executables on disk so a second process starts warm.

    path: default $CLIP_JAX_XLA_CACHE, else ~/.cache/clip_jax/xla. A process-wide JAX setting.
    """
    path = Path(path or os.environ.get("CLIP_JAX_XLA_CACHE") or Path.home() / ".cache" / "clip_jax" / "xla")
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # JAX only caches compilations slower than 1 s by default; a CLIP tower at a new batch size can
    # compile faster than that on a GPU and still cost a noticeable start-up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def warmup(
    model: CLIP,
    image_batch_sizes: Iterable[int] = (),
    text_batch_sizes: Iterable[int] = (),
    text_lengths: Iterable[int] = DEFAULT_BUCKETS,
    uint8: bool = True,
) -> None:
    """Compile encode_image / encode_text for these shapes now (from the persistent cache when it's on),
    so the first real batch doesn't wait. text_lengths: the trim buckets that encode_text can produce.

    Ahead of time: each program is lowered from shapes and compiled, never run, so warming a large batch
    costs no forward pass; the jitted entry points then find the compiled program in JAX's cache.
    """
    size = model.config.vision.image_size
    for n in image_batch_sizes:
        pixels = jax.ShapeDtypeStruct((n, size, size, 3), np.uint8 if uint8 else np.float32)
        lower(model, "image_features", pixels).compile()
    context = model.config.text.context_length
    lengths = sorted({min(length, context) for length in text_lengths}) if model.config.text.trimmable else [context]
    for n in text_batch_sizes:
        for length in lengths:
            lower(model, "text_features", jax.ShapeDtypeStruct((n, length), np.int32)).compile()
