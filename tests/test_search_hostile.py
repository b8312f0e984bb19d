"""Search on folders that aren't what they claim (issue 23, class 5): an index built from part of the
folder, a corrupt, empty or foreign index, a bad factory, NaN rows, shards whose files are missing, cut
or mismatched. Each answers right or says why in one line (a ClipJaxError naming the file), never
silently from part of the folder and never with faiss's or numpy's traceback.

The folders are written here in `clip-jax embed`'s layout (img_emb/, metadata/, done/, manifest.json)
from random rows, so no model runs except in the command-line tests (the tiny model, dimension 16).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given

from clip_jax.cli import main as cli
from clip_jax.errors import ClipJaxError, InputError
from clip_jax.jobs.search import (
    StaleIndexError,
    _metadata,
    _metadata_rows,
    _open_embeddings,
    _read_json_record,
    build_index,
    index_search,
    search,
)

from .fuzz import FUZZ, any_bytes, bounded, mutated
from .tiny import save_tiny

DIM = 16  # tests/tiny.TINY's embed_dim


def add_shard(folder: Path, k: int, rows: np.ndarray, marker: bool = True) -> None:
    """Shard k as embed_shards writes it: its .npy, its metadata, then its done marker."""
    for sub in ("img_emb", "metadata", "done"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    np.save(folder / "img_emb" / f"img_emb_{k}.npy", rows.astype(np.float16))
    pq.write_table(pa.table({"image_path": [f"{k}/{i}" for i in range(len(rows))]}),
                   folder / "metadata" / f"metadata_{k}.parquet")
    if marker:
        summary = {"shard": f"{k:05d}.tar", "items": len(rows), "rows": len(rows), "errors": []}
        (folder / "done" / f"done_{k}.json").write_text(json.dumps(summary))


def make_folder(folder: Path, sizes=(6, 4, 5), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for k, n in enumerate(sizes):
        add_shard(folder, k, rng.standard_normal((n, DIM)))
    return folder


def values(hits) -> list[list[str]]:
    return [[h.value for h in q] for q in hits]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def cli_folder(folder: Path, model: Path) -> Path:
    """A folder `clip-jax search` takes: its manifest names the model."""
    make_folder(folder)
    (folder / "manifest.json").write_text(json.dumps({"model": str(model), "dtype": "float32", "shards": {}}))
    return folder


# --- 1. an index records what it covers --------------------------------------------------------------


def test_an_index_built_half_way_is_refused_once_more_shards_appear(tmp_path):
    """The embedding job had written shards 0 and 1 when the index was built; shard 2 came after. On main
    index_search answered from the two shards it had, without a word."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    rows = [rng.standard_normal((n, DIM)) for n in (6, 4, 5)]
    add_shard(tmp_path, 0, rows[0])
    add_shard(tmp_path, 1, rows[1])
    build_index(tmp_path)
    add_shard(tmp_path, 2, rows[2])
    query = rows[2][3]
    assert values(search(tmp_path, query, k=1)) == [["2/3"]]
    with pytest.raises(StaleIndexError, match=r"added: img_emb/img_emb_2\.npy.*rerun `clip-jax index"):
        index_search(tmp_path, query, k=1)
    build_index(tmp_path)  # rebuilt over the whole folder: the index answers as exact search does
    assert values(index_search(tmp_path, query, k=3)) == values(search(tmp_path, query, k=3))


def test_an_index_is_refused_when_a_shard_is_removed_or_rewritten(tmp_path):
    pytest.importorskip("faiss")
    make_folder(tmp_path)
    build_index(tmp_path)
    saved = (tmp_path / "img_emb" / "img_emb_1.npy").read_bytes()
    add_shard(tmp_path, 1, np.ones((7, DIM)))  # redone with other rows
    with pytest.raises(StaleIndexError, match=r"rewritten: img_emb/img_emb_1\.npy"):
        index_search(tmp_path, np.ones(DIM))
    (tmp_path / "img_emb" / "img_emb_1.npy").write_bytes(saved)
    add_shard(tmp_path, 1, np.load(tmp_path / "img_emb" / "img_emb_1.npy"))  # the same shard again: still covered
    index_search(tmp_path, np.ones(DIM))
    for name in ("img_emb/img_emb_2.npy", "metadata/metadata_2.parquet", "done/done_2.json"):
        (tmp_path / name).unlink()
    with pytest.raises(StaleIndexError, match=r"removed: img_emb/img_emb_2\.npy"):
        index_search(tmp_path, np.ones(DIM))


