"""Exact search: queries/s on the JAX devices (search(..., device=True)) vs numpy, on the same folder.

A folder of random float16 rows in clip-retrieval's layout (--shards shards of --rows rows, dimension
--dim), and batches of random queries; each figure is the best of --repeat runs after one warm-up (the
device program is compiled once per folder's chunk size).

    python benchmarks/search.py --shards 4 --rows 125000 --dim 512 --queries 1 16
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") not in (HERE, ROOT)]

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rows", type=int, default=125_000, help="rows per shard")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, nargs="+", default=[1, 16], help="query batch sizes")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--chunk-rows", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    import jax
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clip_jax.jobs.search import search

    tmp = tempfile.mkdtemp(prefix="clip_jax_search_bench_")
    os.makedirs(os.path.join(tmp, "img_emb"))
    os.makedirs(os.path.join(tmp, "metadata"))
    rng = np.random.default_rng(0)
    for k in range(args.shards):
        x = rng.standard_normal((args.rows, args.dim), np.float32)
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        np.save(os.path.join(tmp, "img_emb", f"img_emb_{k}.npy"), unit.astype(np.float16))
        pq.write_table(pa.table({"image_path": [str(i) for i in range(args.rows)]}),
                       os.path.join(tmp, "metadata", f"metadata_{k}.parquet"))
    print(f"{args.shards * args.rows} rows of dimension {args.dim} (float16) in {args.shards} shards, top-{args.k}, "
          f"chunks of {args.chunk_rows}; jax on {jax.devices()[0].platform} x{jax.local_device_count()}; "
          f"best of {args.repeat}")
    for n_q in args.queries:
        q = rng.standard_normal((n_q, args.dim)).astype(np.float32)
        rates = {}
        for name, device in (("numpy", False), ("devices", True)):
            search(tmp, q, k=args.k, chunk_rows=args.chunk_rows, device=device)  # warm-up, compile
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                search(tmp, q, k=args.k, chunk_rows=args.chunk_rows, device=device)
                best = min(best, time.perf_counter() - t)
            rates[name] = n_q / best
        print(f"  {n_q:4d} queries a call: numpy {rates['numpy']:8.1f} queries/s, devices {rates['devices']:8.1f} "
              f"queries/s ({rates['devices'] / rates['numpy']:.2f}x)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
