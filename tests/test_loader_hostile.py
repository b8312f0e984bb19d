"""clip_jax.data.loader on hostile input: tar shards cut at block boundaries and inside them, lying
lengths, empty files, files that are not tars, parquet columns of the wrong types, bad samples of every
kind. Each is logged through on_error (a shard once) and skipped; a reader left with nothing usable
raises ShardError within a time bound instead of spinning; memory stays within the buffer's cap and two
batches ahead; and a hypothesis fuzz test over mutated shard bytes holds the loader to tests/fuzz.bounded
(it returns batches or raises the project's own error, in bounded time and memory)."""

from __future__ import annotations

import io
import itertools
import tarfile
import threading
import time
import tracemalloc
from collections import Counter

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, strategies as st

from clip_jax.data.loader import Loader
from clip_jax.errors import InputError, ShardError

from .fuzz import FUZZ, any_bytes, bounded
from .loader_data import TRANSFORM, captions, loader, take, tar_shards, tokenize
from .shards import END_OF_ARCHIVE, jpeg, make_samples, tar_header, write_tar
from .test_sources_fuzz import memory_file  # the sources' fuzz tests' memory:// files

GOOD = {f"photo {i} of shard 0" for i in range(6)}


def shard_errors(errors: list) -> list:
    return [e for e in errors if e[1] == ""]


def test_a_tar_cut_short_anywhere_is_logged_once_and_its_whole_samples_used(tmp_path):
    good = tar_shards(tmp_path, [6])[0]
    data = write_tar(tmp_path / "whole.tar", make_samples(1, 4)).read_bytes().rstrip(b"\0")
    data += bytes(-len(data) % 512) + END_OF_ARCHIVE  # without tarfile's record padding: the marker ends it
    # cuts: inside the first header, at block boundaries, inside data, at the marker (one zero block and
    # the end of the data is a whole tar, as tarfile and GNU tar read it: not cut there)
    for cut in (0, 1, 511, 512, 1024, 1536, 2047, len(data) // 2, len(data) - 1024, len(data) - 1000):
        bad = tmp_path / f"cut{cut}.tar"
        bad.write_bytes(data[:cut])
        errors: list = []
        got = {c for b in take(loader([good, str(bad)], errors, batch_size=2, shuffle_buffer=3), 12)
               for c in captions(b)}
        # the good shard whole; of the cut one, at most its first 3 samples (the 4th ends at the cut or after)
        assert GOOD <= got <= GOOD | {f"photo {i} of shard 1" for i in range(3)}, cut
        assert len(shard_errors(errors)) == 1 and shard_errors(errors)[0][0] == str(bad), (cut, errors)
        assert "cut short" in shard_errors(errors)[0][2] or "empty file" in shard_errors(errors)[0][2]


def test_lying_lengths_empty_files_and_non_tars_are_logged_and_skipped(tmp_path):
    good = tar_shards(tmp_path, [6])[0]
    huge = tmp_path / "huge.tar"  # a member claiming 2**62 bytes (base-256)
    huge.write_bytes(tar_header("k.jpg", size_field=b"\x80" + (2**62).to_bytes(11, "big")) + END_OF_ARCHIVE)
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "text.tar").write_bytes(b"this is not a tar archive\n" * 40)
    (tmp_path / "none.tar").write_bytes(END_OF_ARCHIVE)  # a valid tar without samples: nothing to log
    names = [str(tmp_path / n) for n in ("huge.tar", "empty.tar", "text.tar", "none.tar")]
    errors: list = []
    batches = take(loader([good, *names], errors, batch_size=2, shuffle_buffer=2), 12)  # 4 epochs of 6
    assert Counter(c for b in batches for c in captions(b)) == {c: 4 for c in GOOD}
    logged = {e[0]: e[2] for e in shard_errors(errors)}
    assert len(shard_errors(errors)) == 3 and set(logged) == set(names[:3])  # each once, over 4 epochs
    assert "claims" in logged[names[0]] and "empty file" in logged[names[1]] and "bad header" in logged[names[2]]


def test_every_shard_unusable_raises_shard_error_without_hanging(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"")
    (tmp_path / "b.tar").write_bytes(END_OF_ARCHIVE)
    names = [str(tmp_path / "a.tar"), str(tmp_path / "b.tar"), str(tmp_path / "missing.tar")]
    errors: list = []
    t0 = time.perf_counter()
    with pytest.raises(ShardError, match="reader 0: no usable sample in epoch 0 of 3 shards"):
        take(loader(names, errors, batch_size=2), 1)
    assert time.perf_counter() - t0 < 5
    assert {e[0] for e in errors} == {names[0], names[2]}  # the empty tar is no error, just empty


def test_a_reader_sharing_a_shard_too_small_for_it_says_so(tmp_path):
    shard = tar_shards(tmp_path, [2])
    with pytest.raises(ShardError, match="reader 2: .*fewer shards than readers"):
        take(loader(shard, batch_size=3, readers=3), 1)


