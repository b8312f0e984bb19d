"""clip_jax.jobs.train through its Python API: a tiny CLIP fine-tuned a few steps from tar shards on the CPU
(what RUN holds afterwards, a killed run's resume, a finished run's rerun, args that changed), and the
checks made before any work. The sigmoid loss and a SigLIP from scratch: tests/test_train_cli.py."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import clip_jax
from clip_jax import synthetic
from clip_jax.checkpoint import store
from clip_jax.config import CLIPConfig, TextConfig, VisionConfig
from clip_jax.errors import InputError
from clip_jax.jobs.train import (
    CHECKPOINTS,
    ERRORS,
    FINAL,
    ErrorLog,
    TrainArgs,
    check_args,
    check_run_folder,
    make_trainer,
    total_steps,
    train,
    write_args,
)
from clip_jax.jobs.train_log import METRICS, TENSORBOARD, read_metrics
from clip_jax.jobs.train_model import resolve_model
from clip_jax.model import flat_params
from clip_jax.parallel import make_mesh
from clip_jax.train import restore_checkpoint, schedule

from .shards import write_tar
from .test_train_log import scalars
from .tiny import tiny_params

# One block a tower, widths of 32, 16 text positions (the captions fit), OpenAI's BPE vocabulary.
CONFIG = CLIPConfig(
    embed_dim=16,
    vision=VisionConfig(image_size=32, layers=1, width=32, patch_size=16, heads=2),
    text=TextConfig(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
)
STEPS, SAVE_EVERY, KEEP, LOG_EVERY, BATCH, EVAL_EVERY = 6, 2, 2, 2, 8, 4
BAD_KEY = "00001_0003"  # undecodable image bytes: skipped, logged in errors.tsv


def png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def write_shards(folder: Path, shards: int = 2, per_shard: int = 16, size: int = 32) -> str:
    """clip_jax.synthetic's pairs as WebDataset shards (sample 3 of shard 1 broken) -> the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        pixels, captions = synthetic.batch(seed=0, index=k, batch_size=per_shard, image_size=size)
        samples = [{"__key__": f"{k:05d}_{i:04d}", "png": png(p), "txt": c}
                   for i, (p, c) in enumerate(zip(pixels, captions))]
        if k == 1:
            samples[3]["png"] = b"\x89PNG not really"
        write_tar(folder / f"{k:05d}.tar", samples)
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def write_eval_folder(folder: Path, n: int = 6) -> Path:
    """An ImageFolder of held-out synthetic images, one subfolder per label, with one template."""
    images, samples = synthetic.generate(n, seed=99, image_size=32)
    for i, (image, s) in enumerate(zip(images, samples)):
        (folder / s.label).mkdir(parents=True, exist_ok=True)
        image.save(folder / s.label / f"{i}.png")
    (folder / "zeroshot_classification_templates.txt").write_text("a {c}.\n")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    model = root / "tiny.safetensors"
    store.save(model, tiny_params(CONFIG, seed=1), CONFIG)
    return {"shards": write_shards(root / "shards"), "model": str(model), "eval": str(write_eval_folder(root / "eval"))}


