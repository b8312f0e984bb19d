"""torch.save's files read without torch: its zip archive (the default format since torch 1.6), TorchScript
archives (torch.jit.save; OpenAI's CLIP .pt files) and the legacy non-zip format. A zip entry is checked
against its local header and its neighbours before it is read, compressed entries are bounded in what they
inflate to; the pickles are unpickled by torch_pickle's allow-list, then only the storages their tensors use
are read."""

from __future__ import annotations

import bisect
import os
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import numpy as np

from .torch_pickle import (
    MAX_PICKLE_BYTES,
    TORCH_GLOBALS,
    TORCHSCRIPT_GLOBALS,
    CheckpointError,
    StorageTable,
    brief,
    check_copy_budget,
    materialize,
    named_tensors_from_dict,
    named_tensors_from_script_module,
    plan_copies,
    read_exact,
    read_pickle,
    storage_array,
    storage_nbytes,
    unpickle,
)

# Deflated entries (torch never compresses; re-zipped files do) may inflate to at most this ratio of
# their compressed bytes in all, plus an allowance for small files of mostly zeros (the bundled
# tiny_clip.pt inflates 22x in all, 640x for its unused token embeddings). Deflate's own limit is ~1030x.
INFLATE_RATIO = 32
INFLATE_SLACK = 64 << 20


def _zip_root(names: list[str]) -> str:
    """The archive's top folder; refuse entry names that could escape a folder."""
    if len(set(names)) != len(names):
        raise CheckpointError("zip archive has duplicate entry names")
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise CheckpointError(f"refused zip entry name {name!r}: absolute or path-traversing")
    roots = [n[: -len("/data.pkl")] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(roots) != 1:
        raise CheckpointError(f"expected one <root>/data.pkl in the zip archive, found {len(roots)}")
    return roots[0]


# What zipfile (and zlib under it) raise for an archive whose structure or compressed data is corrupt.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, struct.error, UnicodeDecodeError,
               NotImplementedError)  # the last: a compression method zipfile doesn't know


def load_zip(path: str) -> dict[str, np.ndarray]:
    try:
        return _read_zip(path)
    except _ZIP_ERRORS as err:
        raise CheckpointError(f"corrupt or truncated zip archive: {type(err).__name__}: {brief(str(err))}") from None


def _read_zip(path: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
        names = zf.namelist()
        root = _zip_root(names)
        entries = set(names)
        layout = _ZipLayout(zf, raw)

        big_endian = f"{root}/byteorder" in entries and _big_endian(zf, layout, f"{root}/byteorder")

        # TorchScript archives carry compiled code and a constants table.
        torchscript = f"{root}/constants.pkl" in entries or any(n.startswith(f"{root}/code/") for n in names)
        table = StorageTable(legacy=False)
        obj = unpickle(
            _read_data_pkl(zf, layout, f"{root}/data.pkl"),
            TORCHSCRIPT_GLOBALS if torchscript else TORCH_GLOBALS,
            table,
            torchscript,
        )
        named = named_tensors_from_script_module(obj) if torchscript else named_tensors_from_dict(obj)

        _check_storage_sizes(zf, root, entries, table)  # every storage, up front (cheap); then read those needed
        needed = [zf.getinfo(f"{root}/data/{key}") for key in dict.fromkeys(r.storage.key for r in named.values())]
        _check_inflation(needed)
        owners = plan_copies(named)
        check_copy_budget(named, owners)

        storages = {}
        with ThreadPoolExecutor(max_workers=2) as pool:
            checks = []
            for info in needed:
                key = info.filename.rpartition("/")[2]
                start = layout.data_offset(info)
                if info.compress_type == zipfile.ZIP_STORED:  # what torch.save writes
                    raw.seek(start)
                    buf = read_exact(raw, info.file_size, f"zip entry {info.filename!r}")
                    # zlib releases the GIL: checksums run while the next storage is read.
                    checks.append((info, pool.submit(zlib.crc32, buf)))
                else:
                    with zf.open(info) as f:
                        buf = read_exact(f, info.file_size, f"storage {key!r}")
                        while f.read(1 << 20):  # drain to the end so zipfile verifies the CRC
                            pass
                storages[key] = storage_array(buf, table.storages[key], big_endian)
            for info, crc in checks:
                if crc.result() != info.CRC:
                    raise CheckpointError(f"zip entry {info.filename!r} is corrupt: bad CRC-32")
    return materialize(named, storages, owners)


def _big_endian(zf: zipfile.ZipFile, layout: _ZipLayout, name: str) -> bool:
    """The archive's `byteorder` entry: True for b"big"."""
    info = zf.getinfo(name)
    layout.data_offset(info)
    with zf.open(info) as f:
        order = f.read(16).strip()
    if order not in (b"little", b"big"):
        raise CheckpointError(f"unknown byteorder {order[:20]!r}")
    return order == b"big"


def _check_storage_sizes(zf: zipfile.ZipFile, root: str, entries: set[str], table: StorageTable) -> None:
    """Every storage the pickle names is an entry of the archive holding at least its bytes."""
    for ref in table.storages.values():
        entry = f"{root}/data/{ref.key}"
        if entry not in entries:
            raise CheckpointError(f"storage {ref.key!r} is missing from the archive ({entry})")
        size = zf.getinfo(entry).file_size
        if size < storage_nbytes(ref):
            raise CheckpointError(
                f"storage {ref.key!r} has {size} bytes but {ref.numel} x {ref.dtype} needs {storage_nbytes(ref)}"
            )


def _read_data_pkl(zf: zipfile.ZipFile, layout: _ZipLayout, name: str) -> bytes:
    """The archive's pickle, its declared size checked against MAX_PICKLE_BYTES before it is inflated."""
    info = zf.getinfo(name)
    if info.file_size > MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"zip entry {name!r} declares {info.file_size} bytes; a checkpoint's data.pkl may hold at most "
            f"{MAX_PICKLE_BYTES} (real ones hold kilobytes)"
        )
    layout.data_offset(info)
    return zf.read(info)  # zipfile stops at the declared size and checks the CRC


