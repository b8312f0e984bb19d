"""clip_jax.sources on hostile and careless input (issue 23): every length from a tar header checked before
it is used, a sample's bad field or name kept to that sample, parquet cells that are data and never paths,
bounded reads of expanding parquet, bounded brace expansion. Each test failed on the main before its fix."""

from __future__ import annotations

import io
import json
import re
import tarfile

import pytest

from clip_jax.data.braces import braceexpand, iter_braceexpand
from clip_jax.data.sources import TarShard, open_source
from clip_jax.data.tarstream import _pax, split_member, tar_members
from clip_jax.errors import ClipJaxError, InputError, LimitError, ShardError

from .fuzz import bounded
from .shards import END_OF_ARCHIVE, pax_member, pax_record, tar_block, tar_header, tar_member, write_members, write_tar


class Stream:
    """A forward-only stream of unknown size (HTTP, a pipe): read() and nothing else."""

    name = "t.tar"

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)


def refused(call, error: type[Exception], match: str, **bound) -> None:
    """call() raises `error` (matching `match`) within fuzz.bounded's time and memory bound (or `bound`)."""
    raised = []

    def run():
        try:
            call()
        except ClipJaxError as e:
            raised.append(e)
            raise

    bounded(run, **bound)
    assert raised, "returned without an error"
    assert isinstance(raised[0], error) and re.search(match, str(raised[0])), repr(raised[0])


def members(data: bytes, stream: bool = False) -> list[tuple[str, int]]:
    f = Stream(data) if stream else io.BytesIO(data)
    f.name = "t.tar"  # tar_members names f.name in its errors
    return [(n, len(d)) for n, d in tar_members(f)]


def shard(tmp_path, data: bytes, name: str = "s.tar") -> list[dict]:
    path = tmp_path / name
    path.write_bytes(data)
    return list(TarShard(str(path)))


GOOD = tar_member("a.jpg", b"A") + tar_member("a.txt", b"cap")


# --- the tar reader's lengths ------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [b"0 path=x\n", b"-5 path=x\n", b"99 path=x\n", b"x path=y\n", b"3 a=b\n",
                                    b"9 pathx\n", b"1" * 30 + b" a=b\n"])
def test_pax_records_with_bad_lengths_are_shard_errors(record):
    """A pax record of length 0 looped forever on main (pos never advanced); -5 walked backwards; a length
    past the data read garbage. Each is a ShardError naming the shard, at once."""
    refused(lambda: _pax(record), ShardError, "pax header", seconds=2)
    refused(lambda: members(pax_member(record) + GOOD + END_OF_ARCHIVE), ShardError, "t.tar: pax header", seconds=2)


def test_pax_records_as_tarfile_writes_them():
    records = pax_record("path", "é" * 200 + ".jpg") + pax_record("mtime", "1.5")
    assert _pax(records) == {"path": "é" * 200 + ".jpg", "mtime": "1.5"}
    assert _pax(records + bytes(20)) == _pax(records)  # NUL padding ends the records, as in tarfile


def base256(n: int) -> bytes:
    return (n % 256**12).to_bytes(12, "big") if n < 0 else b"\x80" + n.to_bytes(11, "big")


@pytest.mark.parametrize("header", [
    tar_header("b.jpg", size_field=base256(-1)),
    pax_member(pax_record("size", "-1")) + tar_header("b.jpg", 0),
    pax_member(pax_record("size", "1e20")) + tar_header("b.jpg", 0),
    pax_member(pax_record("size", "1.5")) + tar_header("b.jpg", 0),
    pax_member(pax_record("size", "9" * 30)) + tar_header("b.jpg", 0),
    tar_header("b.jpg", size_field=base256(2**62)),
    tar_header("b.jpg", size_field=b"77777777777\0"),  # 8 GiB - 1, the largest octal size
    pax_member(pax_record("size", str(8 << 30))) + tar_header("b.jpg", 0),
], ids=["base256-minus-1", "pax-minus-1", "pax-1e20", "pax-1.5", "pax-30-digits", "base256-2^62", "octal-8GiB",
        "pax-8GiB"])
