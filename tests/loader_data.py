"""Shards, a transform and a tokenizer for the training loader's tests (clip_jax.data.loader).

The tokenizer writes each caption's bytes into its token row, so a test reads back which samples a batch
holds (`captions(batch)`); the captions of tests/shards.make_samples name their shard and index
("photo 3 of shard 1").
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from clip_jax.data.loader import Loader
from clip_jax.image import image_transform

from .shards import make_samples, write_parquet, write_tar

WIDTH = 32  # token row length: the caption's first 32 bytes
TRANSFORM = image_transform(16)  # uint8 [16, 16, 3] pixels, the real decoding and resize


def tokenize(texts: list[str]) -> np.ndarray:
    """Captions -> uint8 [n, WIDTH], each row the caption's bytes, zero-padded."""
    return np.stack([np.frombuffer(t.encode()[:WIDTH].ljust(WIDTH, b"\0"), np.uint8) for t in texts])


def captions(batch) -> list[str]:
    return [bytes(row).rstrip(b"\0").decode() for row in batch.tokens]


def shard_of(caption: str) -> int:
    return int(re.fullmatch(r"photo \d+ of shard (\d+)", caption).group(1))


def tar_shards(folder: Path, sizes: list[int], corrupt: dict[int, int] | None = None) -> list[str]:
    """Shard s holds sizes[s] samples (sample corrupt[s] not an image); -> their paths."""
    corrupt = corrupt or {}
    return [str(write_tar(folder / f"{s:05d}.tar", make_samples(s, n, corrupt.get(s)))) for s, n in enumerate(sizes)]


def parquet_shards(folder: Path, sizes: list[int]) -> list[str]:
    return [str(write_parquet(folder / f"{s:05d}.parquet", make_samples(s, n))) for s, n in enumerate(sizes)]


def loader(inputs, errors: list | None = None, **kw) -> Loader:
    """A Loader with the test transform and tokenizer, errors appended to `errors`, 2 threads."""
    kw.setdefault("readers", 1)
    kw.setdefault("num_threads", 2)
    on_error = None if errors is None else (lambda *a: errors.append(a))
    return Loader(inputs, transform=TRANSFORM.pixels, tokenize=tokenize, on_error=on_error, **kw)


def take(loader_or_iter, n: int, position: dict | None = None) -> list:
    """The first n batches (of loader.batches(position), or of an iterator), the iterator closed after."""
    it = loader_or_iter.batches(position) if isinstance(loader_or_iter, Loader) else loader_or_iter
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def same(a, b) -> bool:
    """Two batches with bit-identical images and tokens."""
    return (a.images.dtype == b.images.dtype and np.array_equal(a.images, b.images)
            and np.array_equal(a.tokens, b.tokens))
