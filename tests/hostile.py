"""Hand-assembled pickles and checkpoint containers for reader tests.

Nothing here imports torch: the bytes are written opcode by opcode so that a
test controls exactly which globals, persistent ids and tensor views a file
contains, including ones torch would never write.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

PROTO2 = b"\x80\x02"
PROTO4 = b"\x80\x04"
STOP = b"."
MARK = b"("
TUPLE = b"t"
REDUCE = b"R"
BINPERSID = b"Q"
EMPTY_TUPLE = b")"
NEWFALSE = b"\x89"
NONE = b"N"


def glob(module: str, name: str) -> bytes:
    """GLOBAL opcode: push module.name (resolved by the unpickler's find_class)."""
    return b"c" + f"{module}\n{name}\n".encode()


def stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL opcode (protocol 4): module and name come from the stack."""
    return string(module) + string(name) + b"\x93"


def inst(module: str, name: str, *args: bytes) -> bytes:
    """INST opcode: find_class(module, name) then call it with the marked args."""
    return MARK + b"".join(args) + b"i" + f"{module}\n{name}\n".encode()


def string(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def integer(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def call(func: bytes, *args: bytes) -> bytes:
    """func(*args) through REDUCE."""
    return func + tup(*args) + REDUCE


def dict_(**items: bytes) -> bytes:
    return b"}" + MARK + b"".join(string(k) + v for k, v in items.items()) + b"u"


def storage_pid(key: str, numel: int, storage_type: str = "FloatStorage", legacy: bool = False) -> bytes:
    fields = [string("storage"), glob("torch", storage_type), string(key), string("cpu"), integer(numel)]
    if legacy:
        fields.append(NONE)
    return tup(*fields) + BINPERSID


def tensor(pid: bytes, offset: int, size: tuple, stride: tuple) -> bytes:
    """_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    return call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        pid,
        integer(offset),
        tup(*map(integer, size)),
        tup(*map(integer, stride)),
        NEWFALSE,
        glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE,
    )


def system_payload(command: str, how: str) -> bytes:
    """A complete pickle that runs os.system(command) under the stock unpickler."""
    if how == "GLOBAL":
        return PROTO2 + call(glob("os", "system"), string(command)) + STOP
    if how == "posix":
        return PROTO2 + call(glob("posix", "system"), string(command)) + STOP
    if how == "STACK_GLOBAL":
        return PROTO4 + call(stack_global("os", "system"), string(command)) + STOP
    if how == "INST":
        return PROTO2 + inst("os", "system", string(command)) + STOP
    raise ValueError(how)


def write_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None,
              root: str = "archive", extra: dict[str, bytes] | None = None) -> Path:
    """A torch.save-style zip archive around a given data.pkl."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/data.pkl", data_pkl)
        zf.writestr(f"{root}/byteorder", b"little")
        for key, data in (storages or {}).items():
            zf.writestr(f"{root}/data/{key}", data)
        zf.writestr(f"{root}/version", b"3\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def replace_zip_entry(src: Path, dst: Path, suffix: str, data: bytes) -> Path:
    """Copy an archive, replacing the entry whose name ends with `suffix`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, data if info.filename.endswith(suffix) else zin.read(info))
    return dst


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def write_legacy(path: Path, main_pkl: bytes, storages: list[tuple[str, int, bytes]] = ()) -> Path:
    """Legacy torch.save layout: magic, protocol, sys_info, main pickle, keys, storages.

    The header pickles hold only ints/dicts/strings, so stdlib pickle.dumps is fine.
    """
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps(sys_info, protocol=2), main_pkl,
             pickle.dumps([key for key, _, _ in storages], protocol=2)]
    for _key, numel, data in storages:
        parts.append(struct.pack("<q", numel) + data)
    path.write_bytes(b"".join(parts))
    return path


def write_deflated_zeros(path: Path, data_pkl: bytes, entry: str, size: int, root: str = "archive",
                         storages: dict[str, bytes] | None = None) -> Path:
    """A zip whose `entry` (under root/) is `size` zero bytes, deflated (~1000:1): a decompression bomb.
    Streamed, so writing it costs no memory; `data_pkl` is written unless `entry` replaces it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        if entry != "data.pkl":
            zf.writestr(f"{root}/data.pkl", data_pkl)
        for key, data in (storages or {}).items():
            zf.writestr(f"{root}/data/{key}", data)
        with zf.open(f"{root}/{entry}", "w", force_zip64=size >= 1 << 31) as f:
            chunk = bytes(1 << 22)
            for start in range(0, size, len(chunk)):
                f.write(chunk[: size - start])
    return path


def patch_central_entry(src: Path, dst: Path, name: str, size: int, crc: int) -> Path:
    """Copy an archive, changing one central-directory record's sizes (compressed and uncompressed)
    and CRC-32; the local header and the data stay as they are."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        pos = zf.start_dir
    fmt = zipfile.structCentralDir
    while data[pos:pos + 4] == b"PK\x01\x02":
        fields = list(struct.unpack_from(fmt, data, pos))
        n, m, k = fields[zipfile._CD_FILENAME_LENGTH:zipfile._CD_COMMENT_LENGTH + 1]
        if bytes(data[pos + 46:pos + 46 + n]).decode() == name:
            fields[zipfile._CD_CRC] = crc
            fields[zipfile._CD_COMPRESSED_SIZE] = fields[zipfile._CD_UNCOMPRESSED_SIZE] = size
            struct.pack_into(fmt, data, pos, *fields)
            dst.write_bytes(bytes(data))
            return dst
        pos += 46 + n + m + k
    raise KeyError(name)


def memo_bomb(index: int) -> bytes:
    """A 12-byte pickle that stores None at memo `index`: CPython's unpickler grows its memo table to
    2 x index entries (8 bytes each) first."""
    return PROTO2 + NONE + b"r" + struct.pack("<I", index) + STOP
