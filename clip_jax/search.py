"""Exact cosine top-k over an embedding folder (clip-retrieval's layout, as `clip-jax embed` writes it).

The .npy shards are memory-mapped and scored `chunk_rows` rows at a time against the queries, keeping a
running top-k, so memory stays at one chunk (chunk_rows x embed_dim float32) whatever the folder's size.
Only the metadata rows of the hits are looked up.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .fileio import atomic_write

__all__ = ["DeviceTopK", "Hit", "build_index", "index_search", "search", "shard_files"]

SPACES = {"image": ("img_emb", "image_path"), "text": ("text_emb", "caption")}


def _space(space: str) -> tuple[str, str]:
    """(the embeddings' subfolder, the metadata column) of `space`."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {tuple(SPACES)}, got {space!r}")
    return SPACES[space]


class Hit(NamedTuple):
    score: float  # cosine similarity
    shard: int  # k of img_emb_{k}.npy
    row: int  # row in that shard (and in metadata_{k}.parquet)
    value: str  # the metadata: image_path (or caption for space="text")


def shard_files(folder: str | os.PathLike, space: str = "image") -> list[tuple[str, Path]]:
    """[(key, path)] of the embedding shards in shard order; key is the zero-padded k of the file name,
    shared by the shard's metadata_{key}.parquet."""
    sub, _ = _space(space)
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


def _numpy_top_k(q: np.ndarray, chunk: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: (scores, rows) of a chunk's k best, plus every tie of the k-th."""
    chunk = chunk.astype(np.float32)
    chunk /= np.maximum(np.linalg.norm(chunk, axis=1, keepdims=True), 1e-12)
    scores = q @ chunk.T  # [Q, rows]
    out = []
    for i in range(len(q)):
        cand = _chunk_top_k(scores[i], k)
        out.append((scores[i, cand], cand))
    return out


class DeviceTopK:
    """Exact top-k on the devices: a chunk of rows is split over a mesh of this process's devices along
    its rows, scored against the queries and cut to k with jax.lax.top_k (XLA takes each device's top-k,
    then the top-k of those). Chunks are padded to chunk_rows, so one program serves a whole folder."""

    def __init__(self, chunk_rows: int, k: int, devices=None):
        devices = list(devices if devices is not None else jax.local_devices())
        self.n = len(devices)
        self.rows = -(-chunk_rows // self.n) * self.n
        self.k = min(k, self.rows)
        mesh = Mesh(np.array(devices), ("rows",))
        self.split = NamedSharding(mesh, P("rows"))
        self.whole = NamedSharding(mesh, P())

        def top_k(q, chunk, valid):
            chunk = chunk.astype(jnp.float32)
            chunk = chunk / jnp.maximum(jnp.linalg.norm(chunk, axis=1, keepdims=True), 1e-12)
            scores = jnp.matmul(q, chunk.T, precision=jax.lax.Precision.HIGHEST)
            scores = jnp.where(jnp.arange(self.rows)[None, :] < valid, scores, -jnp.inf)
            return jax.lax.top_k(scores, self.k)

        self.fn = jax.jit(top_k, in_shardings=(self.whole, self.split, None), out_shardings=self.whole)

    def __call__(self, q: np.ndarray, chunk: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        n = len(chunk)
        if n < self.rows:
            chunk = np.concatenate([chunk, np.zeros((self.rows - n, chunk.shape[1]), chunk.dtype)])
        scores, idx = self.fn(jax.device_put(q, self.whole), jax.device_put(chunk, self.split), np.int32(n))
        scores, idx = np.asarray(scores), np.asarray(idx)
        return [(s[s > -np.inf], i[s > -np.inf].astype(np.int64)) for s, i in zip(scores, idx)]


@functools.lru_cache(maxsize=8)
def _device_top_k(chunk_rows: int, k: int) -> DeviceTopK:
    """One compiled program per (chunk_rows, k, query count) for the process, not one per search call."""
    return DeviceTopK(chunk_rows, k)


def search(folder: str | os.PathLike, queries: np.ndarray, k: int = 10, space: str = "image",
           chunk_rows: int = 65536, device: bool = False) -> list[list[Hit]]:
    """queries: float [Q, D] (or [D]) -> for each query its k best rows, best first, as Hits.

    Scores are exact cosine similarities (rows and queries are normalized here, so unnormalized files
    work too). Ties go to the earlier row (on the devices: within the k best of each chunk).
    device: score on this process's JAX devices (DeviceTopK) instead of numpy. Memory: one chunk of
    chunk_rows x D, plus k per query.
    """
    _space(space)
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
    top_k = _device_top_k(chunk_rows, k) if device else _numpy_top_k
    offsets: list[tuple[int, str, int]] = []  # (first global row, shard key, rows)
    total = 0
    for key, path in shard_files(folder, space):
        emb = _open_embeddings(path)
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise ValueError(f"{path}: embeddings of shape {emb.shape}, but the queries have dimension {dim}")
        offsets.append((total, key, emb.shape[0]))
        for lo in range(0, emb.shape[0], chunk_rows):
            chunk = np.asarray(emb[lo: lo + chunk_rows])  # stored dtype: float16 travels to the devices
            for i, (scores, cand) in enumerate(top_k(q, chunk, k)):
                s = np.concatenate([best[i][0], scores])
                ids = np.concatenate([best[i][1], total + lo + cand])
                order = np.lexsort((ids, -s))[:k]  # by score, then the earlier row
                best[i] = (s[order], ids[order])
        total += emb.shape[0]

    return _hits(folder, space, offsets, best)


def _hits(folder: Path, space: str, offsets: list[tuple[int, str, int]],
          best: list[tuple[np.ndarray, np.ndarray]]) -> list[list[Hit]]:
    """Per query, (scores, global rows) -> Hits with their metadata (only the hits' rows are read)."""
    starts = np.array([o[0] for o in offsets])
    _, column = _space(space)
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


# --- approximate search with faiss (optional: pip install clip-jax[index]) -----------------------------

INDEX = "{space}.index"  # in the embedding folder, beside img_emb/


def _faiss():
    try:
        import faiss  # an optional dependency: imported only where an index is built or read
    except ImportError:
        raise ImportError("clip-jax index needs faiss: pip install faiss-cpu (or clip-jax[index])") from None
    return faiss


def _offsets(folder: Path, space: str) -> list[tuple[int, str, int]]:
    offsets, total = [], 0
    for key, path in shard_files(folder, space):
        rows = _open_embeddings(path).shape[0]
        offsets.append((total, key, rows))
        total += rows
    return offsets


def build_index(folder: str | os.PathLike, space: str = "image", factory: str | None = None,
                train_rows: int = 262144) -> Path:
    """Write FOLDER/{space}.index: a faiss inner-product index over the folder's normalized rows, ids in
    shard order (what `search` counts). factory: a faiss index_factory string; default "Flat" (exact)
    below 100k rows, else "IVF{4 sqrt(N)},Flat" trained on up to train_rows rows. Shards are added one
    at a time, so memory holds one shard beside the index."""
    faiss = _faiss()
    folder = Path(folder)
    files = shard_files(folder, space)
    n = sum(_open_embeddings(p).shape[0] for _, p in files)
    dim = _open_embeddings(files[0][1]).shape[1]
    if factory is None:
        factory = "Flat" if n < 100_000 else f"IVF{int(4 * np.sqrt(n))},Flat"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)

    def rows(path):
        x = np.asarray(_open_embeddings(path), np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    if not index.is_trained:
        sample: list[np.ndarray] = []
        for _, p in files:
            if sum(map(len, sample)) >= train_rows:
                break
            sample.append(rows(p))
        index.train(np.concatenate(sample)[:train_rows])
    for _, p in files:
        index.add(rows(p))
    out = folder / INDEX.format(space=space)
    atomic_write(out, lambda tmp: faiss.write_index(index, tmp))
    return out


def index_search(folder: str | os.PathLike, queries: np.ndarray, k: int = 10, space: str = "image",
                 nprobe: int = 16) -> list[list[Hit]]:
    """search() through FOLDER/{space}.index (build_index): approximate unless the index is Flat."""
    _space(space)
    faiss = _faiss()
    folder = Path(folder)
    index = faiss.read_index(str(folder / INDEX.format(space=space)))
    if hasattr(index, "nprobe"):
        index.nprobe = nprobe
    else:
        try:
            faiss.extract_index_ivf(index).nprobe = nprobe
        except RuntimeError:  # not an IVF index
            pass
    q = np.atleast_2d(np.asarray(queries, np.float32))
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    scores, ids = index.search(q, k)
    best = [(s[i >= 0], i[i >= 0].astype(np.int64)) for s, i in zip(scores, ids)]
    return _hits(folder, space, _offsets(folder, space), best)