@pytest.mark.parametrize("stream", [False, True], ids=["file", "stream"])
def test_sizes_that_lie_are_refused_before_any_read(header, stream):
    """On main, a size of -1 read the rest of the shard as one member (later samples lost, exit 0), 1e20
    raised ValueError/OverflowError, 8 GiB and 2**62 allocated what they claimed (MemoryError)."""
    data = GOOD + header + tar_block(b"x" * 100) + GOOD + END_OF_ARCHIVE
    refused(lambda: members(data, stream), ShardError, "t.tar: member 'b.jpg'|t.tar: pax size", megabytes=40)


def test_a_size_past_the_end_of_a_local_file_is_refused_before_reading(tmp_path):
    """Under the 1 GiB member cap, but more than the file holds: the file's size is known, so no read."""
    data = GOOD + tar_header("b.jpg", 500 << 20) + tar_block(b"x" * 100) + END_OF_ARCHIVE
    refused(lambda: shard(tmp_path, data), ShardError,
            r"s.tar: unreadable tar data after 0 samples \(member 'b.jpg' claims 524,288,000 bytes but 1,\d+ remain",
            megabytes=8)


def test_a_stream_of_unknown_size_is_read_in_chunks_not_by_the_claim():
    """A stream has no size to check against: 500 MB claimed over 100 bytes allocates the bytes that came."""
    data = GOOD + tar_header("b.jpg", 500 << 20) + tar_block(b"x" * 100)
    refused(lambda: members(data, stream=True), ShardError, "cut short inside member 'b.jpg'", megabytes=40)


def test_a_shard_cut_at_a_member_boundary_is_not_complete(tmp_path):
    """Without the end-of-archive blocks the shard may have lost members: main took it as complete."""
    for end in (b"", bytes(512) + b"x" * 10):
        with pytest.raises(ShardError, match=r"s.tar: unreadable tar data after 1 samples \((cut short: no "
                                             r"end-of-archive marker|a lone zero block at byte 3072)"):
            shard(tmp_path, GOOD + tar_member("b.jpg", b"B") + end)
    with pytest.raises(ShardError, match="empty file"):
        shard(tmp_path, b"")


def test_end_of_archive_as_writers_write_it(tmp_path):
    """tarfile writes two zero blocks padded to a 10 KiB record; one zero block then the end of the file is
    accepted too, as tarfile and GNU tar accept it (the members before it are whole)."""
    path = write_tar(tmp_path / "w.tar", [{"__key__": "a", "jpg": b"A"}])
    assert path.stat().st_size == 10240 and [s["key"] for s in TarShard(str(path))] == ["a"]
    for end in (bytes(512), bytes(1024), bytes(10240 - 1024)):
        assert [s["key"] for s in shard(tmp_path, GOOD + end)] == ["a"]


def test_a_bad_header_checksum_is_a_shard_error():
    data = GOOD + tar_header("b.jpg", 1, checksum=False) + tar_block(b"B") + END_OF_ARCHIVE
    with pytest.raises(ShardError, match="t.tar: bad header at byte 2048 .*checksum"):
        members(data)


def test_members_over_the_cap_name_shard_and_member(monkeypatch):
    import clip_jax.data.tarstream as tarstream

    monkeypatch.setattr(tarstream, "MAX_MEMBER_BYTES", 1000)
    data = GOOD + tar_member("big.jpg", b"x" * 1001) + END_OF_ARCHIVE
    with pytest.raises(ShardError, match="t.tar: member 'big.jpg' claims 1,001 bytes, over the"):
        members(data)


