"""The embedding jobs on hostile samples and metadata (issue 23, classes 3, 5 and 8): one bad sample or
value changes that sample or value only, the metadata of web-scale JSON stays bounded, and the image
folder job's "done" means its files are whole.

The shard job's own end-to-end cases (a shard that can't be read, markers, kills) are in
test_embed_shards.py, beside the uninterrupted run they compare with.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from clip_jax.cli import main as cli
from clip_jax.data.sources import Shard, Source
from clip_jax.jobs import embed as embed_mod
from clip_jax.jobs.embed_folder import parquet_bytes
from clip_jax.jobs.embed_shards import MAX_COLUMNS, OTHER, _metadata

from .fuzz import FUZZ, any_bytes, bounded
from .shards import jpeg
from .tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]


def table(samples: list[dict]) -> dict[str, list]:
    """The metadata parquet the job writes for `samples` (all kept), read back."""
    data = parquet_bytes(_metadata(samples, np.ones(len(samples), bool)))
    return pq.read_table(io.BytesIO(data)).to_pydict()


def sample(key: str, meta: dict | None = None, txt: str | None = "a caption") -> dict:
    return {"key": key, "image": None, "txt": txt, "json": meta, "cls": None}


# --- metadata: one bad value changes that value only ----------------------------------------------------


def test_an_integer_past_int64_moves_to_the_rows_json_text_alone():
    """pyarrow raises OverflowError (not a ValueError) at 2^63: on main the shard failed after it was
    embedded, on every rerun."""
    got = table([sample("a", {"n": 1, "s": "x"}), sample("b", {"n": 2**64, "s": "y"}),
                 sample("c", {"n": -(2**63) - 1, "s": "z"}), sample("d", {"n": -(2**63), "s": "w"})])
    assert got["n"] == [1, None, None, -(2**63)] and got["s"] == ["x", "y", "z", "w"]
    assert got[OTHER] == [None, '{"n": 18446744073709551616}', '{"n": -9223372036854775809}', None]


def test_a_value_of_another_type_changes_alone_not_its_column():
    """On main one odd value JSON-quoted the whole column ('"good1"')."""
    got = table([sample("a", {"f": "good1"}), sample("b", {"f": "good2"}), sample("c", {"f": 3}),
                 sample("d", {"f": {}}), sample("e", {"f": True})])
    assert got["f"] == ["good1", "good2", None, None, None]
    assert got[OTHER] == [None, None, '{"f": 3}', '{"f": {}}', '{"f": true}']


def test_an_empty_object_is_kept_as_json_text():
    """parquet can't store a struct without fields: on main the shard failed (ArrowNotImplementedError)."""
    got = table([sample("a", {"o": {}, "p": {"q": {}}}), sample("b", {"o": {}, "p": {"q": {}}})])
    assert "o" not in got and got[OTHER] == ['{"o": {}, "p": {"q": {}}}'] * 2


def test_a_key_that_is_not_utf8_changes_that_key_only():
    """A member name that was not UTF-8 (surrogateescape) or a JSON "\\ud800" escape: on main every key of
    the shard was JSON-quoted ('"good1"'); now that one value gets a backslash escape."""
    got = table([sample("good1", {"t": "ok"}), sample("bad\udcff", {"t": "lone \ud800", "k\udcfe": 1}),
                 sample("good2", {"t": "fine"})])
    assert got["key"] == got["image_path"] == ["good1", "bad\\udcff", "good2"]
    assert got["t"] == ["ok", "lone \\ud800", "fine"]
    assert json.loads(got[OTHER][1]) == {"k\udcfe": 1} and got[OTHER][0] is None


def test_a_json_field_named_like_a_column_is_kept_not_dropped():
    """On main a json field called key, caption or image_path was silently left out of the metadata."""
    got = table([sample("a", {"key": "k", "caption": "c", OTHER: 1, "w": 2})])
    assert got["key"] == ["a"] and got["w"] == [2]
    assert json.loads(got[OTHER][0]) == {"key": "k", "caption": "c", OTHER: 1}


def test_a_value_nested_past_the_bound_is_logged_and_left_out():
    """pyarrow's conversion recurses in C++: on main a value 100k deep reaching the metadata writer
    crashed the process (segmentation fault; the readers bound .json depth, the writer now does too)."""
    deep = 1
    for _ in range(100_000):
        deep = {"a": deep}
    samples = [sample("k0", {"d": deep, "x": 1}), sample("k1", {"d": {"a": 1}, "x": 2})]
    errors = []
    data = bounded(lambda: parquet_bytes(_metadata(samples, np.ones(2, bool), errors)))
    got = pq.read_table(io.BytesIO(data)).to_pydict()
    assert got["x"] == [1, 2] and got["d"] == [None, {"a": 1}]
    assert errors == [("k0", "json: field 'd' nested deeper than 64 levels, not stored")]


