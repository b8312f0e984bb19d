"""`clip-jax embed` on WebDataset and parquet shards: one output shard per input shard, metadata columns,
errors with shard and key, an fsspec destination, kill-and-rerun, and two processes that each hold only
their own shards writing what one process writes.

Rows are stored as float16 and compared with the float32 model output to 5e-4 (see test_cli.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import clip_jax
from clip_jax import cli
from clip_jax.embed_shards import plan

from .shards import make_samples, write_parquet, write_tar
from .test_multihost import reserved_port, wait_all
from .tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]
FP16_ATOL = 5e-4
SIZES = [5, 7, 3]  # samples per shard; shard 1 has a corrupt image at position 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    samples = [make_samples(k, n, corrupt=2 if k == 1 else None) for k, n in enumerate(SIZES)]
    for k, s in enumerate(samples):
        write_tar(tmp / "data" / f"{k:05d}.tar", s)
    model = save_tiny(tmp / "tiny.safetensors")
    return tmp, samples, model


def main(*argv) -> int:
    return cli.main([str(a) for a in argv])


def args(inputs, out, model, *extra) -> list:
    return ["embed", *inputs, "-o", out, "--model", model, "--batch-size", 4, "--no-progress", *extra]


def expected_rows(model_path, shards) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per shard, (image rows, caption rows) of its readable samples, computed in one batch."""
    model, preprocess = clip_jax.load(model_path)
    ok = [[s for s in shard if not s["jpg"].startswith(b"\xff\xd8\xff not")] for shard in shards]
    flat = [s for shard in ok for s in shard]
    img = np.asarray(clip_jax.l2_normalize(model.encode_image(np.stack([preprocess.pixels(s["jpg"]) for s in flat]))))
    txt = np.asarray(clip_jax.l2_normalize(model.encode_text(clip_jax.tokenize([s["txt"] for s in flat]))))
    bounds = np.cumsum([0] + [len(shard) for shard in ok])
    return [(img[a:b], txt[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def folder_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full_run(data):
    tmp, _, model = data
    out = tmp / "full"
    assert main(*args([tmp / "data" / "{00000..00002}.tar"], out, model)) == 0
    return out


def test_one_output_shard_per_input_shard(data, full_run):
    _, samples, model = data
    assert sorted(folder_files(full_run)) == [
        "done/done_0.json", "done/done_1.json", "done/done_2.json", "errors.tsv",
        "img_emb/img_emb_0.npy", "img_emb/img_emb_1.npy", "img_emb/img_emb_2.npy", "manifest.json",
        "metadata/metadata_0.parquet", "metadata/metadata_1.parquet", "metadata/metadata_2.parquet",
        "text_emb/text_emb_0.npy", "text_emb/text_emb_1.npy", "text_emb/text_emb_2.npy"]
    for k, (img, txt) in enumerate(expected_rows(model, samples)):
        np.testing.assert_allclose(np.load(full_run / "img_emb" / f"img_emb_{k}.npy"), img, atol=FP16_ATOL)
        np.testing.assert_allclose(np.load(full_run / "text_emb" / f"text_emb_{k}.npy"), txt, atol=FP16_ATOL)


def test_metadata_has_key_caption_and_json_fields_in_input_order(data, full_run):
    _, samples, _ = data
    meta = pq.read_table(full_run / "metadata" / "metadata_1.parquet").to_pydict()
    kept = [s for i, s in enumerate(samples[1]) if i != 2]
    assert list(meta) == ["image_path", "key", "caption", "width", "source", "score"]
    assert meta["key"] == meta["image_path"] == [s["__key__"] for s in kept]
    assert meta["caption"] == [s["txt"] for s in kept]
    assert meta["score"] == [s["json"]["score"] for s in kept] and meta["source"] == ["s1"] * 6


def test_errors_name_shard_and_key(data, full_run):
    tmp, samples, _ = data
    lines = (full_run / "errors.tsv").read_text().splitlines()
    assert lines[0] == "shard\tkey\treason" and len(lines) == 2
    shard, key, reason = lines[1].split("\t")
    assert shard.endswith("00001.tar") and key == samples[1][2]["__key__"] and "image" in reason
    manifest = json.loads((full_run / "manifest.json").read_text())
    assert manifest["num_shards"] == 3 and sorted(manifest["shards"]) == ["0", "1", "2"]
    assert [manifest["shards"][k]["rows"] for k in "012"] == [5, 6, 3]


def test_rerun_of_a_finished_job_changes_nothing(data, full_run, capsys):
    tmp, _, model = data
    before = folder_files(full_run)
    assert main(*args([tmp / "data" / "{00000..00002}.tar"], full_run, model)) == 0
    assert "0 shards done in this run" in capsys.readouterr().out
    assert folder_files(full_run) == before


def test_killed_then_rerun_equals_an_uninterrupted_run(data, full_run, tmp_path):
    tmp, _, model = data
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    argv = [str(a) for a in args([tmp / "data" / "{00000..00002}.tar"], out, model)]
    proc = subprocess.run([sys.executable, "-m", "tests.kill_after_files", "1", *argv], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(os.listdir(out / "done")) == ["done_0.json"]  # shard 1's files are there, not its marker
    assert main(*argv) == 0
    assert folder_files(out) == folder_files(full_run)


def test_another_job_in_the_folder_is_refused(data, full_run, capsys):
    tmp, _, model = data
    assert main(*args([tmp / "data" / "{00000..00001}.tar"], full_run, model)) == 1
    assert "holds another embedding job" in capsys.readouterr().err


def test_parquet_equals_the_same_samples_as_tar(data, full_run, tmp_path):
    tmp, samples, model = data
    for k, s in enumerate(samples):  # shard 1's images as {bytes, path} structs, the others as bytes
        write_parquet(tmp_path / f"p{k}.parquet", s, struct=k == 1, row_group_size=2)
    out = tmp_path / "out"
    assert main(*args([tmp_path / "p{0..2}.parquet"], out, model, "--image-column", "image")) == 0
    for k in range(3):
        np.testing.assert_array_equal(np.load(out / "img_emb" / f"img_emb_{k}.npy"),
                                      np.load(full_run / "img_emb" / f"img_emb_{k}.npy"))
        meta = pq.read_table(out / "metadata" / f"metadata_{k}.parquet").to_pydict()
        assert meta["key"] == pq.read_table(full_run / "metadata" / f"metadata_{k}.parquet").column("key").to_pylist()


def test_fsspec_source_and_destination(data, full_run):
    import fsspec

    tmp, _, model = data
    fs = fsspec.filesystem("memory")
    for k in range(3):
        fs.pipe(f"/in/{k:05d}.tar", (tmp / "data" / f"{k:05d}.tar").read_bytes())
    assert main(*args(["memory://in/{00000..00002}.tar"], "memory://out", model)) == 0
    for name, data_ in folder_files(full_run).items():
        if name.endswith(".npy"):
            assert fs.cat(f"/out/{name}") == data_, name
    assert "00001.tar" in fs.cat("/out/errors.tsv").decode()


def test_plan_gives_each_shard_to_one_process():
    plans = [plan(10, p, 3) for p in range(3)]
    assert sorted(k for p in plans for k in p) == list(range(10)) and plans[1] == [1, 4, 7]


def test_two_processes_each_with_only_its_own_shards_equal_one(data, full_run, tmp_path):
    """Same command in two processes (2 CPU devices each), run from two folders that each hold only the
    shards that process owns (as two hosts with local disks): the output folder equals one process's."""
    tmp, _, model = data
    for pid in (0, 1):
        host = tmp_path / f"host{pid}"
        (host / "data").mkdir(parents=True)
        for k in plan(3, pid, 2):
            (host / "data" / f"{k:05d}.tar").write_bytes((tmp / "data" / f"{k:05d}.tar").read_bytes())
    out = tmp_path / "two"
    with reserved_port() as port:  # held until the workers have used it (see test_multihost)
        coordinator = f"127.0.0.1:{port}"
        logs = [tmp_path / f"log{i}.txt" for i in range(2)]
        procs = []
        for pid in (0, 1):
            argv = [str(a) for a in args(["data/{00000..00002}.tar"], out, model)]
            argv += ["--coordinator", coordinator, "--num-processes", "2", "--process-id", str(pid)]
            env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
                   "PYTHONPATH": str(ROOT)}
            procs.append(subprocess.Popen([sys.executable, "-m", "clip_jax.cli", *argv], env=env,
                                          cwd=tmp_path / f"host{pid}", stdout=logs[pid].open("w"),
                                          stderr=subprocess.STDOUT, start_new_session=True))
        wait_all(procs, logs)
    one, two = folder_files(full_run), folder_files(out)
    assert sorted(one) == sorted(two)
    for name in one:
        if name.endswith(".npy"):
            np.testing.assert_allclose(np.load(out / name), np.load(full_run / name), atol=FP16_ATOL)
        elif name.endswith(".parquet"):
            assert pq.read_table(out / name).equals(pq.read_table(full_run / name)), name
        elif name == "manifest.json":  # the shard names are relative to each run's folder
            a, b = json.loads(one[name]), json.loads(two[name])
            assert [s["rows"] for s in a["shards"].values()] == [s["rows"] for s in b["shards"].values()]
    assert two["errors.tsv"].decode().count("\n") == 2


# --- search -----------------------------------------------------------------------------------------


def test_search_by_image_finds_the_image_itself_first(data, full_run, tmp_path, capsys):
    _, samples, _ = data
    query = tmp_path / "query.jpg"
    query.write_bytes(samples[2][1]["jpg"])
    assert main("search", full_run, "--image", query, "-k", 3) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split("\t")[1] == samples[2][1]["__key__"]
    assert float(lines[0].split("\t")[0]) > 0.999
    assert main("search", full_run) == 1 and "QUERY or --image" in capsys.readouterr().err


def test_search_on_the_devices_equals_numpy(tmp_path):
    from clip_jax.search import search

    rng = np.random.default_rng(0)
    (tmp_path / "img_emb").mkdir()
    (tmp_path / "metadata").mkdir()
    import pyarrow as pa

    for k, rows in enumerate([37, 5, 60]):
        np.save(tmp_path / "img_emb" / f"img_emb_{k}.npy", rng.standard_normal((rows, 16)).astype(np.float16))
        pq.write_table(pa.table({"image_path": [f"{k}/{i}" for i in range(rows)]}),
                       tmp_path / "metadata" / f"metadata_{k}.parquet")
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    for k in (1, 7):
        on_cpu = search(tmp_path, queries, k=k, chunk_rows=16)
        on_devices = search(tmp_path, queries, k=k, chunk_rows=16, device=True)
        for a, b in zip(on_cpu, on_devices):
            assert [h.value for h in a] == [h.value for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)


def test_index_then_search_uses_it(data, full_run, tmp_path, capsys):
    pytest.importorskip("faiss")
    import shutil

    _, samples, _ = data
    folder = tmp_path / "indexed"
    shutil.copytree(full_run, folder)
    exact = main("search", folder, "photo 3 of shard 0", "-k", 4), capsys.readouterr().out
    assert main("index", folder) == 0 and (folder / "image.index").exists()
    capsys.readouterr()
    indexed = main("search", folder, "photo 3 of shard 0", "-k", 4), capsys.readouterr().out
    assert exact == indexed  # a Flat index below 100k rows: the same hits
    scores = [float(line.split("\t")[0]) for line in indexed[1].splitlines()]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
