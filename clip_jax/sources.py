"""Where images and captions come from: WebDataset tar shards, parquet files, or image files.

One abstraction for every reader (embedding jobs, evaluation, training input): a *source* is an ordered
list of shards, and a shard yields samples as plain dicts, in the shard's order:

    {"key": str, "image": bytes | None, "txt": str | None, "json": dict | None, "cls": int | None,
     "__shard__": the shard's URL, "__index__": position of the sample in the shard}

    for shard in open_source(["data/{00000..00127}.tar"]).shards:
        for sample in shard:                       # streamed: one sample in memory at a time
            ...

Storage: a plain path is read with open(); anything with a protocol ("gs://", "s3://", "http://",
"hf://", "memory://", "file://") through fsspec, so every fsspec filesystem works (the protocol's own
package must be installed: gcsfs, s3fs, aiohttp for HTTP). Brace patterns ("{000..127}", "{a,b}") are
expanded as bash does, without listing anything, so every host computes the same shard list whether or
not it holds the files; globs ("*") are listed.

Formats, chosen by the name:
- "*.tar": WebDataset shards (what img2dataset writes). Members are grouped into samples by key as the
  webdataset library does: the key is the member's path up to the first dot of its file name, the rest
  is the field ("jpg", "txt", "json", "cls"). The tar is read forward as a stream, so shards on object
  storage or HTTP are never seeked or downloaded whole. The reader is a plain 512-byte-header parser:
  on the same shards it read ~3x the bytes/s of the webdataset library and of tarfile's "r|" mode
  (both copy every block through tarfile's stream buffer; benchmarks/embed.py --shards measures it),
  and it needs no extra dependency.
- "*.parquet" (or a folder of them): an image column of raw bytes or of Hugging Face datasets'
  {"bytes", "path"} structs, an optional caption column; read one row group at a time.
- anything else: today's image inputs (folders, globs, .txt lists, image files), grouped into shards of
  `shard_size` files; the samples carry the file's path as "key" and "image_path".
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ClipJaxError, MissingExtraError

__all__ = ["IMAGE_FIELDS", "Shard", "ShardError", "Source", "TarShard", "ParquetShard", "FileShard", "braceexpand",
           "open_source", "is_url", "open_binary", "url_to_fs", "IMAGE_EXTENSIONS", "collect_images", "read_captions"]

# Image fields in order of preference, as clip-retrieval and img2dataset name them.
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
# Image files by suffix (folders and globs of `clip-jax embed`, `classify`).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
IMAGE_COLUMNS = ("image", "jpg", "img", "png", "webp")
CAPTION_COLUMNS = ("caption", "text", "txt", "TEXT")
KEY_COLUMNS = ("key", "__key__", "id")


# --- names and storage --------------------------------------------------------------------------------


def is_url(path: str) -> bool:
    """True for "protocol://..." (fsspec), False for plain local paths."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", path))


# fsspec's backends by protocol -> the clip-jax extra that installs it (pyproject.toml).
_EXTRAS = {"http": "http", "https": "http", "gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}


def _missing_extra(url: str, e: ImportError) -> MissingExtraError:
    protocol = url.split("://", 1)[0].lower()
    extra = _EXTRAS.get(protocol)
    how = f"pip install 'clip-jax[{extra}]'" if extra else f"install fsspec's backend for {protocol}://"
    return MissingExtraError(f"{url}: reading {protocol}:// needs a package that is not installed ({e}); {how}")


def url_to_fs(url: str):
    """fsspec.core.url_to_fs, with a missing backend (aiohttp, gcsfs, s3fs) as one line naming the extra."""
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise _missing_extra(url, e) from None


def open_binary(path: str):
    """A binary, forward-readable file object for a local path or an fsspec URL."""
    if not is_url(path):
        return open(os.path.expanduser(path), "rb")
    try:
        return fsspec.open(path, "rb").open()
    except ImportError as e:
        raise _missing_extra(path, e) from None


_BRACE = re.compile(r"\{([^{}]*)\}")


def braceexpand(pattern: str) -> list[str]:
    """bash's brace expansion: "a{0..2}b" -> a0b a1b a2b (zero-padded as written: {00..10}),
    "x{a,b}" -> xa xb; nested and repeated braces expand left to right. No filesystem access."""
    m = _BRACE.search(pattern)
    while m and "," not in m.group(1) and not re.fullmatch(r"-?\d+\.\.-?\d+(\.\.\d+)?", m.group(1)):
        m = _BRACE.search(pattern, m.end())  # "{}" or "{x}": literal, as in bash
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end():]
    r = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?", body)
    if r:
        a, b, step = r.group(1), r.group(2), int(r.group(3) or 1)
        width = max(len(a), len(b)) if (a.lstrip("-").startswith("0") or b.lstrip("-").startswith("0")) else 0
        lo, hi = int(a), int(b)
        rng = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        items = [str(i).zfill(width) for i in rng]
    else:
        items = body.split(",")
    return [out for item in items for out in braceexpand(head + item + tail)]


