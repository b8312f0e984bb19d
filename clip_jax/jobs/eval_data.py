"""The data sets `clip_jax.jobs.eval` reads, in CLIP_benchmark's layouts.

- An ImageFolder tree (torchvision's rules, so samples and labels come in the same order as
  CLIP_benchmark's loader): one subfolder per class, classes sorted by folder name, files sorted within
  a class (recursively, symlinks followed), image extensions as torchvision's IMG_EXTENSIONS. Class
  names are the folder names, or the lines of a classnames file (line i names class i). A
  `classnames.txt` / `zeroshot_classification_templates.txt` beside the class folders (or one level up,
  beside the split folders) is read as CLIP_benchmark's `wds_*` exports have them. The tree may be at an
  fsspec URL: listed with the store's `ls`/`find` in the same order, its images read through fsspec
  when they are embedded (ImageFiles).
- CLIP_benchmark's WebDataset export (`ROOT/SPLIT/nshards.txt`, `ROOT/SPLIT/0.tar ...`, and beside them
  `classnames.txt`, `zeroshot_classification_templates.txt`, `dataset_type.txt`), ROOT a local folder or
  any fsspec URL ("gs://bucket/wds_imagenet1k", "hf://datasets/...", "file://...", "memory://..."). The
  shards are read through clip_jax.data.tarstream.tar_samples (one forward pass each: the tar reader and
  webdataset's grouping of members into samples that `clip-jax embed` reads with); images stay in the
  shards and are read back by the offset it reports (a ranged read on object storage) when embedded.
- A CSV or TSV (by suffix; a header row) of image path + caption, for retrieval: the image column is
  `image`, `filepath`, `path`, `file` or `filename` (or --image-column), the caption column `caption`,
  `text`, `title` or `captions` (or --caption-column). Rows naming the same image add captions to it;
  a caption cell with several lines is several captions (as CLIP_benchmark's `txt` entries). The file
  may be an fsspec URL; relative image paths are relative to the file's folder (its folder URL), image
  URLs are kept as written, and images at URLs are read through fsspec when they are embedded.

Hostile input (files from strangers): every reader here returns or raises the project's own error
(clip_jax.errors), one line naming the file, shard or sample. Bounds set before use: `nshards.txt` is a
count from 1 to MAX_SHARDS, small text files (classnames, templates, dataset_type.txt) are read up to
MAX_TEXT_BYTES before they are split into lines. A CSV that isn't UTF-8 names the file and the byte; a
CSV field past the csv module's limit (128 KiB) names the file and line. A wds shard that isn't a
readable tar is a ShardError naming it. A sample whose `.cls` isn't an integer (or isn't UTF-8) is
refused with the shard and key, not skipped: as an unreadable image, a label that can't be read would
make the result incomparable with CLIP_benchmark's (which stops there too). A `.txt` caption that isn't
UTF-8 is decoded with U+FFFD replacing the bad bytes, as clip_jax.data.sources does for every job.

Paths and URLs are told apart and read by clip_jax.data.storage.

Every data set has a `fingerprint`: a digest of what it holds (paths, sizes, modification times,
labels; for URLs what the store reports: size, and mtime / ETag / generation where it has them), which
keys the on-disk feature cache.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import posixpath
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import sources, storage
from ..data.tarstream import tar_samples
from ..errors import ClipJaxError, InputError, LimitError, ShardError

__all__ = ["LabelledImages", "CaptionedImages", "TarMembers", "ImageFiles", "image_folder", "caption_table",
           "wds_dataset", "classification_data", "retrieval_data", "read_lines", "read_nshards", "IMG_EXTENSIONS",
           "DataNotFoundError", "MAX_SHARDS", "MAX_TEXT_BYTES", "dataset_name"]

# torchvision.datasets.folder.IMG_EXTENSIONS, matched case-insensitively as torchvision does
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WDS_IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # the order CLIP_benchmark's to_tuple tries them
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
IMAGE_COLUMNS = ("image", "filepath", "path", "file", "filename", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title", "captions")
MAX_SHARDS = 100_000  # nshards.txt: far above any CLIP_benchmark export (ImageNet's is a few dozen)
MAX_TEXT_BYTES = 16 * 2**20  # classnames, templates: read no more than this before splitting lines
MAX_LABEL = 2**31 - 1  # a .cls above this is no class index (and would overflow int64 past 2^63)


class DataNotFoundError(ClipJaxError, FileNotFoundError):
    """A data set's folder, file or image that isn't there (still a FileNotFoundError)."""


@dataclass
class LabelledImages:
    """Images with one class each. images: paths, or an ImageFiles / TarMembers (bytes read on access)."""

    images: Sequence
    labels: np.ndarray  # int64 [N], indices into classnames
    classnames: list[str]
    templates: list[str] | None = None  # the data set's own zero-shot templates, if it ships them
    name: str = ""
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class CaptionedImages:
    """Images with one or more captions each."""

    images: Sequence
    captions: list[list[str]]
    name: str = ""
    fingerprint: str = field(default="")

    def __len__(self) -> int:
        return len(self.images)


class _ReadOnAccess(Sequence):
    """Entries whose items are read on access (by `_get`); a slice stays unread."""

    def __init__(self, entries: list):
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._sliced(i)
        return self._get(self.entries[i])

    def _sliced(self, i: slice):
        return type(self)(self.entries[i])

    def _get(self, entry):
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """Item i for a message, without reading it."""
        return str(self.entries[i])


class TarMembers(_ReadOnAccess):
    """The bytes of tar members, read on access: (shard path or URL, data offset, size) per item; keys:
    the samples' keys (named in messages)."""

    def __init__(self, entries: list, keys: list[str] | None = None):
        super().__init__(entries)
        self.keys = keys

    def _sliced(self, i: slice):
        return TarMembers(self.entries[i], self.keys[i] if self.keys is not None else None)

    def _get(self, entry) -> bytes:
        return storage.read_bytes(*entry)

    def describe(self, i: int) -> str:
        shard, offset, _ = self.entries[i]
        key = f"sample {self.keys[i][:200]!r}, " if self.keys is not None else ""
        return f"{shard}: {key}the member at byte {offset}"