# --- what tar writers write: padding, key splitting, pax size, long names -------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_at_block_boundaries_and_dotted_keys(tmp_path, fmt):
    """Members of 0, 511, 512, 513, 1024 and 1025 bytes (a padding bug shifts every later header), keys
    with extra dots and dotted folders, split as webdataset splits them."""
    sizes = [0, 511, 512, 513, 1024, 1025]
    names = [f"k{i}.jpg" for i in range(len(sizes))] + ["a.b.jpg", "a.b.TXT", "d.x/c.jpg", "d.x/c.seg.png"]
    data = [bytes([i]) * s for i, s in enumerate(sizes)] + [b"ab", b"abt", b"dc", b"dcs"]
    path = write_members(tmp_path / "b.tar", list(zip(names, data)), format=fmt)
    with open(path, "rb") as f:
        assert [(n, d) for n, d in tar_members(f)] == list(zip(names, data))
    got = list(TarShard(str(path)))
    assert [s["key"] for s in got] == [f"k{i}" for i in range(len(sizes))] + ["a", "d.x/c"]
    assert [s["image"] for s in got[:len(sizes)]] == data[:len(sizes)]
    # webdataset's rule: the key ends at the file name's first dot; "b.jpg" is the field, so no image
    assert got[-2]["image"] is None and got[-1]["image"] == b"dc"


# webdataset 1.0.2's base_plus_ext (webdataset/tariterators.py), verbatim: importing webdataset takes seconds.
WDS_RULE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def test_keys_split_as_webdataset_splits_them():
    """Same key and field as webdataset for every name but a dot-file in a folder ("d/.x.jpg"), which
    webdataset keys as "d/" (every dot-file of the folder one sample) and this reader skips."""
    names = ["a.jpg", "a.b.jpg", "a.b.TXT", "d.x/c.jpg", "d/e/c.seg.png", "a..jpg", "a.", "noext", ".jpg", ".a.jpg",
             "d/", "d/noext", "a b.c d", "d/é.jpg", "x.tar.gz", "__key__.txt"]
    for n in names:
        m = WDS_RULE.match(n)
        assert split_member(n) == (None if m is None else (m.group(1), m.group(2).lower())), n
    assert WDS_RULE.match("d/.x.jpg").groups() == ("d/", "x.jpg") and split_member("d/.x.jpg") is None


def test_a_pax_size_overrides_the_ustar_field():
    """pax "size" wins over the header's own field (as tarfile reads it): here the field says 0."""
    data = (pax_member(pax_record("size", "1024")) + tar_header("p.jpg", 0) + tar_block(b"p" * 1024)
            + tar_member("q.jpg", b"Q") + END_OF_ARCHIVE)
    assert members(data) == [("p.jpg", 1024), ("q.jpg", 1)]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert [(m.name, m.size) for m in tar] == [("p.jpg", 1024), ("q.jpg", 1)]


def test_gnu_long_names_and_pax_paths_over_short_names():
    long = "f" * 300 + ".jpg"
    gnu = tar_header("././@LongLink", len(long) + 1, typeflag=b"L") + tar_block(long.encode() + b"\0")
    data = (gnu + tar_member("short.jpg", b"1") + pax_member(pax_record("path", "p" * 200 + ".txt"))
            + tar_member("x.txt", b"22") + tar_member("after.jpg", b"3") + END_OF_ARCHIVE)
    assert members(data) == [(long, 1), ("p" * 200 + ".txt", 2), ("after.jpg", 1)]


def test_a_non_utf8_member_name_affects_only_its_sample(tmp_path):
    """On main the name's surrogates reached the job, which then JSON-quoted every key of the shard."""
    data = (tar_member("good1.jpg", b"1") + tar_member(b"caf\xe9.jpg", b"2") + tar_member(b"caf\xe9.txt", b"t")
            + tar_member("good2.jpg", b"3") + END_OF_ARCHIVE)
    got = shard(tmp_path, data)
    assert [s["key"] for s in got] == ["good1", "caf\\xe9", "good2"]
    assert [s.get("__error__") for s in got] == [None, "member name is not UTF-8", None]
    assert got[1]["image"] is None and got[2]["image"] == b"3"
    assert all(s["key"].isprintable() for s in got)


# --- sample fields ------------------------------------------------------------------------------------------


