"""torch.save's files read without torch: its zip archive (the default format since torch 1.6), TorchScript
archives (torch.jit.save; OpenAI's CLIP .pt files) and the legacy non-zip format. A zip entry is checked
against its local header and its neighbours before it is read, compressed entries are bounded in what they
inflate to; the pickles are unpickled by torch_pickle's allow-list, then only the storages their tensors use
are read."""

from __future__ import annotations

import bisect
import functools
import math
import mmap
import os
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

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

# --- tensors read when used ----------------------------------------------------------------------


class LazyArray:
    """A tensor whose shape and dtype are known (from its file's header) and whose data is read when
    np.asarray asks for it: read afresh each time and never kept, so a model built from these holds
    each weight once, not once in the model and once more here.

    read: -> a fresh array of the tensor. view: -> the tensor to copy from, possibly a read-only view of
    the file's memory map (a layout change or a cast copies from it once, not from a read copy).
    np.asarray(lazy) is a writable, C-contiguous array, 64-byte aligned (jax.device_put on the CPU
    then takes it as the model's array without a copy); np.asarray(lazy, dtype) casts as it copies."""

    __slots__ = ("dtype", "shape", "_read", "_view")

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, read: Callable[[], np.ndarray],
                 view: Callable[[], np.ndarray] | None = None):
        self.shape, self.dtype, self._read = tuple(shape), np.dtype(dtype), read
        self._view = view or read

    @classmethod
    def once(cls, array: np.ndarray) -> LazyArray:
        """An array in memory, handed over on the first read and then let go (a second read fails)."""
        cell = [array]
        return cls(array.shape, array.dtype, cell.pop)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if dtype is None or np.dtype(dtype) == self.dtype:
            return owned(self._read())
        return owned(self._view(), dtype)  # cast as it is copied out of the file: one pass

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"


def apply_lazily(fn: Callable[[list[np.ndarray]], np.ndarray], arrays: Sequence[Any]) -> Any:
    """fn(arrays) now when every array is in memory; else a LazyArray computing it when read. Its shape
    comes from fn on zero-byte stand-ins (so a shape fn refuses is refused now, before reading). fn runs
    on the sources' views (a transpose of a memory-mapped tensor is copied out once, in its new layout);
    a fn that hands back its input unchanged gives the source itself, read as it is."""
    if not any(isinstance(a, LazyArray) for a in arrays):
        return fn(list(arrays))
    stand_ins = [np.broadcast_to(np.zeros((), np.uint8), a.shape) for a in arrays]
    result = fn(stand_ins)
    for array, stand_in in zip(arrays, stand_ins):
        if result is stand_in:
            return array

    def view() -> np.ndarray:
        return fn([a._view() if isinstance(a, LazyArray) else np.asarray(a) for a in arrays])

    return LazyArray(result.shape, np.result_type(*(a.dtype for a in arrays)), lambda: owned(view()), view)


# XLA's CPU client takes a host array of at least this alignment as the device array itself (no copy).
ALIGNMENT = 64
_OWN_MAPPING = 1 << 16  # bytes: a buffer this large gets a mapping of its own


def empty_aligned(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """A fresh, writable, C-contiguous array aligned to ALIGNMENT bytes: a large one in its own mapping,
    returned to the system when the array goes (buffers taken from and freed to the heap between the
    model's arrays stay resident: about 20% more for a model of a few hundred)."""
    dtype, count = np.dtype(dtype), math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes >= _OWN_MAPPING:
        return np.frombuffer(mmap.mmap(-1, nbytes, **_MAPPING), dtype, count).reshape(shape)
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def owned(x: np.ndarray, dtype: Any = None) -> np.ndarray:
    """x itself when it is writable, C-contiguous, aligned and of `dtype` (a fresh read, handed over);
    else a copy that is (a view of a memory-mapped file, a transpose, a cast)."""
    dtype = x.dtype if dtype is None else np.dtype(dtype)
    if x.dtype == dtype and x.flags.writeable and x.flags.c_contiguous and x.ctypes.data % ALIGNMENT == 0:
        return x
    out = empty_aligned(x.shape, dtype)
    copy_into(out, x)
    return out


_BLOCK = 32  # the slices a transposing copy takes at a time: source rows that stay in the cache


def copy_into(out: np.ndarray, x: np.ndarray) -> None:
    """out[...] = x, casting. A transposed x (its last axis not its densest) is copied a block of its last
    axis at a time, so the source's rows are read while cached: numpy's own strided copy is 3x slower."""
    strides = [abs(s) for s in x.strides]
    if x.ndim < 2 or x.size < _OWN_MAPPING or strides[-1] <= min(strides[:-1]):
        np.copyto(out, x, casting="unsafe")
        return
    for i in range(0, x.shape[-1], _BLOCK):
        np.copyto(out[..., i:i + _BLOCK], x[..., i:i + _BLOCK], casting="unsafe")


# Linux: pages made at once, not one fault at a time as the read fills them (a third faster)
_POPULATE = mmap.MAP_POPULATE if hasattr(mmap, "MAP_POPULATE") else 0
_MAPPING = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE}


