"""The bundled tiny model, the synthetic data it was trained on, and the offline demo end to end."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_jax import synthetic
from clip_jax.checkpoint import read_params
from clip_jax.checkpoint.config_source import read_open_clip_config
from clip_jax.cli.demo import TINY_CLIP, contact_sheet, table, zero_shot, zero_shot_accuracy
from clip_jax.model import build

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 424242  # the model was trained on seed 0 (examples/train_tiny.py); these images are new


@pytest.fixture(scope="module")
def tiny():
    config, params = read_params(TINY_CLIP)
    return config, params, build(config, params)


def test_bundled_file_is_small_and_openai_shaped(tiny):
    config, params, _ = tiny
    assert TINY_CLIP.stat().st_size < 2 * 2**20  # a few MB at most; it is ~0.6 MB
    assert config.text.vocab_size == 49408 and config.text.context_length == 16
    assert config.vision.image_size == 64 and not config.vision.is_resnet
    # OpenAI's fp16 mix, as stored
    assert params["visual.conv1.kernel"].dtype == np.float16
    assert params["transformer.resblocks.0.attn.in_proj.kernel"].dtype == np.float16
    assert params["text_projection"].dtype == np.float16 and params["visual.proj"].dtype == np.float16
    assert params["ln_final.scale"].dtype == np.float32 and params["token_embedding.embedding"].dtype == np.float32
    assert params["logit_scale"].shape == () and params["logit_scale"].dtype == np.float32


def test_bundled_model_zero_shot_accuracy(tiny):
    """>= 90% on 200 freshly drawn held-out images among the 30 color x shape classes (prompts only,
    chance is 3.3%). Measured: 100%."""
    _, _, model = tiny
    images, samples = synthetic.generate(200, seed=HELD_OUT_SEED, image_size=64)
    accuracy = zero_shot_accuracy(model, images, [s.label for s in samples])
    assert accuracy >= 0.9, accuracy


def test_bundled_model_loads_in_open_clip(tiny):
    """The shipped .pt is a real PyTorch checkpoint: torch.load(weights_only=True) into open_clip's CLIP
    with strict=True, each tensor with the dtype convert_weights_to_lp gives it."""
    torch = pytest.importorskip("torch")
    import open_clip

    config, _, _ = tiny
    oc = open_clip.model.CLIP(
        embed_dim=config.embed_dim,
        vision_cfg={"image_size": 64, "layers": config.vision.layers, "width": config.vision.width,
                    "patch_size": config.vision.patch_size},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": config.text.width,
                  "heads": config.text.heads, "layers": config.text.layers},
        quick_gelu=True,
    )
    open_clip.model.convert_weights_to_lp(oc, torch.float16)
    want = {k: v.dtype for k, v in oc.state_dict().items()}
    sd = torch.load(TINY_CLIP, weights_only=True)
    oc.load_state_dict(sd, strict=True)
    assert {k: v.dtype for k, v in sd.items()} == want


def test_synthetic_is_deterministic_and_captioned():
    a, sa = synthetic.generate(6, seed=3)
    b, sb = synthetic.generate(6, seed=3)
    c, _ = synthetic.generate(6, seed=4)
    assert sa == sb and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    assert a[0].size == (64, 64) and a[0].mode == "RGB"
    prefix, _ = synthetic.generate(2, seed=3)  # the first k images don't depend on n
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(prefix, a))
    s = synthetic.Sample("triangle", "red", "small", "left")
    assert s.caption() == "a small red triangle on the left"
    assert s.caption(with_size=False, with_position=False) == "a red triangle"
    assert synthetic.Sample("star", "orange", "large", "top").caption(False, True) == "an orange star at the top"
    assert len(synthetic.labels()) == 30 and synthetic.prompt("orange star") == "an orange star"
    pixels, captions = synthetic.batch(seed=0, index=5, batch_size=4)
    again, captions2 = synthetic.batch(seed=0, index=5, batch_size=4)
    assert pixels.shape == (4, 64, 64, 3) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, again) and captions == captions2


def test_synthetic_draws_what_it_says():
    """The shape's color dominates the non-background pixels, and its center is on the named side."""
    for position, (fx, fy) in {"left": (0.27, 0.5), "bottom": (0.5, 0.73)}.items():
        img = synthetic.draw(synthetic.Sample("square", "blue", "large", position), np.random.default_rng(0), 64)
        a = np.asarray(img).astype(int)
        blue = (a[..., 2] > 150) & (a[..., 0] < 110)
        ys, xs = np.nonzero(blue)
        assert blue.sum() > 100
        assert abs(xs.mean() / 64 - fx) < 0.08 and abs(ys.mean() / 64 - fy) < 0.08


def test_table_and_contact_sheet():
    labels = ["red circle", "blue star", "green cross"]
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]], np.float32)
    idx = np.array([[0, 1, 2], [0, 1, 2]])
    lines = table(["red circle", "blue star"], probs, idx, labels).splitlines()
    assert lines[2] == "    0  red circle   red circle  0.70 blue star   0.20 green cross 0.10 ok"
    assert lines[3].startswith("    1  blue star    red circle  0.60") and lines[3].endswith(" x")
    assert lines[0].index("top-1") == lines[2].index("red circle  0.70")  # columns line up
    images, _ = synthetic.generate(2, seed=0)
    sheet = contact_sheet(images, ["red circle", "blue star"], probs, idx, labels, title="t", cols=2)
    assert sheet.size == (2 * 192 + 8, 44 + 254)
    frame = np.asarray(sheet)[60:70, 8:12].astype(int)  # left edge of the first tile's frame
    assert (frame[..., 1] > frame[..., 0] + 50).all()  # right: green
    frame = np.asarray(sheet)[60:70, 200:204].astype(int)
    assert (frame[..., 0] > frame[..., 1] + 50).all()  # wrong: red


