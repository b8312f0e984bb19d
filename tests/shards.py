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
