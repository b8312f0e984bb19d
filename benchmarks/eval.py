"""Zero-shot classification end to end: `clip_jax.jobs.eval` vs CLIP_benchmark's torch loop, same run.

Both sides start from the same PNG files (an ImageFolder drawn with clip_jax.synthetic, 30 classes) and the
same weights (the bundled tiny CLIP, or --model, exported to open_clip's format for the torch side), build
the class weights from the same templates, embed every image and compute acc1 / acc5 / mean per-class
recall:

  CLIP_benchmark   clip_benchmark.metrics.zeroshot_classification.evaluate: torchvision ImageFolder with
                   open_clip's eval transform, DataLoader(--workers processes), float32 (amp off on the CPU)
  clip_jax         clip_jax.jobs.eval.zeroshot_classification: ShardedCLIP over every device, --workers
                   decoding threads, no feature cache

Each side runs once to warm up (compilation, worker start-up), then the best of --repeat interleaved
rounds is reported as images/s. The metrics of both sides are printed.

    python -m benchmarks.eval --count 1024 --batch-size 128 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--templates", default="a {c}|a photo of a {c}.|itap of the {c}.", help="'|'-separated")
    args = ap.parse_args()

    import jax
    import open_clip
    import torch
    from torchvision.datasets import ImageFolder

    import clip_jax
    import clip_jax.jobs.eval as ev
    from clip_jax import synthetic
    from clip_jax.cli.demo import TINY_CLIP
    from clip_jax.jobs import eval_data
    from clip_jax.parallel import ShardedCLIP

    try:
        import clip_benchmark.metrics.zeroshot_classification as cb
    except ImportError:
        raise SystemExit("pip install clip-benchmark (its metric functions are the reference)") from None
    templates = args.templates.split("|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shapes"
        images, samples = synthetic.generate(args.count, seed=0)
        for i, (im, s) in enumerate(zip(images, samples)):
            (root / s.label).mkdir(parents=True, exist_ok=True)
            im.save(root / s.label / f"{i:05d}.png")
        model, preprocess = clip_jax.load(TINY_CLIP)
        cfg = json.loads((TINY_CLIP.parent / "open_clip_config.json").read_text())
        clip_jax.export(model, Path(tmp) / "twin.pt", dtype="float32")
        tmodel = open_clip.model.CLIP(**cfg["model_cfg"]).eval()
        tmodel.load_state_dict(torch.load(Path(tmp) / "twin.pt", weights_only=True))
        transform = open_clip.image_transform(64, is_train=False)
        ctx = cfg["model_cfg"]["text_cfg"]["context_length"]
        ds = ImageFolder(str(root), transform=transform)
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers,
                                             persistent_workers=args.workers > 0)
        data = eval_data.image_folder(root)

        def theirs():
            return cb.evaluate(tmodel, loader, lambda t: open_clip.tokenize(t, context_length=ctx), ds.classes,
                               templates, device="cpu", amp=False)

        sharded = ShardedCLIP(model, batch_size=args.batch_size)
        ev._SHARDED.setdefault(model, {})[(args.batch_size, None)] = (sharded, None)

        def ours():
            return ev.zeroshot_classification(model, preprocess, data, templates, batch_size=args.batch_size,
                                              progress=False)

        try:
            theirs()
        except TypeError:  # clip_benchmark 1.6.2 under NumPy >= 2.4: float() of a one-element array
            from tests.test_eval import _accuracy

            cb.accuracy = _accuracy
            theirs()
        ours()
        best = {"clip_benchmark": float("inf"), "clip_jax": float("inf")}
        metrics = {}
        for _ in range(args.repeat):
            for name, fn in (("clip_benchmark", theirs), ("clip_jax", ours)):
                t = time.perf_counter()
                metrics[name] = fn()
                best[name] = min(best[name], time.perf_counter() - t)
    print(f"{platform.node()} {jax.device_count()} x {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
          f"{args.count} images, {len(data.classnames)} classes, {len(templates)} templates, batch {args.batch_size}, "
          f"{args.workers} workers, best of {args.repeat}")
    for name in best:
        m = metrics[name]
        print(f"  {name:15s} {args.count / best[name]:8.1f} img/s  ({best[name]:.2f} s)  acc1 {m['acc1']:.4f} "
              f"acc5 {m['acc5']:.4f} mean_per_class_recall {m['mean_per_class_recall']:.4f}")
    print(f"  clip_jax / clip_benchmark: {best['clip_benchmark'] / best['clip_jax']:.2f}x")
    assert np.isclose(metrics["clip_jax"]["acc1"], metrics["clip_benchmark"]["acc1"], atol=2 / args.count)


if __name__ == "__main__":
    main()
