"""Exact cosine top-k over an embedding folder (clip-retrieval's layout, as `clip-jax embed` writes it).

The .npy shards are memory-mapped and scored `chunk_rows` rows at a time against the queries, keeping a
running top-k, so memory stays at one chunk (chunk_rows x embed_dim float32) whatever the folder's size.
Only the metadata rows of the hits are looked up.

The folder is outside input, checked before anything is scored, so search never answers from part of it
silently: every shard a done record names (done/done_{k}.json, and the manifest's shards: a folder of
format version 1 has only these) must have its .npy with the rows the record says, and the byte sizes
where it records them; every .npy must be a float [rows, D] array of the same D (its header parsed here,
checked against the file's size), with a metadata parquet of as many rows. Anything else is one
InputError naming the file. A row holding NaN (or inf) can't be ranked: it is never returned, on the
devices, with numpy or through an index.

An index (`build_index`) records what it was built from, beside it ({space}.index.json): the shard files,
their rows and sizes, the done markers' digests, the dimension, the factory and the index file's own
size and sha256. `index_search` refuses an index whose folder has changed since (StaleIndexError: rerun
`clip-jax index`), and one whose bytes aren't those it recorded (corrupt or replaced): faiss never reads
bytes that clip_jax did not write. `clip-jax search` answers a StaleIndexError with exact search and one
warning line; the other errors are one line.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
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

from ..errors import InputError, MissingExtraError
from ..fileio import atomic_write
from .embed_folder import DONE, MANIFEST

__all__ = ["DeviceTopK", "Hit", "StaleIndexError", "build_index", "index_search", "search", "shard_files"]

SPACES = {"image": ("img_emb", "image_path"), "text": ("text_emb", "caption")}
# Bounds on the JSON records read whole: a done marker is ~200 bytes plus its shard's errors (a shard of
# 10k failed samples: a few MB); a manifest or an index record holds a line per shard.
_MARKER_MAX = 64 << 20
_MANIFEST_MAX = 1 << 30


def _space(space: str) -> tuple[str, str]:
    """(the embeddings' subfolder, the metadata column) of `space`."""
    if space not in SPACES:
        raise InputError(f"space must be one of {tuple(SPACES)}, got {space!r}")
    return SPACES[space]


class Hit(NamedTuple):
    score: float  # cosine similarity
    shard: int  # k of img_emb_{k}.npy
    row: int  # row in that shard (and in metadata_{k}.parquet)
    value: str  # the metadata: image_path (or caption for space="text")
    # The row's whole metadata, {column: value}: image_path and/or caption; from shards also key and the
    # samples' json fields (or a parquet table's other columns).
    metadata: dict | None = None
    source: str | None = None  # the input shard the row came from (its done marker's "shard"), for shard jobs


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


# --- reading the folder (outside input: checked whole before it is used) -------------------------------

_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER_MAX = 65536  # numpy writes ~128 bytes; its own reader refuses past 10000 by default
_FLOATS = {"f2", "f4", "f8"}


class _NpyError(Exception):
    """What is wrong with a .npy file (_open_embeddings names the file)."""


def _npy_header(path: Path) -> tuple[np.dtype, bool, tuple[int, int], int]:
    """(dtype, fortran_order, shape, data offset) of a .npy file, each field checked before use, and the
    file's size checked against them: a .npy cut short, or with bytes after its rows, is refused."""
    with open(path, "rb") as f:
        head = f.read(10)
        if len(head) < 10 or head[:6] != _NPY_MAGIC or head[6] not in (1, 2, 3):
            raise _NpyError("no .npy magic and version")
        size = 2 if head[6] == 1 else 4
        head += f.read(size - 2)
        length = int.from_bytes(head[8:8 + size], "little")
        if length > _NPY_HEADER_MAX:
            raise _NpyError(f"a .npy header of {length} bytes (over {_NPY_HEADER_MAX})")
        text = f.read(length)
        if len(text) < length:
            raise _NpyError("cut short inside its .npy header")
    try:  # the header is a Python literal: ast.literal_eval evaluates no code
        header = ast.literal_eval(text.decode("utf-8" if head[6] == 3 else "latin1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise _NpyError(f"a .npy header that doesn't parse ({type(e).__name__})") from None
    if not (isinstance(header, dict) and set(header) == {"descr", "fortran_order", "shape"}):
        raise _NpyError("a .npy header without exactly descr, fortran_order and shape")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not (isinstance(descr, str) and len(descr) == 3 and descr[0] in "<>=|" and descr[1:] in _FLOATS):
        raise _NpyError(f"an array of {str(descr)[:40]!r}, not float16/32/64 embeddings")
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(type(n) is int and n >= 0 for n in shape)
            and shape[1] > 0 and isinstance(fortran, bool)):
        raise _NpyError(f"a .npy of shape {str(shape)[:40]}, not [rows, dim] embeddings")
    dtype, offset = np.dtype(descr), 8 + size + length
    expected = offset + shape[0] * shape[1] * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise _NpyError(f"{actual} bytes, but its header says {shape} of {dtype} ({expected} bytes): "
                        f"{'cut short' if actual < expected else 'bytes after its rows'}")
    return dtype, fortran, shape, offset


def _open_embeddings(path: Path) -> np.ndarray:
    """The .npy at `path`, memory-mapped: a float [rows, D] array, or InputError naming the file (the
    header is parsed here, not by np.load: a .npy is outside input, and np.load would also take a zip or
    a pickle)."""
    try:
        if not path.is_file():  # a FIFO would block the read; a directory is no shard
            raise _NpyError("not a regular file")
        dtype, fortran, shape, offset = _npy_header(path)
        if shape[0] == 0:
            return np.zeros(shape, dtype)  # mmap can't map 0 bytes
        return np.memmap(path, dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    except (_NpyError, OSError) as e:
        detail = e.strerror or str(e) if isinstance(e, OSError) else str(e)
        raise InputError(f"{path}: not a readable .npy file ({detail}); rerun the embedding job") from None


def _read_json_record(path: Path, what: str, limit: int = _MARKER_MAX) -> dict:
    """A small JSON object from outside (a done marker, an index record), or InputError naming it."""
    try:
        if not path.is_file():
            raise InputError(f"{path}: not a regular file")
        if path.stat().st_size > limit:  # before reading: read(limit) would allocate the whole limit
            raise InputError(f"{path}: over {limit} bytes, not {what}")
        value = json.loads(path.read_bytes())
    except (ValueError, RecursionError, OSError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: not {what} ({str(e)[:200]})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: not {what} (a JSON {type(value).__name__}, not an object)")
    return value


def _done_records(folder: Path) -> dict[int, tuple[str, Path, dict]]:
    """{k: (key or "", the record's file, the record)} of every shard a done marker or the manifest calls
    done. A done marker that isn't a JSON object (empty, `[]`, cut short) is an InputError naming it."""
    done: dict[int, tuple[str, Path, dict]] = {}
    manifest = folder / MANIFEST
    if manifest.exists():
        shards = _read_json_record(manifest, "an embedding manifest", _MANIFEST_MAX).get("shards", {})
        if not isinstance(shards, dict):
            raise InputError(f"{manifest}: not an embedding manifest (its 'shards' is not an object)")
        for k, record in shards.items():
            if not (isinstance(k, str) and k.isascii() and k.isdigit() and isinstance(record, dict)):
                raise InputError(f"{manifest}: not an embedding manifest (shard {str(k)[:40]!r} is not a record)")
            done[int(k)] = ("", manifest, record)
    for path in (folder / DONE).glob("done_*.json"):
        m = re.fullmatch(r"done_(\d+)\.json", path.name)
        if m:
            done[int(m.group(1))] = (m.group(1), path, _read_json_record(path, "a done marker"))
    return done


def _metadata_file(folder: Path, key: str) -> Path:
    return folder / "metadata" / f"metadata_{key}.parquet"


def _metadata_rows(path: Path, column: str) -> int:
    """The row count of a metadata parquet (its footer only), or InputError naming it."""
    if not path.exists():
        raise InputError(f"{path}: missing (the metadata of a shard whose embeddings are there); if the embedding "
                         "job isn't running, rerun it")
    try:
        if not path.is_file():
            raise InputError(f"{path}: not a regular file")
        f = pq.ParquetFile(path)
        if column not in f.schema_arrow.names:
            raise InputError(f"{path}: no {column!r} column")
        return f.metadata.num_rows
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError, OverflowError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: not a readable parquet file ({str(e)[:200]})") from None


class _Shard(NamedTuple):
    key: str  # as in the file names: img_emb_{key}.npy, metadata_{key}.parquet
    path: Path  # the .npy
    emb: np.ndarray  # memory-mapped [rows, D]


def _check_sizes(folder: Path, record_file: Path, record: dict, paths: list[Path]) -> None:
    """Each of `paths` that the done record lists in its "files" ({"sub/name": bytes}, as embed_folder
    writes it) must be there with that size: done means the files are there and whole."""
    files = record.get("files")
    if not isinstance(files, dict):
        return  # a record without sizes (a format version 1 manifest's may lack them): rows are checked instead
    for path in paths:
        size = files.get(path.relative_to(folder).as_posix())
        if type(size) is not int:
            continue
        if not path.exists():
            raise InputError(f"{path}: missing, but {record_file} says the shard is done; the folder is incomplete: "
                             "rerun the embedding job to redo it")
        if path.stat().st_size != size:
            raise InputError(f"{path}: {path.stat().st_size} bytes, but {record_file} records {size}: not the file "
                             "the job wrote (cut or replaced); rerun the embedding job")


def _shards(folder: Path, space: str, dim: int | None = None) -> list[_Shard]:
    """The folder's shards of `space`, each checked (see the module docstring); `dim`: the queries'."""
    sub, column = _space(space)
    files = shard_files(folder, space)
    present = {int(key): key for key, _ in files}
    done = _done_records(folder)
    for k, (key, record_file, _) in sorted(done.items()):
        if k not in present:
            name = folder / sub / f"{sub}_{key}.npy" if key else f"{folder / sub}/{sub}_{k}.npy (shard {k})"
            raise InputError(f"{name}: missing, but {record_file} says the shard is done; the folder is incomplete: "
                             "rerun the embedding job to redo it")
    shards = []
    against = "the queries have" if dim is not None else f"{files[0][1].name} has"
    for key, path in files:
        meta = _metadata_file(folder, key)
        record = done.get(int(key))
        emb = _open_embeddings(path)
        dim = emb.shape[1] if dim is None else dim
        if emb.shape[1] != dim:
            raise InputError(f"{path}: embeddings of dimension {emb.shape[1]}, but {against} dimension {dim}")
        rows = record[2].get("rows") if record else None
        if type(rows) is int and rows != emb.shape[0]:
            raise InputError(f"{path}: {emb.shape[0]} rows, but {record[1]} says {rows}; the file is not the one "
                             "the job wrote: rerun the embedding job")
        meta_rows = _metadata_rows(meta, column)
        if meta_rows != emb.shape[0]:
            raise InputError(f"{meta}: {meta_rows} rows, but the shard's embeddings have {emb.shape[0]} "
                             f"({path.name}); the folder's files don't belong together")
        if record:  # last: a row count that differs says more than a size
            _check_sizes(folder, record[1], record[2], [path, meta])
        shards.append(_Shard(key, path, emb))
    return shards


def _metadata(folder: Path, key: str, rows: list[int]) -> list[dict]:
    """The metadata of `rows` of shard `key`, every column (its row count was checked by _shards)."""
    path = _metadata_file(folder, key)
    try:
        return pq.ParquetFile(path).read().take(rows).to_pylist()
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError, OverflowError, KeyError) as e:
        raise InputError(f"{path}: not a readable parquet file ({str(e)[:200]})") from None


def _source(folder: Path, key: str, metadata: dict) -> str | None:
    """The input shard a shard job's row came from (rows with a "key": tar or parquet samples), as its
    done marker records it; None for image files (their image_path is the source) or without a marker."""
    marker = folder / DONE / f"done_{key}.json"
    if "key" not in metadata or not marker.is_file():
        return None
    shard = _read_json_record(marker, "a done marker").get("shard")
    return shard if isinstance(shard, str) else None


def _queries(queries: np.ndarray) -> np.ndarray:
    """[Q, D] float32, normalized; InputError for a shape or values that can't be searched with."""
    q = np.atleast_2d(np.asarray(queries, np.float32))
    if q.ndim != 2 or q.shape[1] == 0:
        raise InputError(f"queries must be [Q, D] or [D], got shape {np.shape(queries)}")
    if not np.isfinite(q).all():
        raise InputError("queries hold NaN or inf: nothing can be ranked against them")
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


# --- exact search ------------------------------------------------------------------------------------


def _chunk_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of a 1-D score array's k best, plus every tie of the k-th (so ties can go to the earliest).
    A NaN score (a row holding NaN or inf) is never among them: it can't be ranked."""
    ok = np.flatnonzero(scores > -np.inf)  # False for NaN
    s = scores[ok]
    if len(s) <= k:
        return ok
    kth = s[np.argpartition(-s, k - 1)[:k]].min()
    return ok[s >= kth]


def _numpy_top_k(q: np.ndarray, chunk: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: (scores, rows) of a chunk's k best, plus every tie of the k-th."""
    chunk = chunk.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows: their scores are NaN, dropped below
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
    then the top-k of those). Chunks are padded to chunk_rows, so one program serves a whole folder.
    A NaN score counts as -inf (top_k would rank NaN first), so NaN rows are dropped as numpy drops them."""

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
            ok = (jnp.arange(self.rows)[None, :] < valid) & ~jnp.isnan(scores)
            return jax.lax.top_k(jnp.where(ok, scores, -jnp.inf), self.k)

        self.fn = jax.jit(top_k, in_shardings=(self.whole, self.split, None), out_shardings=self.whole)

    def __call__(self, q: np.ndarray, chunk: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """_numpy_top_k's call on the devices; k is the one fixed when compiled (self.k)."""
        del k
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
    work too). Ties go to the earlier row (on the devices: within the k best of each chunk). Rows holding
    NaN or inf are never returned (so a query may get fewer than k). The folder is checked first (see the
    module docstring): a missing, cut or mismatched file is an InputError naming it.
    device: score on this process's JAX devices (DeviceTopK) instead of numpy. Memory: one chunk of
    chunk_rows x D, plus k per query.
    """
    _space(space)
    if k < 1:
        raise InputError(f"k must be positive, got {k}")
    folder = Path(folder)
    q = _queries(queries)
    n_q, dim = q.shape
    shards = _shards(folder, space, dim)
    # Per query: the best (score, global row) so far; global row = offset of the shard + row in it.
    best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in range(n_q)]
    top_k = _device_top_k(chunk_rows, k) if device else _numpy_top_k
    total = 0
    for shard in shards:
        emb = shard.emb
        for lo in range(0, emb.shape[0], chunk_rows):
            chunk = np.asarray(emb[lo: lo + chunk_rows])  # stored dtype: float16 travels to the devices
            for i, (scores, cand) in enumerate(top_k(q, chunk, k)):
                s = np.concatenate([best[i][0], scores])
                ids = np.concatenate([best[i][1], total + lo + cand])
                order = np.lexsort((ids, -s))[:k]  # by score, then the earlier row
                best[i] = (s[order], ids[order])
        total += emb.shape[0]

    return _hits(folder, space, _offsets(shards), best)


def _offsets(shards: list[_Shard]) -> list[tuple[int, str, int]]:
    """(first global row, shard key, rows) of each shard."""
    offsets, total = [], 0
    for s in shards:
        offsets.append((total, s.key, s.emb.shape[0]))
        total += s.emb.shape[0]
    return offsets


def _hits(folder: Path, space: str, offsets: list[tuple[int, str, int]],
          best: list[tuple[np.ndarray, np.ndarray]]) -> list[list[Hit]]:
    """Per query, (scores, global rows) -> Hits with their metadata (only the hits' rows are read)."""
    starts = np.array([o[0] for o in offsets])
    _, column = _space(space)
    results = []
    for scores, ids in best:
        where = np.searchsorted(starts, ids, side="right") - 1
        located = [(offsets[w][1], int(i - offsets[w][0])) for w, i in zip(where, ids)]
        meta: dict[tuple[str, int], dict] = {}
        sources: dict[str, str | None] = {}
        for key in dict.fromkeys(s for s, _ in located):
            rows = [r for s, r in located if s == key]
            meta.update({(key, r): m for r, m in zip(rows, _metadata(folder, key, rows))})
            sources[key] = _source(folder, key, meta[key, rows[0]])
        results.append([Hit(float(s), int(key), r, str(meta[key, r][column]), meta[key, r], sources[key])
                         for s, (key, r) in zip(scores, located)])
    return results


# --- approximate search with faiss (optional: pip install clip-jax[index]) -----------------------------

INDEX = "{space}.index"  # in the embedding folder, beside img_emb/
RECORD = "{space}.index.json"  # what the index was built from, beside it
_RECORD_FORMAT = "clip_jax.index"


class StaleIndexError(InputError):
    """The index doesn't cover the folder as it is now (shards added, removed or rewritten since it was
    built), or has no record of what it covers: rerun `clip-jax index`."""


def _faiss():
    try:
        import faiss  # an optional dependency: imported only where an index is built or read
    except ImportError:
        raise MissingExtraError("clip-jax index needs faiss: pip install faiss-cpu (or 'clip-jax[index]')") from None
    return faiss


def _faiss_message(e: BaseException) -> str:
    """faiss's error on one line, without its C++ function signature and source location."""
    text = " ".join(str(e).split())
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    return re.sub(r"^Error: '.*?' failed: ", "", text)[:300]


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _coverage(folder: Path, shards: list[_Shard]) -> list[dict]:
    """Per shard, what a rebuilt index would differ by: its file, rows, bytes and done marker's digest."""
    out = []
    for s in shards:
        marker = folder / DONE / f"done_{s.key}.json"
        out.append({"file": s.path.relative_to(folder).as_posix(), "rows": int(s.emb.shape[0]),
                    "bytes": s.path.stat().st_size, "done_sha256": _sha256(marker) if marker.is_file() else None})
    return out


def build_index(folder: str | os.PathLike, space: str = "image", factory: str | None = None,
                train_rows: int = 262144) -> Path:
    """Write FOLDER/{space}.index: a faiss inner-product index over the folder's normalized rows, ids in
    shard order (what `search` counts), and FOLDER/{space}.index.json, what it covers (see the module
    docstring). factory: a faiss index_factory string; default "Flat" (exact) below 100k rows, else
    "IVF{4 sqrt(N)},Flat" trained on up to train_rows rows; one faiss refuses (or can't train or fill on
    these rows) is an InputError naming it. Shards are added one at a time, so memory holds one shard
    beside the index. Rows holding NaN or inf are indexed as zeros and counted in the record, and
    index_search never returns them (as exact search doesn't)."""
    faiss = _faiss()
    folder = Path(folder)
    shards = _shards(folder, space)
    n = sum(s.emb.shape[0] for s in shards)
    if n == 0:
        raise InputError(f"{folder}: its {space} shards hold no rows; nothing to index")
    dim = shards[0].emb.shape[1]
    if factory is None:
        factory = "Flat" if n < 100_000 else f"IVF{int(4 * np.sqrt(n))},Flat"

    nonfinite = 0

    def rows(emb):
        nonlocal nonfinite
        x = np.array(emb, np.float32)  # a copy: the memory-mapped rows are read-only
        bad = ~np.isfinite(x).all(axis=1)
        nonfinite += int(bad.sum())
        x[bad] = 0.0  # indexed as zeros; index_search never returns them (as exact search doesn't)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            sample: list[np.ndarray] = []
            for s in shards:
                if sum(map(len, sample)) >= train_rows:
                    break
                sample.append(rows(s.emb))
            index.train(np.concatenate(sample)[:train_rows])
            nonfinite = 0  # counted again as the rows are added
        for s in shards:
            index.add(rows(s.emb))
    except (RuntimeError, AssertionError, TypeError) as e:
        raise InputError(f"index factory {factory!r} on {n} rows of dimension {dim}: {_faiss_message(e)}") from None
    if index.ntotal != n:
        raise InputError(f"index factory {factory!r}: holds {index.ntotal} of the {n} rows added")

    out, record_path = folder / INDEX.format(space=space), folder / RECORD.format(space=space)
    record = {"format": _RECORD_FORMAT, "version": 1, "space": space, "factory": factory, "dim": int(dim),
              "rows": int(n), "nonfinite_rows": nonfinite, "shards": _coverage(folder, shards)}
    # The old record goes first: killed in between, the new index has no record (stale), never a wrong one.
    record_path.unlink(missing_ok=True)

    def write_index(tmp: str) -> None:
        faiss.write_index(index, tmp)
        record.update(index_bytes=os.path.getsize(tmp), index_sha256=_sha256(tmp))

    atomic_write(out, write_index)
    atomic_write(record_path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
    return out


def _stale(record_path: Path, record: dict, now: list[dict]) -> str | None:
    """Why `now` (the folder's _coverage) isn't what the record covers, or None."""
    then = {s["file"]: s for s in record["shards"]}  # entries checked by _read_record
    current = {s["file"]: s for s in now}
    added, removed = sorted(current.keys() - then.keys()), sorted(then.keys() - current.keys(), key=str)
    changed = sorted(f for f in current.keys() & then.keys() if current[f] != then[f])
    parts = [f"{what}: {', '.join(map(str, files[:3]))}{' ...' if len(files) > 3 else ''}"
             for what, files in (("added", added), ("removed", removed), ("rewritten", changed)) if files]
    if not parts:
        return None
    return (f"{record_path.with_suffix('')} was built from another state of the folder ({'; '.join(parts)}): "
            f"rerun `clip-jax index {record_path.parent}`")


def _read_record(folder: Path, space: str) -> dict:
    """The index's record, checked for the fields index_search uses; StaleIndexError if there is none."""
    path = folder / RECORD.format(space=space)
    if not path.exists():
        raise StaleIndexError(f"{folder / INDEX.format(space=space)}: no record of what it covers ({path.name}: "
                              f"built by an older clip-jax, or interrupted): rerun `clip-jax index {folder}`")
    record = _read_json_record(path, "an index record", _MANIFEST_MAX)
    ints = ("dim", "rows", "index_bytes", "nonfinite_rows")
    if (record.get("format") != _RECORD_FORMAT or not all(type(record.get(f)) is int for f in ints)
            or not isinstance(record.get("index_sha256"), str) or not isinstance(record.get("shards"), list)):
        raise InputError(f"{path}: not an index record (format, dim, rows, index size and digest, shards)")
    for shard in record["shards"]:
        if not (isinstance(shard, dict) and isinstance(shard.get("file"), str) and type(shard.get("rows")) is int
                and type(shard.get("bytes")) is int):
            raise InputError(f"{path}: not an index record (a shard entry without its file, rows and bytes)")
    return record


def _read_index(folder: Path, space: str, record: dict, dim: int):
    """The faiss index, once its bytes are those the record says were written (faiss reads no others)."""
    faiss = _faiss()
    path = folder / INDEX.format(space=space)
    if not path.is_file():
        raise InputError(f"{path}: missing or not a regular file; rerun `clip-jax index {folder}`")
    if path.stat().st_size != record["index_bytes"] or _sha256(path) != record["index_sha256"]:
        raise InputError(f"{path}: not the index its record ({RECORD.format(space=space)}) describes: corrupt or "
                         f"replaced; rerun `clip-jax index {folder}`")
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, AssertionError, MemoryError) as e:
        raise InputError(f"{path}: not a readable faiss index ({_faiss_message(e)})") from None
    if index.ntotal == 0:
        raise InputError(f"{path}: an empty index (0 vectors); rerun `clip-jax index {folder}`")
    if index.ntotal != record["rows"] or index.d != record["dim"]:
        raise InputError(f"{path}: {index.ntotal} vectors of dimension {index.d}, but its record says "
                         f"{record['rows']} of {record['dim']}; rerun `clip-jax index {folder}`")
    if index.d != dim:
        raise InputError(f"{path}: an index of dimension {index.d}, but the queries have dimension {dim} (another "
                         "model's?)")
    return index


def index_search(folder: str | os.PathLike, queries: np.ndarray, k: int = 10, space: str = "image",
                 nprobe: int = 16) -> list[list[Hit]]:
    """search() through FOLDER/{space}.index (build_index): approximate unless the index is Flat.

    Refuses, rather than answer from part of the folder: StaleIndexError when the folder's shards are not
    those the index was built from (a shard added, removed or rewritten: e.g. an index built while the
    embedding job was half done), or the index has no record of them; InputError for an index whose
    bytes aren't the ones written (corrupt, truncated, replaced), that is empty, or of another dimension
    than the queries. `clip-jax search` falls back to exact search on a StaleIndexError, with a warning."""
    _space(space)
    if k < 1:
        raise InputError(f"k must be positive, got {k}")
    _faiss()
    folder = Path(folder)
    q = _queries(queries)
    record = _read_record(folder, space)
    if record["dim"] != q.shape[1]:
        raise InputError(f"{folder / INDEX.format(space=space)}: an index of dimension {record['dim']}, but the "
                         f"queries have dimension {q.shape[1]} (another model's?)")
    shards = _shards(folder, space, q.shape[1])
    why = _stale(folder / RECORD.format(space=space), record, _coverage(folder, shards))
    if why:
        raise StaleIndexError(why)
    index = _read_index(folder, space, record, q.shape[1])
    if hasattr(index, "nprobe"):
        index.nprobe = nprobe
    else:
        try:
            _faiss().extract_index_ivf(index).nprobe = nprobe
        except RuntimeError:  # not an IVF index
            pass
    offsets = _offsets(shards)
    extra = max(record["nonfinite_rows"], 0)  # rows indexed as zeros: asked for, then dropped
    scores, ids = index.search(q, min(k + extra, index.ntotal))
    best = []
    for s, i in zip(scores, ids):
        keep = i >= 0
        if extra:
            keep &= np.array([_finite_row(shards, offsets, row) for row in i])
        best.append((s[keep][:k], i[keep][:k].astype(np.int64)))
    return _hits(folder, space, offsets, best)


def _finite_row(shards: list[_Shard], offsets: list[tuple[int, str, int]], row: int) -> bool:
    """Whether global row `row` holds only finite values (-1, faiss's "no result", counts as not)."""
    if row < 0:
        return False
    w = int(np.searchsorted([o[0] for o in offsets], row, side="right")) - 1
    return bool(np.isfinite(shards[w].emb[row - offsets[w][0]]).all())