class ImageFiles(_ReadOnAccess):
    """Image files named by local path or fsspec URL, for the loader: a local path is handed on as it is
    (the loader opens it), a URL's bytes are read through fsspec on access."""

    @property
    def paths(self) -> list[str]:
        return self.entries

    def _get(self, path: str):
        return storage.read_bytes(path) if storage.is_url(path) else path


def _images(paths: list[str]) -> Sequence:
    """Local paths as the plain list they always were; with any URL among them, an ImageFiles."""
    return ImageFiles(paths) if any(storage.is_url(p) for p in paths) else paths


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty lines, stripped (CLIP_benchmark's reading of classnames.txt and templates); a path or URL,
    read up to MAX_TEXT_BYTES."""
    return [s.strip() for s in storage.read_text(os.fspath(path), MAX_TEXT_BYTES).splitlines() if s.strip()]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _file_ids(paths: Sequence[str]) -> list:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((os.path.realpath(p), st.st_size, st.st_mtime_ns))
    return out


_VERSION_KEYS = ("mtime", "etag", "generation", "lastmodified", "last_modified", "updated", "created", "md5hash")


def _url_id(url: str, info: dict) -> tuple:
    """What the feature cache keys an object at a URL by: what the store reports of it (size, and mtime /
    ETag / generation where it has them)."""
    return (url, info.get("size"), *(str(info[k]) for k in sorted(info) if k.lower() in _VERSION_KEYS))


def _url_infos(urls: Sequence[str]) -> list[dict | None]:
    """fs.info of each URL (None where there is no such file), a few requests at a time."""
    def info(url):
        fs, p = storage.url_to_fs(url)
        try:
            found = fs.info(p)
        except FileNotFoundError:
            return None
        return found if found.get("type", "file") == "file" else None

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(urls)))) as pool:
        return list(pool.map(info, urls))


def _beside(root: str, name: str) -> str | None:
    """CLIP_benchmark keeps metadata beside the split folders: look in root, then its parent."""
    for folder in dict.fromkeys((root, storage.parent(root))):
        if folder.endswith("://"):  # not above a bucket (or a store's root)
            continue
        if storage.isfile(storage.join(folder, name)):
            return storage.join(folder, name)
    return None


def _folder_files(folder: Path) -> list[str]:
    """torchvision make_dataset's walk: sorted(os.walk(..., followlinks=True)), sorted names."""
    out = []
    for root, _, names in sorted(os.walk(folder, followlinks=True)):
        out += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
    return out


def _url_folder(root: str) -> tuple[list[str], list[str], list[int], list]:
    """An ImageFolder tree at an fsspec URL -> (class folders, image URLs, labels, cache ids), in the order
    _folder_files walks a local tree: by containing folder, then by name."""
    fs, p = storage.url_to_fs(root)
    if not fs.isdir(p):
        raise DataNotFoundError(f"{root}: no such folder")
    base = p.rstrip("/")
    folders = sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=True)
                     if e.get("type") == "directory")
    paths, labels, ids = [], [], []
    for i, c in enumerate(folders):
        found = fs.find(f"{base}/{c}", detail=True)
        names = sorted((n.rsplit("/", 1), n) for n, info in found.items()
                       if info.get("type", "file") == "file" and n.lower().endswith(IMG_EXTENSIONS))
        for _, n in names:
            url = storage.join(root, n[len(base) + 1:]) if n.startswith(base + "/") else fs.unstrip_protocol(n)
            paths.append(url)
            ids.append(_url_id(url, found[n]))
        labels += [i] * len(names)
    return folders, paths, labels, ids