def test_an_index_without_its_record_is_refused(tmp_path):
    """An index from before records (or a build killed between the index and its record)."""
    pytest.importorskip("faiss")
    make_folder(tmp_path)
    build_index(tmp_path)
    (tmp_path / "image.index.json").unlink()
    with pytest.raises(StaleIndexError, match="no record of what it covers"):
        index_search(tmp_path, np.ones(DIM))


@pytest.mark.parametrize("edit", [
    lambda r: r["shards"].append({"file": ["a list"]}),  # unhashable: once a TypeError
    lambda r: r.update(shards=[]),
    lambda r: r.update(dim="16"),
    lambda r: r.update(format="something else"),
])
def test_a_tampered_index_record_is_refused(indexed, edit):
    path = indexed / "image.index.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"image\.index"):
        index_search(indexed, np.ones(DIM))


def test_cli_search_through_a_stale_index_warns_and_answers_exactly(tmp_path, model, capsys):
    pytest.importorskip("faiss")
    folder = cli_folder(tmp_path / "f", model)
    assert cli.main(["search", str(folder), "a photo", "-k", "5", "--exact"]) == 0
    exact = capsys.readouterr().out
    shutil.move(folder / "img_emb" / "img_emb_2.npy", tmp_path / "later.npy")  # the job was half done
    shutil.move(folder / "done" / "done_2.json", tmp_path / "later.json")
    assert cli.main(["index", str(folder)]) == 0
    capsys.readouterr()
    shutil.move(tmp_path / "later.npy", folder / "img_emb" / "img_emb_2.npy")  # and then it finished
    shutil.move(tmp_path / "later.json", folder / "done" / "done_2.json")
    assert cli.main(["search", str(folder), "a photo", "-k", "5"]) == 0
    out, err = capsys.readouterr()
    assert out == exact
    line = one_line(err)
    assert "warning" in line and "img_emb_2.npy" in line and "clip-jax index" in line and "exact search" in line


# --- 2. a foreign, corrupt or empty index, a bad factory: one line -------------------------------------


@pytest.fixture
def indexed(tmp_path) -> Path:
    pytest.importorskip("faiss")
    make_folder(tmp_path)
    build_index(tmp_path)
    return tmp_path


def test_queries_of_another_dimension_than_the_index(indexed):
    """On main, faiss's AssertionError."""
    with pytest.raises(InputError, match="dimension 16, but the queries have dimension 8"):
        index_search(indexed, np.ones(8))


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "one byte flipped"])
def test_a_corrupt_index_is_one_error_naming_it(indexed, damage):
    """On main, faiss's RuntimeError (or an index read from wrong bytes)."""
    path = indexed / "image.index"
    data = path.read_bytes()
    data = {"truncated": data[: len(data) // 2], "random bytes": np.random.default_rng(0).bytes(len(data)),
            "one byte flipped": data[:-9] + bytes([data[-9] ^ 1]) + data[-8:]}[damage]
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"image\.index: not the index its record .* corrupt or replaced"):
        index_search(indexed, np.ones(DIM))