def test_two_thousand_distinct_keys_a_sample_stay_bounded():
    """On main every distinct key became a column of every row: 2000 keys x n samples columns of n rows
    (a 35 MB shard grew to 3.5 GB). Now the fields present in at least half the rows get columns (at most
    MAX_COLUMNS), and the rest of each row is one JSON text: memory and time linear in the input."""
    n = 100
    samples = [sample(f"s{i}", {"common": i, **{f"k{i}_{j}": j for j in range(2000)}}) for i in range(n)]
    data = bounded(lambda: parquet_bytes(_metadata(samples, np.ones(n, bool))), megabytes=48, seconds=20)
    got = pq.read_table(io.BytesIO(data))
    assert got.column_names == ["image_path", "key", "caption", "common", OTHER]
    rest = got.column(OTHER).to_pylist()
    assert got.column("common").to_pylist() == list(range(n))
    assert [json.loads(r) for r in rest[:3]] == [{f"k{i}_{j}": j for j in range(2000)} for i in range(3)]


def test_a_few_hundred_fields_present_in_most_rows_keep_their_columns():
    rows = [sample(str(i), {f"f{j}": j for j in range(300) if (i + j) % 4}) for i in range(8)]  # 3/4 of rows each
    got = table(rows)
    assert len(got) == 3 + MAX_COLUMNS + 1
    assert set(json.loads(got[OTHER][1])) == {f for f in rows[1]["json"] if f not in got}


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["\udcff", "\ud800x", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12)


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=6) | st.just("k\udcff"), st.none() | st.dictionaries(
    st.sampled_from(["a", "b", "c", "json", "key", OTHER, "\udcff"]) | st.text(max_size=3), _json_values,
    max_size=5)), max_size=6))
def test_any_json_metadata_is_written_whole(rows):
    """Whatever JSON a sample carries, its shard's metadata is written, one row per sample, within the
    harness's bounds: no value can fail the shard."""
    samples = [sample(key, meta) for key, meta in rows]
    data = bounded(lambda: parquet_bytes(_metadata(samples, np.ones(len(samples), bool))))
    # The row count from the file's footer, not a decode of every example: twice in full runs (never in
    # thousands of reruns of the same examples) a worker died in a native thread with the main thread in
    # pq.read_table, here and only here. The tables above and the job's tests decode what is written.
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_rows == len(rows)


# --- a sample the reader flags, or of the wrong types: errors.tsv, the job goes on ------------------------


class ListShard(Shard):
    """A shard whose samples are given (as a reader that follows the sources contract yields them)."""

    def __init__(self, url: str, samples: list[dict]):
        super().__init__(url)
        self.samples = samples

    def __iter__(self):
        for i, s in enumerate(self.samples):
            yield {"json": None, "cls": None, "txt": None, **s, "__shard__": self.url, "__index__": i}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("hostile") / "tiny.safetensors")


def test_flagged_and_mistyped_samples_go_to_errors_tsv_and_the_job_goes_on(model, tmp_path, capsys,
                                                                           monkeypatch):
    """Through `clip-jax embed`: a sample the reader marks unusable ("__error__") is skipped without being
    decoded; its dropped fields ("__field_errors__") are logged and the sample kept; a caption that isn't
    a string (a TypeError on main) and a json that isn't an object are field errors; an image that is a
    string (a path from the data) is never opened."""
    secret = tmp_path / "private.jpg"
    secret.write_bytes(jpeg(7))
    samples = [
        {"key": "good", "image": jpeg(1), "txt": "a dog"},
        {"key": "flagged", "image": None, "__error__": "image: str in a bytes column (a path is never opened)"},
        {"key": "dropped", "image": jpeg(2), "txt": "a cat", "json": None, "__field_errors__": ["json: too deep"]},
        {"key": "int-caption", "image": jpeg(3), "txt": 12345},
        {"key": "list-json", "image": jpeg(4), "txt": "x", "json": [1, 2]},
        {"key": "path", "image": str(secret), "txt": "y"},
    ]
    monkeypatch.setattr(embed_mod, "open_source", lambda inputs, **kw: Source("tar", [ListShard("s.tar", samples)]))
    out = tmp_path / "out"
    assert cli.main(["embed", "s.tar", "-o", str(out), "--model", str(model), "--batch-size", "4",
                     "--no-progress"]) == 0
    assert "6 items in 1 shard, 2 skipped (see" in capsys.readouterr().out
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet").to_pydict()
    assert meta["key"] == ["good", "dropped", "int-caption", "list-json"]
    assert meta["caption"] == ["a dog", "a cat", None, "x"]
    assert len(np.load(out / "img_emb" / "img_emb_0.npy")) == len(np.load(out / "text_emb" / "text_emb_0.npy")) == 4
    lines = [line.split("\t") for line in (out / "errors.tsv").read_text().splitlines()[1:]]
    assert [(shard, key) for shard, key, _ in lines] == [("s.tar", k) for k in ("flagged", "dropped", "int-caption",
                                                                                  "list-json", "path")]
    reasons = [r for _, _, r in lines]
    assert reasons[0] == samples[1]["__error__"]
    assert reasons[1] == "json: too deep; field dropped, sample kept"
    assert reasons[2].startswith("caption: int, not a string") and reasons[3].startswith("json: list, not an object")
    assert reasons[4] == "image: str, not bytes"