def image_folder(root: str | os.PathLike, classnames: str | os.PathLike | Sequence[str] | None = None,
                 name: str | None = None) -> LabelledImages:
    """An ImageFolder tree (a folder or an fsspec URL) -> LabelledImages (labels in sorted-folder order,
    as torchvision).

    classnames: a file or URL (one name a line, in sorted-folder order) or a list; default: classnames.txt
    beside the class folders if there is one, else the folder names.
    """
    root = os.fspath(root)
    if storage.is_url(root):
        folders, paths, labels, ids = _url_folder(root)
    else:
        if not os.path.isdir(root):
            raise DataNotFoundError(f"{root}: no such folder")
        folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
        paths, labels = [], []
        for i, c in enumerate(folders):
            files = _folder_files(Path(root) / c)
            paths += files
            labels += [i] * len(files)
    if not folders:
        raise DataNotFoundError(f"{root}: no class folders (an ImageFolder has one subfolder per class)")
    if not paths:
        raise DataNotFoundError(f"{root}: no images ({', '.join(IMG_EXTENSIONS)}) in its class folders")
    if classnames is None:
        found = _beside(root, CLASSNAMES)
        names = read_lines(found) if found else list(folders)
    elif isinstance(classnames, (str, os.PathLike)):
        names = read_lines(classnames)
    else:
        names = [str(c) for c in classnames]
    if len(names) != len(folders):
        raise InputError(f"{root}: {len(folders)} class folders but {len(names)} class names")
    tpl = _beside(root, TEMPLATES)
    labels = np.asarray(labels, np.int64)
    ids = ids if storage.is_url(root) else _file_ids(paths)
    return LabelledImages(_images(paths), labels, names, read_lines(tpl) if tpl else None,
                          name or storage.basename(root), _digest(["folder", ids, labels.tolist()]))


def _pick(header: list[str], wanted: str | None, known: tuple[str, ...], what: str, path) -> int:
    lower = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted not in header:
            raise InputError(f"{path}: no column {wanted!r} (columns: {_columns(header)})")
        return header.index(wanted)
    for k in known:
        if k in lower:
            return lower.index(k)
    raise InputError(f"{path}: no {what} column; name one of {', '.join(known)} in the header, "
                     f"or pass the column's name (columns: {_columns(header)})")


def _columns(header: list[str], n: int = 20) -> str:
    """A header's first columns for a message (a hostile one may have thousands, each of any length)."""
    shown = ", ".join(h[:40] for h in header[:n])
    return shown + (f", ... ({len(header)} in all)" if len(header) > n else "")


