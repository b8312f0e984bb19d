"""The embedding job behind `clip-jax embed`: images and/or captions -> clip-retrieval's folder layout.

    OUT/img_emb/img_emb_{k}.npy          float16 [rows_k, embed_dim], L2-normalized (clip-retrieval's choice)
    OUT/text_emb/text_emb_{k}.npy        the same for captions
    OUT/metadata/metadata_{k}.parquet    columns image_path and/or caption, row i = row i of the .npy files
    OUT/errors.tsv                       path <TAB> reason, for the files that could not be read (skipped)
    OUT/manifest.json                    the job and the shards done: what a rerun resumes from

k is zero-padded to the same width as clip-retrieval's (int(log10(shards)) + 1), so a name sort is the
shard order, which is how clip-retrieval, autofaiss and embedding-reader read the folder.

Shard k holds input items [k * shard_size, (k + 1) * shard_size) minus the unreadable ones. Each file is
written atomically, and a shard counts as done only once the manifest (also written atomically) says so,
with the size of each of its files: a rerun redoes a shard whose files are missing or of another size.
Killed at any point, a rerun redoes at most the shard in progress, and rewrites its files whole: no row
is lost or written twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jax.experimental import multihost_utils

from .. import parallel
from ..data.sources import IMAGE_EXTENSIONS, collect_images, open_source, read_captions  # noqa: F401  (also embed's)
from ..dtypes import EMBEDDING_DTYPES, FLOAT_DTYPES, one_of
from ..fileio import atomic_write
from ..hub import load
from ..image import ImageError, transform_for
from ..tokenizer import tokenize
from . import embed_shards
from .embed_folder import (  # noqa: F401  (MANIFEST, ERRORS, FORMAT, read_manifest: also embed's names)
    ERRORS,
    FORMAT,
    MANIFEST,
    progress_bar,
    read_manifest,
    tsv_field,
)

LOCK = ".clip_jax_embed.lock"  # flock'ed by the running job; removed when it ends
NOT_UTF8 = "file name is not valid UTF-8 (image_path is UTF-8 text); rename the file"
FORMAT_VERSION = 1


# --- the job -----------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a run did: items in the job, rows written (now and before), files skipped, shards."""

    items: int
    rows: int
    skipped: int
    shards: int
    shards_done_now: int
    seconds: float
    errors: list = field(default_factory=list)


def _digits(num_shards: int) -> int:
    return int(math.log10(max(num_shards, 1))) + 1  # clip-retrieval's zero padding


