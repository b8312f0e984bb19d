"""`clip-jax embed` on WebDataset and parquet shards: one output shard per input shard, metadata columns,
errors with shard and key, an fsspec destination, kill-and-rerun, and two processes that each hold only
their own shards writing what one process writes.

Rows are stored as float16 and compared with the float32 model output to 5e-4 (see test_cli.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import clip_jax
from clip_jax.cli import main as cli
from clip_jax.jobs.embed_shards import plan

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


@pytest.fixture(scope="module")
def run_embed(data):
    """embed() as the command line calls it (batch 4, this process's devices), with one ShardedCLIP whose
    compiled programs every call reuses: for the tests whose point is not the command line (~0.1 s a
    call rather than a compile each)."""
    import jax

    from clip_jax import parallel
    from clip_jax.jobs import embed

    _, _, model = data
    sharded, _ = embed._load_sharded(str(model), "float32", None, parallel.make_mesh(1, devices=jax.local_devices()), 4)

    def run(inputs, out, **kw):
        return embed.embed([str(i) for i in inputs], str(out), str(model), batch_size=4, progress=False,
                           sharded=sharded, **kw)

    return run


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


# Shard 1's writes, in order: its image .npy, text .npy, metadata, done marker. Killed right after each,
# the rerun must equal an uninterrupted run, and only after the last may shard 1 be marked done. A job
# that wrote the marker first (a mutation the previous test, killing at the marker itself, let pass) fails
# at N=1: done_1.json is there over missing files. (The rerun would heal it, as done means whole, so
# the state after the kill is what catches it.) N=1 runs by default; the others are -m slow.
WRITES = ["img_emb", "text_emb", "metadata", "done"]


@pytest.mark.parametrize("n", [1, *(pytest.param(n, marks=pytest.mark.slow) for n in (2, 3, 4))])
def test_killed_after_each_write_then_rerun_equals_an_uninterrupted_run(data, full_run, run_embed, tmp_path, capfd,
                                                                        n):
    tmp, _, model = data
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    argv = [str(a) for a in args([tmp / "data" / "{00000..00002}.tar"], out, model)]
    proc = subprocess.run([sys.executable, "-m", "tests.kill_after_files", f"1:{n}", *argv], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    written = {p.parent.name for p in out.rglob("*_1.*")}
    assert written == set(WRITES[:n])  # killed right after the nth write, and only then
    assert sorted(os.listdir(out / "done")) == ["done_0.json"] + (["done_1.json"] if n == 4 else [])
    capfd.readouterr()
    assert run_embed([tmp / "data" / "{00000..00002}.tar"], out).shards_done_now == (1 if n == 4 else 2)
    assert "warning" not in capfd.readouterr().err  # nothing the kill left needed repairing
    assert folder_files(out) == folder_files(full_run)


def test_another_job_in_the_folder_is_refused(data, full_run, capsys):
    tmp, _, model = data
    assert main(*args([tmp / "data" / "{00000..00001}.tar"], full_run, model)) == 1
    assert "holds another embedding job" in capsys.readouterr().err


@pytest.mark.parametrize("manifest", [b"[]", b"[" * 100_000, b"\xff"])
def test_a_manifest_that_is_not_one_is_one_line(data, tmp_path, capsys, manifest):
    """On main: AttributeError ('list' has no 'get') or RecursionError tracebacks."""
    tmp, _, model = data
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_bytes(manifest)
    assert main(*args([tmp / "data" / "{00000..00002}.tar"], out, model)) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "manifest.json: not a valid manifest" in err, err


def test_a_small_shard_job_steps_buckets_not_the_full_batch(data, full_run, tmp_path):
    """At --batch-size 256, shards of 5, 7 and 3 samples step 8-row programs (images, then the kept
    captions: 5, 6, 3), not 256-row ones; the rows equal the full-batch path's (every batch padded to
    256) and batch 4's to the float16 spacing, the metadata bit for bit."""
    import jax

    from clip_jax import parallel
    from clip_jax.jobs import embed

    from .test_parallel import _record_steps

    tmp, _, model = data
    outs = {}
    for name, buckets in (("buckets", None), ("full", ())):
        clip, _ = clip_jax.load(str(model))
        sharded = parallel.ShardedCLIP(clip, parallel.make_mesh(1, devices=jax.local_devices()), batch_size=256,
                                       buckets=buckets)
        steps = _record_steps(sharded)
        outs[name] = tmp_path / name
        embed.embed([str(tmp / "data" / "{00000..00002}.tar")], str(outs[name]), str(model), batch_size=256,
                    progress=False, sharded=sharded)
        want = [8] * 3 if buckets is None else [256] * 3
        assert [r for kind, r in steps if kind == "image"] == want
        assert [r for kind, r in steps if kind == "text"] == want
    for k in range(3):
        for sub in ("img_emb/img_emb", "text_emb/text_emb"):
            got = np.load(outs["buckets"] / f"{sub}_{k}.npy").astype(np.float32)
            np.testing.assert_allclose(got, np.load(outs["full"] / f"{sub}_{k}.npy"), atol=FP16_ATOL, rtol=0)
            np.testing.assert_allclose(got, np.load(full_run / f"{sub}_{k}.npy"), atol=FP16_ATOL, rtol=0)
        meta = f"metadata/metadata_{k}.parquet"
        assert (outs["buckets"] / meta).read_bytes() == (outs["full"] / meta).read_bytes()