# --- the image folder job: done means whole, and a kill after each write -----------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    for i in range(6):
        Image.open(io.BytesIO(jpeg(i))).save(folder / f"{i:02d}.png")
    return folder


def folder_args(images, out, model) -> list[str]:
    return [str(a) for a in ["embed", images, "-o", out, "--model", model, "--shard-size", 2, "--batch-size", 2,
                             "--no-progress"]]


def data_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name not in ("manifest.json", ".clip_jax_embed.lock")}


@pytest.fixture(scope="module")
def folder_run(images, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder_run") / "out"
    assert cli.main(folder_args(images, out, model)) == 0
    return out


@pytest.fixture(scope="module")
def rerun(images, model):
    """embed() of `images` as folder_args runs it, with one compiled model for every call (~0.1 s each)."""
    from clip_jax import parallel

    sharded, _ = embed_mod._load_sharded(str(model), "float32", None, parallel.make_mesh(1), 2)
    return lambda out: embed_mod.embed([str(images)], str(out), str(model), shard_size=2, batch_size=2,
                                       progress=False, sharded=sharded)


def test_folder_job_redoes_a_shard_whose_file_is_short(images, model, folder_run, rerun, tmp_path, capsys):
    """On main the manifest was believed as long as the file existed: a cut .npy stayed cut."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(folder_run, out)
    short = out / "img_emb" / "img_emb_1.npy"
    short.write_bytes(short.read_bytes()[:-4])
    (out / "metadata" / "metadata_2.parquet").unlink()
    capsys.readouterr()
    assert rerun(out).shards_done_now == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert [line.rsplit("; ", 1)[1] for line in lines] == [f"shard {k} is embedded again" for k in (1, 2)]
    assert "done_1.json: img_emb/img_emb_1.npy has" in lines[0]
    assert "done_2.json: metadata/metadata_2.parquet is missing" in lines[1]
    assert data_files(out) == data_files(folder_run)
    assert json.loads((out / "manifest.json").read_text()) == json.loads((folder_run / "manifest.json").read_text())


@pytest.mark.parametrize("n", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
def test_folder_job_killed_after_each_write_then_rerun_equals_an_uninterrupted_run(images, model, folder_run, rerun,
                                                                                  tmp_path, n):
    """Shard 1's writes: its .npy (1), metadata (2), then its done marker (3, the commit). Until the
    marker, shard 1 must not count as done; a job that committed first fails at n=1."""
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    argv = folder_args(images, out, model)
    proc = subprocess.run([sys.executable, "-m", "tests.kill_after_files", f"1:{n}", *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(os.listdir(out / "done")) == ["done_0.json"] + (["done_1.json"] if n == 3 else [])
    assert rerun(out).shards_done_now == (1 if n == 3 else 2)
    assert data_files(out) == data_files(folder_run)


def test_folder_job_writes_to_an_fsspec_url_as_to_a_path(folder_run, rerun):
    """Image files go through the same embedding-folder writer as shards: a memory:// folder gets the
    same files, byte for byte, as a local one, and a rerun there finds every shard done."""
    import fsspec

    fs = fsspec.filesystem("memory")
    assert rerun("memory://folder-job").shards_done_now == 3
    got = {p.split("folder-job/", 1)[1]: fs.cat_file(p) for p in fs.find("/folder-job")}
    assert json.loads(got.pop("manifest.json")) == json.loads((folder_run / "manifest.json").read_text())
    assert got == data_files(folder_run)
    assert rerun("memory://folder-job").shards_done_now == 0


# --- the job's own records, read back by a rerun: fuzzed --------------------------------------------------


GOOD_MARKER = json.dumps({"shard": "s", "items": 3, "rows": 2, "errors": [["k", "not an image"]],
                          "files": {"img_emb/img_emb_0.npy": 134, "metadata/metadata_0.parquet": 900}}).encode()


@FUZZ
@given(any_bytes(GOOD_MARKER))
def test_done_marker_reader_fuzz(data):
    """A done marker is the summary, or a reason to redo its shard: never an exception."""
    from clip_jax.jobs.embed_folder import read_marker

    paths = {"image": "img_emb/img_emb_0.npy", "metadata": "metadata/metadata_0.parquet"}
    summary, problem = bounded(lambda: read_marker(data, "s", paths))
    assert (summary is None) != (problem is None)


GOOD_MANIFEST = json.dumps({"format": "clip_jax.embed", "items": 3, "shards": {
    "0": {"items": 3, "rows": 2, "errors": [["a.png", "not an image"]], "files": {"img_emb/img_emb_0.npy": 134}}}
}).encode()


@FUZZ
@given(any_bytes(GOOD_MANIFEST))
def test_manifest_reader_fuzz(data):
    """read_manifest: a dict, or the project's InputError naming the file (main: RecursionError at depth)."""
    import tempfile

    from clip_jax.jobs.embed_folder import read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.json"
        path.write_bytes(data)
        got = bounded(lambda: read_manifest(path))
    assert got is None or isinstance(got, dict)
