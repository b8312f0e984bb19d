"""`clip-jax embed` on WebDataset or parquet shards: one output shard per input shard, on any storage,
each process its own shards, no shared disk needed. The output is an embedding folder (embed_folder.py:
its layout, done markers, resume and identity check), with these columns:

    OUT/metadata/metadata_{k}.parquet    image_path (the sample key, as clip-retrieval), key, caption, and the
                                         sample's json fields as columns (see _metadata); k = input shard k
    OUT/errors.tsv                       shard <TAB> key <TAB> reason: the samples skipped, the fields dropped
                                         from kept samples, and the shards that could not be read

Plan: input shard k belongs to process k % process_count, a function of the shard list alone, so every
host computes the same plan and reads only its own shards. Each process runs its own devices (a mesh of
jax.local_devices()): no collective runs between hosts while embedding, so hosts never wait on each
other's input.

Hostile input: a sample the reader marks unusable ("__error__", see clip_jax.data.sources) or whose image
can't be decoded is skipped; a field it dropped ("__field_errors__") is logged and the sample kept; both
go to errors.tsv. A shard that can't be opened or is cut short fails alone: the other shards are
finished and marked done, the failed ones are not (nothing is marked done over lost samples), and the
job ends with an error naming them; a rerun retries them.

End: each process hands its shards' summaries to process 0 (jax.experimental.multihost_utils'
process_allgather); process 0 writes errors.tsv and manifest.json, and every process returns after a
barrier (sync_global_devices).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np
import pyarrow as pa
from jax.experimental import multihost_utils

from ..data.sources import Source
from ..errors import ClipJaxError, InputError, ShardError
from ..image import Decoder
from ..parallel import prefetch
from .embed_folder import ERRORS, EmbeddingFolder, progress_bar

# The metadata's json fields. Each field gets a column while a shard has at most MAX_COLUMNS distinct
# fields; past that (web data with a key per sample), only the fields present in at least half the rows
# do, and the rest of each row goes to one JSON text column, OTHER. Only the first _TRACKED distinct
# field names are counted, so memory and time stay linear in the shard's bytes, whatever its keys.
MAX_COLUMNS = 256
MAX_DEPTH = 64  # json values nested deeper are not stored (the readers drop such a .json already)
_TRACKED = 4096
BASE_COLUMNS = ("image_path", "key", "caption")
OTHER = "json_other"
_ARROW_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError, RecursionError)


def _utf8(value) -> str:
    """`value` as text parquet can store: lone surrogates (a name that was not UTF-8) as backslash escapes."""
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _text_column(values: list) -> pa.Array:
    try:
        return pa.array(values, pa.string())
    except _ARROW_ERRORS:  # one bad value changes that value only
        return pa.array([None if v is None else _utf8(v) for v in values], pa.string())


def _writable(t: pa.DataType) -> bool:
    """parquet can't store a struct without fields ({} in JSON). Iterative: a type may be deep."""
    stack = [t]
    while stack:
        t = stack.pop()
        if pa.types.is_struct(t):
            if t.num_fields == 0:
                return False
            stack += [t.field(i).type for i in range(t.num_fields)]
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            stack.append(t.value_type)
    return True


def _too_deep(value) -> bool:
    """Nested deeper than MAX_DEPTH (pyarrow's conversion recurses in C++: deep enough, it crashes)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is not None:
            if depth >= MAX_DEPTH:
                return True
            stack += [(c, depth + 1) for c in children]
    return False


def _shallow(fields, key: str, errors: list[tuple[str, str]]) -> dict | None:
    """A sample's json object without the fields nested past MAX_DEPTH (each logged), or None if not an object."""
    if not isinstance(fields, dict):
        return None
    deep = [f for f, v in fields.items() if isinstance(v, (dict, list)) and _too_deep(v)]
    for f in deep:
        errors.append((key, f"json: field {_utf8(f)!r} nested deeper than {MAX_DEPTH} levels, not stored"))
    return {f: v for f, v in fields.items() if f not in deep} if deep else fields


