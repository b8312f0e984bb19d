"""`clip-jax embed / classify / search`, the clip-retrieval layout, resuming after a SIGKILL, and search.

Embeddings are stored as float16 (clip-retrieval's choice), so rows are compared with the float32 model
output to 5e-4: unit vectors of 16 dims have entries below 1, where the float16 spacing is <= 2^-11 and
rounding moves a value by at most half of it (2.5e-4). A wrong image/row pairing moves rows by > 0.1.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import clip_jax
from clip_jax.cli import main as cli
from clip_jax.data.sources import collect_images
from clip_jax.jobs import embed_folder
from clip_jax.jobs.embed import EmbedJob
from clip_jax.jobs.embed_folder import LOCK
from clip_jax.jobs.search import search

from .tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]
FP16_ATOL = 5e-4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """14 images in nested folders (RGB, RGBA, grayscale, palette; JPEG and PNG) plus one corrupt file."""
    tmp = tmp_path_factory.mktemp("cli")
    rng = np.random.RandomState(0)
    imgs = tmp / "imgs"
    paths = []
    for i in range(14):
        folder = imgs / ("a" if i < 5 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        arr = rng.randint(0, 256, (30 + 5 * i, 40 + 3 * (i % 4), 3)).astype(np.uint8)
        img = Image.fromarray(arr)
        img = [img, img.convert("RGBA"), img.convert("L"), img.convert("P")][i % 4]
        p = folder / f"{i:02d}.{'jpg' if i % 4 == 0 else 'png'}"
        img.save(p)
        paths.append(p)
    (imgs / "b" / "notes.md").write_text("not an image")  # ignored: not an image extension
    (imgs / "a" / "04b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    model = save_tiny(tmp / "tiny.safetensors")
    return tmp, imgs, model


def main(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


def embed_args(inputs, out, model, *extra) -> list:
    return ["embed", *inputs, "-o", out, "--model", model, "--shard-size", 4, "--batch-size", 4, "--no-progress",
            *extra]


def read_folder(out: Path) -> dict:
    """Every file of an embedding folder: arrays as they are, parquet as dicts."""
    got = {}
    for p in sorted(out.rglob("*")):
        if p.suffix == ".npy":
            got[str(p.relative_to(out))] = np.load(p)
        elif p.suffix == ".parquet":
            got[str(p.relative_to(out))] = pq.read_table(p).to_pydict()
        elif p.is_file():
            got[str(p.relative_to(out))] = p.read_text()
    return got


def model_rows(model_path: Path, paths: list[str]) -> np.ndarray:
    model, preprocess = clip_jax.load(model_path)
    return np.asarray(clip_jax.l2_normalize(model.encode_image(np.stack([preprocess.pixels(p) for p in paths]))))


# --- inputs ------------------------------------------------------------------------------------------


def test_collect_images_folders_lists_globs(data, tmp_path):
    _, imgs, _ = data
    found = collect_images([imgs])
    names = [Path(p).name for p in found]
    assert names == ["00.jpg", "01.png", "02.png", "03.png", "04.jpg", "04b_corrupt.png"] + [
        f"{i:02d}.{'jpg' if i % 4 == 0 else 'png'}" for i in range(5, 14)]  # sorted, recursive, .md left out
    lst = tmp_path / "list.txt"
    lst.write_text(f"# a comment\n{imgs / 'a' / '01.png'}\n\nrel.png\n")
    assert collect_images([lst]) == [str(imgs / "a" / "01.png"), str(tmp_path / "rel.png")]
    pattern = str(imgs / "**" / "1*.png")
    assert [Path(p).name for p in collect_images([pattern])] == ["10.png", "11.png", "13.png"]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        collect_images([tmp_path / "missing"])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        collect_images([str(tmp_path / "*.nothing")])


# --- embed -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(data):
    tmp, imgs, model = data
    out = tmp / "full"
    assert main(*embed_args([imgs], out, model)) == 0
    return out


def test_embed_writes_clip_retrieval_layout(data, full_run):
    _, imgs, model = data
    files = read_folder(full_run)
    assert sorted(files) == [
        "done/done_0.json", "done/done_1.json", "done/done_2.json", "done/done_3.json", "errors.tsv",
        "img_emb/img_emb_0.npy", "img_emb/img_emb_1.npy", "img_emb/img_emb_2.npy", "img_emb/img_emb_3.npy",
        "manifest.json", "metadata/metadata_0.parquet", "metadata/metadata_1.parquet",
        "metadata/metadata_2.parquet", "metadata/metadata_3.parquet",
    ]
    emb = np.concatenate([files[f"img_emb/img_emb_{k}.npy"] for k in range(4)])
    meta = sum((files[f"metadata/metadata_{k}.parquet"]["image_path"] for k in range(4)), [])
    assert emb.dtype == np.float16 and emb.shape == (14, 16)
    assert [len(files[f"img_emb/img_emb_{k}.npy"]) for k in range(4)] == [4, 3, 4, 3]  # the bad file is in shard 1
    good = [p for p in collect_images([imgs]) if "corrupt" not in p]
    assert meta == good
    np.testing.assert_allclose(emb.astype(np.float32), model_rows(model, good), atol=FP16_ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1, atol=2e-3)
    lines = files["errors.tsv"].splitlines()
    assert lines[0] == "path\treason" and len(lines) == 2
    assert lines[1].startswith(str(imgs / "a" / "04b_corrupt.png") + "\t")


def test_embed_resumes_after_sigkill(data, full_run, tmp_path):
    _, imgs, model = data
    out = tmp_path / "resumed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    argv = [sys.executable, "-m", "tests.kill_after_files", "1", *map(str, embed_args([imgs], out, model))]
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    # Killed right after shard 1's files were written, before its done marker said it was done.
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(os.listdir(out / "done")) == ["done_0.json"]
    assert json.loads((out / "manifest.json").read_text())["shards"] == {}  # listed once all are done
    assert (out / "img_emb" / "img_emb_1.npy").exists()
    assert not (out / "img_emb" / "img_emb_2.npy").exists()

    assert main(*embed_args([imgs], out, model)) == 0
    want, got = read_folder(full_run), read_folder(out)
    assert sorted(got) == sorted(want)
    for name in want:
        if name.endswith(".npy"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)  # the same computation, bit for bit
        elif name != "manifest.json":
            assert got[name] == want[name], name
    manifest = json.loads((out / "manifest.json").read_text())
    full_manifest = json.loads((full_run / "manifest.json").read_text())
    assert manifest["shards"] == full_manifest["shards"]


def test_embed_rerun_of_a_finished_job_does_nothing(data, full_run, capsys):
    _, imgs, model = data
    before = {p: p.stat().st_mtime_ns for p in full_run.rglob("*.npy")}
    assert main(*embed_args([imgs], full_run, model)) == 0
    assert "0 shards done in this run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in full_run.rglob("*.npy")} == before


def test_embed_refuses_another_job_in_the_same_folder(data, full_run, capsys):
    _, imgs, model = data
    assert main(*embed_args([imgs / "a"], full_run, model)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds another embedding job" in err[0] and "inputs_sha256" in err[0]


def test_embed_captions_only(data, tmp_path):
    _, _, model = data
    captions = ["a dog", "a cat on a mat", "", "two red cars " * 30]  # empty, and too long: truncated
    (tmp_path / "caps.txt").write_text("\n".join(captions) + "\n")
    out = tmp_path / "out"
    assert main(*embed_args([], out, model, "--captions", tmp_path / "caps.txt", "--emb-dtype", "float32")) == 0
    files = read_folder(out)
    assert sorted(files) == ["done/done_0.json", "errors.tsv", "manifest.json", "metadata/metadata_0.parquet",
                             "text_emb/text_emb_0.npy"]
    assert files["metadata/metadata_0.parquet"] == {"caption": captions}
    m, _ = clip_jax.load(model)
    want = clip_jax.l2_normalize(m.encode_text(clip_jax.tokenizer.tokenize(captions, truncate=True)))
    assert files["text_emb/text_emb_0.npy"].dtype == np.float32
    np.testing.assert_allclose(files["text_emb/text_emb_0.npy"], want, atol=1e-5, rtol=0)


def test_embed_pairs_images_with_captions(data, tmp_path):
    _, imgs, model = data
    paths = collect_images([imgs / "a"])  # 5 images and the corrupt one (5th of 6)
    captions = [f"caption {i}" for i in range(len(paths))]
    (tmp_path / "caps.txt").write_text("\n".join(captions) + "\n")
    out = tmp_path / "out"
    assert main(*embed_args([imgs / "a"], out, model, "--captions", tmp_path / "caps.txt")) == 0
    files = read_folder(out)
    m0, m1 = files["metadata/metadata_0.parquet"], files["metadata/metadata_1.parquet"]
    meta = {k: m0[k] + m1[k] for k in m0}
    keep = [i for i, p in enumerate(paths) if "corrupt" not in p]
    assert meta == {"image_path": [paths[i] for i in keep], "caption": [captions[i] for i in keep]}
    text = np.concatenate([files["text_emb/text_emb_0.npy"], files["text_emb/text_emb_1.npy"]])
    m, _ = clip_jax.load(model)
    want = clip_jax.l2_normalize(m.encode_text(clip_jax.tokenizer.tokenize([captions[i] for i in keep])))
    assert text.shape == (5, 16)
    np.testing.assert_allclose(text.astype(np.float32), want, atol=FP16_ATOL, rtol=0)  # the caption of row i


def test_embed_user_errors_are_one_line(data, tmp_path, capsys):
    _, imgs, model = data
    (tmp_path / "caps.txt").write_text("one\ntwo\n")
    cases = [
        (embed_args([imgs], tmp_path / "o1", tmp_path / "missing.safetensors"), "missing.safetensors"),
        (embed_args([imgs], tmp_path / "o2", model, "--captions", tmp_path / "caps.txt"), "15 images but 2 captions"),
        (embed_args([tmp_path / "nope"], tmp_path / "o3", model), "nope: no such file or folder"),
        (["embed", "-o", tmp_path / "o4", "--model", model], "nothing to embed"),
        (embed_args([imgs], tmp_path / "o5", model, "--attention", "cudnn"), "needs dtype bfloat16 or float16"),
    ]
    if jax.default_backend() != "gpu":
        cases.append((embed_args([imgs], tmp_path / "o6", model, "--attention", "cudnn", "--dtype", "bfloat16"),
                      "needs an NVIDIA GPU"))
    for argv, message in cases:
        assert main(*argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("clip-jax: error:") and message in err[0], err
    assert not list(tmp_path.glob("o*")), "a failed first run leaves no output folder behind"


def test_embed_failed_first_run_leaves_nothing_behind(data, tmp_path, capsys):
    """A bad --model fails after the folder is claimed: a folder it made is removed, an empty folder given
    stays (empty), and a later run with the right model works there."""
    from .shards import make_samples, write_tar

    _, imgs, model = data
    write_tar(tmp_path / "s.tar", make_samples(0, 2))
    missing = tmp_path / "missing.safetensors"
    for inputs in ([imgs], [tmp_path / "s.tar"]):
        assert main(*embed_args(inputs, tmp_path / "new", missing)) == 1
        assert not (tmp_path / "new").exists()
        (tmp_path / "empty").mkdir()
        assert main(*embed_args(inputs, tmp_path / "empty", missing)) == 1
        assert list((tmp_path / "empty").iterdir()) == []
        assert main(*embed_args(inputs, tmp_path / "empty", model)) == 0
        assert (tmp_path / "empty" / "manifest.json").is_file()
        shutil.rmtree(tmp_path / "empty")
    capsys.readouterr()


def test_embed_summary_lines():
    """One shard is "1 shard"; in a multi-process run each process prints its own line, process 0 also the
    job's ("in all")."""
    from clip_jax.jobs.embed import Summary

    assert Summary(1, 1, 0, 1, 1, 0.5).lines("out") == ["out: 1 row of 1 item in 1 shard; 1 shard done in this "
                                                        "run, 0.5 s"]
    s = Summary(7, 6, 1, 3, 2, 1.0, [("a", "b")])
    assert s.lines("out/") == ["out/: 6 rows of 7 items in 3 shards, 1 skipped (see out/errors.tsv); 2 shards done "
                               "in this run, 1.0 s"]
    own = Summary(3, 3, 0, 1, 1, 0.5)
    assert Summary(0, 0, 0, 3, 1, 0.5, own=own, process=(1, 2)).lines("out") == [
        "out: process 1 of 2: 3 rows of 3 items in its 1 shard; 1 done in this run, 0.5 s"]
    first = Summary(7, 6, 1, 3, 2, 1.0, [("a", "b")], own=own, process=(0, 2)).lines("out")
    assert first[0].startswith("out: process 0 of 2: 3 rows") and first[1].startswith("out: in all: 6 rows of 7")