def test_one_reader_with_nothing_raises_even_if_others_have_data(tmp_path):
    good = tar_shards(tmp_path, [6])[0]
    (tmp_path / "empty.tar").write_bytes(END_OF_ARCHIVE)
    with pytest.raises(ShardError, match="reader 1: .*empty.tar: the shards hold no samples"):
        take(loader([good, str(tmp_path / "empty.tar")], batch_size=2, readers=2), 1)


def test_every_sample_bad_raises_after_one_epoch(tmp_path):
    samples = make_samples(0, 5)
    for s in samples:
        s["jpg"] = b"\x89PNG not an image"
    shard = str(write_tar(tmp_path / "bad.tar", samples))
    errors: list = []
    t0 = time.perf_counter()
    with pytest.raises(ShardError, match="every sample of a whole epoch was refused"):
        take(loader([shard], errors, batch_size=1, shuffle_buffer=2), 1)
    assert time.perf_counter() - t0 < 5
    assert sorted(e[1] for e in errors) == [s["__key__"] for s in samples]  # each logged once (epoch 0)
    assert all(e[2] == "image: not a recognized image format" for e in errors)


def test_bad_samples_of_every_kind_are_logged_with_their_reason(tmp_path):
    samples = make_samples(0, 9)
    del samples[1]["txt"]  # no caption
    samples[2]["txt"] = "   "  # an empty one
    del samples[3]["jpg"]  # no image
    samples[4]["jpg"] = jpeg(4, (200, 200))  # over max_image_bytes
    samples[5]["txt"] = "REFUSED by the tokenizer"
    samples[6]["txt"] = b"x" * ((1 << 20) + 1)  # over the reader's 1 MiB caption bound (a dropped field)
    shard = str(write_tar(tmp_path / "kinds.tar", samples))

    def picky(texts):
        if any(t.startswith("REFUSED") for t in texts):
            raise InputError("caption refused")
        return tokenize(texts)

    errors: list = []
    ld = Loader([shard], batch_size=1, readers=1, transform=TRANSFORM.pixels, tokenize=picky, shuffle_buffer=1,
                max_image_bytes=8000, on_error=lambda *a: errors.append(a))
    got = [c for b in take(ld, 9) for c in captions(b)]
    assert set(got) == {"photo 0 of shard 0", "photo 7 of shard 0", "photo 8 of shard 0"}
    reasons = {e[1][-1]: e[2] for e in errors}
    assert len(errors) == 6 and all(e[0] == shard for e in errors)
    assert reasons["1"].startswith("no caption") and reasons["2"].startswith("no caption")
    assert reasons["3"].startswith("no image")
    assert reasons["4"].endswith("over the 8,000 an image may hold (max_image_bytes)")
    assert reasons["5"] == "caption: caption refused"
    assert reasons["6"].startswith("txt: ") and "1 MiB" in reasons["6"]


def test_parquet_columns_of_the_wrong_types(tmp_path):
    good = tmp_path / "good.parquet"
    samples = make_samples(0, 6)
    pq.write_table(pa.table({"image": [s["jpg"] for s in samples], "caption": [s["txt"] for s in samples]}), good)
    strings = tmp_path / "strings.parquet"  # image cells that are text, captions that are numbers
    pq.write_table(pa.table({"image": ["a.jpg", "b.jpg"], "caption": pa.array([1, 2], pa.int64())}), strings)
    no_columns = tmp_path / "nothing.parquet"
    pq.write_table(pa.table({"width": [1, 2]}), no_columns)
    errors: list = []
    batches = take(loader([str(good), str(strings), str(no_columns)], errors, batch_size=2, shuffle_buffer=2), 6)
    assert {c for b in batches for c in captions(b)} == GOOD
    by_shard = {}
    for shard, key, reason in errors:
        by_shard.setdefault(shard, []).append((key, reason))
    assert [r for _, r in by_shard[str(strings)]] == ["image column 'image' holds str, not bytes (a path? paths are "
                                                      "not opened unless asked: image_paths=True, --image-paths)"] * 2
    assert by_shard[str(no_columns)] == [("", by_shard[str(no_columns)][0][1])]
    assert "neither an image nor a caption column" in by_shard[str(no_columns)][0][1]
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really PAR1")
    everything = [str(good), str(strings), str(no_columns), str(tmp_path / "junk.parquet")]
    assert loader(everything, batch_size=1).samples_per_epoch() == 6 + 2 + 2  # the junk file's footer: 0 rows
    with pytest.raises(ShardError, match="caption: int64, not a string"):
        pq.write_table(pa.table({"image": [s["jpg"] for s in samples[:2]], "caption": pa.array([1, 2])}), strings)
        take(loader([str(strings)], batch_size=1), 1)


