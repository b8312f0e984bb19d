"""Train a small CLIP from scratch on WebDataset shards with `clip_jax.jobs.train`, then load the result.

    python examples/train_shards.py                        # -> train_shards_out/ (a few minutes on 2 CPU cores)
    python examples/train_shards.py --steps 40 --out /tmp/shapes

It writes clip_jax.synthetic's captioned shapes as tar shards (OUT/shards/), an open_clip model-config
JSON (OUT/tiny.json: the bundled demo model's architecture) and a held-out zero-shot set (OUT/eval/,
one folder per "color shape" class); trains into OUT/run/ with an evaluation at the end; then loads
OUT/run/final.safetensors with clip_jax.load and scores one held-out image against three prompts. The
same run from the command line (rerun it to resume):

    clip-jax train 'OUT/shards/{00000..00007}.tar' --model OUT/tiny.json -o OUT/run --batch-size 64 \\
        --steps 200 --lr 1e-3 --warmup 20 --weight-decay 0.1 --eval-data OUT/eval
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import clip_jax  # noqa: E402
from clip_jax import synthetic  # noqa: E402
from clip_jax.jobs.train import train  # noqa: E402

# open_clip's model-config form of the demo model (clip_jax/assets/open_clip_config.json): what
# `open_clip.add_model_config` registers, and what `--model FILE.json` trains from scratch.
ARCHITECTURE = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


def write_shards(folder: Path, shards: int, per_shard: int, seed: int = 0) -> str:
    """`shards` tar shards of `per_shard` pairs ({key}.png, {key}.txt) -> their brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        pixels, captions = synthetic.batch(seed, k, per_shard)
        with tarfile.open(folder / f"{k:05d}.tar", "w") as tar:
            for i, (p, caption) in enumerate(zip(pixels, captions)):
                buf = io.BytesIO()
                Image.fromarray(p).save(buf, "PNG")
                key = f"{k:05d}{i:05d}"
                for name, data in ((f"{key}.png", buf.getvalue()), (f"{key}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def write_eval_set(folder: Path, n: int, seed: int = 1_000_003) -> Path:
    """n held-out images (a seed training never uses), one folder per class, and the prompt template."""
    images, samples = synthetic.generate(n, seed)
    for i, (image, sample) in enumerate(zip(images, samples)):
        (folder / sample.label).mkdir(parents=True, exist_ok=True)
        image.save(folder / sample.label / f"{i:04d}.png")
    (folder / "zeroshot_classification_templates.txt").write_text("a {c}.\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("train_shards_out"))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=256)
    p.add_argument("--eval-images", type=int, default=200)
    args = p.parse_args(argv)
    pattern = write_shards(args.out / "shards", args.shards, args.per_shard)
    (args.out / "tiny.json").write_text(json.dumps(ARCHITECTURE))
    eval_set = write_eval_set(args.out / "eval", args.eval_images)
    last = train(pattern, args.out / "tiny.json", args.out / "run", batch_size=args.batch_size, steps=args.steps,
                 lr=1e-3, warmup=max(1, args.steps // 10), weight_decay=0.1, eval_data=str(eval_set),
                 save_every=max(1, args.steps // 2), log_every=max(1, args.steps // 10))
    print(f"step {last['step']}: loss {last['loss']:.3f}, zero-shot top-1 {last['eval_acc1']:.1%} "
          f"on {args.eval_images} held-out images")

    model, preprocess = clip_jax.load(args.out / "run" / "final.safetensors")
    image, sample = (x[0] for x in synthetic.generate(1, seed=7_000_001))
    prompts = [f"a {sample.label}.", "a green star.", "a blue cross."] if sample.label != "green star" else [
        "a green star.", "a red circle.", "a blue cross."]
    tokens = clip_jax.get_tokenizer(model)(prompts)
    logits, _ = clip_jax.clip_logits(model, preprocess(image)[None], tokens)
    probs = np.asarray(logits[0]).astype(np.float64)
    probs = np.exp(probs - probs.max()) / np.exp(probs - probs.max()).sum()
    print("an image of a " + sample.label + ": " + ", ".join(f"{t} {q:.0%}" for t, q in zip(prompts, probs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