# --- classify ----------------------------------------------------------------------------------------


def test_classify_prints_top_k(data, capsys):
    _, imgs, model = data
    good, bad = imgs / "a" / "01.png", imgs / "a" / "04b_corrupt.png"
    labels = ["dog", "cat", "car"]
    rc = main("classify", good, bad, "--labels", ",".join(labels), "-k", "2", "--model", model,
              "--templates", "a photo of a {}.")
    out, err = capsys.readouterr()
    assert rc == 1  # one image could not be read
    (line,) = err.splitlines()  # one line per unreadable image, with the reason (image.py's wording)
    assert line.startswith(f"clip-jax: {bad}: ") and len(line) > len(f"clip-jax: {bad}: ")
    lines = out.splitlines()
    assert lines[0] == str(good) and len(lines) == 3

    from clip_jax.zeroshot import classify, zeroshot_classifier

    m, preprocess = clip_jax.load(model)
    probs, idx = classify(m, preprocess.pixels(good)[None], zeroshot_classifier(m, labels, ["a photo of a {}."]), k=2)
    for line, p, c in zip(lines[1:], probs[0], idx[0]):
        assert line.split() == [f"{p:.2%}", labels[c]]


def test_classify_labels_file_and_ensemble(data, tmp_path, capsys):
    """Labels from a file; by default the prompts are OpenAI's 80-template ensemble: the printed
    probabilities are the ensemble's to the 0.01% they are printed with, and a single template's are 0.09
    points or more away here."""
    from clip_jax.zeroshot import IMAGENET_TEMPLATES, classify, zeroshot_classifier

    _, imgs, model = data
    image = imgs / "a" / "01.png"
    (tmp_path / "labels.txt").write_text("dog\ncat\n\n")
    assert main("classify", image, "--labels-file", tmp_path / "labels.txt", "--model", model) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    printed = {line.split()[1]: float(line.split()[0].rstrip("%")) for line in lines[1:]}
    assert set(printed) == {"dog", "cat"} and abs(sum(printed.values()) - 100) < 0.02

    m, preprocess = clip_jax.load(model)

    def percent(templates) -> dict[str, float]:
        probs, idx = classify(m, preprocess.pixels(image)[None], zeroshot_classifier(m, ["dog", "cat"], templates))
        return {["dog", "cat"][c]: 100 * float(p) for p, c in zip(probs[0], idx[0])}

    ensemble = percent(IMAGENET_TEMPLATES)
    assert all(abs(printed[label] - ensemble[label]) <= 0.006 for label in printed), (printed, ensemble)
    for template in ("a photo of a {}.", IMAGENET_TEMPLATES[0]):
        single = percent([template])
        assert max(abs(single[label] - ensemble[label]) for label in single) > 0.05, (template, single, ensemble)


