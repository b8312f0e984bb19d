"""The whole pipeline in one command, offline: convert a PyTorch checkpoint, load it, classify images
zero-shot against label prompts, report.

    clip-jax demo                        # the bundled tiny model on generated shapes
    clip-jax demo --model ViT-B/32       # the same with any name or file clip_jax.load takes
    clip-jax demo --out results/ --n 30 --seed 3

Steps: `clip-jax convert` the checkpoint (the bundled clip_jax/assets/tiny_clip.pt by default) into
OUT/, load the converted file with clip_jax.load, draw images of colored shapes (clip_jax.synthetic),
score each against the prompts "a red circle", "an orange star", ... (30 classes), print the top-3
labels with probabilities and the accuracy, and save OUT/contact_sheet.png with every image and its
predictions. The tiny model was trained on images from seed 0; the demo draws from --seed (default 1),
images it has never seen.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

import clip_jax

# What the public API has no name for: the demo's shapes, whether a file is converted already, the
# transform of a model built without clip_jax.load, the command line's one-line warnings and errors, and
# the atomic write every output file goes through.
from .. import synthetic
from ..checkpoint import AssumedActivationWarning
from ..checkpoint.store import is_converted
from ..fileio import atomic_write
from ..image import transform_for
from .common import is_user_error, one_line_warnings

TINY_CLIP = Path(__file__).resolve().parent.parent / "assets" / "tiny_clip.pt"
DEFAULT_MODEL = "tiny"


# --- zero-shot classification -----------------------------------------------------------------------


def zero_shot(model: clip_jax.CLIP, images: Sequence[Image.Image], labels: Sequence[str], preprocess=None,
              k: int = 3, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot classification of PIL images among `labels` (class names such as "red circle"), each
    scored by its one prompt ("a red circle") with clip_jax.clip_logits, as in OpenAI's CLIP README.

    preprocess: the model's transform, what clip_jax.load returns with it (default: the one its config
    describes). -> (probabilities [N, k], label indices [N, k]), best first; softmax over all the labels.
    """
    if preprocess is None:
        preprocess = transform_for(model.config)
    tokens = clip_jax.tokenize([synthetic.prompt(label) for label in labels],
                               context_length=model.config.text.context_length)
    probs, idx = [], []
    for start in range(0, len(images), batch_size):
        batch = np.stack([preprocess(im) for im in images[start:start + batch_size]])
        logits_per_image, _ = clip_jax.clip_logits(model, batch, tokens)
        p, i = jax.lax.top_k(jax.nn.softmax(logits_per_image, axis=-1), min(k, len(labels)))
        probs.append(np.asarray(p))
        idx.append(np.asarray(i))
    return np.concatenate(probs), np.concatenate(idx)


def zero_shot_accuracy(model: clip_jax.CLIP, images: Sequence[Image.Image], truth: Sequence[str],
                       labels: Sequence[str] | None = None, preprocess=None) -> float:
    """Fraction of images whose most probable label is `truth` (labels default to synthetic.labels())."""
    labels = list(synthetic.labels() if labels is None else labels)
    _, idx = zero_shot(model, images, labels, preprocess, k=1)
    return float(np.mean([labels[i] == t for i, t in zip(idx[:, 0], truth)]))


# --- the report -------------------------------------------------------------------------------------


def table(truth: Sequence[str], probs: np.ndarray, idx: np.ndarray, labels: Sequence[str]) -> str:
    """One line per image: the true label, then the top-k labels with probabilities (`zero_shot`'s
    output), and "ok" or "x" for the top one."""
    width = max(len(label) for label in labels) + 1
    # a cell is "label" padded to width - 1, a space, "0.97", a space
    head = f"{'image':>5}  {'true label':<{width}} " + "".join(
        f"{f'top-{i + 1}':<{width + 5}}" for i in range(idx.shape[1]))
    head = head.rstrip()
    lines = [head, "-" * (len(head) + 4)]
    for n, (t, p, i) in enumerate(zip(truth, probs, idx)):
        cells = "".join(f"{labels[j]:<{width - 1}} {q:4.2f} " for j, q in zip(i, p))
        lines.append(f"{n:>5}  {t:<{width}} {cells}{'ok' if labels[i[0]] == t else 'x'}")
    return "\n".join(lines)


def _font(size: int) -> ImageFont.ImageFont:
    try:  # Pillow >= 10.1 ships a scalable default font (needs FreeType)
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):
        return ImageFont.load_default()


