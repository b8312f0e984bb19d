"""End-to-end image embedding throughput from JPEG files: clip_jax vs open_clip + a torch DataLoader.

Both sides start from the same JPEG files (500x375 .. 1024x768, made from the scikit-image sample
photographs) and the same weights (a random-init open_clip ViT-B/32, by default full size: 12 layers,
width 768, 224 px; --vision-layers makes it shallower), and end with L2-normalized float32 embeddings
on the host, in the same run:

  open_clip + DataLoader   open_clip's eval transform in a Dataset, DataLoader(--workers worker
                           processes, persistent), model.encode_image(normalize=True) per batch
  clip_jax (ShardedCLIP)   ShardedCLIP.embed_image_files: --workers decoding threads, uint8 batches
                           padded to the batch size and prefetched to the devices, normalized there
  clip_jax embed job       clip_jax.jobs.embed.embed: the same plus the output folder (float16 .npy,
                           parquet, manifest), one shard per round

Compilation and worker start-up are excluded (one warm-up pass each); each figure is the best of
--repeat interleaved rounds (the machine may be shared). Embeddings of both sides are compared.

    python benchmarks/embed.py --count 128 --batch-size 32 --workers 2

Shards mode (--shards N) packs the JPEGs (with captions and json) into N WebDataset tar shards and runs,
each command as it would be run, pinned with taskset to 1 and then 2 cores:

  clip-jax embed 'shards/{0..N-1}.tar'     the command, end to end (start-up and compilation included)
  clip-retrieval inference                  --input_format webdataset on the same shards, the same weights
                                            (saved in open_clip's format), from --clip-retrieval-python
                                            (its pins clash with this project's: a venv of its own)

plus decoding alone: a plain Pillow loop (the image transform on each sample's bytes, in memory) against
clip_jax's shard reader and decode pool, in img/s and per CPU-second (what one core decodes, whatever
else loads the machine), and the tar readers (this one vs the webdataset library).

    python benchmarks/embed.py --shards 4 --count 512 --vision-layers 2 --clip-retrieval-python /work/venv-cr/bin/python

Small-job mode (--small N): N JPEGs in one tar shard, embedded by clip_jax.jobs.embed.embed (images and
captions, files written) with a fresh ShardedCLIP each round, so compilation is included as a small job
pays it; model loading is not. Rows:

  shards, every batch padded to --batch-size     ShardedCLIP(buckets=()): one program of the full batch
  shards, short batches padded to a bucket       the default: the smallest of 8, 16, 32, ... x data axis
  the same images as files (a folder)            for reference

    python benchmarks/embed.py --small 14 --batch-size 256 --repeat 1
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
    ap.add_argument("--shards", type=int, default=0, help="shards mode: pack the JPEGs into this many tar shards")
    ap.add_argument("--clip-retrieval-python", help="shards mode: a python with clip-retrieval installed")
    ap.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="shards mode: cores to pin each command to")
    ap.add_argument("--small", type=int, default=0, help="small-job mode: this many JPEGs in one tar shard")
    args = ap.parse_args(argv)
    if args.shards:
        return shards_main(args)
    if args.small:
        return small_main(args)

    import jax
    import open_clip
    import torch

    import clip_jax
    from clip_jax.checkpoint.torch_names import from_torch
    from clip_jax.jobs.embed import embed
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


# --- shards mode ------------------------------------------------------------------------------------

CLIP_RETRIEVAL = """
import json, sys, open_clip
open_clip.add_model_config(sys.argv[1])
from clip_retrieval.clip_inference.main import main
main(sys.argv[2], sys.argv[3], input_format="webdataset", clip_model="open_clip:ViT-B-32-bench/" + sys.argv[4],
     batch_size=int(sys.argv[5]), num_prepro_workers=int(sys.argv[6]), enable_text=True, enable_metadata=True,
     use_jit=False)
