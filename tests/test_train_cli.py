"""`clip-jax train`: a SigLIP from scratch (a model-config JSON and --tokenizer) with the sigmoid loss through
the command line, its help, and the one-line errors a mistaken command gets before any work."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import clip_jax
from clip_jax import synthetic
from clip_jax.cli.main import main
from clip_jax.jobs.train_log import METRICS, read_metrics
from clip_jax.jobs.train_model import is_architecture, resolve_model
from clip_jax.model import flat_params
from clip_jax.siglip_config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

from .test_train_job import write_shards

TINY_SIGLIP = SiglipConfig(
    embed_dim=32,
    vision=SiglipVisionConfig(image_size=32, patch_size=16, width=32, layers=1, heads=2, mlp_width=64),
    text=SiglipTextConfig(vocab_size=500, context_length=16, width=32, layers=1, heads=2, mlp_width=64),
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("cli_shards"))


def siglip_json(path):
    """A SigLIP's architecture as the JSON clip_jax writes into open_clip_config.json (open_clip's own
    model_cfg can't hold a timm trunk of any width)."""
    path.write_text(json.dumps({"clip_jax_config": {"family": "siglip", **json.loads(TINY_SIGLIP.to_json())}}))
    return path


def test_sigmoid_lit_from_scratch_logs_the_bias_and_the_vocabulary_travels(tmp_path, shards, capsys):
    """A SigLIP from a config JSON (random init from --seed, --tokenizer its vocabulary), the sigmoid loss,
    the image tower locked (LiT) and the batch in 2 chunks (gradient cache)."""
    from .siglip_vocab import train_spiece

    captions = [synthetic.Sample(*combo).caption() for combo in itertools.product(
        synthetic.SHAPES, synthetic.COLORS, synthetic.SIZES, synthetic.POSITIONS)]
    spiece = train_spiece(tmp_path / "spiece.model", vocab_size=32, lines=captions)  # the captions' words
    run = tmp_path / "run"
    rc = main(["train", shards, "--model", str(siglip_json(tmp_path / "tiny_siglip.json")), "-o", str(run),
               "--tokenizer", str(spiece), "--loss", "sigmoid", "--batch-size", "8", "--steps", "2",
               "--log-every", "1", "--seed", "3", "--lock-image", "--accumulate", "2", "--no-progress"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = read_metrics(run / METRICS)
    assert [r["step"] for r in records] == [1, 2] and last == records[-1]
    assert all("logit_bias" in r for r in records)
    # big_vision's init (-10) moved by two AdamW steps of at most lr each, no further
    assert -10 < records[-1]["logit_bias"] <= -10 + 2 * 5e-4 * 1.01
    assert records[0]["logit_scale"] == pytest.approx(10, rel=1e-3)  # exp(log 10): a from-scratch SigLIP
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # config and vocabulary travel with the file: nothing to assume or warn about
        model, _ = clip_jax.load(run / "final.safetensors")
        tokenizer = clip_jax.get_tokenizer(run / "final.safetensors")
    assert type(model).__name__ == "Siglip"
    assert float(np.asarray(model.logit_bias[...])) == pytest.approx(last["logit_bias"])
    assert (run / "final.tokenizer" / "spiece.model").read_bytes() == spiece.read_bytes()
    assert tokenizer(["a red circle"]).shape == (1, 16)
    # LiT: the image tower's bytes are those of the random init; the text tower trained.
    start = flat_params(resolve_model(tmp_path / "tiny_siglip.json", seed=3, tokenizer=spiece).model)
    final = flat_params(model)
    image = [k for k in final if k.startswith("visual.")]
    assert image and all(np.array_equal(final[k], start[k]) for k in image)
    assert not np.array_equal(final["text.token_embedding.embedding"], start["text.token_embedding.embedding"])


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--loss", "--batch-size", "--steps", "--epochs", "--lr", "--warmup", "--weight-decay", "--dtype",
                   "--remat", "--remat-policy", "--fsdp", "--lock-image", "--lock-text", "--unlock-last",
                   "--accumulate", "--save-every", "--keep", "--eval-data", "--eval-every", "--seed",
                   "--log-every", "--model-parallel", "--tokenizer", "--coordinator", "--distributed"):
        assert option in out, option


@pytest.mark.parametrize(("extra", "message"), [
    (["--model", "ViT-Q-99"], "'ViT-Q-99' is no open_clip architecture (to train from scratch) and no pretrained"),
    (["--model", "missing.json"], "missing.json: no such model-config file"),
    (["--model", "ViT-B-16-SigLIP"], "this SigLIP has no vocabulary"),
    (["--model", "RN50", "--warmup", "9"], "--warmup 9 must be fewer than the run's 2 steps"),
])
def test_one_line_errors_before_any_work(tmp_path, shards, capsys, extra, message):
    run = tmp_path / "run"
    rc = main(["train", shards, "-o", str(run), "--steps", "2", "--batch-size", "8", "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and message in err and len(err.splitlines()) == 1, err
    assert not run.exists()


def test_the_run_length_is_required(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "a.tar", "--model", "RN50", "-o", "RUN"])
    assert e.value.code == 2 and "--steps" in capsys.readouterr().err


def test_which_names_train_from_scratch():
    assert is_architecture("ViT-B-32") and is_architecture("ViT-B-32-quickgelu") and is_architecture("RN50")
    assert is_architecture("ViT-B-16-SigLIP")
    assert not is_architecture("ViT-B/32") and not is_architecture("ViT-B-32/openai")


@pytest.mark.slow
def test_the_example_trains_and_loads_its_result(tmp_path):
    """examples/train_shards.py, shortened: shards, config JSON and eval set written, trained, loaded back."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "examples" / "train_shards.py"), "--out", str(tmp_path), "--steps",
                          "3", "--batch-size", "8", "--shards", "2", "--per-shard", "16", "--eval-images", "10"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("step 3: loss ") and "on 10 held-out images" in lines[0]
    assert lines[1].startswith("an image of a ")
    assert [r["step"] for r in read_metrics(tmp_path / "run" / METRICS) if "loss" in r] == [1, 2, 3]


def test_the_choices_spelled_out_for_a_fast_help_are_the_library_s():
    from clip_jax import layers, train
    from clip_jax.cli import train as cli_train

    assert cli_train.LOSSES == train.LOSSES
    assert cli_train.REMAT_POLICIES == tuple(layers.REMAT_POLICIES)


def test_xla_cache_turns_the_persistent_cache_on_before_training(monkeypatch, tmp_path, capsys):
    import clip_jax.compilation
    import clip_jax.jobs.train

    calls = []
    monkeypatch.setattr(clip_jax.compilation, "enable_compilation_cache", lambda path: calls.append(("cache", path)))
    monkeypatch.setattr(clip_jax.jobs.train, "train", lambda *a, **kw: calls.append(("train", kw["steps"])) or {})
    assert main(["train", "a.tar", "--model", "RN50", "-o", str(tmp_path), "--steps", "3",
                 "--xla-cache", str(tmp_path / "xla")]) == 0
    assert calls == [("cache", str(tmp_path / "xla")), ("train", 3)]
    assert main(["train", "a.tar", "--model", "RN50", "-o", str(tmp_path), "--steps", "3"]) == 0
    assert calls[2:] == [("train", 3)]  # off by default
