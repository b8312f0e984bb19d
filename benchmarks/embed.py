"""End-to-end image embedding throughput from JPEG files: clip_jax vs open_clip + a torch DataLoader.

Both sides start from the same JPEG files (500x375 .. 1024x768, made from the scikit-image sample
photographs) and the same weights (a random-init open_clip ViT-B/32, by default full size: 12 layers,
width 768, 224 px; --vision-layers makes it shallower), and end with L2-normalized float32 embeddings
on the host, in the same run:

  open_clip + DataLoader   open_clip's eval transform in a Dataset, DataLoader(--workers worker
                           processes, persistent), model.encode_image(normalize=True) per batch
  clip_jax (ShardedCLIP)   ShardedCLIP.embed_image_files: --workers decoding threads, uint8 batches
                           padded to the batch size and prefetched to the devices, normalized there
  clip_jax embed job       clip_jax.embed.embed: the same plus the output folder (float16 .npy,
                           parquet, manifest), one shard per round

Compilation and worker start-up are excluded (one warm-up pass each); each figure is the best of
--repeat interleaved rounds (the machine may be shared). Embeddings of both sides are compared.

    python benchmarks/embed.py --count 128 --batch-size 32 --workers 2
"""

from __future__ import annotations

import os
import sys

# Run as a script, sys.path[0] is benchmarks/, whose scripts' names can shadow stdlib modules
# (e.g. tokenize): search the repository root instead.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") not in (HERE, ROOT)]

import argparse  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


class Files:
    """A map-style torch Dataset of image files through open_clip's eval transform (module level: picklable)."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.open(self.paths[i]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=128, help="number of JPEGs")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes = clip_jax decoding threads")
    ap.add_argument("--vision-layers", type=int, default=12, help="ViT-B/32 image tower depth (12: the real one)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--dir", default=None, help="reuse/keep the JPEGs in this directory")
    args = ap.parse_args(argv)

    import jax
    import open_clip
    import torch

    import clip_jax
    from clip_jax.checkpoint.convert import from_torch
    from clip_jax.embed import embed
    from clip_jax.parallel import ShardedCLIP
    from tests.images import write_jpegs
    from tests.reference import reference_model

    tmp = tempfile.mkdtemp(prefix="clip_jax_embed_bench_")
    img_dir = args.dir or os.path.join(tmp, "jpegs")
    paths = sorted(os.path.join(img_dir, f) for f in os.listdir(img_dir)) if args.dir and os.path.isdir(
        args.dir) and os.listdir(args.dir) else write_jpegs(img_dir, args.count)
    paths = paths[: args.count]

    ref = reference_model("ViT-B-32", vision_layers=args.vision_layers, text_layers=1)
    config, params = from_torch({k: v.numpy() for k, v in ref.state_dict().items()})
    model = clip_jax.build(config, params)
    model_file = os.path.join(tmp, "model.safetensors")
    from clip_jax.checkpoint import store

    store.save(model_file, params, config)
    preprocess = clip_jax.hub.load(model_file)[1]
    sharded = ShardedCLIP(model, batch_size=args.batch_size)

    # --- open_clip + DataLoader ---
    # Workers are spawned, not forked: forking a process that runs JAX's threads can deadlock.
    loader = torch.utils.data.DataLoader(
        Files(paths, open_clip.image_transform(224, is_train=False)), batch_size=args.batch_size,
        num_workers=args.workers, persistent_workers=args.workers > 0,
        multiprocessing_context="spawn" if args.workers > 0 else None,
    )

    def run_open_clip() -> np.ndarray:
        out = []
        with torch.inference_mode():
            for x in loader:
                out.append(ref.encode_image(x, normalize=True).numpy())
        return np.concatenate(out)

    def run_clip_jax() -> np.ndarray:
        return np.concatenate([b.features for b in sharded.embed_image_files(paths, preprocess, args.workers)])

    rounds = [0]

    def run_embed_job() -> None:
        rounds[0] += 1
        out = os.path.join(tmp, f"out{rounds[0]}")
        embed(paths, out, model_file, batch_size=args.batch_size, num_threads=args.workers,
              shard_size=len(paths), progress=False, sharded=sharded)
        shutil.rmtree(out)

    cases = {"open_clip + DataLoader": run_open_clip, "clip_jax ShardedCLIP": run_clip_jax,
             "clip_jax embed job": run_embed_job}
    warm = {name: fn() for name, fn in cases.items()}  # compile, start workers
    best = {name: float("inf") for name in cases}
    for _ in range(args.repeat):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)

    diff = np.abs(warm["clip_jax ShardedCLIP"] - warm["open_clip + DataLoader"]).max()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"{len(paths)} JPEGs, ViT-B/32 image tower with {args.vision_layers} layers, float32, batch "
          f"{args.batch_size}, {args.workers} workers; best of {args.repeat}")
    base = len(paths) / best["open_clip + DataLoader"]
    for name, sec in best.items():
        rate = len(paths) / sec
        print(f"  {name:26s} {rate:8.1f} img/s   {rate / base:5.2f}x open_clip")
    print(f"max |clip_jax - open_clip| over the normalized embeddings: {diff:.2e}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
