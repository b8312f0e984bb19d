"""Exact cosine top-k over an embedding folder (clip-retrieval's layout, as `clip-jax embed` writes it).

The .npy shards are memory-mapped and scored `chunk_rows` rows at a time against the queries, keeping a
running top-k, so memory stays at one chunk (chunk_rows x embed_dim float32) whatever the folder's size.
Only the metadata rows of the hits are looked up.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Hit", "search", "shard_files"]

SPACES = {"image": ("img_emb", "image_path"), "text": ("text_emb", "caption")}


class Hit(NamedTuple):
    score: float  # cosine similarity
    shard: int  # k of img_emb_{k}.npy
    row: int  # row in that shard (and in metadata_{k}.parquet)
    value: str  # the metadata: image_path (or caption for space="text")


def shard_files(folder: str | os.PathLike, space: str = "image") -> list[tuple[str, Path]]:
    """[(key, path)] of the embedding shards in shard order; key is the zero-padded k of the file name,
    shared by the shard's metadata_{key}.parquet."""
    sub, _ = SPACES[space]
    found = []
    for p in (Path(folder) / sub).glob(f"{sub}_*.npy"):
        m = re.fullmatch(rf"{sub}_(\d+)\.npy", p.name)
        if m:
            found.append((int(m.group(1)), m.group(1), p))
    if not found:
        raise FileNotFoundError(f"{Path(folder) / sub}: no {sub}_*.npy files (is {folder} an embedding folder?)")
    return [(key, p) for _, key, p in sorted(found)]


def _open_embeddings(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({e})") from None


def _metadata(folder: Path, key: str, column: str, rows: list[int], shard_rows: int) -> list[str]:
    """The metadata of `rows` of shard `key`, whose .npy has `shard_rows` rows (so must its parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "metadata" / f"metadata_{key}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (the metadata of the shard {key})")
    try:
        f = pq.ParquetFile(path)
        if column not in f.schema_arrow.names:
            raise ValueError(f"{path}: no {column!r} column")
        if f.metadata.num_rows != shard_rows:
            raise ValueError(f"{path}: {f.metadata.num_rows} rows, but the shard's embeddings have {shard_rows}; "
                             "the folder's files don't belong together")
        values = f.read(columns=[column]).column(column).take(rows).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    return [str(v) for v in values]


def _chunk_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of a 1-D score array's k best, plus every tie of the k-th (so ties can go to the earliest)."""
    if len(scores) <= k:
        return np.arange(len(scores))
    kth = scores[np.argpartition(-scores, k - 1)[:k]].min()
    return np.flatnonzero(scores >= kth)


def search(folder: str | os.PathLike, queries: np.ndarray, k: int = 10, space: str = "image",
           chunk_rows: int = 65536) -> list[list[Hit]]:
    """queries: float [Q, D] (or [D]) -> for each query its k best rows, best first, as Hits.

    Scores are exact cosine similarities (rows and queries are normalized here, so unnormalized files
    work too). Ties go to the earlier row. Memory: one chunk of chunk_rows x D float32, plus k per query.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {tuple(SPACES)}, got {space!r}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    folder = Path(folder)
    q = np.atleast_2d(np.asarray(queries, np.float32))
    if q.ndim != 2:
        raise ValueError(f"queries must be [Q, D] or [D], got shape {np.shape(queries)}")
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    n_q, dim = q.shape
    # Per query: the best (score, global row) so far; global row = offset of the shard + row in it.
    best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in range(n_q)]
    offsets: list[tuple[int, str, int]] = []  # (first global row, shard key, rows)
    total = 0
    for key, path in shard_files(folder, space):
        emb = _open_embeddings(path)
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise ValueError(f"{path}: embeddings of shape {emb.shape}, but the queries have dimension {dim}")
        offsets.append((total, key, emb.shape[0]))
        for lo in range(0, emb.shape[0], chunk_rows):
            chunk = np.asarray(emb[lo: lo + chunk_rows], np.float32)
            chunk /= np.maximum(np.linalg.norm(chunk, axis=1, keepdims=True), 1e-12)
            scores = q @ chunk.T  # [Q, rows]
            for i in range(n_q):
                cand = _chunk_top_k(scores[i], k)
                s = np.concatenate([best[i][0], scores[i, cand]])
                ids = np.concatenate([best[i][1], total + lo + cand])
                order = np.lexsort((ids, -s))[:k]  # by score, then the earlier row
                best[i] = (s[order], ids[order])
        total += emb.shape[0]

    starts = np.array([o[0] for o in offsets])
    _, column = SPACES[space]
    results = []
    for scores, ids in best:
        where = np.searchsorted(starts, ids, side="right") - 1
        located = [(offsets[w][1], int(i - offsets[w][0])) for w, i in zip(where, ids)]
        values: dict[tuple[str, int], str] = {}
        for key in dict.fromkeys(s for s, _ in located):
            rows = [r for s, r in located if s == key]
            shard_rows = next(n for _, s, n in offsets if s == key)
            values.update({(key, r): v for r, v in zip(rows, _metadata(folder, key, column, rows, shard_rows))})
        results.append([Hit(float(s), int(key), r, values[key, r]) for s, (key, r) in zip(scores, located)])
    return results