# --- search ------------------------------------------------------------------------------------------


def test_search_cli_returns_brute_force_top_k(data, full_run, capsys):
    _, _, model = data
    assert main("search", full_run, "a photo of a dog", "-k", "3") == 0  # the model from the manifest
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    m, _ = clip_jax.load(model)
    q = np.asarray(clip_jax.l2_normalize(m.encode_text(clip_jax.tokenizer.tokenize(["a photo of a dog"]))))[0]
    emb = np.concatenate([np.load(full_run / "img_emb" / f"img_emb_{k}.npy") for k in range(4)]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    paths = sum((pq.read_table(full_run / "metadata" / f"metadata_{k}.parquet").column("image_path").to_pylist()
                 for k in range(4)), [])
    order = np.argsort(-(emb @ q), kind="stable")[:3]
    assert [path for _, path in lines] == [paths[i] for i in order]
    np.testing.assert_allclose([float(s) for s, _ in lines], (emb @ q)[order], atol=1e-4)


def write_folder(out: Path, shards: list[np.ndarray]) -> list[str]:
    import pyarrow as pa

    (out / "img_emb").mkdir(parents=True)
    (out / "metadata").mkdir()
    names, i = [], 0
    for k, emb in enumerate(shards):
        np.save(out / "img_emb" / f"img_emb_{k:02d}.npy", emb)
        rows = [f"img{i + r}" for r in range(len(emb))]
        pq.write_table(pa.table({"image_path": rows}), out / "metadata" / f"metadata_{k:02d}.parquet")
        names += rows
        i += len(emb)
    return names


def test_search_is_exact_across_shards_and_chunks(tmp_path):
    rng = np.random.RandomState(1)
    shards = [rng.randn(n, 8).astype(np.float16) for n in (7, 1, 12, 5)]
    shards += [rng.randn(11, 8).astype(np.float16) for _ in range(7)]
    names = write_folder(tmp_path, shards)  # 11 shards: k zero-padded to 2 digits, sorted as numbers
    allemb = np.concatenate(shards).astype(np.float32)
    allemb /= np.linalg.norm(allemb, axis=1, keepdims=True)
    queries = rng.randn(3, 8).astype(np.float32)
    for chunk in (3, 1000):
        hits = search(tmp_path, queries, k=6, chunk_rows=chunk)
        for q, h in zip(queries, hits):
            scores = allemb @ (q / np.linalg.norm(q))
            order = np.argsort(-scores, kind="stable")[:6]
            assert [x.value for x in h] == [names[i] for i in order]
            np.testing.assert_allclose([x.score for x in h], scores[order], atol=1e-6)


def test_search_ties_go_to_the_earlier_row(tmp_path):
    row = np.array([[1, 0, 0, 0]], np.float16)
    other = np.array([[0, 1, 0, 0]], np.float16)
    names = write_folder(tmp_path, [np.concatenate([other, row]), np.concatenate([row, row, other])])
    hits = search(tmp_path, np.array([1.0, 0, 0, 0]), k=2, chunk_rows=1)[0]
    assert [(h.value, h.shard, h.row) for h in hits] == [(names[1], 0, 1), (names[2], 1, 0)]
    assert [h.score for h in hits] == [1.0, 1.0]


def test_search_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no img_emb_"):
        search(tmp_path, np.ones(4), k=1)
    write_folder(tmp_path, [np.ones((2, 4), np.float16)])
    with pytest.raises(ValueError, match="queries have dimension 3"):
        search(tmp_path, np.ones(3), k=1)


# --- hostile and careless input: output paths, real folders, the command line's edges ------------------


def latin1_name(folder: Path, name: bytes) -> str:
    """A path whose file name isn't UTF-8 (Linux allows any bytes): Python shows it with lone surrogates."""
    return os.fsdecode(os.fsencode(folder) + b"/" + name)


def test_convert_full_disk_is_one_line(data, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    from clip_jax.checkpoint import store

    def full(tensors, filename, metadata=None):  # what safetensors raises on ENOSPC
        Path(filename).write_bytes(b"part")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(store, "save_file", full)
    out = tmp_path / "out"
    out.mkdir()
    assert main("convert", data[2], "-o", out / "m.safetensors") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"clip-jax: error: {out / 'm.safetensors'}: no space left on device (nothing was written)"]
    assert list(out.iterdir()) == []


def test_embed_output_files_full_disk_fifo_and_symlink(data, tmp_path, monkeypatch, capsys):
    """The embed folder's files go through the same helper: a full disk stops the job with one line
    (a rerun resumes), a FIFO in the folder is refused and kept, a symlink is written through."""
    _, _, model = data
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(f"caption {i}\n" for i in range(6)))  # 2 shards of 4
    out = tmp_path / "out"
    argv = embed_args([], out, model, "--captions", caps)
    real_write = embed_folder._write_bytes

    def full_at_shard_1(where, data):
        if "metadata_1" in str(where):
            Path(where).write_bytes(b"part")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(where, data)

    monkeypatch.setattr(embed_folder, "_write_bytes", full_at_shard_1)
    assert main(*argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"clip-jax: error: {out / 'metadata' / 'metadata_1.parquet'}: no space left on device "
                   "(nothing was written)"]
    monkeypatch.undo()

    elsewhere = tmp_path / "elsewhere.tsv"
    elsewhere.write_text("old")
    (out / "errors.tsv").unlink(missing_ok=True)  # written when the job ends
    (out / "errors.tsv").symlink_to(elsewhere)
    fifo = out / "text_emb" / "text_emb_1.npy"
    fifo.unlink()
    os.mkfifo(fifo)
    assert main(*argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{fifo}: exists and is a FIFO, not a regular file" in err[0]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    fifo.unlink()
    assert main(*argv) == 0
    assert (out / "errors.tsv").is_symlink() and elsewhere.read_text() == "path\treason\n"
    assert sum(len(np.load(p)) for p in (out / "text_emb").glob("*.npy")) == 6
    assert not [p for p in out.rglob(".clip_jax-tmp.*")]


def test_embed_skips_file_names_that_are_not_utf8(data, tmp_path, capsys):
    """parquet stores UTF-8 text: such a name is skipped into errors.tsv (its own bytes), the job goes on."""
    _, imgs, model = data
    folder = tmp_path / "photos"
    folder.mkdir()
    good, bad = folder / "plain.png", latin1_name(folder, b"caf\xe9.png")
    shutil.copy(imgs / "a" / "01.png", good)
    shutil.copy(imgs / "a" / "02.png", bad)
    out = tmp_path / "out"
    assert main(*embed_args([folder], out, model)) == 0
    assert "1 skipped" in capsys.readouterr().out
    assert pq.read_table(out / "metadata" / "metadata_0.parquet").column("image_path").to_pylist() == [str(good)]
    assert len(np.load(out / "img_emb" / "img_emb_0.npy")) == 1
    lines = (out / "errors.tsv").read_bytes().splitlines()
    assert lines[1:] == [os.fsencode(bad) + b"\tfile name is not valid UTF-8 (image_path is UTF-8 text); "
                                            b"rename the file"]


def test_collect_images_visits_each_real_folder_once(data, tmp_path):
    """Symlinks to folders are followed, but a loop is entered once: no copies, no endless walk."""
    _, imgs, _ = data
    root = tmp_path / "root"
    shutil.copytree(imgs / "a", root / "a")
    (root / "a" / "up").symlink_to(root)  # a loop
    want = sorted(str(p) for p in (root / "a").iterdir() if p.suffix == ".png" or p.suffix == ".jpg")
    assert collect_images([root]) == want
    (root / "b").mkdir()
    (root / "b" / "up").symlink_to(root)  # two loops
    (root / "b" / "alias").symlink_to(root / "a")  # and another way into the same folder
    assert collect_images([root]) == want


def test_embed_lock_keeps_a_second_job_out(data, tmp_path, capsys):
    """Two different jobs on one new folder: the second is refused while the first holds the lock, and
    runs once the first has ended; a lock file left by a killed process blocks nothing."""
    _, imgs, model = data
    out = tmp_path / "out"
    first = EmbedJob(out, [str(imgs / "a" / "01.png")], None, model="m", dtype="float32", emb_dtype="float16",
                     shard_size=4)
    first.open()  # started, not yet at its first shard
    try:
        assert main(*embed_args([imgs / "a"], out, model)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{out}: another clip-jax embed is writing to this folder" in err[0]
    finally:
        first.close()
    assert main(*embed_args([imgs / "a"], out, model)) == 0

    killed = tmp_path / "killed"
    killed.mkdir()
    holder = (f"import fcntl, os; fd = os.open({str(killed / LOCK)!r}, os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(fd, fcntl.LOCK_EX); os.kill(os.getpid(), 9)")
    assert subprocess.run([sys.executable, "-c", holder]).returncode == -signal.SIGKILL
    assert main(*embed_args([imgs / "a"], killed, model)) == 0


def test_embed_failure_before_the_first_shard_does_not_block_the_rerun(data, tmp_path, capsys):
    _, _, model = data
    caps = tmp_path / "caps.txt"
    caps.write_text("a dog\na cat\n")
    out = tmp_path / "out"
    assert main(*embed_args([], out, tmp_path / "tpyo.safetensors", "--captions", caps)) == 1
    assert "tpyo.safetensors" in capsys.readouterr().err
    assert main(*embed_args([], out, model, "--captions", caps)) == 0
    assert json.loads((out / "manifest.json").read_text())["model"] == str(Path(model).resolve())


def test_search_errors_on_a_broken_folder_name_the_file(data, full_run, tmp_path, capsys):
    _, _, model = data

    def broken(name: str, path: str, edit) -> tuple[Path, Path]:
        folder = tmp_path / name
        shutil.copytree(full_run, folder)
        edit(folder / path)
        return folder, folder / path

    def shorten(p: Path) -> None:
        pq.write_table(pq.read_table(p).slice(0, 2), p)

    cases = [
        (broken("list", "manifest.json", lambda p: p.write_text("[]")), "not a valid manifest"),
        (broken("json", "manifest.json", lambda p: p.write_text("{")), "not a valid manifest"),
        (broken("short", "metadata/metadata_0.parquet", shorten), "2 rows, but the shard's embeddings have 4"),
        (broken("npy", "img_emb/img_emb_2.npy", lambda p: p.write_bytes(b"\x93NUMPY junk")),
         "not a readable .npy file"),
    ]
    for (folder, path), message in cases:
        assert main("search", folder, "a dog", "--model", model, "-k", "14") == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"clip-jax: error: {path}: {message}"), err


@pytest.mark.parametrize("argv", [
    ["classify", "x.png", "--labels", "a", "-m", "m", "-k", "0"],
    ["classify", "x.png", "--labels", "a", "-m", "m", "-k", "-1"],
    ["classify", "x.png", "--labels", "a", "-m", "m", "--batch-size", "0"],
    ["search", "folder", "a query", "-k", "0"],
    ["embed", "x.png", "-o", "out", "-m", "m", "--shard-size", "0"],
])
def test_counts_must_be_positive(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parser().parse_args(argv)
    assert e.value.code == 2 and "must be a positive integer" in capsys.readouterr().err


def test_truncate_option_where_text_comes_in(data, full_run, tmp_path, capsys):
    _, imgs, model = data
    long = "a photo of a very small dog " * 20
    assert main("search", full_run, long) == 1
    err = capsys.readouterr().err
    assert "pass --truncate" in err and "truncate=True" not in err
    assert main("search", full_run, long, "--truncate", "-k", "1") == 0
    assert main("classify", imgs / "a" / "01.png", "--labels", f"dog,{long}", "--templates", "a photo of a {}.",
                "--model", model, "--truncate") == 0
    capsys.readouterr()
    caps = tmp_path / "caps.txt"
    caps.write_text(f"a dog\n{long}\n")
    out = tmp_path / "out"
    assert main(*embed_args([], out, model, "--captions", caps, "--no-truncate")) == 1
    assert "pass --truncate" in capsys.readouterr().err
    assert not out.exists()  # refused before the first shard: no folder left behind


def test_printing_a_file_name_that_is_not_utf8(data, tmp_path, monkeypatch):
    """In a UTF-8 locale stdout is strict: the name is printed as its own bytes, as ls does."""
    _, imgs, model = data
    bad = latin1_name(tmp_path, b"caf\xe9.png")
    shutil.copy(imgs / "a" / "01.png", bad)
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main("classify", bad, "--labels", "dog,cat", "--templates", "a photo of a {}.", "--model", model) == 0
    stdout.flush()
    assert stdout.buffer.getvalue().startswith(os.fsencode(bad) + b"\n")


def test_distributed_flag_sets_up_from_the_environment(monkeypatch):
    """`--distributed` (a TPU pod: the same command on every host) calls jax.distributed's auto-detection;
    with no multi-host option nothing is initialized."""
    import clip_jax.parallel

    calls = []
    monkeypatch.setattr(clip_jax.parallel, "initialize", lambda *a, **k: calls.append(a))
    cli.initialize_distributed(cli.parser().parse_args(["embed", "x", "-o", "out", "--model", "m", "--distributed"]))
    assert calls == [(None, None, None)]
    cli.initialize_distributed(cli.parser().parse_args(["embed", "x", "-o", "out", "--model", "m"]))
    assert calls == [(None, None, None)]