def _fingerprint(images: Sequence[str] | None, captions: Sequence[str] | None) -> str:
    h = hashlib.sha256()
    for name, items in (("images", images), ("captions", captions)):
        h.update(f"{name}:{'-' if items is None else len(items)}\n".encode())
        for s in items or ():
            h.update(s.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _write_npy(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)

    def write(tmp):
        # np.save's bytes, written by f.write: np.save's own tofile() reports a full disk without errno.
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
            f.write(array.data)

    atomic_write(path, write)


def _write_parquet(path: Path, columns: dict[str, list[str]]) -> None:
    table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")  # a name that isn't UTF-8 comes from os.walk/argv as lone surrogates
        return True
    except UnicodeEncodeError:
        return False


class EmbedJob:
    """One output folder: its manifest, which shards are done, and writing a shard.

    The job's identity (the inputs, the model file, shard size, dtypes) is checked against an existing
    manifest, so a rerun with other inputs cannot mix two jobs in one folder.
    """

    def __init__(self, output: str | os.PathLike, images: Sequence[str] | None, captions: Sequence[str] | None,
                 *, model: str, dtype: str, emb_dtype: str, shard_size: int):
        if images is None and captions is None:
            raise ValueError("nothing to embed: give image inputs and/or --captions")
        if images is not None and captions is not None and len(images) != len(captions):
            raise ValueError(
                f"{len(images)} images but {len(captions)} captions: with both, caption line i pairs with image i"
            )
        if shard_size < 1:
            raise ValueError(f"shard size must be positive, got {shard_size}")
        self.out = Path(output)
        self.images, self.captions = images, captions
        self.items = len(images if images is not None else captions)
        self.shard_size = shard_size
        self.num_shards = max(1, math.ceil(self.items / shard_size)) if self.items else 0
        self.digits = _digits(self.num_shards)
        self.emb_dtype = emb_dtype
        self.identity = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "inputs_sha256": _fingerprint(images, captions),
            "items": self.items, "shard_size": shard_size, "num_shards": self.num_shards, "model": model,
            "dtype": dtype, "emb_dtype": emb_dtype, "image": images is not None, "text": captions is not None,
        }
        self.done: dict[str, dict] = {}
        self._lock_fd: int | None = None

    # -- the folder --

    def open(self) -> None:
        """Lock the folder, create it or check it holds this same job, and load what is done. A manifest
        with no shard done binds nothing (its run failed before writing any): this job replaces it."""
        self._lock()
        try:
            self._check_folder()
            for sub in ["metadata"] + (["img_emb"] if self.images is not None else []) + (
                    ["text_emb"] if self.captions is not None else []):
                (self.out / sub).mkdir(parents=True, exist_ok=True)
            self._commit()
        except BaseException:
            self.close()
            raise

    def _check_folder(self) -> None:
        manifest = self.out / MANIFEST
        if manifest.exists() or manifest.is_symlink():
            old = read_manifest(manifest)
            diff = [k for k in self.identity if old.get(k) != self.identity[k]]
            if diff and old.get("shards"):
                detail = ", ".join(f"{k}: {old.get(k)!r} there, {self.identity[k]!r} now" for k in diff)
                raise ValueError(f"{self.out} holds another embedding job ({detail}); use a new output folder")
            if diff:
                self._remove_uncommitted()
            else:
                self.done = {k: v for k, v in old.get("shards", {}).items() if self._files_whole(int(k), v)}
        elif any(p.name != LOCK for p in self.out.iterdir()):
            raise ValueError(f"{self.out}: folder is not empty and has no {MANIFEST}; use a new output folder")

    def close(self) -> None:
        """Release the folder's lock (a killed process releases it too: the kernel drops flock locks)."""
        if self._lock_fd is not None:
            (self.out / LOCK).unlink(missing_ok=True)  # while still holding it; see _lock
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock(self) -> None:
        """Take OUT/.clip_jax_embed.lock, or refuse: two jobs writing one folder would mix their shards."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # The holder unlinks the file before releasing it: a lock on an unlinked file is no lock.
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    self._lock_fd = fd
                    return
            except BlockingIOError:
                os.close(fd)
                raise ValueError(f"{self.out}: another clip-jax embed is writing to this folder ({path} is "
                                 "locked); wait for it to end or use another output folder") from None
            except FileNotFoundError:
                pass
            os.close(fd)

    def _remove_uncommitted(self) -> None:
        """Data files no manifest counts (a shard in progress when its run failed)."""
        for sub, pattern in (("img_emb", "img_emb_*.npy"), ("text_emb", "text_emb_*.npy"),
                             ("metadata", "metadata_*.parquet")):
            for p in (self.out / sub).glob(pattern):
                p.unlink()

    def paths(self, k: int) -> dict[str, Path]:
        key = str(k).zfill(self.digits)
        out = {"metadata": self.out / "metadata" / f"metadata_{key}.parquet"}
        if self.images is not None:
            out["image"] = self.out / "img_emb" / f"img_emb_{key}.npy"
        if self.captions is not None:
            out["text"] = self.out / "text_emb" / f"text_emb_{key}.npy"
        return out

    def _files_whole(self, k: int, shard: dict) -> bool:
        """Done means whole: each of the shard's files there with the size the manifest records (an entry
        without sizes, or a file missing or of another size, is warned about and the shard redone)."""
        files = shard.get("files")
        want = {p.relative_to(self.out).as_posix(): p for p in self.paths(k).values()}
        if not isinstance(files, dict) or sorted(files) != sorted(want):
            problem = "the manifest does not record its files' sizes"
        else:
            sizes = {rel: p.stat().st_size if p.is_file() else None for rel, p in want.items()}
            problem = next((f"{rel} is missing" if sizes[rel] is None else f"{rel} has {sizes[rel]} bytes, not "
                            f"{files[rel]}" for rel in want if sizes[rel] != files[rel]), None)
        if problem is not None:
            print(f"warning: {self.out / MANIFEST}: shard {k}: {problem}; it is embedded again", file=sys.stderr)
        return problem is None

    def todo(self) -> list[int]:
        return [k for k in range(self.num_shards) if str(k) not in self.done]

    def rows_done(self) -> int:
        return sum(s["rows"] for s in self.done.values())

    def items_done(self) -> int:
        return sum(s["items"] for s in self.done.values())

    def errors(self) -> list[tuple[str, str]]:
        return [tuple(e) for k in sorted(self.done, key=int) for e in self.done[k]["errors"]]

    def bounds(self, k: int) -> tuple[int, int]:
        return k * self.shard_size, min((k + 1) * self.shard_size, self.items)

    # -- writing --

    def write_shard(self, k: int, image_emb: np.ndarray | None, text_emb: np.ndarray | None, keep: np.ndarray,
                    errors: list[tuple[str, str]]) -> None:
        """keep: bool [items in shard k], False for the skipped rows (their image could not be read)."""
        lo, hi = self.bounds(k)
        paths = self.paths(k)
        columns = {}
        if self.images is not None:
            keep, errors = _drop_non_utf8(self.images[lo:hi], keep, errors)
            _write_npy(paths["image"], image_emb[keep].astype(self.emb_dtype))
            columns["image_path"] = [p for p, ok in zip(self.images[lo:hi], keep) if ok]
        if self.captions is not None:
            _write_npy(paths["text"], text_emb[keep].astype(self.emb_dtype))
            columns["caption"] = [c for c, ok in zip(self.captions[lo:hi], keep) if ok]
        _write_parquet(paths["metadata"], columns)
        files = {p.relative_to(self.out).as_posix(): p.stat().st_size for p in paths.values()}
        self.done[str(k)] = {"items": hi - lo, "rows": int(keep.sum()), "errors": [list(e) for e in errors],
                             "files": files}
        self._commit()

    def _commit(self) -> None:
        # The error list first: the manifest is the commit point, and errors.tsv is derived from it.
        lines = ["path\treason"] + [f"{tsv_field(p)}\t{tsv_field(r)}" for p, r in self.errors()]
        data = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")  # a file name's own bytes
        atomic_write(self.out / ERRORS, lambda tmp: Path(tmp).write_bytes(data))
        _write_json(self.out / MANIFEST, {**self.identity, "shards": self.done})


def _drop_non_utf8(paths: Sequence[str], keep: np.ndarray, errors: list) -> tuple[np.ndarray, list]:
    """Skip the rows whose file name parquet can't store (into errors.tsv), not the whole shard."""
    bad = [i for i in np.flatnonzero(keep) if not _is_utf8(paths[i])]
    if not bad:
        return keep, errors
    keep = keep.copy()
    keep[bad] = False
    return keep, errors + [(paths[i], NOT_UTF8) for i in bad]


