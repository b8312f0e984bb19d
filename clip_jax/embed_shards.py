"""`clip-jax embed` on WebDataset or parquet shards: one output shard per input shard, on any storage,
each process its own shards, no shared disk needed.

    OUT/img_emb/img_emb_{k}.npy          float16 [rows_k, embed_dim], L2-normalized; k = input shard k
    OUT/text_emb/text_emb_{k}.npy        the captions' embeddings, the same rows
    OUT/metadata/metadata_{k}.parquet    image_path (the sample key, as clip-retrieval), key, caption, and the
                                         sample's json fields as columns; row i = row i of the .npy files
    OUT/done/done_{k}.json               shard k is complete: its input URL, items, rows and errors
    OUT/errors.tsv                       shard <TAB> key <TAB> reason, for the samples skipped
    OUT/manifest.json                    the job, and every shard once all are done

Plan: input shard k belongs to process k % process_count, a function of the shard list alone, so every
host computes the same plan and reads only its own shards. Each process runs its own devices (a mesh of
jax.local_devices()): no collective runs between hosts while embedding, so hosts never wait on each
other's input.

Progress: a shard is done once done_{k}.json exists; it is written after the shard's data files, so a
process killed at any point leaves a shard either done or redone whole by the next run (every file is
replaced whole: an atomic rename locally, one object PUT on object storage). A rerun skips done shards.

End: each process hands its shards' summaries to process 0 through jax.distributed's key-value store;
process 0 writes errors.tsv and manifest.json, and every process returns after a barrier.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jax._src import distributed  # the key-value store of jax.distributed's client (no public name)

from .embed_folder import ERRORS, FORMAT, MANIFEST, progress_bar, tsv_field
from .fileio import atomic_write
from .image import Decoder
from .parallel import prefetch
from .sources import Source, is_url, url_to_fs
from .tokenizer import tokenize

FORMAT_VERSION = 2
DONE = "done"
_TIMEOUT_MS = 7 * 24 * 3600 * 1000  # waits for the other hosts: as long as a job may run
_runs = itertools.count()  # distinct key-value names for each job run in this process


# --- the destination ---------------------------------------------------------------------------------


class Destination:
    """An output folder: a local path (atomic renames) or an fsspec URL (one PUT per file)."""

    def __init__(self, root: str | os.PathLike):
        root = os.fspath(root)
        if root.startswith("file://"):
            root = root[len("file://"):]
        self.root = root.rstrip("/") or "/"
        self.local = not is_url(self.root)
        if not self.local:
            self.fs, self.path = url_to_fs(self.root)

    def __str__(self) -> str:
        return self.root

    def _remote(self, rel: str) -> str:
        return f"{self.path.rstrip('/')}/{rel}"

    def makedirs(self, *subs: str) -> None:
        for sub in subs:
            if self.local:
                (Path(self.root) / sub).mkdir(parents=True, exist_ok=True)
            else:
                self.fs.makedirs(self._remote(sub), exist_ok=True)

    def write(self, rel: str, data: bytes) -> None:
        if self.local:
            atomic_write(Path(self.root) / rel, lambda tmp: Path(tmp).write_bytes(data))
        else:
            self.fs.pipe_file(self._remote(rel), data)

    def read(self, rel: str) -> bytes | None:
        try:
            if self.local:
                return (Path(self.root) / rel).read_bytes()
            return self.fs.cat_file(self._remote(rel))
        except FileNotFoundError:
            return None

    def listdir(self, sub: str = "") -> list[str]:
        try:
            if self.local:
                return sorted(os.listdir(Path(self.root) / sub))
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._remote(sub), detail=False))
        except FileNotFoundError:
            return []


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return buf.getvalue()


def _parquet_bytes(columns: dict[str, list]) -> bytes:
    arrays = {}
    for name, values in columns.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowException, TypeError, ValueError):  # mixed types in a json field: keep it as JSON text
            arrays[name] = pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
        if pa.types.is_null(arrays[name].type):
            arrays[name] = arrays[name].cast(pa.string())
    buf = io.BytesIO()
    pq.write_table(pa.table(arrays), buf)
    return buf.getvalue()


def _metadata(samples: list[dict], keep: np.ndarray) -> dict[str, list]:
    """image_path (the key, as clip-retrieval names it), key, caption, then the json fields by first
    appearance; rows in input order, skipped samples left out."""
    rows = [s for s, ok in zip(samples, keep) if ok]
    columns: dict[str, list] = {"image_path": [s.get("image_path", s["key"]) for s in rows],
                                "key": [s["key"] for s in rows], "caption": [s["txt"] for s in rows]}
    fields = [f for f in dict.fromkeys(k for s in rows for k in (s["json"] or {})) if f not in columns]
    for f in fields:
        columns[f] = [(s["json"] or {}).get(f) for s in rows]
    return columns


# --- coordination ------------------------------------------------------------------------------------


def _client():
    if jax.process_count() == 1:
        return None
    return distributed.global_state.client


def _barrier(name: str) -> None:
    client = _client()
    if client is not None:
        client.wait_at_barrier(name, _TIMEOUT_MS)


def _gather_to_first(name: str, own: dict) -> dict | None:
    """Every process's `own` dict, merged, on process 0 (None elsewhere), through the key-value store."""
    client = _client()
    if client is None:
        return dict(own)
    client.key_value_set(f"{name}/{jax.process_index()}", json.dumps(own))
    if jax.process_index() != 0:
        return None
    merged = {}
    for p in range(jax.process_count()):
        merged.update(json.loads(client.blocking_key_value_get(f"{name}/{p}", _TIMEOUT_MS)))
    return merged


