"""Property-based fuzzing of clip_jax.data.sources' readers of outside bytes (issue 23, class 9): the tar reader
(tar_members, TarShard), the parquet reader (ParquetShard) and brace expansion, each on mutated valid
inputs, held to tests/fuzz.bounded: it returns, or raises the project's own error, in bounded time and
memory. A sample may carry "__error__" or "__field_errors__"; its values must still be of their types."""

from __future__ import annotations

import io
import itertools
import re

import fsspec
import pytest
from hypothesis import given, strategies as st

from clip_jax.data.braces import braceexpand, iter_braceexpand
from clip_jax.data.sources import ParquetShard, TarShard
from clip_jax.data.tarstream import tar_members

from .fuzz import FUZZ, any_bytes, bounded, mutated
from .shards import hostile_seed_tar, make_samples, write_parquet, write_tar

_names = itertools.count()


def memory_file(data: bytes, suffix: str) -> str:
    """data as a fresh memory:// file (fsspec's in-memory store, so no tmp_path inside hypothesis)."""
    url = f"memory://fuzz-sources/{next(_names)}.{suffix}"
    with fsspec.open(url, "wb") as f:
        f.write(data)
    return url


def check_sample(s: dict) -> None:
    assert isinstance(s["key"], str) and s["key"].encode("utf-8")  # printable as UTF-8, whatever the name
    assert s["image"] is None or isinstance(s["image"], bytes)
    assert s["txt"] is None or isinstance(s["txt"], str)
    assert s["json"] is None or isinstance(s["json"], dict)
    assert s["cls"] is None or (isinstance(s["cls"], int) and -(2**63) <= s["cls"] < 2**63)
    assert isinstance(s.get("__error__", ""), str) and isinstance(s.get("__field_errors__", []), list)


def read_shard(shard) -> int:
    n = 0
    for s in shard:
        check_sample(s)
        n += 1
    return n


def tar_seed() -> bytes:
    """A WebDataset shard (jpg, txt, json) followed by the pax, GNU long-name and block-boundary members."""
    buf = io.BytesIO()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = write_tar(f"{tmp}/s.tar", make_samples(0, 2)).read_bytes().rstrip(b"\0")
    buf.write(data + bytes(-len(data) % 512))
    return buf.getvalue() + hostile_seed_tar()


TAR = tar_seed()


@FUZZ
@given(data=any_bytes(TAR))
def test_tar_members_fuzz(data):
    bounded(lambda: sum(len(d) for _, d in tar_members(io.BytesIO(data), "fuzz.tar")))


@FUZZ
@given(data=mutated(TAR))
def test_tar_shard_fuzz(data):
    url = memory_file(data, "tar")
    try:
        bounded(lambda: read_shard(TarShard(url)))
    finally:
        fsspec.filesystem("memory").rm(url)


def parquet_seed(struct: bool) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        samples = make_samples(3, 3)
        for s in samples:
            s["jpg"] = s["jpg"][:64]  # small cells: mutations should reach the footer, not only image bytes
        return write_parquet(f"{tmp}/p.parquet", samples, struct=struct, row_group_size=2).read_bytes()


PARQUET = [parquet_seed(False), parquet_seed(True)]


@FUZZ
@given(data=st.sampled_from(PARQUET).flatmap(mutated), image_paths=st.booleans())
def test_parquet_shard_fuzz(data, image_paths):
    url = memory_file(data, "parquet")
    try:
        bounded(lambda: read_shard(ParquetShard(url, image_paths=image_paths)))
    finally:
        fsspec.filesystem("memory").rm(url)


TOKENS = ["{", "}", ",", "..", "0", "9", "00", "-", "a", "/", "{0..9}", "{a,b}", "{00..99}", "{0..99999999}", "{,}"]
PATTERN = st.lists(st.sampled_from(TOKENS), max_size=30).map("".join)


@FUZZ
@given(pattern=st.one_of(PATTERN, st.text(max_size=40)))
def test_braceexpand_fuzz(pattern):
    """Any pattern: its names (up to a limit), or LimitError/InputError; the count is known before the names."""
    names = bounded(lambda: braceexpand(pattern, limit=10_000), seconds=2, megabytes=32)
    assert names is None or (names and all(isinstance(n, str) for n in names))
    first = bounded(lambda: list(itertools.islice(iter_braceexpand(pattern), 10)), seconds=2, megabytes=8)
    assert first is None or first == (names or first)[:10] or names is None


@pytest.mark.parametrize("seed", PARQUET)
def test_the_fuzz_seeds_are_valid(seed):
    """The seeds read whole (else the fuzz tests would only see errors)."""
    assert read_shard(ParquetShard(memory_file(seed, "parquet"))) == 3
    assert read_shard(TarShard(memory_file(TAR, "tar"))) == 2 + 6


HEADERS = [TAR[i:i + 512] for i in range(0, len(TAR), 512) if TAR[i + 257:i + 262] == b"ustar"]


def with_checksum(block: bytes) -> bytes:
    b = bytearray(block[:148] + b" " * 8 + block[156:])
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


@FUZZ
@given(block=st.sampled_from(HEADERS).flatmap(mutated), fix=st.booleans())
def test_the_header_parser_reads_what_tarfile_reads(block, fix):
    """tar_members parses headers itself (twice tarfile's speed): on any block, what it accepts tarfile
    accepts with the same name, size and type; it refuses only what tarfile refuses, or numbers that
    aren't plain octal digits (tarfile's int() also takes "+7", "0o7", "1_0")."""
    import tarfile

    from clip_jax.data.tarstream import _header

    block = (block + bytes(512))[:512]
    block = with_checksum(block) if fix else block
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        theirs = (info.name, info.size, info.type)
    except tarfile.TarError:
        theirs = None
    try:
        ours = _header(block)
    except ValueError:
        ours = None
    if ours is not None and theirs is not None and theirs[2] != tarfile.DIRTYPE:
        assert ours == theirs
    if theirs is not None and ours is None:
        fields = (block[124:136], block[148:156])
        assert any(f[0] not in (0x80, 0xFF) and not re.fullmatch(rb"[0-7]*", f.split(b"\0")[0].strip())
                   for f in fields), block