def embed(
    inputs: Sequence[str | os.PathLike] = (),
    output: str | os.PathLike = "embeddings",
    model: str | os.PathLike | None = None,
    *,
    captions: str | os.PathLike | Sequence[str] | None = None,
    batch_size: int = 256,
    dtype: str = "float32",
    emb_dtype: str = "float16",
    shard_size: int = 100_000,
    num_threads: int | None = None,
    model_parallel: int = 1,
    attention: str | None = None,
    progress: bool = True,
    truncate: bool = True,
    sharded=None,
    image_column: str | None = None,
    caption_column: str | None = None,
    text: bool = True,
    image_paths: bool = False,
) -> Summary:
    """Embed image files and/or captions into `output`, resuming a run that was stopped.

    inputs: folders (recursive), .txt lists of image paths, globs, image files (see collect_images);
      or WebDataset .tar shards / parquet files, local or fsspec URLs, with brace patterns
      ("data/{00000..00127}.tar"): then see clip_jax.jobs.embed_shards (one output shard per input shard,
      each process its own shards, `output` may be an fsspec URL). image_column, caption_column: the
      parquet columns (default: image/jpg/img, caption/text/txt). text: also embed the shards' captions.
      image_paths: the parquet image column holds paths of files on this machine, read from here; by
      default only image bytes are read, and a string in the column is an error for that row.
    captions: a text file (one caption a line) or a list of strings. With images too, caption i pairs
      with image i (same row of metadata_k), and a row whose image cannot be read is dropped from both.
    model: anything clip_jax.load takes. dtype: compute dtype (float32, float16, bfloat16).
    attention: "xla", "cudnn" (NVIDIA GPUs, 16-bit dtype) or None, as clip_jax.load.
    emb_dtype: stored embeddings, float16 (clip-retrieval's) or float32.
    shard_size: rows per output file; also the unit of resumption.
    truncate: cut captions longer than the model's context (clip-retrieval does); False: refuse them,
      before any shard is embedded.
    sharded: a parallel.ShardedCLIP of `model` to use instead of loading it (reuses its compiled programs
      across calls; `model` still names the job in the manifest).
    In a multi-process run (after parallel.initialize) every process calls this with the same
    arguments; each decodes its own rows and process 0 writes the files.
    """
    _check_job_args(model, dtype, emb_dtype)
    t0 = time.perf_counter()
    source = open_source(inputs, image_column=image_column, caption_column=caption_column,
                         image_paths=image_paths) if inputs else None
    if source is not None and source.kind != "files":
        if captions is not None:
            raise ValueError("--captions pairs lines with image files; shards carry their own captions "
                             "(txt members, or --caption-column)")
        return _embed_shards(source, output, model, t0, dtype=dtype, emb_dtype=emb_dtype, text=text,
                             batch_size=batch_size, num_threads=num_threads, model_parallel=model_parallel,
                             attention=attention, progress=progress, truncate=truncate, sharded=sharded,
                             columns={"image_column": image_column, "caption_column": caption_column})
    images, captions = _images_and_captions(source, captions)
    job = EmbedJob(output, images, captions, model=_model_id(model), dtype=dtype, emb_dtype=emb_dtype,
                   shard_size=shard_size)
    writer = jax.process_index() == 0
    if writer:
        job.open()
    try:
        todo = _agreed_todo(job, writer)
        if not todo:
            return _summary(job, 0, t0)
        if sharded is None:
            sharded, preprocess = _load_sharded(model, dtype, attention, parallel.make_mesh(model_parallel),
                                                batch_size)
        else:
            preprocess = transform_for(sharded.config)  # the transform load() would give
        if captions is not None and not truncate:  # fail now, not after the shards before a long caption
            _check_captions_fit(captions, sharded.config.text.context_length, shard_size)
        bar = progress_bar(job.items, job.items_done() if writer else 0, "img" if images is not None else "text",
                           progress and writer)
        try:
            for k in todo:
                image_emb, text_emb, keep, errors = _embed_shard(job, k, sharded, preprocess, num_threads, truncate,
                                                                 bar, writer)
                if writer:
                    job.write_shard(k, image_emb, text_emb, keep, errors)
        finally:
            bar.close()
        return _summary(job, len(todo), t0)
    finally:
        job.close()