def test_zero_shot_probabilities(tiny):
    """Top-k of a softmax over all 30 labels, best first; the same as softmax(clip_logits) (float32
    features and logits at scale < 30: 1e-5)."""
    from clip_jax.model import clip_logits
    from clip_jax.tokenizer import tokenize

    _, _, model = tiny
    images, _ = synthetic.generate(4, seed=HELD_OUT_SEED + 1)
    labels = synthetic.labels()
    probs, idx = zero_shot(model, images, labels, k=30, batch_size=3)
    assert probs.shape == idx.shape == (4, 30) and probs.dtype == np.float32
    assert (np.diff(probs, axis=1) <= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    pixels = np.stack([np.asarray(im) for im in images])
    logits, _ = clip_logits(model, pixels, tokenize([synthetic.prompt(label) for label in labels], context_length=16))
    e = np.exp(np.asarray(logits, np.float64) - np.asarray(logits).max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, np.take_along_axis(want, idx, axis=1), atol=1e-5)


# `clip-jax demo ARGS` (the installed script's entry point) with torch and the jobs extra made unimportable:
# Quick start's `pip install .` brings neither, and the demo must need neither.
_BLOCKED = "import sys; sys.modules.update(torch=None, pyarrow=None); "


def run_cli(*args: str) -> subprocess.CompletedProcess:
    code = _BLOCKED + "from clip_jax.cli.main import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def run_demo(*args: str) -> subprocess.CompletedProcess:
    return run_cli("demo", *args)


def test_a_job_without_the_jobs_extra_says_how_to_install_it(tmp_path):
    proc = run_cli("embed", str(tmp_path), "-o", str(tmp_path / "out"), "--model", str(TINY_CLIP))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "clip-jax: error: clip_jax.jobs needs pyarrow, not installed: pip install 'clip-jax[jobs]'"]


def test_demo_end_to_end(tmp_path):
    proc = run_demo("--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The bundled file's open_clip_config.json says QuickGELU: no "assumed activation" line.
    assert "assum" not in proc.stderr.lower(), proc.stderr
    out = proc.stdout
    assert re.search(r"^\$ clip-jax convert \S*tiny_clip\.pt -o \S*tiny_clip\.safetensors$", out, re.M), out
    converted = tmp_path / "tiny_clip.safetensors"
    assert converted.is_file()
    config, params = read_params(converted)
    _, bundled = read_params(TINY_CLIP)
    assert all(np.array_equal(params[k], bundled[k]) for k in bundled)
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d+  ", line)]
    assert len(rows) == 18 and all(len(re.findall(r"\d\.\d\d", r)) == 3 for r in rows)  # top-3 with probabilities
    m = re.search(r"accuracy: (\d+)/18 = ", out)
    assert m and int(m.group(1)) >= 16, out
    png = tmp_path / "contact_sheet.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (6 * 192 + 8, 44 + 3 * 254)  # 18 tiles of 176 px, 6 a row


def test_demo_reports_a_bad_model(tmp_path):
    proc = run_demo("--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path))
    assert proc.returncode == 1
    assert "missing.pt" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_tiny_runs(tmp_path):
    """examples/train_tiny.py end to end, shortened (the full run takes minutes): it trains, evaluates,
    exports the fp16-mix .pt with its open_clip_config.json beside it, and reads it back. Without --out it
    writes under the working directory, never over the packaged model."""
    asset = TINY_CLIP.read_bytes()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_tiny.py"), "--steps", "40", "--warmup", "5", "--pool", "512",
         "--eval-images", "30"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "zero-shot accuracy read back" in proc.stdout
    losses = [float(m) for m in re.findall(r"loss (\d+\.\d+)", proc.stdout)]
    assert losses[-1] < losses[0]
    out = tmp_path / "train_tiny_out" / "tiny_clip.pt"
    assert TINY_CLIP.read_bytes() == asset
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing assumed: the file says what it is
        config, params = read_params(out)
    assert config == read_params(TINY_CLIP)[0] and params["visual.proj"].dtype == np.float16
    assert read_open_clip_config(out.parent / "open_clip_config.json") == config


def _train_tiny():
    """examples/train_tiny.py as a module (its command line, without training)."""
    spec = importlib.util.spec_from_file_location("train_tiny", ROOT / "examples" / "train_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv,message", [
    (["--steps", "60"], "--warmup must be in [0, --steps): got --warmup 100 with --steps 60"),
    (["--steps", "0", "--warmup", "0"], "--steps must be at least 1, got 0"),
    (["--batch-size", "64", "--pool", "32"], "--batch-size 64 is more than the --pool of 32 images"),
])
def test_train_tiny_refuses_in_one_line(argv, message, capsys):
    """A combination that can't train is refused before any work, in argparse's one line (exit 2)."""
    with pytest.raises(SystemExit) as e:
        _train_tiny().parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().splitlines()[-1] == f"train_tiny.py: error: {message}"
    assert "Traceback" not in err


def test_train_tiny_help_shows_defaults_and_writes_aside(capsys):
    """--help shows each default; the default output is train_tiny_out/, not the packaged asset."""
    module = _train_tiny()
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    help_text = capsys.readouterr().out
    for default in ("(default: 1500)", "(default: 100)", "(default: 128)", "(default: train_tiny_out/tiny_clip.pt)"):
        assert default in " ".join(help_text.split()), default
    assert module.parse_args([]).out == Path("train_tiny_out") / "tiny_clip.pt"