def test_a_shard_equals_the_same_images_as_files_bit_for_bit(data, tmp_path):
    """At batch 16, a shard of 5 images and a folder of the same 5 both step the bucket of 8, so their
    rows are the same computation, bit for bit."""
    import jax

    from clip_jax import parallel
    from clip_jax.jobs import embed

    tmp, samples, model = data
    paths = []
    for sample in samples[0]:
        paths.append(str(tmp_path / f"{sample['__key__']}.jpg"))
        Path(paths[-1]).write_bytes(sample["jpg"])
    sharded, _ = embed._load_sharded(str(model), "float32", None, parallel.make_mesh(devices=jax.local_devices()), 16)
    for inputs, out in (([str(tmp / "data" / "00000.tar")], "shard"), (paths, "files")):
        embed.embed(inputs, str(tmp_path / out), str(model), batch_size=16, progress=False, sharded=sharded,
                    emb_dtype="float32")
    np.testing.assert_array_equal(np.load(tmp_path / "shard" / "img_emb" / "img_emb_0.npy"),
                                  np.load(tmp_path / "files" / "img_emb" / "img_emb_0.npy"))


def test_parquet_equals_the_same_samples_as_tar(data, full_run, run_embed, tmp_path):
    tmp, samples, model = data
    for k, s in enumerate(samples):  # shard 1's images as {bytes, path} structs, the others as bytes
        write_parquet(tmp_path / f"p{k}.parquet", s, struct=k == 1, row_group_size=2)
    out = tmp_path / "out"
    assert run_embed([tmp_path / "p{0..2}.parquet"], out, image_column="image").rows == 14
    for k in range(3):
        np.testing.assert_array_equal(np.load(out / "img_emb" / f"img_emb_{k}.npy"),
                                      np.load(full_run / "img_emb" / f"img_emb_{k}.npy"))
        meta = pq.read_table(out / "metadata" / f"metadata_{k}.parquet").to_pydict()
        assert meta["key"] == pq.read_table(full_run / "metadata" / f"metadata_{k}.parquet").column("key").to_pylist()


def same_outputs(out: Path, want: Path) -> None:
    """The embeddings and metadata equal (markers and errors.tsv name each run's own input paths)."""
    a, b = folder_files(out), folder_files(want)
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith((".npy", ".parquet")):
            assert a[name] == b[name], name


