"""WebDataset tar shards and parquet files for tests and benchmarks, written here (nothing downloaded)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A small random JPEG (distinct per seed)."""
    rng = np.random.RandomState(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_tar(path: str | os.PathLike, samples: list[dict]) -> Path:
    """samples: [{"__key__": key, "jpg": bytes, "txt": str, "json": dict, ...}] -> a WebDataset shard."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for field, value in s.items():
                if field == "__key__":
                    continue
                if isinstance(value, str):
                    value = value.encode()
                elif isinstance(value, (dict, list)):
                    value = json.dumps(value).encode()
                info = tarfile.TarInfo(f"{s['__key__']}.{field}")
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return path


def make_samples(shard: int, count: int, corrupt: int | None = None, start_seed: int = 0) -> list[dict]:
    """`count` samples of shard `shard`: a JPEG, a caption and json metadata each; sample `corrupt` (if
    given) has bytes that are not an image."""
    out = []
    for i in range(count):
        key = f"{shard:05d}{i:04d}"
        img = jpeg(start_seed + 1000 * shard + i, (32 + i % 7, 28 + i % 5))
        if i == corrupt:
            img = b"\xff\xd8\xff not really a jpeg"
        out.append({"__key__": key, "jpg": img, "txt": f"photo {i} of shard {shard}",
                    "json": {"width": 32 + i % 7, "source": f"s{shard}", "score": i / 10}})
    return out


def write_parquet(path: str | os.PathLike, samples: list[dict], struct: bool = False, row_group_size: int = 4) -> Path:
    """The samples as parquet: key, image (raw bytes, or {bytes, path} structs), caption."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [s["jpg"] for s in samples]
    if struct:
        image_col = pa.array([{"bytes": b, "path": f"{s['__key__']}.jpg"} for b, s in zip(images, samples)],
                             pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        image_col = pa.array(images, pa.binary())
    table = pa.table({"key": [s["__key__"] for s in samples], "image": image_col,
                      "caption": [s["txt"] for s in samples]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return Path(path)


# --- raw tar building blocks, for headers no tar writer would produce (hostile-input tests, fuzz seeds) ---


def tar_header(name: str | bytes, size: int = 0, typeflag: bytes = b"0", size_field: bytes | None = None,
               checksum: bool = True) -> bytes:
    """One 512-byte ustar header. `size_field` (12 bytes) replaces the octal size as written, e.g. a
    base-256 value; `checksum=False` leaves the checksum wrong."""
    name = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    h = bytearray(512)
    h[0:len(name)] = name[:100]
    h[100:108] = b"0000644\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = size_field if size_field is not None else b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156:157] = typeflag
    h[257:265] = b"ustar\x0000"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % (sum(h) + (0 if checksum else 1))
    return bytes(h)


def tar_block(data: bytes) -> bytes:
    """Member data padded to whole 512-byte blocks."""
    return data + bytes(-len(data) % 512)


def tar_member(name: str | bytes, data: bytes, **header) -> bytes:
    return tar_header(name, len(data), **header) + tar_block(data)


def pax_record(key: str, value: str | bytes) -> bytes:
    """"%d key=value\\n" with the length counting itself."""
    body = b" " + key.encode() + b"=" + (value.encode() if isinstance(value, str) else value) + b"\n"
    n = len(body) + 1
    while len(str(n).encode() + body) != n:
        n += 1
    return str(n).encode() + body


def pax_member(records: bytes, name: str = "././@PaxHeader") -> bytes:
    """A pax extended header member ('x') carrying `records` for the member after it."""
    return tar_header(name, len(records), typeflag=b"x") + tar_block(records)


END_OF_ARCHIVE = bytes(1024)  # two zero blocks


def write_members(path: str | os.PathLike, members: list[tuple[str, bytes]], format: int = tarfile.PAX_FORMAT) -> Path:
    """(name, data) members written by tarfile, in order (names and sizes of any kind)."""
    path = Path(path)
    with tarfile.open(path, "w", format=format) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def hostile_seed_tar() -> bytes:
    """A small valid shard holding every kind of member the reader handles: plain, pax path and size,
    a GNU long name, a directory, members of 0, 511, 512, 513 and 1024 bytes: the fuzz tests' seed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, size in [("k0.jpg", 0), ("k0.txt", 511), ("k1.jpg", 512), ("k1.json", 2), ("k2.cls", 1),
                           ("d" * 120 + "/k3.jpg", 513), ("k4.jpg", 1024)]:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO((b"{}" if name.endswith("json") else b"7" if name.endswith("cls")
                                          else bytes(range(256)) * 5)[:size]))
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    data = buf.getvalue().rstrip(b"\0")
    data = data + bytes(-len(data) % 512)
    records = pax_record("path", "é" * 80 + ".jpg") + pax_record("size", "3")
    return data + pax_member(records) + tar_header("x.jpg", 0) + tar_block(b"abc") + END_OF_ARCHIVE
