"""The data sets `clip_jax.eval` reads, in CLIP_benchmark's layouts.

- An ImageFolder tree (torchvision's rules, so samples and labels come in the same order as
  CLIP_benchmark's loader): one subfolder per class, classes sorted by folder name, files sorted within
  a class (recursively, symlinks followed), image extensions as torchvision's IMG_EXTENSIONS. Class
  names are the folder names, or the lines of a classnames file (line i names class i). A
  `classnames.txt` / `zeroshot_classification_templates.txt` beside the class folders (or one level up,
  beside the split folders) is read as CLIP_benchmark's `wds_*` exports have them.
- CLIP_benchmark's WebDataset export (`ROOT/SPLIT/nshards.txt`, `ROOT/SPLIT/0.tar ...`, and beside them
  `classnames.txt`, `zeroshot_classification_templates.txt`, `dataset_type.txt`), ROOT a local folder or
  any fsspec URL ("gs://bucket/wds_imagenet1k", "hf://datasets/...", "file://...", "memory://..."). The
  shards are read through clip_jax.sources (one forward pass each, its tar reader and webdataset's
  grouping of members into samples, as `clip-jax embed` reads them); images stay in the shards and are
  read back by offset (a ranged read on object storage) when they are embedded.
- A CSV or TSV (by suffix; a header row) of image path + caption, for retrieval: the image column is
  `image`, `filepath`, `path`, `file` or `filename` (or --image-column), the caption column `caption`,
  `text`, `title` or `captions` (or --caption-column). Rows naming the same image add captions to it;
  a caption cell with several lines is several captions (as CLIP_benchmark's `txt` entries). Relative
  paths are relative to the file's folder.

Every data set has a `fingerprint`: a digest of what it holds (paths, sizes, modification times,
labels), which keys the on-disk feature cache.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import sources

__all__ = ["LabelledImages", "CaptionedImages", "TarMembers", "image_folder", "caption_table", "wds_dataset",
           "classification_data", "retrieval_data", "read_lines", "IMG_EXTENSIONS"]

# torchvision.datasets.folder.IMG_EXTENSIONS, matched case-insensitively as torchvision does
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WDS_IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # the order CLIP_benchmark's to_tuple tries them
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
IMAGE_COLUMNS = ("image", "filepath", "path", "file", "filename", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title", "captions")


@dataclass
class LabelledImages:
    """Images with one class each. images: paths, or a TarMembers (bytes read on access)."""

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


class TarMembers(Sequence):
    """The bytes of tar members, read on access: (shard path or URL, data offset, size) per item."""

    def __init__(self, entries: list[tuple[str, int, int]]):
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return TarMembers(self.entries[i])
        path, offset, size = self.entries[i]
        if sources.is_url(path):
            fs, p = _fs(path)
            return fs.cat_file(p, start=offset, end=offset + size)  # one ranged read, no listing
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def _join(root: str, *parts: str) -> str:
    """A path or URL below root (URLs always with "/")."""
    if sources.is_url(root):
        return "/".join([root.rstrip("/"), *parts])
    return os.path.join(root, *parts)


def _isfile(path: str) -> bool:
    if sources.is_url(path):
        fs, p = _fs(path)
        return fs.isfile(p)
    return os.path.isfile(path)


def _read_text(path: str) -> str:
    if sources.is_url(path):
        with sources.open_binary(path) as f:
            return f.read().decode("utf-8")
    return Path(path).read_text(encoding="utf-8")


def _basename(root: str) -> str:
    return root.rstrip("/").rsplit("/", 1)[-1] if sources.is_url(root) else Path(root).name


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty lines, stripped (CLIP_benchmark's reading of classnames.txt and templates); a path or URL."""
    return [s.strip() for s in _read_text(os.fspath(path)).splitlines() if s.strip()]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _file_ids(paths: Sequence[str]) -> list:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((os.path.realpath(p), st.st_size, st.st_mtime_ns))
    return out