def _suffix(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _glob(pattern: str) -> list[str]:
    if is_url(pattern):
        try:
            fs, _, paths = fsspec.get_fs_token_paths(pattern)
        except ImportError as e:
            raise _missing_extra(pattern, e) from None
        protocol = pattern.split("://", 1)[0]
        return sorted(p if is_url(p) else f"{protocol}://{p.lstrip('/') if protocol != 'file' else p}" for p in paths)
    return sorted(glob.glob(os.path.expanduser(pattern), recursive=True))


# --- samples ----------------------------------------------------------------------------------------


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def _json(data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else {"json": value}


def _cls(data: bytes | None) -> int | None:
    try:
        return None if data is None else int(data.decode().strip())
    except ValueError:
        return None


def make_sample(key: str, fields: dict[str, bytes], shard: str, index: int) -> dict:
    """A WebDataset sample (its members' bytes by field) -> the sample dict of this module."""
    image = next((fields[f] for f in IMAGE_FIELDS if f in fields), None)
    return {"key": key, "image": image, "txt": _text(fields.get("txt")), "json": _json(fields.get("json")),
            "cls": _cls(fields.get("cls")), "__shard__": shard, "__index__": index}


# --- shards -----------------------------------------------------------------------------------------


class ShardError(ClipJaxError, OSError):
    """A shard that could not be read (missing, not a tar or parquet file, cut short)."""


@dataclass
class Shard:
    """One unit of work: a file (or a group of files) whose samples are read in order."""

    url: str

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def __iter__(self) -> Iterator[dict]:
        raise NotImplementedError

    def open(self):
        try:
            return open_binary(self.url)
        except (OSError, ValueError) as e:
            raise ShardError(f"{self.url}: cannot open ({e})") from None


def _split_member(name: str) -> tuple[str, str] | None:
    """webdataset's rule: key = path up to the first dot of the file name; field = the rest, lowercased."""
    m = re.fullmatch(r"((?:.*/)?[^./][^/]*?)\.([^/]*)", name)
    if not m:
        return None
    return m.group(1), m.group(2).lower()


def _pax(data: bytes) -> dict[str, str]:
    """A pax extended header's records ("%d key=value\n")."""
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1: pos + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def tar_members(f) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the regular files of a tar stream, in order; GNU long names and pax headers
    are honoured. Reads the stream forward only, one member at a time (3-4x the speed of tarfile's
    "r|" mode here, whose stream buffer copies every block)."""
    long_name, pax = None, {}
    while True:
        header = f.read(512)
        if len(header) < 512 or header == bytes(512):
            if 0 < len(header) < 512:
                raise EOFError("cut short inside a header")
            return
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        size = int(pax.get("size", info.size))
        data = f.read(size)
        if len(data) < size:
            raise EOFError(f"cut short inside {info.name!r}")
        f.read(-size % 512)
        if info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if info.type == tarfile.XHDTYPE:
            pax = _pax(data)
            continue
        if info.type == tarfile.XGLTYPE:
            continue
        name = pax.get("path") or long_name or info.name
        long_name, pax = None, {}
        if info.type in tarfile.REGULAR_TYPES:
            yield name, data


@dataclass
class TarShard(Shard):
    """A WebDataset .tar shard, streamed member by member (no seeking, no index)."""

    def __iter__(self) -> Iterator[dict]:
        with self.open() as f:
            key, fields, index = None, {}, 0
            try:
                for name, data in tar_members(f):
                    split = _split_member(name)
                    if split is None or split[0].rsplit("/", 1)[-1].startswith("__"):
                        continue
                    k, suffix = split
                    if k != key:
                        if key is not None:
                            yield make_sample(key, fields, self.url, index)
                            index += 1
                        key, fields = k, {}
                    fields[suffix] = data
            except (tarfile.TarError, EOFError, OSError, ValueError) as e:
                raise ShardError(f"{self.url}: unreadable tar data after {index} samples ({e})") from None
            if key is not None:
                yield make_sample(key, fields, self.url, index)


@dataclass
class ParquetShard(Shard):
    """A parquet file with an image column (bytes, or {bytes, path} structs) and optional captions,
    read one row group at a time."""

    image_column: str | None = None
    caption_column: str | None = None
    key_column: str | None = None

    def columns(self, schema_names: Sequence[str]) -> tuple[str | None, str | None, str | None]:
        def pick(given, defaults, what):
            if given is not None:
                if given not in schema_names:
                    raise ValueError(f"{self.url}: no {what} column {given!r} (columns: {', '.join(schema_names)})")
                return given
            return next((c for c in defaults if c in schema_names), None)

        return (pick(self.image_column, IMAGE_COLUMNS, "image"), pick(self.caption_column, CAPTION_COLUMNS, "caption"),
                pick(self.key_column, KEY_COLUMNS, "key"))

    def __iter__(self) -> Iterator[dict]:
        with self.open() as f:
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as e:
                raise ShardError(f"{self.url}: not a parquet file ({e})") from None
            image, caption, key = self.columns(pf.schema_arrow.names)
            if image is None and caption is None:
                raise ValueError(f"{self.url}: neither an image nor a caption column "
                                 f"(columns: {', '.join(pf.schema_arrow.names)}); name them with --image-column, "
                                 "--caption-column")
            wanted = [c for c in dict.fromkeys([image, caption, key]) if c is not None]
            width = len(str(max(pf.metadata.num_rows - 1, 0)))
            index = 0
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g, columns=wanted)
                cols = {c: table.column(c).to_pylist() for c in wanted}
                for i in range(table.num_rows):
                    img = cols[image][i] if image else None
                    if isinstance(img, dict):  # Hugging Face datasets' Image feature
                        img = img.get("bytes")
                    k = cols[key][i] if key else None
                    yield {"key": str(k) if k is not None else str(index).zfill(width),
                           "image": img, "txt": cols[caption][i] if caption else None, "json": None, "cls": None,
                           "__shard__": self.url, "__index__": index}
                    index += 1


@dataclass
class FileShard(Shard):
    """A group of image files (today's folders, globs, lists): samples whose image is read from a path."""

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
    out = []
    for item in inputs:
        s = os.fspath(item)
        # An existing file or folder is taken as named, even with braces in its name.
        for name in [s] if not is_url(s) and os.path.exists(os.path.expanduser(s)) else braceexpand(s):
            if _is_glob(name) and _suffix(name) in ("tar", "parquet"):
                found = _glob(name)
                if not found:
                    raise FileNotFoundError(f"{name}: no file matches this pattern")
                out += found
            elif not is_url(name) and os.path.isdir(os.path.expanduser(name)):
                found = [os.path.join(name, f) for f in sorted(os.listdir(os.path.expanduser(name)))
                         if _suffix(f) in ("tar", "parquet")]
                out += found or [name]  # a folder of images: today's input
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


def _file_list(path: Path) -> list[str]:
    """A .txt of image paths, one a line; relative paths are relative to the list's folder."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
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
            matches = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            if not matches:
                raise FileNotFoundError(f"{s}: no file matches this pattern")
            for m in matches:
                paths += _folder_images(Path(m)) if os.path.isdir(m) else [m]
        else:
            raise FileNotFoundError(f"{s}: no such file or folder")
    return paths


def read_captions(path: str | os.PathLike) -> list[str]:
    """One caption a line (UTF-8); every line counts, so line i pairs with image i."""
    text = Path(path).read_text(encoding="utf-8")
    return text.splitlines()


def shard_kind(name: str) -> str:
    s = _suffix(name)
    return s if s in ("tar", "parquet") else "files"


def open_source(inputs: Sequence[str | os.PathLike], *, image_column: str | None = None,
                caption_column: str | None = None, key_column: str | None = None,
                shard_size: int = 100_000) -> Source:
    """The shards of `inputs` (see the module docstring). Tar and parquet names are not checked for
    existence here (a host may hold only its own shards); image inputs are listed as embed always did.
    Mixing kinds in one call is refused."""
    names = _expand(inputs)
    kinds = {shard_kind(n) for n in names}
    if len(kinds) > 1:
        raise ValueError("inputs mix tar shards, parquet files and image files; embed them as separate jobs")
    kind = kinds.pop() if kinds else "files"
    if kind == "tar":
        return Source("tar", [TarShard(n) for n in names])
    if kind == "parquet":
        return Source("parquet", [ParquetShard(n, image_column, caption_column, key_column) for n in names])
    paths = collect_images(names)
    shards = [FileShard(f"files[{lo}:{lo + shard_size}]", paths[lo: lo + shard_size])
              for lo in range(0, len(paths), shard_size)]
    return Source("files", shards)