def caption_table(path: str | os.PathLike, image_column: str | None = None, caption_column: str | None = None,
                  name: str | None = None) -> CaptionedImages:
    """A CSV/TSV (a file or an fsspec URL) of image path + caption -> CaptionedImages, images in order of
    first appearance. Relative image paths are relative to the file's folder; image URLs are kept."""
    path = os.fspath(path)
    delimiter = "\t" if Path(storage.basename(path)).suffix.lower() in (".tsv", ".tab") else ","
    rows = _csv_rows(path, delimiter)
    if not rows:
        raise InputError(f"{path}: empty")
    header, rows = rows[0], rows[1:]
    ic = _pick(header, image_column, IMAGE_COLUMNS, "image", path)
    cc = _pick(header, caption_column, CAPTION_COLUMNS, "caption", path)
    index: dict[str, int] = {}
    images: list[str] = []
    captions: list[list[str]] = []
    for n, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(ic, cc):
            raise InputError(f"{path}:{n}: {len(row)} columns, expected {len(header)}")
        image = _resolve(storage.parent(path), row[ic].strip())
        if image not in index:
            index[image] = len(images)
            images.append(image)
            captions.append([])
        captions[index[image]] += [c.strip() for c in row[cc].splitlines() if c.strip()]
    if not images:
        raise InputError(f"{path}: no rows")
    at_urls = [p for p in images if storage.is_url(p)]
    infos = dict(zip(at_urls, _url_infos(at_urls)))
    missing = [p for p in images if (infos[p] is None if p in infos else not os.path.isfile(p))]
    if missing:
        raise DataNotFoundError(f"{path}: {len(missing)} image(s) not found, e.g. {missing[0]}")
    ids = [_url_id(p, infos[p]) if p in infos else _file_ids([p])[0] for p in images]
    return CaptionedImages(_images(images), captions, name or Path(storage.basename(path)).stem,
                           _digest(["table", ids, captions]))