def sample_with(tmp_path, **fields: bytes) -> dict:
    data = tar_member("a.jpg", b"A") + b"".join(tar_member(f"a.{k}", v) for k, v in fields.items())
    (got,) = shard(tmp_path, data + tar_member("b.jpg", b"B") + END_OF_ARCHIVE)[:1]
    return got


def test_json_nested_200k_deep_is_a_field_error_not_a_recursion_error(tmp_path):
    """On main json.loads raised RecursionError: a traceback that stopped the job at this shard every rerun."""
    s = sample_with(tmp_path, json=b"[" * 200_000 + b"]" * 200_000, txt=b"kept")
    assert s["json"] is None and s["txt"] == "kept" and s["image"] == b"A"
    assert s["__field_errors__"] == ["json: nested deeper than 64 levels"]
    # 64 levels are fine, brackets inside strings don't count
    ok = sample_with(tmp_path, json=b'{"a": ' + b"[" * 63 + b'"[\\"[' + b"[" * 400 + b'"' + b"]" * 63 + b"}")
    assert "__field_errors__" not in ok, ok["__field_errors__"]
    inner = ok["json"]["a"]
    for _ in range(63):
        (inner,) = inner
    assert inner == '["[' + "[" * 400  # the escaped quote inside the string, brackets not counted


@pytest.mark.parametrize("field,data,reason", [
    ("json", b'{"a": "' + b"x" * (1 << 20) + b'"}', "json: 1,048,585 bytes, over the 1 MiB"),
    ("json", b"{not json", "json: not valid JSON"),
    ("json", b'{"a": "\xff"}', "json: not valid JSON"),
    ("json", b"1" * 5000, "json: not valid JSON"),  # past Python's int digit limit
    ("cls", b"\xff\xfe", "cls: not an integer"),
    ("cls", b"1.5", "cls: not an integer"),
    ("cls", b"9" * 30, "cls: not an integer"),
    ("cls", b"9223372036854775808", "cls: 9223372036854775808 is out of int64's range"),
    ("txt", b"x" * ((1 << 20) + 1), "txt: 1,048,577 bytes, over the 1 MiB"),
])
def test_bad_fields_are_dropped_and_named_the_sample_kept(tmp_path, field, data, reason):
    """Before: silently None (bad cls, bad json), or kept whole (a 1 MiB json, a huge cls the metadata
    writer could not store). Now: None, and a reason the job logs with the key."""
    s = sample_with(tmp_path, **{field: data})
    assert s[field] is None and s["image"] == b"A" and "__error__" not in s
    assert len(s["__field_errors__"]) == 1 and s["__field_errors__"][0].startswith(reason)


def test_good_fields_and_big_json_integers_are_kept(tmp_path):
    """Integers >= 2**63 in .json stay Python ints here; bounding them for a table is the metadata writer's job."""
    s = sample_with(tmp_path, json=json.dumps({"n": 2**70, "f": 0.5}).encode(), cls=b" -3\n", txt=b"caf\xe9")
    assert s["json"] == {"n": 2**70, "f": 0.5} and s["cls"] == -3 and s["txt"] == "caf\ufffd"
    assert "__field_errors__" not in s


# --- brace expansion ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["{0..100000000}", "{a,b}" * 24, "d/{0..999}/{0..999}/{0..9}.tar",
                                     "{0..999999999999999999}", "{" * 50 + "a,b" + "}" * 50 + "{a,b}" * 20])
def test_brace_patterns_past_a_million_names_are_refused_at_once(pattern):
    """On main {0..10^8} built 10^8 strings (5.4 GB) and {a,b}x24 hung: the count is now known first."""
    refused(lambda: braceexpand(pattern), LimitError, "expands to more than 1,000,000 names", seconds=1, megabytes=4)
    refused(lambda: open_source([pattern + ".tar"]), LimitError, "more than 1,000,000 names", seconds=1, megabytes=4)


