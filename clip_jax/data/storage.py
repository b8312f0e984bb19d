"""A local path or an fsspec URL, read the same way: the one place that tells them apart.

A plain path is read with open() and os; anything with a protocol ("gs://", "s3://", "http://", "hf://",
"memory://", "file://") through fsspec, so every fsspec filesystem works once its package is installed
(gcsfs, s3fs, aiohttp for HTTP): a missing one is a MissingExtraError naming the extra that brings it,
a protocol fsspec doesn't know an InputError naming the URL. Readers of data sets (clip_jax.data.sources,
eval_data) and the embedding jobs' output folders (embed_folder.Destination) go through here.
"""

from __future__ import annotations

import glob as _glob
import os
import re
from pathlib import Path

import fsspec

from ..errors import InputError, LimitError, MissingExtraError

__all__ = ["is_url", "url_to_fs", "open_binary", "read_bytes", "read_text", "join", "isfile", "isdir", "parent",
           "basename", "listdir", "glob"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# fsspec's backends by protocol -> the clip-jax extra that installs it (pyproject.toml).
_EXTRAS = {"http": "http", "https": "http", "gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}


def is_url(path: str) -> bool:
    """True for "protocol://..." (fsspec), False for plain local paths."""
    return bool(_URL.match(path))


def _missing_extra(url: str, e: ImportError) -> MissingExtraError:
    protocol = url.split("://", 1)[0].lower()
    extra = _EXTRAS.get(protocol)
    how = f"pip install 'clip-jax[{extra}]'" if extra else f"install fsspec's backend for {protocol}://"
    return MissingExtraError(f"{url}: reading {protocol}:// needs a package that is not installed ({e}); {how}")


def url_to_fs(url: str):
    """fsspec.core.url_to_fs -> (filesystem, path): a missing backend (aiohttp, gcsfs, s3fs) is one line
    naming the extra; a protocol fsspec doesn't know (a URL from a table's cell) an InputError naming it."""
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise _missing_extra(url, e) from None
    except ValueError as e:  # fsspec's "Protocol not known: ..."
        raise InputError(f"{url}: {e}") from None


def open_binary(path: str):
    """A binary, forward-readable file object for a local path or an fsspec URL."""
    if not is_url(path):
        return open(os.path.expanduser(path), "rb")
    try:
        return fsspec.open(path, "rb").open()
    except ImportError as e:
        raise _missing_extra(path, e) from None


def read_bytes(path: str, offset: int = 0, size: int | None = None) -> bytes:
    """The bytes of a local file or an fsspec URL: all of it, or `size` bytes from `offset` (one ranged
    read on object storage, no listing)."""
    if is_url(path):
        fs, p = url_to_fs(path)
        if size is None and not offset:
            return fs.cat_file(p)
        return fs.cat_file(p, start=offset, end=None if size is None else offset + size)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(-1 if size is None else size)


def read_text(path: str, limit: int) -> str:
    """A small text file, UTF-8; more than `limit` bytes is a LimitError, read no further."""
    with open_binary(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise LimitError(f"{path}: larger than {limit} bytes (the limit for this file)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 4]!r})") from None


def join(root: str, *parts: str) -> str:
    """A path or URL below root (URLs always with "/")."""
    if is_url(root):
        return "/".join([root.rstrip("/"), *parts])
    return os.path.join(root, *parts)


def isfile(path: str) -> bool:
    if is_url(path):
        fs, p = url_to_fs(path)
        return fs.isfile(p)
    return os.path.isfile(path)


def isdir(path: str) -> bool:
    if is_url(path):
        fs, p = url_to_fs(path)
        return fs.isdir(p)
    return os.path.isdir(path)


def parent(path: str) -> str:
    """The folder holding path (a URL's: the URL up to its last "/", at least "protocol://")."""
    if is_url(path):
        protocol, rest = path.split("://", 1)
        rest = rest.rstrip("/")
        return f"{protocol}://{rest.rsplit('/', 1)[0] if '/' in rest else ''}"
    return str(Path(path).parent)


def basename(path: str) -> str:
    """The last name of a path or URL (a folder's without its trailing "/")."""
    return path.rstrip("/").rsplit("/", 1)[-1] if is_url(path) else Path(path).name


def listdir(path: str) -> list[str]:
    """The sorted names in a folder (a path or URL); FileNotFoundError when there is none."""
    if is_url(path):
        fs, p = url_to_fs(path)
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False))
    return sorted(os.listdir(path))


def glob(pattern: str) -> list[str]:
    """The sorted paths or URLs matching a glob pattern ("**" recursive)."""
    if is_url(pattern):
        try:
            fs, _, paths = fsspec.get_fs_token_paths(pattern)
        except ImportError as e:
            raise _missing_extra(pattern, e) from None
        protocol = pattern.split("://", 1)[0]
        return sorted(p if is_url(p) else f"{protocol}://{p.lstrip('/') if protocol != 'file' else p}" for p in paths)
    return sorted(_glob.glob(os.path.expanduser(pattern), recursive=True))