def options(**kw):
    return {"batch_size": BATCH, "steps": STEPS, "save_every": SAVE_EVERY, "keep": KEEP, "log_every": LOG_EVERY,
            "lr": 1e-3, "warmup": 1, "progress": False, **kw}


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """An uninterrupted run of STEPS steps, evaluated at step EVAL_EVERY and at the end: (RUN, its result)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    return run, train([data["shards"]], data["model"], run, eval_data=data["eval"], eval_every=EVAL_EVERY,
                      **options())


def test_the_run_folder(finished):
    run, last = finished
    records = read_metrics(run / METRICS)
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == [2, 4, 6]
    lr = schedule(1e-3, STEPS, 1)
    for r in records:
        if "loss" in r:
            assert set(r) >= {"step", "loss", "accuracy", "lr", "samples_per_s", "logit_scale", "grad_norm", "epoch"}
            assert r["lr"] == pytest.approx(float(lr(r["step"] - 1)))  # the rate that step applied
            assert r["samples_per_s"] > 0 and np.isfinite(r["loss"]) and "logit_bias" not in r
    evals = [r for r in records if "eval_acc1" in r]
    assert [r["step"] for r in evals] == [EVAL_EVERY, STEPS] and all(0 <= r["eval_acc1"] <= 1 for r in evals)
    assert last["step"] == STEPS and last["eval_acc1"] == evals[-1]["eval_acc1"]
    assert last["loss"] == records[-2 if "loss" not in records[-1] else -1]["loss"]
    tb = scalars(run / TENSORBOARD)
    assert [s for s, _ in tb["train/loss"]] == train_steps
    assert [v for _, v in tb["train/loss"]] == pytest.approx([r["loss"] for r in records if "loss" in r])
    assert tb["eval/acc1"] == [(r["step"], pytest.approx(r["eval_acc1"])) for r in evals]
    assert sorted(p.name for p in (run / CHECKPOINTS).iterdir()) == ["4", "6"]  # --keep 2
    errors = (run / ERRORS).read_text().splitlines()
    assert len(errors) == 1 and errors[0].split("\t")[1] == BAD_KEY  # logged once, though met again each epoch
    saved = json.loads((run / "args.json").read_text())
    assert saved["steps"] == STEPS and saved["model"].endswith("tiny.safetensors")


def test_final_file_is_the_trained_model(finished, data):
    run, _ = finished
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file holds its config: nothing assumed, nothing to warn about
        model, preprocess = clip_jax.load(run / FINAL)
    assert model.config == CONFIG and preprocess.n_px == CONFIG.vision.image_size
    final = {k: np.asarray(v) for k, v in flat_params(model).items()}
    # The state of the last checkpoint, restored into a Trainer of the same run, holds the same arrays.
    args = TrainArgs([data["shards"]], data["model"], str(run), **options())
    trainer = make_trainer(resolve_model(data["model"]).model, args, STEPS, make_mesh())
    state, position = restore_checkpoint(run / CHECKPOINTS, like=trainer.init())
    assert int(state.step) == STEPS and position["step"] == STEPS and "position" in position
    trained = {k: np.asarray(v) for k, v in flat_params(trainer.model(state)).items()}
    assert final.keys() == trained.keys()
    for k in final:
        np.testing.assert_array_equal(final[k], trained[k], err_msg=k)
    start = tiny_params(CONFIG, seed=1)
    assert not np.array_equal(final["visual.conv1.kernel"], start["visual.conv1.kernel"])  # it did train


def test_a_killed_run_resumes_to_the_same_end(finished, data, tmp_path):
    """A run killed after its step-4 checkpoint (its later checkpoint, its final file gone; a step-6 line
    it logged left behind) reruns to the uninterrupted run's parameters, bit for bit on the CPU."""
    run, _ = finished
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    shutil.rmtree(killed / CHECKPOINTS / "6")
    (killed / FINAL).unlink()
    records = read_metrics(killed / METRICS)
    (killed / METRICS).write_text("".join(json.dumps({**r, "loss": -1.0}) + "\n" for r in records)
                                  + '{"step": 7, "lo')  # the killed run's values, and a line cut short
    last = train([data["shards"]], data["model"], killed, eval_data=data["eval"], eval_every=EVAL_EVERY,
                 **options())
    resumed = read_metrics(killed / METRICS)
    assert [r["step"] for r in resumed] == [r["step"] for r in records]
    assert all(r["loss"] == -1.0 for r in resumed if r["step"] <= 4)  # kept from before the kill
    redone, same = [r for r in resumed if r["step"] > 4], [r for r in records if r["step"] > 4]
    assert len(redone) == 2  # step 6 and its eval: computed again, the same values
    for r, s in zip(redone, same):
        assert {k: v for k, v in r.items() if k != "samples_per_s"} == {
            k: v for k, v in s.items() if k != "samples_per_s"}
    assert last["loss"] == same[0]["loss"] and last["eval_acc1"] == same[1]["eval_acc1"]
    a, b = store.load(run / FINAL)[1], store.load(killed / FINAL)[1]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_finished_run_reruns_to_its_result(finished, data):
    run, last = finished
    before = {p: p.stat().st_mtime_ns for p in (run / FINAL, run / METRICS)}
    again = train([data["shards"]], data["model"], run, eval_data=data["eval"], eval_every=EVAL_EVERY, **options())
    assert again == last
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing trained or written again


def test_changed_arguments_are_refused(finished, data):
    run, _ = finished
    args = TrainArgs([data["shards"]], data["model"], str(run), **options(lr=2e-3))
    with pytest.raises(InputError, match=r"lr: 0.001 then, 0.002 now"):
        check_run_folder(run, args)
    # Those that don't change the numbers may change.
    check_run_folder(run, TrainArgs([data["shards"]], data["model"], str(run),
                                    **options(save_every=3, keep=5, log_every=1, remat=True, accumulate=2, fsdp=True)))


