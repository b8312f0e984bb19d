"""clip_jax.data.loader: the training input. The global batch (reader r's rows in block r, whatever the
process count), determinism from the seed, epochs that are permutations and reshuffle, resume from a
position bit for bit (across an epoch's end, and from the merged positions of two processes into one),
shards shared by readers, parquet and fsspec URLs, and the refusals of a bad configuration."""

from __future__ import annotations

import json
from collections import Counter

import fsspec
import numpy as np
import pytest

from clip_jax.data.loader import Loader, merge_positions, reader_shards
from clip_jax.errors import InputError

from .loader_data import TRANSFORM, captions, loader, parquet_shards, same, shard_of, take, tar_shards, tokenize
from .shards import make_samples, write_tar


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """5 tar shards of unequal sizes (43 samples), for 4 readers: reader 0 owns shards 0 and 4."""
    return tar_shards(tmp_path_factory.mktemp("five"), [9, 7, 10, 8, 9])


def test_global_batch_is_reader_blocks_in_reader_order(five):
    batches = take(loader(five, batch_size=8, readers=4, shuffle_buffer=4), 6)
    for b in batches:
        assert b.images.shape == (8, 16, 16, 3) and b.images.dtype == np.uint8 and b.tokens.shape == (8, 32)
        # rows 2r, 2r+1 come from reader r, which owns shards r, r + 4, ...
        assert [shard_of(c) % 4 for c in captions(b)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batches[-1].position["at"].keys() == {"0", "1", "2", "3"}


def test_same_seed_same_batches_other_seed_other_order(five):
    a = take(loader(five, batch_size=4, readers=2, shuffle_buffer=6, seed=3), 5)
    b = take(loader(five, batch_size=4, readers=2, shuffle_buffer=6, seed=3, num_threads=1), 5)
    c = take(loader(five, batch_size=4, readers=2, shuffle_buffer=6, seed=4), 5)
    assert all(same(x, y) for x, y in zip(a, b))  # 1 decoding thread or 2: rows in draw order
    assert [captions(x) for x in a] != [captions(x) for x in c]


def test_epochs_are_permutations_reshuffled_each_epoch(five):
    all_captions = sorted(f"photo {i} of shard {s}" for s, n in enumerate([9, 7, 10, 8, 9]) for i in range(n))
    batches = take(loader(five, batch_size=1, readers=1, shuffle_buffer=10, seed=1), 43 * 3)
    epochs = [[c for b in batches[43 * e: 43 * (e + 1)] for c in captions(b)] for e in range(3)]
    assert [sorted(e) for e in epochs] == [all_captions] * 3  # each epoch: every sample once
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != epochs[2]  # a new order each epoch
    assert [b.epoch for b in batches[42:44]] == [0, 1] and batches[-1].epoch == 2
    # the shuffle mixes shards: the first epoch is not shard after shard
    assert [shard_of(c) for c in epochs[0]] != sorted(shard_of(c) for c in epochs[0])


def test_process_count_does_not_change_the_global_batch(five):
    """readers=4: one process, or two of two readers each, give the same global batches (through
    epoch rollovers: 20 batches of 8 are ~4 epochs of the smallest reader)."""
    one = take(loader(five, batch_size=8, readers=4, shuffle_buffer=5), 20)
    p0 = take(loader(five, batch_size=8, readers=4, shuffle_buffer=5, process_index=0, process_count=2), 20)
    p1 = take(loader(five, batch_size=8, readers=4, shuffle_buffer=5, process_index=1, process_count=2), 20)
    for whole, a, b in zip(one, p0, p1):
        assert a.images.shape[0] == b.images.shape[0] == 4
        assert np.array_equal(whole.images, np.concatenate([a.images, b.images]))
        assert np.array_equal(whole.tokens, np.concatenate([a.tokens, b.tokens]))
        assert merge_positions([a.position, b.position]) == whole.position


def test_resume_gives_the_same_next_batches_bit_for_bit(five):
    make = lambda: loader(five, batch_size=6, readers=2, shuffle_buffer=7, seed=5)  # noqa: E731
    run = take(make(), 24)  # reader 0 (shards 0, 2, 4: 28 samples) turns its epoch at batch ~9
    for k in (0, 4, 9, 10, 17):
        position = json.loads(json.dumps(run[k].position))  # saved as JSON
        resumed = take(make(), 24 - k - 1, position)
        assert all(same(x, y) for x, y in zip(resumed, run[k + 1:])), k
        assert [b.position for b in resumed] == [b.position for b in run[k + 1:]]


def test_resume_from_two_processes_into_one(five):
    """The merged position of a two-process run resumes a one-process run (and the reverse split)."""
    kw = dict(batch_size=8, readers=4, shuffle_buffer=5)
    p0 = take(loader(five, process_index=0, process_count=2, **kw), 7)
    p1 = take(loader(five, process_index=1, process_count=2, **kw), 7)
    one = take(loader(five, **kw), 12)
    merged = merge_positions([p1[6].position, p0[6].position])
    assert all(same(x, y) for x, y in zip(take(loader(five, **kw), 5, merged), one[7:]))
    half = take(loader(five, process_index=1, process_count=2, **kw), 5, one[6].position)
    assert all(np.array_equal(h.images, w.images[4:]) for h, w in zip(half, one[7:]))


def test_a_bad_sample_is_logged_once_and_its_row_taken_by_the_next(tmp_path):
    shards = tar_shards(tmp_path, [6], corrupt={0: 2})
    errors: list = []
    batches = take(loader(shards, errors, batch_size=1, shuffle_buffer=1), 15)  # 3 epochs of 5 usable
    got = [c for b in batches for c in captions(b)]
    assert "photo 2 of shard 0" not in got and Counter(got) == {f"photo {i} of shard 0": 3 for i in (0, 1, 3, 4, 5)}
    assert errors == [(shards[0], "000000002", "image: not a recognized image format")]  # epoch 0 only


def test_fewer_shards_than_readers_share_them_by_index(tmp_path):
    shards = tar_shards(tmp_path, [10, 7])
    assert reader_shards(2, 5) == [((0,), 3, 0), ((1,), 2, 0), ((0,), 3, 1), ((1,), 2, 1), ((0,), 3, 2)]
    assert reader_shards(5, 2) == [((0, 2, 4), 1, 0), ((1, 3), 1, 0)]
    # 5 readers over 2 shards: reader r reads shard r % 2 and keeps its samples i with i % sharing == r // 2
    epoch = take(loader(shards, batch_size=5, readers=5, shuffle_buffer=3), 2)
    rows = [captions(b) for b in epoch]
    for r in range(5):
        for b in rows:
            shard, i = shard_of(b[r]), int(b[r].split()[1])
            assert shard == r % 2 and i % (3 if shard == 0 else 2) == r // 2
    # reader 4 (samples 2, 5, 8 of shard 0): every one of its samples in its first 3 draws
    reader4 = [captions(b)[4] for b in take(loader(shards, batch_size=5, readers=5, shuffle_buffer=3), 3)]
    assert sorted(reader4) == ["photo 2 of shard 0", "photo 5 of shard 0", "photo 8 of shard 0"]


def test_parquet_and_samples_per_epoch(tmp_path):
    shards = parquet_shards(tmp_path, [9, 5])
    ld = loader(shards, batch_size=2, readers=2, shuffle_buffer=4)
    assert ld.samples_per_epoch() == 14
    batches = take(ld, 5)
    assert all([shard_of(c) for c in captions(b)] == [0, 1] for b in batches)
    assert loader(tar_shards(tmp_path, [3]), batch_size=1).samples_per_epoch() is None


def test_fsspec_memory_shards_and_caption_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for s in range(2):
        with fsspec.open(f"memory://loader-test/{s:02d}.tar", "wb") as f:
            f.write(write_tar(tmp_path / f"{s}.tar", make_samples(s, 4)).read_bytes())
    got = take(loader(["memory://loader-test/{00..01}.tar"], batch_size=2, readers=2, shuffle_buffer=2), 4)
    assert all([shard_of(c) for c in captions(b)] == [0, 1] for b in got)
    samples = make_samples(0, 3)
    pq.write_table(pa.table({"pic": [s["jpg"] for s in samples], "alt": [f"alt {i}" for i in range(3)]}),
                   tmp_path / "cols.parquet")
    got = take(loader([str(tmp_path / "cols.parquet")], batch_size=3, shuffle_buffer=1, image_column="pic",
                      caption_column="alt"), 1)
    assert sorted(captions(got[0])) == ["alt 0", "alt 1", "alt 2"]


def test_refusals_of_a_bad_configuration(five, tmp_path):
    with pytest.raises(InputError, match="multiple of the readers"):
        loader(five, batch_size=6, readers=4)
    with pytest.raises(InputError, match="multiple of the processes"):
        loader(five, batch_size=6, readers=3, process_count=2)
    with pytest.raises(InputError, match="process_index"):
        loader(five, batch_size=4, readers=2, process_index=2, process_count=2)
    with pytest.raises(InputError, match="batch_size must be"):
        loader(five, batch_size=0)
    with pytest.raises(InputError, match="tar shards or parquet"):
        loader([str(tmp_path)], batch_size=1)
    with pytest.raises(InputError, match="mix"):
        loader([five[0], str(tmp_path / "x.parquet")], batch_size=1)


def test_a_position_of_another_stream_is_refused(five):
    b = take(loader(five, batch_size=4, readers=2, shuffle_buffer=5), 1)[0]
    for change, match in ((dict(seed=1), "seed=0"), (dict(shuffle_buffer=6), "shuffle_buffer=5"),
                          (dict(readers=4), "readers=2")):
        kw = {**dict(batch_size=4, readers=2, shuffle_buffer=5), **change}
        with pytest.raises(InputError, match=match):
            next(loader(five, **kw).batches(b.position))
    with pytest.raises(InputError, match="shards="):
        next(loader(five[:4], batch_size=4, readers=2, shuffle_buffer=5).batches(b.position))
    p0 = take(loader(five, batch_size=4, readers=2, shuffle_buffer=5, process_count=2), 1)[0]
    with pytest.raises(InputError, match="not reader 1"):
        next(loader(five, batch_size=4, readers=2, shuffle_buffer=5, process_index=1, process_count=2)
             .batches(p0.position))
    for bad in ({**b.position, "at": {"0": [0, -1], "1": [0, 0]}}, {**b.position, "at": {"0": "x"}}, [], "x"):
        with pytest.raises(InputError):
            next(loader(five, batch_size=4, readers=2, shuffle_buffer=5).batches(bad))


def test_resume_replays_draws_without_decoding_them(tmp_path):
    shards = tar_shards(tmp_path, [20, 20])
    calls: list = []

    def counting(data: bytes):
        calls.append(1)
        return TRANSFORM.pixels(data)

    make = lambda: Loader(shards, batch_size=2, readers=1, transform=counting, tokenize=tokenize,  # noqa: E731
                          shuffle_buffer=8, num_threads=2)
    run = take(make(), 16)
    calls.clear()
    resumed = take(make(), 1, run[14].position)  # 30 draws replayed
    assert same(resumed[0], run[15])
    assert len(calls) <= 2 + 2 * 2 + 1  # the batch, two batches ahead, one in hand: none of the 30