def _check_inflation(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse, before inflating anything, compressed entries that inflate past the INFLATE_* budget."""
    deflated = [info for info in infos if info.compress_type != zipfile.ZIP_STORED]
    inflated = sum(info.file_size for info in deflated)
    compressed = sum(info.compress_size for info in deflated)
    if inflated > INFLATE_RATIO * compressed + INFLATE_SLACK:
        worst = max(deflated, key=lambda info: info.file_size / max(1, info.compress_size))
        raise CheckpointError(
            f"zip entry {worst.filename!r} inflates {worst.compress_size} bytes to {worst.file_size}; the "
            f"compressed storages ({compressed} bytes) may inflate to at most {INFLATE_RATIO}x that "
            f"+ {INFLATE_SLACK >> 20} MiB, not {inflated} bytes"
        )


_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip local file header, as zipfile reads it
_HAS_DATA_DESCRIPTOR = 0x08  # flag bit: CRC and sizes follow the data (torch.save sets it)
_UTF8_NAME = 0x800
_ZIP64 = 0xFFFFFFFF


class _ZipLayout:
    """Where each entry's bytes lie in the file. An entry is read only when its local header agrees with
    the central directory and its data ends before the next entry begins, so no two entries read can
    share bytes and a stored entry can't claim more of the file than it holds."""

    def __init__(self, zf: zipfile.ZipFile, raw: BinaryIO):
        self.raw = raw
        self.bounds = sorted({info.header_offset for info in zf.infolist()} | {zf.start_dir})

    def data_offset(self, info: zipfile.ZipInfo) -> int:
        """Check `info` against its local header and neighbours -> the file offset of its data."""
        if info.header_offset < 0:  # zipfile adds the archive's offset in the file, which can go negative
            raise CheckpointError(f"zip entry {info.filename!r}: local header at offset {info.header_offset}")
        self.raw.seek(info.header_offset)
        header = self.raw.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"zip entry {info.filename!r}: bad local header")
        _, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = _LOCAL_HEADER.unpack(header)
        # A name that isn't valid UTF-8 decodes with replacement characters, so it can't match below.
        name = self.raw.read(name_len).decode("utf-8" if flags & _UTF8_NAME else "cp437", errors="replace")
        extra = self.raw.read(extra_len)
        if name != info.orig_filename or method != info.compress_type:
            raise CheckpointError(f"zip entry {info.filename!r}: local header names {name!r}, method {method}")
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        end = start + info.compress_size
        if not flags & _HAS_DATA_DESCRIPTOR:
            recorded = (crc, *_zip64_sizes(extra, csize, usize))
            if recorded != (info.CRC, info.compress_size, info.file_size):
                raise CheckpointError(
                    f"zip entry {info.filename!r}: its local header records CRC {crc:#x} and {recorded[1:]} "
                    f"bytes, the central directory {info.CRC:#x} and {(info.compress_size, info.file_size)}"
                )
        after = bisect.bisect_right(self.bounds, info.header_offset)
        following = self.bounds[min(after, len(self.bounds) - 1)]
        if after == len(self.bounds) or end > following:
            raise CheckpointError(
                f"zip entry {info.filename!r} of {info.compress_size} bytes at offset {start} runs into the "
                f"next entry (or the central directory) at offset {following}"
            )
        if flags & _HAS_DATA_DESCRIPTOR:
            self._check_descriptor(info, end, following)
        return start

    def _check_descriptor(self, info: zipfile.ZipInfo, end: int, following: int) -> None:
        """The data descriptor after the data must repeat the central directory's CRC and sizes."""
        self.raw.seek(end)
        tail = self.raw.read(min(24, following - end))
        if tail[:4] == b"PK\x07\x08":  # the signature is optional
            tail = tail[4:]
        want = (info.CRC, info.compress_size, info.file_size)
        for fmt in ("<3L", "<L2Q"):  # sizes are 8 bytes for zip64 entries
            if len(tail) >= struct.calcsize(fmt) and struct.unpack_from(fmt, tail) == want:
                return
        raise CheckpointError(
            f"zip entry {info.filename!r}: its data descriptor does not record the central directory's "
            f"CRC {info.CRC:#x} and {info.compress_size} bytes"
        )


