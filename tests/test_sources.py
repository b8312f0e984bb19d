"""clip_jax.sources: WebDataset tar shards (local, fsspec memory://, HTTP), parquet (bytes and {bytes, path}
structs), brace expansion, and today's image inputs as shards."""

from __future__ import annotations

import io
import tarfile

import pytest

from clip_jax.data.braces import braceexpand
from clip_jax.data.sources import open_source
from clip_jax.data.tarstream import group_samples, tar_members, tar_samples
from clip_jax.errors import ShardError

from .local_server import QuietHandler, serve
from .shards import make_samples, write_parquet, write_tar


def test_braceexpand_as_bash():
    assert braceexpand("d/{000..002}.tar") == ["d/000.tar", "d/001.tar", "d/002.tar"]
    assert braceexpand("{a,b}{1..2}") == ["a1", "a2", "b1", "b2"]
    assert braceexpand("x{9..11}") == ["x9", "x10", "x11"]
    assert braceexpand("plain{}.tar") == ["plain{}.tar"]


def test_tar_shards_group_members_by_key(tmp_path):
    samples = make_samples(0, 5)
    write_tar(tmp_path / "00000.tar", samples[:3])
    write_tar(tmp_path / "00001.tar", samples[3:])
    src = open_source([str(tmp_path / "{00000..00001}.tar")])
    assert src.kind == "tar" and [s.name for s in src.shards] == ["00000.tar", "00001.tar"]
    got = list(src)
    assert [s["key"] for s in got] == [s["__key__"] for s in samples]
    assert [s["image"] for s in got] == [s["jpg"] for s in samples]
    assert got[4]["txt"] == "photo 4 of shard 0" and got[4]["json"]["score"] == 0.4
    assert [s["__index__"] for s in got] == [0, 1, 2, 0, 1]
    assert got[3]["__shard__"] == str(tmp_path / "00001.tar")


LONG_NAMES = ["a" * 150 + ".jpg", "d/é" * 60 + ".txt", "short.txt"]  # a GNU long name or pax path header each