def _csv_rows(path: str, delimiter: str) -> list[list[str]]:
    """The rows of a CSV/TSV (a path or URL); what the csv module or UTF-8 refuses is an InputError naming
    the file and the line (a field past the csv module's limit, a NUL) or the byte (not UTF-8)."""
    with io.TextIOWrapper(storage.open_binary(path), encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            return list(reader)
        except csv.Error as e:
            raise InputError(f"{path}:{reader.line_num}: {e}") from None
        except UnicodeDecodeError:
            pass
    raise InputError(f"{path}: not UTF-8 text (at byte {_utf8_error_offset(path)})")


def _utf8_error_offset(path: str) -> int | str:
    """The offset of the first byte of `path` that isn't UTF-8 ("?" if it reads clean this time): a
    second pass, taken only once a read has failed (TextIOWrapper's error is relative to its chunk)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    start = 0  # offset of the next chunk in the file
    with storage.open_binary(path) as f:
        while chunk := f.read(1 << 20):
            pending = len(decoder.getstate()[0])  # bytes held back from the previous chunk
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                return start - pending + e.start
            start += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        return start - len(e.object) + e.start
    return "?"


def _resolve(folder: str, image: str) -> str:
    """An image cell of a table in `folder` -> its path or URL: URLs as written, other paths relative to
    the folder (a URL folder: joined and normalized as a URL path)."""
    if storage.is_url(image):
        return image
    if storage.is_url(folder):
        protocol, rest = folder.split("://", 1)
        return f"{protocol}://{posixpath.normpath(posixpath.join(rest, image))}"
    return os.path.join(folder, os.path.expanduser(image))


# --- CLIP_benchmark's WebDataset export -------------------------------------------------------------


def is_wds(root: str | os.PathLike, split: str) -> bool:
    return storage.isfile(storage.join(os.fspath(root), split, "nshards.txt"))


def read_nshards(path: str) -> int:
    """The shard count in a wds layout's nshards.txt: an integer from 1 to MAX_SHARDS, else an
    InputError (LimitError past the bound) naming the file, before any shard name is made."""
    text = storage.read_text(path, 64).strip()
    try:
        n = int(text)
    except ValueError:
        raise InputError(f"{path}: not a shard count ({text[:40]!r})") from None
    if not 1 <= n <= MAX_SHARDS:
        raise LimitError(f"{path}: {n} shards; a count from 1 to {MAX_SHARDS} is expected")
    return n


def _wds_samples(shards: list[str]):
    """Yield (key, {field: (shard, data offset, size, bytes of .cls/.txt else None)}) per sample of each
    shard, in order: each shard read forward once by tarstream.tar_samples, the reader and grouping
    clip_jax.data.sources.TarShard reads with."""
    for shard in shards:
        with sources.TarShard(shard).open() as f:
            try:
                for key, fields in tar_samples(f, shard, offsets=True):
                    yield key, {name: (shard, offset, len(data), data if name in ("cls", "txt") else None)
                                for name, (data, offset) in fields.items()}
            except ShardError as e:  # the reader's own: named already, or named here
                raise e if shard in str(e) else ShardError(f"{shard}: {e}") from None
            except (tarfile.TarError, OSError, EOFError, ValueError, OverflowError, MemoryError) as e:
                # tarfile's InvalidHeaderError (a bad checksum) is neither an OSError nor a ValueError
                raise ShardError(f"{shard}: unreadable tar data ({e})") from None


def _label(member: tuple, key: str) -> int:
    """A sample's `.cls` -> its class index; anything but a decimal integer from 0 to MAX_LABEL is an
    InputError naming the shard and key (refused, not skipped: see the module docstring)."""
    shard, data = member[0], member[3]
    try:
        label = int(data.decode("utf-8").strip())
    except ValueError:  # UnicodeDecodeError is one; so is int()'s refusal of over 4300 digits
        raise InputError(f"{shard}: sample {key[:200]!r}: .cls is not an integer ({data[:32]!r})") from None
    if not 0 <= label <= MAX_LABEL:
        raise InputError(f"{shard}: sample {key[:200]!r}: .cls {str(label)[:32]} is no class index")
    return label


def _shard_ids(shards: list[str]) -> list:
    """What the feature cache keys a shard by: its path, size and modification time (URLs: what the
    store reports of them: size, and mtime / ETag / generation where it has them)."""
    if not any(storage.is_url(s) for s in shards):
        return _file_ids(shards)
    out = []
    for s in shards:
        fs, p = storage.url_to_fs(s)
        out.append(_url_id(s, fs.info(p)))
    return out


def wds_dataset(root: str | os.PathLike, split: str = "test", name: str | None = None):
    """CLIP_benchmark's `wds_*` layout (a folder or an fsspec URL) -> LabelledImages, or CaptionedImages
    when dataset_type.txt says "retrieval"."""
    root = os.fspath(root)
    nshards = read_nshards(storage.join(root, split, "nshards.txt"))
    shards = [storage.join(root, split, f"{i}.tar") for i in range(nshards)]
    kind_file = storage.join(root, "dataset_type.txt")
    kind = storage.read_text(kind_file, 1024).strip().lower() if storage.isfile(kind_file) else "classification"
    if kind == "multilabel":
        raise InputError(f"{root}: multi-label data sets (dataset_type.txt: multilabel) are not supported")
    images, labels, captions, keys = [], [], [], []
    for key, parts in _wds_samples(shards):
        image = next((parts[k] for k in WDS_IMAGE_KEYS if k in parts), None)
        if image is None:
            continue
        if kind == "retrieval":
            if "txt" not in parts:
                continue
            # not UTF-8: U+FFFD for the bad bytes, as clip_jax.data.sources reads captions for every job
            captions.append(parts["txt"][3].decode("utf-8", "replace").splitlines())
        else:
            if "cls" not in parts:
                continue
            labels.append(_label(parts["cls"], key))
        keys.append(key)
        images.append(image[:3])
    if not images:
        what = "txt" if kind == "retrieval" else "cls"
        raise InputError(f"{storage.join(root, split)}: no samples with an image and a {what}")
    shard_ids = _shard_ids(shards)
    name = name or storage.basename(root)
    if kind == "retrieval":
        return CaptionedImages(TarMembers(images, keys), captions, name, _digest(["wds", shard_ids, images, captions]))
    names_file, tpl_file = storage.join(root, CLASSNAMES), storage.join(root, TEMPLATES)
    if not storage.isfile(names_file):
        raise DataNotFoundError(f"{names_file}: no class names (CLIP_benchmark's export writes one)")
    labels = np.asarray(labels, np.int64)
    classnames = read_lines(names_file)
    outside = np.flatnonzero(labels >= len(classnames))
    if len(outside):
        shard, key = images[outside[0]][0], keys[outside[0]]
        raise InputError(f"{shard}: sample {key[:200]!r}: label {labels[outside[0]]} is outside the {len(classnames)} "
                         f"classes of {names_file} ({len(outside)} such sample(s))")
    templates = read_lines(tpl_file) if storage.isfile(tpl_file) else None
    return LabelledImages(TarMembers(images, keys), labels, classnames, templates, name,
                          _digest(["wds", shard_ids, images, labels.tolist()]))


def classification_data(root: str | os.PathLike, split: str | None = None,
                        classnames: str | os.PathLike | None = None) -> LabelledImages:
    """A split of a classification data set: the wds layout if ROOT/SPLIT/nshards.txt exists, else the
    ImageFolder ROOT/SPLIT (ROOT itself when split is None). ROOT may be a folder or an fsspec URL."""
    root = os.fspath(root)
    if split is None and is_wds(root, "test"):
        split = "test"
    if split is not None and is_wds(root, split):
        data = wds_dataset(root, split)
        if not isinstance(data, LabelledImages):
            raise InputError(f"{root}: a retrieval data set (dataset_type.txt), not a classification one")
        if classnames is not None:
            names = read_lines(classnames)
            if len(names) != len(data.classnames):
                raise InputError(f"{classnames}: {len(names)} names for {len(data.classnames)} classes")
            data.classnames = names
        return data
    folder = storage.join(root, split) if split is not None else root
    if storage.is_url(root) and not storage.isdir(folder):
        nshards = storage.join(root, split or "test", "nshards.txt")
        raise DataNotFoundError(f"{folder}: no such folder (nor {nshards} of CLIP_benchmark's wds layout)")
    return image_folder(folder, classnames, name=storage.basename(root) if split is not None else dataset_name(root))


# The names CLIP_benchmark's exports and common data sets give their split folders.
SPLIT_NAMES = frozenset({"train", "test", "val", "valid", "validation", "eval", "dev", "testing", "training"})


def dataset_name(folder: str | os.PathLike) -> str:
    """The data set's name for a folder of its images, as CLIP_benchmark names results by the data set:
    the folder's own name ("data/imagenette" -> "imagenette"), or its parent's when the folder is a split
    ("data/cifar10/test" -> "cifar10"). A local path is made absolute first ("." has a name)."""
    folder = os.fspath(folder)
    if not storage.is_url(folder):
        folder = os.path.abspath(folder)
    name = storage.basename(folder)
    parent = storage.parent(folder.rstrip("/"))
    if name.lower() in SPLIT_NAMES and not parent.endswith("://"):  # a bucket's top: no data set's name above
        return storage.basename(parent) or name
    return name


def retrieval_data(source: str | os.PathLike, split: str = "test", image_column: str | None = None,
                   caption_column: str | None = None) -> CaptionedImages:
    """A CSV/TSV file, or a wds-layout folder, whose dataset_type.txt says retrieval; either at a local
    path or an fsspec URL."""
    source = os.fspath(source)
    if os.path.isdir(source) or (storage.is_url(source) and is_wds(source, split)):
        if not is_wds(source, split):
            raise InputError(f"{source}: a folder, but not CLIP_benchmark's wds layout ({split}/nshards.txt)")
        data = wds_dataset(source, split)
        if not isinstance(data, CaptionedImages):
            raise InputError(f"{source}: a classification data set (no dataset_type.txt saying retrieval)")
        return data
    return caption_table(source, image_column, caption_column)
