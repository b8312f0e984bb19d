"""One process of the multi-host evaluation test (tests/test_eval.py): run as a script, never imported by
pytest.

    python tests/eval_worker.py MODEL DATA_DIR OUT_DIR COORDINATOR NUM_PROCESSES PROCESS_ID

XLA_FLAGS (the number of CPU devices of this process) is set by the caller. Runs zero-shot classification
on the ImageFolder DATA_DIR/test (twice, with a feature cache in OUT_DIR/cache: a miss, then a hit) and
zero-shot retrieval on DATA_DIR/pairs.csv, and writes OUT_DIR/result_{PROCESS_ID}.json with the metrics
this process got.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    model_path, data_dir, out_dir, coordinator, num_processes, process_id = argv
    num_processes, process_id = int(num_processes), int(process_id)

    from clip_jax import parallel

    if num_processes > 1:
        parallel.initialize(coordinator, num_processes, process_id, initialization_timeout=60)

    import jax

    import clip_jax
    import clip_jax.jobs.eval as ev
    from clip_jax.jobs import eval_data

    model, preprocess = clip_jax.load(model_path)
    data, pairs = Path(data_dir) / "test", Path(data_dir) / "pairs.csv"
    cache = Path(out_dir) / f"cache{num_processes}"
    common = dict(batch_size=8, progress=False)
    classes = eval_data.classification_data(data)
    out = {
        "devices": [jax.device_count(), jax.local_device_count()],
        "classification": ev.zeroshot_classification(model, preprocess, classes, "a photo of a {c}.", cache_dir=cache,
                                                     **common),
        "classification_cached": ev.zeroshot_classification(model, preprocess, classes, "a photo of a {c}.",
                                                            cache_dir=cache, **common),
        "retrieval": ev.zeroshot_retrieval(model, preprocess, eval_data.retrieval_data(pairs), **common),
        "cache_files": len(list(cache.glob("*.npy"))),
    }
    (Path(out_dir) / f"result_{process_id}.json").write_text(json.dumps(out))
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