def test_memory_stays_within_the_buffer_cap(tmp_path):
    """4 shards of 30 samples of ~25 KB images, one reader. With a 256 KB buffer cap the loader's peak
    (tracemalloc: Python objects and numpy buffers, every thread) stays under 1 MB (0.6 measured); with a cap that
    holds every sample, the same run holds the data (~3 MB): the cap is what bounds it."""
    for s in range(4):
        samples = make_samples(s, 30)
        for i, x in enumerate(samples):
            x["jpg"] = jpeg(100 * s + i, (160, 160))
        write_tar(tmp_path / f"{s}.tar", samples)
    names = [str(tmp_path / f"{s}.tar") for s in range(4)]

    def peak(shuffle_bytes: int) -> float:
        tracemalloc.start()
        try:
            take(loader(names, batch_size=2, shuffle_buffer=10_000, shuffle_bytes=shuffle_bytes,
                        max_image_bytes=64_000), 40)
            return tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

    capped, whole = peak(256_000), peak(64 << 20)
    assert capped < 1.0 and whole > 2.5, (capped, whole)


def test_decoding_runs_at_most_two_batches_ahead(tmp_path):
    names = tar_shards(tmp_path, [40])
    calls = itertools.count()

    def counting(data: bytes):
        next(calls)
        return TRANSFORM.pixels(data)

    ld = Loader(names, batch_size=4, readers=1, transform=counting, tokenize=tokenize, shuffle_buffer=4)
    it = ld.batches()
    next(it)
    time.sleep(0.5)  # time for the readers to run ahead as far as the bound lets them
    decoded = next(calls)
    it.close()
    assert 4 + 8 <= decoded <= 4 + 8 + 2, decoded  # the batch returned, two batches queued, one in hand


def test_closing_the_iterator_stops_its_threads(tmp_path):
    names = tar_shards(tmp_path, [10, 10])
    before = threading.active_count()
    for _ in range(3):
        take(loader(names, batch_size=2, readers=2, num_threads=3), 2)
    deadline = time.perf_counter() + 3
    while threading.active_count() > before and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def _seed_tar() -> bytes:
    """3 samples (jpg, txt) as tarfile writes them, the end-of-archive blocks included."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for s in make_samples(0, 3):
            for field in ("jpg", "txt"):
                value = s[field] if field == "jpg" else s[field].encode()
                info = tarfile.TarInfo(f"{s['__key__']}.{field}")
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


TAR = _seed_tar()


def _three_batches(*urls: str) -> int:
    rows = 0
    for b in take(loader(list(urls), batch_size=2, shuffle_buffer=2, num_threads=2), 3):
        assert b.images.shape == (2, 16, 16, 3) and b.tokens.shape == (2, 32)
        rows += len(b.images)
    return rows


GOOD_URL = memory_file(TAR, "tar")


@FUZZ
@given(data=any_bytes(TAR), beside_a_good_shard=st.booleans())  # mutations, random bytes, every prefix
def test_loader_fuzz(data, beside_a_good_shard):
    """Alone, a broken shard mostly ends in ShardError; beside a good one, its whole samples reach batches."""
    url = memory_file(data, "tar")
    try:
        rows = bounded(lambda: _three_batches(*([GOOD_URL] if beside_a_good_shard else []), url))
        assert rows == 6 or not beside_a_good_shard
    finally:
        fsspec.filesystem("memory").rm(url)


def test_fuzz_seed_is_read_whole():
    assert bounded(lambda: _three_batches(GOOD_URL)) == 6



def test_an_on_error_that_raises_stops_the_loader_with_its_error(tmp_path):
    """The job's errors.tsv writer failing (a full disk) reaches the caller, from a reader thread (a shard
    error) or from the batch being built (an image error), instead of a hang."""
    good = tar_shards(tmp_path, [4], corrupt={0: 1})[0]
    (tmp_path / "junk.tar").write_bytes(b"junk" * 300)

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    for names in ([good, str(tmp_path / "junk.tar")], [good]):
        ld = Loader(names, batch_size=4, readers=1, transform=TRANSFORM.pixels, tokenize=tokenize, on_error=full_disk)
        with pytest.raises(OSError, match="No space left"):
            take(ld, 2)


def test_a_plain_transform_or_tokenizer_error_is_the_sample_s(tmp_path):
    """A transform of the caller's own (Pillow directly: OSError, ValueError) and a tokenizer's ValueError
    skip the sample with the error's type in the reason."""
    from PIL import Image

    good = tar_shards(tmp_path, [6], corrupt={0: 2})

    def plain(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((16, 16)))

    def fussy(texts):
        if texts == ["photo 4 of shard 0"]:
            raise ValueError("no fours")
        return tokenize(texts)

    errors: list = []
    ld = Loader(good, batch_size=4, readers=1, transform=plain, tokenize=fussy, on_error=lambda *a: errors.append(a))
    assert set(captions(take(ld, 1)[0])) == {f"photo {i} of shard 0" for i in (0, 1, 3, 5)}
    reasons = sorted(e[2] for e in errors)
    assert reasons[0] == "caption: ValueError: no fours" and reasons[1].startswith("image: UnidentifiedImageError")