def _check_job_args(model, dtype: str, emb_dtype: str) -> None:
    if model is None:
        raise ValueError("no model: pass --model (a converted .safetensors or a PyTorch checkpoint)")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be {one_of(FLOAT_DTYPES)}, got {dtype!r}")
    if emb_dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding dtype must be {one_of(EMBEDDING_DTYPES)}, got {emb_dtype!r}")


def _images_and_captions(source, captions) -> tuple[list[str] | None, list[str] | None]:
    """The job's image paths (from a "files" source) and captions (a file's lines, or the strings given)."""
    images = None if source is None else [p for shard in source.shards for p in shard.paths]
    if images is not None and not images:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the inputs")
    if isinstance(captions, (str, os.PathLike)):
        captions = read_captions(captions)
    elif captions is not None:
        captions = list(captions)
    return images, captions


def _agreed_todo(job: EmbedJob, writer: bool) -> list[int]:
    """The shards to embed: process 0's list (only it reads the folder), which every process then runs
    in step."""
    todo = job.todo() if writer else []
    if jax.process_count() > 1:
        flags = np.zeros(job.num_shards, np.int32)
        flags[todo] = 1
        todo = [int(k) for k in np.flatnonzero(multihost_utils.broadcast_one_to_all(flags))]
    return todo


def _load_sharded(model, dtype: str, attention, mesh, batch_size: int):
    """clip_jax.load(model) split over `mesh` -> (ShardedCLIP, its preprocess transform)."""
    clip, preprocess = load(model, dtype=jnp.dtype(dtype), attention=attention)
    return parallel.ShardedCLIP(clip, mesh, batch_size=batch_size), preprocess