def _beside(root: Path, name: str) -> Path | None:
    """CLIP_benchmark keeps metadata beside the split folders: look in root, then its parent."""
    for folder in (root, root.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def _folder_files(folder: Path) -> list[str]:
    """torchvision make_dataset's walk: sorted(os.walk(..., followlinks=True)), sorted names."""
    out = []
    for root, _, names in sorted(os.walk(folder, followlinks=True)):
        out += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
    return out


def image_folder(root: str | os.PathLike, classnames: str | os.PathLike | Sequence[str] | None = None,
                 name: str | None = None) -> LabelledImages:
    """An ImageFolder tree -> LabelledImages (labels in sorted-folder order, as torchvision).

    classnames: a file (one name a line, in sorted-folder order) or a list; default: classnames.txt
    beside the class folders if there is one, else the folder names.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not folders:
        raise FileNotFoundError(f"{root}: no class folders (an ImageFolder has one subfolder per class)")
    paths, labels = [], []
    for i, c in enumerate(folders):
        files = _folder_files(root / c)
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise FileNotFoundError(f"{root}: no images ({', '.join(IMG_EXTENSIONS)}) in its class folders")
    if classnames is None:
        found = _beside(root, CLASSNAMES)
        names = read_lines(found) if found else list(folders)
    elif isinstance(classnames, (str, os.PathLike)):
        names = read_lines(classnames)
    else:
        names = [str(c) for c in classnames]
    if len(names) != len(folders):
        raise ValueError(f"{root}: {len(folders)} class folders but {len(names)} class names")
    tpl = _beside(root, TEMPLATES)
    labels = np.asarray(labels, np.int64)
    return LabelledImages(paths, labels, names, read_lines(tpl) if tpl else None, name or root.name,
                          _digest(["folder", _file_ids(paths), labels.tolist()]))


def _pick(header: list[str], wanted: str | None, known: tuple[str, ...], what: str, path) -> int:
    lower = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted not in header:
            raise ValueError(f"{path}: no column {wanted!r} (columns: {', '.join(header)})")
        return header.index(wanted)
    for k in known:
        if k in lower:
            return lower.index(k)
    raise ValueError(f"{path}: no {what} column; name one of {', '.join(known)} in the header, "
                     f"or pass the column's name (columns: {', '.join(header)})")


def caption_table(path: str | os.PathLike, image_column: str | None = None, caption_column: str | None = None,
                  name: str | None = None) -> CaptionedImages:
    """A CSV/TSV of image path + caption -> CaptionedImages, images in order of first appearance."""
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    if not rows:
        raise ValueError(f"{path}: empty")
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
            raise ValueError(f"{path}:{n}: {len(row)} columns, expected {len(header)}")
        image = os.path.join(path.parent, os.path.expanduser(row[ic].strip()))
        if image not in index:
            index[image] = len(images)
            images.append(image)
            captions.append([])
        captions[index[image]] += [c.strip() for c in row[cc].splitlines() if c.strip()]
    if not images:
        raise ValueError(f"{path}: no rows")
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} image(s) not found, e.g. {missing[0]}")
    return CaptionedImages(images, captions, name or path.stem, _digest(["table", _file_ids(images), captions]))


# --- CLIP_benchmark's WebDataset export -------------------------------------------------------------


def is_wds(root: str | os.PathLike, split: str) -> bool:
    return _isfile(_join(os.fspath(root), split, "nshards.txt"))


class _Counted:
    """A forward-read stream that counts the bytes read from it (so members' data offsets are known)."""

    def __init__(self, f):
        self.f, self.pos = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        return data


def _wds_samples(shards: list[str]):
    """Yield (key, {field: (shard, data offset, size)}) per sample of each shard, in order: the shard
    read forward once by sources.tar_members, members grouped into samples by sources' (webdataset's)
    rule, as clip_jax.sources.TarShard groups them."""
    for shard in shards:
        key, fields = None, {}
        with sources.TarShard(shard).open() as raw:
            f = _Counted(raw)
            try:
                for name, data in sources.tar_members(f):
                    # tar_members has read the member's data and its padding to the 512-byte block
                    offset = f.pos - (-len(data) % 512) - len(data)
                    split = sources._split_member(name)
                    if split is None or split[0].rsplit("/", 1)[-1].startswith("__"):
                        continue
                    k, field = split
                    if k != key:
                        if key is not None:
                            yield key, fields
                        key, fields = k, {}
                    fields[field] = (shard, offset, len(data), data if field in ("cls", "txt") else None)
            except (OSError, EOFError, ValueError) as e:
                raise sources.ShardError(f"{shard}: unreadable tar data ({e})") from None
        if key is not None:
            yield key, fields


def _shard_ids(shards: list[str]) -> list:
    """What the feature cache keys a shard by: its path, size and modification time (URLs: what the
    store reports of them: size, and mtime / ETag / generation where it has them)."""
    if not any(sources.is_url(s) for s in shards):
        return _file_ids(shards)
    out = []
    for s in shards:
        fs, p = _fs(s)
        info = fs.info(p)
        out.append((s, info.get("size"), *(str(info[k]) for k in sorted(info) if k.lower() in (
            "mtime", "etag", "generation", "lastmodified", "last_modified", "updated", "created", "md5hash"))))
    return out


def wds_dataset(root: str | os.PathLike, split: str = "test", name: str | None = None):
    """CLIP_benchmark's `wds_*` layout (a folder or an fsspec URL) -> LabelledImages, or CaptionedImages
    when dataset_type.txt says "retrieval"."""
    root = os.fspath(root)
    nshards = int(_read_text(_join(root, split, "nshards.txt")).strip())
    shards = [_join(root, split, f"{i}.tar") for i in range(nshards)]
    kind_file = _join(root, "dataset_type.txt")
    kind = _read_text(kind_file).strip().lower() if _isfile(kind_file) else "classification"
    if kind == "multilabel":
        raise ValueError(f"{root}: multi-label data sets (dataset_type.txt: multilabel) are not supported")
    images, labels, captions = [], [], []
    for key, parts in _wds_samples(shards):
        image = next((parts[k] for k in WDS_IMAGE_KEYS if k in parts), None)
        if image is None:
            continue
        if kind == "retrieval":
            if "txt" not in parts:
                continue
            captions.append(parts["txt"][3].decode("utf-8").splitlines())
        else:
            if "cls" not in parts:
                continue
            labels.append(int(parts["cls"][3].decode().strip()))
        images.append(image[:3])
    if not images:
        what = "txt" if kind == "retrieval" else "cls"
        raise ValueError(f"{_join(root, split)}: no samples with an image and a {what}")
    shard_ids = _shard_ids(shards)
    name = name or _basename(root)
    if kind == "retrieval":
        return CaptionedImages(TarMembers(images), captions, name, _digest(["wds", shard_ids, images, captions]))
    names_file, tpl_file = _join(root, CLASSNAMES), _join(root, TEMPLATES)
    if not _isfile(names_file):
        raise FileNotFoundError(f"{names_file}: no class names (CLIP_benchmark's export writes one)")
    labels = np.asarray(labels, np.int64)
    classnames = read_lines(names_file)
    if labels.max() >= len(classnames) or labels.min() < 0:
        raise ValueError(f"{root}: a label is outside the {len(classnames)} classes of {names_file}")
    return LabelledImages(TarMembers(images), labels, classnames, read_lines(tpl_file) if _isfile(tpl_file) else None,
                          name, _digest(["wds", shard_ids, images, labels.tolist()]))


def classification_data(root: str | os.PathLike, split: str | None = None,
                        classnames: str | os.PathLike | None = None) -> LabelledImages:
    """A split of a classification data set: the wds layout if ROOT/SPLIT/nshards.txt exists, else the
    ImageFolder ROOT/SPLIT (ROOT itself when split is None). ROOT may be an fsspec URL for the wds layout."""
    root = os.fspath(root)
    if split is None and is_wds(root, "test"):
        split = "test"
    if split is not None and is_wds(root, split):
        data = wds_dataset(root, split)
        if not isinstance(data, LabelledImages):
            raise ValueError(f"{root}: a retrieval data set (dataset_type.txt), not a classification one")
        if classnames is not None:
            names = read_lines(classnames)
            if len(names) != len(data.classnames):
                raise ValueError(f"{classnames}: {len(names)} names for {len(data.classnames)} classes")
            data.classnames = names
        return data
    if sources.is_url(root):
        raise ValueError(f"{_join(root, split or 'test', 'nshards.txt')}: not found; a URL is read as CLIP_benchmark's "
                         "wds layout (ImageFolder trees are read from local folders)")
    folder = os.path.join(root, split) if split is not None else root
    return image_folder(folder, classnames, name=Path(root).name if split is not None else None)


def retrieval_data(source: str | os.PathLike, split: str = "test", image_column: str | None = None,
                   caption_column: str | None = None) -> CaptionedImages:
    """A CSV/TSV file, or a wds-layout folder (or fsspec URL) whose dataset_type.txt says retrieval."""
    source = os.fspath(source)
    if os.path.isdir(source) or (sources.is_url(source) and is_wds(source, split)):
        if not is_wds(source, split):
            raise ValueError(f"{source}: a folder, but not CLIP_benchmark's wds layout ({split}/nshards.txt)")
        data = wds_dataset(source, split)
        if not isinstance(data, CaptionedImages):
            raise ValueError(f"{source}: a classification data set (no dataset_type.txt saying retrieval)")
        return data
    return caption_table(source, image_column, caption_column)