def contact_sheet(images: Sequence[Image.Image], truth: Sequence[str], probs: np.ndarray, idx: np.ndarray,
                  labels: Sequence[str], title: str = "", cols: int = 6, tile: int = 176) -> Image.Image:
    """A grid of the images, each above its true label and its top-2 predictions with probabilities
    (`zero_shot`'s output, k >= 2); a green frame and text where the top prediction is right, red where
    it is wrong."""
    font, small = _font(15), _font(13)
    line, pad, frame = 18, 8, 4
    cell_w, cell_h = tile + 2 * pad, tile + 2 * frame + 3 * line + 2 * pad
    rows = -(-len(images) // cols)
    header = 2 * line + pad if title else pad
    sheet = Image.new("RGB", (cols * cell_w + pad, header + rows * cell_h), "white")
    d = ImageDraw.Draw(sheet)
    if title:
        d.text((pad, pad), title, fill="black", font=font)
    for n, (img, t, p, top) in enumerate(zip(images, truth, probs, idx)):
        x, y = pad + (n % cols) * cell_w, header + (n // cols) * cell_h
        ok = labels[top[0]] == t
        color = (20, 130, 40) if ok else (200, 30, 30)
        d.rectangle([x, y, x + tile + 2 * frame - 1, y + tile + 2 * frame - 1], fill=color)
        # nearest-neighbour for small images keeps their pixels visible; Lanczos for large ones
        resample = Image.Resampling.NEAREST if img.width < tile else Image.Resampling.LANCZOS
        sheet.paste(img.convert("RGB").resize((tile, tile), resample), (x + frame, y + frame))
        ty = y + tile + 2 * frame + 2
        d.text((x, ty), f"true: {t}", fill="black", font=small)
        d.text((x, ty + line), f"1. {labels[top[0]]}  {p[0]:.0%}", fill=color, font=small)
        d.text((x, ty + 2 * line), f"2. {labels[top[1]]}  {p[1]:.0%}", fill=(90, 90, 90), font=small)
    return sheet


# --- the command ------------------------------------------------------------------------------------


def _display(path: Path) -> str:
    """The path as a user would type it: relative to the current directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else rel


def convert_checkpoint(src: Path, out_dir: Path) -> Path:
    """The conversion `clip-jax convert SRC -o OUT/<name>.safetensors` runs, printing that command and
    what it prints."""
    dst = out_dir / (src.stem + ".safetensors")
    print(f"$ clip-jax convert {shlex.quote(_display(src))} -o {shlex.quote(_display(dst))}")
    with one_line_warnings(AssumedActivationWarning):
        dst = clip_jax.convert(src, dst)
    print(f"wrote {dst}")
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clip-jax demo", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="'tiny' (the bundled model), a model name (ViT-B/32, ...) or a checkpoint file")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: ./demo_out)")
    p.add_argument("--n", type=int, default=18, help="number of images (default 18)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated images (default 1)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")

    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    source = TINY_CLIP if args.model == DEFAULT_MODEL else args.model
    try:
        if Path(source).is_file() and not is_converted(source):
            source = convert_checkpoint(Path(source), args.out)
        print(f"loading {_display(Path(source)) if Path(source).exists() else source}")
        model, preprocess = clip_jax.load(source)
    except Exception as e:
        if not is_user_error(e):
            raise
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1

    c = model.config
    labels = synthetic.labels()
    images, samples = synthetic.generate(args.n, seed=args.seed, image_size=c.vision.image_size)
    truth = [s.label for s in samples]
    print(f"classifying {args.n} generated images (seed {args.seed}) among {len(labels)} labels: "
          f"prompts {synthetic.prompt(labels[0])!r}, {synthetic.prompt(labels[1])!r}, ...\n")
    probs, idx = zero_shot(model, images, labels, preprocess, k=3)
    print(table(truth, probs, idx, labels))
    correct = int(sum(labels[i] == t for i, t in zip(idx[:, 0], truth)))
    accuracy = f"accuracy: {correct}/{args.n} = {correct / args.n:.1%}"
    print(f"\n{accuracy}")

    name = "tiny_clip (bundled)" if args.model == DEFAULT_MODEL else str(args.model)
    sheet = contact_sheet(images, truth, probs, idx, labels, title=f"clip_jax zero-shot: {name}; {accuracy}")
    png = args.out / "contact_sheet.png"
    atomic_write(png, lambda tmp: sheet.save(tmp, format="PNG"))
    print(f"wrote {_display(png)} ({sheet.width}x{sheet.height}) in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