def test_args_json_written_before_a_field_existed_resumes_at_its_default(tmp_path, data):
    args = TrainArgs([data["shards"]], data["model"], str(tmp_path), **options())
    write_args(tmp_path, args)
    saved = json.loads((tmp_path / "args.json").read_text())
    del saved["unlock_last"]
    (tmp_path / "args.json").write_text(json.dumps(saved))
    check_run_folder(tmp_path, args)
    with pytest.raises(InputError, match="unlock_last: 0 then, 1 now"):
        check_run_folder(tmp_path, TrainArgs([data["shards"]], data["model"], str(tmp_path), **options(unlock_last=1)))


@pytest.mark.parametrize("text", [b'{"steps": ', b"[" * 100_000, b"\xff\xfe", b"[1, 2]", b"null"])
def test_a_damaged_args_json_is_an_input_error(tmp_path, data, text):
    (tmp_path / "args.json").write_bytes(text)
    with pytest.raises(InputError, match="args.json: not the JSON"):
        check_run_folder(tmp_path, TrainArgs([data["shards"]], data["model"], str(tmp_path), **options()))


def test_errors_tsv_each_error_once_and_a_cut_line_dropped(tmp_path):
    path = tmp_path / ERRORS
    path.write_text("a.tar\tk1\tbad image\nb.tar\tk2\tno cap")  # killed mid-line
    log = ErrorLog(path, enabled=True)
    assert path.read_text() == "a.tar\tk1\tbad image\n"
    for shard, key, reason in [("a.tar", "k1", "bad image"), ("b.tar", "k2", "no caption"),
                               ("b.tar", "k2", "no caption"), ("c.tar", "k\t3", "line\nbreak")]:
        log.add(shard, key, reason)
    log.drain()
    assert path.read_text().splitlines() == ["a.tar\tk1\tbad image", "b.tar\tk2\tno caption", "c.tar\tk 3\tline break"]
    log.add("a.tar", "k1", "bad image")
    log.drain()
    assert len(path.read_text().splitlines()) == 3


def test_a_folder_that_is_no_run_is_not_taken_over(tmp_path, data):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="a folder with files and no args.json"):
        check_run_folder(tmp_path, TrainArgs([data["shards"]], data["model"], str(tmp_path), **options()))


@pytest.mark.parametrize(("change", "message"), [
    ({"loss": "hinge"}, "--loss must be"),
    ({"steps": None}, "--steps N or --epochs E"),
    ({"epochs": 2.0}, "--steps N or --epochs E"),
    ({"batch_size": 0}, "--batch-size must be an integer >= 1"),
    ({"lr": float("nan")}, "--lr must be a positive number"),
    ({"accumulate": 3}, "--accumulate 3 must divide --batch-size 8"),
    ({"eval_every": 2}, "--eval-every needs --eval-data"),
    ({"remat_policy": "all"}, "--remat-policy must be"),
    ({"dtype": "int8"}, "--dtype must be"),
    ({"output": "gs://bucket/run"}, "must be a path"),
])
def test_bad_arguments(change, message, data):
    change = dict(change)  # the parameter itself stays as it is
    args = TrainArgs([data["shards"]], data["model"], change.pop("output", "RUN"), **{**options(), **change})
    with pytest.raises(InputError, match=message):
        check_args(args)


def test_epochs_need_a_known_size():
    args = TrainArgs(["a.tar"], "m", "RUN", batch_size=8, epochs=2.5)
    assert total_steps(args, 100) == 32  # ceil(2.5 * 100 / 8)
    with pytest.raises(InputError, match="give --steps for tar shards"):
        total_steps(args, None)


def test_bad_model_and_warmup_fail_before_the_folder_is_made(tmp_path, data):
    run = tmp_path / "run"
    with pytest.raises(InputError, match="no open_clip architecture"):
        train([data["shards"]], "ViT-Q-99", run, **options())
    with pytest.raises(InputError, match="--warmup 6 must be fewer than the run's 6 steps"):
        train([data["shards"]], data["model"], run, **options(warmup=6))
    with pytest.raises(InputError, match="sigmoid loss needs a model with a logit_bias"):
        train([data["shards"]], data["model"], run, **options(loss="sigmoid"))
    assert not run.exists()  # a corrected command is not refused for a folder the mistake left