def test_an_empty_index_is_one_error_naming_it(indexed):
    """An index of 0 vectors (with a record that matches its bytes): on main, no hits and no word."""
    import faiss

    from clip_jax.jobs.search import _sha256

    path = indexed / "image.index"
    faiss.write_index(faiss.IndexFlatIP(DIM), str(path))
    record = json.loads((indexed / "image.index.json").read_text())
    record.update(index_bytes=path.stat().st_size, index_sha256=_sha256(path))
    (indexed / "image.index.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"image\.index: an empty index \(0 vectors\)"):
        index_search(indexed, np.ones(DIM))


def test_a_folder_without_rows_is_not_indexed(tmp_path):
    pytest.importorskip("faiss")
    make_folder(tmp_path, sizes=(0, 0))
    with pytest.raises(InputError, match="no rows; nothing to index"):
        build_index(tmp_path)


@pytest.mark.parametrize("factory", ["bogus", "PQ7", "IVF1000,Flat", "IDMap,Flat"])
def test_a_bad_factory_is_one_error_naming_it(tmp_path, factory):
    """Unparsable, a dimension it can't split, more clusters than rows, an index that takes ids: on main,
    faiss's RuntimeError."""
    pytest.importorskip("faiss")
    make_folder(tmp_path)
    with pytest.raises(InputError, match=f"index factory {factory!r}") as e:
        build_index(tmp_path, factory=factory)
    assert "\n" not in str(e.value) and "/project/faiss" not in str(e.value)
    assert not (tmp_path / "image.index").exists()


def test_cli_bad_factory_and_corrupt_index_are_one_line(tmp_path, model, capsys):
    pytest.importorskip("faiss")
    folder = cli_folder(tmp_path / "f", model)
    assert cli.main(["index", str(folder), "--factory", "bogus"]) == 1
    assert "index factory 'bogus'" in one_line(capsys.readouterr().err)
    assert cli.main(["index", str(folder)]) == 0
    (folder / "image.index").write_bytes((folder / "image.index").read_bytes()[:100])
    capsys.readouterr()
    assert cli.main(["search", str(folder), "a photo"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "image.index" in one_line(err) and "corrupt" in err


# --- 3. NaN rows ------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 20])
def test_nan_rows_never_outrank_real_ones_on_the_devices_or_with_numpy(tmp_path, k):
    """On main, DeviceTopK ranked NaN first (lax.top_k's order) and dropped it after: -k 1 gave nothing."""
    rng = np.random.default_rng(2)
    shards = [rng.standard_normal((n, DIM)) for n in (9, 5, 12)]
    shards[0][[0, 4]] = np.nan
    shards[1][:] = np.nan  # a whole chunk of NaN rows
    shards[2][3, 7] = np.inf  # inf in a row: its norm is inf, its score NaN
    for i, rows in enumerate(shards):
        add_shard(tmp_path, i, rows)
    queries = rng.standard_normal((2, DIM)).astype(np.float32)
    real = [(f"{i}/{r}", rows[r]) for i, rows in enumerate(shards) for r in range(len(rows))
            if np.isfinite(rows[r]).all()]
    emb = np.stack([np.asarray(v, np.float16).astype(np.float32) for _, v in real])
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        emb / np.linalg.norm(emb, axis=1, keepdims=True)).T
    expected = [[real[j][0] for j in np.argsort(-s, kind="stable")[:k]] for s in scores]
    for device in (False, True):
        hits = search(tmp_path, queries, k=k, chunk_rows=4, device=device)
        assert values(hits) == expected, f"device={device}"
        assert all(np.isfinite(h.score) for q in hits for h in q)


@pytest.mark.parametrize("factory", ["Flat", "IVF2,Flat"])
def test_an_index_over_nan_rows_never_returns_them(tmp_path, factory):
    """NaN rows are indexed as zeros (faiss can't hold NaN) and dropped from the results, as exact search
    drops them: a Flat index answers as exact search does. On main they were returned (score 0 or NaN)."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    shards = [rng.standard_normal((n, DIM)) for n in (40, 30)]
    shards[0][::3] = np.nan
    for i, rows in enumerate(shards):
        add_shard(tmp_path, i, rows)
    build_index(tmp_path, factory=factory)
    queries = rng.standard_normal((3, DIM))
    for k in (1, 5, 70):
        found = index_search(tmp_path, queries, k=k, nprobe=2)
        assert [len(q) for q in found] == [min(k, 56)] * 3  # 70 rows, 14 of them NaN
        assert all(not h.value.startswith("0/") or int(h.value[2:]) % 3 for q in found for h in q)
        if factory == "Flat":
            assert values(found) == values(search(tmp_path, queries, k=k))


def test_queries_holding_nan_are_refused(tmp_path):
    make_folder(tmp_path)
    with pytest.raises(InputError, match="NaN"):
        search(tmp_path, np.full(DIM, np.nan))


# --- 4. shards with missing, cut or mismatched files -------------------------------------------------


def test_a_done_shard_whose_npy_was_deleted_is_an_error_naming_it(tmp_path):
    """On main, search skipped the shard and answered from the others."""
    make_folder(tmp_path)
    (tmp_path / "img_emb" / "img_emb_1.npy").unlink()
    with pytest.raises(InputError, match=r"img_emb_1\.npy: missing, but .*done_1\.json says the shard is done.*rerun"):
        search(tmp_path, np.ones(DIM))


def test_a_shard_the_manifest_calls_done_without_its_npy_is_an_error(tmp_path):
    """embed.py's layout (image folders): no done/ markers, the manifest's shards say what is done."""
    make_folder(tmp_path)
    shutil.rmtree(tmp_path / "done")
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": {
        str(k): {"items": n, "rows": n, "errors": []} for k, n in enumerate((6, 4, 5))}}))
    (tmp_path / "img_emb" / "img_emb_2.npy").unlink()
    with pytest.raises(InputError, match=r"img_emb_2\.npy \(shard 2\): missing, but .*manifest\.json says"):
        search(tmp_path, np.ones(DIM))


@pytest.mark.parametrize("marker", ["", "[]", "{", "null"])
def test_a_done_marker_that_is_not_a_record_is_an_error_naming_it(tmp_path, marker):
    make_folder(tmp_path)
    (tmp_path / "done" / "done_1.json").write_text(marker)
    with pytest.raises(InputError, match=r"done_1\.json: not a done marker"):
        search(tmp_path, np.ones(DIM))


def cut_npy(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def other_dim(path: Path) -> None:
    np.save(path, np.ones((6, DIM * 2), np.float16))


def fewer_rows(path: Path) -> None:  # a whole .npy, but not the one the job wrote: the done marker says 6
    np.save(path, np.ones((5, DIM), np.float16))


def not_npy(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 a zip, not a .npy")


def strings(path: Path) -> None:
    np.save(path, np.array([["a"] * DIM] * 6))


@pytest.mark.parametrize("damage", [cut_npy, other_dim, fewer_rows, not_npy, strings])
def test_a_cut_or_mismatched_npy_is_an_error_naming_it(tmp_path, damage):
    """Shard 0 is damaged; the queries would find rows elsewhere. On main: ValueError, a zip read as an
    npz (AttributeError), or (fewer rows) a metadata mismatch only if a hit fell in that shard."""
    make_folder(tmp_path)
    damage(tmp_path / "img_emb" / "img_emb_0.npy")
    for device in (False, True):
        with pytest.raises(InputError, match=r"img_emb_0\.npy"):
            search(tmp_path, np.ones(DIM), device=device)


@pytest.mark.parametrize("name", ["img_emb/img_emb_1.npy", "metadata/metadata_1.parquet"])
def test_a_file_of_another_size_than_its_done_marker_records_is_an_error(tmp_path, name):
    """Done markers that record each file's size (embed_shards): a file cut or replaced since, even by a
    well-formed one, is not the shard the job wrote."""
    make_folder(tmp_path)
    marker = tmp_path / "done" / "done_1.json"
    files = {n: (tmp_path / n).stat().st_size for n in ("img_emb/img_emb_1.npy", "metadata/metadata_1.parquet")}
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "files": files}))
    search(tmp_path, np.ones(DIM))  # whole: fine
    if name.endswith(".npy"):
        np.save(tmp_path / name, np.ones((4, DIM), np.float32))  # its rows, but not the job's float16
    else:
        pq.write_table(pa.table({"image_path": ["a much longer name than before"] * 4}), tmp_path / name)
    with pytest.raises(InputError, match=rf"{name}: \d+ bytes, but .*done_1\.json records {files[name]}"):
        search(tmp_path, np.ones(DIM))
    (tmp_path / name).unlink()
    with pytest.raises(InputError, match=rf"{name}: missing"):
        search(tmp_path, np.ones(DIM))


def test_metadata_of_another_row_count_is_an_error_even_without_a_hit_there(tmp_path):
    make_folder(tmp_path)
    pq.write_table(pa.table({"image_path": ["x"] * 3}), tmp_path / "metadata" / "metadata_2.parquet")
    with pytest.raises(InputError, match=r"metadata_2\.parquet: 3 rows, but the shard's embeddings have 5"):
        search(tmp_path, np.load(tmp_path / "img_emb" / "img_emb_0.npy")[0], k=1)


@pytest.mark.parametrize("content", [b"", b"PAR1 not parquet PAR1", None])
def test_a_corrupt_or_missing_metadata_parquet_is_an_error_naming_it(tmp_path, content):
    make_folder(tmp_path)
    path = tmp_path / "metadata" / "metadata_1.parquet"
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=r"metadata_1\.parquet"):
        search(tmp_path, np.ones(DIM))


def test_cli_missing_npy_is_one_line(tmp_path, model, capsys):
    folder = cli_folder(tmp_path / "f", model)
    (folder / "img_emb" / "img_emb_1.npy").unlink()
    assert cli.main(["search", str(folder), "a photo", "--numpy"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "img_emb_1.npy: missing" in one_line(err)


# --- 5. fuzz: the readers of the folder's files ------------------------------------------------------


def _npy_seed() -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal((4, 8)).astype(np.float16))
    return buf.getvalue()


def _parquet_seed() -> bytes:
    import io

    buf = io.BytesIO()
    pq.write_table(pa.table({"image_path": [f"k{i}" for i in range(4)], "score": [0.5] * 4}), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=any_bytes(_npy_seed()))
def test_npy_reader_fuzz(scratch, data):
    path = scratch / "img_emb_0.npy"
    path.write_bytes(data)

    def read():
        emb = _open_embeddings(path)
        return np.asarray(emb, np.float32).sum()  # every row it returns can be read

    bounded(read)


@FUZZ
@given(data=any_bytes(_parquet_seed()))
def test_metadata_reader_fuzz(scratch, data):
    path = scratch / "metadata" / "metadata_0.parquet"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)

    def read():
        if _metadata_rows(path, "image_path") == 4:
            return _metadata(scratch, "0", [0, 3])

    bounded(read)


@FUZZ
@given(data=any_bytes(b'{"shard": "00000.tar", "items": 3, "rows": 3, "errors": [["k", "bad image"]]}'))
def test_done_marker_reader_fuzz(scratch, data):
    path = scratch / "done_0.json"
    path.write_bytes(data)
    bounded(lambda: _read_json_record(path, "a done marker"))


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("small"), sizes=(3, 2))


_MARKER_SEED = json.dumps({"shard": "00001.tar", "items": 3, "rows": 2, "errors": [["k", "bad"]], "files": {
    "img_emb/img_emb_1.npy": 192, "metadata/metadata_1.parquet": 600}}).encode()


@FUZZ
@given(marker=mutated(_MARKER_SEED), manifest=mutated(json.dumps({"model": "m", "shards": {
    "0": {"items": 3, "rows": 3, "errors": []}, "1": {"items": 3, "rows": 2, "errors": []}}}).encode()))
def test_search_over_mutated_done_records_fuzz(small_folder, marker, manifest):
    """A folder whose done marker and manifest are mutated: search answers or refuses in one line."""
    (small_folder / "done" / "done_1.json").write_bytes(marker)
    (small_folder / "manifest.json").write_bytes(manifest)
    bounded(lambda: search(small_folder, np.ones(DIM), k=2))


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory) -> tuple[Path, bytes, bytes]:
    pytest.importorskip("faiss")
    folder = make_folder(tmp_path_factory.mktemp("indexed"), sizes=(3, 2))
    build_index(folder)
    return folder, (folder / "image.index").read_bytes(), (folder / "image.index.json").read_bytes()


def _index_seed() -> bytes:
    """A small Flat index's bytes (built here, so the strategy needs no folder)."""
    try:
        import faiss
    except ImportError:
        return b""
    index = faiss.IndexFlatIP(DIM)
    index.add(np.eye(5, DIM, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


@FUZZ
@given(data=mutated(_index_seed()))
def test_index_reader_fuzz(index_folder, data):
    """Mutated index bytes, with the record of the real index: refused before faiss reads them."""
    folder, index, record = index_folder
    (folder / "image.index").write_bytes(data)
    (folder / "image.index.json").write_bytes(record)
    bounded(lambda: index_search(folder, np.ones(DIM), k=2))


@FUZZ
@given(data=mutated(json.dumps({"format": "clip_jax.index", "version": 1, "dim": DIM, "rows": 5,
                                "index_bytes": 400, "index_sha256": "0" * 64, "nonfinite_rows": 0, "shards": [
                                    {"file": "img_emb/img_emb_0.npy", "rows": 3, "bytes": 224,
                                     "done_sha256": None}]}).encode()))
def test_index_record_reader_fuzz(index_folder, data):
    folder, index, _ = index_folder
    (folder / "image.index").write_bytes(index)
    (folder / "image.index.json").write_bytes(data)
    bounded(lambda: index_search(folder, np.ones(DIM), k=2))


def test_the_fuzzed_index_folder_answers_when_whole(index_folder):
    """The fuzz tests' folder, restored: the index answers (so they exercise refusals, not a broken folder)."""
    folder, index, record = index_folder
    (folder / "image.index").write_bytes(index)
    (folder / "image.index.json").write_bytes(record)
    assert len(index_search(folder, np.ones(DIM), k=2)[0]) == 2
    assert issubclass(StaleIndexError, ClipJaxError)


# --- folders written at earlier format versions -----------------------------------------------------------


def _data_files(folder: Path, rows: list[np.ndarray], text: list[np.ndarray] | None, columns) -> dict:
    """Each shard's .npy files and metadata as the embedding jobs write them -> {"sub/name": byte size}."""
    files = {}
    for sub in ("img_emb", "metadata") + (("text_emb",) if text is not None else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for k, r in enumerate(rows):
        np.save(folder / "img_emb" / f"img_emb_{k}.npy", r.astype(np.float16))
        if text is not None:
            np.save(folder / "text_emb" / f"text_emb_{k}.npy", text[k].astype(np.float16))
        pq.write_table(pa.table(columns(k, len(r))), folder / "metadata" / f"metadata_{k}.parquet")
    for p in folder.rglob("*_*.*"):
        files[p.relative_to(folder).as_posix()] = p.stat().st_size
    return files


def _v1_folder(folder: Path, rows: list[np.ndarray]) -> Path:
    """format_version 1 (image folders): the manifest alone says which shards are done, no done/ folder."""
    files = _data_files(folder, rows, None, lambda k, n: {"image_path": [f"{k}/{i}" for i in range(n)]})
    shards = {str(k): {"items": len(r) + (k == 1), "rows": len(r), "errors": [["bad.png", "not an image"]] * (k == 1),
                       "files": {rel: size for rel, size in files.items() if rel.endswith(f"_{k}.npy")
                                 or rel.endswith(f"_{k}.parquet")}} for k, r in enumerate(rows)}
    (folder / "manifest.json").write_text(json.dumps({
        "format": "clip_jax.embed", "format_version": 1, "inputs_sha256": "0" * 64, "items": 16, "shard_size": 6,
        "num_shards": len(rows), "model": "m", "dtype": "float32", "emb_dtype": "float16", "image": True,
        "text": False, "shards": shards}, indent=1, sort_keys=True))
    (folder / "errors.tsv").write_text("path\treason\nbad.png\tnot an image\n")
    return folder


def _v2_folder(folder: Path, rows: list[np.ndarray], text: list[np.ndarray]) -> Path:
    """format_version 2 (tar or parquet shards): a done marker per shard, the manifest lists them all at the end."""
    files = _data_files(folder, rows, text, lambda k, n: {"image_path": [f"{k}/{i}" for i in range(n)],
                                                           "key": [f"{k}/{i}" for i in range(n)],
                                                           "caption": [f"caption {i}" for i in range(n)]})
    (folder / "done").mkdir()
    shards = {}
    for k, r in enumerate(rows):
        own = {rel: size for rel, size in files.items() if rel.endswith((f"_{k}.npy", f"_{k}.parquet"))}
        shards[str(k)] = {"shard": f"data/{k:05d}.tar", "items": len(r), "rows": len(r), "errors": [], "files": own}
        (folder / "done" / f"done_{k}.json").write_text(json.dumps(shards[str(k)], sort_keys=True))
    (folder / "manifest.json").write_text(json.dumps({
        "format": "clip_jax.embed", "format_version": 2, "input_format": "tar", "shards_sha256": "0" * 64,
        "num_shards": len(rows), "model": "m", "dtype": "float32", "emb_dtype": "float16", "image": True,
        "text": True, "image_column": None, "caption_column": None, "shards": shards}, indent=1, sort_keys=True))
    (folder / "errors.tsv").write_text("shard\tkey\treason\n")
    return folder


@pytest.mark.parametrize("version", [1, 2])
def test_folders_of_format_versions_1_and_2_are_searched_whole(tmp_path, version):
    """The folders the jobs wrote before format 3 (the layouts above, as they were written) answer every
    query with the brute-force top k over all their rows; one shard's file cut short is still refused."""
    rng = np.random.default_rng(version)
    rows = [rng.standard_normal((n, DIM)) for n in (6, 4, 5)]
    folder = tmp_path / "folder"
    if version == 1:
        _v1_folder(folder, rows)
    else:
        _v2_folder(folder, rows, [rng.standard_normal((len(r), DIM)) for r in rows])
    queries = rng.standard_normal((3, DIM))
    flat = np.concatenate([r.astype(np.float16).astype(np.float32) for r in rows])
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    order = np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ flat.T, axis=1, kind="stable")
    names = [f"{k}/{i}" for k, r in enumerate(rows) for i in range(len(r))]
    assert values(search(folder, queries, k=5)) == [[names[i] for i in q[:5]] for q in order]
    npy = folder / "img_emb" / "img_emb_1.npy"
    npy.write_bytes(npy.read_bytes()[:-2])
    with pytest.raises(InputError, match=r"img_emb_1\.npy"):
        search(folder, queries, k=5)


# --- 6. answers a person (or a script) can read ---------------------------------------------------------


def shard_job_folder(folder: Path, model: Path) -> Path:
    """One shard of a shard job: image_path = key (as clip-retrieval), a caption, a json field, a NaN."""
    add_shard(folder, 0, np.eye(3, DIM))
    pq.write_table(pa.table({"image_path": ["a", "b", "c"], "key": ["a", "b", "c"],
                             "caption": ["a red\ncar", None, "a dog"], "width": [640, 480, 320],
                             "score": [0.5, float("nan"), 1.0]}), folder / "metadata" / "metadata_0.parquet")
    (folder / "manifest.json").write_text(json.dumps({"model": str(model), "dtype": "float32", "shards": {}}))
    return folder


def test_hits_carry_the_rows_metadata_and_their_input_shard(tmp_path, model):
    folder = shard_job_folder(tmp_path / "f", model)
    hits = search(folder, np.eye(1, DIM), k=2)[0]
    assert [(h.value, h.source, h.row) for h in hits] == [("a", "00000.tar", 0), ("b", "00000.tar", 1)]
    assert hits[0].metadata == {"image_path": "a", "key": "a", "caption": "a red\ncar", "width": 640, "score": 0.5}
    files = search(_files_job(tmp_path / "g"), np.eye(1, DIM), k=1)[0][0]  # image files: the path is the source
    assert (files.metadata, files.source) == ({"image_path": "imgs/x.png", "caption": "x"}, None)


def _files_job(folder: Path) -> Path:
    add_shard(folder, 0, np.eye(2, DIM))
    pq.write_table(pa.table({"image_path": ["imgs/x.png", "imgs/y.png"], "caption": ["x", "y"]}),
                   folder / "metadata" / "metadata_0.parquet")
    return folder


def test_cli_search_prints_source_and_caption(tmp_path, model, capsys, monkeypatch):
    folder = shard_job_folder(tmp_path / "f", model)
    assert cli.main(["search", str(folder), "a photo", "-k", "3", "--numpy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    parsed = {line.split("\t")[1]: line.split("\t")[2:] for line in lines}
    assert parsed == {"a": ["in 00000.tar", "a red car"], "b": ["in 00000.tar"], "c": ["in 00000.tar", "a dog"]}
    assert cli.main(["search", str(folder), "a photo", "-k", "3", "--numpy", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_key = {r["key"]: r for r in rows}
    assert by_key["b"] == {"score": by_key["b"]["score"], "shard": "00000.tar", "image_path": "b", "key": "b",
                           "caption": None, "width": 480, "metadata.score": None}  # NaN: null, not bare NaN
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert [line.split("\t")[0] for line in lines] == [f"{r['score']:.4f}" for r in rows]


def test_cli_search_of_image_files_prints_the_path_as_given(tmp_path, model, capsys):
    folder = _files_job(tmp_path / "g")
    (folder / "manifest.json").write_text(json.dumps({"model": str(model), "dtype": "float32", "shards": {}}))
    assert cli.main(["search", str(folder), "a photo", "-k", "2", "--numpy"]) == 0
    lines = sorted(line.split("\t")[1:] for line in capsys.readouterr().out.splitlines())
    assert lines == [["imgs/x.png", "x"], ["imgs/y.png", "y"]]


@pytest.mark.parametrize("make, says", [
    (lambda p: p, "no such folder"),
    (lambda p: (p.write_text("x"), p)[1], "not a folder"),
    (lambda p: p.mkdir() or p, "no img_emb_*.npy files"),
])
def test_cli_search_of_a_missing_folder_says_so(tmp_path, model, capsys, make, says):
    folder = make(tmp_path / "out")
    assert cli.main(["search", str(folder), "a photo"]) == 1
    line = one_line(capsys.readouterr().err)
    assert says in line and "manifest" not in line, line