"""


def _timed(cmd, env=None) -> float:
    import subprocess

    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{cmd[:3]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def _best(fn, repeat: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def shards_main(args) -> None:
    import json

    import open_clip
    import torch

    from clip_jax.checkpoint import store
    from clip_jax.checkpoint.torch_names import from_torch
    from clip_jax.data.sources import open_source
    from clip_jax.image import Decoder, image_transform
    from clip_jax.jobs.embed_shards import decoded_batches
    from tests.images import write_jpegs
    from tests.reference import reference_model
    from tests.shards import write_tar

    tmp = tempfile.mkdtemp(prefix="clip_jax_shards_bench_")
    paths = write_jpegs(args.dir or os.path.join(tmp, "jpegs"), args.count)
    per = -(-len(paths) // args.shards)
    for k in range(args.shards):
        write_tar(os.path.join(tmp, "shards", f"{k:05d}.tar"),
                  [{"__key__": f"{k:05d}{i:04d}", "jpg": open(p, "rb").read(), "txt": f"a photo number {i}",
                    "json": {"i": i}} for i, p in enumerate(paths[k * per:(k + 1) * per])])
    pattern = os.path.join(tmp, "shards", f"{{00000..{args.shards - 1:05d}}}.tar")

    ref = reference_model("ViT-B-32", vision_layers=args.vision_layers, text_layers=1)
    config, params = from_torch({k: v.numpy() for k, v in ref.state_dict().items()})
    model_file = os.path.join(tmp, "model.safetensors")
    store.save(model_file, params, config)
    # The same weights in open_clip's format, with an open_clip config of the same shape.
    torch.save(ref.state_dict(), os.path.join(tmp, "open_clip.bin"))
    cfg = open_clip.get_model_config("ViT-B-32")
    cfg = {**cfg, "quick_gelu": True, "vision_cfg": {**cfg["vision_cfg"], "layers": args.vision_layers},
           "text_cfg": {**cfg["text_cfg"], "layers": 1}}
    os.makedirs(os.path.join(tmp, "configs"))
    with open(os.path.join(tmp, "configs", "ViT-B-32-bench.json"), "w") as f:
        json.dump(cfg, f)

    # Decoding alone (no model): samples/s of the readers, images/s of decoding per core.
    samples = list(open_source([pattern]))
    data = [s["image"] for s in samples]
    transform = image_transform(224)

    def read_ours():
        for _ in open_source([pattern]):
            pass

    def read_webdataset():
        import webdataset as wds

        for _ in wds.WebDataset(pattern, shardshuffle=False, empty_check=False):
            pass

    def pillow_loop():
        for b in data:
            transform.pixels(b)

    def decode_pool(threads):
        def run():
            with Decoder(transform, threads) as decoder:
                shards = enumerate(open_source([pattern]).shards)
                for _ in decoded_batches(shards, decoder, args.batch_size, 2):
                    pass
        return run

    n = len(data)
    rows = {"tar reader (clip_jax.data.sources)": _best(read_ours, args.repeat)}
    try:
        rows["tar reader (webdataset library)"] = _best(read_webdataset, args.repeat)
    except ImportError:
        pass
    # Wall time, and CPU time (process_time: every thread's), which another job's load doesn't inflate.
    cases = {"plain Pillow loop (bytes in memory)": pillow_loop}
    for threads in (1, 2):
        cases[f"clip_jax shards -> pool, {threads} thread(s)"] = decode_pool(threads)
    decode = {name: (_best(fn, args.repeat), _best(fn, args.repeat, time.process_time)) for name, fn in cases.items()}

    # End to end, each command pinned to 1 then 2 cores.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    e2e = {}
    for cores in args.cores:
        cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cores])
        for r in range(args.repeat):
            out = os.path.join(tmp, f"cj{cores}_{r}")
            t = _timed(["taskset", "-c", cpus, sys.executable, "-m", "clip_jax.cli", "embed", pattern, "-o", out,
                        "--model", model_file, "--batch-size", str(args.batch_size), "--num-threads", str(cores),
                        "--no-progress"], env)
            e2e[f"clip-jax embed, {cores} core(s)"] = min(t, e2e.get(f"clip-jax embed, {cores} core(s)", t))
            if args.clip_retrieval_python:
                out = os.path.join(tmp, f"cr{cores}_{r}")
                t = _timed(["taskset", "-c", cpus, args.clip_retrieval_python, "-c", CLIP_RETRIEVAL,
                            os.path.join(tmp, "configs"), pattern, out, os.path.join(tmp, "open_clip.bin"),
                            str(args.batch_size), str(cores)], {**os.environ, "CUDA_VISIBLE_DEVICES": ""})
                key = f"clip-retrieval inference, {cores} core(s)"
                e2e[key] = min(t, e2e.get(key, t))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}")
    print(f"{n} JPEGs (500x375 .. 1024x768) in {args.shards} tar shards; ViT-B/32 image tower with "
          f"{args.vision_layers} layers, text tower 1 layer, float32, batch {args.batch_size}; best of {args.repeat}")
    print("reading shards (no decoding):")
    for name, sec in rows.items():
        print(f"  {name:40s} {n / sec:8.0f} samples/s")
    print("decoding + resize + crop to 224 px uint8:")
    for name, (sec, cpu) in decode.items():
        print(f"  {name:40s} {n / sec:8.1f} img/s   {n / cpu:8.1f} img per CPU-second")
    print("end to end (process start, model load, compile, images and captions embedded, files written):")
    for name, sec in e2e.items():
        print(f"  {name:40s} {sec:6.1f} s  {n / sec:8.1f} img/s")
    if args.clip_retrieval_python:
        import glob

        import pyarrow.parquet as pq

        # clip-retrieval's DataLoader workers interleave the shards: rows are matched by sample key.
        def rows_by_key(folder):
            embs = sorted(glob.glob(os.path.join(folder, "img_emb", "*.npy")))
            metas = sorted(glob.glob(os.path.join(folder, "metadata", "*.parquet")))
            keys = [k for m in metas for k in pq.read_table(m, columns=["image_path"]).column(0).to_pylist()]
            return dict(zip(keys, np.concatenate([np.load(e) for e in embs]).astype(np.float32)))

        last = max(args.cores)
        a, b = rows_by_key(os.path.join(tmp, f"cj{last}_0")), rows_by_key(os.path.join(tmp, f"cr{last}_0"))
        diff = max(np.abs(a[k] - b[k]).max() for k in a) if a.keys() == b.keys() else float("nan")
        print(f"rows: clip_jax {len(a)}, clip-retrieval {len(b)}, same keys: {a.keys() == b.keys()}; "
              f"max |clip_jax - clip-retrieval| over the float16 embeddings of each key: {diff:.2e}")
    shutil.rmtree(tmp, ignore_errors=True)


# --- small-job mode ---------------------------------------------------------------------------------


def small_main(args) -> None:
    import jax

    import clip_jax
    from clip_jax.checkpoint import store
    from clip_jax.checkpoint.torch_names import from_torch
    from clip_jax.jobs.embed import embed
    from clip_jax.parallel import ShardedCLIP
    from tests.images import write_jpegs
    from tests.reference import reference_model
    from tests.shards import write_tar

    tmp = tempfile.mkdtemp(prefix="clip_jax_small_bench_")
    paths = write_jpegs(os.path.join(tmp, "jpegs"), args.small)[: args.small]
    shard = os.path.join(tmp, "00000.tar")
    write_tar(shard, [{"__key__": f"{i:04d}", "jpg": open(p, "rb").read(), "txt": f"a photo number {i}"}
                      for i, p in enumerate(paths)])
    ref = reference_model("ViT-B-32", vision_layers=args.vision_layers, text_layers=1)
    config, params = from_torch({k: v.numpy() for k, v in ref.state_dict().items()})
    model_file = os.path.join(tmp, "model.safetensors")
    store.save(model_file, params, config)
    model = clip_jax.load(model_file)[0]

    def job(inputs, buckets):
        def run():
            out = tempfile.mkdtemp(dir=tmp)
            sharded = ShardedCLIP(model, batch_size=args.batch_size, buckets=buckets)  # fresh: compiles again
            embed(inputs, out, model_file, batch_size=args.batch_size, num_threads=args.workers, progress=False,
                  sharded=sharded)
            results[run] = np.load(os.path.join(out, "img_emb", "img_emb_0.npy"))
            shutil.rmtree(out)
        return run

    results: dict = {}
    cases = {"shards, every batch padded to the batch size": job([shard], ()),
             "shards, short batches padded to a bucket": job([shard], None),
             "the same images as files (a folder)": job(paths, None)}
    cases["the same images as files (a folder)"]()  # untimed: first-use costs (imports, threads) go here
    best = {name: float("inf") for name in cases}
    for _ in range(args.repeat):  # interleaved: the machine may be shared
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}")
    print(f"{len(paths)} JPEGs in one tar shard; ViT-B/32 image tower with {args.vision_layers} layers, text tower "
          f"1 layer, float32, batch {args.batch_size}, {args.workers} decoding threads; compilation included; best "
          f"of {args.repeat}")
    before = best["shards, every batch padded to the batch size"]
    for name, sec in best.items():
        print(f"  {name:46s} {sec:7.1f} s   {before / sec:6.2f}x the full-batch padding")
    full, bucketed = (results[fn] for fn in list(cases.values())[:2])
    print(f"float16 rows equal bit for bit: {int((full == bucketed).all(axis=1).sum())} of {len(full)}; max "
          f"|difference| {np.abs(full.astype(np.float32) - bucketed.astype(np.float32)).max():.1e}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
