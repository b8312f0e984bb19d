"""Train the tiny CLIP that ships in clip_jax/assets/tiny_clip.pt, on synthetic shapes, on a CPU.

    python examples/train_tiny.py                      # a few minutes on 2 CPU cores -> train_tiny_out/
    python examples/train_tiny.py --out /tmp/tiny.pt --steps 300
    python examples/train_tiny.py --out clip_jax/assets/tiny_clip.pt   # replace the packaged model

The model: OpenAI's architecture at toy size (ViT: 64x64 images, 16x16 patches, width 64, 3 layers;
text: width 64, 2 layers, context 16) with OpenAI's real tokenizer and full 49408-token vocabulary. The
data: images of one shape from clip_jax.synthetic, captioned "a small red triangle on the left" with
the size and the place each left out half of the time. Everything is a function of --seed.

Zero-shot evaluation: 200 images from a seed never used in training, classified among the 30
color x shape classes by their prompts "a red triangle", ... (the text encoder sees only the prompts; no
classifier is trained). The exported file (with its open_clip_config.json beside it) is then read back
and scored again, with the fp16 weights.

Token embedding rows of words that never occur in the captions get no gradient and would stay at their
random initialization; they are zeroed first (and stay zero: no weight decay on embeddings), so the
12 MB float32 table compresses to almost nothing in the shipped file.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from clip_jax import synthetic  # noqa: E402
from clip_jax.checkpoint import read_params  # noqa: E402
from clip_jax.checkpoint.export import export  # noqa: E402
from clip_jax.cli.demo import zero_shot_accuracy  # noqa: E402
from clip_jax.config import CLIPConfig, TextConfig, VisionConfig  # noqa: E402
from clip_jax.model import build  # noqa: E402
from clip_jax.tokenizer import tokenize  # noqa: E402
from clip_jax.train import Trainer, optimizer  # noqa: E402

CONTEXT_LENGTH = 16
# Widths are multiples of 64 because OpenAI's build_model (and clip_jax's config inference) derive the
# number of heads as width // 64.
TINY = CLIPConfig(
    embed_dim=64,
    vision=VisionConfig(image_size=64, layers=3, width=64, patch_size=16),
    text=TextConfig(context_length=CONTEXT_LENGTH, width=64, heads=1, layers=2),
)
EVAL_SEED_OFFSET = 1_000_003  # held-out images come from seed + this, never from a training seed
DEFAULT_OUT = Path("train_tiny_out") / "tiny_clip.pt"  # the packaged asset is replaced only when --out names it


def caption_vocabulary() -> np.ndarray:
    """Every token id any caption or prompt can contain."""
    texts = [
        synthetic.Sample(shape, color, size, position).caption(with_size, with_position)
        for shape, color, size, position in itertools.product(
            synthetic.SHAPES, synthetic.COLORS, synthetic.SIZES, synthetic.POSITIONS)
        for with_size, with_position in itertools.product((False, True), repeat=2)
    ]
    return np.unique(tokenize(texts, context_length=CONTEXT_LENGTH))


def zero_unused_token_rows(model) -> None:
    """Zero the token embedding rows of ids no caption uses (they would get no gradient anyway)."""
    used = np.zeros(TINY.text.vocab_size, bool)
    used[caption_vocabulary()] = True
    table = model.token_embedding.embedding
    table[...] = np.where(used[:, None], np.asarray(table[...]), 0.0).astype(np.asarray(table[...]).dtype)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; a bad combination is one line (argparse's error, exit status 2)."""
    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="the .pt to write (its folder is created); clip_jax/assets/tiny_clip.pt replaces the demo's")
    p.add_argument("--steps", type=int, default=1500, help="training steps")
    p.add_argument("--batch-size", type=int, default=128, help="images (and captions) a step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=100, help="linear warmup steps, fewer than --steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's decoupled weight decay")
    p.add_argument("--pool", type=int, default=12000, help="training images drawn once, then reused")
    p.add_argument("--seed", type=int, default=0, help="seeds the images, the init and the batches")
    p.add_argument("--eval-images", type=int, default=200, help="held-out images for the zero-shot accuracy")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "pool", "eval_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.warmup < args.steps:
        p.error(f"--warmup must be in [0, --steps): got --warmup {args.warmup} with --steps {args.steps}")
    if args.batch_size > args.pool:
        p.error(f"--batch-size {args.batch_size} is more than the --pool of {args.pool} images")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    images, samples = synthetic.generate(args.pool, seed=args.seed, image_size=TINY.vision.image_size)
    pixels = np.stack([np.asarray(im) for im in images])
    print(f"drew {len(images)} training images in {time.perf_counter() - t0:.1f}s", flush=True)

    model = build(TINY, seed=args.seed)
    zero_unused_token_rows(model)
    trainer = Trainer(model, optimizer(args.lr, args.steps, args.warmup, weight_decay=args.weight_decay))
    state = trainer.init()
    for step in range(args.steps):
        rng = np.random.default_rng([args.seed, step])  # the data position is the step
        idx = rng.choice(len(samples), args.batch_size, replace=False)
        captions = [samples[i].caption(bool(rng.integers(2)), bool(rng.integers(2))) for i in idx]
        state, metrics = trainer.step(state, pixels[idx], tokenize(captions, context_length=CONTEXT_LENGTH))
        if step % 100 == 0 or step == args.steps - 1:
            m = jax.device_get(metrics)
            print(f"step {step:5d}  loss {m['loss']:.3f}  batch acc {m['accuracy']:.2f}  "
                  f"logit scale {m['logit_scale']:.1f}  {time.perf_counter() - t0:.0f}s", flush=True)
    train_time = time.perf_counter() - t0

    eval_images, eval_samples = synthetic.generate(args.eval_images, seed=args.seed + EVAL_SEED_OFFSET,
                                                   image_size=TINY.vision.image_size)
    truth = [s.label for s in eval_samples]
    acc = zero_shot_accuracy(trainer.model(state), eval_images, truth)
    print(f"trained in {train_time:.0f}s; zero-shot accuracy on {len(truth)} held-out images: {acc:.1%}")

    export(trainer.model(state), args.out, dtype="fp16_mix", compress=True)
    config, params = read_params(args.out)
    acc16 = zero_shot_accuracy(build(config, params), eval_images, truth)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.2f} MiB, OpenAI's fp16 mix; its config also in "
          f"{args.out.parent / 'open_clip_config.json'}); zero-shot accuracy read back: {acc16:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
