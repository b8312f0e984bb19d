"""PyTorch's file formats written without torch: torch.save's zip archive and safetensors, from a
state dict of numpy arrays (the mirror of torch_files.py, the reader).

torch.save's format, written here by hand: a zip archive with one folder holding `data.pkl` (a pickle,
protocol 2, of an OrderedDict name -> tensor), `byteorder`, `version`, and each tensor's bytes as
`data/<key>`. A tensor is pickled as torch's own reduction, `torch._utils._rebuild_tensor_v2(storage, 0,
size, stride, False, OrderedDict())`, its storage as the persistent id ('storage', torch.<T>Storage,
key, 'cpu', numel). Those are exactly the globals `torch.load(weights_only=True)` allows. The data
records start at 64-byte boundaries, as torch aligns them (so `torch.load(mmap=True)` works too).
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..fileio import atomic_write
from .torch_pickle import STORAGE_DTYPES

ALIGNMENT = 64  # torch.save's data record alignment (`.storage_alignment`)
# numpy dtype -> torch's legacy storage class, the type tag torch.load reads a storage's dtype from:
# the reader's table, inverted.
STORAGE_TYPES = {np.dtype(dtype): name for name, dtype in STORAGE_DTYPES.items()}


# --- torch.save's pickle ----------------------------------------------------------------------------


class _Pickle:
    """A protocol-2 pickle writer for exactly one shape of object: an OrderedDict of tensors as torch
    reduces them. Globals and repeated strings are memoized (BINPUT/BINGET) as pickle itself does."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo: dict[tuple, int] = {}

    def _memoized(self, key: tuple, write) -> None:
        if key in self.memo:
            i = self.memo[key]
            self.out += b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)  # BINGET / LONG_BINGET
            return
        write()
        i = self.memo[key] = len(self.memo)
        self.out += b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)  # BINPUT / LONG_BINPUT

    def global_(self, module: str, name: str) -> None:
        self._memoized(("global", module, name), lambda: self.out.extend(f"c{module}\n{name}\n".encode()))

    def str_(self, s: str, memo: bool = False) -> None:
        def write():
            b = s.encode("utf-8")
            self.out.extend(b"X" + struct.pack("<I", len(b)) + b)  # BINUNICODE

        self._memoized(("str", s), write) if memo else write()

    def int_(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])  # BININT1
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)  # BININT2
        elif -(2**31) <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)  # BININT
        else:
            b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(b)]) + b  # LONG1

    def int_tuple(self, values: tuple[int, ...]) -> None:
        if not values:
            self.out += b")"  # EMPTY_TUPLE
            return
        self.out += b"("  # MARK
        for v in values:
            self.int_(v)
        self.out += b"t"  # TUPLE

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # EMPTY_TUPLE, REDUCE: OrderedDict()

    def tensor(self, key: str, array: np.ndarray) -> None:
        """_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict()), the storage a
        persistent id ('storage', torch.<T>Storage, key, 'cpu', numel): contiguous, not a view."""
        storage = STORAGE_TYPES[array.dtype]
        strides = tuple(int(np.prod(array.shape[i + 1:], dtype=np.int64)) for i in range(array.ndim))
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # MARK args, MARK persistent id
        self.str_("storage", memo=True)
        self.global_("torch", storage)
        self.str_(key)
        self.str_("cpu", memo=True)
        self.int_(int(array.size))
        self.out += b"tQ"  # TUPLE, BINPERSID
        self.int_(0)  # storage offset
        self.int_tuple(tuple(int(d) for d in array.shape))
        self.int_tuple(strides)
        self.out += b"\x89"  # NEWFALSE: requires_grad
        self.empty_ordered_dict()  # backward_hooks
        self.out += b"tR"  # TUPLE, REDUCE

    def state_dict(self, names: list[str], arrays: list[np.ndarray]) -> bytes:
        self.empty_ordered_dict()
        self.out += b"("  # MARK
        for key, (name, array) in enumerate(zip(names, arrays)):
            self.str_(name)
            self.tensor(str(key), array)
        self.out += b"u."  # SETITEMS, STOP
        return bytes(self.out)


def _contiguous_le(name: str, value: np.ndarray) -> np.ndarray:
    """C-contiguous, little-endian (torch's byteorder record says "little")."""
    value = np.asarray(value)
    if value.dtype.byteorder == ">":
        value = value.astype(value.dtype.newbyteorder("<"))
    if value.dtype not in STORAGE_TYPES:
        raise TypeError(f"{name}: cannot export a tensor of dtype {value.dtype} (shape {value.shape}); "
                        f"supported: {', '.join(sorted(str(d) for d in STORAGE_TYPES))}")
    return np.ascontiguousarray(value).reshape(value.shape)


def _write_record(zf: zipfile.ZipFile, name: str, data: bytes | np.ndarray, align: bool) -> None:
    """One zip entry; with `align`, an extra field pads the local header so the data starts at a
    multiple of ALIGNMENT, as torch's writer does."""
    payload = data if isinstance(data, bytes) else np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    size = len(payload) if isinstance(payload, bytes) else payload.size
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: same params, same bytes
    info.compress_type = zf.compression
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule for a zip64 local header
    if align and zf.compression == zipfile.ZIP_STORED:
        header = 30 + len(name.encode("utf-8")) + (20 if zip64 else 0)
        pad = (-(zf.start_dir + header + 4)) % ALIGNMENT
        info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB", as torch's writer names it
    with zf.open(info, "w", force_zip64=zip64) as f:
        f.write(payload if isinstance(payload, bytes) else memoryview(payload))


def write_torch_zip(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray], *, compress: bool = False,
                    extra: Mapping[str, bytes] | None = None) -> None:
    """Write {name: array} as torch.save(OrderedDict of tensors) would, atomically.

    compress: deflate the entries (smaller for compressible weights, such as zero rows; torch.load reads
    them, but `torch.load(mmap=True)` needs the default stored, aligned entries).
    extra: {name: bytes} records beside data.pkl (the model's config); torch.load reads only the records
    the pickle names, so they change nothing for it.
    """
    path = Path(path)
    # torch names the folder after the file; any single top folder loads.
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) or "archive"
    names = list(state_dict)
    arrays = [_contiguous_le(k, state_dict[k]) for k in names]
    pickle_bytes = _Pickle().state_dict(names, arrays)

    def write(tmp: str) -> None:
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as zf:
            _write_record(zf, f"{folder}/data.pkl", pickle_bytes, align=False)
            _write_record(zf, f"{folder}/.format_version", b"1", align=False)
            _write_record(zf, f"{folder}/.storage_alignment", str(ALIGNMENT).encode(), align=False)
            _write_record(zf, f"{folder}/byteorder", b"little", align=False)
            for key, array in enumerate(arrays):
                _write_record(zf, f"{folder}/data/{key}", array, align=True)
            _write_record(zf, f"{folder}/version", b"3\n", align=False)
            for name, data in (extra or {}).items():
                _write_record(zf, f"{folder}/{name}", data, align=False)

    atomic_write(path, write)


def write_safetensors(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """{name: array} as a .safetensors file (open_clip reads these with safetensors.torch.load_file).
    metadata: strings kept in the header beside torch's {"format": "pt"} (the model's config)."""
    # np.asarray(order="C"), not np.ascontiguousarray, which turns a 0-d logit_scale into shape (1,).
    tensors = {k: np.asarray(_contiguous_le(k, v), order="C") for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={**(metadata or {}), "format": "pt"}))