# --- the job -----------------------------------------------------------------------------------------


def plan(num_shards: int, process_index: int, process_count: int) -> list[int]:
    """The input shards this process embeds: k % process_count == process_index (round robin)."""
    return list(range(process_index, num_shards, process_count))


def _fingerprint(urls: Sequence[str]) -> str:
    h = hashlib.sha256()
    for u in urls:
        h.update(u.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


class ShardJob:
    """One output folder fed by the shards of a Source; see the module docstring."""

    def __init__(self, output: str | os.PathLike, source: Source, *, model: str, dtype: str, emb_dtype: str,
                 text: bool, columns: dict | None = None):
        self.dest = Destination(output)
        self.source = source
        self.urls = [s.url for s in source.shards]
        self.num_shards = len(self.urls)
        self.digits = int(math.log10(max(self.num_shards, 1))) + 1  # clip-retrieval's zero padding
        self.emb_dtype, self.text = emb_dtype, text
        self.identity = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "input_format": source.kind,
            "shards_sha256": _fingerprint(self.urls), "num_shards": self.num_shards, "model": model, "dtype": dtype,
            "emb_dtype": emb_dtype, "image": True, "text": text, **(columns or {}),
        }

    def key(self, k: int) -> str:
        return str(k).zfill(self.digits)

    def paths(self, k: int) -> dict[str, str]:
        key = self.key(k)
        out = {"image": f"img_emb/img_emb_{key}.npy", "metadata": f"metadata/metadata_{key}.parquet"}
        if self.text:
            out["text"] = f"text_emb/text_emb_{key}.npy"
        return out

    def check_folder(self) -> None:
        """Process 0, before any shard: refuse a folder holding something else, then claim it."""
        old = self.dest.read(MANIFEST)
        if old is not None:
            try:
                old = json.loads(old)
            except ValueError as e:
                raise ValueError(f"{self.dest}/{MANIFEST}: not a valid manifest ({e})") from None
            diff = [k for k in self.identity if not isinstance(old, dict) or old.get(k) != self.identity[k]]
            if diff:
                detail = ", ".join(f"{k}: {old.get(k)!r} there, {self.identity[k]!r} now" for k in diff[:4])
                raise ValueError(f"{self.dest} holds another embedding job ({detail}); use a new output folder")
            return
        if self.dest.listdir():
            raise ValueError(f"{self.dest}: folder is not empty and has no {MANIFEST}; use a new output folder")
        self.dest.makedirs("img_emb", "metadata", DONE, *(["text_emb"] if self.text else []))
        self.write_manifest({})

    def write_manifest(self, shards: dict) -> None:
        self.dest.write(MANIFEST, json.dumps({**self.identity, "shards": shards}, indent=1, sort_keys=True).encode())

    def done(self, k: int) -> dict | None:
        data = self.dest.read(f"{DONE}/done_{self.key(k)}.json")
        return None if data is None else json.loads(data)

    def write_shard(self, k: int, samples: list[dict], keep: np.ndarray, image_emb: np.ndarray,
                    text_emb: np.ndarray | None, errors: list[tuple[str, str]]) -> dict:
        paths = self.paths(k)
        self.dest.write(paths["image"], _npy_bytes(image_emb.astype(self.emb_dtype)))
        if self.text:
            self.dest.write(paths["text"], _npy_bytes(text_emb.astype(self.emb_dtype)))
        self.dest.write(paths["metadata"], _parquet_bytes(_metadata(samples, keep)))
        summary = {"shard": self.urls[k], "items": len(samples), "rows": int(keep.sum()),
                   "errors": [list(e) for e in errors]}
        self.dest.write(f"{DONE}/done_{self.key(k)}.json", json.dumps(summary, sort_keys=True).encode())
        return summary

    def finish(self, shards: dict) -> None:
        """Process 0, once every shard is done: errors.tsv, then the manifest (the last file written)."""
        lines = ["shard\tkey\treason"] + [f"{tsv_field(shards[k]['shard'])}\t{tsv_field(key)}\t{tsv_field(r)}"
                                          for k in sorted(shards, key=int) for key, r in shards[k]["errors"]]
        self.dest.write(ERRORS, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
        self.write_manifest(shards)


# --- decoding ----------------------------------------------------------------------------------------


NO_IMAGE = "no image in the sample (jpg, jpeg, png, webp, ...)"


def decoded_batches(shards: Iterable[tuple[int, Iterable[dict]]], decoder: Decoder, batch_size: int,
                    ahead: int) -> Iterator[tuple]:
    """shards: (k, samples) pairs -> per batch (k, samples, uint8 pixels [batch_size, n, n, 3] zero-padded,
    ok [len(samples)], errors [(key, reason)]), in order, then (k, None, None, None, None) once shard k
    has ended. A batch holds one shard's samples; decoding runs on `decoder` and goes on into the next
    shard while the devices work, at most `ahead` batches beyond the one returned (memory stays bounded)."""
    shape = tuple(decoder.transform.shape)
    pending: deque = deque()

    def start(k, batch):
        buf = np.zeros((batch_size,) + shape, np.uint8)
        sources = [s["image"] if s["image"] is not None else s.get("image_path") for s in batch]
        has = [i for i, source in enumerate(sources) if source is not None]
        futures = dict(zip(has, decoder.submit([sources[i] for i in has], [buf[i] for i in has])))
        pending.append((k, batch, buf, futures))

    def finish():
        k, batch, buf, futures = pending.popleft()
        if batch is None:
            return k, None, None, None, None
        ok, errors = np.zeros(len(batch), bool), []
        for i, sample in enumerate(batch):
            error = futures[i].result() if i in futures else NO_IMAGE
            if error is None:
                ok[i] = True
            else:
                errors.append((sample["key"], error if isinstance(error, str) else error.reason))
        return k, batch, buf, ok, errors

    for k, samples in shards:
        batch: list[dict] = []
        for sample in itertools.chain(samples, [None]):
            if sample is not None:
                batch.append(sample)
            if batch and (len(batch) == batch_size or sample is None):
                start(k, batch)
                batch = []
            while len(pending) > ahead:
                yield finish()
        pending.append((k, None, None, None))
    while pending:
        yield finish()


def run(job: ShardJob, sharded, transform, *, num_threads: int | None, truncate: bool, progress: bool):
    """Embed this process's unfinished shards; returns (merged shard summaries on process 0 else None,
    shards done in this run on this process). Process 0 must have called job.check_folder() first."""
    me, count = jax.process_index(), jax.process_count()
    run_id = f"clip_jax_embed/{job.identity['shards_sha256'][:16]}/{next(_runs)}"
    _barrier(f"{run_id}/start")  # process 0 has checked and claimed the folder

    mine = plan(job.num_shards, me, count)
    summaries = {str(k): s for k in mine if (s := job.done(k)) is not None}
    todo = [k for k in mine if str(k) not in summaries]
    dim = sharded.config.embed_dim

    def write(k, samples, feats, oks, errors):
        keep = np.concatenate(oks) if oks else np.zeros(0, bool)
        image_emb = np.concatenate(feats)[keep] if feats else np.zeros((0, dim), np.float32)
        text_emb = None
        if job.text:
            captions = [s["txt"] or "" for s, ok in zip(samples, keep) if ok]
            tokens = tokenize(captions, context_length=sharded.config.text.context_length, truncate=truncate)
            text_emb = sharded.encode_text(tokens, normalized=True) if captions else np.zeros((0, dim))
        return job.write_shard(k, samples, keep, image_emb, text_emb, errors)

    bar = progress_bar(None, 0, "img", progress and bool(todo))
    shards = ((k, iter(job.source.shards[k])) for k in todo)
    acc: dict[int, tuple[list, list, list, list]] = {}
    with Decoder(transform, num_threads) as decoder:
        try:
            # Shards are read and decoded in a background thread, ahead of the devices.
            for k, batch, pixels, ok, errs in prefetch(decoded_batches(shards, decoder, sharded.batch_size, 2), 2):
                samples, feats, oks, errors = acc.setdefault(k, ([], [], [], []))
                if batch is None:  # shard k has ended
                    summaries[str(k)] = write(k, *acc.pop(k))
                    continue
                feats.append(sharded.encode_image(pixels, normalized=True)[: len(batch)])
                samples += [{**s, "image": None} for s in batch]  # metadata only: the bytes can go
                oks.append(ok)
                errors += errs
                bar.update(len(batch))
        finally:
            bar.close()
    merged = _gather_to_first(f"{run_id}/shards", summaries)
    if merged is not None:
        missing = [k for k in range(job.num_shards) if str(k) not in merged]
        if missing:  # cannot happen unless a process ran another plan
            raise RuntimeError(f"shards {missing[:5]} were not embedded by any process")
        job.finish(merged)
    _barrier(f"{run_id}/end")
    return merged, len(todo)