def _embed_shard(job: EmbedJob, k: int, sharded, preprocess, num_threads, truncate: bool, bar,
                 writer: bool) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, list]:
    """Output shard k's rows -> (image embeddings [items, D] or None, caption embeddings [items, D] or
    None, keep: bool [items], False for an unreadable image, errors [(path, reason)])."""
    lo, hi = job.bounds(k)
    keep = np.ones(hi - lo, bool)
    errors: list[tuple[str, str]] = []
    image_emb = text_emb = None
    if job.images is not None:
        feats = []
        for batch in sharded.embed_image_files(job.images[lo:hi], preprocess, num_threads=num_threads):
            feats.append(batch.features)
            keep[batch.start: batch.start + len(batch.ok)] = batch.ok
            errors += batch.errors
            bar.update(len(batch.ok))
        image_emb = np.concatenate(feats)
        errors = _all_errors(job.images[lo:hi], keep, errors, preprocess) if writer else errors
    if job.captions is not None:
        # By default long captions are cut, as clip-retrieval does (not an error).
        tokens = tokenize(job.captions[lo:hi], context_length=sharded.config.text.context_length, truncate=truncate)
        text_emb = sharded.encode_text(tokens, normalized=True)
        if job.images is None:
            bar.update(hi - lo)
    return image_emb, text_emb, keep, errors


def _summary(job: EmbedJob, done_now: int, t0: float) -> Summary:
    return Summary(job.items, job.rows_done(), len(job.errors()), job.num_shards, done_now,
                   time.perf_counter() - t0, job.errors())


def _model_id(model) -> str:
    return str(Path(model).resolve()) if Path(model).exists() else str(model)


def _embed_shards(source, output, model, t0: float, *, dtype: str, emb_dtype: str, text: bool, batch_size: int,
                  num_threads, model_parallel: int, attention, progress: bool, truncate: bool, sharded,
                  columns: dict) -> Summary:
    """embed() on tar or parquet shards: each process embeds its own shards on its own devices."""
    job = embed_shards.ShardJob(output, source, model=_model_id(model), dtype=dtype, emb_dtype=emb_dtype,
                                text=text, columns=columns)
    if jax.process_index() == 0:  # before the model is loaded: a wrong folder fails at once
        job.check_folder()
    if sharded is None:
        mesh = parallel.make_mesh(model_parallel, devices=jax.local_devices())
        sharded, preprocess = _load_sharded(model, dtype, attention, mesh, batch_size)
    else:
        if any(d.process_index != jax.process_index() for d in sharded.mesh.devices.flat):
            raise ValueError("embedding shards needs a ShardedCLIP on this process's own devices "
                             "(make_mesh(devices=jax.local_devices()))")
        preprocess = transform_for(sharded.config)
    shards, done_now = embed_shards.run(job, sharded, preprocess, num_threads=num_threads, truncate=truncate,
                                        progress=progress)
    shards = shards or {}
    errors = [(shards[k]["shard"], key, reason) for k in sorted(shards, key=int) for key, reason in shards[k]["errors"]]
    items, rows = sum(s["items"] for s in shards.values()), sum(s["rows"] for s in shards.values())
    # errors.tsv also lists the fields dropped from kept samples: skipped counts the samples left out.
    return Summary(items, rows, items - rows, job.num_shards, done_now, time.perf_counter() - t0, errors)


def _check_captions_fit(captions: Sequence[str], context_length: int, chunk: int) -> None:
    for lo in range(0, len(captions), chunk):
        try:
            tokenize(captions[lo: lo + chunk], context_length=context_length)
        except ValueError as e:
            raise ValueError(f"captions (text 0 is line {lo + 1}): {e}") from None


def _all_errors(paths: Sequence[str], keep: np.ndarray, local: list[tuple[str, str]], transform) -> list:
    """Every skipped row of a shard with its reason. In a multi-process run another process decoded some
    of them: their reason is found by trying the file again here (bad files are few)."""
    known = {p: r for p, r in local}
    out = []
    for i in np.flatnonzero(~keep):
        path = os.fspath(paths[i])
        if path not in known:
            try:
                transform.pixels(path)
                known[path] = "could not be read by another process"
            except ImageError as e:
                known[path] = e.reason
        out.append((path, known[path]))
    return out
