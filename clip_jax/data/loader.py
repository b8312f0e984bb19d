"""The training input: WebDataset tar shards or parquet files -> endless, shuffled, resumable batches of
(images, tokens), each process its own rows, decoded on a thread pool.

    loader = Loader(["data/{00000..00127}.tar"], batch_size=4096, transform=preprocess.pixels,
                    tokenize=lambda texts: tokenizer(texts, truncate=True), readers=jax.device_count(),
                    process_index=jax.process_index(), process_count=jax.process_count(), on_error=log)
    for batch in loader.batches(position):       # endless: epochs roll over
        images, tokens = trainer.global_batch(batch.images, batch.tokens)
        ...                                      # save batch.position (see merge_positions) with the step

The global batch, whatever the number of processes. There are `readers` virtual readers (default: the
global device count), numbered 0..R-1. Reader r owns shards r, r+R, r+2R, ... of the shard list (braces
expanded, in the order given). Global batch b is, for r = 0..R-1 in that order, the next batch_size / R
usable samples of reader r, concatenated. Process p of P runs readers [p*R/P, (p+1)*R/P) and returns
their rows: block p of the global batch, the rows `jax.make_array_from_process_local_data` expects
from it. A reader's samples depend only on (inputs, seed, R, shuffle_buffer, shuffle_bytes,
max_image_bytes) and the data, so 1 process or 2, 4 devices or 8 hosts of 1, give the same global batch
(batch_size must divide by R, and R by P). With fewer shards than readers, the readers share them:
reader r reads shard r % n (n shards) and keeps the samples whose index in it is r // n modulo the number
of readers on that shard; every sample still belongs to exactly one reader.

Shuffling, per reader and per epoch: the order of the reader's shards is a permutation drawn from (seed,
epoch, r); their samples stream through a buffer of up to `shuffle_buffer` samples and `shuffle_bytes`
bytes, and each draw takes a uniformly random sample out of it (random numbers from (seed, epoch, r));
at the end of the epoch the buffer drains, so an epoch is a permutation of the reader's samples. Each
reader rolls over into its next epoch on its own, and every reader gives each batch the same number of
rows: a reader holding fewer samples goes through them more often. With a shard count that is a
multiple of `readers` (and shards of equal size) every sample is seen equally often; with 5 shards over
4 readers, reader 0's two shards are seen half as often as the others'. Fewer shards than readers cost
reading: each reader on a shared shard reads all of it to keep its part.

Resume. `Batch.position` (JSON) holds, per reader of this process, (epoch, raw draws): how many samples
that reader's buffer has handed out in that epoch, bad ones included. `batches(position)` rebuilds each
reader's stream and skips that many draws without decoding them (the shards before that point are read
again, not decoded), so it yields exactly the batches an uninterrupted run yields next, bit for bit. A
multi-process run saves the union of its processes' positions (`merge_positions`); any process count then
resumes from it. The position also records what makes the streams (seed, readers, buffer sizes, a
fingerprint of the shard list) and a resume that differs is an InputError.

Bad input is logged, never skipped unsaid: `on_error(shard, key, reason)` (called one at a time, from
the loader's threads) for a sample without an image or caption, an image over `max_image_bytes`, an image
`transform` refuses (ImageError), a caption `tokenize` refuses (a ClipJaxError); the sample is skipped
and the reader's next sample takes its row. Each bad sample is logged once, in its reader's epoch 0 (the
later epochs skip the same samples again, already logged). A shard that can't be read (missing, not a
tar or parquet file, cut short, a lying length) is logged once per Loader (key "") and skipped; the
samples it gave before the fault are used. A reader that finds no usable sample in a whole epoch raises
ShardError, so a data set that is all bad ends the run instead of spinning. After a resume, what is read
from the resume point on is logged again: errors near it may be logged twice, none not at all.

Memory, per process: each local reader's buffer (`shuffle_bytes` at most, plus one sample), and up to
two batches of its draws ahead of the batch returned, decoding or decoded (bounded queues: a slow
consumer stops the readers). Decoding (`transform`) and tokenizing each sample run on a pool of
`num_threads` threads (default: all cores); the rows come out in draw order whatever finishes first.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq

from ..errors import ClipJaxError, InputError, ShardError
from .sources import Shard, open_source

__all__ = ["Batch", "Loader", "ReaderPlan", "merge_positions", "reader_shards", "POSITION_VERSION"]

POSITION_VERSION = 1
MAX_IMAGE_BYTES = 32 << 20  # an image's encoded bytes; bigger is a bad sample (the buffer's cap must hold it)
SHUFFLE_BYTES = 256 << 20  # per reader: encoded images (and captions, counted in characters) in the buffer
_RANDOM_BLOCK = 1024  # uniform numbers drawn from the generator at a time (a scalar draw costs ~1 us each)
_POLL = 0.05  # seconds between looks at the stop flag while a queue is full
_STREAM_KEYS = ("seed", "readers", "shuffle_buffer", "shuffle_bytes", "max_image_bytes", "shards")


class Batch(NamedTuple):
    """This process's rows of one global batch.

    images:   [local_B, H, W, 3] as `transform` returns them (uint8 pixels or float32), local_B = batch_size / P
    tokens:   [local_B, L] as `tokenize` returns them
    position: JSON dict; `batches(position)` resumes right after this batch (see merge_positions)
    epoch:    the epoch of this process's first reader at the batch's first row (reader 0 on process 0)
    """

    images: np.ndarray
    tokens: np.ndarray
    position: dict
    epoch: int


class _Item(NamedTuple):
    """A sample in a reader's buffer: only what training uses."""

    shard: str
    key: str
    image: bytes
    caption: str


