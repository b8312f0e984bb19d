"""One process of the multi-host test (tests/test_multihost.py): run as a script, never imported by pytest.

    python tests/multihost_worker.py MODEL PATHS.txt CAPTIONS.txt OUT_DIR COORDINATOR NUM_PROCESSES PROCESS_ID

XLA_FLAGS (the number of CPU devices of this process) is set by the caller. Embeds the image files (each
process decodes only its own rows of every batch, and logs which ones) and the captions, and writes
OUT_DIR/result_{PROCESS_ID}.npz with what this process got back (every process gets all rows, in order).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    model_path, paths_file, captions_file, out_dir, coordinator, num_processes, process_id = argv
    num_processes, process_id = int(num_processes), int(process_id)

    from clip_jax import parallel

    if num_processes > 1:
        parallel.initialize(coordinator, num_processes, process_id, initialization_timeout=60)

    import jax
    import numpy as np

    import clip_jax
    from clip_jax.tokenizer import tokenize

    model, preprocess = clip_jax.load(model_path)
    paths = Path(paths_file).read_text().splitlines()
    captions = Path(captions_file).read_text().splitlines()

    read = []

    class Logged(type(preprocess)):
        def pixels(self, source, out=None):
            read.append(str(source))
            return super().pixels(source, out)

    logged = Logged(preprocess.n_px, preprocess.mean, preprocess.std, preprocess.resize_mode, preprocess.interpolation)
    # 20 images at batch 16 over 8 devices: 16 rows, then 4 padded to the bucket of 8 (in step on both processes)
    sharded = parallel.ShardedCLIP(model, parallel.make_mesh(), batch_size=16, buckets=(8,))
    feats, ok, errors = [], [], []
    for batch in sharded.embed_image_files(paths, logged, num_threads=2):
        feats.append(batch.features)
        ok.append(batch.ok)
        errors += [f"{p}\t{r}" for p, r in batch.errors]
    text = sharded.encode_text(tokenize(captions), normalized=True)
    np.savez(
        Path(out_dir) / f"result_{process_id}.npz",
        image=np.concatenate(feats), ok=np.concatenate(ok), text=text, read=np.array(read, dtype=str),
        errors=np.array(errors, dtype=str), devices=np.array([jax.device_count(), jax.local_device_count()]),
    )
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