def long_names_tar(path, fmt: int, size: int) -> None:
    """LONG_NAMES written by tarfile in format `fmt`, member i holding size * (i + 1) bytes of i + 1."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, n in enumerate(LONG_NAMES):
            info = tarfile.TarInfo(n)
            info.size = size * (i + 1)
            tar.addfile(info, io.BytesIO(bytes([i + 1]) * info.size))


def test_tar_long_names_and_pax_headers_match_tarfile(tmp_path):
    path = tmp_path / "long.tar"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        long_names_tar(path, fmt, 1)
        with open(path, "rb") as f:
            assert [(n, len(d)) for n, d in tar_members(f)] == [(n, i + 1) for i, n in enumerate(LONG_NAMES)]


def test_member_offsets_read_the_member_back(tmp_path):
    """tar_members(offsets=True): each member's data offset, whatever headers (GNU long names, pax) come
    before it, so eval_data reads an image back by a ranged read without a second tar reader."""
    path = tmp_path / "long.tar"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        long_names_tar(path, fmt, 700)
        data = path.read_bytes()
        with open(path, "rb") as f:
            got = list(tar_members(f, offsets=True))
        assert [n for n, _, _ in got] == LONG_NAMES
        assert all(data[at: at + len(d)] == d for _, d, at in got)
        with tarfile.open(path) as tar:
            assert [at for _, _, at in got] == [m.offset_data for m in tar.getmembers()]


def test_one_grouping_of_members_into_samples():
    """webdataset's grouping, shared by TarShard and eval_data: consecutive members of one key, fields
    lowercased, dot-files and "__" keys skipped, any value carried along."""
    members = [("a.jpg", 1), ("a.TXT", 2), (".hidden.jpg", 3), ("__key__.txt", 4), ("d/b.seg.png", 5), ("noext", 6),
               ("a.cls", 7)]
    assert list(group_samples(members)) == [("a", {"jpg": 1, "txt": 2}), ("d/b", {"seg.png": 5}), ("a", {"cls": 7})]


def test_tar_samples_with_offsets_agree_with_the_shard_reader(tmp_path):
    path = write_tar(tmp_path / "s.tar", make_samples(0, 3))
    data = path.read_bytes()
    with open(path, "rb") as f:
        plain = list(tar_samples(f, str(path)))
    with open(path, "rb") as f:
        placed = list(tar_samples(f, str(path), offsets=True))
    assert [k for k, _ in plain] == [k for k, _ in placed] == [s["key"] for s in open_source([str(path)])]
    for (_, fields), (_, at) in zip(plain, placed):
        assert fields == {name: d for name, (d, _) in at.items()}
        assert all(data[o: o + len(d)] == d for d, o in at.values())


def test_a_cut_tar_names_the_shard(tmp_path):
    path = write_tar(tmp_path / "cut.tar", make_samples(0, 3))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ShardError, match="cut.tar: unreadable tar data"):
        list(open_source([str(path)]))


def test_fsspec_memory_and_http_shards(tmp_path):
    import fsspec

    samples = make_samples(1, 4)
    data = write_tar(tmp_path / "s.tar", samples).read_bytes()
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/shard-00.tar", data)
    fs.pipe("/bucket/shard-01.tar", data)
    src = open_source(["memory://bucket/shard-{00..01}.tar"])
    assert [s["key"] for s in src] == [s["__key__"] for s in samples] * 2
    globbed = open_source(["memory://bucket/*.tar"])
    assert [sh.url for sh in globbed.shards] == [sh.url for sh in src.shards]

    class Handler(QuietHandler):
        def do_GET(self):
            self.send_body(data)

        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

    pytest.importorskip("aiohttp")
    with serve(Handler) as url:
        got = list(open_source([f"{url}/s.tar"]))
    assert [s["image"] for s in got] == [s["jpg"] for s in samples]


@pytest.mark.parametrize("struct", [False, True])
def test_parquet_images_as_bytes_or_structs(tmp_path, struct):
    samples = make_samples(2, 10)
    (tmp_path / "p").mkdir()
    write_parquet(tmp_path / "p" / "a.parquet", samples[:7], struct=struct)
    write_parquet(tmp_path / "p" / "b.parquet", samples[7:], struct=struct)
    src = open_source([tmp_path / "p"])  # a folder of parquet files
    assert src.kind == "parquet" and len(src.shards) == 2
    got = list(src)
    assert [s["key"] for s in got] == [s["__key__"] for s in samples]
    assert [s["image"] for s in got] == [s["jpg"] for s in samples]
    assert [s["txt"] for s in got] == [s["txt"] for s in samples]
    with pytest.raises(ValueError, match="no caption column 'nope'"):
        list(open_source([tmp_path / "p" / "a.parquet"], caption_column="nope"))


def test_image_files_become_shards_of_shard_size(tmp_path):
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    src = open_source([tmp_path], shard_size=2)
    assert src.kind == "files" and [len(s.paths) for s in src.shards] == [2, 2, 1]
    assert [s["key"] for s in src][-1] == str(tmp_path / "4.png")


def test_mixed_kinds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="mix"):
        open_source([str(tmp_path / "a.tar"), str(tmp_path / "b.parquet")])


@pytest.mark.parametrize("url,extra", [("gs://bucket/{0..1}.tar", "gcs"), ("s3://bucket/a.parquet", "s3")])
def test_a_missing_fsspec_backend_names_the_extra(url, extra, monkeypatch):
    """Without gcsfs / s3fs, fsspec raises ImportError from deep inside: one error naming the extra instead."""
    import sys

    from clip_jax.errors import MissingExtraError

    for module in ("gcsfs", "s3fs"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails, installed or not
    with pytest.raises(MissingExtraError, match=rf"pip install 'clip-jax\[{extra}\]'"):
        list(open_source([url]))
    with pytest.raises(MissingExtraError, match=extra):
        open_source([url.rsplit("/", 1)[0] + "/*." + url.rsplit(".", 1)[1]])  # a glob lists the bucket


def test_parquet_keeps_the_other_columns_and_the_struct_path_as_json_fields(tmp_path):
    """As a tar sample's .json fields: the table's text and scalar columns, and the image struct's path,
    which then become metadata columns of the embedding job (embed_shards._metadata)."""
    import datetime
    import decimal

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clip_jax.jobs.embed_shards import _metadata

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "key": ["a", "b"], "caption": ["one", "two"],
        "image": pa.array([{"bytes": b"A", "path": "imgs/a.jpg"}, {"bytes": b"B", "path": None}], struct),
        "url": ["http://x/a.jpg", None], "width": [640, 480], "similarity": [0.25, 0.5], "nsfw": [False, True],
        "day": pa.array([datetime.date(2021, 5, 1), None]), "price": pa.array([decimal.Decimal("1.50"), None]),
        "tags": [["x"], ["y"]], "thumb": [b"\x00", b"\x01"],  # nested and binary: not metadata
        "label": pa.array(["cat", "dog"]).dictionary_encode(),
    })
    pq.write_table(table, tmp_path / "t.parquet")
    got = list(open_source([tmp_path / "t.parquet"]))
    assert [s["image"] for s in got] == [b"A", b"B"] and [s["txt"] for s in got] == ["one", "two"]
    assert got[0]["json"] == {"url": "http://x/a.jpg", "width": 640, "similarity": 0.25, "nsfw": False,
                              "day": "2021-05-01", "price": "1.50", "label": "cat", "path": "imgs/a.jpg"}
    assert got[1]["json"] == {"width": 480, "similarity": 0.5, "nsfw": True, "label": "dog"}
    meta = _metadata(got, np.ones(2, bool)).to_pydict()
    assert meta["width"] == [640, 480] and meta["path"] == ["imgs/a.jpg", None] and meta["url"][0] == "http://x/a.jpg"
    assert "tags" not in meta and "thumb" not in meta

    pq.write_table(table.append_column("path", pa.array(["p", "q"])), tmp_path / "u.parquet")
    beside = list(open_source([tmp_path / "u.parquet"]))[0]["json"]  # the table's own "path" column wins the name
    assert beside["path"] == "p" and beside["image.path"] == "imgs/a.jpg"


def test_parquet_metadata_cells_past_the_bound_are_field_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clip_jax.data import sources

    big = "x" * (sources.MAX_TEXT_BYTES + 1)
    pq.write_table(pa.table({"image": [b"A", b"B"], "note": [big, "short"]}), tmp_path / "t.parquet")
    first, second = list(open_source([tmp_path / "t.parquet"]))
    assert first["json"] is None and first["image"] == b"A"
    assert first["__field_errors__"] == [f"column 'note': {len(big):,} bytes, over the 1 MiB a metadata cell may hold"]
    assert second["json"] == {"note": "short"} and "__field_errors__" not in second