def _kind(value):
    """The column type `value` would need (values of one kind share a column), or None if it fits none."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "number" if -2**63 <= value < 2**63 else None  # past int64: pyarrow's OverflowError
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes):
        return "binary"
    if isinstance(value, (dict, list)):
        try:
            t = pa.array([value]).type
        except _ARROW_ERRORS:
            return None
        return t if _writable(t) else None
    return None


def _json_column(values: list) -> tuple[pa.Array | None, list[int]]:
    """A json field's values as one column (None if no value fits one), and the rows whose value is left
    out of it (they go to the row's OTHER text instead): a value that doesn't fit the column's type
    changes alone, not the column."""
    try:
        array = pa.array(values)
        if _writable(array.type):
            return (array.cast(pa.string()) if pa.types.is_null(array.type) else array), []
    except _ARROW_ERRORS:
        pass
    values = [_utf8(v) if isinstance(v, str) else v for v in values]
    kinds = [None if v is None else _kind(v) for v in values]
    counts: dict = {}
    for kind in kinds:
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
    if counts:
        main = max(counts, key=counts.get)  # the most common kind; ties to the first seen
        kept = [v if kind == main else None for v, kind in zip(values, kinds)]
        try:
            array = pa.array(kept, main if isinstance(main, pa.DataType) else None)
            if _writable(array.type):
                return array, [i for i, v in enumerate(values) if v is not None and kinds[i] != main]
        except _ARROW_ERRORS:
            pass
    return None, [i for i, v in enumerate(values) if v is not None]


def _json_fields(jsons: list[dict | None]) -> list[str]:
    """The json fields that get a column, in order of first appearance (see MAX_COLUMNS)."""
    counts: dict[str, int] = {}
    overflow = False
    for fields in jsons:
        for name in fields or ():
            if name in counts:
                counts[name] += 1
            elif len(counts) < _TRACKED:
                counts[name] = 1
            else:
                overflow = True
    names = [f for f in counts if isinstance(f, str) and f not in BASE_COLUMNS and f != OTHER and _utf8(f) == f]
    if not overflow and len(names) <= MAX_COLUMNS:
        return names
    need = (len(jsons) + 1) // 2
    return [f for f in names if counts[f] >= need][:MAX_COLUMNS]


def _json_text(fields: dict, key: str, errors: list[tuple[str, str]]) -> str:
    """A row's remaining json fields as one JSON object (text); a value JSON can't hold is logged and left out."""
    try:
        text = json.dumps(fields, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        fields = dict(fields)
        for name in list(fields):
            try:
                json.dumps(fields[name])
            except (TypeError, ValueError, RecursionError) as e:
                errors.append((key, f"json: field {_utf8(name)!r} not stored in the metadata ({type(e).__name__})"))
                del fields[name]
        text = json.dumps(fields, ensure_ascii=False)
    return text if _utf8(text) == text else json.dumps(fields)  # ASCII escapes for lone surrogates


def _metadata(samples: list[dict], keep: np.ndarray, errors: list[tuple[str, str]] | None = None) -> pa.Table:
    """image_path (the key, as clip-retrieval names it), key, caption, then the json fields (see
    MAX_COLUMNS), then OTHER if any row has fields left over; rows in input order, skipped samples left
    out. A value that doesn't fit its column moves to its row's OTHER text; a string that isn't UTF-8
    gets backslash escapes. What can't be stored at all is appended to `errors` as (key, reason)."""
    errors = [] if errors is None else errors
    rows = [s for s, ok in zip(samples, keep) if ok]
    keys = [s["key"] for s in rows]
    jsons = [_shallow(s.get("json"), _utf8(s["key"]), errors) for s in rows]
    columns = {"image_path": _text_column([s.get("image_path", s["key"]) for s in rows]),
               "key": _text_column(keys),
               "caption": _text_column([s.get("txt") if isinstance(s.get("txt"), str) else None for s in rows])}
    fields = _json_fields(jsons)
    moved: dict[int, dict] = {}  # row -> the values that didn't fit their column
    for f in fields:
        array, out = _json_column([j.get(f) if j else None for j in jsons])
        if array is not None:
            columns[f] = array
        for i in out:
            moved.setdefault(i, {})[f] = jsons[i][f]
    chosen = set(fields)
    other = []
    for i, j in enumerate(jsons):
        extra = moved.get(i, ())
        rest = {k: v for k, v in j.items() if k not in chosen or k in extra} if j else None
        other.append(_json_text(rest, _utf8(keys[i]), errors) if rest else None)
    if any(t is not None for t in other):
        columns[OTHER] = pa.array(other, pa.string())
    return pa.table(columns)


# --- coordination ------------------------------------------------------------------------------------


def _barrier(name: str) -> None:
    """Every process waits here until all have come (a no-op in a one-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _gather_to_first(own: dict) -> dict | None:
    """Every process's `own` dict (JSON), merged, on process 0 (None elsewhere). Collectives need equal
    shapes: the lengths go first, then each process's bytes padded to the longest."""
    if jax.process_count() == 1:
        return dict(own)
    data = np.frombuffer(json.dumps(own).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([data.size], np.int64))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    blobs = multihost_utils.process_allgather(padded)
    if jax.process_index() != 0:
        return None
    merged = {}
    for blob, n in zip(blobs, lengths.reshape(-1)):
        merged.update(json.loads(blob[: int(n)].tobytes()))
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
    """The shards of a Source, embedded into an EmbeddingFolder; see the module docstring."""

    def __init__(self, output: str | os.PathLike, source: Source, *, model: str, dtype: str, emb_dtype: str,
                 text: bool, columns: dict | None = None):
        self.source = source
        self.urls = [s.url for s in source.shards]
        self.num_shards = len(self.urls)
        self.text = text
        self.folder = EmbeddingFolder(output, num_shards=self.num_shards, model=model, dtype=dtype,
                                      emb_dtype=emb_dtype, image=True, text=text,
                                      inputs={"input_format": source.kind, "inputs_sha256": _fingerprint(self.urls),
                                              **(columns or {})})

    def done_shards(self, ks: Sequence[int]) -> dict[str, dict]:
        return self.folder.done_shards(ks, self.urls)

    def write_shard(self, k: int, samples: list[dict], keep: np.ndarray, image_emb: np.ndarray,
                    text_emb: np.ndarray | None, errors: list[tuple[str, str]]) -> dict:
        """Input shard k's rows (keep: bool [len(samples)]), into output shard k; -> its summary."""
        errors = list(errors)
        metadata = _metadata(samples, keep, errors)  # appends what it can't store to errors
        return self.folder.write_shard(k, self.urls[k], len(samples), image_emb, text_emb, metadata, errors)

    def finish(self, shards: dict, failed: dict[str, str] | None = None) -> None:
        """Process 0, once every shard has run: errors.tsv (the samples skipped, the fields dropped, the
        shards that failed), and the manifest if none failed."""
        rows = [(shards[k]["shard"], key, r) for k in sorted(shards, key=int) for key, r in shards[k]["errors"]]
        rows += [(self.urls[int(k)], "", failed[k]) for k in sorted(failed or {}, key=int)]
        self.folder.finish(shards, ("shard", "key", "reason"), rows, complete=not failed)


# --- decoding ----------------------------------------------------------------------------------------


NO_IMAGE = "no image in the sample (jpg, jpeg, png, webp, ...)"
KEPT = "; field dropped, sample kept"  # ends the errors.tsv reason of a field error
SHARD_ERRORS = (ShardError, InputError)  # a shard that can't be read: that shard fails, the job goes on


def _checked(sample: dict) -> tuple[dict, str | None, list[str]]:
    """A sample as the job uses it -> (sample, why it is skipped or None, fields dropped). Honours the
    reader's "__error__" and "__field_errors__" (see clip_jax.data.sources) and checks the types the job relies
    on itself: an image is bytes (a string is never opened as a path here), a caption a string."""
    reason = sample.get("__error__")
    fields = [str(f) for f in sample.get("__field_errors__") or ()]
    image, txt, meta = sample.get("image"), sample.get("txt"), sample.get("json")
    if reason is None and image is not None and not isinstance(image, (bytes, bytearray, memoryview)):
        reason = f"image: {type(image).__name__}, not bytes"
    changed = {}
    if not isinstance(sample.get("key"), str):
        changed["key"] = str(sample.get("key"))
    if txt is not None and not isinstance(txt, str):
        fields.append(f"caption: {type(txt).__name__}, not a string")
        changed["txt"] = None
    if meta is not None and not isinstance(meta, dict):
        fields.append(f"json: {type(meta).__name__}, not an object")
        changed["json"] = None
    if reason is not None:
        changed["image"] = None
    return ({**sample, **changed} if changed else sample), (None if reason is None else str(reason)), fields


def decoded_batches(shards: Iterable[tuple[int, Iterable[dict]]], decoder: Decoder, batch_size: int,
                    ahead: int) -> Iterator[tuple]:
    """shards: (k, samples) pairs -> per batch (k, samples, uint8 pixels [len(samples), n, n, 3], ok
    [len(samples)], errors [(key, reason)]), in order, then (k, None, None, None, failure) once shard k
    has ended: failure is None, or why the shard could not be read to its end (ShardError, InputError:
    its batches so far were yielded, and must not be marked done). A batch holds up to batch_size of one
    shard's samples, unpadded (ShardedCLIP pads a short one to the smallest of its buckets that holds it,
    so a small shard doesn't pay a full batch); decoding runs on `decoder` and goes on into the next shard
    while the devices work, at most `ahead` batches beyond the one returned (memory stays bounded)."""
    shape = tuple(decoder.transform.shape)
    pending: deque = deque()

    def start(k, batch):
        buf = np.zeros((len(batch),) + shape, np.uint8)
        checked = [_checked(s) for s in batch]
        batch = [c[0] for c in checked]
        sources = [None if reason is not None else s["image"] if s["image"] is not None else s.get("image_path")
                   for s, reason, _ in checked]
        has = [i for i, source in enumerate(sources) if source is not None]
        futures = dict(zip(has, decoder.submit([sources[i] for i in has], [buf[i] for i in has])))
        pending.append((k, batch, buf, (futures, checked)))

    def finish():
        k, batch, buf, state = pending.popleft()
        if batch is None:
            return k, None, None, None, state
        futures, checked = state
        ok, errors = np.zeros(len(batch), bool), []
        for i, (sample, reason, fields) in enumerate(checked):
            error = reason if reason is not None else futures[i].result() if i in futures else NO_IMAGE
            if error is None:
                ok[i] = True
                errors += [(sample["key"], f + KEPT) for f in fields]
            else:
                errors.append((sample["key"], error if isinstance(error, str) else error.reason))
        return k, batch, buf, ok, errors

    for k, samples in shards:
        batch: list[dict] = []
        failure = None
        try:
            for sample in itertools.chain(samples, [None]):
                if sample is not None:
                    batch.append(sample)
                if batch and (len(batch) == batch_size or sample is None):
                    start(k, batch)
                    batch = []
                while len(pending) > ahead:
                    yield finish()
        except SHARD_ERRORS as e:
            failure = str(e)
        pending.append((k, None, None, failure))
    while pending:
        yield finish()


class ShardsFailedError(ClipJaxError):
    """Shards that could not be read: the others are done, these are not (a rerun retries them)."""


def run(job: ShardJob, sharded, transform, *, num_threads: int | None, truncate: bool, progress: bool):
    """Embed this process's unfinished shards; returns (merged shard summaries on process 0 else None,
    this process's shard summaries, shards done in this run on this process). Process 0 must have
    called job.folder.open() first.
    Raises ShardsFailedError, once every other shard is done, if some shards could not be read."""
    me, count = jax.process_index(), jax.process_count()
    _barrier("clip_jax embed: folder claimed")  # process 0 has checked and claimed the folder

    mine = plan(job.num_shards, me, count)
    summaries: dict[str, dict] = job.done_shards(mine)
    todo = [k for k in mine if str(k) not in summaries]
    failed: dict[str, str] = {}
    dim = sharded.config.embed_dim

    def write(k, samples, feats, oks, errors):
        keep = np.concatenate(oks) if oks else np.zeros(0, bool)
        image_emb = np.concatenate(feats)[keep] if feats else np.zeros((0, dim), np.float32)
        text_emb = None
        if job.text:
            captions = [s["txt"] or "" for s, ok in zip(samples, keep) if ok]
            tokens = sharded.family.tokenizer(sharded.config)(captions, truncate=truncate)
            text_emb = sharded.encode_text(tokens, normalized=True) if captions else np.zeros((0, dim))
        return job.write_shard(k, samples, keep, image_emb, text_emb, errors)

    bar = progress_bar(None, 0, "img", progress and bool(todo))
    shards = ((k, job.source.shards[k]) for k in todo)
    acc: dict[int, tuple[list, list, list, list]] = {}
    with Decoder(transform, num_threads) as decoder:
        try:
            # Shards are read and decoded in a background thread, ahead of the devices.
            for k, batch, pixels, ok, errs in prefetch(decoded_batches(shards, decoder, sharded.batch_size, 2), 2):
                samples, feats, oks, errors = acc.setdefault(k, ([], [], [], []))
                if batch is None:  # shard k has ended: whole (errs is None), or not
                    parts = acc.pop(k)
                    if errs is None:
                        summaries[str(k)] = write(k, *parts)
                    else:
                        failed[str(k)] = errs
                    continue
                feats.append(sharded.encode_image(pixels, normalized=True))
                samples += [{**s, "image": None} for s in batch]  # metadata only: the bytes can go
                oks.append(ok)
                errors += errs
                bar.update(len(batch))
        finally:
            bar.close()
    merged = _gather_to_first({**summaries, **{k: {"failed": r} for k, r in failed.items()}})
    if merged is not None:
        missing = [k for k in range(job.num_shards) if str(k) not in merged]
        if missing:  # only when a process ran another plan: other inputs or options, a command-line mistake
            raise InputError(f"shards {missing[:5]} were not embedded by any process "
                             "(did every process run the same command?)")
        failed_all = {k: s["failed"] for k, s in merged.items() if "failed" in s}
        merged = {k: s for k, s in merged.items() if "failed" not in s}
        job.finish(merged, failed_all)
        failed = failed_all
    _barrier("clip_jax embed: folder finished")
    if failed:
        raise _failed_error(job, failed)
    return merged, summaries, len(todo)


def _failed_error(job: ShardJob, failed: dict[str, str]) -> ShardsFailedError:
    """One line: the shards that failed (the first few, with why), and that a rerun retries them."""
    first = sorted(failed, key=int)[:3]
    more = f" and {len(failed) - len(first)} more" if len(failed) > len(first) else ""
    why = "; ".join(failed[k].splitlines()[0] if failed[k] else job.urls[int(k)] for k in first)
    others = "the other shards are done, and " if len(failed) < job.num_shards else ""
    return ShardsFailedError(
        f"{len(failed)} of {job.num_shards} shards could not be read: {why}{more} (listed in "
        f"{job.folder}/{ERRORS}); {others}rerunning the same command retries these")
