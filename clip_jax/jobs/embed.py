"""The embedding job behind `clip-jax embed`: images and/or captions -> an embedding folder in
clip-retrieval's layout (embed_folder.py: the files, done markers, resume and identity check).

    OUT/metadata/metadata_{k}.parquet    columns image_path and/or caption, row i = row i of the .npy files
    OUT/errors.tsv                       path <TAB> reason, for the files that could not be read (skipped)

Shard k holds input items [k * shard_size, (k + 1) * shard_size) minus the unreadable ones. Killed at any
point, a rerun redoes at most the shard in progress, and rewrites its files whole: no row is lost or
written twice. Tar and parquet shards go to embed_shards.py instead (one output shard per input shard).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
from jax.experimental import multihost_utils

from .. import parallel
from ..data.sources import IMAGE_EXTENSIONS, open_source, read_captions
from ..dtypes import EMBEDDING_DTYPES, FLOAT_DTYPES, one_of
from ..errors import InputError
from ..hub import load
from ..image import ImageError
from . import embed_shards
from .embed_folder import ERRORS, EmbeddingFolder, progress_bar

NOT_UTF8 = "file name is not valid UTF-8 (image_path is UTF-8 text); rename the file"


# --- the job -----------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a run did: items in the job, rows written (now and before), files skipped, shards.

    In a multi-process run, process 0's counts are the job's and the other processes' are 0; `own` is
    this process's part (shards: its shards; image files: the rows of each batch it read) and `process`
    its (index, count).
    """

    items: int
    rows: int
    skipped: int
    shards: int
    shards_done_now: int
    seconds: float
    errors: list = field(default_factory=list)
    own: Summary | None = None
    process: tuple[int, int] = (0, 1)

    def lines(self, output: str) -> list[str]:
        """What `clip-jax embed` prints: the job's line (process 0), and in a multi-process run each
        process's own line first."""
        index, count = self.process
        out = []
        if count > 1 and self.own is not None:
            o = self.own
            out.append(f"{output}: process {index} of {count}: {_n(o.rows, 'row')} of {_n(o.items, 'item')} in "
                       f"its {_n(o.shards, 'shard')}; {o.shards_done_now} done in this run, {o.seconds:.1f} s")
        if index == 0:
            skipped = f", {self.skipped} skipped (see {output.rstrip('/')}/{ERRORS})" if self.errors else ""
            total = "in all: " if count > 1 else ""
            out.append(f"{output}: {total}{_n(self.rows, 'row')} of {_n(self.items, 'item')} in "
                       f"{_n(self.shards, 'shard')}{skipped}; {_n(self.shards_done_now, 'shard')} done in this "
                       f"run, {self.seconds:.1f} s")
        return out