def file_array(path: str, offset: int, shape: Sequence[int], dtype: Any,
               ready: Callable[[], None] = lambda: None) -> LazyArray:
    """The C-ordered tensor of `shape` and `dtype` at byte `offset` of the file at `path`, as a LazyArray.
    ready: called before its bytes are used (a check of them that runs beside, e.g. a zip entry's CRC)."""
    shape, dtype = tuple(shape), np.dtype(dtype)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize

    def read() -> np.ndarray:
        ready()
        out = empty_aligned(shape, dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(path, "rb") as f:
            f.seek(offset)
            done = 0
            while done < nbytes:
                got = f.readinto(view[done:])
                if not got:
                    raise CheckpointError(f"{path}: ends inside a tensor (the file changed after it was opened?)")
                done += got
        return out

    def view() -> np.ndarray:
        ready()
        if nbytes == 0:
            return np.empty(shape, dtype)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset + nbytes:  # a mapping past the end faults when read
                raise CheckpointError(f"{path}: ends inside a tensor (the file changed after it was opened?)")
            mapped = mmap.mmap(f.fileno(), offset + nbytes - start, flags=mmap.MAP_PRIVATE | _POPULATE,
                               prot=mmap.PROT_READ, offset=start)
        return np.frombuffer(mapped, dtype, count, offset - start).reshape(shape)  # read-only

    return LazyArray(shape, dtype, read, view)


# --- torch.save's zip ------------------------------------------------------------------------------

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


def load_zip(path: str, lazy: bool = False) -> dict[str, Any]:
    """A torch.save or TorchScript zip -> {name: array}. lazy: the tensors of stored (uncompressed,
    little-endian) storages as LazyArrays, each read from its place in the file when used, so the archive
    is never in memory whole; the CRC-32 of each storage is checked beside, before its bytes are used."""
    try:
        return _read_zip(path, lazy)
    except _ZIP_ERRORS as err:
        raise CheckpointError(f"corrupt or truncated zip archive: {type(err).__name__}: {brief(str(err))}") from None


def _read_zip(path: str, lazy: bool) -> dict[str, Any]:
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
        if lazy and _mappable(needed, table, big_endian):
            return _lazy_tensors(path, named, {info.filename.rpartition("/")[2]: (info, layout.data_offset(info))
                                               for info in needed})

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


def _mappable(needed: list[zipfile.ZipInfo], table: StorageTable, big_endian: bool) -> bool:
    """Whether every storage can be used from the file as it is: stored, in this machine's byte order,
    and no bools (torch reads any nonzero byte as True: they are normalized in memory)."""
    return (all(info.compress_type == zipfile.ZIP_STORED for info in needed) and not big_endian
            and not any(ref.dtype == np.bool_ for ref in table.storages.values()))


def _lazy_tensors(path: str, named: dict, entries: dict[str, tuple[zipfile.ZipInfo, int]]) -> dict[str, LazyArray]:
    """Each tensor as a LazyArray on its storage's bytes in the file (entries: storage key -> (its entry,
    the file offset of its data)); a view of a whole storage or a C-ordered part reads just its bytes."""
    checks = _crc_checks(path, entries)
    out = {}
    for name, ref in named.items():
        key, dtype = ref.storage.key, ref.storage.dtype
        info, start = entries[key]
        ready = functools.partial(_check_crc, path, info, checks[key])
        contiguous = _c_strides(ref.size)
        if all(n == 1 or s == c for n, s, c in zip(ref.size, ref.stride, contiguous)):
            out[name] = file_array(path, start + ref.offset * dtype.itemsize, ref.size, dtype, ready)
        else:  # strided: a view of the mapped storage, copied out
            storage = file_array(path, start, (ref.storage.numel,), dtype, ready)
            out[name] = apply_lazily(functools.partial(_strided, ref=ref), [storage])
    return out


def _c_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    """The strides, in elements, of a C-ordered tensor of `size`."""
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _strided(arrays: list[np.ndarray], ref: Any) -> np.ndarray:
    (flat,) = arrays
    itemsize = flat.dtype.itemsize
    return np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size,
                                           strides=tuple(s * itemsize for s in ref.stride), writeable=False)


_CRC_CHUNK = 1 << 20  # bytes read at a time: the thread holds one chunk


def _crc_checks(path: str, entries: dict[str, tuple[zipfile.ZipInfo, int]]) -> dict[str, Future]:
    """A thread computing each entry's CRC-32 from the file, in order, a chunk at a time (zlib releases
    the GIL: it runs while the model is made and the tensors are read) -> storage key -> Future(bool)."""
    futures = {key: Future() for key in entries}

    def run() -> None:
        buffer = memoryview(bytearray(_CRC_CHUNK))
        with open(path, "rb") as f:
            for key, (info, start) in entries.items():
                future = futures[key]
                try:
                    f.seek(start)
                    crc, left = 0, info.file_size
                    while left:
                        got = f.readinto(buffer[:min(left, _CRC_CHUNK)])
                        if not got:
                            raise CheckpointError(f"zip entry {info.filename!r}: the file ends inside it")
                        crc, left = zlib.crc32(buffer[:got], crc), left - got
                    future.set_result(crc == info.CRC)
                except Exception as err:  # handed to whoever reads the storage  # noqa: BLE001
                    future.set_exception(err)

    threading.Thread(target=run, name="clip_jax zip CRC-32", daemon=True).start()
    return futures


def _check_crc(path: str, info: zipfile.ZipInfo, check: Future) -> None:
    try:
        good = check.result()
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint: {type(err).__name__}: {err}") from None
    if not good:
        raise CheckpointError(f"{path}: zip entry {info.filename!r} is corrupt: bad CRC-32")


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