def _zip64_sizes(extra: bytes, csize: int, usize: int) -> tuple[int, int]:
    """A local header's (compressed, uncompressed) sizes, from its zip64 extra field where they overflow."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 1:  # zip64: the 8-byte sizes, uncompressed first, for the fields marked 0xFFFFFFFF
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
            if usize == _ZIP64 and values:
                usize = values.pop(0)
            if csize == _ZIP64 and values:
                csize = values.pop(0)
            break
        pos += 4 + length
    return csize, usize


# --- the legacy format ----------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def load_legacy(path: str) -> dict[str, np.ndarray]:
    """`torch.save(..., _use_new_zipfile_serialization=False)`: a run of pickles, then storages."""
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        header = lambda: unpickle(read_pickle(f, file_size, 4096), {})  # a few dozen bytes each
        if header() != _LEGACY_MAGIC:
            raise CheckpointError("not a torch checkpoint: legacy magic number missing")
        if header() != _LEGACY_PROTOCOL:
            raise CheckpointError("unsupported legacy torch protocol version")
        sys_info = header()
        if not isinstance(sys_info, dict):
            raise CheckpointError("legacy sys_info header is not a dict")

        table = StorageTable(legacy=True)
        obj = unpickle(read_pickle(f, file_size), TORCH_GLOBALS, table)
        named = named_tensors_from_dict(obj)
        keys = unpickle(read_pickle(f, file_size), {})
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CheckpointError("legacy storage key list is malformed")
        if set(keys) != set(table.storages) or len(keys) != len(table.storages):
            raise CheckpointError("legacy storage key list does not match the storages the pickle uses")

        # Storages follow in key-list order: <int64 LE element count><raw LE bytes>.
        # Unneeded ones (e.g. optimizer state) are skipped with a seek.
        needed = {ref.storage.key for ref in named.values()}
        owners = plan_copies(named)
        check_copy_budget(named, owners)
        storages = {}
        for key in keys:
            ref = table.storages[key]
            (count,) = struct.unpack("<q", read_exact(f, 8, f"storage {key!r} header"))
            if count != ref.numel:
                raise CheckpointError(f"storage {key!r} holds {count} elements but the pickle says {ref.numel}")
            nbytes = count * ref.dtype.itemsize
            if nbytes > file_size - f.tell():
                raise CheckpointError(f"storage {key!r}: file ends before its {nbytes} bytes")
            if key in needed:
                storages[key] = storage_array(read_exact(f, nbytes, f"storage {key!r}"), ref, False)
            else:
                f.seek(nbytes, os.SEEK_CUR)
    return materialize(named, storages, owners)