def _n(count: int, noun: str) -> str:
    """'1 shard', '2 shards'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _fingerprint(images: Sequence[str] | None, captions: Sequence[str] | None) -> str:
    h = hashlib.sha256()
    for name, items in (("images", images), ("captions", captions)):
        h.update(f"{name}:{'-' if items is None else len(items)}\n".encode())
        for s in items or ():
            h.update(s.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")  # a name that isn't UTF-8 comes from os.walk/argv as lone surrogates
        return True
    except UnicodeEncodeError:
        return False


class EmbedJob:
    """Image files and/or captions, cut into output shards of shard_size items, written to an EmbeddingFolder.

    The folder's identity holds a fingerprint of the inputs, their count and the shard size, so a rerun
    with other inputs cannot mix two jobs in one folder.
    """

    def __init__(self, output: str | os.PathLike, images: Sequence[str] | None, captions: Sequence[str] | None,
                 *, model: str, dtype: str, emb_dtype: str, shard_size: int):
        if images is None and captions is None:
            raise InputError("nothing to embed: give image inputs and/or --captions")
        if images is not None and captions is not None and len(images) != len(captions):
            raise InputError(
                f"{len(images)} images but {len(captions)} captions: with both, caption line i pairs with image i"
            )
        if shard_size < 1:
            raise InputError(f"shard size must be positive, got {shard_size}")
        self.images, self.captions = images, captions
        self.items = len(images if images is not None else captions)
        self.shard_size = shard_size
        self.num_shards = max(1, math.ceil(self.items / shard_size)) if self.items else 0
        inputs = {"inputs_sha256": _fingerprint(images, captions), "items": self.items, "shard_size": shard_size}
        self.folder = EmbeddingFolder(output, num_shards=self.num_shards, model=model, dtype=dtype, emb_dtype=emb_dtype,
                                      image=images is not None, text=captions is not None, inputs=inputs)
        self.done: dict[str, dict] = {}

    def open(self) -> None:
        """Lock and claim the folder (or refuse it), and load which shards are done and whole."""
        self.folder.open()
        try:
            self.done = self.folder.done_shards(range(self.num_shards), [self.name(k) for k in range(self.num_shards)])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.folder.close()

    def name(self, k: int) -> str:
        """What output shard k was made from, as its done marker records it."""
        lo, hi = self.bounds(k)
        return f"items [{lo}, {hi})"

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

    def write_shard(self, k: int, image_emb: np.ndarray | None, text_emb: np.ndarray | None, keep: np.ndarray,
                    errors: list[tuple[str, str]]) -> None:
        """image_emb, text_emb: [items in shard k, D] or None; keep: bool [items in shard k], False for the
        skipped rows (their image could not be read)."""
        lo, hi = self.bounds(k)
        columns = {}
        if self.images is not None:
            keep, errors = _drop_non_utf8(self.images[lo:hi], keep, errors)
            columns["image_path"] = [p for p, ok in zip(self.images[lo:hi], keep) if ok]
        if self.captions is not None:
            columns["caption"] = [c for c, ok in zip(self.captions[lo:hi], keep) if ok]
        metadata = pa.table({name: pa.array(v, pa.string()) for name, v in columns.items()})
        self.done[str(k)] = self.folder.write_shard(
            k, self.name(k), hi - lo, None if image_emb is None else image_emb[keep],
            None if text_emb is None else text_emb[keep], metadata, errors)

    def finish(self) -> None:
        """errors.tsv (path, reason) and the manifest, once every shard is done."""
        self.folder.finish(self.done, ("path", "reason"), self.errors(), complete=not self.todo())


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
    run = {"model": model, "dtype": dtype, "batch_size": batch_size, "num_threads": num_threads, "progress": progress,
           "model_parallel": model_parallel, "attention": attention, "truncate": truncate, "sharded": sharded}
    source = open_source(inputs, image_column=image_column, caption_column=caption_column,
                         image_paths=image_paths) if inputs else None
    if source is not None and source.kind != "files":
        if captions is not None:
            raise InputError("--captions pairs lines with image files; shards carry their own captions "
                             "(txt members, or --caption-column)")
        return _embed_shards(source, output, t0, emb_dtype=emb_dtype, text=text, **run,
                             columns={"image_column": image_column, "caption_column": caption_column})
    images, captions = _images_and_captions(source, captions)
    job = EmbedJob(output, images, captions, model=_model_id(model), dtype=dtype, emb_dtype=emb_dtype,
                   shard_size=shard_size)
    return _embed_files(job, t0, **run)


def _embed_files(job: EmbedJob, t0: float, *, model, dtype: str, batch_size: int, num_threads, progress: bool,
                 model_parallel: int, attention, truncate: bool, sharded) -> Summary:
    """embed() on image files and/or captions: every process decodes its part of each batch; process 0
    writes the folder."""
    writer = jax.process_index() == 0
    if writer:
        job.open()
    own = [0, 0]  # items this process read, and how many of them it could not
    try:
        todo = _agreed_todo(job, writer)
        if todo:
            sharded, preprocess = _sharded(sharded, model, dtype, attention, batch_size,
                                           parallel.make_mesh(model_parallel))
            if job.captions is not None and not truncate:  # fail now, not after the shards before a long caption
                _check_captions_fit(job.captions, sharded.family.tokenizer(sharded.config), job.shard_size)
            bar = progress_bar(job.items, job.items_done() if writer else 0,
                               "img" if job.images is not None else "text", progress and writer)
            try:
                for k in todo:
                    image_emb, text_emb, keep, errors = _embed_shard(job, k, sharded, preprocess, num_threads,
                                                                     truncate, bar, writer, own)
                    if writer:
                        job.write_shard(k, image_emb, text_emb, keep, errors)
            finally:
                bar.close()
        if writer:
            job.finish()
        seconds = time.perf_counter() - t0
        mine = Summary(own[0], own[0] - own[1], own[1], len(todo), len(todo), seconds)
        return _summary(job, len(todo), t0, mine)
    finally:
        job.close()


def _sharded(sharded, model, dtype: str, attention, batch_size: int, mesh):
    """The ShardedCLIP to embed with (`sharded` if given, else clip_jax.load(model) split over `mesh`)
    and its preprocess transform."""
    if sharded is None:
        return _load_sharded(model, dtype, attention, mesh, batch_size)
    return sharded, sharded.family.transform(sharded.config)  # the transform load() would give


def _check_job_args(model, dtype: str, emb_dtype: str) -> None:
    if model is None:
        raise InputError("no model: pass --model (a converted .safetensors or a PyTorch checkpoint)")
    if dtype not in FLOAT_DTYPES:
        raise InputError(f"dtype must be {one_of(FLOAT_DTYPES)}, got {dtype!r}")
    if emb_dtype not in EMBEDDING_DTYPES:
        raise InputError(f"embedding dtype must be {one_of(EMBEDDING_DTYPES)}, got {emb_dtype!r}")


def _images_and_captions(source, captions) -> tuple[list[str] | None, list[str] | None]:
    """The job's image paths (from a "files" source) and captions (a file's lines, or the strings given)."""
    images = None if source is None else [p for shard in source.shards for p in shard.paths]
    if images is not None and not images:
        raise InputError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the inputs")
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
                 writer: bool, own: list[int]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, list]:
    """Output shard k's rows -> (image embeddings [items, D] or None, caption embeddings [items, D] or
    None, keep: bool [items], False for an unreadable image, errors [(path, reason)]). Adds to `own` the
    items this process read, and those it could not."""
    lo, hi = job.bounds(k)
    own[0] += _own_items(sharded, hi - lo)
    keep = np.ones(hi - lo, bool)
    errors: list[tuple[str, str]] = []
    image_emb = text_emb = None
    if job.images is not None:
        feats = []
        for batch in sharded.embed_image_files(job.images[lo:hi], preprocess, num_threads=num_threads):
            feats.append(batch.features)
            keep[batch.start: batch.start + len(batch.ok)] = batch.ok
            errors += batch.errors
            own[1] += len(batch.errors)
            bar.update(len(batch.ok))
        image_emb = np.concatenate(feats)
        errors = _all_errors(job.images[lo:hi], keep, errors, preprocess) if writer else errors
    if job.captions is not None:
        # By default long captions are cut, as clip-retrieval does (not an error).
        tokens = sharded.family.tokenizer(sharded.config)(job.captions[lo:hi], truncate=truncate)
        text_emb = sharded.encode_text(tokens, normalized=True)
        if job.images is None:
            bar.update(hi - lo)
    return image_emb, text_emb, keep, errors


def _own_items(sharded, n: int) -> int:
    """How many of n global rows this process reads (its devices' rows of each padded batch)."""
    count = 0
    for start in range(0, n, sharded.batch_size):
        m = min(sharded.batch_size, n - start)
        local = sharded.local_rows(sharded.padded_rows(m))
        count += max(0, min(local.stop, m) - local.start)
    return count


def _summary(job: EmbedJob, done_now: int, t0: float, own: Summary) -> Summary:
    return Summary(job.items, job.rows_done(), len(job.errors()), job.num_shards, done_now,
                   time.perf_counter() - t0, job.errors(), own, (jax.process_index(), jax.process_count()))


def _model_id(model) -> str:
    return str(Path(model).resolve()) if Path(model).exists() else str(model)


def _embed_shards(source, output, t0: float, *, model, dtype: str, emb_dtype: str, text: bool, batch_size: int,
                  num_threads, progress: bool, model_parallel: int, attention, truncate: bool, sharded,
                  columns: dict) -> Summary:
    """embed() on tar or parquet shards: each process embeds its own shards on its own devices."""
    job = embed_shards.ShardJob(output, source, model=_model_id(model), dtype=dtype, emb_dtype=emb_dtype,
                                text=text, columns=columns)
    if jax.process_index() == 0:  # before the model is loaded: a wrong folder fails at once
        job.folder.open()
    try:
        if sharded is not None and any(d.process_index != jax.process_index() for d in sharded.mesh.devices.flat):
            raise InputError("embedding shards needs a ShardedCLIP on this process's own devices "
                             "(make_mesh(devices=jax.local_devices()))")
        sharded, preprocess = _sharded(sharded, model, dtype, attention, batch_size,
                                       parallel.make_mesh(model_parallel, devices=jax.local_devices()))
        shards, mine, done_now = embed_shards.run(job, sharded, preprocess, num_threads=num_threads,
                                                  truncate=truncate, progress=progress)
    finally:
        job.folder.close()
    seconds = time.perf_counter() - t0
    own = _shards_summary(mine, len(mine), done_now, seconds)
    return _shards_summary(shards or {}, job.num_shards, done_now, seconds, own)


def _shards_summary(shards: dict[str, dict], num_shards: int, done_now: int, seconds: float,
                    own: Summary | None = None) -> Summary:
    """A Summary of shard summaries {str(k): {"shard", "items", "rows", "errors"}}."""
    errors = [(shards[k]["shard"], key, reason) for k in sorted(shards, key=int) for key, reason in shards[k]["errors"]]
    items, rows = sum(s["items"] for s in shards.values()), sum(s["rows"] for s in shards.values())
    # errors.tsv also lists the fields dropped from kept samples: skipped counts the samples left out.
    return Summary(items, rows, items - rows, num_shards, done_now, seconds, errors, own,
                   (jax.process_index(), jax.process_count()))


def _check_captions_fit(captions: Sequence[str], tokenizer, chunk: int) -> None:
    for lo in range(0, len(captions), chunk):
        try:
            tokenizer(captions[lo: lo + chunk])
        except ValueError as e:
            raise InputError(f"captions (text 0 is line {lo + 1}): {e}") from None


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
