"""Synthetic training shards for tests and benchmarks: clip_jax.synthetic's images and captions written as
WebDataset tar shards (nothing downloaded), and the tiny architectures trained on them.

    pattern = write_synthetic_shards(tmp / "shards", shards=4, per_shard=64)   # ".../{00000..00003}.tar"
    config = write_model_config(tmp / "tiny.json")                             # open_clip's model-config JSON

Shard k holds `synthetic.batch(seed, k, per_shard)`: a pure function of (seed, k), so a test and the
benchmark that write the same shards train on the same bytes.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from clip_jax import synthetic

from .shards import write_tar

# The bundled demo model's architecture (clip_jax/assets/open_clip_config.json), in open_clip's model-config
# form: what `open_clip.add_model_config` registers and `clip-jax train --model FILE.json` reads.
DEMO_ARCH = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
# Smaller still, for the fast tests: one block a tower.
TINY_ARCH = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}


def encode(pixels: np.ndarray, fmt: str = "jpg") -> bytes:
    """uint8 [H, W, 3] -> the bytes of a JPEG (quality 95) or a PNG."""
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    elif fmt == "png":
        Image.fromarray(pixels).save(buf, "PNG")
    else:
        raise ValueError(f"fmt must be 'jpg' or 'png', got {fmt!r}")
    return buf.getvalue()


def write_synthetic_shards(folder: str | os.PathLike, shards: int, per_shard: int, *, seed: int = 0,
                           image_size: int = 64, fmt: str = "jpg") -> str:
    """Write `shards` tar shards of `per_shard` samples each ({key}.jpg or .png, {key}.txt) into folder.

    -> the brace pattern naming them all, "<folder>/{00000..0000N}.tar" (what `clip-jax train`,
    `clip-jax embed` and open_clip_train's --train-data take).
    """
    folder = Path(folder)
    for k in range(shards):
        pixels, captions = synthetic.batch(seed=seed, index=k, batch_size=per_shard, image_size=image_size)
        write_tar(folder / f"{k:05d}.tar",
                  [{"__key__": f"{k:05d}{i:05d}", fmt: encode(p, fmt), "txt": c}
                   for i, (p, c) in enumerate(zip(pixels, captions))])
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def write_model_config(path: str | os.PathLike, arch: dict | None = None) -> Path:
    """An open_clip model-config JSON ({"embed_dim", "vision_cfg", "text_cfg", ...}) at `path`; its stem is
    the name open_clip.add_model_config registers it under."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(arch or DEMO_ARCH, indent=1))
    return path