def test_brace_expansion_as_bash():
    assert braceexpand("{a,b{1..3}}") == ["a", "b1", "b2", "b3"]  # main expanded the inner braces first
    assert braceexpand("{a,{b,c}}d") == ["ad", "bd", "cd"]
    assert braceexpand("{x{a,b}}") == ["{xa}", "{xb}"]
    assert braceexpand("{1..5..0}") == ["1", "2", "3", "4", "5"]  # main: range() arg 3 must not be zero
    assert braceexpand("{10..1..3}") == ["10", "7", "4", "1"] and braceexpand("{-1..1}") == ["-1", "0", "1"]
    assert braceexpand("{,a}x") == ["x", "ax"] and braceexpand("a{b") == ["a{b"] and braceexpand("a}{c,d}") == [
        "a}c", "a}d"]
    assert len(braceexpand("{a}" * 5000 + "{1..1}" * 5000 + "{a,b}")) == 2  # no recursion per literal brace
    assert braceexpand("{0..10}")[:2] == ["0", "1"] and braceexpand("{00..10}")[:2] == ["00", "01"]  # main: "00"
    assert braceexpand("{-05..1}")[4:] == ["-01", "000", "001"]
    assert next(iter_braceexpand("{0..999}{0..999}")) == "00"  # exactly the cap: allowed
    with pytest.raises(LimitError):
        iter_braceexpand("{0..999}{0..1000}")
    with pytest.raises(InputError, match="nested deeper than 64"):
        braceexpand("{" * 100 + "a,b" + "}" * 100)


# --- parquet: cells are data, never paths; bounded reads ---------------------------------------------------


def parquet(path, **columns) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=3)
    return str(path)


def rows(path, **options) -> list[dict]:
    return list(open_source([path], **options))


def test_a_string_image_cell_is_never_opened_as_a_path(tmp_path):
    """On main a string cell reached the decoder as a path: /etc/passwd, a private photo, /dev/zero, a FIFO."""
    import pyarrow as pa

    secret = tmp_path / "private.jpg"
    secret.write_bytes(b"\xff\xd8 private")
    path = parquet(tmp_path / "t.parquet", key=["a", "b", "c", "d"],
                   image=pa.array([str(secret), "/etc/passwd", None, "/dev/zero"]))
    got = rows(path)
    assert [s["image"] for s in got] == [None] * 4 and not any("image_path" in s for s in got)
    assert [s.get("__error__", "")[:33] for s in got] == ["image column 'image' holds str, n"] * 2 + [""] + [
        "image column 'image' holds str, n"]
    assert "a path?" in got[0]["__error__"] and "--image-paths" in got[0]["__error__"]
    # asked for: the column's paths are what the decoder opens (image_path), as for image files
    opted = rows(path, image_paths=True)
    assert [s.get("image_path") for s in opted] == [str(secret), "/etc/passwd", None, "/dev/zero"]
    assert not any("__error__" in s for s in opted)


def test_a_struct_with_a_path_and_no_bytes_is_an_error_for_its_row(tmp_path):
    import pyarrow as pa

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    path = parquet(tmp_path / "s.parquet", image=pa.array(
        [{"bytes": b"IMG", "path": "a.jpg"}, {"bytes": None, "path": "/etc/passwd"}, None], struct))
    got = rows(path)
    assert [s["image"] for s in got] == [b"IMG", None, None]
    assert [("__error__" in s) for s in got] == [False, True, False] and "no bytes" in got[1]["__error__"]
    assert not any("image_path" in s for s in got)
    assert [s.get("image_path") for s in rows(path, image_paths=True)] == [None, "/etc/passwd", None]


def test_cells_of_the_wrong_type_are_per_row_errors(tmp_path):
    """On main an int or list caption went on as it was (TypeError downstream), an int image column was
    handed to the decoder, a list key made a key of its repr."""
    import pyarrow as pa

    path = parquet(tmp_path / "w.parquet", key=pa.array([[1, 2], None, [3]]), image=pa.array([1, None, 3]),
                   caption=pa.array([5, 6, None]))
    got = rows(path)
    assert [s["key"] for s in got] == ["0", "1", "2"]  # positions, not the list's repr
    assert [s.get("__error__") for s in got] == ["image column 'image' holds int64, not bytes", None,
                                                  "image column 'image' holds int64, not bytes"]
    assert got[0]["__field_errors__"] == ["key: a list<element: int64> column, not a scalar",
                                          "caption: int64, not a string"]
    assert got[2]["__field_errors__"] == ["key: a list<element: int64> column, not a scalar"]
    assert all(s["txt"] is None and s["image"] is None for s in got)