def test_shards_that_cannot_be_read_fail_alone(data, full_run, run_embed, tmp_path, capsys):
    """Shard 1 cut inside its 6th sample (after a first batch was embedded), shard 2 missing: shard 0 is
    done and kept, shards 1 and 2 are not marked done, the command says so in one line and exits 1, and
    a rerun once they are back does them alone. On main the error stopped the job where it arose, and
    done markers of finished shards still in the pipeline were never written."""
    tmp, _, model = data
    src = tmp_path / "data"
    shutil.copytree(tmp / "data", src)
    cut, missing = src / "00001.tar", src / "00002.tar"
    whole = {p: p.read_bytes() for p in (cut, missing)}
    cut.write_bytes(whole[cut][: whole[cut].index(b"000010005.jpg") + 512 + 100])  # inside the member's data
    missing.unlink()
    out = tmp_path / "out"
    argv = args([src / "{00000..00002}.tar"], out, model)
    assert main(*argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "2 of 3 shards could not be read" in err and "00001.tar" in err and "00002.tar" in err
    assert "rerunning the same command retries these" in err
    assert sorted(os.listdir(out / "done")) == ["done_0.json"]
    assert not (out / "img_emb" / "img_emb_1.npy").exists()
    assert json.loads((out / "manifest.json").read_text())["shards"] == {}  # the job is not complete
    failed = [line.split("\t") for line in (out / "errors.tsv").read_text().splitlines()[-2:]]
    assert [(shard, key) for shard, key, _ in failed] == [(str(cut), ""), (str(missing), "")]
    for p, data_ in whole.items():
        p.write_bytes(data_)
    assert run_embed([src / "{00000..00002}.tar"], out).shards_done_now == 2
    same_outputs(out, full_run)


def test_a_rerun_redoes_the_shards_whose_files_are_not_whole(data, full_run, run_embed, tmp_path, capsys):
    """Done means whole: a deleted .npy, a short one, a done marker that is `[]`: each shard is warned
    about in one line naming the file and embedded again; the folder then equals an uninterrupted run."""
    tmp, _, model = data
    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    (out / "img_emb" / "img_emb_0.npy").unlink()
    short = out / "text_emb" / "text_emb_1.npy"
    short.write_bytes(short.read_bytes()[:-8])
    (out / "done" / "done_2.json").write_text("[]")
    assert run_embed([tmp / "data" / "{00000..00002}.tar"], out).shards_done_now == 3
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: ") and "embedded again" in w for w in warnings)
    assert "done_0.json: img_emb/img_emb_0.npy is missing" in warnings[0]
    assert "done_1.json: text_emb/text_emb_1.npy has" in warnings[1]
    assert "done_2.json: not a JSON object (list)" in warnings[2]
    assert folder_files(out) == folder_files(full_run)


@pytest.mark.parametrize("marker, problem", [
    (b"", "empty"), (b"[]", "not a JSON object"), (b"{not json", "not JSON"), (b"[" * 100_000, "not JSON"),
    (b'{"items": 3}', "no valid items and rows"), (b'{"items": 3, "rows": 4, "errors": []}', "items and rows"),
    (b'{"items": 3, "rows": 3, "errors": [["k"]], "shard": "s"}', "no valid errors list"),
    (b'{"items": 3, "rows": 3, "errors": [], "shard": "other"}', "another input shard"),
    (b'{"items": 3, "rows": 3, "errors": [], "shard": "s"}', "does not record its files"),  # before sizes
    (b'{"items": 3, "rows": 3, "errors": [], "shard": "s", "files": {"a.npy": "9"}}', "does not record"),
])
def test_a_done_marker_that_is_not_one_is_named_and_its_shard_redone(marker, problem):
    from clip_jax.jobs.embed_folder import read_marker

    summary, why = read_marker(marker, "s", {"image": "a.npy"})
    assert summary is None and problem in why
    good = b'{"items": 3, "rows": 3, "errors": [["k", "r"]], "shard": "s", "files": {"a.npy": 9}}'
    assert read_marker(good, "s", {"image": "a.npy"}) == (json.loads(good), None)


def test_a_column_of_paths_is_read_only_with_image_paths(data, full_run, run_embed, tmp_path):
    """A parquet image column of local paths: never opened by default (each row an error in errors.tsv,
    the job completes); read, as the same images, when --image-paths says the column holds paths."""
    import pyarrow as pa

    tmp, samples, model = data
    paths = []
    for s in samples[0]:
        paths.append(tmp_path / f"{s['__key__']}.jpg")
        paths[-1].write_bytes(s["jpg"])
    pq.write_table(pa.table({"key": [s["__key__"] for s in samples[0]], "image": [str(p) for p in paths],
                             "caption": [s["txt"] for s in samples[0]]}), tmp_path / "paths.parquet")
    out = tmp_path / "default"
    summary = run_embed([tmp_path / "paths.parquet"], out)
    assert (summary.items, summary.rows, summary.skipped) == (5, 0, 5)
    assert all("--image-paths" in line for line in (out / "errors.tsv").read_text().splitlines()[1:])
    out = tmp_path / "opted_in"
    assert run_embed([tmp_path / "paths.parquet"], out, image_paths=True).rows == 5
    np.testing.assert_array_equal(np.load(out / "img_emb" / "img_emb_0.npy"),
                                  np.load(full_run / "img_emb" / "img_emb_0.npy"))
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet").to_pydict()
    assert meta["image_path"] == [str(p) for p in paths] and meta["key"] == [s["__key__"] for s in samples[0]]


def test_fsspec_source_and_destination(data, full_run, run_embed, capsys):
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
    # A rerun checks the markers' sizes against one listing of each folder on the object store.
    assert run_embed(["memory://in/{00000..00002}.tar"], "memory://out").shards_done_now == 0
    fs.pipe("/out/metadata/metadata_2.parquet", b"cut")
    capsys.readouterr()
    assert run_embed(["memory://in/{00000..00002}.tar"], "memory://out").shards_done_now == 1
    assert "metadata/metadata_2.parquet has 3 bytes" in capsys.readouterr().err
    assert fs.cat("/out/metadata/metadata_2.parquet") == folder_files(full_run)["metadata/metadata_2.parquet"]


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
    # Each process prints its own shards' line; process 0 also the job's.
    out = [log.read_text() for log in logs]
    assert ": process 0 of 2: 8 rows of 8 items in its 2 shards; 2 done in this run" in out[0]
    assert ": process 1 of 2: 6 rows of 7 items in its 1 shard; 1 done in this run" in out[1]
    assert ": in all: 14 rows of 15 items in 3 shards, 1 skipped" in out[0] and "in all" not in out[1]


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
    from clip_jax.jobs.search import search

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
