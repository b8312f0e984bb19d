"""Where images and captions come from: WebDataset tar shards, parquet files, or image files.

One abstraction for every reader (embedding jobs, evaluation, training input): a *source* is an ordered
list of shards, and a shard yields samples as plain dicts, in the shard's order:

    {"key": str, "image": bytes | None, "txt": str | None, "json": dict | None, "cls": int | None,
     "__shard__": the shard's URL, "__index__": position of the sample in the shard}

    for shard in open_source(["data/{00000..00127}.tar"]).shards:
        for sample in shard:                       # streamed: one sample in memory at a time
            ...

Two more keys carry what was wrong with one sample, so that the job logs it (errors.tsv: shard, key,
reason) and goes on; absent keys mean no error:
- "__error__": str: the sample can't be used; its "image" is None (a parquet image cell that is a
  string, not bytes; a member name that is not UTF-8, whose key is then printed with backslash escapes).
- "__field_errors__": list[str]: fields dropped from a sample that is otherwise used, each None
  ("json: nested deeper than 64 levels", "caption: int64, not a string", "cls: not an integer").
A file that can't be read at all (missing, not a tar or parquet file, cut short, a length that lies)
raises ShardError naming it, for that shard alone; the samples it yielded before are whole.
Image files (the third kind below) carry "image_path" instead of "image".

Hostile input. Shards and tables come from strangers, so every length and size in them is checked
before it is used, and the bytes of a shard or table are data, never a path on this machine:
- tar: a header's checksum, each pax record's length, a member's size (negative, not a number, over
  1 GiB, or past the end of a file whose size is known: ShardError before any read; streams of unknown
  size are read 16 MiB at a time, so a lying header costs the bytes that exist); data without the
  end-of-archive marker is a ShardError ("cut short"), never taken as a whole shard.
- fields: .json over 1 MiB or nested deeper than 64 levels, .txt over 1 MiB, .cls that is not an int64:
  a __field_errors__ entry. Integers in .json are kept at any size (the metadata writer bounds them).
- parquet: read 64 rows at a time (never a whole row group), each cell's size checked in Arrow before it
  becomes a Python object (image 64 MiB, caption 1 MiB, key 4 KiB), rows made into Python objects
  16 MiB at a time: a 1 MB file that expands to 10 GB is read in flat memory. Image cells are bytes
  or the {bytes, path} struct's bytes; a string, a struct with a path and no bytes, or another type is
  a per-row __error__, unless `image_paths=True` (--image-paths) declares a column of local paths,
  which then become "image_path".
- brace patterns: more than 1,000,000 names is a LimitError, counted before any name is made.

Storage (clip_jax.data.storage): a plain path is read with open(); anything with a protocol ("gs://", "s3://",
"http://", "hf://", "memory://", "file://") through fsspec, so every fsspec filesystem works (the
protocol's own package must be installed: gcsfs, s3fs, aiohttp for HTTP). Brace patterns ("{000..127}",
"{a,b}") are expanded as bash does, without listing anything, so every host computes the same shard list
whether or not it holds the files; globs ("*") are listed.

Formats, chosen by the name:
- "*.tar": WebDataset shards (what img2dataset writes). Members are grouped into samples by key as the
  webdataset library does: the key is the member's path up to the first dot of its file name, the rest
  is the field ("jpg", "txt", "json", "cls"; "a.b.jpg" is key "a", field "b.jpg"). The tar is read
  forward as a stream, so shards on object storage or HTTP are never seeked or downloaded whole. The
  reader (tarstream.py) is a plain 512-byte-header parser: on the same shards it read ~3x the samples/s
  of the webdataset library and of tarfile's "r|" mode (both copy every block through tarfile's stream
  buffer; benchmarks/embed.py --shards measures it), and it needs no extra dependency.
- "*.parquet" (or a folder of them): an image column of raw bytes or of Hugging Face datasets'
  {"bytes", "path"} structs, an optional caption column and key column. The table's other columns of
  text or scalars (numbers, booleans; dates, times and decimals as text) are the samples' "json" fields,
  as a tar sample's .json, and so is the image struct's "path" (as "path", or "IMAGE.path" beside a
  column named path): metadata, never opened.
- anything else: image inputs (folders, globs, .txt lists of paths, image files), grouped into shards of
  `shard_size` files; the samples carry the file's path as "key" and "image_path".
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import json_depth
from ..errors import ClipJaxError, InputError, ShardError, decode_utf8
from . import storage
from .braces import MAX_NAMES, iter_braceexpand
from .tarstream import TarFormatError, tar_samples

__all__ = ["IMAGE_FIELDS", "Shard", "Source", "TarShard", "ParquetShard", "FileShard", "open_source",
           "IMAGE_EXTENSIONS", "collect_images", "read_captions"]

# Image fields in order of preference, as clip-retrieval and img2dataset name them.
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
# Image files by suffix (folders and globs of `clip-jax embed`, `classify`).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
IMAGE_COLUMNS = ("image", "jpg", "img", "png", "webp")
CAPTION_COLUMNS = ("caption", "text", "txt", "TEXT")
KEY_COLUMNS = ("key", "__key__", "id")


# --- names --------------------------------------------------------------------------------------------


def _suffix(path: str) -> str:
    name = storage.basename(path)
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


# --- samples ----------------------------------------------------------------------------------------


# Per-sample bounds: a field past them is dropped (a __field_errors__ entry), the sample kept.
MAX_TEXT_BYTES = 1 << 20  # a caption (tar .txt, a parquet caption cell)
MAX_JSON_BYTES = 1 << 20  # a sample's .json metadata
MAX_JSON_DEPTH = 64  # nesting of [ and {: json.loads recurses, so 200k levels would be a RecursionError
_CLS = re.compile(rb"\s*[-+]?[0-9]{1,19}\s*")


def _text(data: bytes) -> str:
    """A caption: UTF-8, undecodable bytes replaced (not an error: captions from the web often have some)."""
    if len(data) > MAX_TEXT_BYTES:
        raise InputError(f"{len(data):,} bytes, over the {MAX_TEXT_BYTES >> 20} MiB a caption may hold")
    return data.decode("utf-8", "replace")


def _json_depth(data: bytes) -> int:
    """The deepest nesting of [ and { outside strings, without parsing (so without recursion)."""
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # can't be deeper than the limit: the common case, at C speed
    return json_depth(data)


def _json(data: bytes) -> dict:
    """A sample's .json: a dict (any other JSON value is wrapped as {"json": value}). Its integers are
    Python ints of any size (>= 2**63 included): bounding them for a table is the metadata writer's job."""
    if len(data) > MAX_JSON_BYTES:
        raise InputError(f"{len(data):,} bytes, over the {MAX_JSON_BYTES >> 20} MiB a sample's metadata may hold")
    if _json_depth(data) > MAX_JSON_DEPTH:
        raise InputError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(data)
    except RecursionError:  # unreachable past the depth check; kept so that no input escapes as a traceback
        raise InputError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # UnicodeDecodeError included; huge integers (int_max_str_digits) too
        raise InputError(f"not valid JSON ({str(e)[:100]})") from None
    return value if isinstance(value, dict) else {"json": value}


def _cls(data: bytes) -> int:
    """A class index: ASCII digits with an optional sign, in int64's range."""
    if len(data) > 64 or not _CLS.fullmatch(data):
        raise InputError(f"not an integer ({data[:20]!r})")
    value = int(data)
    if not -(2**63) <= value < 2**63:
        raise InputError(f"{value} is out of int64's range")
    return value


_FIELD_READERS = {"txt": _text, "json": _json, "cls": _cls}


def _escape_name(name: str) -> str | None:
    """A member name that is not UTF-8 (decoded with surrogateescape) -> a printable key with backslash
    escapes ("caf\xe9"); None for a name that is fine as it is."""
    try:
        name.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def make_sample(key: str, fields: dict[str, bytes], shard: str, index: int) -> dict:
    """A WebDataset sample (its members' bytes by field) -> the sample dict of this module. A field that
    can't be read (see the bounds above) is None and named in "__field_errors__"; a key that is not
    UTF-8 makes the whole sample an "__error__" (with a printable, escaped key)."""
    sample = {"key": key, "image": None, "txt": None, "json": None, "cls": None, "__shard__": shard,
              "__index__": index}
    escaped = _escape_name(key)
    if escaped is not None:
        sample.update(key=escaped, __error__="member name is not UTF-8")
        return sample
    sample["image"] = next((fields[f] for f in IMAGE_FIELDS if f in fields), None)
    errors = []
    for name, read in _FIELD_READERS.items():
        data = fields.get(name)
        if data is not None:
            try:
                sample[name] = read(data)
            except InputError as e:
                errors.append(f"{name}: {e}")
    if errors:
        sample["__field_errors__"] = errors
    return sample


# --- shards -----------------------------------------------------------------------------------------


@dataclass
class Shard:
    """One unit of work: a file (or a group of files) whose samples are read in order."""

    url: str

    @property
    def name(self) -> str:
        return storage.basename(self.url)

    def __iter__(self) -> Iterator[dict]:
        raise NotImplementedError

    def open(self):
        try:
            return storage.open_binary(self.url)
        except (OSError, ValueError) as e:
            raise ShardError(f"{self.url}: cannot open ({e})") from None


@dataclass
class TarShard(Shard):
    """A WebDataset .tar shard, streamed member by member (no seeking, no index)."""

    def __iter__(self) -> Iterator[dict]:
        with self.open() as f:
            index = 0
            try:
                for key, fields in tar_samples(f, self.url):
                    yield make_sample(key, fields, self.url, index)
                    index += 1
            except TarFormatError as e:
                raise ShardError(f"{self.url}: unreadable tar data after {index} samples ({e.reason})") from None
            except (tarfile.TarError, EOFError, OSError, ValueError) as e:
                raise ShardError(f"{self.url}: unreadable tar data after {index} samples ({e})") from None


# Bounds of the parquet reader: a table is read a few rows at a time, and a cell's size is checked (in
# Arrow, without making a Python object of it) before it becomes one.
MAX_IMAGE_BYTES = 64 << 20  # one image cell
MAX_PATH_CHARS = 4096  # one path cell (image_paths=True)
MAX_KEY_BYTES = 4096  # one key cell
_BATCH_ROWS = 64  # rows decoded by Arrow at a time: a 1 MB file of one repeated 1 MB value is 64 MB, not 10 GB
_SLICE_BYTES = 16 << 20  # rows turned into Python objects at a time (at least one)
META = "json:"  # the role of a column kept as a json field: META + its name
# What pyarrow raises on bytes that are not a valid parquet file, at open or anywhere in the iteration.
_ARROW_ERRORS = (pa.ArrowException, OSError, ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError,
                 NotImplementedError)


def _column_kind(t: pa.DataType) -> str:
    """"binary", "string", "struct" (Hugging Face's {bytes, path} Image feature), "scalar" or "other"."""
    if pa.types.is_dictionary(t):
        return _column_kind(t.value_type)
    if (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
            or pa.types.is_binary_view(t)):
        return "binary"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_struct(t):
        return "struct"
    if pa.types.is_nested(t) or pa.types.is_union(t) or pa.types.is_map(t):
        return "other"
    return "scalar"


def _type_name(t: pa.DataType) -> str:
    return "str" if _column_kind(t) == "string" else str(t)[:60]


def _lengths(arr: pa.Array) -> list[int]:
    """Each cell's size in bytes (0 for nulls), computed by Arrow without materialising the cells."""
    return pc.binary_length(arr).fill_null(0).to_pylist()


class _Column:
    """One column of a batch, turned into Python values slice by slice; cells over `cap` bytes are never
    materialised (their value is None and `too_big[i]` says so)."""

    def __init__(self, arr: pa.Array, cap: int, binary: bool = True):
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if pa.types.is_binary_view(arr.type) or pa.types.is_string_view(arr.type):  # no binary_length kernel
            arr = arr.cast(pa.large_binary() if pa.types.is_binary_view(arr.type) else pa.large_string())
        self.arr = arr
        self.sizes = _lengths(arr) if binary else [0] * len(arr)
        self.too_big = [s > cap for s in self.sizes]

    def values(self, lo: int, hi: int) -> list:
        if not any(self.too_big[lo:hi]):
            return self.arr.slice(lo, hi - lo).to_pylist()
        return [None if self.too_big[i] else self.arr[i].as_py() for i in range(lo, hi)]


def _slices(sizes: list[int], limit: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges whose cells add up to at most `limit` bytes (a bigger row alone)."""
    lo, total = 0, 0
    for i, s in enumerate(sizes):
        if i > lo and total + s > limit:
            yield lo, i
            lo, total = i, 0
        total += s
    if lo < len(sizes):
        yield lo, len(sizes)


@dataclass
class ParquetShard(Shard):
    """A parquet file with an image column (bytes, or {bytes, path} structs) and optional captions, read
    _BATCH_ROWS rows at a time (never a whole row group). A cell is data, never a path on this machine:
    an image cell that is a string, or a struct with a path but no bytes, is a per-row "__error__" unless
    `image_paths` says the column holds local paths (then it becomes "image_path")."""

    image_column: str | None = None
    caption_column: str | None = None
    key_column: str | None = None
    image_paths: bool = False

    def columns(self, schema_names: Sequence[str]) -> tuple[str | None, str | None, str | None]:
        def pick(given, defaults, what):
            if given is not None:
                if given not in schema_names:
                    raise InputError(f"{self.url}: no {what} column {given!r} (columns: {', '.join(schema_names)})")
                return given
            return next((c for c in defaults if c in schema_names), None)

        return (pick(self.image_column, IMAGE_COLUMNS, "image"), pick(self.caption_column, CAPTION_COLUMNS, "caption"),
                pick(self.key_column, KEY_COLUMNS, "key"))

    def _open(self, f) -> tuple[pq.ParquetFile, dict[str, str], int]:
        try:
            pf = pq.ParquetFile(f)
            schema, num_rows = pf.schema_arrow, pf.metadata.num_rows
        except _ARROW_ERRORS as e:
            raise ShardError(f"{self.url}: not a parquet file ({str(e)[:200]})") from None
        image, caption, key = self.columns(schema.names)
        if image is None and caption is None:
            raise InputError(f"{self.url}: neither an image nor a caption column (columns: {', '.join(schema.names)}); "
                             "name them with --image-column, --caption-column")
        roles = {}
        for role, name in (("image", image), ("caption", caption), ("key", key)):
            if name is not None:
                if schema.get_field_index(name) < 0:
                    raise ShardError(f"{self.url}: column {name!r} appears more than once")
                roles[role] = name
        for f in schema:  # the other columns: kept as the samples' json fields (see _Batch._meta)
            if (f.name not in roles.values() and _column_kind(f.type) in ("string", "scalar")
                    and schema.get_field_index(f.name) >= 0):
                roles[META + f.name] = f.name
        return pf, roles, len(str(max(num_rows - 1, 0)))

    def __iter__(self) -> Iterator[dict]:
        with self.open() as f:
            pf, roles, width = self._open(f)
            index = 0
            # use_threads=False: with 64-row batches, the thread pool's dispatch cost 3x the decoding
            batches = pf.iter_batches(batch_size=_BATCH_ROWS, columns=list(dict.fromkeys(roles.values())),
                                      use_threads=False)
            while True:
                try:
                    batch = next(batches, None)
                    if batch is None:
                        return
                    rows = _Batch(batch, roles, self.image_paths)
                except _ARROW_ERRORS as e:
                    raise self._unreadable(index, e) from None
                for lo, hi in _slices(rows.sizes, _SLICE_BYTES):
                    try:
                        samples = rows.samples(lo, hi, index, width, self.url)
                    except _ARROW_ERRORS as e:
                        raise self._unreadable(index, e) from None
                    yield from samples
                    index += hi - lo

    def _unreadable(self, index: int, e: BaseException) -> ShardError:
        if isinstance(e, ClipJaxError):
            return e
        return ShardError(f"{self.url}: unreadable parquet data after {index} rows ({str(e)[:200]})")


class _Batch:
    """A record batch's image, caption and key columns, turned into sample dicts a slice of rows at a time.
    A column of the wrong type is never materialised: only whether each cell is null is read."""

    def __init__(self, batch: pa.RecordBatch, roles: dict[str, str], image_paths: bool):
        self.image_paths = image_paths
        self.image_column = roles.get("image")
        arrs = {role: batch.column(batch.schema.get_field_index(name)) for role, name in roles.items()}
        self.kinds = {role: _column_kind(a.type) for role, a in arrs.items()}
        self.types = {role: _type_name(a.type) for role, a in arrs.items()}
        self.cols: dict[str, _Column] = {}
        self.present: dict[str, list[bool]] = {}  # role -> cells not null, for columns of the wrong type
        n = batch.num_rows
        self._image(arrs.get("image"))
        caption, key = arrs.get("caption"), arrs.get("key")
        if caption is not None:
            if self.kinds["caption"] in ("string", "binary"):
                self.cols["caption"] = _Column(caption, MAX_TEXT_BYTES)
            else:
                self.present["caption"] = caption.is_valid().to_pylist()
        if key is not None and self.kinds["key"] != "other":
            self.cols["key"] = _Column(key, MAX_KEY_BYTES, binary=self.kinds["key"] in ("string", "binary"))
        for role, arr in arrs.items():
            if role.startswith(META):
                self._meta(role, arr)
        taken = {role[len(META):] for role in self.cols if role.startswith(META)}
        # the image struct's path, as a json field: "path", or "{image column}.path" if the table has a "path"
        self.path_field = "path" if "path" not in taken else f"{self.image_column}.path"
        self.sizes = [sum(c.sizes[i] for c in self.cols.values()) for i in range(n)]
        self.values: dict[str, list] = {}
        self.lo = 0

    def _image(self, image: pa.Array | None) -> None:
        if image is None:
            return
        kind = self.kinds["image"]
        if kind == "struct":  # Hugging Face datasets' Image feature: {bytes, path}
            if pa.types.is_dictionary(image.type):
                image = image.dictionary_decode()
            children = {image.type.field(i).name: child for i, child in enumerate(image.flatten())}
            data, path = children.get("bytes"), children.get("path")
            if data is not None and _column_kind(data.type) == "binary":
                self.cols["image"] = _Column(data, MAX_IMAGE_BYTES)
            else:
                self.types["image"] = "a struct without a bytes field"
                self.present["image"] = image.is_valid().to_pylist()
            if path is not None and _column_kind(path.type) == "string":
                self.cols["path"] = _Column(path, MAX_PATH_CHARS)
        elif kind == "binary":
            self.cols["image"] = _Column(image, MAX_IMAGE_BYTES)
        elif kind == "string" and self.image_paths:
            self.cols["path"] = _Column(image, MAX_PATH_CHARS)
        else:  # strings without image_paths, or another type: an error for each cell that is not null
            self.present["image"] = image.is_valid().to_pylist()

    def _meta(self, role: str, arr: pa.Array) -> None:
        """Another column of the table (text or a scalar), kept as a json field. Dates, times and decimals
        become text (JSON has no such types); a column Arrow can't make text of is left out."""
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        t = arr.type
        if _column_kind(t) == "string":
            self.cols[role] = _Column(arr, MAX_TEXT_BYTES)
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
            self.cols[role] = _Column(arr, 0, binary=False)
        else:
            try:
                self.cols[role] = _Column(pc.cast(arr, pa.string()), MAX_TEXT_BYTES)
            except _ARROW_ERRORS:
                pass

    def json(self, i: int, errors: list[str] | None = None) -> dict | None:
        """Row i's other columns (and its image struct's path) as its json fields, or None if it has none;
        a text cell over MAX_TEXT_BYTES is left out, with a field error in `errors`."""
        out = {}
        for role in self.cols:
            if role.startswith(META):
                if self._too_big(role, i) and errors is not None:
                    errors.append(f"column {role[len(META):]!r}: {self._too_big(role, i):,} bytes, over the "
                                  f"{MAX_TEXT_BYTES >> 20} MiB a metadata cell may hold")
                elif self._value(role, i) is not None:
                    out[role[len(META):]] = self._value(role, i)
        if self.kinds.get("image") == "struct" and self._value("path", i) is not None:
            out[self.path_field] = self._value("path", i)
        return out or None

    def materialise(self, lo: int, hi: int) -> range:
        """Make Python values of rows lo..hi (cells within their bounds only); returns the rows."""
        self.values = {role: c.values(lo, hi) for role, c in self.cols.items()}
        self.lo = lo
        return range(lo, hi)

    def samples(self, lo: int, hi: int, index: int, width: int, url: str) -> list[dict]:
        """The sample dicts of rows lo..hi, the first numbered `index`."""
        self.materialise(lo, hi)
        plain = (not self.present and "path" not in self.values and self.kinds.get("caption", "string") == "string"
                 and self.kinds.get("key", "string") != "other"
                 and not any(any(c.too_big[lo:hi]) for c in self.cols.values()))
        if not plain:  # a cell of the wrong type, too big, a path, bytes as captions: row by row
            return [self.sample(i, index + i - lo, width, url) for i in range(lo, hi)]
        n = hi - lo
        keys, images, captions = (self.values.get(role) or [None] * n for role in ("key", "image", "caption"))
        return [{"key": str(index + j).zfill(width) if k is None else
                 k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else str(k),
                 "image": image, "txt": caption, "json": self.json(lo + j), "cls": None, "__shard__": url,
                 "__index__": index + j}
                for j, (k, image, caption) in enumerate(zip(keys, images, captions))]

    def _value(self, role: str, i: int):
        return self.values[role][i - self.lo] if role in self.values else None

    def _too_big(self, role: str, i: int) -> int:
        c = self.cols.get(role)
        return c.sizes[i] if c is not None and c.too_big[i] else 0

    def sample(self, i: int, index: int, width: int, url: str) -> dict:
        sample = {"key": None, "image": None, "txt": None, "json": None, "cls": None, "__shard__": url,
                  "__index__": index}
        errors: list[str] = []
        self._key(sample, i, index, width, errors)
        self._image_cell(sample, i)
        self._caption(sample, i, errors)
        sample["json"] = self.json(i, errors)
        if errors:
            sample["__field_errors__"] = errors
        return sample

    def _key(self, sample: dict, i: int, index: int, width: int, errors: list[str]) -> None:
        k = self._value("key", i)
        if self._too_big("key", i):
            errors.append(f"key: {self._too_big('key', i):,} bytes, over the {MAX_KEY_BYTES:,} a key may hold")
        elif self.kinds.get("key") == "other":
            errors.append(f"key: a {self.types['key']} column, not a scalar")
        sample["key"] = (str(index).zfill(width) if k is None else
                         k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else str(k))

    def _image_cell(self, sample: dict, i: int) -> None:
        data, path = self._value("image", i), self._value("path", i)
        if data is not None:
            sample["image"] = data
        elif self._too_big("image", i):
            sample["__error__"] = (f"image: {self._too_big('image', i):,} bytes, over the {MAX_IMAGE_BYTES >> 20} MiB "
                                   "an image may hold")
        elif path is not None:
            if self.image_paths:
                sample["image_path"] = path
            else:
                sample["__error__"] = ("image struct holds a path but no bytes (paths are not opened unless asked: "
                                       "image_paths=True, --image-paths)")
        elif self._too_big("path", i):
            sample["__error__"] = f"image path: over the {MAX_PATH_CHARS:,} bytes a path may hold"
        elif self.present.get("image", ())[i:i + 1] == [True]:
            hint = (" (a path? paths are not opened unless asked: image_paths=True, --image-paths)"
                    if self.kinds["image"] == "string" else "")
            sample["__error__"] = f"image column {self.image_column!r} holds {self.types['image']}, not bytes{hint}"

    def _caption(self, sample: dict, i: int, errors: list[str]) -> None:
        c = self._value("caption", i)
        if self._too_big("caption", i):
            errors.append(f"caption: {self._too_big('caption', i):,} bytes, over the {MAX_TEXT_BYTES >> 20} MiB a "
                          "caption may hold")
        elif isinstance(c, bytes):
            try:
                sample["txt"] = c.decode("utf-8")
            except UnicodeDecodeError:
                errors.append("caption: bytes that are not UTF-8")
        elif c is not None:
            sample["txt"] = c
        elif self.present.get("caption", ())[i:i + 1] == [True]:
            errors.append(f"caption: {self.types['caption']}, not a string")


@dataclass
class FileShard(Shard):
    """A group of image files (from folders, globs, lists): samples whose image is read from a path."""

    paths: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[dict]:
        for i, p in enumerate(self.paths):
            yield {"key": p, "image": None, "image_path": p, "txt": None, "json": None, "cls": None,
                   "__shard__": self.url, "__index__": i}


@dataclass
class Source:
    """An ordered list of shards of one kind ("tar", "parquet" or "files")."""

    kind: str
    shards: list[Shard]

    def __iter__(self) -> Iterator[dict]:
        for shard in self.shards:
            yield from shard


def _expand(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """The names of `inputs`: braces expanded (lazily, the count capped at MAX_NAMES over all inputs
    before any name is made), globs of shards listed, folders of shards listed."""
    out: list[str] = []
    for item in inputs:
        s = os.fspath(item)
        # An existing file or folder is taken as named, even with braces in its name.
        names = [s] if not storage.is_url(s) and os.path.exists(os.path.expanduser(s)) else \
            iter_braceexpand(s, MAX_NAMES - len(out))
        for name in names:
            if _is_glob(name) and _suffix(name) in ("tar", "parquet"):
                found = storage.glob(name)
                if not found:
                    raise FileNotFoundError(f"{name}: no file matches this pattern")
                out += found
            elif not storage.is_url(name) and os.path.isdir(os.path.expanduser(name)):
                found = [os.path.join(name, f) for f in storage.listdir(os.path.expanduser(name))
                         if _suffix(f) in ("tar", "parquet")]
                out += found or [name]  # no shards in it: a folder of images
            else:
                out.append(name)
    return out


# --- image files (folders, lists, globs) --------------------------------------------------------------


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _folder_images(folder: Path) -> list[str]:
    found = []
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        # Symlinks are followed, so a link to an ancestor would loop: each real directory once.
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return found


def _read_utf8(path: Path) -> str:
    """A text file the user names (a list of images, captions): bytes that are not UTF-8 are an InputError
    naming the file, not a UnicodeDecodeError (the command line shows only clip_jax's errors as one line)."""
    return decode_utf8(path.read_bytes(), path)


def _file_list(path: Path) -> list[str]:
    """A .txt of image paths, one a line; relative paths are relative to the list's folder."""
    out = []
    for line in _read_utf8(path).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(str(p if p.is_absolute() else path.parent / p))
    return out


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Image paths from folders (recursive, by extension), .txt file lists, globs and plain files, in
    the order given (sorted within a folder or glob).

    A .txt input is a list of image paths (captions go through `read_captions` / --captions). A missing
    input raises FileNotFoundError; an unreadable image is not checked here (the job skips it).
    """
    paths: list[str] = []
    for item in inputs:
        s = os.fspath(item)
        p = Path(s).expanduser()
        if p.is_dir():
            paths += _folder_images(p)
        elif p.is_file() and p.suffix.lower() == ".txt":
            paths += _file_list(p)
        elif p.exists():
            paths.append(str(p))
        elif _is_glob(s):
            matches = storage.glob(s)
            if not matches:
                raise FileNotFoundError(f"{s}: no file matches this pattern")
            for m in matches:
                paths += _folder_images(Path(m)) if os.path.isdir(m) else [m]
        else:
            raise FileNotFoundError(f"{s}: no such file or folder")
    return paths


def read_captions(path: str | os.PathLike) -> list[str]:
    """One caption a line (UTF-8); every line counts, so line i pairs with image i."""
    return _read_utf8(Path(path)).splitlines()


def shard_kind(name: str) -> str:
    s = _suffix(name)
    return s if s in ("tar", "parquet") else "files"


def open_source(inputs: Sequence[str | os.PathLike], *, image_column: str | None = None,
                caption_column: str | None = None, key_column: str | None = None,
                shard_size: int = 100_000, image_paths: bool = False) -> Source:
    """The shards of `inputs` (see the module docstring). Tar and parquet names are not checked for
    existence here (a host may hold only its own shards); image inputs are listed (collect_images).
    Mixing kinds in one call is refused. `image_paths`: the parquet image column holds local paths, which
    are opened (without it a string cell is a per-row error: a table's cells are data, never paths)."""
    names = _expand(inputs)
    kinds = {shard_kind(n) for n in names}
    if len(kinds) > 1:
        raise InputError("inputs mix tar shards, parquet files and image files; embed them as separate jobs")
    kind = kinds.pop() if kinds else "files"
    if kind == "tar":
        return Source("tar", [TarShard(n) for n in names])
    if kind == "parquet":
        return Source("parquet", [ParquetShard(n, image_column, caption_column, key_column, image_paths)
                                  for n in names])
    paths = collect_images(names)
    shards = [FileShard(f"files[{lo}:{lo + shard_size}]", paths[lo: lo + shard_size])
              for lo in range(0, len(paths), shard_size)]
    return Source("files", shards)