class _Draw(NamedTuple):
    """A reader's draw on its way to a batch: the sample, and its decoding (future -> (image, tokens) or a
    reason string)."""

    epoch: int
    index: int
    item: _Item
    future: Future


class _Failed(NamedTuple):
    """A reader thread's exception, handed to the consumer."""

    error: BaseException


class ReaderPlan(NamedTuple):
    """Which shards a reader reads, and which of their samples it keeps (index % modulo == slot)."""

    shards: tuple[int, ...]
    modulo: int
    slot: int


def reader_shards(num_shards: int, readers: int) -> list[ReaderPlan]:
    """Each reader's shards: r::readers when there are at least as many shards as readers, else shard
    r % num_shards shared by the readers on it, sample i going to the (i % sharing)-th of them."""
    if num_shards >= readers:
        return [ReaderPlan(tuple(range(r, num_shards, readers)), 1, 0) for r in range(readers)]
    out = []
    for r in range(readers):
        s = r % num_shards
        sharing = len(range(s, readers, num_shards))
        out.append(ReaderPlan((s,), sharing, r // num_shards))
    return out


def _rng(seed: int, epoch: int, reader: int, purpose: int) -> np.random.Generator:
    """The generator of one reader's epoch: purpose 0 orders its shards, 1 draws from its buffer.
    PCG64 from a SeedSequence of the four numbers: the same streams on every platform and numpy 1.17+."""
    return np.random.default_rng([seed % 2**64, epoch, reader, purpose])


def _fingerprint(urls: Sequence[str]) -> str:
    h = hashlib.sha256()
    for u in urls:
        h.update(u.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def _caption(sample: dict) -> str | None:
    """The sample's caption, or None when it has none (missing, empty, dropped by the reader)."""
    txt = sample.get("txt")
    return txt if isinstance(txt, str) and txt.strip() else None


def _why_unusable(sample: dict, max_image_bytes: int) -> str | None:
    """Why a sample read from a shard can't train (checked before it enters the buffer: no decoding), or
    None. The reader's own verdicts ("__error__", a dropped caption) come first."""
    if sample.get("__error__"):
        return str(sample["__error__"])
    image = sample.get("image")
    if image is None:
        return "no image in the sample (jpg, jpeg, png, webp, ...)"
    if not isinstance(image, (bytes, bytearray)):
        return f"image: {type(image).__name__}, not bytes"
    if len(image) > max_image_bytes:
        return f"image: {len(image):,} bytes, over the {max_image_bytes:,} an image may hold (max_image_bytes)"
    if _caption(sample) is None:
        dropped = [str(e) for e in sample.get("__field_errors__") or () if str(e).startswith(("txt", "caption"))]
        return dropped[0] if dropped else "no caption (txt, or the caption column, missing or empty)"
    return None


class _Logger:
    """on_error, one call at a time, with the shards already logged (each at most once per Loader)."""

    def __init__(self, on_error: Callable[[str, str, str], None] | None):
        self.on_error = on_error
        self.lock = threading.Lock()
        self.failed_shards: set[str] = set()

    def sample(self, shard: str, key: str, reason: str) -> None:
        if self.on_error is not None:
            with self.lock:
                self.on_error(shard, key, reason)

    def shard(self, shard: str, reason: str) -> None:
        with self.lock:
            if shard in self.failed_shards:
                return
            self.failed_shards.add(shard)
            if self.on_error is not None:
                self.on_error(shard, "", reason)


class _Reader:
    """One virtual reader's endless stream of draws: (epoch, index in the epoch, _Item)."""

    def __init__(self, r: int, plan: ReaderPlan, shards: Sequence[Shard], loader: Loader, log: _Logger):
        self.r, self.plan, self.shards, self.log = r, plan, shards, log
        self.seed, self.capacity = loader.seed, loader.shuffle_buffer
        self.cap_bytes, self.max_image_bytes = loader.shuffle_bytes, loader.max_image_bytes
        self.quiet = False  # while replaying draws a resumed run has already made: logged by that run
        self.epoch = 0  # bad samples are logged in epoch 0 only: later epochs meet the same ones
        self.unusable: list[str] = []  # this epoch's first reasons, for the error when nothing is usable

    def _report_shard(self, url: str, reason: str) -> None:
        if len(self.unusable) < 3:
            self.unusable.append(reason)
        if not self.quiet:
            self.log.shard(url, reason)

    def _report_sample(self, sample: dict, reason: str) -> None:
        if len(self.unusable) < 3:
            self.unusable.append(f"{sample.get('key')}: {reason}")
        if not self.quiet and self.epoch == 0:
            self.log.sample(str(sample.get("__shard__")), str(sample.get("key")), reason)

    def _items(self, epoch: int) -> Iterator[_Item]:
        """The reader's usable samples of one epoch, its shards in this epoch's order."""
        order = _rng(self.seed, epoch, self.r, 0).permutation(len(self.plan.shards))
        modulo, slot = self.plan.modulo, self.plan.slot
        for i in order:
            shard = self.shards[self.plan.shards[i]]
            try:
                for n, sample in enumerate(shard):
                    if n % modulo != slot:
                        continue
                    why = _why_unusable(sample, self.max_image_bytes)
                    if why is not None:
                        self._report_sample(sample, why)
                        continue
                    yield _Item(shard.url, str(sample["key"]), bytes(sample["image"]), _caption(sample))
            except (ClipJaxError, OSError) as e:  # ShardError, InputError (a parquet file without the columns),
                self._report_shard(shard.url, str(e))  # an fsspec backend's own OSError: the shard is skipped

    def _epoch(self, epoch: int) -> Iterator[_Item]:
        """The epoch's items through the shuffle buffer: a random one out each time it is full (by count
        or by bytes), then the rest in random order."""
        rng = _rng(self.seed, epoch, self.r, 1)
        uniform, u = rng.random(_RANDOM_BLOCK), 0
        buf: list[_Item] = []
        held = 0

        def take() -> _Item:
            nonlocal uniform, u, held
            if u == _RANDOM_BLOCK:
                uniform, u = rng.random(_RANDOM_BLOCK), 0
            j = int(uniform[u] * len(buf))
            u += 1
            buf[j], buf[-1] = buf[-1], buf[j]
            item = buf.pop()
            held -= len(item.image) + len(item.caption)
            return item

        for item in self._items(epoch):
            buf.append(item)
            held += len(item.image) + len(item.caption)
            while len(buf) >= self.capacity or (held > self.cap_bytes and buf):
                yield take()
        while buf:
            yield take()

    def draws(self, epoch: int, skip: int) -> Iterator[tuple[int, int, _Item]]:
        """Endless: epoch after epoch, each draw with its (epoch, index); the first `skip` draws of
        `epoch` are made but not yielded (and what is read meanwhile not logged: see the module doc)."""
        while True:
            self.unusable, self.epoch = [], epoch
            self.quiet = skip > 0
            n = 0
            for n, item in enumerate(self._epoch(epoch), 1):
                if n > skip:
                    yield epoch, n - 1, item
                self.quiet = n < skip
            if n == 0:
                raise ShardError(self._nothing_usable(epoch))
            epoch, skip = epoch + 1, 0

    def _nothing_usable(self, epoch: int) -> str:
        urls = [self.shards[i].url for i in self.plan.shards]
        what = urls[0] if len(urls) == 1 else f"{len(urls)} shards ({urls[0]}, ...)"
        why = "; ".join(self.unusable) or "the shards hold no samples"
        if self.plan.modulo > 1:
            why += (f" (fewer shards than readers: this reader keeps every {self.plan.modulo}th sample of a shard "
                    "it shares; fewer readers or more shards would help)")
        return f"reader {self.r}: no usable sample in epoch {epoch} of {what}: {why}"


def _decode(transform: Callable, tokenize: Callable, item: _Item) -> tuple[np.ndarray, np.ndarray] | str:
    """One sample on the pool: (image array, token row), or why it is skipped. Besides the project's own
    errors (ImageError: not an image, a decompression bomb; a caption too long without truncation), a
    transform's or tokenizer's ValueError / OSError is the sample's fault too (a transform of the caller's
    own built on Pillow raises those); if it is a bug instead, every sample fails and the reader's
    ShardError ends the run after an epoch, naming it."""
    try:
        image = np.asarray(transform(item.image))
    except (ClipJaxError, ValueError, OSError) as e:
        return f"image: {e.reason if isinstance(e, ClipJaxError) and hasattr(e, 'reason') else _named(e)}"
    try:
        tokens = np.asarray(tokenize([item.caption]))
    except (ClipJaxError, ValueError) as e:
        return f"caption: {_named(e)}"
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise InputError(f"tokenize([caption]) returned shape {tokens.shape}, not [1, L]")
    return image, tokens[0]


def _named(e: BaseException) -> str:
    """An error as a reason: the project's own by its message, another with its type's name."""
    return str(e) if isinstance(e, ClipJaxError) else f"{type(e).__name__}: {e}"


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """q.put that gives up (False) once `stop` is set, so a reader never blocks a closed loader."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def _run_reader(reader: _Reader, start: tuple[int, int], q: queue.Queue, pool: ThreadPoolExecutor,
                stop: threading.Event, decode: Callable[[_Item], object]) -> None:
    """A reader's thread: draws (I/O, parsing, the buffer) -> decoding submitted to the pool -> q, in draw
    order; the queue's bound holds it back when the consumer is behind. Its exception goes to q."""
    try:
        for epoch, index, item in reader.draws(*start):
            if stop.is_set():
                return
            if not _put(q, _Draw(epoch, index, item, pool.submit(decode, item)), stop):
                return
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
        _put(q, _Failed(e), stop)


class Loader:
    """Endless shuffled batches of (images, tokens) from tar shards or parquet files; see the module
    docstring for the global batch, the shuffle, resume, errors and memory.

    inputs: shard names or patterns (local or fsspec URLs; brace patterns, globs, folders of shards).
    batch_size: the GLOBAL batch; each process gets batch_size / process_count rows.
    transform: image bytes -> array [H, W, 3] (raises clip_jax.image.ImageError on a bad image).
    tokenize: list of captions -> int array [n, L] (a ClipJaxError for a caption it refuses).
    readers: virtual readers (default: jax.device_count()); batch_size % readers == 0, readers %
      process_count == 0.
    shuffle_buffer / shuffle_bytes: a reader's buffer, in samples and encoded bytes.
    max_image_bytes: a bigger encoded image is a bad sample.
    on_error(shard, key, reason): a skipped sample, or a shard that can't be read (key "").
    """

    def __init__(self, inputs: Sequence[str | os.PathLike], *, batch_size: int,
                 transform: Callable[[bytes], np.ndarray], tokenize: Callable[[list[str]], np.ndarray],
                 seed: int = 0, readers: int | None = None, process_index: int = 0, process_count: int = 1,
                 shuffle_buffer: int = 1000, num_threads: int | None = None, image_column: str | None = None,
                 caption_column: str | None = None, on_error: Callable[[str, str, str], None] | None = None,
                 shuffle_bytes: int = SHUFFLE_BYTES, max_image_bytes: int = MAX_IMAGE_BYTES):
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        if readers is None:
            import jax  # only for this default: the loader itself never touches a device

            readers = jax.device_count()
        _check_sizes(batch_size, readers, process_index, process_count, shuffle_buffer, shuffle_bytes,
                     max_image_bytes)
        source = open_source(inputs, image_column=image_column, caption_column=caption_column)
        if source.kind not in ("tar", "parquet"):
            raise InputError("training reads WebDataset tar shards or parquet files (*.tar, *.parquet, or a folder "
                             f"of them); got {', '.join(map(str, inputs))[:200]}")
        if not source.shards:
            raise InputError("no shards to train on")
        self.source, self.transform, self.tokenize = source, transform, tokenize
        self.batch_size, self.readers, self.seed = int(batch_size), int(readers), int(seed)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.shuffle_buffer, self.shuffle_bytes = int(shuffle_buffer), int(shuffle_bytes)
        self.max_image_bytes = int(max_image_bytes)
        self.num_threads = max(1, int(num_threads or os.cpu_count() or 1))
        self.per_reader = self.batch_size // self.readers  # rows each reader gives a global batch
        per_process = self.readers // self.process_count
        self.local_readers = range(self.process_index * per_process, (self.process_index + 1) * per_process)
        self.local_batch_size = self.per_reader * per_process
        self.plans = reader_shards(len(source.shards), self.readers)
        self.identity = {"version": POSITION_VERSION, "seed": self.seed, "readers": self.readers,
                         "shuffle_buffer": self.shuffle_buffer, "shuffle_bytes": self.shuffle_bytes,
                         "max_image_bytes": self.max_image_bytes,
                         "shards": _fingerprint([s.url for s in source.shards])}
        self._log = _Logger(on_error)
        self._samples: int | None | bool = False  # samples_per_epoch(), once computed

    def samples_per_epoch(self) -> int | None:
        """Rows in one epoch of all readers (bad ones included): parquet from the files' metadata (their
        footers; a file whose footer can't be read counts 0), None for tar shards (unknown without reading)."""
        if self._samples is False:
            self._samples = None
            if self.source.kind == "parquet":  # one footer read per file: on object storage, 16 at a time
                with ThreadPoolExecutor(min(16, len(self.source.shards))) as pool:
                    self._samples = sum(pool.map(_parquet_rows, self.source.shards))
        return self._samples

    def batches(self, position: dict | None = None) -> Iterator[Batch]:
        """Endless batches, this process's rows of each global batch (see the module docstring); from the
        start, or right after the batch whose `position` (merged over processes or this process's own) is
        given. Closing the iterator stops the loader's threads."""
        starts = self._starts(position)
        stop = threading.Event()
        pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="clip_jax_loader_decode")
        queues = {r: queue.Queue(maxsize=2 * self.per_reader) for r in self.local_readers}

        def decode(item: _Item):
            return _decode(self.transform, self.tokenize, item)

        threads = [threading.Thread(target=_run_reader, name=f"clip_jax_loader_reader_{r}", daemon=True,
                                    args=(_Reader(r, self.plans[r], self.source.shards, self, self._log), starts[r],
                                          queues[r], pool, stop, decode))
                   for r in self.local_readers]
        for t in threads:
            t.start()
        try:
            cursor = dict(starts)
            streaks: dict[int, tuple[int, int]] = {}
            while True:
                yield self._batch(queues, cursor, streaks)
        finally:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            for t in threads:
                t.join(timeout=1.0)

    def _batch(self, queues: dict[int, queue.Queue], cursor: dict, streaks: dict) -> Batch:
        images, tokens, epochs = [], [], []
        for r in self.local_readers:
            epoch = self._rows(r, queues[r], cursor, streaks, images, tokens)
            epochs.append(epoch)
        position = {**self.identity, "at": {str(r): list(cursor[r]) for r in self.local_readers}}
        return Batch(np.stack(images), np.stack(tokens), position, epochs[0])

    def _rows(self, r: int, q: queue.Queue, cursor: dict, streaks: dict, images: list, tokens: list) -> int:
        """Reader r's next per_reader usable rows, appended to images and tokens; -> the epoch of the first."""
        first, got = None, 0
        while got < self.per_reader:
            entry = q.get()
            if isinstance(entry, _Failed):
                raise entry.error
            result = entry.future.result()
            cursor[r] = (entry.epoch, entry.index + 1)
            if isinstance(result, str):
                if entry.epoch == 0:  # later epochs meet the same sample again: logged once
                    self._log.sample(entry.item.shard, entry.item.key, result)
                _check_streak(r, entry, streaks, result)
                continue
            streaks.pop(r, None)
            first = entry.epoch if first is None else first
            images.append(result[0])
            tokens.append(result[1])
            got += 1
        return first

    def _starts(self, position: dict | None) -> dict[int, tuple[int, int]]:
        """Each local reader's (epoch, draws) from a position (see _check_position), or (0, 0)."""
        if position is None:
            return {r: (0, 0) for r in self.local_readers}
        at = _check_position(position, self.identity)
        missing = [r for r in self.local_readers if str(r) not in at]
        if missing:
            raise InputError(f"the position holds readers {sorted(at, key=int)[:8]}, not reader {missing[0]} of this "
                             "process: save the merge of every process's position (merge_positions)")
        return {r: tuple(at[str(r)]) for r in self.local_readers}


def _check_sizes(batch_size, readers, process_index, process_count, shuffle_buffer, shuffle_bytes,
                 max_image_bytes) -> None:
    """The loader's numbers, each an int in its range, and the divisions the global batch needs."""
    numbers = (("batch_size", batch_size, 1), ("readers", readers, 1), ("process_count", process_count, 1),
               ("process_index", process_index, 0), ("shuffle_buffer", shuffle_buffer, 1),
               ("shuffle_bytes", shuffle_bytes, 1), ("max_image_bytes", max_image_bytes, 1))
    for name, value, low in numbers:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    if process_index >= process_count:
        raise InputError(f"process_index {process_index} is not below process_count {process_count}")
    if batch_size % readers:
        raise InputError(f"the batch size ({batch_size}) must be a multiple of the readers ({readers}: by default "
                         "the device count), so each reader gives a batch the same number of rows")
    if readers % process_count:
        raise InputError(f"the readers ({readers}) must be a multiple of the processes ({process_count})")
    if max_image_bytes > shuffle_bytes:
        raise InputError(f"max_image_bytes ({max_image_bytes:,}) must not exceed shuffle_bytes ({shuffle_bytes:,})")


def _check_streak(r: int, entry: _Draw, streaks: dict, reason: str) -> None:
    """A reader whose draws have all been refused for a whole epoch (from draw i of epoch e to draw i of
    epoch e + 1) raises ShardError: the data would never give a batch."""
    start = streaks.setdefault(r, (entry.epoch, entry.index))
    if entry.epoch > start[0] + 1 or (entry.epoch == start[0] + 1 and entry.index >= start[1]):
        raise ShardError(f"reader {r}: every sample of a whole epoch was refused (from epoch {start[0]}, draw "
                         f"{start[1]}; the last: {entry.item.shard} {entry.item.key}: {reason})")


def _check_position(position, identity: dict) -> dict:
    """A saved position -> its readers' {"r": [epoch, draws]}; InputError for one of another format, or made
    by a loader whose streams differ (seed, readers, buffer sizes, shard list): it would not resume."""
    if not isinstance(position, dict) or position.get("version") != POSITION_VERSION:
        raise InputError(f"not a loader position of version {POSITION_VERSION}: {str(position)[:200]}")
    for key in _STREAM_KEYS:
        if position.get(key) != identity[key]:
            raise InputError(f"the position was saved with {key}={position.get(key)!r}, this loader has "
                             f"{identity[key]!r}: resuming would not continue the same batches")
    at = position.get("at")
    if not isinstance(at, dict):
        raise InputError("the position has no readers ('at')")
    for r, v in at.items():
        ok = (isinstance(v, (list, tuple)) and len(v) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v))
        if not ok or not str(r).isdigit():
            raise InputError(f"the position of reader {str(r)[:20]!r} is not [epoch, draws]: {str(v)[:60]}")
    return at


def merge_positions(positions: Iterable[dict]) -> dict:
    """Every process's Batch.position (of the same batch) -> one position holding all readers, which any
    process count resumes from. The job gathers them (e.g. multihost_utils.process_allgather of their
    JSON) and saves the merge with its checkpoint."""
    merged: dict | None = None
    for p in positions:
        if merged is None:
            _check_position(p, p)
            merged = {**p, "at": dict(p["at"])}
            continue
        at = _check_position(p, merged)
        merged["at"].update(at)
    if merged is None:
        raise InputError("no positions to merge")
    return merged


def _parquet_rows(shard: Shard) -> int:
    """A parquet file's row count from its footer; 0 when it can't be read (the loader logs it)."""
    try:
        with shard.open() as f:
            return int(pq.ParquetFile(f).metadata.num_rows)
    except (ClipJaxError, OSError, ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError):
        return 0