def test_captions_and_keys_of_other_types(tmp_path):
    import pyarrow as pa

    path = parquet(tmp_path / "k.parquet", key=pa.array([7, 8, None]), image=pa.array([b"a", b"b", b"c"]),
                   caption=pa.array([b"ok", b"\xff bad", None]))
    got = rows(path)
    assert [s["key"] for s in got] == ["7", "8", "2"] and [s["txt"] for s in got] == ["ok", None, None]
    assert got[1]["__field_errors__"] == ["caption: bytes that are not UTF-8"]
    path = parquet(tmp_path / "b.parquet", key=pa.array([b"k\xff", b"k2", b"k3"]), image=pa.array([b"a"] * 3),
                   caption=pa.array(["x" * (1 << 20), "y" * ((1 << 20) + 1), "z"]))
    got = rows(path)
    assert [s["key"] for s in got] == ["k\\xff", "k2", "k3"] and [len(s["txt"] or "") for s in got] == [1 << 20, 0, 1]
    assert got[1]["__field_errors__"] == ["caption: 1,048,577 bytes, over the 1 MiB a caption may hold"]


def test_an_image_cell_over_the_cap_is_refused_without_a_copy(tmp_path, monkeypatch):
    import pyarrow as pa

    import clip_jax.data.sources as sources

    monkeypatch.setattr(sources, "MAX_IMAGE_BYTES", 1000)
    path = parquet(tmp_path / "big.parquet", image=pa.array([b"x" * 1000, b"y" * 1001, b"z"]))
    got = rows(path)
    assert [len(s["image"] or b"") for s in got] == [1000, 0, 1]
    assert got[1]["__error__"].startswith("image: 1,001 bytes, over the")


@pytest.fixture
def arrow_pool():
    """Arrow's allocations (which tracemalloc doesn't see) counted in a pool of their own."""
    import gc

    import pyarrow as pa

    old = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(old)
    pa.set_memory_pool(pool)
    yield pool
    gc.collect()  # nothing of the pool's may outlive it
    pa.set_memory_pool(old)


def write_expanding_parquet(path, rows: int, value_bytes: int = 1 << 20) -> int:
    """A ~1 MB parquet of `rows` copies of one 1 MB value (dictionary-encoded, compressed): it expands to
    rows x 1 MB, all in one row group."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    value = np.random.RandomState(0).bytes(value_bytes)
    image = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, "int32")), pa.array([value], pa.binary()))
    table = pa.table({"image": image, "caption": pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, "int32")),
                                                                             pa.array(["a caption"]))})
    pq.write_table(table, path, use_dictionary=True, compression="zstd", row_group_size=rows,
                   dictionary_pagesize_limit=4 * value_bytes, store_schema=False)
    return path.stat().st_size


def count_rows(path) -> int:
    n = 0
    for s in open_source([str(path)]):
        n += s["image"] is not None
    return n


@pytest.mark.parametrize("rows_", [300, pytest.param(10_000, marks=pytest.mark.slow)])
def test_an_expanding_parquet_is_read_in_bounded_slices(tmp_path, arrow_pool, rows_):
    """On main the row group became rows_ x 1 MB of Python bytes at once (10 GB: MemoryError). Now Arrow
    decodes 64 rows at a time and Python holds a 16 MiB slice: flat in the number of rows."""
    path = tmp_path / "bomb.parquet"
    assert write_expanding_parquet(path, rows_) < 1.1e6
    assert bounded(lambda: count_rows(path), seconds=60, megabytes=40) == rows_
    assert arrow_pool.max_memory() < 200 << 20, arrow_pool.max_memory()
